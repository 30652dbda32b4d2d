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

from certop.core.models import ServiceBackend

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


def test_an_external_name_service_only_when_allowed_and_a_default_backend(
        kube: EmulatorThread) -> None:
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
        from certop.k8s.ingress_source import SourceSettings

        # Not followed unless allowed (a tenant's ExternalName could point anywhere).
        with ClusterProxy(kube) as proxy:
            assert proxy.get("ext.example.test")[0] == 503
            assert served_by(proxy.wait_status("anything.example.test", 200)) == "fallback"
            wait_for(lambda: any(e[2] == "BackendNotFound" and "ExternalName" in e[3]
                                 for e in proxy.events), what="the refusal told")
        allowed = SourceSettings(settle=0.01, external_names=True)
        with ClusterProxy(kube, allowed) as proxy:
            assert served_by(proxy.wait_status("ext.example.test", 200)) == "external"


def lb_status(kube: EmulatorThread, name: str, namespace: str = NS) -> list[dict[str, Any]]:
    found = client.NetworkingV1Api(kube.api_client()).read_namespaced_ingress(name, namespace)
    balancer = found.status.load_balancer if found.status else None
    return [{k: v for k, v in (("ip", i.ip), ("hostname", i.hostname)) if v}
            for i in (balancer.ingress or [])] if balancer else []


def test_the_lease_holder_writes_the_address_into_served_ingresses_only(
        kube: EmulatorThread) -> None:
    """status.loadBalancer.ingress: set on the Ingresses this proxy serves, never on
    another controller's, removed when an Ingress is no longer served (unless it now names
    another controller's class: then the status is that controller's); two replicas, one
    writer (the Lease holder)."""
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
            net.patch_namespaced_ingress("ours", NS, {"spec": {"ingressClassName": "gone"}})
            wait_for(lambda: lb_status(kube, "ours") == [], what="the status removed")
            assert one.get("ours.test")[0] == 404
            # Back to certop, then to another controller's class: that controller's status
            # to write (not touched here, even when it shows certop's address).
            net.patch_namespaced_ingress("ours", NS, {"spec": {"ingressClassName": "certop"}})
            wait_for(lambda: lb_status(kube, "ours") == [{"ip": "127.0.0.1"}],
                     what="the status back")
            net.patch_namespaced_ingress("ours", NS, {"spec": {"ingressClassName": "other"}})
            wait_for(lambda: one.get("ours.test")[0] == 404, what="not served any more")
            assert one.writer is not None and two.writer is not None
            writes = sorted((one.writer.writes, two.writer.writes))
            assert lb_status(kube, "ours") == [{"ip": "127.0.0.1"}]
            assert writes == [0, 3], writes


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


@pytest.mark.slow
def test_a_410_a_cut_watch_and_an_api_server_away_for_10s_keep_the_proxy_serving(
        kube: EmulatorThread) -> None:
    """Each watch answering 410 Gone, then each connection cut: listed again, later changes
    still arrive. The API server away for 10 s: every request is still answered from the
    last configuration; ready until the grace (3 s) has passed, not ready after, ready
    again once the API answers."""
    import time

    from certop.k8s.ingress_source import SourceSettings

    with Echo("one") as one, Echo("two") as two, Echo("three") as three:
        create(kube, NS, ingress_class("certop"), service("web"),
               endpoint_slice("web-1", "web", one.port, ["127.0.0.1"]),
               ingress("web", "r.example.test"))
        discovery = client.DiscoveryV1Api(kube.api_client())
        with ClusterProxy(kube, SourceSettings(settle=0.01, grace=3.0)) as proxy:
            source = proxy.source
            assert source is not None
            assert served_by(proxy.wait_status("r.example.test", 200)) == "one"
            for how, echo in (("gone", two), ("cut", three)):
                assert kube.interrupt_watches(how) >= 5, how  # one per watched kind
                discovery.patch_namespaced_endpoint_slice(
                    "web-1", NS, endpoint_slice("web-1", "web", echo.port, ["127.0.0.1"]))
                wait_for(lambda e=echo: served_by(proxy.get("r.example.test")[1]) == e.name,
                         timeout=15, what=f"a change after the watches were {how}")
            assert source.ready()
            kube.set_unavailable(True)
            down = time.monotonic()
            try:
                while time.monotonic() - down < 10:
                    status, body = proxy.get("r.example.test")
                    assert (status, served_by(body)) == (200, "three")
                    if time.monotonic() - down < 2.0:
                        assert source.ready()  # within the grace
                    time.sleep(0.2)  # requests spread over the outage
                assert not source.ready()  # past the grace
            finally:
                kube.set_unavailable(False)
            wait_for(source.ready, timeout=30, what="ready again once the API answers")
            discovery.patch_namespaced_endpoint_slice(
                "web-1", NS, endpoint_slice("web-1", "web", one.port, ["127.0.0.1"]))
            wait_for(lambda: served_by(proxy.get("r.example.test")[1]) == "one", timeout=15,
                     what="changes arriving again")


