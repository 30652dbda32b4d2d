"""Certificate objects <-> `CertificateSpec`: the one conversion both modes use.

- `spec_of`: a Certificate's body -> the spec (cluster mode reads every Certificate with it;
  standalone mode reads Certificate manifests with it, after `parse_certificate`'s stricter
  checks of a file a person wrote).
- `certificate_spec`: a spec -> a Certificate's `spec` (the Ingress shim writes Certificates
  with it). `spec_of` reads back what `certificate_spec` writes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from certop.core import names
from certop.core.duration import format_duration, parse_duration
from certop.core.errors import ConfigError
from certop.core.ingress import Fields, host_problem, object_ref
from certop.core.models import CertificateSpec, Fqdn, KeyAlgorithm, ObjectRef, SecretName

CERTIFICATE_API_VERSIONS = ("certop.dev/v1", "cert-manager.io/v1")
ISSUER_GROUPS = (None, "", "certop.dev", "cert-manager.io")


def spec_of(body: Mapping[str, Any], source: str = "") -> CertificateSpec:
    """The spec of a Certificate object; raises ConfigError naming the field."""
    spec = body.get("spec") or {}
    meta = body["metadata"]
    where = f"Certificate {meta.get('namespace')}/{meta.get('name')}"
    dns_names = spec.get("dnsNames") or []
    if not dns_names or not all(isinstance(n, str) for n in dns_names):
        raise ConfigError(source, where, "spec.dnsNames", "at least one DNS name")
    ref = spec.get("issuerRef") or {}
    if not ref.get("name"):
        raise ConfigError(source, where, "spec.issuerRef.name", "the name of an issuer")
    key = spec.get("privateKey") or {}
    algo = KeyAlgorithm.ECDSA_P256
    try:
        if key.get("algorithm") == "RSA":
            algo = KeyAlgorithm(f"RSA-{key.get('size') or 2048}")
        elif key.get("size") not in (None, 256):
            raise ValueError(key.get("size"))
    except ValueError:
        raise ConfigError(source, where, "spec.privateKey.size",
                          "256 for ECDSA; 2048, 3072 or 4096 for RSA") from None
    if key.get("rotationPolicy") not in (None, "Always", "Never"):
        raise ConfigError(source, where, "spec.privateKey.rotationPolicy", "Always or Never")
    renew_before = None
    if spec.get("renewBefore"):
        try:
            renew_before = parse_duration(str(spec["renewBefore"]))
        except ValueError:
            raise ConfigError(source, where, "spec.renewBefore",
                              "a duration such as 720h or 360h30m") from None
    return CertificateSpec(
        namespace=meta["namespace"], secret_name=SecretName(spec.get("secretName", "")),
        hosts=tuple(sorted({Fqdn(n.lower()) for n in dns_names})), issuer=ref["name"],
        issuer_kind=ref.get("kind") or "ClusterIssuer", key_algorithm=algo,
        renew_before=renew_before, reuse_key=key.get("rotationPolicy") == "Never",
        owners=tuple(ObjectRef("Ingress", meta["namespace"], str(o.get("name")))
                     for o in meta.get("ownerReferences") or [] if o.get("kind") == "Ingress"))


def certificate_spec(spec: CertificateSpec) -> dict[str, Any]:
    """The `spec` of the Certificate object for `spec` (what `spec_of` reads back)."""
    algorithm, size = ("ECDSA", 256) if spec.key_algorithm is KeyAlgorithm.ECDSA_P256 else (
        "RSA", int(spec.key_algorithm.value.split("-")[1]))
    wanted: dict[str, Any] = {
        "secretName": spec.secret_name,
        "dnsNames": list(spec.hosts),
        "issuerRef": {"name": spec.issuer, "kind": spec.issuer_kind, "group": "certop.dev"},
        "privateKey": {"algorithm": algorithm, "size": size,
                       "rotationPolicy": "Never" if spec.reuse_key else "Always"},
    }
    if spec.renew_before is not None:
        wanted["renewBefore"] = format_duration(spec.renew_before)
    return wanted


def parse_certificate(doc: Mapping[str, Any], source: str = ""
                      ) -> tuple[ObjectRef, CertificateSpec]:
    """A Certificate manifest from a file (standalone mode): the shape checked field by field
    (as the API server's schema would), then read with `spec_of`. Raises ConfigError naming
    `source`, the Certificate and the field."""
    ref = object_ref(doc, source)
    f = Fields(ref)
    if doc.get("apiVersion") not in CERTIFICATE_API_VERSIONS:
        raise f.error("apiVersion", f"one of {', '.join(CERTIFICATE_API_VERSIONS)}")
    spec = f.mapping(doc.get("spec"), "spec", required=True)
    secret = f.string(spec.get("secretName"), "spec.secretName")
    problem = names.subdomain_problem(secret)
    if problem is not None:
        raise f.error("spec.secretName", f"a Secret name: {problem}")
    dns_names = f.sequence(spec.get("dnsNames"), "spec.dnsNames")
    if not dns_names:
        raise f.error("spec.dnsNames", "at least one DNS name")
    for i, name in enumerate(dns_names):
        problem = host_problem(name)
        if problem is not None:
            raise f.error(f"spec.dnsNames[{i}]", problem)
    issuer = f.mapping(spec.get("issuerRef"), "spec.issuerRef", required=True)
    f.string(issuer.get("name"), "spec.issuerRef.name")
    if issuer.get("kind") not in (None, "ClusterIssuer", "Issuer"):
        raise f.error("spec.issuerRef.kind", "ClusterIssuer or Issuer")
    if issuer.get("group") not in ISSUER_GROUPS:
        raise f.error("spec.issuerRef.group", "certop.dev or cert-manager.io")
    key = f.mapping(spec.get("privateKey"), "spec.privateKey")
    if key.get("algorithm") not in (None, "ECDSA", "RSA"):
        raise f.error("spec.privateKey.algorithm", "ECDSA or RSA")
    if key.get("size") is not None and (isinstance(key.get("size"), bool)
                                        or not isinstance(key.get("size"), int)):
        raise f.error("spec.privateKey.size", "256 for ECDSA; 2048, 3072 or 4096 for RSA")
    if spec.get("renewBefore") is not None and not isinstance(spec.get("renewBefore"), str):
        raise f.error("spec.renewBefore", "a duration such as 720h or 360h30m")
    body = {**doc, "metadata": {**doc["metadata"], "namespace": ref.namespace}}
    return ref, spec_of(body, source)
