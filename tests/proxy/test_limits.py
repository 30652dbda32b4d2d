"""Connection-lifecycle limits of the real proxy (`certop standalone` in a subprocess, raw
sockets): back-pressure keeps memory bounded whatever the peers' speed, bodies of requests
certop answers itself are drained up to a cap, idle phases time out, and `--max-connections`
caps concurrent client connections."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import select
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from certopctl import Process, process, wait_for
from manifest_yaml import ingress_yaml
from proxy_helpers import serving

from certop.proxy.server import ProxySettings

MIB = 1 << 20
BIG = 200 * MIB
"""Transfer size for the back-pressure tests."""
GROWTH = 50 * MIB
"""Most the proxy's resident memory may grow while BIG bytes wait for a slow peer."""
STALL = 1.0
"""Seconds a sender sees no room before it counts as held back (only picks the moment the
slow peer starts reading; no assertion depends on it)."""


Certop = Process


@contextlib.contextmanager
def certop(tmp: Path, backend_port: int, *flags: str) -> Iterator[Process]:
    """`certop standalone` serving web.test (plain HTTP) from the backend on `backend_port`."""
    manifest = tmp / "web.yaml"
    manifest.write_text(ingress_yaml("web", "web.test", tls=False))
    with process(tmp, manifest, "--service", f"web=127.0.0.1:{backend_port}", *flags,
                 probe=("http",)) as run:
        yield run


