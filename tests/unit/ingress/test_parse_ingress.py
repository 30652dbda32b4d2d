from __future__ import annotations

import copy
from typing import Any

import pytest

from certop.core.errors import ConfigError
from certop.core.ingress import parse_ingress
from certop.core.models import PathType, ServiceBackend

BASE: dict[str, Any] = {
    "apiVersion": "networking.k8s.io/v1",
    "kind": "Ingress",
    "metadata": {"name": "web", "namespace": "shop", "annotations": {"a": "b"}},
    "spec": {
        "ingressClassName": "certop",
        "tls": [{"hosts": ["shop.example.com"], "secretName": "shop-tls"}],
        "rules": [{
            "host": "shop.example.com",
            "http": {"paths": [
                {"path": "/", "pathType": "Prefix",
                 "backend": {"service": {"name": "web", "port": {"number": 80}}}},
                {"path": "/api", "pathType": "Exact",
                 "backend": {"service": {"name": "api", "port": {"name": "http"}}}},
            ]},
        }],
    },
}


def test_a_valid_ingress_becomes_plain_values() -> None:
    ing = parse_ingress(BASE, "site.yaml")
    assert str(ing.ref) == "Ingress shop/web"
    assert ing.ingress_class == "certop"
    assert ing.tls[0].hosts == ("shop.example.com",) and ing.tls[0].secret_name == "shop-tls"
    paths = ing.rules[0].paths
    assert paths[0].path_type is PathType.PREFIX
    assert paths[0].backend == ServiceBackend("shop", "web", 80)
    assert paths[1].backend == ServiceBackend("shop", "api", "http")


def _broken(path: list[Any], value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(BASE)
    target: Any = doc
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return doc


P0 = ["spec", "rules", 0, "http", "paths", 0]


@pytest.mark.parametrize(
    ("doc", "field", "expected"),
    [
        pytest.param(_broken([*P0, "pathType"], KeyError),
                     "spec.rules[0].http.paths[0].pathType", "required", id="missing-pathType"),
        pytest.param(_broken([*P0, "pathType"], "Regex"),
                     "spec.rules[0].http.paths[0].pathType", "not 'Regex'", id="bad-pathType"),
        pytest.param(_broken([*P0, "path"], "api"),
                     "spec.rules[0].http.paths[0].path", "starting with '/'", id="relative-path"),
        pytest.param(_broken(["spec", "rules", 0, "host"], "Shop.Example.com:443"),
                     "spec.rules[0].host", "DNS name", id="host-with-port"),
        pytest.param(_broken([*P0, "backend", "service", "port"], {"number": 0}),
                     "spec.rules[0].http.paths[0].backend.service.port.number", "1 to 65535",
                     id="port-zero"),
        pytest.param(_broken(["apiVersion"], "extensions/v1beta1"), "apiVersion",
                     "networking.k8s.io/v1", id="old-api"),
        pytest.param(_broken(["spec", "tls", 0, "secretName"], "Bad_Name"),
                     "spec.tls[0].secretName", "Secret name", id="bad-secret-name"),
        pytest.param(_broken(["metadata", "annotations", "a"], 1),
                     "metadata.annotations[a]", "a string", id="annotation-not-string"),
    ],
)
def test_bad_fields_are_named_with_what_is_expected(doc: dict[str, Any], field: str,
                                                    expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_ingress(doc, "site.yaml")
    message = str(info.value)
    assert message.startswith("site.yaml: Ingress shop/web: ")
    assert info.value.field == field
    assert expected in message


def test_wildcard_hosts_are_accepted_only_as_the_first_label() -> None:
    ok = parse_ingress(_broken(["spec", "rules", 0, "host"], "*.example.com"))
    assert ok.rules[0].host == "*.example.com"
    with pytest.raises(ConfigError):
        parse_ingress(_broken(["spec", "rules", 0, "host"], "www.*.example.com"))
