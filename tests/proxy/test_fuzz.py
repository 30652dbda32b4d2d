"""Property-based fuzzing of malformed requests: the proxy answers with a well-formed error
(or closes), never crashes, and keeps serving other clients. Requests built from framing and
header parts (Content-Length, Transfer-Encoding, chunked bodies, duplicate and odd headers,
underscores, absolute form) also never make the backend see a request the client did not get
the answer to: no smuggling."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from loopthread import LoopThread
from recorder import Recorder

from certop.core import serving
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
        self.recorder: Recorder | None = None

    async def serve(self) -> None:
        def on_error(loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
            self.error = context.get("exception") or RuntimeError(str(context))  # type: ignore[assignment]

        self.loop.set_exception_handler(on_error)
        proxy = Proxy(CertBook(), TokenStore(),
                      ProxySettings(header_limit=8192, body_limit=1 << 16,
                                    header_timeout=2.0, read_timeout=2.0))
        proxy.swap(serving.build(self.ingresses, self.backends.addresses))
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
    with Recorder() as rec, ProxyThread(tmp_path_factory.mktemp("fuzz"), rec.port) as p:
        p.recorder = rec
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


HEADER_PARTS = [
    b"Host: fuzz.test", b"Host: FUZZ.test:80", b"Host: other.test", b"Content-Length: 5",
    b"Content-Length: 0", b"Content-Length: 5, 5", b"Content-Length: 16", b"content-length:5 ",
    b"Transfer-Encoding: chunked", b"Transfer-Encoding: gzip, chunked",
    b"Transfer-Encoding: chunked, identity", b"Transfer-Encoding: \x0bchunked",
    b"Transfer-Encoding:chunked\t", b"Connection: keep-alive", b"Connection: close",
    b"Connection: Upgrade", b"Connection: content-length", b"Connection: host",
    b"Upgrade: websocket", b"Upgrade: h2c", b"Expect: 100-continue", b"TE: trailers",
    b"X-Forwarded-For: 2.2.2.2", b"X-Forwarded-Proto: https", b"Forwarded: for=3.3.3.3",
    b"X-Real-IP: 4.4.4.4", b"X_Forwarded_For: 1.1.1.1", b"Content_Length: 3",
    b"Transfer_Encoding: chunked", b"X-A: b_c", b"Cookie: _ga=1",
]
TARGETS = [b"/ok", b"/a_b?c=d", b"http://fuzz.test/x", b"HTTP://FUZZ.TEST:80/y?z",
           b"http://other.test/", b"http://u@fuzz.test/", b"https://fuzz.test", b"*",
           b"/../ok"]
BODIES = [b"", b"hello", b"5\r\nhello\r\n0\r\n\r\n", b"5;x=y\r\nhello\r\n0\r\nT: v\r\n\r\n",
          b"0\r\n\r\n", b"3\r\nabc\r\n", b"5;a\rb\r\nhello\r\n0\r\n\r\n",
          b"5\r\nhello\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: fuzz.test\r\n\r\n",
          b"0\r\n\r\nPOST /smuggled HTTP/1.1\r\nHost: fuzz.test\r\nContent-Length: 4\r\n\r\nab"]

framed_requests = st.tuples(
    st.sampled_from([b"GET", b"POST", b"PUT"]), st.sampled_from(TARGETS),
    st.sampled_from([b"1.1", b"1.1", b"1.0"]),
    st.lists(st.sampled_from(HEADER_PARTS), min_size=1, max_size=7),
    st.lists(st.sampled_from(BODIES), max_size=2),
).map(lambda t: b"%s %s HTTP/%s\r\n" % t[:3] + b"".join(h + b"\r\n" for h in t[3])
      + b"\r\n" + b"".join(t[4]))


def backend_answers(out: bytes) -> list[int]:
    return [int(line.split(b":")[1]) for line in out.split(b"\r\n")
            if line.startswith(b"X-Recorded:")]


@pytest.mark.slow
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow],
          derandomize=True)
@given(data=framed_requests)
def test_framing_and_header_sets_never_smuggle_a_request_past_the_proxy(
        served: ProxyThread, data: bytes) -> None:
    rec = served.recorder
    assert rec is not None
    before = len(rec.requests)
    out = talk(served.port, data)
    if out:
        assert out.startswith(b"HTTP/1.1 "), out[:60]
    # Every request the backend saw was answered to this client, in order, and nothing else.
    assert backend_answers(out) == list(range(before, len(rec.requests))), (data, out)
    assert rec.broken == [], rec.broken
    for seen in rec.requests[before:]:
        assert len(seen.all("host")) == 1 and len(seen.all("content-length")) <= 1, seen
        assert not (seen.all("content-length") and seen.all("transfer-encoding")), seen
        assert seen.all("x-forwarded-for") == ["127.0.0.1"], seen
        assert not [k for k, _ in seen.headers if "_" in k], seen
        assert seen.all("forwarded") == [] and seen.all("x-real-ip") == ["127.0.0.1"], seen
    good = talk(served.port, GOOD)
    assert good.startswith(b"HTTP/1.1 200 "), good[:80]
    (index,) = backend_answers(good)
    assert rec.requests[index].request_line == b"GET /ok HTTP/1.1"
