"""The proxy: HTTP and HTTPS listeners that route requests by the Ingress table.

Per request on the plain-HTTP port: an ACME challenge token certop holds is answered first (no
user route can shadow it); then a host with TLS is redirected to HTTPS with 308 (except
`/.well-known/acme-challenge/`); otherwise, and on the HTTPS port, the request goes to the
matched backend: keep-alive pool, `Host` preserved, hop-by-hop headers dropped,
`X-Forwarded-For/-Proto/-Host/-Port` set, bodies streamed both ways, `Expect: 100-continue` and
`Upgrade` relayed. Routes and certificates are swapped by assigning new immutable values; nothing
here blocks the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import posixpath
import ssl
from dataclasses import dataclass
from email.utils import formatdate
from urllib.parse import unquote

from certop.core.models import ServiceBackend
from certop.core.routing import ACME_CHALLENGE_PREFIX, RouteTable, normalize_host
from certop.proxy.http1 import (
    HOP_BY_HOP,
    Framing,
    Head,
    HttpError,
    read_head,
    relay_body,
    request_framing,
    response_framing,
)
from certop.proxy.tls import CertBook
from certop.proxy.upstream import Address, Backends, Balancer, Conn, Pool
from solvers.http01.tokens import TokenStore

log = logging.getLogger(__name__)

REASONS = {
    200: b"OK", 308: b"Permanent Redirect", 400: b"Bad Request", 404: b"Not Found",
    413: b"Content Too Large", 431: b"Request Header Fields Too Large",
    501: b"Not Implemented", 502: b"Bad Gateway", 503: b"Service Unavailable",
    504: b"Gateway Timeout",
}


@dataclass(frozen=True)
class ProxySettings:
    header_limit: int = 32 * 1024
    """Largest request head, bytes (431 above)."""
    body_limit: int | None = None
    """Largest request body, bytes (413 above); None for no limit."""
    header_timeout: float = 30.0
    """Seconds to receive a complete request head on an open connection."""
    connect_timeout: float = 5.0
    """Seconds to connect to an upstream endpoint (502 after)."""
    read_timeout: float = 60.0
    """Seconds to wait for an upstream response head (504 after)."""
    server_name: bytes = b"certop"


def _simple(status: int, body: bytes = b"", extra: list[tuple[bytes, bytes]] | None = None,
            close: bool = False) -> bytes:
    reason = REASONS.get(status, b"Error")
    if not body and status >= 400:
        body = b"%d %s\n" % (status, reason)
    lines = [b"HTTP/1.1 %d %s" % (status, reason),
             b"Server: certop",
             b"Date: " + formatdate(usegmt=True).encode(),
             b"Content-Type: text/plain; charset=utf-8",
             b"Content-Length: %d" % len(body)]
    for k, v in extra or []:
        lines.append(k + b": " + v)
    if close:
        lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def clean_path(target: bytes) -> str | None:
    """The routing path of a request target: dot segments removed, percent-decoding of
    unreserved characters only. Encoded slashes (%2F) stay encoded, so they never split a
    path element. None when the target is unusable."""
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
    def __init__(self, certs: CertBook, tokens: TokenStore, backends: Backends,
                 settings: ProxySettings | None = None) -> None:
        self.certs = certs
        self.tokens = tokens
        self.settings = settings or ProxySettings()
        self.routes = RouteTable.empty()
        self.balancer = Balancer(backends)
        self.pool = Pool()
        self.https_port = 443
        self._servers: list[asyncio.Server] = []
        self._conns: set[asyncio.Task[None]] = set()

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self, listen: str, http_port: int | None, https_port: int | None) -> None:
        if https_port is not None:
            self.https_port = https_port
            self._servers.append(await asyncio.start_server(
                self._on_https, listen, https_port, ssl=self.certs.server_context,
                reuse_address=True, limit=self.settings.header_limit + 1024,
                ssl_handshake_timeout=self.settings.header_timeout,
            ))
        if http_port is not None:
            self._servers.append(await asyncio.start_server(
                self._on_http, listen, http_port, reuse_address=True,
                limit=self.settings.header_limit + 1024,
            ))

    def ports(self) -> list[int]:
        return [int(s.sockets[0].getsockname()[1]) for s in self._servers if s.sockets]

    async def close(self, grace: float = 5.0) -> None:
        for server in self._servers:
            server.close()
        if self._conns:
            _, pending = await asyncio.wait(self._conns, timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        for server in self._servers:
            await server.wait_closed()
        self.pool.close()
        self._servers.clear()

    # -- connections -------------------------------------------------------------------

    async def _on_http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._track(self._serve(reader, writer, tls=False))

    async def _on_https(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._track(self._serve(reader, writer, tls=True))

    async def _track(self, coro: object) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        try:
            await coro  # type: ignore[misc]
        finally:
            self._conns.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     tls: bool) -> None:
        peer = writer.get_extra_info("peername")
        client_ip = peer[0] if isinstance(peer, tuple) else ""
        try:
            while True:
                try:
                    head = await asyncio.wait_for(
                        read_head(reader, self.settings.header_limit, request=True),
                        self.settings.header_timeout,
                    )
                except TimeoutError:
                    break
                except HttpError as exc:
                    writer.write(_simple(exc.status, close=True))
                    break
                if head is None:
                    break
                try:
                    keep = await self._request(head, reader, writer, tls, client_ip)
                except HttpError as exc:
                    writer.write(_simple(exc.status, close=True))
                    keep = False
                if not keep:
                    break
                await writer.drain()
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await writer.drain()
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _request(self, head: Head, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter, tls: bool, client_ip: str) -> bool:
        _method, target, version = head.start
        host_values = head.get_all(b"host")
        if len(host_values) > 1 or (version == b"1.1" and not host_values):
            raise HttpError(400, "exactly one Host header")
        host_raw = host_values[0].decode("latin-1") if host_values else ""
        host = normalize_host(host_raw)
        path = clean_path(target)
        if path is None:
            raise HttpError(400, "bad request target")
        framing = request_framing(head)
        keep = version == b"1.1" and b"close" not in head.connection_tokens()

        if not tls:
            if path.startswith(ACME_CHALLENGE_PREFIX):
                answer = self.tokens.answer(path)
                if answer is not None:
                    await self._drain_body(reader, framing)
                    writer.write(_simple(200, answer.encode(), close=not keep))
                    return keep
            routes = self.routes.lookup(host)
            if routes.redirect and not path.startswith(ACME_CHALLENGE_PREFIX):
                await self._drain_body(reader, framing)
                port = "" if self.https_port == 443 else f":{self.https_port}"
                location = f"https://{host}{port}".encode() + target
                writer.write(_simple(308, b"", [(b"Location", location)], close=not keep))
                return keep
        else:
            routes = self.routes.lookup(host)
        route = routes.match(path)
        if route is None:
            await self._drain_body(reader, framing)
            writer.write(_simple(404, close=not keep))
            return keep
        return await self._forward(head, framing, reader, writer, route.backend, tls,
                                   client_ip, host_raw, keep)

    async def _drain_body(self, reader: asyncio.StreamReader, framing: Framing) -> None:
        if framing.length == 0 and not framing.chunked:
            return
        sink = _NullWriter()
        await relay_body(reader, sink, framing, max_size=self.settings.body_limit)  # type: ignore[arg-type]

    def _upstream_head(self, head: Head, framing: Framing, tls: bool, client_ip: str,
                       host: str, upgrade: bytes | None) -> bytes:
        method, target, _ = head.start
        drop = HOP_BY_HOP | head.connection_tokens()
        out = [method + b" " + target + b" HTTP/1.1"]
        xff = b""
        for name, value in head.headers:
            if name in drop or name.startswith(b"x-forwarded-"):
                if name == b"x-forwarded-for":
                    xff = value + b", "
                continue
            out.append(name + b": " + value)
        out.append(b"X-Forwarded-For: " + xff + client_ip.encode())
        out.append(b"X-Forwarded-Proto: " + (b"https" if tls else b"http"))
        out.append(b"X-Forwarded-Host: " + host.encode("latin-1"))
        sock_port = str(self.https_port if tls else self._http_port()).encode()
        out.append(b"X-Forwarded-Port: " + sock_port)
        if framing.chunked:
            out.append(b"Transfer-Encoding: chunked")
        elif framing.length:
            out.append(b"Content-Length: %d" % framing.length)
        if upgrade is not None:
            out.append(b"Connection: upgrade")
            out.append(b"Upgrade: " + upgrade)
        return b"\r\n".join(out) + b"\r\n\r\n"

    def _http_port(self) -> int:
        for server in self._servers:
            if server.sockets and server.sockets[0].getsockname()[1] != self.https_port:
                return int(server.sockets[0].getsockname()[1])
        return 80

    async def _forward(self, head: Head, framing: Framing, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter, backend: ServiceBackend, tls: bool,
                       client_ip: str, host: str, keep: bool) -> bool:
        upgrade = head.get(b"upgrade") if b"upgrade" in head.connection_tokens() else None
        out_head = self._upstream_head(head, framing, tls, client_ip, host, upgrade)
        candidates = self.balancer.candidates(backend)
        if not candidates:
            await self._drain_body(reader, framing)
            writer.write(_simple(503, close=not keep))
            return keep
        conn: Conn | None = None
        addr: Address | None = None
        reused = False
        for addr in candidates[:3]:
            try:
                conn, reused = await self.pool.acquire(addr, self.settings.connect_timeout)
                break
            except (OSError, TimeoutError):
                self.balancer.failed(addr)
        if conn is None or addr is None:
            await self._drain_body(reader, framing)
            writer.write(_simple(502, close=True))
            return False
        up_reader, up_writer = conn
        has_body = framing.chunked or bool(framing.length)
        try:
            up_writer.write(out_head)
            body_task = (
                asyncio.create_task(relay_body(reader, up_writer, framing,
                                               max_size=self.settings.body_limit))
                if has_body else None
            )
            try:
                resp = await self._response_head(up_reader, writer, reused, body_task)
            except _StaleConnection:
                # An idle pooled connection the upstream had closed: retry once on a new one.
                up_writer.close()
                if has_body:
                    writer.write(_simple(502, close=True))
                    return False
                conn, _ = await self.pool.acquire(addr, self.settings.connect_timeout)
                up_reader, up_writer = conn
                up_writer.write(out_head)
                resp = await self._response_head(up_reader, writer, False, None)
        except (OSError, asyncio.IncompleteReadError):
            self.balancer.failed(addr)
            up_writer.close()
            writer.write(_simple(502, close=True))
            return False
        except TimeoutError:
            up_writer.close()
            writer.write(_simple(504, close=True))
            return False
        except HttpError as exc:
            up_writer.close()
            writer.write(_simple(exc.status, close=True))
            return False
        self.balancer.succeeded(addr)
        status = int(resp.start[1])
        if status == 101 and upgrade is not None:
            writer.write(self._downstream_head(resp, Framing(length=0), keep=True, upgrade=True))
            await self._tunnel(reader, writer, up_reader, up_writer)
            return False
        rframing = response_framing(resp, head.start[0])
        up_keep = not rframing.until_close and b"close" not in resp.connection_tokens()
        keep = keep and not rframing.until_close
        writer.write(self._downstream_head(resp, rframing, keep=keep, upgrade=False))
        try:
            await relay_body(up_reader, writer, rframing, bad_status=502)
            if body_task is not None:
                await body_task
        except HttpError:
            up_writer.close()
            return False
        finally:
            if body_task is not None and not body_task.done():
                body_task.cancel()
                up_keep = False
        if up_keep:
            self.pool.release(addr, (up_reader, up_writer))
        else:
            up_writer.close()
        return keep

    async def _response_head(self, up_reader: asyncio.StreamReader,
                             writer: asyncio.StreamWriter, reused: bool,
                             body_task: asyncio.Task[int] | None) -> Head:
        """The final response head; 1xx interim responses (100 Continue) go to the client."""
        while True:
            try:
                resp = await asyncio.wait_for(
                    read_head(up_reader, self.settings.header_limit, request=False),
                    self.settings.read_timeout,
                )
            except (ConnectionResetError, asyncio.IncompleteReadError):
                if reused and body_task is None:
                    raise _StaleConnection() from None
                raise
            if resp is None:
                if reused and body_task is None:
                    raise _StaleConnection()
                raise asyncio.IncompleteReadError(b"", None)
            status = int(resp.start[1])
            if 100 <= status < 200 and status != 101:
                writer.write(b"HTTP/1.1 %d %s\r\n\r\n" % (status, resp.start[2]))
                continue
            return resp

    def _downstream_head(self, resp: Head, framing: Framing, keep: bool, upgrade: bool) -> bytes:
        _, status, reason = resp.start
        drop = HOP_BY_HOP | resp.connection_tokens()
        out = [b"HTTP/1.1 " + status + b" " + (reason or REASONS.get(int(status), b""))]
        for name, value in resp.headers:
            if name in drop:
                continue
            out.append(name + b": " + value)
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
        return b"\r\n".join(out) + b"\r\n\r\n"

    async def _tunnel(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      up_reader: asyncio.StreamReader, up_writer: asyncio.StreamWriter) -> None:
        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                while data := await src.read(1 << 16):
                    dst.write(data)
                    await dst.drain()
                if dst.can_write_eof():
                    dst.write_eof()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        up_writer.close()


class _StaleConnection(Exception):
    pass


class _NullWriter:
    """A writer that discards: used to consume a request body we answer without forwarding."""

    def write(self, data: bytes) -> None:
        pass

    async def drain(self) -> None:
        pass
