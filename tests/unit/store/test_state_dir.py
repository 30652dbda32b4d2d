"""The file stores write only inside --state-dir: a name that is not one path component, or a
symlink on the way, is refused before anything is written or removed; every directory they
create is 0700, parents of the state directory included."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from certop.store.files import (
    FileAccountStore,
    FileCertStore,
    FileOrderJournal,
    UnsafePath,
    ensure_dir,
)
from certop.store.ports import StoredCert

PAIR = StoredCert(b"cert", b"key")
NOT_ONE_COMPONENT = [
    pytest.param("../../outside", id="climbs-out"),
    pytest.param("..", id="dot-dot"),
    pytest.param(".", id="dot"),
    pytest.param("", id="empty"),
    pytest.param("/abs/outside", id="absolute"),
    pytest.param("a/../../..", id="slash"),
    pytest.param("a\0b", id="nul"),
]


def _everything(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


WRITES: dict[str, Callable[[Path, str], None]] = {
    "certificate namespace": lambda r, n: FileCertStore(r).save(n, "s", PAIR),
    "certificate name": lambda r, n: FileCertStore(r).save("ns", n, PAIR),
    "journal namespace": lambda r, n: FileOrderJournal(r).save(n, "s", {"key_pem": "k"}),
    "journal name": lambda r, n: FileOrderJournal(r).save("ns", n, {"key_pem": "k"}),
    "journal clear": lambda r, n: FileOrderJournal(r).clear(n, "s"),
    "account key": lambda r, n: FileAccountStore(r).save_account_key(n, b"k"),
    "account info": lambda r, n: FileAccountStore(r).save_account_info(n, {}),
}


@pytest.mark.parametrize("write", list(WRITES))
@pytest.mark.parametrize("name", NOT_ONE_COMPONENT)
def test_a_name_that_is_not_one_path_component_is_refused(tmp_path: Path, write: str,
                                                           name: str) -> None:
    root = tmp_path / "a" / "b" / "state"
    root.mkdir(parents=True)
    before = _everything(tmp_path)
    with pytest.raises(UnsafePath, match="inside the state directory"):
        WRITES[write](root, name)
    assert _everything(tmp_path) == before


READS: dict[str, Callable[[Path, str], object]] = {
    "certificate": lambda r, n: FileCertStore(r).load(n, "s"),
    "certificate version": lambda r, n: FileCertStore(r).version("ns", n),
    "journal": lambda r, n: FileOrderJournal(r).load(n, "s"),
    "account": lambda r, n: FileAccountStore(r).load_account(n),
}


@pytest.mark.parametrize("read", list(READS))
@pytest.mark.parametrize("name", NOT_ONE_COMPONENT)
def test_reading_a_name_that_is_not_one_path_component_is_refused(tmp_path: Path, read: str,
                                                                  name: str) -> None:
    with pytest.raises(UnsafePath):
        READS[read](tmp_path / "state", name)


def _victim(tmp_path: Path) -> Path:
    """A directory outside the state directory shaped like a certificate's, with data in it."""
    victim = tmp_path / "outside"
    for version in ("v1", "v2"):
        (victim / "s" / version).mkdir(parents=True)
        (victim / "s" / version / "precious").write_text("not certop's")
    return victim


# Where a symlink planted inside the state directory points outside it.
LINKS = {
    "certs": lambda root, victim: (root / "certs", victim.parent),
    "certs/ns": lambda root, victim: (root / "certs" / "ns", victim),
}


@pytest.mark.parametrize("link", list(LINKS))
def test_a_certificate_is_never_written_or_pruned_through_a_symlink(tmp_path: Path,
                                                                     link: str) -> None:
    victim = _victim(tmp_path)
    root = tmp_path / "state"
    where, target = LINKS[link](root, victim)
    where.parent.mkdir(parents=True, exist_ok=True)
    # certs -> tmp_path (so certs/outside/s is the victim) or certs/ns -> outside.
    where.symlink_to(target)
    ns = "outside" if link == "certs" else "ns"
    before = _everything(victim)
    store = FileCertStore(root)
    with pytest.raises(UnsafePath, match="symlink"):
        store.save(ns, "s", PAIR)
    with pytest.raises(UnsafePath):
        store.load(ns, "s")
    assert _everything(victim) == before
    assert (victim / "s/v1/precious").read_text() == "not certop's"


def test_an_old_version_that_is_a_symlink_is_unlinked_not_followed(tmp_path: Path) -> None:
    victim = _victim(tmp_path)
    store = FileCertStore(tmp_path / "state")
    store.save("ns", "s", PAIR)
    base = tmp_path / "state/certs/ns/s"
    (base / "v0").symlink_to(victim / "s" / "v1")
    for n in range(3):
        store.save("ns", "s", StoredCert(b"c%d" % n, b"k%d" % n))
    assert not (base / "v0").is_symlink()
    assert (victim / "s/v1/precious").read_text() == "not certop's"
    assert store.load("ns", "s") == StoredCert(b"c2", b"k2")


