"""`certop proxy`'s source against the emulator: Ingresses, Services, EndpointSlices,
IngressClasses and TLS Secrets created through the API reach the data path (requests through
the real proxy to loopback echo backends), as the proxy's ServiceAccount under
manifests/base/rbac-proxy.yaml."""

from __future__ import annotations

import json
import socket
import ssl
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
from echo import Echo
from kube import EmulatorThread, wait_for
from kubernetes import client

NS = "shop"


@pytest.fixture
def kube() -> Iterator[EmulatorThread]:
    with EmulatorThread() as emulator:
        emulator.core().create_namespace({"metadata": {"name": NS}})
        yield emulator


def served_by(body: bytes) -> str:
    return str(json.loads(body)["service"])


def test_an_ingress_reaches_its_backend_through_service_and_endpointslice(
        kube: EmulatorThread) -> None:
    """The Ingress names the Service port by name; the Service's targetPort is a name too;
    only the EndpointSlice knows the number. Objects created after the proxy started are
    served as they appear (the Service last)."""
    with Echo("web") as web:
        create(kube, NS, ingress_class("certop"))
        with ClusterProxy(kube) as proxy:
            create(kube, NS, ingress("web", "a.example.test"))
            proxy.wait_status("a.example.test", 503)  # routed, no endpoints yet
            create(kube, NS, endpoint_slice("web-1", "web", web.port, ["127.0.0.1"]))
            create(kube, NS, service("web"))
            assert served_by(proxy.wait_status("a.example.test", 200)) == "web"
            status, _ = proxy.get("other.example.test")
            assert status == 404


def test_ready_endpoints_share_the_load_and_not_ready_ones_get_nothing(
        kube: EmulatorThread) -> None:
    """10 ready endpoints, 100 requests: all 10 answer; 3 not ready (one of them serving
    and terminating) never do while ready ones exist."""
    echoes = [Echo(f"ready-{i}") for i in range(10)]
    idle = [Echo(f"idle-{i}") for i in range(3)]
    for echo in echoes + idle:
        echo.__enter__()
    try:
        create(kube, NS, ingress_class("certop"), service("web"),
               ingress("web", "lb.example.test"))
        for i, echo in enumerate(echoes):
            create(kube, NS, endpoint_slice(f"web-{i}", "web", echo.port, ["127.0.0.1"]))
        for i, echo in enumerate(idle):
            create(kube, NS, endpoint_slice(f"idle-{i}", "web", echo.port, ["127.0.0.1"],
                                            ready=[False], terminating=[i == 0]))
        with ClusterProxy(kube) as proxy:
            seen = [served_by(proxy.wait_status("lb.example.test", 200)) for _ in range(100)]
        assert set(seen) == {e.name for e in echoes}, sorted(set(seen))
        assert all(not e.requests for e in idle)
    finally:
        for echo in echoes + idle:
            echo.__exit__(None, None, None)


def test_only_ingresses_of_this_controllers_classes_are_served(kube: EmulatorThread) -> None:
    """Field: a class of this controller only; a class of another controller or one that
    does not exist: never. No field: the deprecated annotation compared with the class name,
    else the default class rule (which follows the IngressClass as it changes)."""
    with Echo("web") as web:
        create(kube, NS, ingress_class("certop"), ingress_class("other", "example.com/other"),
               service("web"), endpoint_slice("web-1", "web", web.port, ["127.0.0.1"]),
               ingress("ours", "ours.test"),
               ingress("theirs", "theirs.test", klass="other"),
               ingress("missing", "missing.test", klass="nope"),
               ingress("annotated", "annotated.test", klass=None,
                       annotations={"kubernetes.io/ingress.class": "certop"}),
               ingress("annotated-other", "annotated-other.test", klass=None,
                       annotations={"kubernetes.io/ingress.class": "nginx"}),
               ingress("classless", "classless.test", klass=None))
        with ClusterProxy(kube) as proxy:
            assert proxy.get("ours.test")[0] == 200
            assert proxy.get("annotated.test")[0] == 200
            for host in ("theirs.test", "missing.test", "annotated-other.test",
                         "classless.test"):
                assert proxy.get(host)[0] == 404, host
            # certop's class becomes the default: the Ingress without a class is served.
            net = client.NetworkingV1Api(kube.api_client())
            net.patch_ingress_class("certop", {"metadata": {"annotations": {
                "ingressclass.kubernetes.io/is-default-class": "true"}}})
            proxy.wait_status("classless.test", 200)
            assert proxy.get("theirs.test")[0] == 404


def _served_certificate(port: int, host: str) -> bytes:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname=host) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def _der(secret: dict[str, Any]) -> bytes:
    import base64

    return ssl.PEM_cert_to_DER_cert(base64.b64decode(secret["data"]["tls.crt"]).decode()
                                    .split("-----END CERTIFICATE-----")[0]
                                    + "-----END CERTIFICATE-----\n")


