"""Parse an ACME ClusterIssuer/Issuer manifest shaped exactly like cert-manager's.

A cert-manager user ports an issuer by changing `apiVersion` only. Secrets it refers to
(the EAB HMAC key) are looked up through a callable so that standalone mode (Secret manifests
in the loaded files) and cluster mode (the API) share this parser.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping
from typing import Any

from certop.core import names
from certop.core.ingress import Fields, object_ref
from certop.core.models import (
    AcmeIssuer,
    ExternalAccountBinding,
    PathType,
    SolverSelector,
    SolverSpec,
)

ISSUER_API_VERSIONS = ("certop.dev/v1", "cert-manager.io/v1")
SecretLookup = Callable[[str, str], Mapping[str, bytes] | None]
"""(namespace, name) -> the Secret's decoded data, or None when there is no such Secret."""


def parse_issuer(
    doc: Mapping[str, Any],
    source: str,
    secrets: SecretLookup,
    resource_namespace: str = "default",
) -> AcmeIssuer:
    ref = object_ref(doc, source, default_namespace=resource_namespace)
    f = Fields(ref)
    if doc.get("apiVersion") not in ISSUER_API_VERSIONS:
        raise f.error("apiVersion", f"one of {', '.join(ISSUER_API_VERSIONS)}")
    spec = f.mapping(doc.get("spec"), "spec", required=True)
    acme = f.mapping(spec.get("acme"), "spec.acme", required=True)
    server = f.string(acme.get("server"), "spec.acme.server")
    assert server is not None
    if not server.startswith(("https://", "http://")):
        raise f.error("spec.acme.server", "the ACME directory URL (https://...)")
    email = f.string(acme.get("email"), "spec.acme.email", required=False)
    ca_bundle: bytes | None = None
    if acme.get("caBundle") is not None:
        raw = f.string(acme.get("caBundle"), "spec.acme.caBundle")
        try:
            ca_bundle = base64.b64decode(raw or "", validate=True)
        except (binascii.Error, ValueError):
            raise f.error("spec.acme.caBundle", "base64 of a PEM bundle") from None
        if b"-----BEGIN CERTIFICATE-----" not in ca_bundle:
            raise f.error("spec.acme.caBundle", "base64 of a PEM bundle (no certificate inside)")
    skip = acme.get("skipTLSVerify", False)
    if not isinstance(skip, bool):
        raise f.error("spec.acme.skipTLSVerify", "true or false")
    key_ref = f.mapping(acme.get("privateKeySecretRef"), "spec.acme.privateKeySecretRef")
    key_secret = f.string(key_ref.get("name"), "spec.acme.privateKeySecretRef.name",
                          required=False)
    problem = names.subdomain_problem(key_secret) if key_secret is not None else None
    if problem is not None:
        raise f.error("spec.acme.privateKeySecretRef.name", f"a Secret name: {problem}")

    eab = None
    if acme.get("externalAccountBinding") is not None:
        ef = "spec.acme.externalAccountBinding"
        raw_eab = f.mapping(acme["externalAccountBinding"], ef)
        kid = f.string(raw_eab.get("keyID"), f"{ef}.keyID")
        sref = f.mapping(raw_eab.get("keySecretRef"), f"{ef}.keySecretRef", required=True)
        sname = f.string(sref.get("name"), f"{ef}.keySecretRef.name")
        skey = f.string(sref.get("key"), f"{ef}.keySecretRef.key", required=False) or "secret"
        assert kid is not None and sname is not None
        problem = names.subdomain_problem(sname)
        if problem is not None:
            raise f.error(f"{ef}.keySecretRef.name", f"a Secret name: {problem}")
        data = secrets(resource_namespace, sname)
        if data is None:
            raise f.error(f"{ef}.keySecretRef.name",
                          f"an existing Secret {resource_namespace}/{sname}")
        if skey not in data:
            raise f.error(f"{ef}.keySecretRef.key", f"a key present in Secret {sname}")
        hmac = data[skey].decode().strip()
        eab = ExternalAccountBinding(kid, hmac)

    solvers = tuple(_solver(f, raw, f"spec.acme.solvers[{i}]") for i, raw in
                    enumerate(f.sequence(acme.get("solvers"), "spec.acme.solvers")))
    return AcmeIssuer(
        ref=ref,
        server=server,
        email=email,
        ca_bundle_pem=ca_bundle,
        skip_tls_verify=skip,
        account_key_secret=key_secret,
        eab=eab,
        solvers=solvers or (SolverSpec(),),
    )


def _names(f: Fields, value: Any, field: str) -> tuple[str, ...]:
    items = f.sequence(value, field)
    for j, item in enumerate(items):
        if not isinstance(item, str) or not item:
            raise f.error(f"{field}[{j}]", "a DNS name")
    return tuple(items)


def _solver(f: Fields, raw: Any, field: str) -> SolverSpec:
    solver = f.mapping(raw, field, required=True)
    sel = f.mapping(solver.get("selector"), f"{field}.selector")
    labels = f.mapping(sel.get("matchLabels"), f"{field}.selector.matchLabels")
    for key, value in labels.items():
        if not isinstance(value, str):
            raise f.error(f"{field}.selector.matchLabels.{key}", "a string label value")
    selector = SolverSelector(
        dns_names=_names(f, sel.get("dnsNames"), f"{field}.selector.dnsNames"),
        dns_zones=_names(f, sel.get("dnsZones"), f"{field}.selector.dnsZones"),
        match_labels=tuple(sorted((str(k), str(v)) for k, v in labels.items())))
    if "dns01" in solver:
        dns01 = f.mapping(solver.get("dns01"), f"{field}.dns01")
        return SolverSpec("dns-01", selector, provider=_provider(dns01, "cnameStrategy"),
                          config=dict(dns01),
                          origin=(f.ref.source, str(f.ref), f"{field}.dns01"))
    if "http01" not in solver:
        raise f.error(field, "an 'http01' or 'dns01' solver")
    http01 = f.mapping(solver.get("http01"), f"{field}.http01")
    ingress = f.mapping(http01.get("ingress"), f"{field}.http01.ingress")
    klass = ingress.get("ingressClassName") or ingress.get("class")
    if klass is not None and not isinstance(klass, str):
        raise f.error(f"{field}.http01.ingress.ingressClassName", "the name of an IngressClass")
    path_type = PathType.EXACT
    if ingress.get("pathType") is not None:
        try:
            path_type = PathType(ingress["pathType"])
        except ValueError:
            raise f.error(f"{field}.http01.ingress.pathType",
                          "Exact or ImplementationSpecific") from None
    return SolverSpec("http-01", selector, path_type, klass, provider=_provider(http01),
                      config=dict(http01))


def _provider(block: Mapping[str, Any], *options: str) -> str | None:
    """The key of a solver block naming its provider (the first one that is no option)."""
    return next((str(key) for key in block if key not in options), None)
