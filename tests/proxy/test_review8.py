"""Reproductions from the review of issue 8 (branch review-8): each test FAILS on the code
under review and states what the issue asks for. Real `certop standalone`, raw sockets."""

from __future__ import annotations

import socket
import threading
import urllib.request
from pathlib import Path

import pytest
from test_limits import OneShotBackend, certop, read_head, wait_for

MIB = 1 << 20


def _open_connections(admin_port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("certop_open_connections "):
                return int(float(line.split()[1]))
    raise AssertionError("no certop_open_connections in /metrics")


@pytest.mark.slow
def test_a_client_that_stops_reading_a_response_is_disconnected(tmp_path: Path) -> None:
    """--response-body-timeout: "a response body may make no progress, the backend sending
    or the client reading (closed after)". A client that reads the head and then nothing is
    never closed today: `ClientConn.close()` is `transport.close()`, which waits for the
    write buffer to drain (it never does), and the deadline is not armed again. Each such
    client keeps its socket, its upstream connection and a --max-connections slot forever."""
    release = threading.Event()

    def big(conn: socket.socket) -> None:
        read_head(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (64 * MIB))
        chunk = b"x" * MIB
        try:
            for _ in range(64):
                conn.sendall(chunk)
        except OSError:
            pass
        release.wait(120)

    backend = OneShotBackend(big)
    try:
        with certop(tmp_path, backend.port, "--response-body-timeout", "1") as proxy:
            sock = socket.create_connection(("127.0.0.1", proxy.http_port), 30)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            try:
                sock.sendall(b"GET /big HTTP/1.1\r\nHost: web.test\r\n\r\n")
                head, _ = read_head(sock)
                assert head.startswith(b"HTTP/1.1 200 ")
                # Now the client reads nothing more. The proxy must give up on it.
                wait_for(lambda: _open_connections(proxy.admin_port) == 0,
                         "the proxy to close the connection of a client that stopped reading",
                         30)
            finally:
                sock.close()
    finally:
        release.set()
        backend.close()


def _forwarded(tmp_path: Path, request: bytes) -> tuple[bytes, bytes]:
    """(what the backend received, what the client got) for one request."""
    seen: list[bytes] = []

    def record(conn: socket.socket) -> None:
        head, _ = read_head(conn)
        seen.append(head)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    backend = OneShotBackend(record)
    try:
        with certop(tmp_path, backend.port) as proxy, \
                socket.create_connection(("127.0.0.1", proxy.http_port), 10) as sock:
            sock.sendall(request)
            got = read_head(sock)[0]
    finally:
        backend.close()
    return (seen[0] if seen else b""), got


def test_control_characters_in_the_request_target_are_refused(tmp_path: Path) -> None:
    """A NUL or other control byte in the request-target is not a valid request (RFC 9112
    section 3.2, RFC 3986; nginx answers 400). Today `_REQUEST_LINE` takes `\\S+`, so
    `GET /a\\x00b` is forwarded to the backend as it is (C backends cut the path at the NUL:
    certop routed one path, the backend serves another)."""
    upstream, got = _forwarded(tmp_path, b"GET /public\x00/../admin HTTP/1.1\r\n"
                                         b"Host: web.test\r\n\r\n")
    assert b"\x00" not in upstream, upstream
    assert got.startswith(b"HTTP/1.1 400 "), got
