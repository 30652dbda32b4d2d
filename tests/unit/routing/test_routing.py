"""The Ingress v1 path-matching table and the conformance scenarios, on the pure table."""

from __future__ import annotations

import pytest
from spec_table import SPEC_TABLE

from certop.core.models import (
    Ingress,
    IngressPath,
    IngressRule,
    IngressTLS,
    ObjectRef,
    PathType,
    SecretName,
    ServiceBackend,
)
from certop.core.routing import build, normalize_host

E, P, IS = PathType.EXACT, PathType.PREFIX, PathType.IMPLEMENTATION_SPECIFIC


def ing(name: str, host: str | None, paths: list[tuple[str, PathType, str]],
        default: str | None = None, tls: list[str] | None = None, created: str = "",
        annotations: dict[str, str] | None = None) -> Ingress:
    rule = IngressRule(host, tuple(IngressPath(p, t, ServiceBackend("ns", b, 80))
                                   for p, t, b in paths))
    return Ingress(
        ref=ObjectRef("Ingress", "ns", name),
        annotations=annotations or {},
        ingress_class=None,
        rules=(rule,) if paths else (),
        tls=(IngressTLS(tuple(tls), SecretName("s")),) if tls else (),
        default_backend=ServiceBackend("ns", default, 80) if default else None,
        creation=created,
    )


def served(table_ingresses: list[Ingress], host: str, path: str) -> str | None:
    route = build(table_ingresses).match(host, path)
    return route.backend.name if route else None


# The official table (kubernetes.io/docs/concepts/services-networking/ingress/#examples).
@pytest.mark.parametrize(("rules", "request_path", "expected"), SPEC_TABLE)
def test_path_matching_follows_the_spec_table(rules: list[tuple[str, PathType, str]],
                                              request_path: str, expected: str | None) -> None:
    assert served([ing("x", "h.example", rules)], "h.example", request_path) == expected


HOST_RULES = [
    ing("wild", "*.foo.com", [("/", P, "wildcard-foo-com")]),
    ing("exact", "foo.bar.com", [("/", P, "foo-bar-com")]),
]


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        pytest.param("foo.bar.com", "foo-bar-com", id="exact-host"),
        pytest.param("FOO.bar.com:8443", "foo-bar-com", id="case-and-port-ignored"),
        pytest.param("subdomain.bar.com", None, id="unknown-host-404"),
        pytest.param("bar.foo.com", "wildcard-foo-com", id="wildcard-one-label"),
        pytest.param("baz.bar.foo.com", None, id="wildcard-not-two-labels"),
        pytest.param("foo.com", None, id="wildcard-not-apex"),
    ],
)
def test_host_rules_match_the_conformance_scenarios(host: str, expected: str | None) -> None:
    assert served(HOST_RULES, host, "/") == expected


def test_an_exact_host_beats_a_wildcard() -> None:
    table = [ing("w", "*.ex.com", [("/", P, "wild")]), ing("e", "a.ex.com", [("/", P, "a")])]
    assert served(table, "a.ex.com", "/x") == "a"
    assert served(table, "b.ex.com", "/x") == "wild"


def test_default_backend_serves_every_host_and_path() -> None:
    table = [ing("d", None, [], default="echo")]
    assert served(table, "my-host", "/") == "echo"
    assert served(table, "some-host", "/sub-path") == "echo"


def test_an_ingress_default_backend_serves_unmatched_paths_of_its_hosts() -> None:
    table = [ing("x", "h.example", [("/api", P, "api")], default="fallback")]
    assert served(table, "h.example", "/api/v1") == "api"
    assert served(table, "h.example", "/other") == "fallback"


def test_rules_without_host_apply_to_hosts_no_rule_names() -> None:
    table = [ing("any", None, [("/", P, "any")]), ing("h", "h.example", [("/x", E, "h")])]
    assert served(table, "other.example", "/") == "any"
    assert served(table, "h.example", "/x") == "h"


def test_ingresses_for_one_host_merge_and_the_older_wins_a_conflict() -> None:
    older = ing("older", "h.example", [("/a", P, "old")], created="2026-01-01T00:00:00Z")
    newer = ing("newer", "h.example", [("/a", P, "new"), ("/b", P, "b")],
                created="2026-02-01T00:00:00Z")
    for order in ([older, newer], [newer, older]):
        table = build(order)
        assert table.match("h.example", "/a").backend.name == "old"  # type: ignore[union-attr]
        assert table.match("h.example", "/b").backend.name == "b"  # type: ignore[union-attr]
        assert len(table.conflicts) == 1 and "Ingress ns/newer ignored" in table.conflicts[0]


def test_tls_hosts_redirect_unless_the_ingress_opts_out() -> None:
    on = build([ing("a", "a.example", [("/", P, "a")], tls=["a.example"])])
    off = build([ing("b", "b.example", [("/", P, "b")], tls=["b.example"],
                     annotations={"certop.dev/ssl-redirect": "false"})])
    plain = build([ing("c", "c.example", [("/", P, "c")])])
    assert on.lookup("a.example").redirect
    assert not off.lookup("b.example").redirect
    assert not plain.lookup("c.example").redirect


@pytest.mark.parametrize(("raw", "host"), [("Example.COM", "example.com"),
                                           ("example.com:80", "example.com"),
                                           ("example.com.", "example.com"),
                                           ("[::1]:443", "[::1]")])
def test_hosts_are_normalized(raw: str, host: str) -> None:
    assert normalize_host(raw) == host


def test_a_hosts_own_answers_use_the_hsts_of_the_oldest_ingress_naming_it() -> None:
    table = build([
        ing("new", "a.example", [("/x", P, "x")], created="2",
            annotations={"certop.dev/hsts": "max-age=1"}),
        ing("old", "a.example", [("/", P, "web")], created="1",
            annotations={"certop.dev/hsts": "false"}),
        ing("tls-only", None, [("/", P, "web")], tls=["b.example"],
            annotations={"certop.dev/hsts": "max-age=2"}),
    ], hsts_default="max-age=9")
    assert table.lookup("a.example").hsts is None
    assert table.lookup("b.example").hsts == b"max-age=2"
    assert table.lookup("unknown.example").hsts == b"max-age=9"  # the --hsts default
    assert build([], None).lookup("unknown.example").hsts is None
