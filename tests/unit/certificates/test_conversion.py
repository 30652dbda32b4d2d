"""One conversion between Certificate objects and specs, read back as written, used by both
modes."""

from __future__ import annotations

import datetime

import pytest

from certop.core.certificates import certificate_spec, parse_certificate, spec_of
from certop.core.models import CertificateSpec, Fqdn, KeyAlgorithm, SecretName

SPECS = [
    CertificateSpec("shop", SecretName("web-tls"), (Fqdn("a.test"), Fqdn("b.test")), "le"),
    CertificateSpec("shop", SecretName("api-tls"), (Fqdn("api.test"),), "ns-issuer",
                    KeyAlgorithm.RSA3072, issuer_kind="Issuer",
                    renew_before=datetime.timedelta(hours=360, minutes=30), reuse_key=True),
]


@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_spec_of_reads_back_what_certificate_spec_writes(spec: CertificateSpec) -> None:
    body = {"metadata": {"name": spec.secret_name, "namespace": spec.namespace},
            "spec": certificate_spec(spec)}
    assert spec_of(body) == spec


@pytest.mark.parametrize("spec", SPECS, ids=str)
@pytest.mark.parametrize("api", ["certop.dev/v1", "cert-manager.io/v1"])
def test_a_certificate_manifest_reads_as_cluster_mode_reads_it(spec: CertificateSpec,
                                                              api: str) -> None:
    doc = {"apiVersion": api, "kind": "Certificate",
           "metadata": {"name": "c", "namespace": spec.namespace},
           "spec": certificate_spec(spec)}
    ref, parsed = parse_certificate(doc, "site.yaml")
    assert (str(ref), ref.source) == (f"Certificate {spec.namespace}/c", "site.yaml")
    assert parsed == spec == spec_of(doc)


def test_the_operator_and_the_shim_use_the_core_conversion() -> None:
    from certop.core import shim
    from certop.k8s import certificates

    assert shim.certificate_spec is certificate_spec
    assert certificates._spec_of is spec_of
