"""The solver interface: how certop proves control of an identifier to the CA.

An ACME driver calls, per pending authorization: `present` (make the key authorization
reachable), `check` (certop's own self-check before telling the CA to validate), and on every
exit path `cleanup`. All three get the same `Challenge` value and are idempotent: a resumed
order presents again.

A solver is built for one certificate from one of its issuer's solver blocks
(`SolverSpec`) and what the running mode offers (`SolverContext`), by a factory found in the
registry (`solvers.registry`). This module depends on `certop.core` only: the ACME driver
(`certop.acme`) imports it and nothing else of `solvers`.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from certop.core.models import SolverSpec

DNS01_LABEL = "_acme-challenge"


@dataclass(frozen=True)
class Challenge:
    """One challenge of one authorization, as the CA offered it (RFC 8555 section 8)."""

    identifier: str
    """The authorization's identifier: a DNS name, `*.`-prefixed for a wildcard."""
    challenge_type: str
    """"http-01", "dns-01", ..."""
    token: str
    key_authorization: str

    @property
    def dns01_record_name(self) -> str:
        """`_acme-challenge.<name>` (no trailing dot): a wildcard and its apex share it
        (RFC 8555 section 8.4)."""
        name = self.identifier.removeprefix("*.").rstrip(".")
        return f"{DNS01_LABEL}.{name}"

    @property
    def dns01_txt_value(self) -> str:
        """base64url(SHA-256(key authorization)) without padding (RFC 8555 section 8.4)."""
        digest = hashlib.sha256(self.key_authorization.encode()).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


class Solver(Protocol):
    challenge_type: str
    """The ACME challenge type this solver answers ("http-01", "dns-01")."""

    def present(self, challenge: Challenge) -> None: ...

    def check(self, challenge: Challenge) -> bool:
        """True when the CA would see what was presented (one bounded attempt, no waiting).
        A solver may keep what a failed check saw in a `last_check` string: the order
        driver puts it in its error when the checks keep failing."""
        ...

    def cleanup(self, challenge: Challenge) -> None: ...


class TokenSink(Protocol):
    """Where HTTP-01 key authorizations go for certop's responder to serve them."""

    def put(self, token: str, key_authorization: str) -> None: ...

    def remove(self, token: str) -> None: ...


@dataclass(frozen=True)
class ClusterContext:
    """Cluster mode: what a solver needs to make Kubernetes objects for a challenge."""

    api: Any
    """A `kubernetes.client.ApiClient`."""
    namespace: str
    """The certificate's namespace."""
    service: str
    """certop's responder Service and port (the backend of temporary Ingresses)."""
    port: int
    ingress_class: str | None = None
    """The class of the Ingress that asked for the certificate."""


@dataclass(frozen=True)
class SolverContext:
    """What the running mode offers the solvers it builds for one certificate."""

    tokens: TokenSink
    self_check_addr: tuple[str, int] | None = None
    """Where certop's own HTTP listener is, for the HTTP-01 self-check (None: no check)."""
    cluster: ClusterContext | None = None
    """Set in cluster mode only."""
    labels: Mapping[str, str] = field(default_factory=dict)
    """The Certificate's labels."""
    secrets: Callable[[str, str], bytes | None] | None = None
    """(Secret name, key) -> value, for solver settings that reference Secrets (DNS
    providers' credentials): the issuer's namespace in a cluster, the loaded manifests in
    standalone mode."""
    dns01_nameservers: tuple[tuple[str, int], ...] = ()
    """Where DNS-01 propagation is checked (--dns01-nameservers); empty: the provider's."""
    exec_allowed: tuple[str, ...] = ()
    """Programs an issuer's `exec` DNS provider may run (--dns01-exec-allow): the
    operator's own choice, never an issuer's; empty for a namespaced Issuer in a cluster (a
    tenant's: it would run a command with the operator's rights)."""


SolverFactory = Callable[[SolverSpec, SolverContext], Solver]
"""Builds the solver for one solver block; a solver class with that constructor is one."""


class SolverLookup(Protocol):
    """The ACME driver's view of the solvers: one per solver block, or None when certop has
    no solver for that block's type (or DNS provider)."""

    def solver(self, spec: SolverSpec) -> Solver | None: ...

    @property
    def challenge_types(self) -> tuple[str, ...]:
        """The challenge types certop can solve here (for messages)."""
        ...
