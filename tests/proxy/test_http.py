"""HTTP/1.1 behaviour of the proxy on the wire: framing, streaming, keep-alive, upgrades,
forwarded headers, limits and request-smuggling defences. Raw sockets, real backends."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from echo import Echo

from certop.core import serving
from certop.proxy.server import Proxy, ProxySettings
from certop.proxy.tls import CertBook
from certop.standalone import loader
from certop.standalone.services import StaticBackends
from solvers.http01 import TokenStore

INGRESS = """
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: web, namespace: default}
spec:
  rules:
    - host: web.test
      http:
        paths:
          - {path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}
          - {path: /raw, pathType: Prefix, backend: {service: {name: raw, port: {number: 80}}}}
          - {path: /admin, pathType: Prefix, backend: {service: {name: admin, port: {number: 80}}}}
"""


class RawBackend:
    """A backend whose answers the test scripts byte by byte (for framing edge cases)."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.port = 0
        self.script: list[bytes | int] = []
        """Per request: bytes to answer, or an int: read that many body bytes first."""
        self.received: list[bytes] = []
        self.connections = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while self.script:
                head = await reader.readuntil(b"\r\n\r\n")
                self.received.append(head)
                answer = self.script.pop(0)
                while isinstance(answer, int):  # (interim answer already sent) read the body
                    self.received.append(await reader.readexactly(answer))
                    answer = self.script.pop(0)
                if isinstance(answer, bytes) and answer.startswith(b"HTTP/1.1 100"):
                    writer.write(answer)
                    answer = self.script.pop(0)
                    while isinstance(answer, int):
                        self.received.append(await reader.readexactly(answer))
                        answer = self.script.pop(0)
                if answer == b"CLOSE":
                    break
                writer.write(answer)
                await writer.drain()
        writer.close()

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


@pytest.fixture(scope="module")
def echo() -> Iterator[Echo]:
    with Echo("web") as e:
        yield e


@pytest.fixture
async def raw() -> AsyncIterator[RawBackend]:
    backend = RawBackend()
    await backend.start()
    yield backend
    await backend.stop()


@pytest.fixture
async def proxy(tmp_path: Path, echo: Echo, raw: RawBackend) -> AsyncIterator[Proxy]:
    path = tmp_path / "ing.yaml"
    path.write_text(INGRESS)
    found = loader.load([path])
    backends = StaticBackends.from_flags([f"web=127.0.0.1:{echo.port}",
                                          f"raw=127.0.0.1:{raw.port}",
                                          f"admin=127.0.0.1:{echo.port}"])
    p = Proxy(CertBook(), TokenStore(),
              ProxySettings(header_limit=4096, body_limit=1 << 20, header_timeout=2.0,
                            read_timeout=2.0))
    p.swap(serving.build(found.ingresses, backends.addresses))
    await p.start("127.0.0.1", 0, None)
    yield p
    await p.close(grace=1.0)


