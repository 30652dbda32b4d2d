"""ACME Renewal Information (RFC 9773): a certificate's identifier, and the `replaces` field a
renewal order carries so that the CA can tie the new certificate to the one it replaces."""

from __future__ import annotations

import base64

from acme import messages
from cryptography import x509
from josepy.json_util import field


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def cert_id(cert_pem: bytes) -> str | None:
    """base64url(Authority Key Identifier) "." base64url(serial as a DER INTEGER's content),
    for the first certificate in `cert_pem`; None when it has no Authority Key Identifier (then
    it cannot be named to the CA)."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    except x509.ExtensionNotFound:
        return None
    if aki.key_identifier is None:
        return None
    serial = cert.serial_number
    # A DER INTEGER is signed: one more bit for the sign, so 0x80.. gets a leading zero byte.
    content = serial.to_bytes((serial.bit_length() + 8) // 8, "big")
    return f"{_b64url(aki.key_identifier)}.{_b64url(content)}"


def offered(directory: messages.Directory) -> bool:
    """Whether the CA's directory offers renewal information."""
    try:
        directory["renewalInfo"]
    except KeyError:
        return False
    return True


class NewOrder(messages.NewOrder):
    """newOrder with RFC 9773's `replaces` (the pinned `acme` has no parameter for it)."""

    replaces: str = field("replaces", omitempty=True)


REFUSED_REPLACES = {"alreadyReplaced", "conflict", "malformed"}
"""Problem types a CA answers for an unacceptable `replaces`: the order is placed again
without it (RFC 9773 section 5)."""
