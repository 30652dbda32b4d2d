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

from certop.core.ingress import Fields, object_ref
from certop.core.models import AcmeIssuer, ExternalAccountBinding, PathType

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

    eab = None
    if acme.get("externalAccountBinding") is not None:
        ef = "spec.acme.externalAccountBinding"
        raw_eab = f.mapping(acme["externalAccountBinding"], ef)
        kid = f.string(raw_eab.get("keyID"), f"{ef}.keyID")
        sref = f.mapping(raw_eab.get("keySecretRef"), f"{ef}.keySecretRef", required=True)
        sname = f.string(sref.get("name"), f"{ef}.keySecretRef.name")
        skey = f.string(sref.get("key"), f"{ef}.keySecretRef.key", required=False) or "secret"
        assert kid is not None and sname is not None
        data = secrets(resource_namespace, sname)
        if data is None:
            raise f.error(f"{ef}.keySecretRef.name",
                          f"an existing Secret {resource_namespace}/{sname}")
        if skey not in data:
            raise f.error(f"{ef}.keySecretRef.key", f"a key present in Secret {sname}")
        hmac = data[skey].decode().strip()
        eab = ExternalAccountBinding(kid, hmac)

    solver_types: list[str] = []
    path_type = PathType.EXACT
    ingress_class: str | None = None
    for i, raw in enumerate(f.sequence(acme.get("solvers"), "spec.acme.solvers")):
        solver = f.mapping(raw, f"spec.acme.solvers[{i}]", required=True)
        if "http01" in solver:
            solver_types.append("http-01")
            http01 = f.mapping(solver.get("http01"), f"spec.acme.solvers[{i}].http01")
            ingress = f.mapping(http01.get("ingress"), f"spec.acme.solvers[{i}].http01.ingress")
            klass = ingress.get("ingressClassName") or ingress.get("class")
            if klass is not None:
                if not isinstance(klass, str):
                    raise f.error(f"spec.acme.solvers[{i}].http01.ingress.ingressClassName",
                                  "the name of an IngressClass")
                ingress_class = klass
            if ingress.get("pathType") is not None:
                try:
                    path_type = PathType(ingress["pathType"])
                except ValueError:
                    raise f.error(f"spec.acme.solvers[{i}].http01.ingress.pathType",
                                  "Exact or ImplementationSpecific") from None
        elif "dns01" in solver:
            solver_types.append("dns-01")
        else:
            raise f.error(f"spec.acme.solvers[{i}]", "an 'http01' or 'dns01' solver")
    return AcmeIssuer(
        ref=ref,
        server=server,
        email=email,
        ca_bundle_pem=ca_bundle,
        skip_tls_verify=skip,
        account_key_secret=key_secret,
        eab=eab,
        solver_types=tuple(solver_types) or ("http-01",),
        http01_path_type=path_type,
        http01_ingress_class=ingress_class,
    )
