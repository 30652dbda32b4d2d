"""One contract for every store adapter (files, memory; Secrets later)."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from certop.store.files import FileAccountStore, FileCertStore, FileOrderJournal, write_atomic
from certop.store.memory import MemoryAccountStore, MemoryCertStore, MemoryOrderJournal
from certop.store.ports import StoredCert

STORES: dict[str, Callable[[Path], tuple[Any, Any, Any]]] = {
    "files": lambda p: (FileCertStore(p), FileAccountStore(p), FileOrderJournal(p)),
    "memory": lambda p: (MemoryCertStore(), MemoryAccountStore(), MemoryOrderJournal()),
}


@pytest.fixture(params=list(STORES))
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Any, Any, Any]:
    return STORES[request.param](tmp_path)


def test_certificates_round_trip_and_replace_as_a_pair(stores: tuple[Any, Any, Any]) -> None:
    certs, _, _ = stores
    assert certs.load("ns", "s") is None
    certs.save("ns", "s", StoredCert(b"cert1", b"key1"))
    certs.save("ns", "s", StoredCert(b"cert2", b"key2"))
    assert certs.load("ns", "s") == StoredCert(b"cert2", b"key2")
    assert certs.load("other", "s") is None


def test_an_account_key_is_never_overwritten(stores: tuple[Any, Any, Any]) -> None:
    _, accounts, _ = stores
    assert accounts.load_account("a") is None
    accounts.save_account_key("a", b"key")
    accounts.save_account_info("a", {"uri": "https://ca/acct/1"})
    with pytest.raises(FileExistsError):
        accounts.save_account_key("a", b"other")
    assert accounts.load_account("a") == (b"key", {"uri": "https://ca/acct/1"})


def test_the_order_journal_saves_loads_and_clears(stores: tuple[Any, Any, Any]) -> None:
    _, _, journal = stores
    journal.save("ns", "s", {"order_url": "https://ca/order/1"})
    assert journal.load("ns", "s") == {"order_url": "https://ca/order/1"}
    journal.clear("ns", "s")
    journal.clear("ns", "s")
    assert journal.load("ns", "s") is None


def test_key_files_are_private_and_certificates_readable(tmp_path: Path) -> None:
    FileCertStore(tmp_path).save("ns", "s", StoredCert(b"c", b"k"))
    FileAccountStore(tmp_path).save_account_key("a", b"k")
    FileOrderJournal(tmp_path).save("ns", "s", {"key_pem": "k"})
    current = tmp_path / "certs/ns/s/current"
    assert stat.S_IMODE(os.stat(current / "tls.key").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(current / "tls.crt").st_mode) == 0o644
    assert stat.S_IMODE(os.stat(tmp_path / "accounts/a/key.pem").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "orders/ns/s.json").st_mode) == 0o600


def test_old_certificate_versions_are_pruned(tmp_path: Path) -> None:
    store = FileCertStore(tmp_path)
    for n in range(5):
        store.save("ns", "s", StoredCert(b"c%d" % n, b"k%d" % n))
    versions = sorted(p.name for p in (tmp_path / "certs/ns/s").glob("v*"))
    assert versions == ["v4", "v5"]
    assert store.load("ns", "s") == StoredCert(b"c4", b"k4")


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    target = tmp_path / "f"
    write_atomic(target, b"old")

    def boom(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]
