"""What the proxy serves, as one immutable value: the serving snapshot.

A source (the manifest files today, the Kubernetes API next) builds a `Snapshot` from Ingress
values and hands it to the proxy in one call (`Proxy.swap`): the route table, which Secret
serves which SNI host, the endpoints of every backend the routes name, and the certificates
the user brings. Certificates certop issues reach the proxy on their own, by Secret key.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol

from certop.core import routing
from certop.core.models import Ingress, ServiceBackend
from certop.core.routing import RouteTable

Address = tuple[str, int]
"""An endpoint: (IP address or `localhost`, port)."""
SecretKey = tuple[str, str]
"""A certificate's key: (namespace, Secret name)."""


@dataclass(frozen=True)
class KeyPair:
    """A certificate chain and its private key, PEM (the key is never shown in a repr)."""

    fullchain_pem: bytes
    key_pem: bytes = field(repr=False)


@dataclass(frozen=True)
class Snapshot:
    """Everything the proxy serves, swapped in whole."""

    routes: RouteTable
    sni: Mapping[str, SecretKey]
    """SNI host (or `*.domain`) -> the Secret whose certificate serves it."""
    endpoints: Mapping[ServiceBackend, tuple[Address, ...]]
    """Every backend the routes name -> its endpoints (empty: none, a 503)."""
    certificates: Mapping[SecretKey, KeyPair] = field(
        default_factory=lambda: MappingProxyType({}), repr=False)
    """Certificates the source brings (not issued by certop), by Secret."""
    challenges: Mapping[tuple[str, str], str] = field(
        default_factory=lambda: MappingProxyType({}), repr=False)
    """(host, token) -> the HTTP-01 key authorization to answer for that host only (the
    cluster source: the operator's temporary Ingresses), after the proxy's own tokens."""

    @classmethod
    def empty(cls) -> Snapshot:
        return cls(RouteTable.empty(), MappingProxyType({}), MappingProxyType({}))


class Server(Protocol):
    """What serves: the proxy, as a source and the issuance pipeline see it."""

    def swap(self, snapshot: Snapshot) -> None:
        """Serve `snapshot` from now on (a source's one way in)."""
        ...

    def serve_certificate(self, key: SecretKey, pair: KeyPair) -> bool:
        """Serve `pair` for the Secret `key` from the next handshake on (a certificate the
        issuance pipeline stored); False when it does not load (the last good one stays)."""
        ...


def sni_map(ingresses: Iterable[Ingress],
            more: Iterable[tuple[str, SecretKey]] = ()) -> dict[str, SecretKey]:
    """Which Secret serves which host, from `spec.tls`: the first Ingress naming a host wins;
    then `more` (a Certificate's dnsNames -> its Secret) for the hosts no Ingress names."""
    sni: dict[str, SecretKey] = {}
    for ing in ingresses:
        for tls in ing.tls:
            if tls.secret_name:
                for host in tls.hosts:
                    sni.setdefault(host, (ing.ref.namespace, tls.secret_name))
    for host, key in more:
        sni.setdefault(host, key)
    return sni


def backends(ingresses: Iterable[Ingress]) -> list[ServiceBackend]:
    """Every backend the Ingresses name (default backends and paths), first seen first."""
    found: dict[ServiceBackend, None] = {}
    for ing in ingresses:
        if ing.default_backend is not None:
            found.setdefault(ing.default_backend)
        for rule in ing.rules:
            for path in rule.paths:
                found.setdefault(path.backend)
    return list(found)


def build(ingresses: Sequence[Ingress],
          resolve: Callable[[ServiceBackend], Sequence[Address]],
          hsts_default: str | None = None,
          certificates: Mapping[SecretKey, KeyPair] | None = None,
          sni: Iterable[tuple[str, SecretKey]] = (),
          challenges: Mapping[tuple[str, str], str] | None = None) -> Snapshot:
    """The snapshot of these Ingresses; `resolve` gives a backend's endpoints (the source's
    knowledge: `--service` flags, EndpointSlices); `sni`: more SNI hosts and their Secrets
    (Certificate objects' dnsNames), for hosts no Ingress's `tls` names."""
    return Snapshot(
        routing.build(ingresses, hsts_default),
        MappingProxyType(sni_map(ingresses, sni)),
        MappingProxyType({b: tuple(resolve(b)) for b in backends(ingresses)}),
        MappingProxyType(dict(certificates or {})),
        MappingProxyType(dict(challenges or {})),
    )
