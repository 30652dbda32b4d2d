"""Plain immutable values shared by the core and the shells.

These are what Kubernetes objects become once parsed and checked (see `ingress.py`,
`issuers.py`); nothing here knows where a value came from beyond the `source` string that error
messages quote.
"""

from __future__ import annotations

import datetime
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NewType

Fqdn = NewType("Fqdn", str)
SecretName = NewType("SecretName", str)
OrderUrl = NewType("OrderUrl", str)


class PathType(enum.Enum):
    """networking.k8s.io/v1 HTTPIngressPath.pathType."""

    EXACT = "Exact"
    PREFIX = "Prefix"
    IMPLEMENTATION_SPECIFIC = "ImplementationSpecific"


class KeyAlgorithm(enum.Enum):
    """Private key types certop can generate for a certificate."""

    ECDSA_P256 = "ECDSA-P256"
    RSA2048 = "RSA-2048"
    RSA3072 = "RSA-3072"
    RSA4096 = "RSA-4096"


@dataclass(frozen=True)
class ObjectRef:
    """namespace/name of a Kubernetes object, plus the file it came from (standalone)."""

    kind: str
    namespace: str
    name: str
    source: str = ""

    def __str__(self) -> str:
        if not self.namespace:  # cluster-scoped: a ClusterIssuer
            return f"{self.kind} {self.name}"
        return f"{self.kind} {self.namespace}/{self.name}"


@dataclass(frozen=True)
class ServiceBackend:
    """An Ingress backend: a Service in the Ingress's namespace and a port number or name."""

    namespace: str
    name: str
    port: int | str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}:{self.port}"


@dataclass(frozen=True)
class IngressPath:
    path: str
    path_type: PathType
    backend: ServiceBackend


@dataclass(frozen=True)
class IngressRule:
    host: str | None
    paths: tuple[IngressPath, ...]


@dataclass(frozen=True)
class IngressTLS:
    hosts: tuple[str, ...]
    secret_name: SecretName | None


@dataclass(frozen=True)
class Ingress:
    """A parsed, validated networking.k8s.io/v1 Ingress."""

    ref: ObjectRef
    annotations: dict[str, str] = field(hash=False, compare=True)
    ingress_class: str | None
    rules: tuple[IngressRule, ...]
    tls: tuple[IngressTLS, ...]
    default_backend: ServiceBackend | None
    creation: str = ""
    """creationTimestamp (RFC 3339) or load order; the older Ingress wins a conflict."""


@dataclass(frozen=True)
class ExternalAccountBinding:
    key_id: str
    hmac_key_b64: str


@dataclass(frozen=True)
class SolverSelector:
    """spec.acme.solvers[].selector: which identifiers a solver is for (empty: all, as the
    default of lowest priority)."""

    dns_names: tuple[str, ...] = ()
    dns_zones: tuple[str, ...] = ()
    match_labels: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class SolverSpec:
    """One entry of spec.acme.solvers."""

    challenge_type: str = "http-01"
    """http-01 or dns-01."""
    selector: SolverSelector = SolverSelector()
    http01_path_type: PathType = PathType.EXACT
    http01_ingress_class: str | None = None
    """IngressClass for temporary HTTP-01 Ingresses (http01.ingress ingressClassName or
    class); None: the class of the Ingress that asked."""
    provider: str | None = None
    """The block's provider key: `ingress` for http01, `rfc2136`, `cloudflare`, `webhook`, ...
    for dns01 (None when the block names none, as the default solver)."""
    config: Mapping[str, Any] = field(default_factory=dict, hash=False)
    """The `http01` or `dns01` block as the issuer wrote it, for the solver built from it."""
    origin: tuple[str, str, str] = field(default=("", "", ""), compare=False, hash=False)
    """(source, issuer, field of the block): where a solver's error about its settings
    points (e.g. ("issuers.yaml", "ClusterIssuer dns", "spec.acme.solvers[0].dns01"))."""

    @property
    def registry_names(self) -> tuple[str, ...]:
        """The names a solver factory is registered under for this block, most specific
        first: `dns-01.rfc2136`, then `dns-01`."""
        if self.provider:
            return (f"{self.challenge_type}.{self.provider}", self.challenge_type)
        return (self.challenge_type,)


@dataclass(frozen=True)
class AcmeIssuer:
    """An ACME (Cluster)Issuer: where to get certificates and how to prove control."""

    ref: ObjectRef
    server: str
    email: str | None
    ca_bundle_pem: bytes | None = None
    skip_tls_verify: bool = False
    account_key_secret: str | None = None
    eab: ExternalAccountBinding | None = None
    solvers: tuple[SolverSpec, ...] = (SolverSpec(),)
    """In the issuer's order; `core.solvers.select` picks one per identifier."""

    @property
    def solver_types(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(s.challenge_type for s in self.solvers))


@dataclass(frozen=True)
class CertificateSpec:
    """What one certificate must be: one per `spec.tls[]` entry (shared when identical)."""

    namespace: str
    secret_name: SecretName
    hosts: tuple[Fqdn, ...]
    issuer: str
    key_algorithm: KeyAlgorithm = KeyAlgorithm.ECDSA_P256
    owners: tuple[ObjectRef, ...] = ()
    issuer_kind: str = "ClusterIssuer"
    """ClusterIssuer or Issuer (namespaced, in the certificate's namespace)."""
    renew_before: datetime.timedelta | None = None
    """Renew this long before expiry (cert-manager's renewBefore) instead of at 2/3 of the
    lifetime; the CA's ARI window still comes first."""
    reuse_key: bool = False
    """privateKey.rotationPolicy Never: a renewal keeps the current private key."""

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.secret_name)

    def __str__(self) -> str:
        return f"{self.namespace}/{self.secret_name} [{', '.join(self.hosts)}]"
