"""Keys, CSRs and certificate facts (cryptography only; no network, no files).

Private keys are generated fresh for every issuance (rotation by default, like cert-manager
1.18+ and Caddy) and are never logged: nothing here formats a key into a message.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from certop.core.models import KeyAlgorithm
from certop.core.renewal import CertFacts

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


class CertificateUnreadable(ValueError):
    """A PEM that is not a usable certificate/key pair; the message says why."""


def generate_key(algorithm: KeyAlgorithm) -> PrivateKey:
    if algorithm is KeyAlgorithm.ECDSA_P256:
        return ec.generate_private_key(ec.SECP256R1())
    bits = int(algorithm.value.split("-")[1])
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def key_to_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def key_from_pem(pem: bytes) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise CertificateUnreadable("the private key is not an unencrypted PEM key") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise CertificateUnreadable("the private key is neither ECDSA nor RSA")
    return key


def make_csr(key: PrivateKey, hosts: tuple[str, ...]) -> bytes:
    """A CSR for `hosts` (all as SANs; no CN, as RFC 8555 needs none)."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(h) for h in hosts]), False)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def key_algorithm_of(key: object) -> KeyAlgorithm | None:
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        return KeyAlgorithm.ECDSA_P256 if key.curve.name == "secp256r1" else None
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        try:
            return KeyAlgorithm(f"RSA-{key.key_size}")
        except ValueError:
            return None
    return None


def split_chain(fullchain_pem: bytes) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(fullchain_pem)
    except ValueError as exc:
        raise CertificateUnreadable("the certificate file is not PEM") from exc
    if not certs:
        raise CertificateUnreadable("the certificate file holds no certificate")
    return certs


def root_of(fullchain_pem: bytes) -> bytes | None:
    """The chain's self-signed top certificate (PEM) when the chain carries it, else None: a
    Secret's `ca.crt` "when known" (ACME chains usually stop below the root)."""
    try:
        certs = x509.load_pem_x509_certificates(fullchain_pem)
    except ValueError:
        return None
    if len(certs) < 2 or certs[-1].issuer != certs[-1].subject:
        return None
    top = certs[-1]
    try:
        top.verify_directly_issued_by(top)
    except (ValueError, TypeError, InvalidSignature):
        return None
    return top.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class Loaded:
    """A certificate/key pair checked to belong together."""

    leaf: x509.Certificate
    chain: list[x509.Certificate]
    facts: CertFacts


def load_pair(fullchain_pem: bytes, key_pem: bytes) -> Loaded:
    """Parse and check a pair; raises CertificateUnreadable with a reason."""
    chain = split_chain(fullchain_pem)
    leaf = chain[0]
    key = key_from_pem(key_pem)
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    if leaf.public_key().public_bytes(serialization.Encoding.DER, pub) != key.public_key(
    ).public_bytes(serialization.Encoding.DER, pub):
        raise CertificateUnreadable("the private key does not match the certificate")
    return Loaded(leaf, chain, facts_of(leaf))


def sans_of(cert: x509.Certificate) -> frozenset[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return frozenset(str(n.value).lower() for n in names)
    return frozenset(n.lower() for n in ext.value.get_values_for_type(x509.DNSName))


def facts_of(cert: x509.Certificate) -> CertFacts:
    return CertFacts(
        hosts=sans_of(cert),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        key_algorithm=key_algorithm_of(cert.public_key()),
    )


def self_signed(hosts: tuple[str, ...], days: int = 365,
                now: datetime.datetime | None = None) -> tuple[bytes, bytes]:
    """A self-signed ECDSA certificate valid from `now` for `days` (the default certificate
    for unknown SNI; tests)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = now or datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(h) for h in hosts]), False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_to_pem(key)