def test_tls_secrets_are_served_rotated_live_and_a_broken_one_keeps_the_last_good(
        kube: EmulatorThread) -> None:
    with Echo("web") as web:
        first = tls_secret("site-tls", ("s.example.test",))
        create(kube, NS, ingress_class("certop"), service("web"),
               endpoint_slice("web-1", "web", web.port, ["127.0.0.1"]),
               ingress("site", "s.example.test", tls_secret="site-tls"))
        with ClusterProxy(kube) as proxy:
            create(kube, NS, first)  # after the Ingress: picked up when it appears
            wait_for(lambda: _served_certificate(proxy.https_port, "s.example.test")
                     == _der(first), what="the Secret's certificate served")
            core = client.CoreV1Api(kube.api_client())
            second = tls_secret("site-tls", ("s.example.test",))
            core.patch_namespaced_secret("site-tls", NS, {"data": second["data"]})
            wait_for(lambda: _served_certificate(proxy.https_port, "s.example.test")
                     == _der(second), what="the rotated certificate served")
            core.patch_namespaced_secret("site-tls", NS, {"data": {
                "tls.crt": second["data"]["tls.crt"], "tls.key": first["data"]["tls.key"]}})
            wait_for(lambda: any(e[2] == "InvalidSecret" for e in proxy.events),
                     what="an event about the broken Secret")
            event = next(e for e in proxy.events if e[2] == "InvalidSecret")
            assert event[0]["metadata"]["name"] == "site-tls"
            assert "keeping the last good certificate" in event[3]
            assert _served_certificate(proxy.https_port, "s.example.test") == _der(second)


def test_a_bad_ingress_is_skipped_with_an_event_naming_the_field_and_others_served(
        kube: EmulatorThread) -> None:
    with Echo("web") as web:
        bad = ingress("bad", "bad.example.test")
        bad["spec"]["rules"][0]["http"]["paths"][0]["pathType"] = "Sometimes"
        create(kube, NS, ingress_class("certop"), service("web"),
               endpoint_slice("web-1", "web", web.port, ["127.0.0.1"]),
               ingress("good", "good.example.test"), bad,
               ingress("no-port", "no-port.example.test", port="grpc"))
        with ClusterProxy(kube) as proxy:
            assert proxy.get("good.example.test")[0] == 200
            assert proxy.get("bad.example.test")[0] == 404
            assert proxy.get("no-port.example.test")[0] == 503
            wait_for(lambda: {e[2] for e in proxy.events} >= {"InvalidIngress",
                                                              "BackendNotFound"},
                     what="events about both Ingresses")
            invalid = next(e for e in proxy.events if e[2] == "InvalidIngress")
            assert invalid[0]["metadata"]["name"] == "bad"
            assert "spec.rules[0].http.paths[0].pathType" in invalid[3]
            missing = next(e for e in proxy.events if e[2] == "BackendNotFound")
            assert missing[0]["metadata"]["name"] == "no-port"
            assert missing[3] == f"Service {NS}/web has no port 'grpc'"


def test_endpoint_and_port_changes_reach_the_data_path(kube: EmulatorThread) -> None:
    """An endpoint removed is never asked again once the change settled; a Service port
    renamed (and its slice) keeps the Ingress that names the new name served."""
    with Echo("one") as one, Echo("two") as two:
        create(kube, NS, ingress_class("certop"), service("web"),
               endpoint_slice("web-1", "web", one.port, ["127.0.0.1"]),
               ingress("web", "c.example.test"))
        with ClusterProxy(kube) as proxy:
            assert served_by(proxy.wait_status("c.example.test", 200)) == "one"
            discovery = client.DiscoveryV1Api(kube.api_client())
            discovery.patch_namespaced_endpoint_slice(
                "web-1", NS, endpoint_slice("web-1", "web", two.port, ["127.0.0.1"]))
            wait_for(lambda: served_by(proxy.get("c.example.test")[1]) == "two",
                     what="the new endpoint")
            before = len(one.requests)
            assert {served_by(proxy.get("c.example.test")[1]) for _ in range(20)} == {"two"}
            assert len(one.requests) == before
            # The port renamed: the slice and the Ingress follow.
            core = client.CoreV1Api(kube.api_client())
            core.patch_namespaced_service("web", NS, service("web", (("web", 80),)))
            discovery.patch_namespaced_endpoint_slice(
                "web-1", NS, endpoint_slice("web-1", "web", two.port, ["127.0.0.1"],
                                            port_name="web"))
            proxy.wait_status("c.example.test", 503)  # the Ingress still names "http"
            net = client.NetworkingV1Api(kube.api_client())
            net.patch_namespaced_ingress("web", NS, ingress("web", "c.example.test",
                                                              port="web"))
            assert served_by(proxy.wait_status("c.example.test", 200)) == "two"