class Pattern:
    """BIG bytes in 1 MiB blocks, each numbered, so a lost or reordered block shows."""

    def __init__(self, total: int = BIG) -> None:
        self.total = total
        self.base = os.urandom(MIB)
        digest = hashlib.sha256()
        for i in range(total // MIB):
            digest.update(self.block(i))
        self.sha = digest.hexdigest()

    def block(self, i: int) -> bytes:
        return i.to_bytes(8, "big") + self.base[8:]


def send_held_back(sock: socket.socket, pattern: Pattern, held: threading.Event) -> None:
    """Send the pattern; set `held` once the receiver has stopped taking bytes for STALL s."""
    for i in range(pattern.total // MIB):
        view = memoryview(pattern.block(i))
        while view:
            _, writable, _ = select.select([], [sock], [], STALL)
            if not writable:
                held.set()
                continue
            view = view[sock.send(view):]


def read_exactly(sock: socket.socket, n: int, digest: hashlib._Hash | None = None) -> bytes:
    out = bytearray()
    while n:
        chunk = sock.recv(min(n, MIB))
        if not chunk:
            raise ConnectionError("closed early")
        n -= len(chunk)
        if digest is None:
            out += chunk
        else:
            digest.update(chunk)
    return bytes(out)


def read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError(f"closed before a head: {data!r}")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


class OneShotBackend:
    """A backend on a thread that serves one connection with `serve(conn)`."""

    def __init__(self, serve: Callable[[socket.socket], None]) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(serve,), daemon=True)
        self.thread.start()

    def _run(self, serve: Callable[[socket.socket], None]) -> None:
        try:
            conn, _ = self.sock.accept()
            with conn:
                serve(conn)
        except BaseException as exc:  # reported by the test
            self.error = exc

    def close(self) -> None:
        self.sock.close()
        self.thread.join(30)


@pytest.mark.slow
def test_an_upload_to_a_backend_that_does_not_read_keeps_the_proxy_memory_bounded(
        tmp_path: Path) -> None:
    pattern = Pattern()
    release = threading.Event()
    seen: list[str] = []

    def slow_reader(conn: socket.socket) -> None:
        _, rest = read_head(conn)
        release.wait(120)  # the test lets it read once the client is held back
        digest = hashlib.sha256(rest)
        read_exactly(conn, pattern.total - len(rest), digest)
        seen.append(digest.hexdigest())
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")

    backend = OneShotBackend(slow_reader)
    try:
        with certop(tmp_path, backend.port) as proxy:
            before = proxy.status("VmRSS")
            held = threading.Event()
            with socket.create_connection(("127.0.0.1", proxy.http_port), 60) as sock:
                sock.sendall(b"POST /upload HTTP/1.1\r\nHost: web.test\r\nContent-Length: "
                             b"%d\r\n\r\n" % pattern.total)
                sender = threading.Thread(target=send_held_back, args=(sock, pattern, held))
                sender.start()
                wait_for(lambda: held.is_set() or not sender.is_alive(),
                         "the client to be held back or done", 120)
                release.set()
                sender.join(120)
                head, body = read_head(sock)
                body += read_exactly(sock, 2 - len(body))
            growth = proxy.status("VmHWM") - before
    finally:
        release.set()
        backend.close()
    assert backend.error is None, backend.error
    assert head.startswith(b"HTTP/1.1 200 ") and body == b"ok"
    assert seen == [pattern.sha]
    assert growth < GROWTH, f"proxy memory grew by {growth / MIB:.0f} MiB"


@pytest.mark.slow
def test_a_download_to_a_client_that_does_not_read_keeps_the_proxy_memory_bounded(
        tmp_path: Path) -> None:
    pattern = Pattern()
    held = threading.Event()

    def fast_writer(conn: socket.socket) -> None:
        read_head(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % pattern.total)
        send_held_back(conn, pattern, held)

    backend = OneShotBackend(fast_writer)
    try:
        with certop(tmp_path, backend.port) as proxy:
            before = proxy.status("VmRSS")
            with socket.create_connection(("127.0.0.1", proxy.http_port), 60) as sock:
                sock.sendall(b"GET /download HTTP/1.1\r\nHost: web.test\r\n\r\n")
                wait_for(lambda: held.is_set() or not backend.thread.is_alive(),
                         "the backend to be held back or done", 120)
                head, rest = read_head(sock)
                digest = hashlib.sha256(rest)
                read_exactly(sock, pattern.total - len(rest), digest)
            growth = proxy.status("VmHWM") - before
    finally:
        backend.close()
    assert backend.error is None, backend.error
    assert head.startswith(b"HTTP/1.1 200 ")
    assert digest.hexdigest() == pattern.sha
    assert growth < GROWTH, f"proxy memory grew by {growth / MIB:.0f} MiB"


@pytest.mark.slow
def test_an_upload_while_the_backend_connection_is_pending_keeps_the_proxy_memory_bounded(
        tmp_path: Path) -> None:
    pattern = Pattern()
    # A backend whose accept queue is full: the proxy's connection attempt waits (its SYNs are
    # dropped) until the backend takes the connection in the queue, after the test says so.
    listener = socket.create_server(("127.0.0.1", 0), backlog=0)
    filler = socket.create_connection(listener.getsockname())
    release = threading.Event()
    seen: list[str] = []
    errors: list[BaseException] = []

    def late_backend() -> None:
        try:
            release.wait(120)
            listener.accept()[0].close()  # the filler
            conn, _ = listener.accept()  # the proxy's, on its next SYN
            with conn:
                _, rest = read_head(conn)
                digest = hashlib.sha256(rest)
                read_exactly(conn, pattern.total - len(rest), digest)
                seen.append(digest.hexdigest())
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    backend = threading.Thread(target=late_backend, daemon=True)
    backend.start()
    try:
        with certop(tmp_path, listener.getsockname()[1], "--upstream-connect-timeout", "60") \
                as proxy:
            before = proxy.status("VmRSS")
            held = threading.Event()
            with socket.create_connection(("127.0.0.1", proxy.http_port), 60) as sock:
                sock.sendall(b"POST /upload HTTP/1.1\r\nHost: web.test\r\nContent-Length: "
                             b"%d\r\n\r\n" % pattern.total)
                sender = threading.Thread(target=send_held_back, args=(sock, pattern, held))
                sender.start()
                wait_for(lambda: held.is_set() or not sender.is_alive(),
                         "the client to be held back or done", 120)
                growth = proxy.status("VmHWM") - before
                release.set()
                sender.join(120)
                head, body = read_head(sock)
                body += read_exactly(sock, 2 - len(body))
    finally:
        release.set()
        backend.join(30)
        filler.close()
        listener.close()
    assert not errors, errors
    assert head.startswith(b"HTTP/1.1 200 ") and body == b"ok"
    assert seen == [pattern.sha]
    assert growth < GROWTH, f"proxy memory grew by {growth / MIB:.0f} MiB"


def talk(port: int, *parts: bytes) -> bytes:
    """Send the parts on one connection, then read until the proxy closes it (a 20 s socket
    timeout only stops a hung test)."""
    with socket.create_connection(("127.0.0.1", port), 20) as sock:
        for part in parts:
            sock.sendall(part)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
        return out


UNKNOWN = b"POST /x HTTP/1.1\r\nHost: nowhere.test\r\n"
"""A request certop answers itself (404: no Ingress names the host)."""


@pytest.mark.parametrize("parts", [
    pytest.param([UNKNOWN + b"Content-Length: 1000000000\r\n\r\n"], id="declared-too-large"),
    pytest.param([UNKNOWN + b"Content-Length: 10\r\n\r\nabc"], id="too-slow"),
    pytest.param([UNKNOWN + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"],
                 id="chunked-too-slow"),
    pytest.param([UNKNOWN + b"Transfer-Encoding: chunked\r\n\r\n",
                  *[b"1000\r\n" + b"x" * 0x1000 + b"\r\n"] * 20], id="chunked-too-large"),
])
async def test_a_body_certop_does_not_want_is_answered_and_the_connection_closed(
        tmp_path: Path, parts: list[bytes]) -> None:
    async with serving(tmp_path, ingress_yaml("web", "web.test", tls=False),
                       ["web=127.0.0.1:9"],
                       proxy_settings=ProxySettings(drain_timeout=0.5)) as s:
        out = await asyncio.to_thread(talk, s.http_port, *parts)
    assert out.startswith(b"HTTP/1.1 404 "), out[:200]
    assert b"\r\nConnection: close\r\n" in out
    assert out.count(b"HTTP/1.1") == 1


async def test_a_small_body_certop_does_not_want_is_read_and_the_connection_kept(
        tmp_path: Path) -> None:
    async with serving(tmp_path, ingress_yaml("web", "web.test", tls=False),
                       ["web=127.0.0.1:9"]) as s:
        out = await asyncio.to_thread(
            talk, s.http_port, UNKNOWN + b"Content-Length: 5\r\n\r\nhello",
            UNKNOWN + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: nowhere.test\r\nConnection: close\r\n\r\n")
    assert out.count(b"HTTP/1.1 404 ") == 3, out


class ScriptedBackend:
    """A backend answering by path: /never (no answer), /stall (a head and part of the body),
    /ws (101, then silence), /slow-upload (reads its body, answers 200)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.done = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.sock.accept()
                threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            head, rest = read_head(conn)
            path = head.split(b" ")[1]
            if path == b"/stall":
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
            elif path == b"/ws":
                conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
                             b"Upgrade: websocket\r\n\r\n")
            elif path == b"/slow-upload":
                body = rest + read_exactly(conn, 16 - len(rest))
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 16\r\n\r\n" + body)
            self.done.wait(60)

    def close(self) -> None:
        self.done.set()
        self.sock.close()


def paced(port: int, head: bytes, body: bytes, gap: float) -> bytes:
    """A slow client: the body one byte every `gap` seconds (simulated slowness, not a wait
    for a result), then read until the proxy closes."""
    with socket.create_connection(("127.0.0.1", port), 20) as sock:
        sock.sendall(head)
        for i in range(len(body)):
            time.sleep(gap)
            sock.sendall(body[i:i + 1])
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
        return out


@pytest.mark.slow
def test_each_phase_times_out_when_it_makes_no_progress(tmp_path: Path) -> None:
    backend = ScriptedBackend()
    try:
        with certop(tmp_path, backend.port, "--client-header-timeout", "1",
                    "--client-body-timeout", "1", "--upstream-header-timeout", "1",
                    "--response-body-timeout", "1", "--tunnel-idle-timeout", "1") as proxy:
            port = proxy.http_port
            head = talk(port, b"GET / HTTP/1.1\r\nHost: web.test\r\n")
            never = talk(port, b"GET /never HTTP/1.1\r\nHost: web.test\r\n\r\n")
            stall = talk(port, b"GET /stall HTTP/1.1\r\nHost: web.test\r\n\r\n")
            ws = talk(port, b"GET /ws HTTP/1.1\r\nHost: web.test\r\nConnection: Upgrade\r\n"
                            b"Upgrade: websocket\r\n\r\n")
            body = talk(port, b"POST /body HTTP/1.1\r\nHost: web.test\r\n"
                              b"Content-Length: 10\r\n\r\nabc")
            # Progress refreshes the idle timeout: a body taking 4 s, a byte every 0.25 s.
            slow = paced(port, b"POST /slow-upload HTTP/1.1\r\nHost: web.test\r\n"
                               b"Content-Length: 16\r\nConnection: close\r\n\r\n",
                         b"0123456789abcdef", 0.25)
    finally:
        backend.close()
    assert head == b""  # closed without an answer
    assert never.startswith(b"HTTP/1.1 504 ")
    assert stall.startswith(b"HTTP/1.1 200 ") and stall.endswith(b"\r\n\r\nabc")
    assert ws.startswith(b"HTTP/1.1 101 ") and ws.endswith(b"\r\n\r\n")
    assert body.startswith(b"HTTP/1.1 408 ")
    assert slow.startswith(b"HTTP/1.1 200 ") and slow.endswith(b"0123456789abcdef")


def answered(port: int) -> bytes:
    """One request on a new connection: the answer head, b"" when the proxy closed it."""
    with socket.create_connection(("127.0.0.1", port), 20) as sock:
        try:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: nowhere.test\r\n\r\n")
            return read_head(sock)[0]
        except ConnectionError:
            return b""


@pytest.mark.slow
def test_connections_over_the_limit_are_closed_counted_and_logged(tmp_path: Path) -> None:
    with certop(tmp_path, 9, "--max-connections", "2") as proxy:
        port = proxy.http_port
        for _ in range(3):  # failed TLS handshakes leave no count behind
            assert talk(proxy.https_port, b"not a ClientHello\r\n\r\n") == b""
        held = [socket.create_connection(("127.0.0.1", port), 20) for _ in range(2)]
        for sock in held:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: nowhere.test\r\n\r\n")
            assert read_head(sock)[0].startswith(b"HTTP/1.1 404 ")
        over = answered(port)
        with urllib.request.urlopen(f"http://127.0.0.1:{proxy.admin_port}/metrics") as resp:
            metrics = resp.read().decode()
        held.pop().close()
        wait_for(lambda: answered(port).startswith(b"HTTP/1.1 404 "),
                 "a connection to be served again under the limit")
        for sock in held:
            sock.close()
    assert over == b""
    assert "certop_connections_refused_total 1\n" in metrics
    assert "connection limit reached (max_connections 2)" in proxy.log.read_text()


def _open_connections(admin_port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("certop_open_connections "):
                return int(float(line.split()[1]))
    raise AssertionError("no certop_open_connections in /metrics")


@pytest.mark.slow
@pytest.mark.parametrize("upgrade", [False, True], ids=["response", "tunnel"])
def test_a_client_that_stops_reading_is_disconnected(tmp_path: Path, upgrade: bool) -> None:
    """A client that reads the head and then nothing, while the backend has 64 MiB for it (a
    response body, or a WebSocket tunnel), is cut when the response or tunnel timeout passes,
    its upstream connection with it. A graceful close would wait for the write buffer to
    drain, which it never does: the socket, the backend connection and a --max-connections
    slot would be held forever (review of issue 8)."""
    release = threading.Event()
    backend_closed = threading.Event()

    def big(conn: socket.socket) -> None:
        read_head(conn)
        if upgrade:
            conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
                         b"Upgrade: websocket\r\n\r\n")
        else:
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (64 * MIB))
        chunk = b"x" * MIB
        try:
            for _ in range(64):
                conn.sendall(chunk)
            release.wait(120)
        except OSError:
            backend_closed.set()  # the proxy dropped the backend connection

    backend = OneShotBackend(big)
    try:
        with certop(tmp_path, backend.port, "--response-body-timeout", "1",
                    "--tunnel-idle-timeout", "1") as proxy:
            sock = socket.create_connection(("127.0.0.1", proxy.http_port), 30)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            try:
                sock.sendall(b"GET /big HTTP/1.1\r\nHost: web.test\r\n" + (
                    b"Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n" if upgrade
                    else b"\r\n"))
                head, _ = read_head(sock)
                assert head.startswith(b"HTTP/1.1 101 " if upgrade else b"HTTP/1.1 200 ")
                # Now the client reads nothing more. The proxy must give up on it.
                wait_for(lambda: _open_connections(proxy.admin_port) == 0,
                         "the proxy to close the connection of a client that stopped reading")
                wait_for(backend_closed.is_set, "the proxy to close the backend connection")
            finally:
                sock.close()
    finally:
        release.set()
        backend.close()
