"""cert-manager's solver selector rules (core.solvers.select) and their parsing."""

from __future__ import annotations

from typing import Any

import pytest

from certop.core.errors import ConfigError
from certop.core.issuers import parse_issuer
from certop.core.models import PathType, SolverSelector, SolverSpec
from certop.core.solvers import select

DEFAULT = SolverSpec("http-01", http01_ingress_class="default")
NAMES = SolverSpec("http-01", SolverSelector(dns_names=("www.sys.example.com",)),
                   http01_ingress_class="names")
ZONE = SolverSpec("http-01", SolverSelector(dns_zones=("example.com",)),
                  http01_ingress_class="zone")
SUBZONE = SolverSpec("dns-01", SolverSelector(dns_zones=("sys.example.com",)))
LABELLED = SolverSpec("http-01", SolverSelector(dns_zones=("example.com",),
                                                match_labels=(("team", "a"),)),
                      http01_ingress_class="labelled")
ALL = (DEFAULT, NAMES, ZONE, SUBZONE, LABELLED)


@pytest.mark.parametrize(("host", "labels", "chosen"), [
    ("other.test", {}, DEFAULT),                 # only the default is for it
    ("www.sys.example.com", {}, NAMES),          # an exact name beats every zone
    ("api.sys.example.com", {}, SUBZONE),        # the longest zone wins
    ("WWW.Example.COM.", {}, ZONE),              # names compare without case or final dot
    ("*.example.com", {}, ZONE),                 # a wildcard is in its zone
    ("shop.example.com", {"team": "a"}, LABELLED),  # same zone, more matching labels
    ("shop.example.com", {"team": "b"}, ZONE),   # labels that do not match rule it out
])
def test_the_most_specific_solver_wins(host: str, labels: dict[str, str],
                                       chosen: SolverSpec) -> None:
    assert select(ALL, host, labels) is chosen


def test_ties_go_to_the_first_listed_and_no_match_is_none() -> None:
    first = SolverSpec("http-01", SolverSelector(dns_zones=("example.com",)))
    second = SolverSpec("dns-01", SolverSelector(dns_zones=("example.com",)))
    assert select((first, second), "a.example.com") is first
    assert select((second, first), "a.example.com") is second
    assert select((ZONE, NAMES), "other.test") is None
    assert select((), "a.example.com") is None


def _issuer(solvers: list[dict[str, Any]]) -> Any:
    return parse_issuer({"apiVersion": "certop.dev/v1", "kind": "ClusterIssuer",
                         "metadata": {"name": "le"},
                         "spec": {"acme": {"server": "https://ca.test/dir",
                                           "solvers": solvers}}},
                        "f.yaml", lambda ns, name: None, "certop")


def test_solvers_parse_with_their_selectors_in_order() -> None:
    issuer = _issuer([
        {"selector": {"dnsZones": ["example.com"], "matchLabels": {"team": "a"}},
         "http01": {"ingress": {"ingressClassName": "nginx",
                                "pathType": "ImplementationSpecific"}}},
        {"selector": {"dnsNames": ["a.test"]}, "dns01": {"rfc2136": {"nameserver": "x"}}},
        {"http01": {"ingress": {"class": "traefik"}}},
    ])
    nginx, dns, default = issuer.solvers
    assert nginx == SolverSpec("http-01", SolverSelector(dns_zones=("example.com",),
                                                         match_labels=(("team", "a"),)),
                               PathType.IMPLEMENTATION_SPECIFIC, "nginx", "ingress",
                               {"ingress": {"ingressClassName": "nginx",
                                            "pathType": "ImplementationSpecific"}})
    assert dns.challenge_type == "dns-01" and dns.selector.dns_names == ("a.test",)
    assert default == SolverSpec("http-01", SolverSelector(), PathType.EXACT, "traefik",
                                 "ingress", {"ingress": {"class": "traefik"}})
    assert issuer.solver_types == ("http-01", "dns-01")
    assert _issuer([]).solvers == (SolverSpec(),)


def test_a_dns01_block_reaches_the_solver_spec_intact() -> None:
    """The provider and every option of a dns01 block are kept for the solver built from it
    (they were dropped: the spec said only "dns-01")."""
    block = {"cnameStrategy": "Follow",
             "rfc2136": {"nameserver": "10.0.0.53:53", "tsigKeyName": "certop",
                         "tsigSecretSecretRef": {"name": "tsig", "key": "secret"}}}
    (dns,) = _issuer([{"dns01": block}]).solvers
    assert dns.challenge_type == "dns-01"
    assert dns.provider == "rfc2136"
    assert dns.config == block
    assert dns.registry_names == ("dns-01.rfc2136", "dns-01")
    assert SolverSpec().registry_names == ("http-01",)


@pytest.mark.parametrize(("solver", "field"), [
    ({"selector": {"dnsNames": "a.test"}, "http01": {}}, "spec.acme.solvers[0].selector.dnsNames"),
    ({"selector": {"dnsZones": [3]}, "http01": {}}, "spec.acme.solvers[0].selector.dnsZones[0]"),
    ({"selector": {"matchLabels": {"a": 1}}, "http01": {}},
     "spec.acme.solvers[0].selector.matchLabels.a"),
    ({"selector": {}}, "spec.acme.solvers[0]"),
])
def test_a_bad_selector_names_its_field(solver: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        _issuer([solver])
    assert info.value.field == field
