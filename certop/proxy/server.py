"""The proxy: listeners, per-request decisions, and the bytes of heads it writes.

Per request on the plain-HTTP port: an ACME challenge token certop holds is answered first (no
user route can shadow it); then a host with TLS is redirected to HTTPS with 308 (except
`/.well-known/acme-challenge/`); otherwise, and on the HTTPS port, the request goes to the
matched backend with `Host` preserved (an absolute-form target's authority replaces it), hop-by-hop
headers dropped and `X-Forwarded-For/-Proto/-Host/-Port` and `X-Real-IP` set.

Header policy (docs/security-proxy-headers.md): what a client says about where a request came
from is believed only from a peer in `trusted_proxies`. From any other peer the client's
`X-Forwarded-*`, `Forwarded` and `X-Real-IP` are dropped, so `X-Forwarded-For` is the peer
address alone; header names with an underscore are dropped from every client (nginx's
`underscores_in_headers off`: `X_Forwarded_For` must not become `X-Forwarded-For` in a CGI-style
backend). `Content-Length` goes upstream once, written by certop. The data path itself is in
`engine.py`.
What is served comes in one immutable `core.serving.Snapshot` (`Proxy.swap`); nothing here
blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import posixpath
import re
import socket
import time
import weakref
from collections.abc import Callable
from email.utils import formatdate
from typing import cast
from urllib.parse import unquote

from certop.core.models import ServiceBackend
from certop.core.routing import ACME_CHALLENGE_PREFIX, normalize_host
from certop.core.serving import Address, KeyPair, SecretKey, Snapshot
from certop.metrics import Metrics
from certop.proxy.engine import ClientConn, Decision, Exchange, UpstreamConn
from certop.proxy.http1 import HOP_BY_HOP, FastRequest, Framing, Head, HttpError, origin_form
from certop.proxy.settings import ProxySettings as ProxySettings
from certop.proxy.tls import CertBook
from certop.proxy.upstream import Balancer, Pool
from certop.store.ports import StoredCert
from solvers.http01.tokens import TokenStore

log = logging.getLogger(__name__)
access = logging.getLogger("certop.access")

TICK = 0.5
"""Seconds between timeout sweeps."""
REFUSED_LOG_EVERY = 10.0
"""Seconds between log lines about connections refused by `max_connections`."""

REASONS = {
    200: b"OK", 308: b"Permanent Redirect", 400: b"Bad Request", 404: b"Not Found",
    408: b"Request Timeout", 413: b"Content Too Large", 431: b"Request Header Fields Too Large",
    501: b"Not Implemented", 502: b"Bad Gateway", 503: b"Service Unavailable",
    504: b"Gateway Timeout",
}


_UPSTREAM_DROP = HOP_BY_HOP | {b"content-length", b"forwarded", b"x-real-ip"}
"""Request headers never copied upstream (certop writes its own framing and X-Real-IP)."""


class _Date:
    """The Date header value, formatted at most once per second."""

    def __init__(self) -> None:
        self.second = -1
        self.value = b""

    def get(self, now: float) -> bytes:
        second = int(now)
        if second != self.second:
            self.second = second
            self.value = formatdate(second, usegmt=True).encode()
        return self.value


_UNCLEAN = re.compile(rb"[%?#]|/\.|//")


def clean_path(target: bytes) -> str | None:
    """The routing path of a request target: dot segments removed, percent-decoding of
    everything but `/` (an encoded slash, %2F, stays encoded and never splits a path element),
    so `/public/../admin` routes as `/admin`. None when the target is unusable."""
    if target[:1] == b"/" and not _UNCLEAN.search(target) and target.isascii():
        return target.decode("ascii")  # nothing to clean: the common case
    if target.startswith((b"http://", b"https://")):
        rest = target.split(b"://", 1)[1]
        slash = rest.find(b"/")
        target = rest[slash:] if slash >= 0 else b"/"
    if not target.startswith(b"/"):
        return None
    path = target.split(b"?", 1)[0].split(b"#", 1)[0]
    try:
        text = path.decode("ascii")
    except UnicodeDecodeError:
        return None
    if "%" in text:
        text = unquote(text.replace("%2F", "%252F").replace("%2f", "%252f"))
    if "/." in text or "//" in text:
        trailing = text.endswith("/") and text != "/"
        text = posixpath.normpath(text)
        if text.startswith("//"):
            text = "/" + text.lstrip("/")
        if trailing and text != "/":
            text += "/"
    return text


class Proxy:
    def __init__(self, certs: CertBook, tokens: TokenStore,
                 settings: ProxySettings | None = None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        """Serves nothing but challenge tokens until a snapshot is swapped in (`swap`).
        `monotonic`: the clock of the balancer's hold on failed endpoints."""
        self.certs = certs
        self.tokens = tokens
        self.settings = settings or ProxySettings()
        self.serving = Snapshot.empty()
        self.routes = self.serving.routes
        """`serving.routes`, read per request (one attribute lookup less)."""
        self.balancer = Balancer(monotonic)
        self.pool: Pool[UpstreamConn] = Pool()
        self.https_port = 443
        self.http_port = 80
        self._https_port_bytes = b"443"
        """The HTTPS port clients reach (settings.public_https_port or the bound one)."""
        self._http_port_bytes = b"80"
        self.connections: set[ClientConn] = set()
        self.handshaking: weakref.WeakSet[ClientConn] = weakref.WeakSet()
        """TLS connections accepted whose handshake is not done (a failed one is dropped by
        its transport, and so leaves this set)."""
        self._refused = 0
        self._refused_logged = -REFUSED_LOG_EVERY
        self.upstreams: set[UpstreamConn] = set()
        self.closing = False
        self._servers: list[asyncio.AbstractServer] = []
        self._connects: set[asyncio.Task[None]] = set()
        self._drained: asyncio.Event | None = None
        self._date = _Date()
        self._trusted: dict[bytes, bool] = {}
        self.metrics = Metrics()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.TimerHandle | None = None

    def swap(self, snapshot: Snapshot) -> None:
        """Serve `snapshot` from now on: endpoints, SNI map, the certificates it brings, routes.
        The one way a source feeds the proxy; never blocks, open connections keep going.
        A certificate that fails to load keeps its previous one (`CertBook.put`)."""
        self.serving = snapshot
        self.balancer.endpoints = snapshot.endpoints
        self.certs.set_hosts(dict(snapshot.sni))
        for key, pair in snapshot.certificates.items():
            self.certs.put(key, StoredCert(pair.fullchain_pem, pair.key_pem))
        self.routes = snapshot.routes

    def serve_certificate(self, key: SecretKey, pair: KeyPair) -> bool:
        """`pair` for Secret `key` from the next handshake on; open connections keep theirs.
        The way the issuance pipeline hands the proxy a certificate it stored."""
        return self.certs.put(key, StoredCert(pair.fullchain_pem, pair.key_pem))

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self, listen: str, http_port: int | None, https_port: int | None,
                    reuse_port: bool = False) -> None:
        loop = self.loop = asyncio.get_running_loop()
        if self._sweeper is None:
            self._sweeper = loop.call_later(TICK, self._sweep)
        if https_port is not None:
            server = await loop.create_server(
                lambda: self._accept(True), listen, https_port,
                ssl=self.certs.server_context, reuse_address=True, reuse_port=reuse_port,
                backlog=1024, ssl_handshake_timeout=self.settings.header_timeout,
            )
            self._servers.append(server)
            self.https_port = _port(server) or https_port
            self._https_port_bytes = b"%d" % (self.settings.public_https_port or self.https_port)
        if http_port is not None:
            server = await loop.create_server(
                lambda: self._accept(False), listen, http_port, reuse_address=True,
                reuse_port=reuse_port, backlog=1024,
            )
            self._servers.append(server)
            self.http_port = _port(server) or http_port
            self._http_port_bytes = b"%d" % (self.settings.public_http_port or self.http_port)

    def _accept(self, tls: bool) -> asyncio.Protocol:
        """The protocol for a connection just accepted (before any TLS handshake)."""
        limit = self.settings.max_connections
        if limit and len(self.connections) + len(self.handshaking) >= limit:
            return self._refuse()
        conn = ClientConn(self, tls)
        if tls:
            self.handshaking.add(conn)
        return conn

    def _refuse(self) -> asyncio.Protocol:
        self._refused += 1
        self.metrics.add("connections_refused_total")
        assert self.loop is not None
        now = self.loop.time()
        if now - self._refused_logged >= REFUSED_LOG_EVERY:
            log.warning("connection limit reached (max_connections %d): closed %d new "
                        "connection(s)", self.settings.max_connections, self._refused)
            self._refused_logged = now
            self._refused = 0
        return _Refused()

    def ports(self) -> list[int]:
        return [p for p in (_port(s) for s in self._servers) if p]

    async def close(self, grace: float = 5.0) -> None:
        """Stop accepting, let requests in flight finish (bounded by `grace`), then close."""
        self.closing = True
        for server in self._servers:
            server.close()
        for conn in list(self.connections):
            if conn.exchange is None and not conn.buf:
                conn.close()
        if self.connections:
            self._drained = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), grace)
            for conn in list(self.connections):
                if conn.transport is not None:
                    conn.transport.abort()
        for task in list(self._connects):
            task.cancel()
        if self._connects:
            await asyncio.gather(*self._connects, return_exceptions=True)
        for server in self._servers:
            await server.wait_closed()
        self.pool.close()
        for upstream in list(self.upstreams):
            upstream.abort()
        # Transports close on the next turns of the loop: let them, so no socket outlives us.
        for _ in range(100):
            if not self.upstreams and not self.connections:
                break
            await asyncio.sleep(0)
        self._servers.clear()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    def _sweep(self) -> None:
        """Timeouts of all connections, checked every TICK seconds (cheaper than a timer
        per request; a timeout fires up to TICK late)."""
        assert self.loop is not None
        now = self.loop.time()
        for conn in [c for c in self.connections if c.deadline <= now]:
            conn.timed_out()
        self._sweeper = self.loop.call_later(TICK, self._sweep)

    def drained(self) -> None:
        if self._drained is not None and not self.connections:
            self._drained.set()

    # -- decisions ---------------------------------------------------------------------

    def simple(self, status: int, body: bytes = b"", extra: list[tuple[bytes, bytes]] | None
               = None, close: bool = False) -> bytes:
        reason = REASONS.get(status, b"Error")
        if not body and status >= 400:
            body = b"%d %s\n" % (status, reason)
        lines = [b"HTTP/1.1 %d %s" % (status, reason), b"Server: certop",
                 b"Date: " + self._date.get(time.time()),
                 b"Content-Type: text/plain; charset=utf-8",
                 b"Content-Length: %d" % len(body)]
        for k, v in extra or ():
            lines.append(k + b": " + v)
        if close:
            lines.append(b"Connection: close")
        return b"\r\n".join(lines) + b"\r\n\r\n" + body

    def decide(self, head: Head, tls: bool) -> Decision:
        """The decision for a request parsed by the general path."""
        if head.start[1][:1] != b"/" and head.start[1] != b"*":
            head.retarget(*origin_form(head.start[1]))
        _method, target, version = head.start
        hosts = head.get_all(b"host")
        if len(hosts) > 1 or (version == b"1.1" and not hosts):
            raise HttpError(400, "exactly one Host header")
        close = version != b"1.1" or b"close" in head.connection_tokens()
        upgrade = None
        if b"upgrade" in head.connection_tokens():
            allowed = self.settings.allowed_upgrades
            upgrade = b", ".join(
                p for v in head.get_all(b"upgrade") for p in (t.strip(b" \t") for t in
                                                             v.split(b","))
                if p.split(b"/", 1)[0].lower() in allowed) or None
        return self.route_request(target, hosts[0] if hosts else b"", tls, close, upgrade)

    def route_request(self, target: bytes, host_raw: bytes, tls: bool, close: bool,
                      upgrade: bytes | None = None) -> Decision:
        """Challenge token, redirect, 404 or a backend for one request."""
        host = normalize_host(host_raw.decode("latin-1"))
        path = clean_path(target)
        if path is None:
            raise HttpError(400, "bad request target")
        routes = self.routes.lookup(host)
        label = routes.label
        if not tls:
            if path.startswith(ACME_CHALLENGE_PREFIX):
                answer = self.tokens.answer(path)
                if answer is None and self.serving.challenges:
                    answer = self.serving.challenges.get(
                        (host, path[len(ACME_CHALLENGE_PREFIX):]))
                if answer is not None:
                    self.count(label, 200)
                    return Decision(local=self.simple(200, answer.encode(), close=close))
            elif routes.redirect:
                port = b"" if self._https_port_bytes == b"443" else b":" + self._https_port_bytes
                location = b"https://" + host.encode() + port + target
                self.count(label, 308)
                return Decision(local=self.simple(308, b"", [(b"Location", location)], close))
        route = routes.match(path)
        if route is None:
            self.count(label, 404)
            hsts = [(b"Strict-Transport-Security", routes.hsts)] if tls and routes.hsts else None
            return Decision(local=self.simple(404, extra=hsts, close=close),
                            hsts=routes.hsts if tls else None)
        limit = self.settings.body_limit if route.body_limit is None else (
            route.body_limit or None)
        return Decision(backend=route.backend, upgrade=upgrade, body_limit=limit,
                        hsts=route.hsts if tls else None, label=label)

    def upstream_head_fast(self, req: FastRequest, tls: bool, client_ip: bytes) -> bytes:
        """The head sent upstream for a plain request: its header lines as received (none
        is hop-by-hop, see `fast_request`) plus the X-Forwarded-* lines."""
        return b"".join((
            req.method, b" ", req.target, b" HTTP/1.1\r\n", req.block,
            b"X-Forwarded-For: ", client_ip, b"\r\nX-Real-IP: ", client_ip,
            b"\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: " if tls
            else b"\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: ",
            req.host, b"\r\nX-Forwarded-Port: ",
            self._https_port_bytes if tls else self._http_port_bytes, b"\r\n\r\n"))

    def upstream_head(self, head: Head, framing: Framing, tls: bool, client_ip: bytes,
                      upgrade: bytes | None) -> bytes:
        method, target, _ = head.start
        drop = _UPSTREAM_DROP | (head.connection_tokens() - {b"host"}) \
            if head.get(b"connection") else _UPSTREAM_DROP
        out = [method + b" " + target + b" HTTP/1.1"]
        forwarded: dict[bytes, list[bytes]] = {}
        host = b""
        for raw_name, (name, value) in zip(head.names, head.headers, strict=True):
            if name in drop or b"_" in name:
                continue
            if name[:12] == b"x-forwarded-":
                forwarded.setdefault(name, []).append(value)
                continue
            if name == b"host":
                host = value
            out.append(raw_name + b": " + value)
        proto = b"https" if tls else b"http"
        port = self._https_port_bytes if tls else self._http_port_bytes
        xff, real_ip = [client_ip], client_ip
        if forwarded and self.settings.trusted_proxies and self.trusts(client_ip):
            chain = [a.strip(b" \t") for v in forwarded.get(b"x-forwarded-for", ())
                     for a in v.split(b",")]
            xff = [*chain, client_ip]
            real_ip = self.real_client(chain, client_ip)
            proto = forwarded.get(b"x-forwarded-proto", [proto])[0]
            host = forwarded.get(b"x-forwarded-host", [host])[0]
            port = forwarded.get(b"x-forwarded-port", [port])[0]
        out.append(b"X-Forwarded-For: " + b", ".join(xff))
        out.append(b"X-Real-IP: " + real_ip)
        out.append(b"X-Forwarded-Proto: " + proto)
        out.append(b"X-Forwarded-Host: " + host)
        out.append(b"X-Forwarded-Port: " + port)
        if framing.chunked:
            out.append(b"Transfer-Encoding: chunked")
        elif framing.length:
            out.append(b"Content-Length: %d" % framing.length)
        if upgrade is not None:
            out.append(b"Connection: upgrade")
            out.append(b"Upgrade: " + upgrade)
        out.append(b"\r\n")
        return b"\r\n".join(out)

    def trusts(self, ip: bytes) -> bool:
        """Whether a peer address is in `trusted_proxies` (answers are cached)."""
        found = self._trusted.get(ip)
        if found is None:
            found = False
            with contextlib.suppress(ValueError, UnicodeDecodeError):
                addr = ipaddress.ip_address(ip.decode("ascii"))
                if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
                    addr = addr.ipv4_mapped
                found = any(addr in net for net in self.settings.trusted_proxies)
            if len(self._trusted) >= 4096:
                self._trusted.clear()
            self._trusted[ip] = found
        return found

    def real_client(self, chain: list[bytes], peer: bytes) -> bytes:
        """The client address behind trusted proxies: X-Forwarded-For read from the right,
        skipping trusted addresses (nginx's real_ip_recursive); a malformed entry stops."""
        client = peer
        for item in reversed(chain):
            if not self.trusts(client):
                break
            try:
                ipaddress.ip_address(item.decode("ascii"))
            except (ValueError, UnicodeDecodeError):
                break
            client = item
        return client

    def downstream_head(self, resp: Head, framing: Framing, keep: bool, upgrade: bool,
                        hsts: bytes | None = None) -> bytes:
        _, status, reason = resp.start
        drop = HOP_BY_HOP | resp.connection_tokens() if resp.get(b"connection") else HOP_BY_HOP
        out = [b"HTTP/1.1 " + status + b" " + (reason or REASONS.get(int(status), b""))]
        for raw_name, (name, value) in zip(resp.names, resp.headers, strict=True):
            if name not in drop:
                out.append(raw_name + b": " + value)
        if upgrade:
            out.append(b"Connection: upgrade")
            up = resp.get(b"upgrade")
            if up:
                out.append(b"Upgrade: " + up)
        else:
            if framing.chunked:
                out.append(b"Transfer-Encoding: chunked")
            if not keep:
                out.append(b"Connection: close")
        if hsts is not None and b"strict-transport-security" not in resp.first:
            out.append(b"Strict-Transport-Security: " + hsts)
        out.append(b"\r\n")
        return b"\r\n".join(out)

    # -- upstreams ---------------------------------------------------------------------

    def dispatch(self, client: ClientConn, backend: ServiceBackend) -> None:
        addr = self.balancer.pick(backend)
        if addr is None:
            client.upstream_failed(503)
            return
        conn = self.pool.take(addr)
        if conn is not None:
            assert client.exchange is not None
            client.exchange.addr = addr
            conn.begin(client, fresh=False)
            return
        self._connect(client, self.balancer.candidates(backend, first=addr)[:3])

    def retry(self, client: ClientConn) -> None:
        """The pooled connection was stale: the same request on a new connection."""
        exchange = client.exchange
        assert exchange is not None and exchange.addr is not None
        self._connect(client, [exchange.addr])

    def _connect(self, client: ClientConn, candidates: list[Address]) -> None:
        task = asyncio.ensure_future(self._open(client, candidates))
        self._connects.add(task)
        task.add_done_callback(self._connects.discard)

    async def _open(self, client: ClientConn, candidates: list[Address]) -> None:
        assert self.loop is not None
        for addr in candidates:
            try:
                _, conn = await asyncio.wait_for(
                    self.loop.create_connection(lambda a=addr: UpstreamConn(self, a),  # type: ignore[misc]
                                                addr[0], addr[1]),
                    self.settings.connect_timeout,
                )
            except (OSError, TimeoutError):
                self.balancer.failed(addr)
                continue
            assert isinstance(conn, UpstreamConn)
            sock = conn.transport.get_extra_info("socket") if conn.transport else None
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if client.exchange is None or client.transport is None or \
                    client.transport.is_closing():
                self.pool.release(conn)
                return
            client.exchange.addr = addr
            conn.begin(client, fresh=True)
            return
        if client.exchange is not None:
            client.upstream_failed(502)

    # -- observation -------------------------------------------------------------------

    def count(self, host: str, status: int) -> None:
        """One request answered with `status` (by certop itself or by an upstream)."""
        self.metrics.request(host, status)

    def observe(self, exchange: Exchange, status: int) -> None:
        """An upstream response head arrived for `exchange`."""
        assert self.loop is not None
        elapsed = self.loop.time() - exchange.started
        self.metrics.request(exchange.label, status)
        self.metrics.upstream_latency(elapsed)
        if self.settings.access_log:
            access.info('%s "%s %s" %d %.3f %s', exchange.client.client_ip.decode(),
                        exchange.method.decode(), exchange.target.decode("latin-1"), status,
                        elapsed, exchange.addr)


class _Refused(asyncio.Protocol):
    """A connection over the limit: closed as soon as it is made (a TLS one after its
    handshake, which the handshake timeout bounds)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        cast(asyncio.Transport, transport).abort()


def _port(server: asyncio.AbstractServer) -> int | None:
    sockets = getattr(server, "sockets", None)
    if sockets:
        return int(sockets[0].getsockname()[1])
    return None