def test_the_next_version_planted_as_a_symlink_is_not_followed(tmp_path: Path) -> None:
    victim = _victim(tmp_path)
    store = FileCertStore(tmp_path / "state")
    store.save("ns", "s", PAIR)
    base = tmp_path / "state/certs/ns/s"
    (base / "v2").symlink_to(victim / "s" / "v1")
    store.save("ns", "s", StoredCert(b"new", b"new"))
    assert (victim / "s/v1/precious").read_text() == "not certop's"
    assert sorted(p.name for p in (victim / "s/v1").iterdir()) == ["precious"]
    assert store.load("ns", "s") == StoredCert(b"new", b"new")


@pytest.mark.parametrize("planted", ["orders", "orders/ns", "accounts", "accounts/a"])
def test_journal_and_account_writes_never_go_through_a_symlink(tmp_path: Path,
                                                               planted: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "s.json").write_text("not certop's")
    root = tmp_path / "state"
    (root / planted).parent.mkdir(parents=True, exist_ok=True)
    (root / planted).symlink_to(outside if "/" in planted else tmp_path)
    ns = "ns" if "/" in planted else "outside"
    with pytest.raises(UnsafePath, match="symlink"):
        if planted.startswith("orders"):
            FileOrderJournal(root).save(ns, "s", {"key_pem": "k"})
        else:
            FileAccountStore(root).save_account_key("a" if "/" in planted else "outside", b"k")
    if planted.startswith("orders"):
        with pytest.raises(UnsafePath, match="symlink"):
            FileOrderJournal(root).clear(ns, "s")
    assert sorted(p.name for p in outside.iterdir()) == ["s.json"]
    assert (outside / "s.json").read_text() == "not certop's"


def test_a_state_dir_that_is_itself_a_symlink_is_the_users_choice(tmp_path: Path) -> None:
    real = tmp_path / "disk" / "certop"
    real.mkdir(parents=True)
    (tmp_path / "state").symlink_to(real)
    FileCertStore(tmp_path / "state").save("ns", "s", PAIR)
    assert FileCertStore(tmp_path / "state").load("ns", "s") == PAIR
    assert (real / "certs/ns/s/current/tls.key").read_bytes() == b"key"


def _modes(top: Path) -> dict[str, str]:
    return {str(p.relative_to(top)): oct(stat.S_IMODE(p.stat().st_mode))
            for p in [top, *top.rglob("*")] if p.is_dir() and not p.is_symlink()}


def test_every_directory_the_stores_create_is_0700_parents_included(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        root = tmp_path / "new" / "parent" / "state"
        ensure_dir(root)
        FileCertStore(root).save("ns", "s", PAIR)
        FileAccountStore(root).save_account_key("a", b"k")
        FileAccountStore(root).save_account_info("a", {})
        FileOrderJournal(root).save("ns", "s", {"key_pem": "k"})
    finally:
        os.umask(old)
    modes = _modes(tmp_path / "new")
    assert set(modes.values()) == {"0o700"}, modes
    assert {"parent", "parent/state", "parent/state/accounts", "parent/state/certs",
            "parent/state/certs/ns", "parent/state/orders/ns"} <= set(modes)


def test_directories_an_older_certop_left_open_are_closed(tmp_path: Path) -> None:
    root = tmp_path / "state"
    for d in ("accounts", "certs/ns", "orders/ns"):
        (root / d).mkdir(parents=True, mode=0o755)
        os.chmod(root / d, 0o755)
    os.chmod(root / "certs", 0o755)
    FileCertStore(root).save("ns", "s", PAIR)
    FileAccountStore(root).save_account_key("a", b"k")
    FileOrderJournal(root).save("ns", "s", {})
    modes = _modes(root)
    del modes["."]  # the state directory itself is the user's
    assert set(modes.values()) == {"0o700"}, modes


@pytest.mark.parametrize("planted", ["current", "v2", "v2/tls.key"])
def test_a_certificate_is_never_read_through_a_planted_symlink(tmp_path: Path,
                                                               planted: str) -> None:
    secret = tmp_path / "outside-key.pem"
    secret.write_bytes(b"someone else's key")
    store = FileCertStore(tmp_path / "state")
    store.save("ns", "s", PAIR)
    store.save("ns", "s", PAIR)
    base = tmp_path / "state/certs/ns/s"
    target = {"current": "../../../../outside/x", "v2": str(tmp_path / "outside"),
              "v2/tls.key": str(secret)}[planted]
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "tls.crt").write_bytes(b"cert")
    (tmp_path / "outside" / "tls.key").write_bytes(b"someone else's key")
    victim = base / planted
    if victim.is_dir() and not victim.is_symlink():
        import shutil
        shutil.rmtree(victim)
    else:
        victim.unlink()
    victim.symlink_to(target)
    with pytest.raises(UnsafePath):
        store.load("ns", "s")


def test_an_account_key_is_never_read_through_a_planted_symlink(tmp_path: Path) -> None:
    (tmp_path / "elsewhere.pem").write_bytes(b"someone else's key")
    accounts = FileAccountStore(tmp_path / "state")
    accounts.save_account_info("a", {})
    (tmp_path / "state/accounts/a/key.pem").symlink_to(tmp_path / "elsewhere.pem")
    with pytest.raises(UnsafePath, match="a file inside the state directory"):
        accounts.load_account("a")
