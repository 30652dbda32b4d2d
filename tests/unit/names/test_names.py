"""Kubernetes names as the API server checks them (apimachinery's IsDNS1123Label and
IsDNS1123Subdomain): what a namespace, an object name and a Secret name may be."""

from __future__ import annotations

import pytest

from certop.core import names

GOOD_LABELS = ["a", "default", "kube-system", "0", "a1-b2", "x" * 63]
BAD_LABELS = [
    pytest.param("", id="empty"),
    pytest.param("x" * 64, id="64-characters"),
    pytest.param("Default", id="upper-case"),
    pytest.param("-a", id="leading-dash"),
    pytest.param("a-", id="trailing-dash"),
    pytest.param("a.b", id="dot"),
    pytest.param("..", id="dot-dot"),
    pytest.param("../../outside", id="climbs-out"),
    pytest.param("/etc", id="absolute"),
    pytest.param("a/b", id="slash"),
    pytest.param("a\n", id="trailing-newline"),
    pytest.param("a\0", id="nul"),
    pytest.param("ä", id="non-ascii"),
    pytest.param("a_b", id="underscore"),
]


@pytest.mark.parametrize("value", GOOD_LABELS)
def test_a_dns1123_label_is_accepted(value: str) -> None:
    assert names.label_problem(value) is None


@pytest.mark.parametrize("value", BAD_LABELS)
def test_anything_else_is_not_a_label(value: str) -> None:
    problem = names.label_problem(value)
    assert problem is not None and "at most 63 characters" in problem
    assert "\n" not in problem


GOOD_SUBDOMAINS = ["a", "web-tls", "www.example.com", "a.b-c.d", "0.0", "x" * 253,
                   ".".join(["x" * 63] * 4)[:253]]
BAD_SUBDOMAINS = [
    pytest.param("", id="empty"),
    pytest.param("x" * 254, id="254-characters"),
    pytest.param("Web-TLS", id="upper-case"),
    pytest.param(".", id="dot"),
    pytest.param("..", id="dot-dot"),
    pytest.param("a..b", id="empty-label"),
    pytest.param(".a", id="leading-dot"),
    pytest.param("a.", id="trailing-dot"),
    pytest.param("../x", id="climbs-out"),
    pytest.param("/abs", id="absolute"),
    pytest.param("a/b", id="slash"),
    pytest.param("web-tls\n", id="trailing-newline"),
    pytest.param("a-.b", id="label-ends-with-dash"),
    pytest.param("a b", id="space"),
]


@pytest.mark.parametrize("value", GOOD_SUBDOMAINS)
def test_a_dns1123_subdomain_is_accepted(value: str) -> None:
    assert names.subdomain_problem(value) is None


@pytest.mark.parametrize("value", BAD_SUBDOMAINS)
def test_anything_else_is_not_a_subdomain(value: str) -> None:
    problem = names.subdomain_problem(value)
    assert problem is not None and "at most 253 characters" in problem


@pytest.mark.parametrize("value", [None, 3, ["a"], {"a": 1}, True])
def test_a_name_that_is_not_a_string_is_refused(value: object) -> None:
    assert names.label_problem(value) is not None
    assert names.subdomain_problem(value) is not None


def test_the_bad_value_is_quoted_on_one_short_line() -> None:
    problem = names.subdomain_problem("a\n" * 5000)
    assert problem is not None
    assert "\n" not in problem and len(problem) < 400
    assert "'a\\na\\n" in problem
