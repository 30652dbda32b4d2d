"""From Ingresses to the certificates they need (cert-manager's ingress-shim, made pure).

One `CertificateSpec` per `spec.tls[]` entry with a `secretName`; entries naming the same Secret
with the same hosts (in any Ingress of the namespace) share one certificate, so identical host
sets never cause duplicate orders. The same Secret with different hosts is an error naming both
places. Who calls: the standalone loader and the operator's Ingress shim.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from certop.core import annotations as ann
from certop.core.errors import ConfigError
from certop.core.models import (
    AcmeIssuer,
    CertificateSpec,
    Fqdn,
    Ingress,
    ObjectRef,
)
from certop.core.solvers import refusal


@dataclass(frozen=True)
class Desired:
    specs: tuple[CertificateSpec, ...]
    warnings: tuple[str, ...]


def _served_by_rule(host: str, ingress: Ingress) -> bool:
    return any(rule.host == host for rule in ingress.rules)


def certificate_specs(
    ingresses: Iterable[Ingress],
    issuers: Mapping[str, AcmeIssuer] | None,
    default_issuer: str | None,
    *,
    require_annotation: bool = False,
    supplied: frozenset[tuple[str, str]] = frozenset(),
) -> Desired:
    """The certificates needed; raises ConfigError for the first unusable entry.

    `require_annotation` is cluster mode (only annotated Ingresses trigger); standalone mode
    gives every `tls[]` entry a certificate from the chosen or default issuer. `issuers` None
    (cluster mode) defers checking the issuer to issuance, where the Certificate's status
    reports it. Entries whose
    (namespace, secretName) is in `supplied` are served with what the user brought: no order.
    """
    by_key: dict[tuple[str, str], tuple[CertificateSpec, str]] = {}
    warnings: list[str] = []
    for ing in ingresses:
        choice = ann.issuer_choice(ing.annotations)
        if choice is None and require_annotation:
            continue
        where = f"{ing.ref.source}: {ing.ref}" if ing.ref.source else str(ing.ref)
        issuer_name = choice.name if choice and choice.name else default_issuer
        for i, tls in enumerate(ing.tls):
            field = f"spec.tls[{i}]"
            if tls.secret_name is None or not tls.hosts:
                continue
            if (ing.ref.namespace, tls.secret_name) in supplied:
                for j, host in enumerate(tls.hosts):
                    if not _served_by_rule(host, ing):
                        warnings.append(f"{where}: {field}.hosts[{j}]: {host} is served by "
                                        "no rule")
                continue
            if issuer_name is None:
                raise ConfigError(
                    ing.ref.source, str(ing.ref), "metadata.annotations",
                    "an issuer: annotate certop.dev/cluster-issuer, load a ClusterIssuer, "
                    "or pass --acme-directory",
                )
            issuer = issuers.get(issuer_name) if issuers is not None else None
            if issuer is None and issuers is not None:
                raise ConfigError(
                    ing.ref.source, str(ing.ref),
                    f"metadata.annotations[{choice.annotation}]" if choice and choice.annotation
                    else "metadata.annotations",
                    f"the name of a known ClusterIssuer, not {issuer_name!r} "
                    f"(known: {', '.join(sorted(issuers)) or 'none'})",
                )
            algo, bad = ann.key_algorithm(ing.annotations)
            if bad is not None:
                raise ConfigError(ing.ref.source, str(ing.ref), f"metadata.annotations[{bad}]",
                                  "ECDSA (256) or RSA (2048, 3072, 4096)")
            try:
                renew_before = ann.renew_before(ing.annotations)
                reuse_key = ann.reuse_key(ing.annotations)
            except ann.AnnotationError as exc:
                raise ConfigError(ing.ref.source, str(ing.ref),
                                  f"metadata.annotations[{exc.key}]", exc.expected) from None
            for j, host in enumerate(tls.hosts):
                refused = refusal(issuer.solvers, host) if issuer is not None else None
                if refused is not None:
                    raise ConfigError(ing.ref.source, str(ing.ref), f"{field}.hosts[{j}]",
                                      f"{refused} (issuer {issuer_name!r})")
                if not _served_by_rule(host, ing):
                    warnings.append(f"{where}: {field}.hosts[{j}]: {host} is served by no rule")
            hosts = tuple(sorted({Fqdn(h) for h in tls.hosts}))
            spec = CertificateSpec(
                namespace=ing.ref.namespace,
                secret_name=tls.secret_name,
                hosts=hosts,
                issuer=issuer_name,
                issuer_kind="ClusterIssuer" if choice is None or choice.cluster else "Issuer",
                key_algorithm=algo,
                owners=(ing.ref,),
                renew_before=renew_before,
                reuse_key=reuse_key,
            )
            prior = by_key.get(spec.key)
            if prior is None:
                by_key[spec.key] = (spec, f"{where}: {field}")
                continue
            old, old_where = prior
            if old.hosts != spec.hosts or (old.issuer, old.issuer_kind) != (spec.issuer,
                                                                             spec.issuer_kind):
                raise ConfigError(
                    ing.ref.source, str(ing.ref), f"{field}.secretName",
                    f"Secret {tls.secret_name!r} is already used with other hosts or issuer "
                    f"at {old_where}; one Secret holds one certificate",
                )
            by_key[spec.key] = (replace(old, owners=(*old.owners, ing.ref)), old_where)
    return Desired(tuple(s for s, _ in by_key.values()), tuple(warnings))


def with_certificates(
    desired: Desired,
    certificates: Iterable[tuple[ObjectRef, CertificateSpec]],
    issuers: Mapping[str, AcmeIssuer],
    *,
    supplied: frozenset[tuple[str, str]] = frozenset(),
) -> Desired:
    """`desired` (from Ingresses) with the certificates Certificate objects ask for
    (standalone mode's Certificate manifests); raises ConfigError naming the Certificate.

    A Certificate naming the Secret of a `tls[]` entry must agree on its hosts and issuer
    (one Secret holds one certificate); it then says how the certificate is made (key,
    renewBefore). A Certificate whose Secret the user brings is served with that: no order.
    """
    by_key: dict[tuple[str, str], tuple[CertificateSpec, str]] = {
        s.key: (s, ", ".join(str(o) for o in s.owners) or "an Ingress") for s in desired.specs}
    for ref, spec in certificates:
        if spec.key in supplied:
            continue
        issuer = issuers.get(spec.issuer)
        if issuer is None:
            raise ConfigError(ref.source, str(ref), "spec.issuerRef.name",
                              f"the name of a known ClusterIssuer, not {spec.issuer!r} "
                              f"(known: {', '.join(sorted(issuers)) or 'none'})")
        for j, host in enumerate(spec.hosts):
            refused = refusal(issuer.solvers, host)
            if refused is not None:
                raise ConfigError(ref.source, str(ref), f"spec.dnsNames[{j}]",
                                  f"{refused} (issuer {spec.issuer!r})")
        prior = by_key.get(spec.key)
        if prior is not None:
            old, old_where = prior
            if old.hosts != spec.hosts or old.issuer != spec.issuer:
                raise ConfigError(
                    ref.source, str(ref), "spec.secretName",
                    f"Secret {spec.secret_name!r} is already used with other hosts or issuer "
                    f"by {old_where}; one Secret holds one certificate")
            spec = replace(spec, owners=tuple(dict.fromkeys((*old.owners, *spec.owners))))
        by_key[spec.key] = (spec, str(ref))
    return Desired(tuple(s for s, _ in by_key.values()), desired.warnings)
