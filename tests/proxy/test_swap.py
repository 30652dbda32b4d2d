"""`Proxy.swap(snapshot)`: the one way a source feeds the proxy (routes, endpoints, SNI map and
the certificates the source brings), seen from real clients on real sockets."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
from collections.abc import AsyncIterator, Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from echo import Echo

from certop import crypto
from certop.core import serving
from certop.core.models import (
    Ingress,
    IngressPath,
    IngressRule,
    IngressTLS,
    ObjectRef,
    PathType,
    SecretName,
    ServiceBackend,
)
from certop.proxy.server import Proxy
from certop.proxy.tls import CertBook
from solvers.http01 import TokenStore

WEB = ServiceBackend("ns", "web", 80)
INGRESS = Ingress(
    ref=ObjectRef("Ingress", "ns", "web"), annotations={}, ingress_class=None,
    rules=(IngressRule("web.test", (IngressPath("/", PathType.PREFIX, WEB),)),),
    tls=(IngressTLS(("web.test",), SecretName("web-tls")),), default_backend=None,
)


@pytest.fixture
def echo() -> Iterator[Echo]:
    with Echo("web") as e:
        yield e


@pytest.fixture
async def proxy() -> AsyncIterator[Proxy]:
    p = Proxy(CertBook(), TokenStore())
    await p.start("127.0.0.1", 0, 0)
    yield p
    await p.close(grace=1.0)


def get(port: int, host: str, tls: bool = True) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            (_client().wrap_socket(raw, server_hostname=host) if tls else raw) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: " + host.encode() + b"\r\nConnection: close\r\n\r\n")
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    head, _, body = out.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def _client() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def served_certificate(port: int, host: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            _client().wrap_socket(raw, server_hostname=host) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


async def test_a_swapped_snapshot_is_served_whole_and_replaced_whole(
        proxy: Proxy, echo: Echo) -> None:
    http_port = proxy.http_port
    status, _ = await asyncio.to_thread(get, http_port, "web.test", False)
    assert status == 404  # nothing swapped in yet: no routes

    chain, key = crypto.self_signed(("web.test",))
    proxy.swap(serving.build([INGRESS], lambda b: [("127.0.0.1", echo.port)],
                             certificates={("ns", "web-tls"): serving.KeyPair(chain, key)}))
    status, body = await asyncio.to_thread(get, proxy.https_port, "web.test")
    assert status == 200 and json.loads(body)["service"] == "web"
    brought = x509.load_pem_x509_certificate(chain).public_bytes(Encoding.DER)
    assert await asyncio.to_thread(served_certificate, proxy.https_port, "web.test") == brought

    proxy.swap(serving.build([INGRESS], lambda b: []))  # the Service lost its endpoints
    status, _ = await asyncio.to_thread(get, proxy.https_port, "web.test")
    assert status == 503

    proxy.swap(serving.Snapshot.empty())  # the Ingress is gone: its route and certificate too
    status, _ = await asyncio.to_thread(get, proxy.https_port, "web.test")
    assert status == 404
    assert await asyncio.to_thread(served_certificate, proxy.https_port, "web.test") != brought
