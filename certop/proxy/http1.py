"""HTTP/1.1 message heads and body framing (RFC 9112), strict where smuggling hides.

Owns: reading a request or response head within a size limit, deciding how its body is framed
(Content-Length, chunked, until close), and relaying a body without buffering it whole.
Rejected as 400: obsolete line folding, a bad header name, several differing Content-Length
values, Content-Length together with Transfer-Encoding, a Transfer-Encoding other than chunked,
Transfer-Encoding in HTTP/1.0 (RFC 9112 section 6.1), a control character in the request
target (a NUL included: a C backend would cut the path there), bad chunk sizes, control characters
(a bare CR included) in chunk lines, chunk lines longer than the limit. A trailer section
larger than the head limit is 431 (502 from a backend). Only SP and HTAB count
as whitespace around a value or a list element. A response is held to the same rules (502).
A head over the limit is 431 (request) or 502 (response).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

CRLF = b"\r\n"
_REQUEST_LINE = re.compile(rb"^([!#$%&'*+\-.^_`|~0-9A-Za-z]+) ([^\x00-\x20\x7f]+) HTTP/(1\.[01])\Z")
"""The target holds no whitespace and no control byte (NUL, DEL, ...): both parse paths use it."""
_STATUS_LINE = re.compile(rb"^HTTP/(1\.[01]) (\d{3})(?: ([^\x00-\x08\x0a-\x1f\x7f]*))?\Z")
"""A reason phrase is HTAB, SP, VCHAR and obs-text (RFC 9112 section 4): a bare CR would end
the line for some clients, so the fast path, which forwards a head as received, must not pass
one."""
HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
    b"transfer-encoding", b"upgrade", b"proxy-authenticate", b"proxy-authorization",
})


class HttpError(Exception):
    """A message that must not be processed; `status` is what to answer the client."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class Head:
    """A parsed message head. Header names are lower-cased, values stripped, order kept;
    `names` keeps each name as it was sent, for the head certop writes on."""

    __slots__ = ("_conn", "first", "headers", "names", "start")

    def __init__(self, start: tuple[bytes, bytes, bytes],
                 headers: list[tuple[bytes, bytes]], names: list[bytes] | None = None) -> None:
        self.start = start
        """(method, target, version) of a request, (version, status, reason) of a response."""
        self.headers = headers
        self.names = names if names is not None else [k for k, _ in headers]
        """The header names as received, in the order of `headers`."""
        self.first: dict[bytes, bytes] = {}
        for name, value in reversed(headers):
            self.first[name] = value
        self._conn: frozenset[bytes] | None = None

    def get(self, name: bytes) -> bytes | None:
        return self.first.get(name)

    def retarget(self, target: bytes, host: bytes) -> None:
        """An absolute-form request (RFC 9112 section 3.2.2): the authority replaces Host and
        the request goes on in origin form. An HTTP/1.1 request still needs its Host line."""
        method, _, version = self.start
        self.start = (method, target, version)
        if b"host" in self.first:
            self.headers = [(k, host if k == b"host" else v) for k, v in self.headers]
            self.first[b"host"] = host
        elif version == b"1.0":
            self.add_host(host)

    def add_host(self, host: bytes) -> None:
        """A Host line for a request that has none (HTTP/1.0): it goes upstream as HTTP/1.1."""
        self.headers.append((b"host", host))
        self.names.append(b"Host")
        self.first[b"host"] = host

    def get_all(self, name: bytes) -> list[bytes]:
        if name not in self.first:
            return []
        return [v for k, v in self.headers if k == name]

    def connection_tokens(self) -> frozenset[bytes]:
        tokens = self._conn
        if tokens is None:
            tokens = self._conn = frozenset(
                t.strip().lower() for v in self.get_all(b"connection") for t in v.split(b",")
            ) if b"connection" in self.first else frozenset()
        return tokens


# One C-level match checks every header line of a head: a token, a colon, and a value
# without CR, LF or NUL. Obsolete line folding (a line starting with SP/HTAB) fails it.
_HEADER_BLOCK = re.compile(rb"(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[^\r\n\x00]*\r\n)*\Z")


def parse_head(raw: bytes, *, request: bool) -> Head | None:
    """Parse a complete head (ending with CRLF CRLF); None when it holds only empty lines.
    Raises HttpError (400 for a request, 502 for a response)."""
    text = raw.lstrip(b"\r\n")  # RFC 9112 section 2.2: skip empty lines before a request
    if not text:
        return None
    eol = text.find(b"\r\n")
    first = text[:eol]
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
    block = text[eol + 2 : -2]
    if not _HEADER_BLOCK.match(block):
        raise HttpError(400 if request else 502, "bad header line")
    headers: list[tuple[bytes, bytes]] = []
    names: list[bytes] = []
    for line in block.split(b"\r\n")[:-1]:
        name, _, value = line.partition(b":")
        headers.append((name.lower(), value.strip(b" \t")))
        names.append(name)
    return Head(start, headers, names)


@dataclass(frozen=True)
class Framing:
    """How a body is delimited: `length` bytes, chunked, or until the connection closes."""

    length: int | None = 0
    chunked: bool = False
    until_close: bool = False


