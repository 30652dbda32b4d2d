"""Session-ticket keys (`TicketKeys`): shared by contexts made from one secret, rotated by the
clock with the previous key still accepted, through real OpenSSL handshakes in memory."""

from __future__ import annotations

import contextlib
import ssl

import pytest

from certop import crypto
from certop.proxy import libssl
from certop.proxy.tls import CertBook
from certop.store.ports import StoredCert

PERIOD = 12 * 3600.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def _pump(client: ssl.SSLObject, server: ssl.SSLObject, c_in: ssl.MemoryBIO,
          c_out: ssl.MemoryBIO, s_in: ssl.MemoryBIO, s_out: ssl.MemoryBIO) -> None:
    """Move bytes both ways until neither side has more to say."""
    for _ in range(20):
        if c_out.pending:
            s_in.write(c_out.read())
        if s_out.pending:
            c_in.write(s_out.read())
        for side in (client, server):
            with contextlib.suppress(ssl.SSLWantReadError):
                side.do_handshake()
        if not c_out.pending and not s_out.pending:
            return
    raise AssertionError("handshake did not settle")


_clients: dict[ssl.TLSVersion, ssl.SSLContext] = {}


def connect(book: CertBook, version: ssl.TLSVersion,
            session: ssl.SSLSession | None) -> tuple[ssl.SSLSession, bool]:
    """One handshake against `book`'s listening context; the client's new session and
    whether the offered one was resumed."""
    client_ctx = _clients.get(version)
    if client_ctx is None:
        client_ctx = _clients[version] = ssl.create_default_context()
        client_ctx.check_hostname, client_ctx.verify_mode = False, ssl.CERT_NONE
        client_ctx.minimum_version = client_ctx.maximum_version = version
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname="t.test", session=session)
    server = book.server_context.wrap_bio(s_in, s_out, server_side=True)
    _pump(client, server, c_in, c_out, s_in, s_out)
    server.write(b"x")  # TLS 1.3 tickets come after the handshake: read them with data
    c_in.write(s_out.read())
    assert client.read(1) == b"x"
    assert client.session is not None
    return client.session, client.session_reused


pytestmark = pytest.mark.skipif(not libssl.available()[0] or not libssl._load()[0].tickets,
                                reason="needs OpenSSL >= 3.0 through ctypes")


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2],
                         ids=["tls1.3", "tls1.2"])
def test_books_with_one_secret_resume_each_others_sessions(version: ssl.TLSVersion) -> None:
    pair = StoredCert(*crypto.self_signed(("t.test",)))
    secret = b"s" * 32
    a = CertBook(pair, libssl.TicketKeys(secret=secret))
    b = CertBook(pair, libssl.TicketKeys(secret=secret))
    other = CertBook(pair, libssl.TicketKeys())
    session, _ = connect(a, version, None)
    assert connect(b, version, session)[1]
    assert not connect(other, version, session)[1]


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2],
                         ids=["tls1.3", "tls1.2"])
def test_keys_rotate_each_period_and_the_previous_key_still_decrypts(
        version: ssl.TLSVersion) -> None:
    clock = Clock()
    keys = libssl.TicketKeys(PERIOD, clock=clock)
    book = CertBook(StoredCert(*crypto.self_signed(("t.test",))), keys)
    session, _ = connect(book, version, None)
    issued_under = keys.key(int(clock.now // PERIOD)).name
    clock.now += PERIOD  # the next period: a new key encrypts, the old one still decrypts
    assert keys.key(int(clock.now // PERIOD)).name != issued_under
    renewed, reused = connect(book, version, session)
    assert reused
    clock.now += PERIOD  # two periods on: the first key is gone
    assert not connect(book, version, session)[1]
    # The ticket renewed in the previous period (under its then-current key) still resumes.
    assert connect(book, version, renewed)[1]
