"""One message, one meaning: what the backend sees is exactly what certop decided the client
sent (one framing, one Host, forwarded headers the client cannot forge), whatever the client
or the backend does. Raw sockets through the real proxy; a recording backend."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import random
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from recorder import Recorder

from certop.core import serving
from certop.proxy.admin import Admin
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
    - host: "*.wild.test"
      http:
        paths:
          - {path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}
"""


@pytest.fixture(scope="module")
def rec() -> Iterator[Recorder]:
    with Recorder() as r:
        yield r


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def scripted(handler: Handler) -> AsyncIterator[int]:
    """A backend on loopback run by `handler` per connection; yields its port."""
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


@contextlib.asynccontextmanager
async def proxy_for(tmp_path: Path, web: int, raw: int | None = None,
                    **settings: Any) -> AsyncIterator[Proxy]:
    path = tmp_path / "ing.yaml"
    path.write_text(INGRESS)
    backends = StaticBackends.from_flags([f"web=127.0.0.1:{web}",
                                          f"raw=127.0.0.1:{raw or web}"])
    p = Proxy(CertBook(), TokenStore(),
              ProxySettings(header_limit=8192, header_timeout=5.0, read_timeout=5.0,
                            **settings))
    p.swap(serving.build(loader.load([path]).ingresses, backends.addresses))
    await p.start("127.0.0.1", 0, None)
    try:
        yield p
    finally:
        await p.close(grace=1.0)


@pytest.fixture
async def proxy(tmp_path: Path, rec: Recorder) -> AsyncIterator[Proxy]:
    async with proxy_for(tmp_path, rec.port) as p:
        yield p