_LENGTHS: dict[int, Framing] = {}


def framing_for(length: int) -> Framing:
    """A Content-Length framing; the values seen most are kept (Framing is immutable)."""
    found = _LENGTHS.get(length)
    if found is None:
        found = Framing(length=length)
        if len(_LENGTHS) < 4096:
            _LENGTHS[length] = found
    return found


_OWS = b" \t"


def request_framing(head: Head) -> Framing:
    te = head.get_all(b"transfer-encoding")
    cl = head.get_all(b"content-length")
    if te:
        if cl:
            raise HttpError(400, "both Content-Length and Transfer-Encoding")
        if head.start[2] == b"1.0":
            raise HttpError(400, "Transfer-Encoding in HTTP/1.0")
        codings = [c.strip(_OWS).lower() for v in te for c in v.split(b",") if c.strip(_OWS)]
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
        if head.get_all(b"content-length") or head.start[0] == b"1.0":
            # RFC 9112 section 6.1/6.3: such a message cannot be delimited with certainty.
            raise HttpError(502, "ambiguous response framing")
        codings = [c.strip(_OWS).lower() for v in te for c in v.split(b",") if c.strip(_OWS)]
        if codings and codings[-1] == b"chunked":
            return Framing(length=None, chunked=True)
        return Framing(length=None, until_close=True)
    cl = head.get_all(b"content-length")
    if cl:
        return Framing(length=_content_length(cl, 502))
    return Framing(length=None, until_close=True)


def _content_length(values: list[bytes], status: int) -> int:
    parts = {p.strip(_OWS) for v in values for p in v.split(b",")}
    if len(parts) != 1:
        raise HttpError(status, "conflicting Content-Length")
    (value,) = parts
    if not value.isdigit() or len(value) > 18:
        raise HttpError(status, "bad Content-Length")
    return int(value)


_HEX = frozenset(b"0123456789abcdefABCDEF")
_SIZE, _DATA, _DATA_END, _TRAILER = range(4)


_CTL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_FIELD_LINE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[^\r\n\x00]*\Z")


class ChunkScanner:
    """Finds where a chunked body ends. `feed` returns (bytes used, finished); bad framing
    raises HttpError. Without `reframe` the bytes pass through as they are (responses); with
    it, `reframed` gives the payload fed so far as clean chunks, without chunk extensions or
    trailers (requests: the backend gets one framing only certop's parser has read)."""

    def __init__(self, bad_status: int = 400, line_limit: int = 4096,
                 reframe: bool = False, trailer_limit: int = 32 * 1024) -> None:
        self.state = _SIZE
        self.trailer_left = trailer_limit
        """Bytes the trailer section may still take (431, or `bad_status` for a response)."""
        self.line = bytearray()
        self.left = 0
        self.payload = 0
        self.bad = bad_status
        self.line_limit = line_limit
        self.out: list[bytes] | None = [] if reframe else None

    def take_payload(self) -> bytes:
        """The payload fed since the last call, without chunk framing (a response to an
        HTTP/1.0 client, which is sent close-delimited)."""
        out = self.out
        assert out is not None
        payload = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        return payload

    def reframed(self, done: bool) -> bytes:
        """The payload fed since the last call as one chunk, plus the last chunk when done."""
        out = self.out
        assert out is not None
        payload = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        chunk = b"%x\r\n%s\r\n" % (len(payload), payload) if payload else b""
        return chunk + b"0\r\n\r\n" if done else chunk

    def feed(self, data: bytes) -> tuple[int, bool]:
        i, n = 0, len(data)
        while i < n:
            state = self.state
            if state == _DATA:
                take = min(self.left, n - i)
                if self.out is not None:
                    self.out.append(data[i : i + take])
                i += take
                self.left -= take
                if self.left == 0:
                    self.state = _DATA_END
                continue
            # A line (size line, CRLF after data, or trailer line).
            nl = data.find(b"\n", i)
            if nl < 0:
                self.line += data[i:]
                if len(self.line) > self.line_limit:
                    raise HttpError(self.bad, "chunk line too long")
                return n, False
            self.line += data[i : nl + 1]
            i = nl + 1
            line = bytes(self.line)
            self.line.clear()
            if len(line) > self.line_limit:
                raise HttpError(self.bad, "chunk line too long")
            if not line.endswith(b"\r\n"):
                raise HttpError(self.bad, "bare LF in chunked framing")
            line = line[:-2]
            if state == _DATA_END:
                if line:
                    raise HttpError(self.bad, "bad chunk end")
                self.state = _SIZE
            elif state == _SIZE:
                size, semi, _ext = line.partition(b";")
                if not size or len(size) > 16 or not _HEX.issuperset(size):
                    raise HttpError(self.bad, "bad chunk size")
                if semi and _CTL.search(line):  # a bare CR in an extension, among others
                    raise HttpError(self.bad, "bad chunk extension")
                self.left = int(size, 16)
                self.payload += self.left
                self.state = _DATA if self.left else _TRAILER
            elif not line:  # _TRAILER: the empty line ends the message
                return i, True
            else:
                self.trailer_left -= len(line) + 2
                if self.trailer_left < 0:
                    raise HttpError(431 if self.bad == 400 else self.bad, "trailers too large")
                if not _FIELD_LINE.match(line):
                    raise HttpError(self.bad, "bad trailer line")
        return n, False


