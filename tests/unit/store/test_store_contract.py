"""One contract for every store adapter: files, memory and Secrets (against the emulator)."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kube import EmulatorThread

from certop.store.files import FileAccountStore, FileCertStore, FileOrderJournal, write_atomic
from certop.store.memory import MemoryAccountStore, MemoryCertStore, MemoryOrderJournal
from certop.store.ports import StoredCert
from certop.store.secrets import (
    SecretAccountStore,
    SecretCertStore,
    SecretNotOwned,
    SecretOrderJournal,
)


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorThread]:
    with EmulatorThread() as e:
        yield e


CERT_STORES: dict[str, Callable[[Path, EmulatorThread], Any]] = {
    "files": lambda p, e: FileCertStore(p),
    "memory": lambda p, e: MemoryCertStore(),
    "secrets": lambda p, e: SecretCertStore(e.core()),
}


@pytest.fixture(params=list(CERT_STORES))
def cert_store(request: pytest.FixtureRequest, tmp_path: Path, emulator: EmulatorThread) -> Any:
    return CERT_STORES[request.param](tmp_path, emulator)


def test_certificates_round_trip_and_replace_as_a_pair(cert_store: Any, tmp_path: Path) -> None:
    ns = _namespace(tmp_path)
    assert cert_store.load(ns, "s") is None
    assert cert_store.version(ns, "s") is None
    cert_store.save(ns, "s", StoredCert(b"cert1", b"key1"))
    first = cert_store.version(ns, "s")
    cert_store.save(ns, "s", StoredCert(b"cert2", b"key2"))
    assert cert_store.load(ns, "s") == StoredCert(b"cert2", b"key2")
    assert cert_store.version(ns, "s") not in (None, first)
    assert cert_store.load(ns + "x", "s") is None


def test_a_secret_certop_does_not_own_is_never_overwritten(emulator: EmulatorThread) -> None:
    api = emulator.core()
    foreign = {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
               "metadata": {"name": "theirs", "namespace": "owned-test"},
               "data": {"tls.crt": "Zm9yZWlnbg==", "tls.key": "Zm9yZWlnbg=="}}
    api.create_namespaced_secret("owned-test", foreign)
    store = SecretCertStore(api)
    with pytest.raises(SecretNotOwned, match="not managed by certop"):
        store.save("owned-test", "theirs", StoredCert(b"ours", b"ours"))
    assert store.load("owned-test", "theirs") == StoredCert(b"foreign", b"foreign")
    assert store.owned("owned-test", "theirs") is False
    store.save("owned-test", "mine", StoredCert(b"c", b"k"))
    assert store.owned("owned-test", "mine") is True
    secret = api.read_namespaced_secret("mine", "owned-test")
    assert secret.type == "kubernetes.io/tls"
    assert secret.metadata.labels == {"certop.dev/managed": "true"}


ACCOUNT_STORES: dict[str, Callable[[Path, EmulatorThread], Any]] = {
    "files": lambda p, e: FileAccountStore(p),
    "memory": lambda p, e: MemoryAccountStore(),
    "secrets": lambda p, e: SecretAccountStore(e.core(), _namespace(p)),
}


def _namespace(tmp_path: Path) -> str:
    """A fresh namespace per test, derived from its unique temporary directory."""
    return tmp_path.name[-40:].lower().replace("_", "-").strip("-")


@pytest.mark.parametrize("kind", list(ACCOUNT_STORES))
def test_an_account_key_is_never_overwritten(kind: str, tmp_path: Path,
                                             emulator: EmulatorThread) -> None:
    accounts = ACCOUNT_STORES[kind](tmp_path, emulator)
    assert accounts.load_account("a") is None
    accounts.save_account_key("a", b"key")
    accounts.save_account_info("a", {"uri": "https://ca/acct/1"})
    with pytest.raises(FileExistsError):
        accounts.save_account_key("a", b"other")
    assert accounts.load_account("a") == (b"key", {"uri": "https://ca/acct/1"})


JOURNALS: dict[str, Callable[[Path, EmulatorThread], Any]] = {
    "files": lambda p, e: FileOrderJournal(p),
    "memory": lambda p, e: MemoryOrderJournal(),
    "secrets": lambda p, e: SecretOrderJournal(e.core()),
}


@pytest.mark.parametrize("kind", list(JOURNALS))
def test_the_order_journal_saves_loads_and_clears(kind: str, tmp_path: Path,
                                                  emulator: EmulatorThread) -> None:
    journal = JOURNALS[kind](tmp_path, emulator)
    ns = _namespace(tmp_path)
    assert journal.load(ns, "s") is None
    journal.save(ns, "s", {"order_url": "https://ca/order/1"})
    journal.save(ns, "s", {"order_url": "https://ca/order/2", "key_pem": "k"})
    assert journal.load(ns, "s") == {"order_url": "https://ca/order/2", "key_pem": "k"}
    journal.clear(ns, "s")
    journal.clear(ns, "s")
    assert journal.load(ns, "s") is None


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


def test_an_account_secret_certop_does_not_own_is_used_but_never_written(
        emulator: EmulatorThread) -> None:
    api = emulator.core()
    # A cert-manager account Secret, migrated as it is.
    api.create_namespaced_secret("accounts", {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "le-account"},
        "data": {"tls.key": "a2V5"}})
    store = SecretAccountStore(api, "accounts", {"acct": "le-account"})
    assert store.load_account("acct") == (b"key", {})
    store.save_account_info("acct", {"uri": "https://ca/acct/9"})
    secret = api.read_namespaced_secret("le-account", "accounts")
    assert not (secret.metadata.annotations or {})


def _chain(with_root: bool) -> bytes:
    """leaf <- intermediate <- root, PEM; the root included or not."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def make(subject: str, issuer: str, key: Any, signer: Any, ca: bool) -> x509.Certificate:
        return (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=ca, path_length=None), True)
                .sign(signer, hashes.SHA256()))

    root_key, inter_key, leaf_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    certs = [make("a.test", "inter", leaf_key, inter_key, False),
             make("inter", "root", inter_key, root_key, True)]
    if with_root:
        certs.append(make("root", "root", root_key, root_key, True))
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def test_a_secret_carries_ca_crt_when_the_chain_carries_its_root(
        emulator: EmulatorThread) -> None:
    import base64

    api = emulator.core()
    store = SecretCertStore(api)

    def ca_crt() -> bytes | None:
        data = api.read_namespaced_secret("web-tls", "ca-test").data or {}
        return base64.b64decode(data["ca.crt"]) if "ca.crt" in data else None

    rooted = _chain(with_root=True)
    store.save("ca-test", "web-tls", StoredCert(rooted, b"k"))
    found = ca_crt()
    assert found is not None and rooted.endswith(found)
    store.save("ca-test", "web-tls", StoredCert(_chain(with_root=False), b"k"))
    assert ca_crt() is None  # the old root is not left behind
    store.save("ca-test", "web-tls", StoredCert(_chain(with_root=True), b"k"))
    assert ca_crt() is not None
