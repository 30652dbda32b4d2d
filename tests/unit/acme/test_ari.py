"""RFC 9773 pieces: the certificate identifier (checked against the `acme` library's own
implementation for serials with and without the sign bit), the `replaces` field, and the
journal rule that an order whose key is the stored certificate's is done with."""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass
from typing import Any

import pytest
from acme import client as acme_client
from acme import messages
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from certop import crypto
from certop.acme import ari
from certop.acme.orders import OrderSession, Stage
from certop.core.models import CertificateSpec, Fqdn, KeyAlgorithm, SecretName, SolverSpec
from certop.store.memory import MemoryOrderJournal
from certop.store.ports import StoredCert


def certificate(serial: int, with_aki: bool = True) -> bytes:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "a.test")]))
               .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ca")]))
               .public_key(key.public_key()).serial_number(serial)
               .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1)))
    if with_aki:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False)
    return builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


@pytest.mark.parametrize("serial", [1, 0x7F, 0x80, 0xFF, 0x8000, 2**159 - 1, 2**158 + 12345])
def test_the_certificate_id_is_the_one_the_acme_library_asks_about(serial: int) -> None:
    pem = certificate(serial)
    cert = x509.load_pem_x509_certificate(pem)
    assert ari.cert_id(pem) == acme_client._renewal_info_path_component(cert)


def test_a_certificate_without_an_authority_key_identifier_has_no_id() -> None:
    assert ari.cert_id(certificate(5, with_aki=False)) is None


def test_new_order_carries_replaces_only_when_given() -> None:
    ident = [messages.Identifier(typ=messages.IDENTIFIER_FQDN, value="a.test")]
    assert json.loads(ari.NewOrder(identifiers=ident, replaces="x.y").json_dumps()) == {
        "identifiers": [{"type": "dns", "value": "a.test"}], "replaces": "x.y"}
    assert "replaces" not in json.loads(ari.NewOrder(identifiers=ident).json_dumps())


@dataclass
class _Issuer:
    server: str = "https://ca.test/dir"
    solvers: tuple[SolverSpec, ...] = (SolverSpec(),)


@dataclass
class _Account:
    """Only what starting a journalled order reads (no network)."""

    issuer: _Issuer
    id: str = "acct"


SPEC = CertificateSpec("ns", SecretName("web-tls"), (Fqdn("a.test"),), "ca")


def _entry(key_pem: str, order_url: str | None) -> dict[str, Any]:
    return {"hosts": ["a.test"], "server": "https://ca.test/dir", "account": "acct",
            "key_algorithm": KeyAlgorithm.ECDSA_P256.value, "key_pem": key_pem,
            "order_url": order_url}


def session(journal: MemoryOrderJournal, stored_key_pem: bytes) -> OrderSession:
    account: Any = _Account(_Issuer())
    return OrderSession(SPEC, account, solvers=None, journal=journal,
                        stored=StoredCert(b"", stored_key_pem))


def test_a_journalled_order_whose_key_is_stored_already_is_not_resumed() -> None:
    key_pem = crypto.key_to_pem(crypto.generate_key(KeyAlgorithm.ECDSA_P256)).decode()
    journal = MemoryOrderJournal()
    journal.save("ns", "web-tls", _entry(key_pem, "https://ca.test/order/1"))
    fresh = session(journal, key_pem.encode())
    assert fresh.step().stage is Stage.KEY  # a new key, a new order next
    assert not fresh.resumed
    new = fresh._entry
    assert new is not None and new["order_url"] is None and new["key_pem"] != key_pem
    # Nothing journalled before the order is placed (one write, key and order URL together).
    assert journal.load("ns", "web-tls") == _entry(key_pem, "https://ca.test/order/1")


class _CountingJournal(MemoryOrderJournal):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def load(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.calls.append("load")
        return super().load(namespace, name)

    def clear(self, namespace: str, name: str) -> None:
        self.calls.append("clear")
        super().clear(namespace, name)


def test_without_resume_the_journal_is_not_read_and_a_finished_entry_can_stay() -> None:
    key_pem = crypto.key_to_pem(crypto.generate_key(KeyAlgorithm.ECDSA_P256)).decode()
    journal = _CountingJournal()
    journal.save("ns", "web-tls", _entry(key_pem, "https://ca.test/order/1"))
    account: Any = _Account(_Issuer())
    fresh = OrderSession(SPEC, account, solvers=None, journal=journal, resume=False,
                         clear_finished=False)
    assert fresh.step().stage is Stage.KEY
    assert not fresh.resumed and journal.calls == []
    fresh.finish()
    assert journal.calls == [] and journal.load("ns", "web-tls") is not None


def test_a_journalled_order_with_another_key_is_resumed() -> None:
    key_pem = crypto.key_to_pem(crypto.generate_key(KeyAlgorithm.ECDSA_P256)).decode()
    journal = MemoryOrderJournal()
    journal.save("ns", "web-tls", _entry(key_pem, None))
    resumed = session(journal, b"another key")
    assert resumed.step().stage is Stage.KEY
    entry = journal.load("ns", "web-tls")
    assert entry is not None and entry["key_pem"] == key_pem  # the journalled key is reused


def test_rotation_policy_never_keeps_the_stored_key_of_the_same_algorithm() -> None:
    from dataclasses import replace

    stored = crypto.key_to_pem(crypto.generate_key(KeyAlgorithm.ECDSA_P256))
    keep = replace(SPEC, reuse_key=True)
    for wanted, kept in ((keep, True), (SPEC, False),
                         (replace(keep, key_algorithm=KeyAlgorithm.RSA2048), False)):
        journal = MemoryOrderJournal()
        account: Any = _Account(_Issuer())
        session = OrderSession(wanted, account, solvers=None, journal=journal,
                               stored=StoredCert(b"", stored))
        session.step()
        entry = session._entry  # journalled with the order URL, at the next step
        assert entry is not None
        assert (entry["key_pem"].encode() == stored) is kept


def test_a_journalled_order_on_another_server_than_the_cas_is_never_fetched() -> None:
    """The journal lives where a tenant may write it (a Secret in its namespace): an order URL
    pointing anywhere but the CA's server is ignored, never fetched with the account's key."""
    key_pem = crypto.key_to_pem(crypto.generate_key(KeyAlgorithm.ECDSA_P256)).decode()
    for url, resumed in (("http://169.254.169.254/latest/meta-data", False),
                         ("https://ca.test:8443/order/1", False),
                         ("https://ca.test.evil/order/1", False),
                         ("https://ca.test/order/1", True)):
        journal = MemoryOrderJournal()
        journal.save("ns", "web-tls", _entry(key_pem, url))
        started = session(journal, b"another key")
        entry = started._start_entry()  # what the first step does, without the network
        assert started.resumed is resumed, url
        assert (entry["order_url"] == url) is resumed, url
