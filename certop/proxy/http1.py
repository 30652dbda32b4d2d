"""HTTP/1.1 message heads and body framing (RFC 9112), strict where smuggling hides.

Owns: reading a request or response head within a size limit, deciding how its body is framed
(Content-Length, chunked, until close), and relaying a body without buffering it whole.
Rejected as 400: obsolete line folding, a bad header name, several differing Content-Length
values, Content-Length together with Transfer-Encoding, a Transfer-Encoding other than chunked,
bad chunk sizes. A head over the limit is 431 (request) or 502 (response).
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

CRLF = b"\r\n"
_TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_REQUEST_LINE = re.compile(rb"^([!#$%&'*+\-.^_`|~0-9A-Za-z]+) (\S+) HTTP/(1\.[01])$")
_STATUS_LINE = re.compile(rb"^HTTP/(1\.[01]) (\d{3})(?: (.*))?$")
HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
    b"transfer-encoding", b"upgrade", b"proxy-authenticate", b"proxy-authorization",
})
CHUNK_LIMIT = 1 << 16


class HttpError(Exception):
    """A message that must not be processed; `status` is what to answer the client."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass
class Head:
    start: tuple[bytes, bytes, bytes]
    """(method, target, version) of a request, (version, status, reason) of a response."""
    headers: list[tuple[bytes, bytes]]
    """Names lower-cased, values stripped, in order."""

    def get(self, name: bytes) -> bytes | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None

    def get_all(self, name: bytes) -> list[bytes]:
        return [v for k, v in self.headers if k == name]

    def connection_tokens(self) -> set[bytes]:
        return {t.strip().lower() for v in self.get_all(b"connection") for t in v.split(b",")}


async def read_head(reader: asyncio.StreamReader, limit: int, *, request: bool) -> Head | None:
    """The next head, or None on a clean EOF before any byte. Raises HttpError."""
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial.strip():
            return None
        raise HttpError(400, "incomplete head") from None
    except asyncio.LimitOverrunError:
        raise HttpError(431 if request else 502, "head too large") from None
    if len(raw) > limit:
        raise HttpError(431 if request else 502, "head too large")
    # Tolerate (and skip) empty lines before a request line (RFC 9112 section 2.2).
    lines = raw[:-4].lstrip(b"\r\n").split(CRLF)
    first = lines[0]
    if request:
        m = _REQUEST_LINE.match(first)
        if not m:
            raise HttpError(400, "bad request line")
        start = (m.group(1), m.group(2), m.group(3))
    else:
        m = _STATUS_LINE.match(first)
        if not m:
            raise HttpError(502, "bad status line from upstream")
        start = (m.group(1), m.group(2), m.group(3) or b"")
    headers: list[tuple[bytes, bytes]] = []
    for line in lines[1:]:
        if not line or line[:1] in (b" ", b"\t"):
            raise HttpError(400 if request else 502, "obsolete line folding")
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN.match(name):
            raise HttpError(400 if request else 502, "bad header line")
        value = value.strip(b" \t")
        if b"\r" in value or b"\n" in value or b"\x00" in value:
            raise HttpError(400 if request else 502, "bad header value")
        headers.append((name.lower(), value))
    return Head(start, headers)


@dataclass(frozen=True)
class Framing:
    """How a body is delimited: `length` bytes, chunked, or until the connection closes."""

    length: int | None = 0
    chunked: bool = False
    until_close: bool = False


def request_framing(head: Head) -> Framing:
    te = head.get_all(b"transfer-encoding")
    cl = head.get_all(b"content-length")
    if te:
        if cl:
            raise HttpError(400, "both Content-Length and Transfer-Encoding")
        codings = [c.strip().lower() for v in te for c in v.split(b",") if c.strip()]
        if codings != [b"chunked"]:
            raise HttpError(501 if codings and codings[-1] == b"chunked" else 400,
                            "unsupported Transfer-Encoding")
        return Framing(length=None, chunked=True)
    if cl:
        return Framing(length=_content_length(cl, 400))
    return Framing(length=0)


def response_framing(head: Head, method: bytes) -> Framing:
    status = int(head.start[1])
    if method == b"HEAD" or status in (204, 304) or 100 <= status < 200:
        return Framing(length=0)
    te = head.get_all(b"transfer-encoding")
    if te:
        codings = [c.strip().lower() for v in te for c in v.split(b",") if c.strip()]
        if codings and codings[-1] == b"chunked":
            return Framing(length=None, chunked=True)
        return Framing(length=None, until_close=True)
    cl = head.get_all(b"content-length")
    if cl:
        return Framing(length=_content_length(cl, 502))
    return Framing(length=None, until_close=True)


def _content_length(values: list[bytes], status: int) -> int:
    parts = {p.strip() for v in values for p in v.split(b",")}
    if len(parts) != 1:
        raise HttpError(status, "conflicting Content-Length")
    (value,) = parts
    if not value.isdigit() or len(value) > 18:
        raise HttpError(status, "bad Content-Length")
    return int(value)


async def relay_body(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    framing: Framing,
    *,
    max_size: int | None = None,
    bad_status: int = 400,
) -> int:
    """Copy one body from reader to writer as it arrives; returns the payload size."""
    total = 0
    if framing.chunked:
        while True:
            line = await _readline(reader, bad_status)
            size_part = line.split(b";", 1)[0].strip()
            if not size_part or len(size_part) > 16 or not all(
                c in b"0123456789abcdefABCDEF" for c in size_part
            ):
                raise HttpError(bad_status, "bad chunk size")
            size = int(size_part, 16)
            total += size
            if max_size is not None and total > max_size:
                raise HttpError(413, "body too large")
            writer.write(line)
            if size == 0:
                # trailers, then the final CRLF
                while True:
                    trailer = await _readline(reader, bad_status)
                    writer.write(trailer)
                    if trailer == CRLF:
                        return total
            remaining = size
            while remaining:
                data = await reader.read(min(remaining, CHUNK_LIMIT))
                if not data:
                    raise HttpError(bad_status, "body ended early")
                remaining -= len(data)
                writer.write(data)
                await writer.drain()
            if await _readexactly(reader, 2, bad_status) != CRLF:
                raise HttpError(bad_status, "bad chunk end")
            writer.write(CRLF)
    if framing.until_close:
        while data := await reader.read(CHUNK_LIMIT):
            total += len(data)
            writer.write(data)
            await writer.drain()
        return total
    remaining = framing.length or 0
    if max_size is not None and remaining > max_size:
        raise HttpError(413, "body too large")
    while remaining:
        data = await reader.read(min(remaining, CHUNK_LIMIT))
        if not data:
            raise HttpError(bad_status, "body ended early")
        remaining -= len(data)
        total += len(data)
        writer.write(data)
        if remaining:
            await writer.drain()
    return total


async def _readline(reader: asyncio.StreamReader, bad_status: int) -> bytes:
    try:
        line = await reader.readuntil(CRLF)
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        raise HttpError(bad_status, "bad chunked framing") from None
    if len(line) > 4096:
        raise HttpError(bad_status, "chunk line too long")
    return line


async def _readexactly(reader: asyncio.StreamReader, n: int, bad_status: int) -> bytes:
    try:
        return await reader.readexactly(n)
    except asyncio.IncompleteReadError:
        raise HttpError(bad_status, "body ended early") from None
