"""A small test PKI like a public CA's: root -> intermediate -> leaf, ECDSA P-256 or RSA 2048
leaves, written as the files `certop standalone --certificate` takes (leaf + intermediate,
in that order, and the key) plus the root for clients to trust."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certop import crypto

Key = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, key: Key, issuer: str, issuer_key: Key, ca: bool,
          hosts: tuple[str, ...] = (), days: int = 90) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            issuer_key.public_key()), False)
    )
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(h) for h in hosts]), False,
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
    return builder.sign(issuer_key, hashes.SHA256())


@dataclass(frozen=True)
class Leaf:
    fullchain: Path
    """Leaf then intermediate (PEM)."""
    key: Path


@dataclass(frozen=True)
class Pki:
    root: Path
    """The root certificate (PEM), for clients to trust."""
    directory: Path
    _root_key: Key
    _inter_key: Key
    _inter: x509.Certificate

    def leaf(self, name: str, hosts: tuple[str, ...], algorithm: str = "ecdsa") -> Leaf:
        key: Key = ec.generate_private_key(ec.SECP256R1()) if algorithm == "ecdsa" else \
            rsa.generate_private_key(public_exponent=65537, key_size=2048)
        cert = _cert(hosts[0], key, "certop test intermediate", self._inter_key, False, hosts)
        pem = crypto.serialization.Encoding.PEM
        chain = self.directory / f"{name}.crt"
        chain.write_bytes(cert.public_bytes(pem) + self._inter.public_bytes(pem))
        key_path = self.directory / f"{name}.key"
        key_path.write_bytes(crypto.key_to_pem(key))
        key_path.chmod(0o600)
        return Leaf(chain, key_path)


def make_pki(directory: Path) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    root_key = ec.generate_private_key(ec.SECP384R1())
    root = _cert("certop test root", root_key, "certop test root", root_key, True, days=3650)
    inter_key = ec.generate_private_key(ec.SECP256R1())
    inter = _cert("certop test intermediate", inter_key, "certop test root", root_key, True,
                  days=1825)
    root_path = directory / "root.pem"
    root_path.write_bytes(root.public_bytes(crypto.serialization.Encoding.PEM))
    return Pki(root_path, directory, root_key, inter_key, inter)
