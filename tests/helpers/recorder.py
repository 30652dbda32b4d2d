"""A recording backend for proxy tests: it keeps every request head exactly as it arrived (so a
test sees duplicate or odd header lines the proxy sent) and the body it decoded, and answers
each request with `X-Recorded: <index>` and the request line as the body.

It parses what it receives like a plain HTTP/1.1 server (chunked beats Content-Length, bytes
after a body are the next request), so a request smuggled past the proxy shows up here as an
extra entry. Something it cannot parse is recorded in `broken` and the connection closed.
Runs on its own event loop in a thread, so blocking and async tests can both use it."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass

from loopthread import LoopThread


@dataclass(frozen=True)
class Seen:
    connection: int
    head: bytes
    """The request head as received, request line included, ending with CRLF CRLF."""
    body: bytes
    """The body as decoded (chunked framing removed)."""
    raw_body: bytes = b""
    """The body bytes as received."""

    @property
    def request_line(self) -> bytes:
        return self.head.split(b"\r\n", 1)[0]

    @property
    def headers(self) -> list[tuple[str, str]]:
        """(lower-cased name, value) for every header line, in order, duplicates kept."""
        out = []
        for line in self.head.split(b"\r\n")[1:]:
            if line:
                name, _, value = line.partition(b":")
                out.append((name.decode("latin-1").lower(), value.strip().decode("latin-1")))
        return out

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k == name]

    def one(self, name: str) -> str | None:
        values = self.all(name)
        assert len(values) <= 1, f"{name} sent {len(values)} times: {values}"
        return values[0] if values else None


class Recorder(LoopThread):
    def __init__(self) -> None:
        super().__init__()
        self.port = 0
        self.requests: list[Seen] = []
        self.broken: list[bytes] = []
        self.connections = 0
        self._lock = threading.Lock()

    async def serve(self) -> None:
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self.started()
        await self.stopping.wait()
        server.close()
        await server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with self._lock:
            self.connections += 1
            number = self.connections
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError,
                                 asyncio.LimitOverrunError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                found = await self._body(reader, head)
                if found is None:
                    self.broken.append(head)
                    break
                with self._lock:
                    self.requests.append(Seen(number, head, *found))
                    index = len(self.requests) - 1
                answer = head.split(b"\r\n", 1)[0]
                writer.write(b"HTTP/1.1 200 OK\r\nX-Recorded: %d\r\nContent-Length: %d\r\n\r\n%s"
                             % (index, len(answer), answer))
                await writer.drain()
        writer.close()

    @staticmethod
    async def _body(reader: asyncio.StreamReader, head: bytes) -> tuple[bytes, bytes] | None:
        """(decoded body, raw body), or None when the framing makes no sense."""
        seen = Seen(0, head, b"")
        te = ",".join(seen.all("transfer-encoding")).lower()
        if te:
            if te.split(",")[-1].strip() != "chunked":
                return None
            out = raw = b""
            while True:
                size_line = await reader.readuntil(b"\r\n")
                raw += size_line
                try:
                    size = int(size_line.split(b";")[0].strip(), 16)
                except ValueError:
                    return None
                if size == 0:
                    while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
                        raw += line
                    return out, raw + line
                data = await reader.readexactly(size)
                end = await reader.readexactly(2)
                out, raw = out + data, raw + data + end
                if end != b"\r\n":
                    return None
        lengths = set(seen.all("content-length"))
        if len(lengths) > 1:
            return None
        if lengths:
            value = lengths.pop()
            if not value.isdigit():
                return None
            data = await reader.readexactly(int(value))
            return data, data
        return b"", b""
