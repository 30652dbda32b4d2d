"""TLS termination by SNI, with certificates swapped in place and last-known-good kept.

A `CertBook` maps host names to the `SSLContext` of the Secret that serves them. The listening
socket's context has an SNI callback that hands each new connection the right context; open
connections keep the context they started with, so a renewal never drops a connection.
A pair that fails to load keeps the previous good context for its hosts and never touches other
hosts (ingress-nginx #3834); unknown SNI gets the default certificate.

Every context gets the same TLS policy, Mozilla's "intermediate" profile without DHE:
TLS 1.2 and 1.3; key exchange X25519, P-256, P-384 only (no finite-field groups: a client
offering only ffdhe8192 would cost ~100x the server CPU of X25519); TLS 1.2 suites ECDHE with
AES-GCM or ChaCha20-Poly1305; the client's preference order (a client without AES hardware asks
for ChaCha20 first and gets it); ALPN http/1.1. Session tickets are encrypted with `TicketKeys`
shared by all worker processes and rotated every 12 hours. The groups and ticket keys are set
through `libssl` (`ssl` has no API for them); the listening context is OpenSSL's session
context, so its ticket keys are the ones used whatever certificate SNI picks.
"""

from __future__ import annotations

import functools
import logging
import os
import ssl
import tempfile
from dataclasses import dataclass

from certop import crypto
from certop.core.routing import normalize_host
from certop.proxy import libssl
from certop.store.ports import StoredCert

log = logging.getLogger(__name__)
SecretKey = tuple[str, str]

GROUPS = "X25519:P-256:P-384"
"""Key exchange groups offered, most preferred first (Mozilla intermediate)."""
FALLBACK_CURVE = "prime256v1"
"""The one group offered when `libssl` cannot set GROUPS (`set_ecdh_curve`: P-256 only)."""
CIPHERS = ("@SECLEVEL=2:"
           "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
           "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
           "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305")
"""TLS 1.2 suites: Mozilla intermediate's without DHE. TLS 1.3 keeps OpenSSL's three (AES-128-GCM,
AES-256-GCM, ChaCha20-Poly1305), which are Mozilla's."""


def context_for(pair: StoredCert) -> ssl.SSLContext:
    """A server context for one certificate/key pair; raises CertificateUnreadable."""
    crypto.load_pair(pair.fullchain_pem, pair.key_pem)  # a clear reason before ssl's terse one
    return _context(pair)


@functools.cache
def _warn_fallback(why: str) -> None:
    log.warning("cannot set the TLS key exchange groups through libssl (%s): offering %s only",
                why, FALLBACK_CURVE)


def _context(pair: StoredCert) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])
    ctx.set_ciphers(CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION
    ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    try:
        libssl.set_groups(ctx, GROUPS)
    except OSError as exc:
        ctx.set_ecdh_curve(FALLBACK_CURVE)
        _warn_fallback(str(exc))
    with tempfile.TemporaryDirectory(prefix="certop-tls-") as tmp:
        # ssl loads keys from files only; the directory is private (0700) and removed at once.
        cert_path = os.path.join(tmp, "tls.crt")
        key_path = os.path.join(tmp, "tls.key")
        with open(cert_path, "wb") as fh:
            fh.write(pair.fullchain_pem)
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pair.key_pem)
        try:
            ctx.load_cert_chain(cert_path, key_path)
        except ssl.SSLError as exc:
            raise crypto.CertificateUnreadable(f"TLS library refused the pair: {exc}") from exc
    return ctx


@dataclass
class _Entry:
    pair: StoredCert
    context: ssl.SSLContext | None
    """Built at the first handshake for one of its hosts (`CertBook.context_for_host`): a
    context costs ~20 kB and ~1 ms, and 2,000 Secrets need not all be loaded up front."""
    not_after: float


class CertBook:
    def __init__(self, default: StoredCert | None = None,
                 tickets: libssl.TicketKeys | None = None) -> None:
        """`tickets`: the session-ticket keys, shared with the other workers (made before
        they are forked); by default keys of this process alone."""
        if default is None:
            cert, key = crypto.self_signed(("certop.invalid",))
            default = StoredCert(cert, key)
        self.default_context = context_for(default)
        self.default_context.sni_callback = self._sni
        self.tickets = tickets or libssl.TicketKeys()
        if not self.tickets.install(self.default_context):
            log.warning("cannot set session-ticket keys through %s (%s): each worker process "
                        "resumes only its own sessions", ssl.OPENSSL_VERSION,
                        libssl.available()[1] or "refused")
        self._entries: dict[SecretKey, _Entry] = {}
        self._hosts: dict[str, SecretKey] = {}
        self.errors: dict[SecretKey, str] = {}

    @property
    def server_context(self) -> ssl.SSLContext:
        """The context to listen with; it dispatches on SNI."""
        return self.default_context

    def _sni(self, sslobj: ssl.SSLObject, server_name: str | None,
             _ctx: ssl.SSLContext) -> int | None:
        # OpenSSL calls this for every ClientHello, SNI or not: the moment to rotate the
        # ticket keys when a period has passed (one clock read otherwise).
        self.tickets.rotate()
        if server_name:
            ctx = self.context_for_host(normalize_host(server_name))
            if ctx is not None:
                sslobj.context = ctx
        return None

    def context_for_host(self, host: str) -> ssl.SSLContext | None:
        key = self._hosts.get(host)
        if key is None:
            dot = host.find(".")
            if dot > 0:
                key = self._hosts.get("*" + host[dot:])
        if key is None:
            return None
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.context is None:
            try:
                entry.context = _context(entry.pair)
            except crypto.CertificateUnreadable as exc:  # checked when put: not expected
                log.error("TLS Secret %s/%s: %s; its hosts get the default certificate",
                          key[0], key[1], exc)
                self.errors[key] = str(exc)
                del self._entries[key]
                return None
        return entry.context

    def put(self, key: SecretKey, pair: StoredCert) -> bool:
        """Load a pair for a Secret; on failure keep the previous one. True if now in use."""
        entry = self._entries.get(key)
        if entry is not None and entry.pair == pair:
            return True
        try:
            loaded = crypto.load_pair(pair.fullchain_pem, pair.key_pem)
            # The context is built at the first handshake that needs it, unless the pair
            # replaces one in use (its hosts are being served: build it now, off no one).
            ctx = _context(pair) if entry is not None and entry.context is not None else None
        except crypto.CertificateUnreadable as exc:
            self.errors[key] = str(exc)
            log.warning("TLS Secret %s/%s unusable (%s); %s", key[0], key[1], exc,
                        "keeping the previous certificate" if entry else "hosts use the default")
            return False
        self._entries[key] = _Entry(pair, ctx, loaded.facts.not_after.timestamp())
        self.errors.pop(key, None)
        return True

    def set_hosts(self, hosts: dict[str, SecretKey]) -> None:
        """Which Secret serves which SNI host name (from the Ingresses' spec.tls)."""
        self._hosts = dict(hosts)
        for key in set(self._entries) - set(hosts.values()):
            del self._entries[key]

    def has(self, key: SecretKey) -> bool:
        return key in self._entries

    def pair(self, key: SecretKey) -> StoredCert | None:
        """The pair new connections for this Secret's hosts get."""
        entry = self._entries.get(key)
        return entry.pair if entry else None

    def expiry(self) -> dict[SecretKey, float]:
        """notAfter (Unix time) of every certificate in use."""
        return {key: entry.not_after for key, entry in self._entries.items()}
