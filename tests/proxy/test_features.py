"""Per-Ingress behaviour from annotations (ingress-nginx keys honoured as written), load
balancing across endpoints, and the admin endpoints."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pebblectl
import pytest
from echo import Echo
from manifest_yaml import ingress_yaml as ingress
from proxy_helpers import client_context, self_signed_files, serving

from certop.proxy.admin import Admin
from certop.proxy.server import ProxySettings


@pytest.fixture(scope="module")
def echoes() -> Iterator[list[Echo]]:
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(Echo(f"web-{i}")) for i in range(3)]


def request(port: int, host: str, path: str = "/", *, tls: bool = False, method: str = "GET",
            body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    conn: http.client.HTTPConnection
    if tls:
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=5,
                                           context=client_context())
    else:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path, body=body, headers={"Host": host})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def certs_for(tmp: Path, *names_hosts: tuple[str, str]) -> list[str]:
    flags = []
    for name, host in names_hosts:
        cert, key = self_signed_files(tmp, name, (host,))
        flags.append(f"{name}-tls={cert},{key}")
    return flags


async def test_hsts_by_annotation_by_flag_and_never_over_http(tmp_path: Path,
                                                              echoes: list[Echo]) -> None:
    manifests = "---\n".join([
        ingress("a", "a.test", {"certop.dev/hsts": "max-age=60"}),
        ingress("b", "b.test", {"nginx.ingress.kubernetes.io/hsts-max-age": "120",
                                "nginx.ingress.kubernetes.io/hsts-preload": "true"}),
        ingress("c", "c.test", {"certop.dev/hsts": "false"}),
        ingress("d", "d.test"),
    ])
    certs = certs_for(tmp_path, ("a", "a.test"), ("b", "b.test"), ("c", "c.test"),
                      ("d", "d.test"))
    async with serving(tmp_path, manifests, [f"web=127.0.0.1:{echoes[0].port}"], certs,
                       hsts=True) as s:
        async def hsts(host: str, tls: bool = True) -> str | None:
            _, headers, _ = await asyncio.to_thread(
                request, s.https_port if tls else s.http_port, host, tls=tls)
            return headers.get("strict-transport-security")

        assert await hsts("a.test") == "max-age=60"
        assert await hsts("b.test") == "max-age=120; includeSubDomains; preload"
        assert await hsts("c.test") is None
        assert await hsts("d.test") == "max-age=31536000; includeSubDomains"  # --hsts
    async with serving(tmp_path, manifests, [f"web=127.0.0.1:{echoes[0].port}"], certs) as s:
        _, headers, _ = await asyncio.to_thread(request, s.https_port, "d.test", tls=True)
        assert "strict-transport-security" not in headers  # off by default


async def test_redirect_annotations(tmp_path: Path, echoes: list[Echo]) -> None:
    manifests = "---\n".join([
        ingress("tls", "tls.test"),
        ingress("noredirect", "off.test", {"nginx.ingress.kubernetes.io/ssl-redirect": "false"}),
        ingress("force", "force.test", {"nginx.ingress.kubernetes.io/force-ssl-redirect":
                                        "true"}, tls=False),
        ingress("plain", "plain.test", tls=False),
    ])
    certs = certs_for(tmp_path, ("tls", "tls.test"), ("noredirect", "off.test"))
    async with serving(tmp_path, manifests, [f"web=127.0.0.1:{echoes[0].port}"], certs) as s:
        async def status(host: str, path: str = "/x?y=1") -> tuple[int, str | None]:
            code, headers, _ = await asyncio.to_thread(request, s.http_port, host, path)
            return code, headers.get("location")

        assert await status("tls.test") == (308, f"https://tls.test:{s.https_port}/x?y=1")
        assert await status("off.test") == (200, None)
        assert (await status("force.test"))[0] == 308
        assert await status("plain.test") == (200, None)
        # The challenge path is never redirected (it is routed when certop holds no token).
        assert (await status("tls.test", "/.well-known/acme-challenge/x"))[0] == 200


@pytest.mark.parametrize(("public", "location"), [
    (443, "https://tls.test/x?y=1"),  # a Service or a published port maps 443 to --https-port
    (8443, "https://tls.test:8443/x?y=1"),
])
async def test_redirects_name_the_public_https_port(tmp_path: Path, echoes: list[Echo],
                                                    public: int, location: str) -> None:
    certs = certs_for(tmp_path, ("tls", "tls.test"))
    async with serving(tmp_path, ingress("tls", "tls.test"), [f"web=127.0.0.1:{echoes[0].port}"],
                       certs, proxy_settings=ProxySettings(public_https_port=public)) as s:
        code, headers, _ = await asyncio.to_thread(request, s.http_port, "tls.test", "/x?y=1")
        assert (code, headers.get("location")) == (308, location)


async def test_a_token_certop_holds_cannot_be_shadowed_by_a_route(tmp_path: Path,
                                                                  echoes: list[Echo]) -> None:
    async with serving(tmp_path, ingress("plain", "plain.test", tls=False),
                       [f"web=127.0.0.1:{echoes[0].port}"]) as s:
        s.proxy.tokens.put("tok_en-1", "tok_en-1.thumbprint")
        code, _, body = await asyncio.to_thread(
            request, s.http_port, "plain.test", "/.well-known/acme-challenge/tok_en-1")
        assert (code, body) == (200, b"tok_en-1.thumbprint")


async def test_proxy_body_size_per_ingress_and_global(tmp_path: Path,
                                                      echoes: list[Echo]) -> None:
    manifests = "---\n".join([
        ingress("small", "small.test", {"nginx.ingress.kubernetes.io/proxy-body-size": "1k"},
                tls=False),
        ingress("big", "big.test", {"nginx.ingress.kubernetes.io/proxy-body-size": "0"},
                tls=False),
        ingress("dflt", "dflt.test", tls=False),
    ])
    async with serving(tmp_path, manifests, [f"web=127.0.0.1:{echoes[0].port}"],
                       proxy_settings=ProxySettings(body_limit=10_000)) as s:
        async def post(host: str, size: int) -> int:
            code, _, _ = await asyncio.to_thread(request, s.http_port, host, method="POST",
                                                 body=b"x" * size)
            return code

        assert await post("small.test", 1024) == 200
        assert await post("small.test", 1025) == 413
        assert await post("big.test", 50_000) == 200
        assert await post("dflt.test", 10_000) == 200
        assert await post("dflt.test", 10_001) == 413


async def test_requests_are_balanced_across_endpoints_and_a_dead_one_is_skipped(
        tmp_path: Path, echoes: list[Echo]) -> None:
    dead = pebblectl.free_port()  # nothing listens there
    services = [f"web=127.0.0.1:{e.port}" for e in echoes] + [f"web=127.0.0.1:{dead}"]
    async with serving(tmp_path, ingress("lb", "lb.test", tls=False), services) as s:
        def many(port: int) -> list[str]:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            seen = []
            try:
                for _ in range(30):  # one keep-alive client connection
                    conn.request("GET", "/", headers={"Host": "lb.test"})
                    resp = conn.getresponse()
                    assert resp.status == 200
                    seen.append(json.loads(resp.read())["service"])
            finally:
                conn.close()
            return seen

        seen = await asyncio.to_thread(many, s.http_port)
        assert set(seen) == {"web-0", "web-1", "web-2"}
        assert max(seen.count(n) for n in set(seen)) - min(seen.count(n) for n in set(seen)) \
            <= 2


async def test_admin_endpoints_and_access_log(tmp_path: Path, echoes: list[Echo],
                                              caplog: pytest.LogCaptureFixture) -> None:
    certs = certs_for(tmp_path, ("m", "m.test"))
    async with serving(tmp_path, ingress("m", "m.test"), [f"web=127.0.0.1:{echoes[0].port}"],
                       certs, proxy_settings=ProxySettings(access_log=True)) as s:
        admin = Admin(s.proxy, lambda: s.runner.config is not None)
        port = await admin.start("127.0.0.1", 0)
        try:
            with caplog.at_level(logging.INFO, logger="certop.access"):
                assert (await asyncio.to_thread(request, s.https_port, "m.test", "/a",
                                                tls=True))[0] == 200
            assert (await asyncio.to_thread(request, s.http_port, "random.example", "/"))[0] \
                == 404
            assert (await asyncio.to_thread(request, port, "admin", "/healthz"))[0] == 200
            assert (await asyncio.to_thread(request, port, "admin", "/readyz"))[0] == 200
            code, headers, body = await asyncio.to_thread(request, port, "admin", "/metrics")
            text = body.decode()
            assert code == 200 and headers["content-type"].startswith("text/plain")
            assert 'certop_requests_total{host="m.test",status="200"} 1' in text
            assert 'certop_requests_total{host="_unknown",status="404"} 1' in text  # bounded
            assert "random.example" not in text
            assert "certop_upstream_response_seconds_count 1" in text
            assert "certop_tls_handshakes_total 1" in text
            assert 'certop_certificate_expiry_timestamp_seconds{namespace="default",' \
                   'secret="m-tls"}' in text
        finally:
            await admin.close()
        assert any('"GET /a" 200' in r.getMessage() for r in caplog.records)
