"""The proxy's data path: asyncio Protocols for the client and upstream sides.

Why Protocols and not streams: every request would otherwise cost several StreamReader
wake-ups and a task for each timeout; here a request that arrives in one segment and is
answered in one segment costs one `data_received` on each side and no task at all.

Rules:
1. One request at a time per client connection. Bytes of a pipelined next request stay in the
   buffer and reading pauses until the current exchange is over (responses stay in order).
2. Bodies stream in both directions as they arrive; back-pressure pauses the other side.
3. Framing is checked strictly (`http1.parse_head`, `request_framing`, `ChunkScanner`): a
   message certop cannot delimit with certainty is answered 400 (or 502) and the connection is
   closed, so no request can be smuggled past routing.
4. An upstream connection goes back to the pool only after a complete response to a complete
   request; anything else closes it. Nor after a request with a chunked body: a backend that
   reads chunked framing otherwise than certop could still answer a "request" it found in the
   body, and that answer must not reach the next client of the connection.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Protocol, cast

from certop.core.models import ServiceBackend
from certop.core.routing import UNKNOWN_LABEL, RouteTable
from certop.core.serving import Address
from certop.metrics import Metrics
from certop.proxy.http1 import (
    ChunkScanner,
    FastRequest,
    Framing,
    Head,
    HttpError,
    fast_request,
    fast_response,
    framing_for,
    parse_head,
    request_framing,
    response_framing,
)
from certop.proxy.settings import ProxySettings
from certop.proxy.upstream import Balancer, Pool

IDLE, BODY, DRAIN, WAIT, TUNNEL, CLOSED = range(6)
LINGER = 6
"""Answered with `Connection: close`; what the client still sends is discarded until it
closes or `drain_timeout` passes (so it reads the answer, not a reset)."""
PIPELINED, UPSTREAM = 1, 2
"""Why reading from a client is paused: bytes of a next request wait in its buffer; the
upstream cannot take more (not connected yet, or its write buffer is full)."""
PENDING_LIMIT = 64 * 1024
"""Request body bytes kept while the upstream connection is being made (reading pauses)."""
NO_BODY = Framing(length=0)
UNTIL_CLOSE = Framing(length=None, until_close=True)
_FAST_HEAD = Head((b"", b"", b""), [])
"""Marks an upstream response whose head took the fast path (its body is being relayed)."""
INF = float("inf")
UNROUTED = b""
"""`ClientConn._fail`'s HSTS argument when no route is known yet."""


class Decision:
    """What to do with one request: reply locally, or forward to a backend.
    (A plain class with slots: one is made per request.)"""

    __slots__ = ("backend", "body_limit", "hsts", "label", "local", "upgrade")

    def __init__(self, local: bytes | None = None, backend: ServiceBackend | None = None,
                 upgrade: bytes | None = None, body_limit: int | None = None,
                 hsts: bytes | None = None, label: str = UNKNOWN_LABEL) -> None:
        self.local = local
        self.backend = backend
        self.upgrade = upgrade
        self.body_limit = body_limit
        self.hsts = hsts
        self.label = label
        """The host as a metrics label (as a rule names it, or "_unknown")."""


class Front(Protocol):
    """What a client connection needs of the proxy (the proxy's decisions and counters)."""

    settings: ProxySettings
    metrics: Metrics
    routes: RouteTable
    closing: bool
    connections: set[ClientConn]
    handshaking: weakref.WeakSet[ClientConn]

    def drained(self) -> None: ...

    def count(self, host: str, status: int) -> None: ...

    def simple(self, status: int, body: bytes = b"", extra: list[tuple[bytes, bytes]] | None
               = None, close: bool = False) -> bytes: ...

    def decide(self, head: Head, tls: bool) -> Decision: ...

    def route_request(self, target: bytes, host_raw: bytes, tls: bool, close: bool,
                      upgrade: bytes | None = None) -> Decision: ...

    def upstream_head_fast(self, req: FastRequest, tls: bool, client_ip: bytes) -> bytes: ...

    def upstream_head(self, head: Head, framing: Framing, tls: bool, client_ip: bytes,
                      upgrade: bytes | None) -> bytes: ...

    def dispatch(self, client: ClientConn, backend: ServiceBackend) -> None: ...