def test_an_external_name_service_and_a_default_backend(kube: EmulatorThread) -> None:
    with Echo("external") as external, Echo("fallback") as fallback:
        default = ingress("default", "unused.test")
        default["spec"] = {"ingressClassName": "certop", "defaultBackend": {
            "service": {"name": "fallback", "port": {"number": 80}}}}
        create(kube, NS, ingress_class("certop"),
               service("ext", (("http", external.port),), external_name="localhost"),
               ingress("ext", "ext.example.test", service="ext", port=external.port),
               service("fallback"), endpoint_slice("fallback-1", "fallback", fallback.port,
                                                   ["127.0.0.1"]),
               default)
        with ClusterProxy(kube) as proxy:
            assert served_by(proxy.wait_status("ext.example.test", 200)) == "external"
            assert served_by(proxy.wait_status("anything.example.test", 200)) == "fallback"


def lb_status(kube: EmulatorThread, name: str) -> list[dict[str, Any]]:
    found = client.NetworkingV1Api(kube.api_client()).read_namespaced_ingress(name, NS)
    balancer = found.status.load_balancer if found.status else None
    return [{k: v for k, v in (("ip", i.ip), ("hostname", i.hostname)) if v}
            for i in (balancer.ingress or [])] if balancer else []


def test_the_lease_holder_writes_the_address_into_served_ingresses_only(
        kube: EmulatorThread) -> None:
    """status.loadBalancer.ingress: set on the Ingresses this proxy serves, never on
    another controller's, and removed when an Ingress moves to another class; two replicas,
    one writer (the Lease holder)."""
    with Echo("web") as web:
        create(kube, NS, ingress_class("certop"), ingress_class("other", "example.com/x"),
               service("web"), endpoint_slice("web-1", "web", web.port, ["127.0.0.1"]),
               ingress("ours", "ours.test"), ingress("theirs", "theirs.test", klass="other"))
        with ClusterProxy(kube, publish="127.0.0.1") as one, \
                ClusterProxy(kube, publish="127.0.0.1") as two:
            wait_for(lambda: lb_status(kube, "ours") == [{"ip": "127.0.0.1"}],
                     what="the served Ingress's status")
            assert lb_status(kube, "theirs") == []
            net = client.NetworkingV1Api(kube.api_client())
            net.patch_namespaced_ingress("ours", NS, {"spec": {"ingressClassName": "other"}})
            wait_for(lambda: lb_status(kube, "ours") == [], what="the status removed")
            assert one.get("ours.test")[0] == 404
            assert one.writer is not None and two.writer is not None
            assert sorted((one.writer.writes, two.writer.writes)) == [0, 2]


def test_the_operators_temporary_ingress_is_answered_by_every_replica_itself(
        kube: EmulatorThread) -> None:
    """The temporary HTTP-01 Ingress carries its key authorization: a proxy replica that
    holds no token of its own answers it before any route (the user's `/` Prefix route and
    the responder Service behind the temporary Ingress are not asked), and stops when the
    Ingress is gone. An Ingress without certop's label is never taken for one."""
    from solvers.http01.ingress import temporary_ingress

    with Echo("web") as web:
        token = "tok-" + "a" * 40
        body = temporary_ingress(NS, "h.example.test", token, "certop-solver", 80, "certop",
                                 key_authorization=f"{token}.thumbprint")
        forged = temporary_ingress(NS, "h.example.test", "forged", "web", 80, "certop",
                                   key_authorization="forged.thumbprint")
        forged["metadata"]["labels"] = {}
        forged["metadata"]["name"] = "forged"
        create(kube, NS, ingress_class("certop"), service("web"),
               endpoint_slice("web-1", "web", web.port, ["127.0.0.1"]),
               ingress("site", "h.example.test"), body, forged)
        with ClusterProxy(kube) as proxy:
            path = f"/.well-known/acme-challenge/{token}"
            assert proxy.get("h.example.test", path) == (200, f"{token}.thumbprint".encode())
            assert not web.requests
            # Without certop's label: an ordinary route to its backend, never a token answer.
            status, answer = proxy.get("h.example.test", "/.well-known/acme-challenge/forged")
            assert (status, served_by(answer)) == (200, "web")
            client.NetworkingV1Api(kube.api_client()).delete_namespaced_ingress(
                body["metadata"]["name"], NS)
            wait_for(lambda: proxy.get("h.example.test", path)[1] != f"{token}.thumbprint"
                     .encode(), what="the token no longer answered")
