"""The pure rules of `certop proxy`: Service/EndpointSlice resolution (as kube-proxy resolves
them) and which Ingresses an IngressClass controller serves."""

from __future__ import annotations

from typing import Any

from certop.core import endpoints
from certop.core.ingress_class import Claim, IngressClass, parse_class, serves
from certop.core.models import ServiceBackend

CONTROLLER = "certop.dev/ingress-controller"


def svc(ports: list[dict[str, Any]], **spec: Any) -> endpoints.Service:
    return endpoints.parse_service({"metadata": {"namespace": "ns", "name": "web"},
                                    "spec": {"ports": ports, **spec}})


def piece(ports: dict[str, int], eps: list[tuple[str, dict[str, Any]]],
          service: str | None = "web") -> endpoints.EndpointSlice | None:
    labels = {"kubernetes.io/service-name": service} if service else {}
    return endpoints.parse_slice({
        "metadata": {"namespace": "ns", "name": "web-x", "labels": labels},
        "ports": [{"name": n, "port": p} for n, p in ports.items()],
        "endpoints": [{"addresses": [a], "conditions": c} for a, c in eps]})


def test_a_port_by_number_or_name_uses_the_slice_port_of_the_service_ports_name() -> None:
    service = svc([{"name": "http", "port": 80, "targetPort": "web"},
                   {"name": "admin", "port": 9000, "targetPort": 9001}])
    slices = [piece({"http": 8080, "admin": 9001}, [("10.0.0.1", {"ready": True})])]
    assert all(s is not None for s in slices)
    found = [s for s in slices if s is not None]
    for port, address in ((80, ("10.0.0.1", 8080)), ("http", ("10.0.0.1", 8080)),
                          (9000, ("10.0.0.1", 9001)), ("admin", ("10.0.0.1", 9001))):
        assert endpoints.resolve(ServiceBackend("ns", "web", port), service, found) == \
            ((address,), None)
    assert endpoints.resolve(ServiceBackend("ns", "web", 81), service, found) == \
        ((), "Service ns/web has no port 81")
    assert endpoints.resolve(ServiceBackend("ns", "web", 80), None, found) == \
        ((), "Service ns/web does not exist")


def test_ready_endpoints_first_then_serving_terminating_never_the_others() -> None:
    service = svc([{"port": 80}])  # one unnamed port: slice port name ""
    mixed = piece({"": 8080}, [
        ("10.0.0.1", {}),  # no conditions: ready, as the API defines a missing one
        ("10.0.0.2", {"ready": True}),
        ("10.0.0.3", {"ready": False}),
        ("10.0.0.4", {"ready": False, "serving": True, "terminating": True})])
    draining = piece({"": 8080}, [
        ("10.0.0.5", {"ready": False, "serving": True, "terminating": True}),
        ("10.0.0.6", {"ready": False, "serving": False, "terminating": True})])
    assert mixed is not None and draining is not None
    backend = ServiceBackend("ns", "web", 80)
    assert endpoints.resolve(backend, service, [mixed])[0] == \
        (("10.0.0.1", 8080), ("10.0.0.2", 8080))
    # None ready: the serving ones that terminate get the traffic (a rollout drains).
    assert endpoints.resolve(backend, service, [draining])[0] == (("10.0.0.5", 8080),)


def test_external_name_and_slices_that_name_no_service() -> None:
    external = svc([{"name": "http", "port": 8443}], type="ExternalName",
                   externalName="api.example.com.")
    backend = ServiceBackend("ns", "web", "http")
    found, why = endpoints.resolve(backend, external, [])  # not followed by default
    assert found == () and why is not None and "--allow-external-name-services" in why
    assert endpoints.resolve(backend, external, [], external_names=True) == \
        ((("api.example.com", 8443),), None)
    no_ports = svc([], type="ExternalName", externalName="api.example.com")
    assert endpoints.resolve(ServiceBackend("ns", "web", 443), no_ports, [], True) == \
        ((("api.example.com", 443),), None)
    metadata = svc([{"port": 80}], type="ExternalName", externalName="169.254.169.254")
    found, why = endpoints.resolve(ServiceBackend("ns", "web", 80), metadata, [], True)
    assert found == () and why is not None and "no backend may have" in why
    assert piece({"": 80}, [("10.0.0.1", {})], service=None) is None


def test_addresses_no_backend_may_have_are_left_out_of_slices() -> None:
    """Link-local (cloud metadata), unspecified, multicast, and FQDN slices: never dialled."""
    found = piece({"": 8080}, [("169.254.169.254", {}), ("0.0.0.0", {}), ("fe80::1", {}),
                               ("224.0.0.1", {}), ("10.0.0.7", {})])
    assert found is not None
    assert [e.address for e in found.endpoints] == ["10.0.0.7"]
    fqdn = endpoints.parse_slice({"metadata": {"namespace": "ns", "name": "x", "labels": {
        "kubernetes.io/service-name": "web"}}, "addressType": "FQDN",
        "ports": [{"port": 80}], "endpoints": [{"addresses": ["example.com"]}]})
    assert fqdn is None


def test_the_ingress_class_rules() -> None:
    ours = IngressClass("certop", CONTROLLER)
    other = IngressClass("nginx", "k8s.io/ingress-nginx")
    classes = {"certop": ours, "nginx": other}

    def served(field: str | None, annotation: str | None,
               known: dict[str, IngressClass] = classes) -> bool:
        return serves(Claim(field, annotation), known, CONTROLLER, "certop")

    assert served("certop", None)
    assert not served("nginx", None)
    assert not served("missing", None)
    assert served("certop", "nginx")  # the field wins over the annotation
    assert not served("nginx", "certop")
    assert served(None, "certop")
    assert not served(None, "nginx")
    assert not served(None, None)
    default = {**classes, "certop": IngressClass("certop", CONTROLLER, default=True)}
    assert served(None, None, default)
    theirs_default = {**classes, "nginx": IngressClass("nginx", "k8s.io/ingress-nginx", True)}
    assert not served(None, None, theirs_default)
    assert parse_class({"metadata": {"name": "c", "annotations": {
        "ingressclass.kubernetes.io/is-default-class": "True"}},
        "spec": {"controller": CONTROLLER}}) == IngressClass("c", CONTROLLER, True)
    assert Claim.of({"spec": {"ingressClassName": "certop"}, "metadata": {"annotations": {
        "kubernetes.io/ingress.class": "nginx"}}}) == Claim("certop", "nginx")