class Back(Protocol):
    """What an upstream connection needs of the proxy (pool, balancer, response heads)."""

    settings: ProxySettings
    closing: bool
    upstreams: set[UpstreamConn]
    pool: Pool[UpstreamConn]
    balancer: Balancer

    def retry(self, client: ClientConn) -> None: ...

    def downstream_head(self, resp: Head, framing: Framing, keep: bool, upgrade: bool,
                        hsts: bytes | None = None) -> bytes: ...

    def observe(self, exchange: Exchange, status: int) -> None: ...


class Exchange:
    """One request forwarded upstream and its response coming back."""

    __slots__ = ("addr", "body_done", "client", "head_bytes", "hsts", "label", "method",
                 "response_started", "retryable", "started", "target", "upgrade")

    def __init__(self, client: ClientConn, method: bytes, target: bytes, head_bytes: bytes,
                 upgrade: bool, retryable: bool, hsts: bytes | None, label: str) -> None:
        self.client = client
        self.target = target
        self.hsts = hsts
        self.label = label
        self.method = method
        self.head_bytes = head_bytes
        self.upgrade = upgrade
        self.retryable = retryable
        self.body_done = False
        self.response_started = False
        self.addr: Address | None = None
        self.started = client.loop.time()


class ClientConn(asyncio.Protocol):
    """The downstream side of one client connection (plain or TLS)."""

    def __init__(self, proxy: Front, tls: bool) -> None:
        self.proxy = proxy
        self.tls = tls
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.state = IDLE
        self.keep_alive = True
        self.http10 = False  # the current request is HTTP/1.0: no chunked answer, no 1xx
        self.client_ip = b""
        self.framing = Framing()
        self.remaining = 0
        self.scanner: ChunkScanner | None = None
        self.body_seen = 0
        self.exchange: Exchange | None = None
        self.upstream: UpstreamConn | None = None
        self.pending: list[bytes] = []  # request body bytes waiting for the upstream connection
        self.pending_size = 0
        self.deadline = INF
        self.idle = INF  # the current phase's idle timeout: progress moves the deadline by it
        self.paused = 0  # PIPELINED | UPSTREAM: why reading is paused
        self.write_paused = False  # our transport's write buffer is full
        self.body_limit: int | None = None
        self.local_reply = b""
        self.eof = False

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        peer = transport.get_extra_info("peername")
        self.client_ip = peer[0].encode() if isinstance(peer, tuple) else b""
        self.proxy.connections.add(self)
        if self.tls:
            self.proxy.handshaking.discard(self)
        self.proxy.metrics.connections_total += 1
        if self.tls:
            self.proxy.metrics.tls_handshakes += 1  # an SSL transport is made after the handshake
        self._arm(self.proxy.settings.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        tunnel = self.state == TUNNEL
        self.state = CLOSED
        self._disarm()
        self.proxy.connections.discard(self)
        upstream = self.upstream
        if upstream is not None:
            self.upstream = None
            if tunnel:
                upstream.close_tunnel()  # what the client sent last still reaches the backend
            else:
                upstream.abort()
        self.proxy.drained()

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.upstream is not None:
            self.upstream.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.upstream is not None:
            self.upstream.resume_reading()
        if self.state == TUNNEL or self.state == CLOSED or (
                self.exchange is not None and self.exchange.response_started):
            self.progress()  # the client reads what we send

    def data_received(self, data: bytes) -> None:
        state = self.state
        if state == TUNNEL:
            if self.upstream is not None and self.upstream.transport is not None:
                self.upstream.transport.write(data)
                self.progress()
            return
        if state in (BODY, DRAIN, LINGER):
            if state != LINGER:
                self._body(data)
            return
        self.buf += data
        if state == IDLE:
            self._next_request()
        elif len(self.buf) > self.proxy.settings.header_limit:
            self._pause()

    def eof_received(self) -> bool | None:
        if self.state == LINGER:
            return None
        if self.state == TUNNEL:
            return self._tunnel_eof()
        if self.state in (BODY, DRAIN):
            self._fail(HttpError(400, "body ended early"))
            return None
        if self.exchange is not None or b"\r\n\r\n" in self.buf:
            # The client half-closed after its request: answer it, then close.
            self.eof = True
            return None if self.tls else True
        return None

    def _tunnel_eof(self) -> bool | None:
        """The client finished sending on an upgraded connection: pass the half-close on.
        When the backend had finished too, both connections close; a TLS connection cannot
        stay half-open (the SSL transport closes itself), so `connection_lost` closes the
        backend's connection once what the client sent is written."""
        self.eof = True
        upstream = self.upstream
        if upstream is None or upstream.transport is None:
            return None
        if upstream.eof:
            upstream.close_tunnel()
            return None
        if upstream.transport.can_write_eof():
            upstream.transport.write_eof()
        return None if self.tls else True

    # -- helpers -------------------------------------------------------------------------

    def _arm(self, seconds: float) -> None:
        # No timer per request: the proxy's sweeper looks at deadlines every TICK seconds.
        self.idle = seconds
        self.deadline = self.loop.time() + seconds

    def progress(self) -> None:
        """Bytes moved in the current phase: its idle timeout starts again."""
        self.deadline = self.loop.time() + self.idle

    def _disarm(self) -> None:
        self.deadline = INF

    def timed_out(self) -> None:
        self.deadline = INF
        started = self.exchange is not None and self.exchange.response_started
        if self.state == WAIT and self.exchange is not None and not started:
            self.upstream_failed(504)
            return
        if self.state == BODY and not started:
            # The client stopped sending (408), or the backend stopped taking it (504).
            self._fail(HttpError(504 if self.paused & UPSTREAM else 408, "body stalled"))
            return
        if self.state == DRAIN:
            self._reply_local_and_close()
            return
        self._give_up()

    def _give_up(self) -> None:
        """End the connection now, its upstream connection too. A graceful close waits for the
        write buffer to drain, which a client that stopped reading never lets happen: only an
        idle connection with nothing left to send is closed gracefully (a FIN, or TLS's
        close_notify); in a response, a tunnel, or with bytes unsent it is aborted, as nginx's
        `send_timeout` does."""
        transport = self.transport
        if transport is None:
            self.state = CLOSED
            return
        if self.state in (IDLE, LINGER) and not self.write_paused \
                and not transport.get_write_buffer_size():
            self.close()
            return
        self.state = CLOSED
        upstream = self.upstream
        if upstream is not None:
            self.upstream = None
            upstream.abort()
        transport.abort()

    def _pause(self, reason: int = PIPELINED) -> None:
        if not self.paused and self.transport is not None:
            self.transport.pause_reading()
        self.paused |= reason

    def _resume(self, reasons: int = PIPELINED) -> None:
        if self.paused:
            self.paused &= ~reasons
            if not self.paused and self.transport is not None:
                self.transport.resume_reading()

    def write(self, data: bytes) -> None:
        if self.transport is not None and self.state != CLOSED:
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
            # What is still buffered must drain while the client reads: a deadline bounds it
            # (`_give_up` aborts the connection when it passes), as in a response body.
            self._arm(self.proxy.settings.response_timeout)
        self.state = CLOSED

    def _fail(self, exc: HttpError, hsts: bytes | None = UNROUTED) -> None:
        """Answer an error we produce ourselves and close (the stream is no longer trusted).
        Over HTTPS it carries the HSTS of the route (`hsts`, else the exchange's), or before
        any route was chosen the catch-all's (the `--hsts` default), as nginx's `always`."""
        exchange = self.exchange
        if exchange is not None and exchange.response_started:
            self.close()
            return
        self.proxy.count(exchange.label if exchange else UNKNOWN_LABEL, exc.status)
        if hsts == UNROUTED:
            hsts = exchange.hsts if exchange is not None else self.proxy.routes.catch_all.hsts
        extra = [(b"Strict-Transport-Security", hsts)] if hsts and self.tls else None
        self.write(self.proxy.simple(exc.status, extra=extra, close=True))
        if self.upstream is not None:
            self.upstream.abort()
            self.upstream = None
        self._close_lingering()

    def _close_lingering(self) -> None:
        """Close after an answer while the client may still be sending: a FIN after the
        answer, then LINGER (TLS cannot half-close: closed at once, as before)."""
        transport = self.transport
        if transport is None or transport.is_closing() or not transport.can_write_eof():
            self.close()
            return
        transport.write_eof()
        self.state = LINGER
        self.buf.clear()
        self._arm(self.proxy.settings.drain_timeout)
        self._resume(PIPELINED | UPSTREAM)

    # -- requests ------------------------------------------------------------------------

    def _next_request(self) -> None:
        buf = self.buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > self.proxy.settings.header_limit:
                self._fail(HttpError(431, "head too large"))
            return
        if end + 4 > self.proxy.settings.header_limit:
            self._fail(HttpError(431, "head too large"))
            return
        raw = bytes(buf[: end + 4])
        del buf[: end + 4]
        try:
            fast = fast_request(raw)
            if fast is not None:
                keep = fast.version == b"1.1"
                self.keep_alive = keep
                self.http10 = not keep
                decision = self.proxy.route_request(fast.target, fast.host, self.tls, not keep)
                framing = framing_for(fast.length)
                self._start(fast.method, fast.target, framing, decision, fast, None)
                return
            head = parse_head(raw, request=True)
            if head is None:  # only empty lines: wait for more
                return
            framing = request_framing(head)
            method, target, version = head.start
            self.keep_alive = version == b"1.1" and b"close" not in head.connection_tokens()
            self.http10 = version == b"1.0"
            decision = self.proxy.decide(head, self.tls)
            self._start(method, target, framing, decision, None, head)
        except HttpError as exc:
            self._fail(exc)

    def _start(self, method: bytes, target: bytes, framing: Framing, decision: Decision,
               fast: FastRequest | None, head: Head | None) -> None:
        """Answer locally or forward upstream; `fast` or `head` is the parsed request."""
        proxy = self.proxy
        self.framing = framing
        self.remaining = framing.length or 0
        self.scanner = ChunkScanner(reframe=True, trailer_limit=proxy.settings.header_limit) \
            if framing.chunked else None
        self.body_seen = 0
        body_limit = decision.body_limit if decision.local is None else proxy.settings.body_limit
        if body_limit is not None and framing.length and framing.length > body_limit:
            self._fail(HttpError(413, "body too large"), decision.hsts)
            return
        self.body_limit = body_limit
        has_body = framing.chunked or bool(framing.length)
        if decision.local is not None:
            # Answered here (404, 308, challenge token, 503): discard any body, then reply.
            self.local_reply = decision.local
            if has_body:
                if (framing.length or 0) > proxy.settings.drain_limit:
                    self._reply_local_and_close()
                    return
                self.state = DRAIN
                self._arm(proxy.settings.drain_timeout)
                if self.buf:
                    data = bytes(self.buf)
                    self.buf.clear()
                    self._body(data)
                return
            self._reply_local()
            return
        assert decision.backend is not None
        upgrade = decision.upgrade
        if fast is not None:
            head_bytes = proxy.upstream_head_fast(fast, self.tls, self.client_ip)
        else:
            assert head is not None
            if b"host" not in head.first:  # HTTP/1.0 without Host: HTTP/1.1 upstream needs one
                head.add_host(self._listener_authority())
            head_bytes = proxy.upstream_head(head, framing, self.tls, self.client_ip, upgrade)
        retryable = not has_body and upgrade is None
        self.exchange = Exchange(self, method, target, head_bytes, upgrade is not None,
                                 retryable, decision.hsts, decision.label)
        self.exchange.body_done = not has_body
        self.state = BODY if has_body else WAIT
        self._arm(proxy.settings.body_timeout if has_body else proxy.settings.read_timeout)
        proxy.dispatch(self, decision.backend)
        if self.state == BODY and self.buf:
            data = bytes(self.buf)
            self.buf.clear()
            self._body(data)

    def _listener_authority(self) -> bytes:
        """The address the client reached, as a Host value (`127.0.0.1:8080`, `[::1]:8443`;
        without the port when it is the scheme's default)."""
        sockname = self.transport.get_extra_info("sockname") if self.transport else None
        if not isinstance(sockname, tuple):
            return b"localhost"
        host, port = str(sockname[0]), int(sockname[1])
        if ":" in host:
            host = f"[{host}]"
        return (host if port == (443 if self.tls else 80) else f"{host}:{port}").encode()

    def _reply_local(self) -> None:
        self.write(self.local_reply)
        self._cycle_done()

    def _reply_local_and_close(self) -> None:
        """The local answer without reading the request body (too large or too slow)."""
        reply = self.local_reply
        end = reply.find(b"\r\n\r\n")
        if not reply[:end].endswith(b"\r\nConnection: close"):
            reply = reply[:end] + b"\r\nConnection: close" + reply[end:]
        self.write(reply)
        self._close_lingering()

    def _body(self, data: bytes) -> None:
        """Request body bytes: counted, checked, forwarded (or discarded when draining)."""
        rest = b""
        if self.scanner is not None:
            try:
                used, done = self.scanner.feed(data)
            except HttpError as exc:
                self._fail(exc)
                return
            body, rest = self.scanner.reframed(done), data[used:]
            self.body_seen = self.scanner.payload
        else:
            take = min(self.remaining, len(data))
            body, rest = data[:take], data[take:]
            self.remaining -= take
            self.body_seen += take
            done = self.remaining == 0
        if self.body_limit is not None and self.body_seen > self.body_limit:
            self._fail(HttpError(413, "body too large"))
            return
        if rest:
            self.buf += rest
        if self.state == DRAIN:
            if done:
                self._reply_local()
            elif self.body_seen > self.proxy.settings.drain_limit:
                self._reply_local_and_close()
            return
        if body:
            if self.upstream is not None and self.upstream.transport is not None \
                    and self.upstream.connected:
                self.upstream.transport.write(body)
            else:
                self.pending.append(body)
                self.pending_size += len(body)
                if self.pending_size > PENDING_LIMIT:
                    self._pause(UPSTREAM)
        if done:
            self.state = WAIT
            if self.exchange is not None:
                self.exchange.body_done = True
                if not self.exchange.response_started:
                    self._arm(self.proxy.settings.read_timeout)
        else:
            self.progress()
        if self.buf:
            self._pause()

    def attach(self, upstream: UpstreamConn) -> None:
        """The upstream connection for the current exchange is ready: send what we have."""
        assert self.exchange is not None and upstream.transport is not None
        self.upstream = upstream
        upstream.transport.write(self.exchange.head_bytes)
        if self.pending:
            self._resume(UPSTREAM)  # paused again if this fills the upstream's buffer
            upstream.transport.writelines(self.pending)
            self.pending.clear()
            self.pending_size = 0

    def upstream_failed(self, status: int) -> None:
        """502/503/504 to the client; a backend connection still open is closed (a 504's
        backend may answer later: that connection must neither leak nor be reused)."""
        self._fail(HttpError(status, "upstream failed"))

    def response_done(self, reusable_client: bool) -> None:
        """The upstream response has been relayed completely."""
        self.upstream = None
        exchange = self.exchange
        if exchange is not None and not exchange.body_done:
            # The upstream answered before the request body was complete: the rest of the
            # body cannot be told apart from a next request, so the connection ends here.
            self.close()
            return
        if not reusable_client:
            self.close()
            return
        self._cycle_done()

    def _cycle_done(self) -> None:
        self.exchange = None
        if self.pending:
            self.pending.clear()
            self.pending_size = 0
        if self.eof and b"\r\n\r\n" not in self.buf:
            self.close()
            return
        if not self.keep_alive or self.proxy.closing:
            self.close()
            return
        self.state = IDLE
        self._arm(self.proxy.settings.header_timeout)
        self._resume(PIPELINED | UPSTREAM)
        if self.buf:
            self._next_request()

    def start_tunnel(self) -> None:
        self.state = TUNNEL
        self._arm(self.proxy.settings.tunnel_timeout)
        if self.buf and self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.write(bytes(self.buf))
            self.buf.clear()
        if self.eof:  # the client half-closed right after its request
            self._tunnel_eof()
        self._resume()


class UpstreamConn(asyncio.Protocol):
    """One keep-alive connection to a backend endpoint; serves one exchange at a time."""

    def __init__(self, proxy: Back, addr: Address) -> None:
        self.proxy = proxy
        self.addr = addr
        self.transport: asyncio.Transport | None = None
        self.client: ClientConn | None = None
        self.connected = False
        self.buf = bytearray()
        self.head: Head | None = None
        self.framing = Framing()
        self.remaining = 0
        self.scanner: ChunkScanner | None = None
        self.reusable = True
        self.dechunk = False  # the body goes to an HTTP/1.0 client without chunk framing
        self.got_bytes = False
        self.fresh = True
        self.read_paused = False
        self.write_paused = False
        self.eof = False
        """The backend finished sending on an upgraded connection."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.connected = True
        self.proxy.upstreams.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.connected = False
        self.proxy.upstreams.discard(self)
        self.proxy.pool.forget(self)
        client = self.client
        self.client = None
        if client is None:
            return
        if self.head is not None and self.framing.until_close:
            # The body ends with the connection: that is its normal end.
            client.response_done(reusable_client=False)
            return
        exchange = client.exchange
        if exchange is not None and not self.got_bytes and exchange.retryable \
                and not self.fresh:
            # A pooled connection the upstream had closed while idle: retry on a new one.
            self.proxy.retry(client)
            return
        if exchange is not None and not exchange.response_started:
            self.proxy.balancer.failed(self.addr)
            client.upstream_failed(502)
        else:
            client.close()

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.client is not None:
            self.client._pause(UPSTREAM)

    def resume_writing(self) -> None:
        self.write_paused = False
        client = self.client
        if client is not None:
            client._resume(UPSTREAM)
            if client.state == BODY or client.state == TUNNEL:
                client.progress()  # the backend takes what the client sends

    def pause_reading(self) -> None:
        if not self.read_paused and self.transport is not None:
            self.read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.read_paused and self.transport is not None:
            self.read_paused = False
            self.transport.resume_reading()

    def begin(self, client: ClientConn, fresh: bool) -> None:
        self.client = client
        self.fresh = fresh
        self.head = None
        self.buf.clear()
        self.got_bytes = False
        self.reusable = not client.framing.chunked  # see rule 4
        if client.write_paused:
            self.pause_reading()
        elif self.read_paused:
            self.resume_reading()
        if self.write_paused:
            client._pause(UPSTREAM)
        client.attach(self)

    def abort(self) -> None:
        self.client = None
        if self.transport is not None:
            self.transport.abort()

    def close_tunnel(self) -> None:
        """End an upgraded connection whose client is gone: a FIN once the bytes written are
        sent (a reset when the backend is not taking them: nothing else would end it)."""
        self.client = None
        transport = self.transport
        if transport is not None:
            if transport.get_write_buffer_size():
                transport.abort()
            else:
                transport.close()

    def data_received(self, data: bytes) -> None:
        client = self.client
        if client is None:
            # Bytes on an idle connection: the upstream is confused; do not reuse it.
            self.reusable = False
            if self.transport is not None:
                self.transport.close()
            return
        self.got_bytes = True
        if client.state == TUNNEL:
            client.write(data)
            client.progress()
            return
        if self.head is None:
            self.buf += data
            self._heads()
            return
        self._body(data)

    def eof_received(self) -> bool | None:
        client = self.client
        if client is not None and client.state == TUNNEL and client.transport is not None:
            # The backend finished sending on an upgraded connection. The client's side is
            # half-closed when it can be (plain TCP); a TLS connection cannot: it is closed
            # once what the backend sent is written, and so is this one (returning None).
            # Either way, when the client had finished too, both connections end here.
            self.eof = True
            if client.eof or not client.transport.can_write_eof():
                client.close()
                return None
            client.transport.write_eof()
            return True
        return None

    def _heads(self) -> None:
        client = self.client
        assert client is not None
        while self.head is None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > self.proxy.settings.header_limit:
                    self._bad()
                return
            raw = bytes(self.buf[: end + 4])
            del self.buf[: end + 4]
            exchange = client.exchange
            assert exchange is not None
            fast = fast_response(raw, exchange.method,
                                 client.keep_alive and not self.proxy.closing)
            if fast is not None:
                self._fast_head(client, exchange, raw, *fast)
                return
            try:
                head = parse_head(raw, request=False)
            except HttpError:
                self._bad()
                return
            if head is None:
                continue
            status = int(head.start[1])
            exchange = client.exchange
            assert exchange is not None
            if status == 101 and exchange.upgrade:
                exchange.response_started = True
                client.write(self.proxy.downstream_head(head, Framing(length=0), True, True))
                self.reusable = False
                client.start_tunnel()
                if self.buf:
                    client.write(bytes(self.buf))
                    self.buf.clear()
                return
            if status == 101:  # switching protocols without an upgrade certop relayed
                self._bad()
                return
            if 100 <= status < 200:
                if not client.http10:  # RFC 9110 section 15.2: never to an HTTP/1.0 client
                    client.write(b"HTTP/1.1 %d %s\r\n\r\n" % (status, head.start[2]))
                continue
            try:
                framing = response_framing(head, exchange.method)
            except HttpError:
                self._bad()
                return
            self.head = head
            self.framing = framing
            self.remaining = framing.length or 0
            # An HTTP/1.0 client cannot read chunked framing: the payload goes to it as is
            # and the connection closes after it (client.keep_alive is False for 1.0).
            self.dechunk = framing.chunked and client.http10
            self.scanner = ChunkScanner(
                502, reframe=self.dechunk, trailer_limit=self.proxy.settings.header_limit,
            ) if framing.chunked else None
            tokens = head.connection_tokens()
            if framing.until_close or b"close" in tokens or (
                    head.start[0] == b"1.0" and b"keep-alive" not in tokens):
                self.reusable = False  # RFC 9112 section 9.3: the backend closes after this
            keep = client.keep_alive and not framing.until_close and not self.proxy.closing
            client.keep_alive = keep
            exchange.response_started = True
            client._arm(self.proxy.settings.response_timeout)
            self.proxy.observe(exchange, status)
            client.write(self.proxy.downstream_head(head, UNTIL_CLOSE if self.dechunk else framing,
                                                    keep, False, exchange.hsts))
            rest = bytes(self.buf)
            self.buf.clear()
            if rest or framing.chunked or framing.length or framing.until_close:
                if rest:
                    self._body(rest)
                elif not framing.until_close and self.remaining == 0 and not framing.chunked:
                    self._finished()
            else:
                self._finished()
            return

    def _fast_head(self, client: ClientConn, exchange: Exchange, raw: bytes, status: int,
                   length: int) -> None:
        """A plain response (see `http1.fast_response`): its head goes to the client as
        received, plus `Connection: close` and HSTS when they apply."""
        self.head = _FAST_HEAD
        self.framing = framing_for(length)
        self.remaining = length
        self.scanner = None
        keep = client.keep_alive and not self.proxy.closing
        exchange.response_started = True
        client._arm(self.proxy.settings.response_timeout)
        self.proxy.observe(exchange, status)
        hsts = exchange.hsts
        if keep and hsts is None:
            client.write(raw)
        else:
            extra = b"" if keep else b"Connection: close\r\n"
            if hsts is not None and b"strict-transport-security" not in raw.lower():
                extra += b"Strict-Transport-Security: " + hsts + b"\r\n"
            client.write(raw[:-2] + extra + b"\r\n")
        client.keep_alive = keep
        rest = bytes(self.buf)
        self.buf.clear()
        if rest:
            self._body(rest)
        elif length == 0:
            self._finished()

    def _bad(self) -> None:
        client = self.client
        self.client = None
        self.reusable = False
        if self.transport is not None:
            self.transport.abort()
        if client is not None:
            client.upstream_failed(502)

    def _body(self, data: bytes) -> None:
        client = self.client
        assert client is not None
        if self.framing.until_close:
            client.write(data)
            client.progress()
            return
        if self.scanner is not None:
            try:
                used, done = self.scanner.feed(data)
            except HttpError:
                self.reusable = False
                if not self.dechunk:
                    client.write(data)  # pass through what we have, then end both
                self.abort()
                client.close()
                return
            if self.dechunk:
                client.write(self.scanner.take_payload())
            else:
                client.write(data[:used] if used < len(data) else data)
            if used < len(data):
                self.reusable = False  # bytes after the response: not trustworthy
        else:
            take = min(self.remaining, len(data))
            client.write(data[:take] if take < len(data) else data)
            self.remaining -= take
            done = self.remaining == 0
            if take < len(data):
                self.reusable = False
        if done:
            self._finished()
        else:
            client.progress()

    def _finished(self) -> None:
        client = self.client
        if client is None:
            return
        if client.exchange is not None and not client.exchange.body_done:
            self.reusable = False
        self.complete()

    def complete(self) -> None:
        client = self.client
        self.client = None
        if client is None:
            return
        self.head = None
        self.proxy.balancer.succeeded(self.addr)
        if self.read_paused:
            self.resume_reading()  # idle in the pool it must see the backend hang up
        if self.reusable and self.connected:
            self.proxy.pool.release(self)
        elif self.transport is not None:
            if self.transport.get_write_buffer_size():
                self.transport.abort()  # request bytes the backend does not read: never sent
            else:
                self.transport.close()
        client.response_done(reusable_client=True)