# -- Fast paths ------------------------------------------------------------------------------
# Most messages are plain: no hop-by-hop headers, one Host, at most one Content-Length. For
# those the head is checked and scanned with a few C-level calls and forwarded as it is
# (plus certop's own lines) instead of being split into a list and rebuilt. Anything else
# takes the general path (`parse_head`), which gives the same result, only slower.

# Each pattern starts with a literal "\n" (the scanned text is "\n" + the lower-cased header
# lines), which lets the regex engine jump from line to line instead of trying every byte.
_REQ_SPECIAL = re.compile(
    rb"\n(?:(?:connection|keep-alive|te|trailer|transfer-encoding|upgrade|expect|forwarded"
    rb"|x-real-ip):|proxy-|x-forwarded-)")
_UNDERSCORE_NAME = re.compile(rb"\n[^:_]*_")
"""A header name with an underscore (the block's lines are checked: names end at the colon)."""
_RESP_SPECIAL = re.compile(
    rb"\n(?:(?:keep-alive|te|trailer|transfer-encoding|upgrade):|proxy-)")
_HOST_VALUE = re.compile(rb"\nhost:[ \t]*([^\r]*?)[ \t]*\r")
_LENGTH_VALUE = re.compile(rb"\ncontent-length:[ \t]*([^\r]*?)[ \t]*\r")
_CONNECTION_VALUE = re.compile(rb"\nconnection:[ \t]*([^\r]*?)[ \t]*\r")


class FastRequest:
    __slots__ = ("block", "host", "length", "method", "target", "version")

    def __init__(self, method: bytes, target: bytes, version: bytes, host: bytes,
                 length: int, block: bytes) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.host = host
        self.length = length
        self.block = block
        """The header lines as received, each ending with CRLF."""


def fast_request(raw: bytes) -> FastRequest | None:
    """A plain request head (see above), or None for the general path."""
    eol = raw.find(b"\r\n")
    m = _REQUEST_LINE.match(raw, 0, eol)
    if m is None or raw[m.start(2)] != 47:  # origin form ("/...") only
        return None
    block = raw[eol + 2 : -2]
    if not _HEADER_BLOCK.match(block):
        return None
    lower = b"\n" + block.lower()
    if _REQ_SPECIAL.search(lower) or (b"_" in block and _UNDERSCORE_NAME.search(lower)):
        return None
    hosts = list(_HOST_VALUE.finditer(lower))
    if len(hosts) != 1:
        return None
    host = block[hosts[0].start(1) - 1 : hosts[0].end(1) - 1]
    length = 0
    lengths = _LENGTH_VALUE.findall(lower)
    if lengths:
        if len(lengths) != 1 or not lengths[0].isdigit() or len(lengths[0]) > 18:
            return None
        length = int(lengths[0])
    return FastRequest(m.group(1), m.group(2), m.group(3), host, length, block)


def fast_response(raw: bytes, method: bytes, keep: bool) -> tuple[int, int] | None:
    """(status, Content-Length) of a plain response head, or None for the general path.
    `Connection: keep-alive` (nginx always sends it) is plain while the client connection
    stays open: passing it on says what certop's own head would say."""
    if method == b"HEAD" or raw[5:8] != b"1.1":  # an HTTP/1.0 status line is rewritten
        return None
    eol = raw.find(b"\r\n")
    m = _STATUS_LINE.match(raw, 0, eol)
    if m is None:
        return None
    status = int(m.group(2))
    if status < 200 or status in (204, 304):
        return None
    block = raw[eol + 2 : -2]
    if not _HEADER_BLOCK.match(block):
        return None
    lower = b"\n" + block.lower()
    if _RESP_SPECIAL.search(lower):
        return None
    if b"\nconnection:" in lower:
        values = _CONNECTION_VALUE.findall(lower)
        if values and (not keep or any(v != b"keep-alive" for v in values)):
            return None
    lengths = _LENGTH_VALUE.findall(lower)
    if len(lengths) != 1 or not lengths[0].isdigit() or len(lengths[0]) > 18:
        return None
    return status, int(lengths[0])


_ABSOLUTE = re.compile(
    rb"(?i:https?)://([!$&'()*+,;=A-Za-z0-9\-._~%]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{0,5})?"
    rb"([/?][^#]*)?\Z")


def origin_form(target: bytes) -> tuple[bytes, bytes]:
    """(origin-form target, authority) of an absolute-form request target; HttpError 400
    when it is not one certop routes (another scheme, userinfo, no host, a fragment)."""
    m = _ABSOLUTE.match(target)
    if m is None:
        raise HttpError(400, "bad request target")
    rest = m.group(3) or b"/"
    if rest[:1] == b"?":
        rest = b"/" + rest
    return rest, m.group(1) + (m.group(2) or b"")
