"""The conformance scenarios of tests/proxy/test_conformance.py (kubernetes-sigs
ingress-controller-conformance and the spec's path table), driven through the API this time:
the same Ingresses created in the emulator (no ingressClassName: certop's IngressClass is the
default one), each backend a Service with a named port and an EndpointSlice pointing at a
loopback echo backend, served by `certop proxy`'s source as its ServiceAccount."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from cluster_proxy import ClusterProxy, create, endpoint_slice, ingress_class, service
from conformance_cases import DEFAULT_BACKEND, HOST_CASES, MANIFESTS, METHOD_CASES, SERVICES, Client
from echo import Echo
from kube import EmulatorThread
from spec_table import SPEC_TABLE

from certop.core.models import PathType

NS = "conformance"


@pytest.fixture(scope="module")
def echoes() -> Iterator[dict[str, Echo]]:
    with contextlib.ExitStack() as stack:
        yield {name: stack.enter_context(Echo(name)) for name in SERVICES}


@contextlib.contextmanager
def served(echoes: dict[str, Echo], ingresses: list[dict[str, Any]]) -> Iterator[Client]:
    """The Ingresses, every echo as a Service (port 8080 named http) with its EndpointSlice,
    certop's IngressClass the default; the proxy's plain-HTTP port."""
    with EmulatorThread() as kube:
        kube.core().create_namespace({"metadata": {"name": NS}})
        create(kube, NS, ingress_class("certop", default=True))
        for name, echo in echoes.items():
            create(kube, NS, service(name, (("http", 8080),)),
                   endpoint_slice(f"{name}-1", name, echo.port, ["127.0.0.1"]))
        create(kube, NS, *ingresses)
        with ClusterProxy(kube) as proxy:
            yield Client(proxy.http_port)


def documents(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


@pytest.fixture(scope="module")
def rules(echoes: dict[str, Echo]) -> Iterator[Client]:
    with served(echoes, documents(MANIFESTS)) as found:
        yield found


@pytest.fixture(scope="module")
def default_backend(echoes: dict[str, Echo]) -> Iterator[Client]:
    with served(echoes, documents(DEFAULT_BACKEND)) as found:
        yield found


@pytest.mark.parametrize(("host", "path", "expected"), [c[:3] for c in HOST_CASES],
                         ids=[c[3] for c in HOST_CASES])
def test_host_and_path_rules(rules: Client, host: str, path: str,
                             expected: str | None) -> None:
    status, seen, _ = rules.request(host, path)
    if expected is None:
        assert status == 404
    else:
        assert status == 200 and seen is not None
        assert seen["service"] == expected and seen["path"] == path
        headers = seen["headers"]
        assert isinstance(headers, dict) and headers["host"] == host


@pytest.mark.parametrize(("method", "host", "path"), METHOD_CASES)
def test_default_backend_serves_everything(default_backend: Client, method: str,
                                           host: str, path: str) -> None:
    status, seen, resp = default_backend.request(host, path, method)
    assert status == 200 and seen is not None
    assert seen["service"] == "echo-service" and seen["method"] == method
    assert seen["path"] == path
    assert resp.version == 11


NAMES = {"a": "foo-exact", "b": "foo-prefix", "c": "aaa-prefix"}


@pytest.fixture(scope="module")
def table(echoes: dict[str, Echo]) -> Iterator[Client]:
    """Every case of the spec's path table as one Ingress of its own host (table-N.test)."""
    ingresses = []
    for i, case in enumerate(SPEC_TABLE):
        rules_of: list[tuple[str, PathType, str]] = case.values[0]  # type: ignore[assignment]
        paths = [{"path": path, "pathType": kind.value, "backend": {"service": {
            "name": NAMES[name], "port": {"number": 8080}}}} for path, kind, name in rules_of]
        ingresses.append({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                          "metadata": {"name": f"table-{i}"},
                          "spec": {"rules": [{"host": f"table-{i}.test",
                                              "http": {"paths": paths}}]}})
    with served(echoes, ingresses) as found:
        yield found


@pytest.mark.parametrize("index", range(len(SPEC_TABLE)),
                         ids=[str(case.id) for case in SPEC_TABLE])
def test_the_spec_path_table_through_the_api(table: Client, index: int) -> None:
    _, request_path, expected = SPEC_TABLE[index].values
    status, seen, _ = table.request(f"table-{index}.test", str(request_path))
    if expected is None:
        assert status == 404
    else:
        assert status == 200 and seen is not None
        assert seen["service"] == NAMES[str(expected)], json.dumps(seen)
