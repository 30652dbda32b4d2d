"""The admin port: `/healthz` (the process answers), `/readyz` (listening and configured),
`/metrics` (Prometheus text). Bind it to loopback or a private address; it has no auth."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from certop.proxy.server import Proxy


class Admin:
    def __init__(self, proxy: Proxy, ready: Callable[[], bool],
                 healthy: Callable[[], bool] | None = None) -> None:
        self.proxy = proxy
        self.ready = ready
        self.healthy = healthy
        """/healthz fails when this says False (the operator's election loop is stuck)."""
        self.server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> int:
        self.server = await asyncio.start_server(self._handle, host, port)
        return int(self.server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    def _answer(self, path: str) -> tuple[int, bytes, bytes]:
        if path == "/healthz":
            if self.healthy is not None and not self.healthy():
                return 503, b"unhealthy\n", b"text/plain"
            return 200, b"ok\n", b"text/plain"
        if path == "/readyz":
            ok = self.ready() and bool(self.proxy.ports())
            return (200, b"ready\n", b"text/plain") if ok else (503, b"not ready\n",
                                                                 b"text/plain")
        if path == "/metrics":
            handshakes = len(self.proxy.handshaking)
            body = self.proxy.metrics.render(len(self.proxy.connections) + handshakes,
                                             self.proxy.certs.expiry(), handshakes).encode()
            return 200, body, b"text/plain; version=0.0.4"
        return 404, b"not found\n", b"text/plain"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError,
                                 asyncio.LimitOverrunError, TimeoutError):
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            parts = head.split(b" ", 2)
            path = parts[1].decode("latin-1").split("?")[0] if len(parts) > 2 else ""
            status, body, ctype = self._answer(path)
            reason = {200: b"OK", 404: b"Not Found", 503: b"Service Unavailable"}[status]
            writer.write(b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
                         b"Connection: close\r\n\r\n%s" % (status, reason, ctype, len(body),
                                                           body))
            await writer.drain()
        writer.close()
