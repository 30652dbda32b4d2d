"""The kubernetes-sigs ingress-controller-conformance scenarios and the spec's path table,
through the real proxy on loopback with echo backends (../shared/notes/anchors.md section 4b)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from conformance_cases import (
    DEFAULT_BACKEND,
    HOST_CASES,
    MANIFESTS,
    METHOD_CASES,
    SERVICES,
    Client,
    backend,
)
from echo import Echo
from spec_table import SPEC_TABLE

from certop.core import serving
from certop.core.models import PathType
from certop.proxy.server import Proxy
from certop.proxy.tls import CertBook
from certop.standalone import loader
from certop.standalone.services import StaticBackends
from solvers.http01 import TokenStore


async def serve(tmp: Path, manifests: str, echoes: dict[str, Echo]) -> tuple[Proxy, int]:
    path = tmp / "ingresses.yaml"
    path.write_text(manifests)
    found = loader.load([path])
    flags = [f"{name}=127.0.0.1:{echo.port}" for name, echo in echoes.items()]
    backends = StaticBackends.from_flags(flags)
    backends.check(found.ingresses)
    proxy = Proxy(CertBook(), TokenStore())
    proxy.swap(serving.build(found.ingresses, backends.addresses))
    await proxy.start("127.0.0.1", 0, None)
    return proxy, proxy.ports()[0]


@pytest.fixture(scope="module")
def echoes() -> Iterator[dict[str, Echo]]:
    with contextlib.ExitStack() as stack:
        yield {name: stack.enter_context(Echo(name)) for name in SERVICES}


@pytest.fixture
async def rules(tmp_path: Path, echoes: dict[str, Echo]) -> AsyncIterator[Client]:
    proxy, port = await serve(tmp_path, MANIFESTS, echoes)
    yield Client(port)
    await proxy.close()


@pytest.fixture
async def default_backend(tmp_path: Path, echoes: dict[str, Echo]) -> AsyncIterator[Client]:
    proxy, port = await serve(tmp_path, DEFAULT_BACKEND, echoes)
    yield Client(port)
    await proxy.close()


@pytest.mark.parametrize(("host", "path", "expected"), [c[:3] for c in HOST_CASES],
                         ids=[c[3] for c in HOST_CASES])
async def test_host_and_path_rules(rules: Client, host: str, path: str,
                                   expected: str | None) -> None:
    status, seen, _ = await asyncio.to_thread(rules.request, host, path)
    if expected is None:
        assert status == 404
    else:
        assert status == 200 and seen is not None
        assert seen["service"] == expected
        assert seen["path"] == path
        headers = seen["headers"]
        assert isinstance(headers, dict) and headers["host"] == host


@pytest.mark.parametrize(("method", "host", "path"), METHOD_CASES)
async def test_default_backend_serves_everything(default_backend: Client, method: str,
                                                 host: str | None, path: str) -> None:
    status, seen, resp = await asyncio.to_thread(default_backend.request, host, path, method)
    assert status == 200 and seen is not None
    assert seen["service"] == "echo-service" and seen["method"] == method
    assert seen["path"] == path
    headers = seen["headers"]
    assert isinstance(headers, dict) and headers["user-agent"] == "Go-http-client/1.1"
    assert resp.version == 11
    for name in ("Content-Length", "Content-Type", "Date", "Server"):
        assert resp.getheader(name), name


@pytest.mark.parametrize(("rules", "request_path", "expected"), SPEC_TABLE)
async def test_the_spec_path_table_through_the_proxy(
        tmp_path: Path, echoes: dict[str, Echo], rules: list[tuple[str, PathType, str]],
        request_path: str, expected: str | None) -> None:
    names = {"a": "foo-exact", "b": "foo-prefix", "c": "aaa-prefix"}
    paths = "".join(f"\n          - {{path: '{path}', pathType: {kind.value}, "
                    f"{backend(names[name])}}}" for path, kind, name in rules)
    manifest = f"""apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {{name: table, namespace: conformance}}
spec:
  rules:
    - host: table.test
      http:
        paths:{paths}
"""
    proxy, port = await serve(tmp_path, manifest, echoes)
    try:
        status, seen, _ = await asyncio.to_thread(Client(port).request, "table.test",
                                                  request_path)
    finally:
        await proxy.close()
    if expected is None:
        assert status == 404
    else:
        assert status == 200 and seen is not None and seen["service"] == names[expected]