def talk(port: int, data: bytes) -> bytes:
    """Send raw bytes, half-close, read until the proxy closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


async def send(proxy: Proxy, data: bytes) -> bytes:
    return await asyncio.to_thread(talk, proxy.ports()[0], data)


def recorded(out: bytes) -> list[int]:
    """The recorder's indexes of the backend answers in a proxy's output."""
    return [int(line.split(b":")[1]) for line in out.split(b"\r\n")
            if line.startswith(b"X-Recorded:")]


# -- 1. One message, one meaning upstream -----------------------------------------------------

@pytest.mark.parametrize("extra", [
    pytest.param(b"Connection: keep-alive\r\n", id="connection-keep-alive"),
    pytest.param(b"Content-Length: 5\r\n", id="repeated-same-length"),
    pytest.param(b"X-Forwarded-For: 10.1.1.1\r\n", id="general-path"),
])
async def test_exactly_one_content_length_is_sent_upstream(
        proxy: Proxy, rec: Recorder, extra: bytes) -> None:
    out = await send(proxy, b"POST /one HTTP/1.1\r\nHost: web.test\r\nContent-Length: 5\r\n"
                     + extra + b"\r\nhello")
    (index,) = recorded(out)
    seen = rec.requests[index]
    assert seen.all("content-length") == ["5"]
    assert seen.body == b"hello"


@pytest.mark.parametrize(("target", "host", "line", "host_up"), [
    pytest.param(b"http://web.test/x?q=1", b"elsewhere.test", b"GET /x?q=1 HTTP/1.1",
                 "web.test", id="authority-wins"),
    pytest.param(b"http://WEB.test:8080", b"web.test", b"GET / HTTP/1.1", "WEB.test:8080",
                 id="no-path"),
    pytest.param(b"https://web.test?a=b", b"web.test", b"GET /?a=b HTTP/1.1", "web.test",
                 id="query-only"),
])
async def test_an_absolute_form_request_is_routed_by_its_authority_and_sent_in_origin_form(
        proxy: Proxy, rec: Recorder, target: bytes, host: bytes, line: bytes,
        host_up: str) -> None:
    out = await send(proxy, b"GET " + target + b" HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200 "), out[:80]
    seen = rec.requests[recorded(out)[0]]
    assert seen.request_line == line
    assert seen.one("host") == host_up
    assert seen.one("x-forwarded-host") == host_up


async def test_an_absolute_form_request_for_an_unknown_authority_is_not_routed_by_host(
        proxy: Proxy) -> None:
    out = await send(proxy, b"GET http://elsewhere.test/ HTTP/1.1\r\nHost: web.test\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 404 "), out[:80]


@pytest.mark.parametrize("target", [
    pytest.param(b"http://user@web.test/", id="userinfo"),
    pytest.param(b"http:///x", id="empty-authority"),
    pytest.param(b"http://we\x7fb.test/", id="control-character"),
    pytest.param(b"http://web.test:80:80/", id="two-ports"),
])
async def test_a_bad_absolute_form_is_refused(proxy: Proxy, target: bytes) -> None:
    out = await send(proxy, b"GET " + target + b" HTTP/1.1\r\nHost: web.test\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400 "), out[:80]


async def test_a_chunked_body_cannot_make_a_backend_answer_belong_to_another_client(
        tmp_path: Path) -> None:
    """A backend that ignores Transfer-Encoding reads the chunked body as a next request and
    answers it late (when the next bytes arrive on its connection). That answer must never
    reach another client."""

    def answer(body: bytes) -> bytes:
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)

    async def ignores_te(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        smuggled = False
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if b"transfer-encoding: chunked" in head.lower():
                    await reader.readuntil(b"\r\n\r\n")  # the body, taken for a request
                    smuggled = True
                if smuggled and b"/second" in head:
                    writer.write(answer(b"smuggled"))
                    smuggled = False
                writer.write(answer(head.split(b" ")[1]))
                await writer.drain()
        writer.close()

    async with scripted(ignores_te) as port, proxy_for(tmp_path, port) as p:
        first = await send(p, b"POST /first HTTP/1.1\r\nHost: web.test\r\nTransfer-Encoding: "
                           b"chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        assert first.endswith(b"/first")
        second = await send(p, b"GET /second HTTP/1.1\r\nHost: web.test\r\n\r\n")
        assert second.startswith(b"HTTP/1.1 200 ") and second.endswith(b"/second"), second


async def test_a_chunked_body_is_reframed_without_extensions_or_trailers(
        proxy: Proxy, rec: Recorder) -> None:
    out = await send(proxy, b"POST /c HTTP/1.1\r\nHost: web.test\r\nTransfer-Encoding: chunked"
                     b"\r\n\r\n5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nX-Forwarded-For: "
                     b"6.6.6.6\r\n\r\n")
    seen = rec.requests[recorded(out)[0]]
    assert seen.body == b"hello world"
    assert seen.all("transfer-encoding") == ["chunked"]
    assert seen.all("content-length") == []
    assert b";" not in seen.raw_body and b"6.6.6.6" not in seen.raw_body
    assert seen.raw_body.endswith(b"\r\n0\r\n\r\n")


@pytest.mark.parametrize("response", [
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"3\r\nabc\r\n0\r\n\r\n", id="content-length-and-transfer-encoding"),
    pytest.param(b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
                 id="http-1.0-with-transfer-encoding"),
    pytest.param(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n"
                 b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", id="101-without-upgrade"),
    # A backend's status line is held to the rules of a request line: no CR (a client
    # reading a bare CR as a line end sees a header the backend did not mean to send), no
    # other control byte but HTAB, no bare LF.
    pytest.param(b"HTTP/1.1 200 OK\rSet-Cookie: evil=1\r\nContent-Length: 2\r\n\r\nok",
                 id="status-line-bare-cr"),
    pytest.param(b"HTTP/1.1 200 O\x00K\r\nContent-Length: 2\r\n\r\nok", id="status-line-nul"),
    pytest.param(b"HTTP/1.1 200 O\x1bK\r\nContent-Length: 2\r\n\r\nok", id="status-line-esc"),
    pytest.param(b"HTTP/1.1 200 OK\n\r\nContent-Length: 2\r\n\r\nok",
                 id="status-line-bare-lf"),
    pytest.param(b"HTTP/1.1 200 OK\r\nX-A: 1\rSet-Cookie: evil=1\r\nContent-Length: 2\r\n"
                 b"\r\nok", id="header-value-bare-cr"),
    pytest.param(b"HTTP/1.1 200 OK\r\nX-A: 1\x00\r\nContent-Length: 2\r\n\r\nok",
                 id="header-value-nul"),
    pytest.param(b"HTTP/1.1 200 OK\r\nX\rA: 1\r\nContent-Length: 2\r\n\r\nok",
                 id="header-name-bare-cr"),
])
async def test_an_ambiguous_upstream_response_is_a_502(tmp_path: Path, response: bytes) -> None:
    async def backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(response)
            await writer.drain()
            await reader.read()
        writer.close()

    async with scripted(backend) as port, proxy_for(tmp_path, port) as p:
        out = await send(p, b"GET / HTTP/1.1\r\nHost: web.test\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 502 "), out


# -- 2. Forwarded headers cannot be spoofed ---------------------------------------------------

SPOOF = (b"X-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil\r\n"
         b"X-Forwarded-Port: 443\r\nForwarded: for=1.2.3.4;proto=https\r\nX-Real-IP: 1.2.3.4\r\n"
         b"X_Forwarded_For: 6.6.6.6\r\nX-Custom_Name: 1\r\n")


@pytest.mark.parametrize("headers", [
    pytest.param(SPOOF, id="all"),
    pytest.param(b"X-Real-IP: 1.2.3.4\r\n", id="x-real-ip-alone"),
    pytest.param(b"Forwarded: for=1.2.3.4\r\n", id="forwarded-alone"),
    pytest.param(b"X_Forwarded_For: 6.6.6.6\r\nCookie: _ga=1\r\n", id="underscore-alone"),
    pytest.param(b"", id="plain"),
])
async def test_forwarded_headers_from_an_untrusted_client_are_replaced(
        proxy: Proxy, rec: Recorder, headers: bytes) -> None:
    out = await send(proxy, b"GET /f HTTP/1.1\r\nHost: web.test\r\n" + headers + b"\r\n")
    seen = rec.requests[recorded(out)[0]]
    assert seen.one("x-forwarded-for") == "127.0.0.1"
    assert seen.one("x-real-ip") == "127.0.0.1"
    assert seen.one("x-forwarded-proto") == "http"
    assert seen.one("x-forwarded-host") == "web.test"
    assert seen.one("x-forwarded-port") == str(proxy.http_port)
    assert seen.all("forwarded") == []
    assert [k for k, _ in seen.headers if "_" in k] == []
    if b"Cookie" in headers:
        assert seen.one("cookie") == "_ga=1"  # an underscore in a value is fine


@pytest.mark.parametrize("headers", [pytest.param(b"", id="fast-path"),
                                     pytest.param(SPOOF, id="headers-replaced")])
async def test_backends_are_told_the_public_port(tmp_path: Path, rec: Recorder,
                                                 headers: bytes) -> None:
    async with proxy_for(tmp_path, rec.port, public_http_port=80) as p:
        out = await send(p, b"GET /p HTTP/1.1\r\nHost: web.test\r\n" + headers + b"\r\n")
        assert p.http_port != 80
        assert rec.requests[recorded(out)[0]].one("x-forwarded-port") == "80"


async def test_a_trusted_proxy_extends_x_forwarded_for_and_its_proto_is_kept(
        tmp_path: Path, rec: Recorder) -> None:
    trusted = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("10.9.0.0/16"))
    async with proxy_for(tmp_path, rec.port, trusted_proxies=trusted) as p:
        out = await send(p, b"GET /t HTTP/1.1\r\nHost: web.test\r\n" + SPOOF
                         + b"X-Forwarded-For: 10.9.0.7\r\n\r\n")
        seen = rec.requests[recorded(out)[0]]
        assert seen.one("x-forwarded-for") == "10.0.0.1, 10.9.0.7, 127.0.0.1"
        assert seen.one("x-real-ip") == "10.0.0.1"  # the nearest address not trusted
        assert seen.one("x-forwarded-proto") == "https"
        assert seen.one("x-forwarded-host") == "evil"
        assert seen.one("x-forwarded-port") == "443"
        assert seen.all("forwarded") == []
        assert [k for k, _ in seen.headers if "_" in k] == []
        plain = await send(p, b"GET /t HTTP/1.1\r\nHost: web.test\r\n\r\n")
        seen = rec.requests[recorded(plain)[0]]
        assert seen.one("x-forwarded-for") == "127.0.0.1"
        assert seen.one("x-forwarded-proto") == "http"


# -- 3. Strict framing ------------------------------------------------------------------------

@pytest.mark.parametrize("request_bytes", [
    pytest.param(b"POST / HTTP/1.1\r\nHost: web.test\r\nTransfer-Encoding: \x0bchunked\r\n\r\n"
                 b"0\r\n\r\n", id="te-vertical-tab"),
    pytest.param(b"POST / HTTP/1.1\r\nHost: web.test\r\nTransfer-Encoding: chunked\x0c\r\n\r\n"
                 b"0\r\n\r\n", id="te-form-feed"),
    pytest.param(b"POST / HTTP/1.1\r\nHost: web.test\r\nContent-Length: \x0b5\r\n\r\nhello",
                 id="cl-vertical-tab"),
    pytest.param(b"POST / HTTP/1.1\r\nHost: web.test\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"5;a=b\rc\r\nhello\r\n0\r\n\r\n", id="chunk-ext-bare-cr"),
    pytest.param(b"POST / HTTP/1.1\r\nHost: web.test\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"5;" + b"x" * 5000 + b"\r\nhello\r\n0\r\n\r\n", id="chunk-line-too-long"),
    pytest.param(b"POST / HTTP/1.1\r\nHost: web.test\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"5\r\nhello\r\n0\r\nBad\rTrailer: x\r\n\r\n", id="trailer-bare-cr"),
    pytest.param(b"POST / HTTP/1.0\r\nHost: web.test\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"0\r\n\r\n", id="http-1.0-with-te"),
    pytest.param(b"GET / HTTP/1.1\n\r\nHost: web.test\r\n\r\n", id="request-line-bare-lf"),
])
async def test_lenient_framing_is_refused(proxy: Proxy, rec: Recorder,
                                          request_bytes: bytes) -> None:
    before = len(rec.requests)
    out = await send(proxy, request_bytes)
    assert out.startswith(b"HTTP/1.1 400 "), out[:80]
    assert b"Connection: close" in out
    assert len(rec.requests) == before


@pytest.mark.parametrize("target", [
    pytest.param(b"/public\x00/../admin", id="nul"),
    pytest.param(b"/\x01x", id="soh"),
    pytest.param(b"/a\x1fb", id="unit-separator"),
    pytest.param(b"/a\x7fb", id="del"),
    pytest.param(b"/a\x0bb", id="vertical-tab"),
])
@pytest.mark.parametrize("extra", [
    pytest.param(b"", id="fast-path"),
    pytest.param(b"X-Forwarded-For: 10.1.1.1\r\n", id="general-path"),
])
async def test_control_characters_in_the_request_target_are_refused(
        proxy: Proxy, rec: Recorder, target: bytes, extra: bytes) -> None:
    """A control byte in the request-target is not a valid request (RFC 9112 section 3.2,
    RFC 3986; nginx answers 400). A C backend cutting the path at a NUL would serve another
    path than the one certop routed (`/public\\x00/../admin` routes as `/admin`)."""
    before = len(rec.requests)
    out = await send(proxy, b"GET " + target + b" HTTP/1.1\r\nHost: web.test\r\n" + extra
                     + b"\r\n")
    assert out.startswith(b"HTTP/1.1 400 "), out[:80]
    assert len(rec.requests) == before


async def test_the_trailer_section_of_a_chunked_request_is_bounded(proxy: Proxy,
                                                                    rec: Recorder) -> None:
    """Trailer lines count against the head limit (`header_limit`, 8 KiB here): 80 KB of
    them is a 431 and the connection closed, not a request that never ends (each line used to
    count as progress, with neither bytes nor lines counted)."""
    before = len(rec.requests)
    trailer = b"X-Trailer: " + b"a" * 3980 + b"\r\n"
    out = await send(proxy, b"POST /t HTTP/1.1\r\nHost: web.test\r\nTransfer-Encoding: chunked"
                     b"\r\n\r\n5\r\nhello\r\n0\r\n" + trailer * 20 + b"\r\n")
    assert out.startswith(b"HTTP/1.1 431 "), out[:80]
    assert b"Connection: close" in out
    assert len(rec.requests) == before
    # Trailers within the limit are read (and dropped, see the reframing test).
    out = await send(proxy, b"POST /t HTTP/1.1\r\nHost: web.test\r\nTransfer-Encoding: chunked"
                     b"\r\n\r\n5\r\nhello\r\n0\r\n" + trailer + b"\r\n")
    assert out.startswith(b"HTTP/1.1 200 "), out[:80]


async def test_only_allowed_upgrades_are_relayed(tmp_path: Path, rec: Recorder) -> None:
    req = b"GET /u HTTP/1.1\r\nHost: web.test\r\nConnection: Upgrade\r\nUpgrade: %s\r\n\r\n"
    async with proxy_for(tmp_path, rec.port) as p:
        seen = rec.requests[recorded(await send(p, req % b"h2c"))[0]]
        assert seen.all("upgrade") == [] and "upgrade" not in (seen.one("connection") or "")
        seen = rec.requests[recorded(await send(p, req % b"h2c, websocket"))[0]]
        assert seen.all("upgrade") == ["websocket"]
    async with proxy_for(tmp_path, rec.port, allowed_upgrades=frozenset({b"h2c"})) as p:
        seen = rec.requests[recorded(await send(p, req % b"h2c"))[0]]
        assert seen.all("upgrade") == ["h2c"]
        seen = rec.requests[recorded(await send(p, req % b"websocket"))[0]]
        assert seen.all("upgrade") == []


# -- 4. Bounded metrics -----------------------------------------------------------------------

def _request_lines(text: str) -> list[str]:
    return sorted(line.rsplit(" ", 1)[0] for line in text.splitlines()
                  if line.startswith("certop_requests_total{"))


def _get(port: int, path: str) -> str:
    return talk(port, f"GET {path} HTTP/1.1\r\nHost: admin\r\n\r\n".encode()).decode()


async def test_random_hosts_do_not_grow_the_metrics(proxy: Proxy) -> None:
    admin = Admin(proxy, lambda: True)
    admin_port = await admin.start("127.0.0.1", 0)
    rng = random.Random(8)

    def burst(n: int) -> None:
        req = b"GET / HTTP/1.1\r\nHost: %s\r\n\r\n"
        hosts = [b"web.test", b"%d.wild.test" % rng.randrange(10**9),
                 b"h%d.example" % rng.randrange(10**9)]
        with socket.create_connection(("127.0.0.1", proxy.ports()[0]), timeout=10) as s:
            s.sendall(b"".join(req % rng.choice(hosts) for _ in range(n)))
            s.shutdown(socket.SHUT_WR)
            while s.recv(65536):
                pass

    try:
        await asyncio.to_thread(burst, 30)
        before = _request_lines(await asyncio.to_thread(_get, admin_port, "/metrics"))
        for _ in range(10):
            await asyncio.to_thread(burst, 100)
        after_text = await asyncio.to_thread(_get, admin_port, "/metrics")
    finally:
        await admin.close()
    assert _request_lines(after_text) == before
    assert before == ['certop_requests_total{host="*.wild.test",status="200"}',
                      'certop_requests_total{host="_unknown",status="404"}',
                      'certop_requests_total{host="web.test",status="200"}']


HSTS_INGRESS = """apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: web
  annotations: {{"certop.dev/hsts": "{value}"}}
