"""Property-based fuzzing of malformed requests: the proxy answers with a well-formed error
(or closes), never crashes, and keeps serving other clients."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from echo import Echo
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from loopthread import LoopThread

from certop.core import routing
from certop.proxy.server import Proxy, ProxySettings
from certop.proxy.tls import CertBook
from certop.standalone import loader
from certop.standalone.services import StaticBackends
from solvers.http01 import TokenStore

INGRESS = """
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: fuzz}
spec:
  rules:
    - host: fuzz.test
      http:
        paths: [{path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}]
"""
GOOD = b"GET /ok HTTP/1.1\r\nHost: fuzz.test\r\nConnection: close\r\n\r\n"
ALLOWED = {200, 400, 404, 413, 431, 501, 502, 503, 504}


class ProxyThread(LoopThread):
    """The proxy on its own event loop in a thread, so blocking test code can drive it."""

    def __init__(self, tmp: Path, backend_port: int) -> None:
        super().__init__()
        path = tmp / "ing.yaml"
        path.write_text(INGRESS)
        self.ingresses = loader.load([path]).ingresses
        self.backends = StaticBackends.from_flags([f"web=127.0.0.1:{backend_port}"])
        self.port = 0
        self.error: BaseException | None = None

    async def serve(self) -> None:
        def on_error(loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
            self.error = context.get("exception") or RuntimeError(str(context))  # type: ignore[assignment]

        self.loop.set_exception_handler(on_error)
        proxy = Proxy(CertBook(), TokenStore(), self.backends,
                      ProxySettings(header_limit=8192, body_limit=1 << 16,
                                    header_timeout=2.0, read_timeout=2.0))
        proxy.routes = routing.build(self.ingresses)
        await proxy.start("127.0.0.1", 0, None)
        self.port = proxy.ports()[0]
        self.started()
        await self.stopping.wait()
        await proxy.close(grace=0.5)


def talk(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        with contextlib.suppress(OSError):
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        out = b""
        with contextlib.suppress(OSError):
            while chunk := s.recv(65536):
                out += chunk
        return out


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyThread]:
    with Echo("web") as echo, ProxyThread(tmp_path_factory.mktemp("fuzz"), echo.port) as p:
        yield p
    assert p.error is None, f"the proxy's event loop saw an error: {p.error!r}"


VALID_PARTS = [b"GET", b" ", b"/ok", b" HTTP/1.1", b"\r\n", b"Host: fuzz.test", b"\r\n",
               b"Content-Length: 5", b"\r\n", b"Transfer-Encoding: chunked", b"\r\n",
               b"\r\n", b"hello", b"5\r\nhello\r\n0\r\n\r\n", b"\n", b"\r", b" ", b"\t",
               b":", b"\x00", b"Expect: 100-continue\r\n", b"Connection: Upgrade\r\n",
               b"Upgrade: websocket\r\n", b"Content-Length: -1\r\n", b"Host: a\r\n"]

messages = st.one_of(
    st.binary(max_size=300),
    st.lists(st.sampled_from(VALID_PARTS), max_size=25).map(b"".join),
    st.tuples(st.integers(0, len(GOOD) - 1), st.binary(min_size=1, max_size=8)).map(
        lambda t: GOOD[: t[0]] + t[1] + GOOD[t[0] + 1 :]),
)


@pytest.mark.slow
@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow],
          derandomize=True)
@given(data=messages)
def test_malformed_requests_get_a_clean_answer_and_the_proxy_keeps_serving(
        served: ProxyThread, data: bytes) -> None:
    out = talk(served.port, data)
    if out:
        assert out.startswith(b"HTTP/1.1 "), out[:60]
        status = int(out[9:12])
        assert status in ALLOWED or 100 <= status < 200, out[:80]
    good = talk(served.port, GOOD)
    assert good.startswith(b"HTTP/1.1 200 "), good[:80]
