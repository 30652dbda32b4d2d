"""`certop proxy` against what tenants can create (found by review, reproduced on the
emulator, fixed): no single object stops the proxy from taking new configuration or a new
replica from starting; a forged challenge answer is confined to its own host; the oldest
Ingress keeps its host's certificate; events are bounded; the status the proxy wrote is
restored when someone else clears it."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from typing import Any

import pytest
from cluster_proxy import (
    ClusterProxy,
    create,
    endpoint_slice,
    ingress,
    ingress_class,
    service,
    tls_secret,
)
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from echo import Echo
from kube import EmulatorThread, wait_for
from kubernetes import client
from test_proxy_source import _der, _served_certificate, lb_status, served_by

from certop import crypto
from certop.k8s.ingress_source import ClusterSource, EventPoster, SourceSettings
from certop.proxy.server import Proxy, ProxySettings
from certop.proxy.tls import CertBook
from solvers.http01 import TokenStore
from solvers.http01.ingress import temporary_ingress

VICTIM, TENANT = "shop", "aaa"


@pytest.fixture
def kube() -> Iterator[EmulatorThread]:
    with EmulatorThread() as emulator:
        for ns in (VICTIM, TENANT, "zzz"):
            emulator.core().create_namespace({"metadata": {"name": ns}})
        yield emulator


def victim_site(kube: EmulatorThread, port: int, tls: str | None = None) -> None:
    create(kube, VICTIM, ingress_class("certop"), service("web"),
           endpoint_slice("web-1", "web", port, ["127.0.0.1"]),
           ingress("web", "victim.test", tls_secret=tls))


def unknown_key_secret(name: str) -> dict[str, Any]:
    """A kubernetes.io/tls Secret whose certificate's key is of a type cryptography does not
    know (its OID changed): the API server accepts it."""
    cert, key = crypto.self_signed(("x.test",))
    der = x509.load_pem_x509_certificate(cert).public_bytes(serialization.Encoding.DER)
    der = der.replace(bytes.fromhex("06072a8648ce3d0201"), bytes.fromhex("06072a8648ce3d0209"),
                      1)
    pem = (b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(der)
           + b"-----END CERTIFICATE-----\n")
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
            "type": "kubernetes.io/tls",
            "data": {"tls.crt": base64.b64encode(pem).decode(),
                     "tls.key": base64.b64encode(key).decode()}}


def a_fresh_replica_starts(kube: EmulatorThread) -> bool:
    async def go() -> bool:
        proxy = Proxy(CertBook(), TokenStore(), ProxySettings())
        await proxy.start("127.0.0.1", 0, 0)
        source = ClusterSource(kube.proxy_client(), proxy, SourceSettings(settle=0.01),
                               events=lambda *event: None)
        try:
            await source.start(timeout=15)
            return source.ready()
        finally:
            source.stop()
            await proxy.close(grace=0.1)
    return asyncio.run(go())


def test_no_object_a_tenant_can_create_stops_the_proxy(kube: EmulatorThread) -> None:
    """An Ingress of another class with a 5000-digit body size, a TLS Secret nobody names
    whose key type is unknown, a forged solver Ingress whose token is not base64url: the
    proxy keeps taking changes (a new Ingress, a rotated certificate), stays ready, and a
    new replica starts."""
    with Echo("web") as web:
        first = tls_secret("web-tls", ("victim.test",))
        create(kube, VICTIM, first)
        victim_site(kube, web.port, tls="web-tls")
        create(kube, TENANT, ingress_class("nginx", "k8s.io/ingress-nginx"))
        with ClusterProxy(kube, SourceSettings(settle=0.01, grace=2.0)) as proxy:
            wait_for(lambda: _served_certificate(proxy.https_port, "victim.test")
                     == _der(first), what="the first certificate")
            create(kube, TENANT,
                   ingress("bomb", "bomb.test", klass="nginx", annotations={
                       "nginx.ingress.kubernetes.io/proxy-body-size": "1" * 5000}),
                   unknown_key_secret("junk"),
                   temporary_ingress(TENANT, "t.test", "x~y", "web", 80, "certop",
                                     key_authorization="x~y.z"))
            create(kube, VICTIM, ingress("new", "new.test"))
            proxy.wait_status("new.test", 200)
            second = tls_secret("web-tls", ("victim.test",))
            client.CoreV1Api(kube.api_client()).patch_namespaced_secret(
                "web-tls", VICTIM, {"data": second["data"]})
            wait_for(lambda: _served_certificate(proxy.https_port, "victim.test")
                     == _der(second), what="the rotated certificate")
            assert proxy.source is not None and proxy.source.ready()
            assert proxy.get("t.test", "/.well-known/acme-challenge/x~y")[1] != b"x~y.z"
        assert a_fresh_replica_starts(kube)


def test_a_challenge_answer_is_for_its_own_host_and_the_oldest_ingress_wins(
        kube: EmulatorThread) -> None:
    """A tenant's forged solver Ingress for attacker.test is never answered on victim.test
    (the victim's own route gets the request); two solver Ingresses for the same host and
    token: the older one's answer."""
    with Echo("web") as web:
        victim_site(kube, web.port)
        token = "T" * 43
        create(kube, TENANT, temporary_ingress(
            TENANT, "attacker.test", token, "nothing", 80, "certop",
            key_authorization=f"{token}.attacker"))
        real_token = "R" * 43
        create(kube, VICTIM, temporary_ingress(VICTIM, "victim.test", real_token,
                                               "certop-solver", 80, "certop",
                                               key_authorization=f"{real_token}.operator"))
        with ClusterProxy(kube) as proxy:
            path = f"/.well-known/acme-challenge/{real_token}"
            assert proxy.get("victim.test", path) == (200, f"{real_token}.operator".encode())
            status, body = proxy.get("victim.test", f"/.well-known/acme-challenge/{token}")
            assert (status, served_by(body)) == (200, "web")  # a route, not the forged answer
            before = proxy.rebuilds()
            fake = temporary_ingress("zzz", "victim.test", real_token, "x", 80, "certop",
                                     key_authorization=f"{real_token}.attacker")
            create(kube, "zzz", fake)
            wait_for(lambda: proxy.rebuilds() > before, what="the forged Ingress seen")
            assert proxy.get("victim.test", path) == (200, f"{real_token}.operator".encode())


def test_the_oldest_ingress_keeps_its_hosts_certificate(kube: EmulatorThread) -> None:
    """A newer Ingress in an earlier namespace naming the same host with its own Secret
    takes neither the routes nor the certificate (creationTimestamp, as standalone)."""
    import time

    with Echo("web") as web, Echo("evil") as evil:
        mine = tls_secret("web-tls", ("victim.test",))
        create(kube, VICTIM, mine)
        victim_site(kube, web.port, tls="web-tls")
        time.sleep(1.1)  # creationTimestamp has one-second resolution: a newer second
        theirs = tls_secret("evil-tls", ("victim.test",))
        create(kube, TENANT, theirs, service("evil"),
               endpoint_slice("evil-1", "evil", evil.port, ["127.0.0.1"]),
               ingress("evil", "victim.test", service="evil", tls_secret="evil-tls"))
        with ClusterProxy(kube) as proxy:
            assert _served_certificate(proxy.https_port, "victim.test") == _der(mine)
            assert proxy.proxy is not None
            route = proxy.proxy.routes.lookup("victim.test").match("/")
            assert route is not None and route.backend.namespace == VICTIM


def test_events_are_one_per_ingress_version_and_bounded(kube: EmulatorThread) -> None:
    """1000 paths to missing Services: one event naming the first five and the count;
    the poster keeps at most BURST events per object per window."""
    paths = [{"path": f"/p{i}", "pathType": "Prefix",
              "backend": {"service": {"name": f"missing-{i}", "port": {"number": 80}}}}
             for i in range(1000)]
    create(kube, TENANT, ingress_class("certop"), {
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "big"},
        "spec": {"ingressClassName": "certop",
                 "rules": [{"host": "big.test", "http": {"paths": paths}}]}})
    with ClusterProxy(kube) as proxy:
        wait_for(lambda: bool(proxy.events), what="the event")
        (event,) = [e for e in proxy.events if e[2] == "BackendNotFound"]
        assert event[3].endswith("; and 995 more")
    poster = EventPoster(kube.proxy_client())
    involved = {"apiVersion": "v1", "kind": "Secret",
                "metadata": {"namespace": TENANT, "name": "s", "uid": "u"}}
    for i in range(EventPoster.BURST + 5):
        poster(involved, "Warning", "InvalidSecret", f"message {i}")
    assert poster.dropped == 5
    wait_for(lambda: len(client.CoreV1Api(kube.api_client()).list_namespaced_event(
        TENANT).items) == EventPoster.BURST, what="the events posted")


def test_the_status_this_proxy_wrote_is_restored_when_someone_clears_it(
        kube: EmulatorThread) -> None:
    with Echo("web") as web:
        victim_site(kube, web.port)
        net = client.NetworkingV1Api(kube.api_client())
        with ClusterProxy(kube, publish="127.0.0.1"):
            for _ in range(2):
                wait_for(lambda: lb_status(kube, "web", VICTIM) == [{"ip": "127.0.0.1"}],
                         what="the status written")
                net.patch_namespaced_ingress_status("web", VICTIM, {"status": {
                    "loadBalancer": {"ingress": None}}})