spec:
  rules:
    - host: a.example.test
      http:
        paths:
          - {{path: /, pathType: Prefix, backend: {{service: {{name: web, port: {{number: 80}}}}}}}}
"""


@pytest.mark.parametrize("value", [
    pytest.param(r"max-age=1\r\nSet-Cookie: a=b", id="crlf-injection"),
    pytest.param(r"max-age=1\nX: y", id="lf"),
    pytest.param("max-age=abc", id="not-digits"),
    pytest.param("max-age=1; includeSubDomains; evil=1", id="unknown-directive"),
    pytest.param("max-age=1; preload; preload", id="twice"),
    pytest.param("max-age=1, max-age=2", id="comma"),
])
def test_a_bad_hsts_annotation_is_a_configuration_error(tmp_path: Path, value: str) -> None:
    path = tmp_path / "site.yaml"
    path.write_text(HSTS_INGRESS.format(value=value))
    result = subprocess.run(
        [sys.executable, "-m", "certop.cli", "standalone", "-f", str(path),
         "--state-dir", str(tmp_path / "state"), "--listen", "127.0.0.1", "--http-port", "0",
         "--https-port", "0", "--service", "web=127.0.0.1:9"],
        capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Ingress default/web: metadata.annotations[certop.dev/hsts]" in lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("flag", [
    pytest.param(["--trusted-proxies", "10.0.0.0/33"], id="trusted-proxies"),
    pytest.param(["--allowed-upgrades", "web socket"], id="allowed-upgrades"),
])
def test_bad_proxy_policy_flags_are_one_line_and_exit_2(tmp_path: Path,
                                                        flag: list[str]) -> None:
    path = tmp_path / "site.yaml"
    path.write_text(HSTS_INGRESS.format(value="true"))
    result = subprocess.run(
        [sys.executable, "-m", "certop.cli", "standalone", "-f", str(path),
         "--state-dir", str(tmp_path / "state"), "--listen", "127.0.0.1", "--http-port", "0",
         "--https-port", "0", "--service", "web=127.0.0.1:9", *flag],
        capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and flag[0] in lines[-1], result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "state").exists()
