"""TLS termination: SNI, certificates the user brings, default certificate, swaps in place,
last-known-good, protocol versions and ALPN."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import LoopbackHTTPS, https_request
from cryptography import x509
from echo import Echo
from manifest_yaml import ingress_yaml
from proxy_helpers import client_context, self_signed_files, serving

from certop import crypto
from certop.store.ports import StoredCert


def ingress(hosts: list[tuple[str, str]]) -> str:
    docs = [ingress_yaml(f"i{i}", host, secret=secret) for i, (host, secret) in enumerate(hosts)]
    return "---\n".join(docs)


@pytest.fixture(scope="module")
def echo() -> Iterator[Echo]:
    with Echo("web") as e:
        yield e


def peer_names(port: int, sni: str | None, ctx: ssl.SSLContext | None = None) -> set[str]:
    ctx = ctx or client_context()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname=sni) as tls:
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        return set(crypto.sans_of(x509.load_der_x509_certificate(der)))


async def test_sni_picks_the_certificate_the_user_brought(tmp_path: Path, echo: Echo) -> None:
    a = self_signed_files(tmp_path, "a", ("a.test",))
    b = self_signed_files(tmp_path, "b", ("b.test",))
    async with serving(tmp_path, ingress([("a.test", "a-tls"), ("b.test", "b-tls")]),
                       [f"web=127.0.0.1:{echo.port}"],
                       [f"a-tls={a[0]},{a[1]}", f"default/b-tls={b[0]},{b[1]}"]) as s:
        assert await asyncio.to_thread(peer_names, s.https_port, "a.test") == {"a.test"}
        assert await asyncio.to_thread(peer_names, s.https_port, "B.TEST") == {"b.test"}
        # Verified end to end against the brought certificate as the trust anchor.
        status, _ = await asyncio.to_thread(https_request, s.https_port, "a.test",
                                            a[0].read_text())
        assert status == 200
        # No ACME order for brought certificates.
        assert s.runner.stats.orders == 0


async def test_unknown_sni_gets_the_default_certificate(tmp_path: Path, echo: Echo) -> None:
    a = self_signed_files(tmp_path, "a", ("a.test",))
    manifests = ingress([("a.test", "a-tls")])
    async with serving(tmp_path, manifests, [f"web=127.0.0.1:{echo.port}"],
                       [f"a-tls={a[0]},{a[1]}"]) as s:
        assert await asyncio.to_thread(peer_names, s.https_port, "other.test") == \
            {"certop.invalid"}
        assert await asyncio.to_thread(peer_names, s.https_port, None) == {"certop.invalid"}
    default = StoredCert(*crypto.self_signed(("fallback.test",)))
    async with serving(tmp_path, manifests, [f"web=127.0.0.1:{echo.port}"],
                       [f"a-tls={a[0]},{a[1]}"], default=default) as s:
        assert await asyncio.to_thread(peer_names, s.https_port, "other.test") == \
            {"fallback.test"}


async def test_tls_secrets_in_the_manifests_are_served(tmp_path: Path, echo: Echo) -> None:
    import base64

    cert, key = crypto.self_signed(("s.test",))
    secret = f"""---
apiVersion: v1
kind: Secret
type: kubernetes.io/tls
metadata: {{name: s-tls, namespace: default}}
data:
  tls.crt: {base64.b64encode(cert).decode()}
  tls.key: {base64.b64encode(key).decode()}
"""
    async with serving(tmp_path, ingress([("s.test", "s-tls")]) + secret,
                       [f"web=127.0.0.1:{echo.port}"]) as s:
        assert await asyncio.to_thread(peer_names, s.https_port, "s.test") == {"s.test"}


def _touch_later(*paths: Path) -> None:
    later = time.time() + 5
    for p in paths:
        os.utime(p, (later, later))


async def test_a_renewed_file_swaps_in_place_and_a_broken_one_keeps_the_last_good(
        tmp_path: Path, echo: Echo) -> None:
    a = self_signed_files(tmp_path, "a", ("a.test",))
    b = self_signed_files(tmp_path, "b", ("b.test",))
    first_pem = a[0].read_text()
    async with serving(tmp_path, ingress([("a.test", "a-tls"), ("b.test", "b-tls")]),
                       [f"web=127.0.0.1:{echo.port}"],
                       [f"a-tls={a[0]},{a[1]}", f"b-tls={b[0]},{b[1]}"]) as s:
        old = LoopbackHTTPS("a.test", s.https_port, first_pem)
        assert (await asyncio.to_thread(old.get))[0] == 200
        first_serial = old.peer_serial()
        # Renewed: same host, new certificate. New connections get it, the open one lives on.
        cert, key = crypto.self_signed(("a.test",))
        a[0].write_bytes(cert)
        a[1].write_bytes(key)
        _touch_later(*a)
        key_a = ("default", "a-tls")
        await s.runner.wait_until(
            lambda: (p := s.proxy.certs.pair(key_a)) is not None and p.fullchain_pem == cert,
            timeout=10)
        assert await asyncio.to_thread(_serial_served, s.https_port) != first_serial
        assert (await asyncio.to_thread(old.get))[0] == 200
        assert old.peer_serial() == first_serial
        old.close()
        # Broken: the last good certificate stays for a.test, b.test is untouched.
        serial = await asyncio.to_thread(_serial_served, s.https_port)
        a[0].write_text("not a certificate")
        _touch_later(*a)
        await s.runner.wait_until(
            lambda: any("keeping the last good" in w for w in _warnings(s)), timeout=10)
        assert await asyncio.to_thread(_serial_served, s.https_port) == serial
        assert await asyncio.to_thread(peer_names, s.https_port, "b.test") == {"b.test"}


def _warnings(s: object) -> tuple[str, ...]:
    config = s.runner.config  # type: ignore[attr-defined]
    return config.warnings if config else ()


def _serial_served(port: int) -> int:
    ctx = client_context()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname="a.test") as tls:
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der).serial_number


async def test_only_tls_1_2_and_later_with_alpn_http_1_1(tmp_path: Path, echo: Echo) -> None:
    a = self_signed_files(tmp_path, "a", ("a.test",))
    async with serving(tmp_path, ingress([("a.test", "a-tls")]), [f"web=127.0.0.1:{echo.port}"],
                       [f"a-tls={a[0]},{a[1]}"]) as s:
        def handshake(maximum: ssl.TLSVersion) -> tuple[str | None, str | None]:
            ctx = client_context()
            ctx.set_alpn_protocols(["h2", "http/1.1"])
            ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
            ctx.maximum_version = maximum
            with socket.create_connection(("127.0.0.1", s.https_port), timeout=5) as raw, \
                    ctx.wrap_socket(raw, server_hostname="a.test") as tls:
                return tls.version(), tls.selected_alpn_protocol()

        assert await asyncio.to_thread(handshake, ssl.TLSVersion.TLSv1_3) == ("TLSv1.3",
                                                                                "http/1.1")
        assert (await asyncio.to_thread(handshake, ssl.TLSVersion.TLSv1_2))[0] == "TLSv1.2"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # the client side's TLS 1.1
            with pytest.raises(ssl.SSLError):
                await asyncio.to_thread(handshake, ssl.TLSVersion.TLSv1_1)
        assert s.proxy.certs.server_context.minimum_version is ssl.TLSVersion.TLSv1_2
