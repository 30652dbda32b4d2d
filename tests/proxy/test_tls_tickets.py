"""Session-ticket keys (`TicketKeys`): shared by contexts made from one secret, rotated by the
clock through a one-way ratchet, through real OpenSSL handshakes in memory."""

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


pytestmark = pytest.mark.skipif(not libssl.available()[0], reason="needs OpenSSL through ctypes")


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
def test_keys_rotate_each_period_in_every_book_alike(version: ssl.TLSVersion) -> None:
    """Two workers made from one secret move to the same new key when a period passes, with no
    message between them: a ticket from before the rotation gets a full handshake, and a
    ticket one worker issues after it resumes on the other."""
    clock = Clock()
    a_keys = libssl.TicketKeys(PERIOD, secret=b"s" * 32, clock=clock)
    b_keys = libssl.TicketKeys(PERIOD, secret=b"s" * 32, clock=clock)
    a = CertBook(StoredCert(*crypto.self_signed(("t.test",))), a_keys)
    b = CertBook(StoredCert(*crypto.self_signed(("t.test",))), b_keys)
    old, _ = connect(a, version, None)
    first = a_keys.name
    clock.now += PERIOD
    # The first handshake of each worker in a period rotates its keys, for the handshakes
    # after it (OpenSSL has read the ticket by then): one full handshake per worker at most.
    connect(a, version, None)
    connect(b, version, None)
    assert a_keys.name != first
    fresh, reused = connect(a, version, old)
    assert not reused
    assert connect(b, version, fresh)[1]  # b rotated alike
    assert b_keys.name == a_keys.name
    assert connect(a, version, fresh)[1]


def test_the_ratchet_cannot_be_turned_back() -> None:
    """Forward secrecy across periods: the state after a rotation determines the later keys,
    never the earlier ones (each period's secret is a one-way hash of the one before)."""
    clock = Clock()
    keys = libssl.TicketKeys(PERIOD, secret=b"s" * 32, clock=clock)
    seen = [keys.name]
    for _ in range(3):
        clock.now += PERIOD
        keys.rotate()
        seen.append(keys.name)
    assert len(set(seen)) == 4
    later = libssl.TicketKeys(PERIOD, secret=keys._secret, clock=clock)
    assert later.name == keys.name  # the current state: the current key ...
    clock.now += PERIOD
    later.rotate()
    keys.rotate()
    assert later.name == keys.name  # ... and the next ones, no earlier one
    assert keys._secret not in (b"s" * 32,)
