"""A Service backend's endpoints, from the Service and its EndpointSlices, as kube-proxy
resolves them (discovery.k8s.io/v1).

An Ingress backend names a Service port by number or by name. That port's `name` picks the
EndpointSlice port of the same name, whose number is where the endpoints listen (a Service's
`targetPort` may be a container port's name: only the slices know its number). Endpoints
that are `ready` are used (a missing condition counts as true, as the API defines it); when
none is, those that are `serving` and `terminating` (kube-proxy's rule: let a rollout drain
rather than fail). An `ExternalName` Service is its DNS name at the backend's port, when the
proxy is allowed to follow those. Pure:
the source parses what the API says and asks `resolve`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from certop.core.models import ServiceBackend

Address = tuple[str, int]
SERVICE_NAME_LABEL = "kubernetes.io/service-name"


@dataclass(frozen=True)
class ServicePort:
    name: str
    """"" when the Service has one unnamed port."""
    port: int


@dataclass(frozen=True)
class Service:
    namespace: str
    name: str
    ports: tuple[ServicePort, ...]
    external_name: str | None = None
    """Set for `type: ExternalName`."""
    load_balancer: tuple[tuple[str, str], ...] = ()
    """Its status.loadBalancer.ingress as (("ip" or "hostname", value), ...): where a
    LoadBalancer Service is reachable (an Ingress controller's published address)."""


@dataclass(frozen=True)
class SliceEndpoint:
    address: str
    ready: bool
    serving: bool
    terminating: bool


@dataclass(frozen=True)
class EndpointSlice:
    namespace: str
    name: str
    service: str
    ports: Mapping[str, int]
    """Port name ("" when unnamed) -> number."""
    endpoints: tuple[SliceEndpoint, ...]


def _meta(raw: Mapping[str, Any]) -> tuple[str, str, Mapping[str, Any]]:
    meta = raw.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or ""), meta


def parse_service(raw: Mapping[str, Any]) -> Service:
    """What certop needs of a v1 Service (unknown or malformed ports are left out)."""
    namespace, name, _ = _meta(raw)
    spec = raw.get("spec") or {}
    ports = tuple(ServicePort(str(p.get("name") or ""), int(p["port"]))
                  for p in spec.get("ports") or []
                  if isinstance(p, Mapping) and isinstance(p.get("port"), int))
    external = spec.get("externalName") if spec.get("type") == "ExternalName" else None
    balancer = ((raw.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
    addresses = tuple((field, str(item[field])) for item in balancer
                      if isinstance(item, Mapping) for field in ("ip", "hostname")
                      if item.get(field))
    return Service(namespace, name, ports, str(external).rstrip(".") if external else None,
                   addresses)


def forbidden(address: str) -> bool:
    """An address no backend may have: link-local (a cloud's metadata service at
    169.254.169.254, fe80::/10), unspecified, multicast; not an IP address at all (an
    EndpointSlice of addressType FQDN)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return True
    return ip.is_link_local or ip.is_unspecified or ip.is_multicast


def parse_slice(raw: Mapping[str, Any]) -> EndpointSlice | None:
    """An EndpointSlice of a Service (None when it names no Service: not ours to use);
    addresses `forbidden` are left out."""
    namespace, name, meta = _meta(raw)
    service = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
    if not service or raw.get("addressType") == "FQDN":
        return None
    ports = {str(p.get("name") or ""): int(p["port"]) for p in raw.get("ports") or []
             if isinstance(p, Mapping) and isinstance(p.get("port"), int)}
    endpoints = []
    for ep in raw.get("endpoints") or []:
        addresses = ep.get("addresses") if isinstance(ep, Mapping) else None
        if not addresses or forbidden(str(addresses[0])):
            continue
        cond = ep.get("conditions") or {}
        ready = cond.get("ready") is not False
        serving = ready if cond.get("serving") is None else cond.get("serving") is True
        endpoints.append(SliceEndpoint(str(addresses[0]), ready, serving,
                                       cond.get("terminating") is True))
    return EndpointSlice(namespace, name, str(service), ports, tuple(endpoints))


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def service_port(service: Service, backend: ServiceBackend) -> ServicePort | None:
    """The Service port the backend names (by number or by name)."""
    for port in service.ports:
        if (isinstance(backend.port, int) and port.port == backend.port) or \
                port.name == backend.port:
            return port
    return None


def resolve(backend: ServiceBackend, service: Service | None,
            slices: Iterable[EndpointSlice], external_names: bool = False
            ) -> tuple[tuple[Address, ...], str | None]:
    """The backend's endpoints and, when there are none for a reason the user can fix, why
    (no such Service, no such port, an ExternalName Service not allowed). `external_names`:
    ExternalName Services are followed (off by default, as Traefik's
    allowExternalNameServices: a tenant's ExternalName could send the proxy anywhere its
    network reaches); an IP address that is `forbidden` never is."""
    if service is None:
        return (), f"Service {backend.namespace}/{backend.name} does not exist"
    port = service_port(service, backend)
    if service.external_name is not None:
        if not external_names:
            return (), (f"Service {backend.namespace}/{backend.name} is of type ExternalName, "
                        "which this proxy does not follow (--allow-external-name-services)")
        literal = service.external_name.strip("[]")
        if _is_ip(literal) and forbidden(literal):
            return (), (f"ExternalName Service {backend.namespace}/{backend.name} names "
                        f"{literal}, an address no backend may have")
        number = port.port if port is not None else backend.port
        if not isinstance(number, int):
            return (), (f"ExternalName Service {backend.namespace}/{backend.name} has no port "
                        f"named {backend.port!r}")
        return ((service.external_name, number),), None
    if port is None:
        return (), f"Service {backend.namespace}/{backend.name} has no port {backend.port!r}"
    ready: list[Address] = []
    draining: list[Address] = []
    for piece in slices:
        listening = piece.ports.get(port.name)
        if listening is None:
            continue
        for ep in piece.endpoints:
            if ep.ready:
                ready.append((ep.address, listening))
            elif ep.serving and ep.terminating:
                draining.append((ep.address, listening))
    found = ready or draining
    return tuple(dict.fromkeys(found)), None
