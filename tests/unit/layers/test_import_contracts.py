"""The import-linter contracts in pyproject.toml hold, and break when a forbidden import is made:
lint-imports runs on a copy of the packages with one bad import added."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
LINT = Path(sys.executable).parent / "lint-imports"


def lint(tree: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run([str(LINT), "--no-cache"], cwd=tree, env=env, capture_output=True,
                          text=True, timeout=120, check=False)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for package in ("certop", "solvers"):
        shutil.copytree(ROOT / package, tmp_path / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def add_line(path: Path, line: str) -> None:
    text = path.read_text()
    anchor = "from __future__ import annotations\n"
    path.write_text(text.replace(anchor, anchor + line + "\n", 1))


def test_the_contracts_hold_on_the_code_as_it_is(tree: Path) -> None:
    result = lint(tree)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(("module", "line", "contract"), [
    ("certop/proxy/upstream.py", "import certop.standalone.services",
     "The proxy knows no source, mode or ACME client"),
    ("certop/proxy/server.py", "import certop.k8s.operator",
     "The proxy knows no source, mode or ACME client"),
    ("certop/proxy/engine.py", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
     "    from certop.proxy.server import Proxy",
     "The proxy's modules are layered (no import cycle)"),
    ("certop/core/serving.py", "import certop.proxy.server",
     "The core is pure"),
    ("certop/metrics.py", "import certop.proxy.server",
     "The metrics registry imports no part of certop"),
    ("certop/standalone/runner.py", "import certop.proxy.tls",
     "The standalone runner sees the proxy as core.serving.Server"),
    # a lower layer reaching up: the ACME client into the proxy, a store into a mode
    ("certop/acme/network.py", "import certop.proxy.server",
     "The package is layered"),
    ("certop/store/memory.py", "import certop.standalone.loader",
     "The package is layered"),
    ("solvers/registry.py", "import certop.issuance.accounts",
     "The package is layered"),
    # the file source and the API source know nothing of each other, both ways
    ("certop/k8s/shim.py", "import certop.standalone.loader",
     "The file and API sources are unaware of each other"),
    ("certop/standalone/loader.py", "import certop.k8s.shim",
     "The file and API sources are unaware of each other"),
    ("certop/store/memory.py", "import certop.store.files",
     "The stores are unaware of each other"),
    ("certop/store/secrets.py", "import certop.store.memory",
     "The stores are unaware of each other"),
    # the solver seam: solvers see certop.core only, the ACME driver the solver protocol only
    ("solvers/http01/solver.py", "import certop.acme.orders",
     "Solvers depend on certop.core only"),
    ("solvers/base.py", "import certop.store.ports", "Solvers depend on certop.core only"),
    ("certop/acme/orders.py", "import solvers.http01.solver",
     "The ACME driver knows the solver protocol only"),
    ("certop/acme/ari.py", "import solvers.registry",
     "The ACME driver knows the solver protocol only"),
    # a circle inside one layer, which no layer contract sees: store.files imports store.ports
    ("certop/store/ports.py", "import certop.store.files",
     "No import cycle anywhere in certop or solvers"),
    ("solvers/base.py", "import solvers.http01.solver",
     "No import cycle anywhere in certop or solvers"),
])
def test_a_forbidden_import_breaks_its_contract(tree: Path, module: str, line: str,
                                                contract: str) -> None:
    add_line(tree / module, line)
    result = lint(tree)
    assert result.returncode != 0
    broken = [x for x in result.stdout.splitlines() if "BROKEN" in x]
    assert any(x.startswith(contract) for x in broken), result.stdout
