from __future__ import annotations

import pytest

from certop.core.desired import certificate_specs
from certop.core.errors import ConfigError
from certop.core.models import (
    AcmeIssuer,
    Ingress,
    IngressPath,
    IngressRule,
    IngressTLS,
    KeyAlgorithm,
    ObjectRef,
    PathType,
    SecretName,
    ServiceBackend,
    SolverSpec,
)

ISSUERS = {
    "le": AcmeIssuer(ObjectRef("ClusterIssuer", "", "le"), "https://ca.test/dir", None),
    "dns": AcmeIssuer(ObjectRef("ClusterIssuer", "", "dns"), "https://ca.test/dir", None,
                      solvers=(SolverSpec("dns-01"),)),
}


def ing(name: str, hosts: list[str], secret: str, annotations: dict[str, str] | None = None,
        rule_hosts: list[str] | None = None, namespace: str = "ns") -> Ingress:
    backend = ServiceBackend(namespace, "web", 80)
    return Ingress(
        ref=ObjectRef("Ingress", namespace, name, "f.yaml"),
        annotations=annotations if annotations is not None else
        {"certop.dev/cluster-issuer": "le"},
        ingress_class=None,
        rules=tuple(IngressRule(h, (IngressPath("/", PathType.PREFIX, backend),))
                    for h in (rule_hosts if rule_hosts is not None else hosts)),
        tls=(IngressTLS(tuple(hosts), SecretName(secret)),),
        default_backend=None,
    )


def test_one_certificate_per_tls_entry_with_sorted_unique_hosts() -> None:
    d = certificate_specs([ing("a", ["b.example", "a.example", "b.example"], "s")], ISSUERS,
                          None)
    (spec,) = d.specs
    assert spec.hosts == ("a.example", "b.example")
    assert spec.issuer == "le" and spec.key_algorithm is KeyAlgorithm.ECDSA_P256


def test_two_ingresses_with_the_same_secret_and_hosts_share_one_certificate() -> None:
    d = certificate_specs([ing("a", ["x.example"], "s"), ing("b", ["x.example"], "s")],
                          ISSUERS, None)
    (spec,) = d.specs
    assert [o.name for o in spec.owners] == ["a", "b"]


def test_the_same_secret_with_other_hosts_is_an_error_naming_both() -> None:
    with pytest.raises(ConfigError) as info:
        certificate_specs([ing("a", ["x.example"], "s"), ing("b", ["y.example"], "s")],
                          ISSUERS, None)
    assert info.value.obj == "Ingress ns/b"
    assert info.value.field == "spec.tls[0].secretName"
    assert "Ingress ns/a" in str(info.value)


def test_same_secret_name_in_other_namespaces_are_different_certificates() -> None:
    d = certificate_specs([ing("a", ["x.example"], "s", namespace="one"),
                           ing("a", ["y.example"], "s", namespace="two")], ISSUERS, None)
    assert len(d.specs) == 2


def test_a_wildcard_host_needs_a_dns01_solver() -> None:
    with pytest.raises(ConfigError, match=r"spec.tls\[0\].hosts\[0\]: a wildcard host"):
        certificate_specs([ing("a", ["*.example.com"], "s")], ISSUERS, None)
    wild = ing("a", ["*.example.com"], "s", {"certop.dev/cluster-issuer": "dns"})
    assert certificate_specs([wild], ISSUERS, None).specs


def test_a_tls_host_no_rule_serves_is_a_warning() -> None:
    d = certificate_specs([ing("a", ["x.example", "y.example"], "s",
                               rule_hosts=["x.example"])], ISSUERS, None)
    assert len(d.warnings) == 1 and "y.example is served by no rule" in d.warnings[0]


def test_an_unknown_issuer_names_the_annotation() -> None:
    with pytest.raises(ConfigError) as info:
        bad = ing("a", ["x.example"], "s", {"cert-manager.io/cluster-issuer": "nope"})
        certificate_specs([bad], ISSUERS, None)
    assert info.value.field == "metadata.annotations[cert-manager.io/cluster-issuer]"


def test_cluster_mode_ignores_ingresses_without_a_trigger_annotation() -> None:
    plain = ing("a", ["x.example"], "s", annotations={})
    assert certificate_specs([plain], ISSUERS, "le", require_annotation=True).specs == ()
    assert len(certificate_specs([plain], ISSUERS, "le").specs) == 1


def test_tls_acme_annotation_uses_the_default_issuer() -> None:
    d = certificate_specs([ing("a", ["x.example"], "s", {"kubernetes.io/tls-acme": "true"})],
                          ISSUERS, "le", require_annotation=True)
    assert d.specs[0].issuer == "le"


def test_rsa_keys_by_annotation() -> None:
    d = certificate_specs([ing("a", ["x.example"], "s", {
        "certop.dev/cluster-issuer": "le", "cert-manager.io/private-key-algorithm": "RSA",
        "cert-manager.io/private-key-size": "3072"})], ISSUERS, None)
    assert d.specs[0].key_algorithm is KeyAlgorithm.RSA3072


def test_renew_before_and_rotation_policy_by_annotation() -> None:
    import datetime as dt

    d = certificate_specs([ing("a", ["x.example"], "s", {
        "certop.dev/cluster-issuer": "le", "cert-manager.io/renew-before": "720h",
        "cert-manager.io/private-key-rotation-policy": "Never"})], ISSUERS, None)
    assert d.specs[0].renew_before == dt.timedelta(days=30)
    assert d.specs[0].reuse_key
    plain = certificate_specs([ing("a", ["x.example"], "s")], ISSUERS, None).specs[0]
    assert plain.renew_before is None and not plain.reuse_key


@pytest.mark.parametrize(("key", "value"), [
    ("cert-manager.io/renew-before", "a month"),
    ("cert-manager.io/renew-before", "-5h"),
    ("certop.dev/renew-before", "0s"),
    ("cert-manager.io/private-key-rotation-policy", "Sometimes"),
])
def test_a_bad_renewal_annotation_names_itself(key: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        certificate_specs([ing("a", ["x.example"], "s", {
            "certop.dev/cluster-issuer": "le", key: value})], ISSUERS, None)
    assert info.value.field == f"metadata.annotations[{key}]"


def test_a_host_no_solver_selector_is_for_is_an_error_naming_it() -> None:
    from certop.core.models import SolverSelector

    only = {"zoned": AcmeIssuer(ObjectRef("ClusterIssuer", "", "zoned"), "https://ca.test/dir",
                                None, solvers=(SolverSpec("http-01", SolverSelector(
                                    dns_zones=("example.com",))),))}
    ok = ing("a", ["www.example.com"], "s", {"certop.dev/cluster-issuer": "zoned"})
    assert certificate_specs([ok], only, None).specs
    bad = ing("a", ["www.example.com", "shop.example.org"], "s",
              {"certop.dev/cluster-issuer": "zoned"})
    with pytest.raises(ConfigError) as info:
        certificate_specs([bad], only, None)
    assert info.value.field == "spec.tls[0].hosts[1]"
    assert "shop.example.org" in info.value.expected
