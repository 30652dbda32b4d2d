"""Each mode is wired in one place: the CLI, the in-process test helpers and the benchmark all
call the production factory instead of building proxy + runner + stores by hand."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def _calls(path: Path, names: set[str]) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else \
                func.attr if isinstance(func, ast.Attribute) else None
            if name in names:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {name}(...)")
    return found


def _sources() -> list[Path]:
    return [*sorted((ROOT / "certop").rglob("*.py")), *sorted((ROOT / "bench").glob("*.py")),
            ROOT / "tests" / "conftest.py", *sorted((ROOT / "tests" / "helpers").glob("*.py"))]


def test_the_standalone_runner_is_built_by_the_wiring_only() -> None:
    wiring = ROOT / "certop" / "standalone" / "wiring.py"
    found = [c for p in _sources() if p != wiring
             for c in _calls(p, {"Standalone", "FileCertStore", "FileOrderJournal"})]
    assert not found, f"build standalone mode with certop.standalone.wiring: {found}"


def test_the_cli_and_helpers_build_no_proxy_of_their_own() -> None:
    files = [ROOT / "certop" / "cli.py", ROOT / "tests" / "conftest.py",
             ROOT / "tests" / "helpers" / "proxy_helpers.py", ROOT / "bench" / "inprocess.py"]
    found = [c for p in files for c in _calls(p, {"Proxy", "CertBook"})]
    assert not found, found


def test_the_operator_is_wired_by_build_registry_only() -> None:
    operator = ROOT / "certop" / "k8s" / "operator.py"
    tree = ast.parse(operator.read_text(encoding="utf-8"))
    factory = next(n for n in tree.body
                   if isinstance(n, ast.FunctionDef) and n.name == "build_registry")
    inside = range(factory.lineno, (factory.end_lineno or factory.lineno) + 1)
    found = [c for c in _calls(operator, {"Shim", "CertificateController"})
             if int(c.split(":")[1]) not in inside]
    found += [c for p in [*_sources(), ROOT / "tests" / "k8s" / "test_issuance.py"]
              if p != operator for c in _calls(p, {"Shim", "CertificateController"})]
    assert not found, found