@pytest.mark.slow
def test_changes_while_64_clients_keep_asking_fail_no_request(kube: EmulatorThread) -> None:
    """64 clients for 20 s (56 over HTTPS keep-alive connections, 8 opening a new TLS
    connection per request) while endpoints are added and removed, the Service port is
    renamed (the zero-downtime way: both names, the Ingress moved, the old name dropped), the
    TLS Secret is rotated and the Ingress is edited: every request answers 200 from a backend
    it may reach, and none reaches the removed endpoint once the change has settled."""
    import http.client
    import threading
    import time

    host = "busy.example.test"
    with Echo("a") as a, Echo("b") as b, Echo("extra") as extra:
        secret = tls_secret("busy-tls", (host,))
        create(kube, NS, ingress_class("certop"), service("web"), service("extra"),
               endpoint_slice("web-a", "web", a.port, ["127.0.0.1"]),
               endpoint_slice("extra-1", "extra", extra.port, ["127.0.0.1"]), secret,
               ingress("busy", host, tls_secret="busy-tls"))
        api = kube.api_client()
        core, net = client.CoreV1Api(api), client.NetworkingV1Api(api)
        discovery = client.DiscoveryV1Api(api)
        failures: list[str] = []
        answered: list[int] = []
        progress = [0] * 64
        """Requests each client has completed so far."""
        stop = threading.Event()

        with ClusterProxy(kube) as proxy:
            proxy.wait_status(host, 308)  # a TLS host: plain HTTP is redirected
            tls_port = proxy.https_port

            def keepalive_client(me: int) -> None:
                ctx = ssl.create_default_context()
                ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
                conn = http.client.HTTPSConnection("127.0.0.1", tls_port, timeout=10,
                                                   context=ctx)
                count = 0
                while not stop.is_set():
                    try:
                        conn.request("GET", "/", headers={"Host": host})
                        response = conn.getresponse()
                        body = response.read()
                        if response.status != 200 or served_by(body) not in ("a", "b"):
                            failures.append(f"{response.status} {body[:80]!r}")
                        count += 1
                        progress[me] = count
                    except Exception as exc:
                        failures.append(f"keep-alive: {type(exc).__name__}: {exc}")
                        conn.close()
                answered.append(count)
                conn.close()

            def tls_client(me: int) -> None:
                count = 0
                while not stop.is_set():
                    try:
                        with socket.create_connection(("127.0.0.1", tls_port), timeout=10) \
                                as raw:
                            ctx = ssl.create_default_context()
                            ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
                            with ctx.wrap_socket(raw, server_hostname=host) as tls:
                                tls.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\n"
                                            "Connection: close\r\n\r\n".encode())
                                data = b""
                                while chunk := tls.recv(65536):
                                    data += chunk
                        status = int(data.split(b" ", 2)[1])
                        if status != 200:
                            failures.append(f"new TLS: {status}")
                        count += 1
                        progress[me] = count
                    except Exception as exc:
                        failures.append(f"new TLS: {type(exc).__name__}: {exc}")
                answered.append(count)

            threads = [threading.Thread(target=keepalive_client, args=(i,)) for i in range(56)]
            threads += [threading.Thread(target=tls_client, args=(56 + i,)) for i in range(8)]
            for thread in threads:
                thread.start()
            try:
                time.sleep(1)  # load running before the first change
                create(kube, NS, endpoint_slice("web-b", "web", b.port, ["127.0.0.1"]))
                wait_for(lambda: len(b.requests) > 0, what="the added endpoint used")
                discovery.delete_namespaced_endpoint_slice("web-a", NS)
                removed_at = time.monotonic()
                # Settled: the proxy serves without A, and every client has finished a
                # request since (so none sent before the change is still in flight).
                assert proxy.proxy is not None
                web = next(b for b in proxy.proxy.serving.endpoints if b.name == "web")
                wait_for(lambda: ("127.0.0.1", a.port) not in
                         proxy.proxy.serving.endpoints[web],  # type: ignore[union-attr]
                         what="the endpoint removed from the data path")
                seen = list(progress)
                wait_for(lambda: all(now > then for now, then in zip(progress, seen,
                                                                      strict=True)),
                         what="a request of every client after the change")
                after_removal = len(a.requests)
                # The port renamed: both names, the Ingress moved, the old name dropped.
                both = endpoint_slice("web-b", "web", b.port, ["127.0.0.1"])
                both["ports"].append({"name": "web", "port": b.port, "protocol": "TCP"})
                core.patch_namespaced_service("web", NS, service(
                    "web", (("http", 80), ("web", 81))))
                discovery.patch_namespaced_endpoint_slice("web-b", NS, both)
                source = proxy.source
                assert source is not None

                def ports() -> tuple[set[str], set[str]]:
                    svc, piece = source.services.get((NS, "web")), source.slices.get(
                        (NS, "web-b"))
                    return ({p.name for p in svc.ports} if svc else set(),
                            set(piece.ports) if piece else set())

                wait_for(lambda: ports() == ({"http", "web"}, {"http", "web"}),
                         what="both port names seen")
                net.patch_namespaced_ingress("busy", NS, ingress(
                    "busy", host, port="web", tls_secret="busy-tls"))
                moved = ServiceBackend(NS, "web", "web")
                wait_for(lambda: proxy.proxy is not None and  # type: ignore[union-attr]
                         ("127.0.0.1", b.port) in proxy.proxy.serving.endpoints.get(moved, ()),
                         what="the Ingress served through the new port name")
                core.patch_namespaced_service("web", NS, service("web", (("web", 81),)))
                discovery.patch_namespaced_endpoint_slice(
                    "web-b", NS, endpoint_slice("web-b", "web", b.port, ["127.0.0.1"],
                                                port_name="web"))
                wait_for(lambda: ports() == ({"web"}, {"web"}), what="the old name dropped")
                rotated = tls_secret("busy-tls", (host,))
                core.patch_namespaced_secret("busy-tls", NS, {"data": rotated["data"]})
                wait_for(lambda: _served_certificate(tls_port, host) == _der(rotated),
                         what="the rotated certificate served")
                edited = ingress("busy", host, port="web", tls_secret="busy-tls")
                edited["spec"]["rules"][0]["http"]["paths"].append({
                    "path": "/extra", "pathType": "Prefix",
                    "backend": {"service": {"name": "extra", "port": {"name": "http"}}}})
                net.patch_namespaced_ingress("busy", NS, edited)
                wait_for(lambda: proxy.get(host, "/extra", port=None)[0] in (200, 308),
                         what="the edited Ingress")
                left = 20 - (time.monotonic() - removed_at + 2)
                time.sleep(max(left, 0))  # the load keeps going to 20 s
            finally:
                stop.set()
                for thread in threads:
                    thread.join(30)
        assert not failures, (len(failures), failures[:5])
        assert len(answered) == 64 and all(n > 0 for n in answered), answered
        assert len(a.requests) == after_removal  # nothing to the removed endpoint
        assert not extra.requests  # the clients ask for / only
