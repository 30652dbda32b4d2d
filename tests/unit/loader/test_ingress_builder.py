"""The tests build Ingress YAML in one place (tests/helpers/manifest_yaml.py), and what it builds
is the Ingress the tests mean."""

from __future__ import annotations

import ast
from pathlib import Path

from manifest_yaml import ingress_yaml, write_ingress

from certop.standalone import loader

TESTS = Path(__file__).resolve().parents[2]
HEAD = "apiVersion: networking.k8s.io/v1" + "\nkind: Ingress"


def test_write_ingress_builds_one_tls_entry_and_a_rule_per_host(tmp_path: Path) -> None:
    path = write_ingress(tmp_path / "ing.yaml", "shop", ["a.test", "b.test"], "shop-tls",
                         service="api", extra_annotations={"certop.dev/hsts": "false"})
    (ing,) = loader.load([path]).ingresses
    assert (ing.ref.namespace, ing.ref.name) == ("default", "shop")
    assert ing.annotations == {"certop.dev/cluster-issuer": "default",
                               "certop.dev/hsts": "false"}
    assert [(t.hosts, t.secret_name) for t in ing.tls] == [(("a.test", "b.test"), "shop-tls")]
    assert [r.host for r in ing.rules] == ["a.test", "b.test"]
    assert {p.backend.name for r in ing.rules for p in r.paths} == {"api"}


def test_ingress_yaml_without_tls_or_annotations(tmp_path: Path) -> None:
    path = tmp_path / "ing.yaml"
    path.write_text(ingress_yaml("plain", "c.test", tls=False))
    (ing,) = loader.load([path]).ingresses
    assert ing.tls == () and ing.annotations == {} and [r.host for r in ing.rules] == ["c.test"]


def _builds_an_ingress(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Constant) and isinstance(n.value, str)
               and n.value.startswith(HEAD) for n in ast.walk(node))


def test_no_other_helper_builds_ingress_yaml() -> None:
    builders = []
    for path in sorted(TESTS.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) \
                    and not node.name.startswith("test_") and _builds_an_ingress(node):
                builders.append(f"{path.relative_to(TESTS)}: {node.name}")
    assert builders == ["helpers/manifest_yaml.py: ingress_yaml"]