def exchange(port: int, data: bytes, *, until_close: bool = True, timeout: float = 5) -> bytes:
    """Send raw bytes, read until the server closes (or `timeout`)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        if not until_close:
            return s.recv(65536)
        out = b""
        with contextlib.suppress(TimeoutError):
            while chunk := s.recv(65536):
                out += chunk
        return out


async def send(proxy: Proxy, data: bytes, **kw: object) -> bytes:
    return await asyncio.to_thread(exchange, proxy.ports()[0], data, **kw)  # type: ignore[arg-type]


def responses(raw: bytes) -> list[tuple[int, bytes]]:
    """Split a byte stream of Content-Length framed responses into (status, body)."""
    out = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        out.append((status, rest[:length]))
        raw = rest[length:]
    return out


async def test_keep_alive_and_pipelined_requests_are_answered_in_order(proxy: Proxy) -> None:
    req = b"GET /%d HTTP/1.1\r\nHost: web.test\r\n\r\n"
    data = req % 1 + req % 2 + (b"GET /3 HTTP/1.1\r\nHost: web.test\r\nConnection: close\r\n\r\n")
    got = responses(await send(proxy, data))
    assert [s for s, _ in got] == [200, 200, 200]
    assert [json.loads(b)["path"] for _, b in got] == ["/1", "/2", "/3"]


async def test_forwarded_headers_are_set_and_hop_by_hop_headers_dropped(proxy: Proxy) -> None:
    got = responses(await send(proxy, (
        b"GET /x HTTP/1.1\r\nHost: web.test\r\nX-Forwarded-For: 10.0.0.1\r\n"
        b"X-Forwarded-Proto: https\r\nKeep-Alive: timeout=5\r\nConnection: close, X-Secret\r\n"
        b"X-Secret: hop\r\nTE: trailers\r\n\r\n")))
    seen = json.loads(got[0][1])["headers"]
    assert seen["x-forwarded-for"] == "127.0.0.1"  # the peer: it is no trusted proxy
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-host"] == "web.test"
    assert seen["host"] == "web.test"
    for hop in ("keep-alive", "x-secret", "te"):
        assert hop not in seen


async def test_bodies_stream_with_content_length_and_chunked(proxy: Proxy) -> None:
    body = b"x" * 100_000
    got = responses(await send(proxy, b"POST /up HTTP/1.1\r\nHost: web.test\r\nContent-Length: "
                               b"%d\r\nConnection: close\r\n\r\n%s" % (len(body), body)))
    assert json.loads(got[0][1])["body"] == body.decode()
    chunked = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n"
    got = responses(await send(proxy, b"POST /up HTTP/1.1\r\nHost: web.test\r\nTransfer-Encoding:"
                               b" chunked\r\nConnection: close\r\n\r\n" + chunked))
    assert json.loads(got[0][1])["body"] == "hello world"


async def test_a_chunked_response_is_relayed_and_the_connection_reused(
        proxy: Proxy, raw: RawBackend) -> None:
    raw.script = [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
                  b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"]
    out = await send(proxy, b"GET /raw/1 HTTP/1.1\r\nHost: web.test\r\n\r\n"
                     b"GET /raw/2 HTTP/1.1\r\nHost: web.test\r\nConnection: close\r\n\r\n")
    assert b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n" in out
    assert out.endswith(b"ok")
    assert raw.connections == 1  # the upstream connection was kept alive and reused


async def test_a_response_delimited_by_close_ends_the_client_connection(
        proxy: Proxy, raw: RawBackend) -> None:
    raw.script = [b"HTTP/1.1 200 OK\r\n\r\nuntil the end", b"CLOSE"]
    out = await send(proxy, b"GET /raw HTTP/1.1\r\nHost: web.test\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Connection: close" in out and out.endswith(b"until the end")


async def test_expect_100_continue_is_relayed(proxy: Proxy, raw: RawBackend) -> None:
    raw.script = [b"HTTP/1.1 100 Continue\r\n\r\n", 4,
                  b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"]

    def client(port: int) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"PUT /raw HTTP/1.1\r\nHost: web.test\r\nExpect: 100-continue\r\n"
                      b"Content-Length: 4\r\nConnection: close\r\n\r\n")
            first = s.recv(1024)
            s.sendall(b"data")
            rest = b""
            while chunk := s.recv(1024):
                rest += chunk
            return first + rest

    out = await asyncio.to_thread(client, proxy.ports()[0])
    assert out.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created")
    assert b"expect: 100-continue" in raw.received[0].lower()
    assert raw.received[1] == b"data"


async def test_upgrade_tunnels_bytes_both_ways(proxy: Proxy, raw: RawBackend) -> None:
    raw.script = [b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
                  b"Upgrade: websocket\r\n\r\nhello from upstream"]

    def client(port: int) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET /raw/ws HTTP/1.1\r\nHost: web.test\r\nConnection: Upgrade\r\n"
                      b"Upgrade: websocket\r\n\r\n")
            out = b""
            while b"hello from upstream" not in out:
                chunk = s.recv(1024)
                if not chunk:
                    break
                out += chunk
            return out

    out = await asyncio.to_thread(client, proxy.ports()[0])
    assert out.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert b"Upgrade: websocket" in out and out.endswith(b"hello from upstream")
    assert b"connection: upgrade" in raw.received[0].lower()


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        pytest.param(b"POST / HTTP/1.1\r\nHost: web.test\r\nContent-Length: 5\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, id="cl-and-te"),
        pytest.param(b"POST / HTTP/1.1\r\nHost: web.test\r\nContent-Length: 5\r\n"
                     b"Content-Length: 6\r\n\r\nhello!", 400, id="two-content-lengths"),
        pytest.param(b"POST / HTTP/1.1\r\nHost: web.test\r\nTransfer-Encoding: gzip\r\n\r\n",
                     400, id="te-not-chunked"),
        pytest.param(b"POST / HTTP/1.1\r\nHost: web.test\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"zz\r\n", 400, id="bad-chunk-size"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: web.test\r\nX: a\r\n folded\r\n\r\n", 400,
                     id="obs-fold"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: web.test\r\nHost: other\r\n\r\n", 400,
                     id="two-hosts"),
        pytest.param(b"GET / HTTP/1.1\r\n\r\n", 400, id="no-host"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: web.test\r\nX: " + b"a" * 5000 + b"\r\n\r\n",
                     431, id="head-too-large"),
        pytest.param(b"POST / HTTP/1.1\r\nHost: web.test\r\nContent-Length: 2000000\r\n\r\n",
                     413, id="body-too-large"),
        pytest.param(b"GET  / HTTP/1.1\r\nHost: web.test\r\n\r\n", 400, id="bad-request-line"),
    ],
)
async def test_malformed_or_ambiguous_requests_are_refused_and_closed(
        proxy: Proxy, request_bytes: bytes, status: int) -> None:
    out = await send(proxy, request_bytes)
    assert out.startswith(b"HTTP/1.1 %d " % status), out[:80]
    assert b"Connection: close" in out


async def test_dot_segments_cannot_bypass_a_route(proxy: Proxy, echo: Echo) -> None:
    got = responses(await send(proxy, b"GET /raw/../admin/x HTTP/1.1\r\nHost: web.test\r\n"
                               b"Connection: close\r\n\r\n"))
    # Routed as /admin/x (to the admin backend), never as /raw.
    assert got[0][0] == 200


async def test_a_slow_client_is_cut_off_after_the_header_timeout(proxy: Proxy) -> None:
    def slowloris(port: int) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: web.test\r\n")
            return s.recv(1024)  # returns b"" once the proxy closes

    assert await asyncio.to_thread(slowloris, proxy.ports()[0]) == b""


async def test_a_backend_that_hangs_up_without_answering_gives_502(
        proxy: Proxy, raw: RawBackend) -> None:
    raw.script = [b"CLOSE"]
    out = await send(proxy, b"GET /raw HTTP/1.1\r\nHost: web.test\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 502 ")


async def test_a_backend_that_never_answers_gives_504(tmp_path: Path) -> None:
    held: list[asyncio.StreamWriter] = []

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    silent = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    path = tmp_path / "ing.yaml"
    path.write_text(INGRESS)
    backends = StaticBackends.from_flags([f"web=127.0.0.1:{port}", f"raw=127.0.0.1:{port}",
                                          f"admin=127.0.0.1:{port}"])
    p = Proxy(CertBook(), TokenStore(), ProxySettings(read_timeout=0.5))
    p.swap(serving.build(loader.load([path]).ingresses, backends.addresses))
    await p.start("127.0.0.1", 0, None)
    try:
        out = await send(p, b"GET / HTTP/1.1\r\nHost: web.test\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 504 ")
        assert b"127.0.0.1" not in out  # no internal details
    finally:
        await p.close(grace=0.5)
        for writer in held:
            writer.close()
        silent.close()
        await silent.wait_closed()


async def test_a_stale_pooled_connection_is_retried_on_a_new_one(
        proxy: Proxy, raw: RawBackend) -> None:
    # The backend hangs up on its idle keep-alive connection when the second request comes.
    raw.script = [b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst", b"CLOSE",
                  b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecond"]
    first = await send(proxy, b"GET /raw HTTP/1.1\r\nHost: web.test\r\nConnection: close\r\n\r\n")
    assert first.endswith(b"first")
    second = await send(proxy, b"GET /raw HTTP/1.1\r\nHost: web.test\r\nConnection: close\r\n\r\n")
    assert second.startswith(b"HTTP/1.1 200 ") and second.endswith(b"second")
    assert raw.connections == 2


async def test_graceful_shutdown_finishes_requests_in_flight(tmp_path: Path) -> None:
    release = asyncio.Event()
    arrived = asyncio.Event()

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        arrived.set()
        await release.wait()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone")
        await writer.drain()
        writer.close()

    backend = await asyncio.start_server(slow, "127.0.0.1", 0)
    port = backend.sockets[0].getsockname()[1]
    path = tmp_path / "ing.yaml"
    path.write_text(INGRESS)
    backends = StaticBackends.from_flags([f"{n}=127.0.0.1:{port}" for n in ("web", "raw",
                                                                           "admin")])
    p = Proxy(CertBook(), TokenStore())
    p.swap(serving.build(loader.load([path]).ingresses, backends.addresses))
    await p.start("127.0.0.1", 0, None)
    proxy_port = p.ports()[0]
    in_flight = asyncio.create_task(send(p, b"GET / HTTP/1.1\r\nHost: web.test\r\n\r\n"))
    await arrived.wait()
    closing = asyncio.create_task(p.close(grace=10))
    await asyncio.sleep(0)  # let close() stop the listeners
    with pytest.raises(OSError):
        await asyncio.to_thread(socket.create_connection, ("127.0.0.1", proxy_port), 2)
    release.set()
    out = await in_flight
    assert out.startswith(b"HTTP/1.1 200 ") and out.endswith(b"done")
    assert b"Connection: close" in out  # no keep-alive while shutting down
    await closing
    backend.close()
    await backend.wait_closed()
