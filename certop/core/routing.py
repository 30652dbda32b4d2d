"""The Ingress routing table: (host, path) -> backend, with the Ingress v1 semantics.

Rules (networking.k8s.io/v1, and the kubernetes-sigs conformance scenarios):
1. Host: an exact host beats a wildcard; `*.foo.com` matches exactly one extra label
   (`bar.foo.com`, never `foo.com` or `a.bar.foo.com`); rules without a host catch all others.
2. Path: `Exact` is a case-sensitive string match. `Prefix` matches element-wise on `/`:
   `/foo` matches `/foo`, `/foo/`, `/foo/bar`, never `/foobar`; a trailing `/` in the rule is
   ignored. `ImplementationSpecific` is `Prefix` here. The longest match wins and `Exact` beats
   `Prefix` at equal length (an Exact match is always the longest possible).
3. No path matches: the `defaultBackend` of an Ingress that defines the host, else 404.
4. Several Ingresses for one host merge; the same (host, pathType, path) twice goes to the older
   Ingress (creationTimestamp, then namespace/name) and is reported as a conflict.

The table is immutable; the proxy swaps a whole new one in when Ingresses change. Lookups cost
one dict probe per path element.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from certop.core import annotations as ann
from certop.core.models import Ingress, ObjectRef, PathType, ServiceBackend

ACME_CHALLENGE_PREFIX = "/.well-known/acme-challenge/"
UNKNOWN_LABEL = "_unknown"
"""The metrics label of hosts no rule names (never the client's Host: labels stay bounded)."""


@dataclass(frozen=True)
class Route:
    backend: ServiceBackend
    ingress: ObjectRef
    path: str
    path_type: PathType
    body_limit: int | None = None
    """Largest request body in bytes (proxy-body-size); None: the proxy's default; 0: none."""
    hsts: bytes | None = None
    """Strict-Transport-Security value for HTTPS responses, if any."""


@dataclass
class HostRoutes:
    """All routes of one host (or of the catch-all), merged over Ingresses."""

    exact: dict[str, Route] = field(default_factory=dict)
    prefix: dict[str, Route] = field(default_factory=dict)
    default: Route | None = None
    tls: bool = False
    """Some Ingress lists this host under spec.tls."""
    redirect: bool = False
    """Plain-HTTP requests to this host are redirected to HTTPS (308)."""
    label: str = UNKNOWN_LABEL
    """The host as the rules name it (`a.example.com`, `*.example.com`), for metrics."""
    hsts: bytes | None = None
    """Strict-Transport-Security for the proxy's own HTTPS answers about this host (404, 5xx):
    the oldest Ingress naming the host decides; for unknown hosts, the `--hsts` default."""

    def match(self, path: str) -> Route | None:
        route = self.exact.get(path)
        if route is not None:
            return route
        prefix = self.prefix
        if prefix:
            candidate = path
            while True:
                route = prefix.get(candidate)
                if route is not None:
                    return route
                if not candidate:
                    break
                candidate = candidate[: candidate.rfind("/")]
        return self.default


def _prefix_key(path: str) -> str:
    """`/foo/` and `/foo` are one Prefix rule; `/` is the empty key that matches everything."""
    return path.rstrip("/")


def normalize_host(host: str) -> str:
    """Lower-case, without port and trailing dot (Host header or SNI)."""
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end > 0 else host
    colon = host.rfind(":")
    if colon >= 0 and host[colon + 1 :].isdigit():
        host = host[:colon]
    return host.rstrip(".")


@dataclass(frozen=True)
class RouteTable:
    hosts: dict[str, HostRoutes]
    wildcards: dict[str, HostRoutes]
    catch_all: HostRoutes
    conflicts: tuple[str, ...] = ()

    def lookup(self, host: str) -> HostRoutes:
        """The routes for a normalized host (see `normalize_host`)."""
        routes = self.hosts.get(host)
        if routes is not None:
            return routes
        dot = host.find(".")
        if dot > 0:
            routes = self.wildcards.get(host[dot + 1 :])
            if routes is not None:
                return routes
        return self.catch_all

    def match(self, host: str, path: str) -> Route | None:
        return self.lookup(normalize_host(host)).match(path)

    @classmethod
    def empty(cls) -> RouteTable:
        return cls({}, {}, HostRoutes())


def _order(ing: Ingress) -> tuple[str, str, str]:
    return (ing.creation, ing.ref.namespace, ing.ref.name)


def build(ingresses: Iterable[Ingress], hsts_default: str | None = None) -> RouteTable:
    """Merge Ingresses (in any order) into one deterministic table. Annotations were
    checked when the Ingresses were parsed."""
    hosts: dict[str, HostRoutes] = {}
    wildcards: dict[str, HostRoutes] = {}
    catch_all = HostRoutes(hsts=hsts_default.encode() if hsts_default else None)
    conflicts: list[str] = []
    decided: set[int] = set()  # id() of the HostRoutes whose hsts is set

    def slot(host: str | None) -> HostRoutes:
        if host is None:
            return catch_all
        if host.startswith("*."):
            return wildcards.setdefault(host[2:], HostRoutes(label=host))
        return hosts.setdefault(host, HostRoutes(label=host))

    for ing in sorted(ingresses, key=_order):
        tls_hosts = {h for t in ing.tls for h in t.hosts}
        redirect = ann.ssl_redirect(ing.annotations)
        force = ann.force_ssl_redirect(ing.annotations)
        limit = ann.body_limit(ing.annotations)
        hsts_value = ann.hsts(ing.annotations, hsts_default)
        hsts = hsts_value.encode() if hsts_value else None
        default = (
            Route(ing.default_backend, ing.ref, "", PathType.PREFIX, limit, hsts)
            if ing.default_backend
            else None
        )
        touched: list[HostRoutes] = []
        for rule in ing.rules:
            routes = slot(rule.host)
            touched.append(routes)
            if routes is not catch_all and id(routes) not in decided:
                decided.add(id(routes))
                routes.hsts = hsts
            for p in rule.paths:
                route = Route(p.backend, ing.ref, p.path, p.path_type, limit, hsts)
                if p.path_type is PathType.EXACT:
                    table, key = routes.exact, p.path
                else:
                    table, key = routes.prefix, _prefix_key(p.path)
                prior = table.get(key)
                if prior is not None:
                    if prior.ingress != ing.ref or prior.backend != route.backend:
                        conflicts.append(
                            f"{rule.host or '*'} {p.path_type.value} {p.path}: {ing.ref} "
                            f"ignored, {prior.ingress} serves it (older)"
                        )
                    continue
                table[key] = route
        for routes in [*touched, catch_all]:
            if default is not None and routes.default is None:
                routes.default = default
        if force:
            for routes in touched:
                if routes is not catch_all:
                    routes.redirect = True
        for host in tls_hosts:
            routes = slot(host)
            if id(routes) not in decided:
                decided.add(id(routes))
                routes.hsts = hsts
            routes.tls = True
            routes.redirect = routes.redirect or redirect
    for routes in (*hosts.values(), *wildcards.values()):
        if not routes.exact and not routes.prefix and routes.default is None:
            # A TLS-only host (no rule names it) is served by the host-less rules.
            routes.exact, routes.prefix = catch_all.exact, catch_all.prefix
            routes.default = catch_all.default
    return RouteTable(hosts, wildcards, catch_all, tuple(conflicts))
