"""The serving snapshot (core/serving.py): one immutable value a source hands the proxy."""

from __future__ import annotations

import dataclasses

import pytest

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


def ing(name: str, host: str, backend: str, secret: str | None = None,
        default: str | None = None, namespace: str = "ns") -> Ingress:
    return Ingress(
        ref=ObjectRef("Ingress", namespace, name),
        annotations={},
        ingress_class=None,
        rules=(IngressRule(host, (IngressPath("/", PathType.PREFIX,
                                              ServiceBackend(namespace, backend, 80)),)),),
        tls=(IngressTLS((host,), SecretName(secret)),) if secret else (),
        default_backend=ServiceBackend(namespace, default, 80) if default else None,
    )


def test_a_snapshot_holds_routes_sni_and_the_endpoints_of_every_backend_named() -> None:
    ingresses = [ing("a", "a.test", "web", secret="a-tls", default="fallback"),
                 ing("b", "b.test", "api", secret="b-tls", namespace="other")]
    endpoints = {"web": [("127.0.0.1", 8080), ("127.0.0.1", 8081)], "api": [("::1", 9000)]}
    snap = serving.build(ingresses, lambda b: endpoints.get(b.name, []), "max-age=60")
    route = snap.routes.match("a.test", "/x")
    assert route is not None and route.backend == ServiceBackend("ns", "web", 80)
    assert snap.routes.catch_all.hsts == b"max-age=60"
    assert dict(snap.sni) == {"a.test": ("ns", "a-tls"), "b.test": ("other", "b-tls")}
    assert dict(snap.endpoints) == {
        ServiceBackend("ns", "web", 80): (("127.0.0.1", 8080), ("127.0.0.1", 8081)),
        ServiceBackend("ns", "fallback", 80): (),
        ServiceBackend("other", "api", 80): (("::1", 9000),),
    }


def test_the_first_ingress_naming_an_sni_host_decides_its_secret() -> None:
    snap = serving.build([ing("a", "x.test", "web", secret="first"),
                          ing("b", "x.test", "web", secret="second")], lambda b: [])
    assert dict(snap.sni) == {"x.test": ("ns", "first")}


def test_a_snapshot_cannot_be_changed_after_it_is_built() -> None:
    pair = serving.KeyPair(b"CHAIN", b"SECRET-KEY")
    snap = serving.build([ing("a", "a.test", "web", secret="a-tls")], lambda b: [("::1", 1)],
                         certificates={("ns", "a-tls"): pair})
    with pytest.raises(dataclasses.FrozenInstanceError):
        snap.routes = serving.RouteTable.empty()  # type: ignore[misc]
    for mapping in (snap.sni, snap.endpoints, snap.certificates):
        with pytest.raises(TypeError):
            mapping[next(iter(mapping))] = None  # type: ignore[index]
    assert snap.certificates[("ns", "a-tls")] == pair
    assert b"SECRET-KEY" not in repr(snap).encode() and "SECRET-KEY" not in repr(pair)


def test_the_empty_snapshot_serves_nothing() -> None:
    snap = serving.Snapshot.empty()
    assert snap.routes.match("a.test", "/") is None
    assert not snap.sni and not snap.endpoints and not snap.certificates
