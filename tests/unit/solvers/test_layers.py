"""The solver seam's import contracts (pyproject.toml [tool.importlinter]) catch a forbidden
import: lint-imports runs on a copy of the packages with one import added."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run([str(LINT_IMPORTS), "--config", str(tree / "pyproject.toml"),
                           "--no-cache"], cwd=tree, env=env, capture_output=True, text=True,
                          timeout=300, check=False)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for package in ("certop", "solvers"):
        shutil.copytree(ROOT / package, tmp_path / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


@pytest.mark.parametrize(("module", "added", "contract"), [
    ("solvers/http01/solver.py", "import certop.acme.orders",
     "Solvers depend on certop.core only"),
    ("solvers/base.py", "import certop.store.ports", "Solvers depend on certop.core only"),
    ("certop/acme/orders.py", "import solvers.http01.solver",
     "The ACME driver knows the solver protocol only"),
    ("certop/acme/ari.py", "import solvers.registry",
     "The ACME driver knows the solver protocol only"),
])
def test_a_forbidden_import_breaks_lint_imports(tree: Path, module: str, added: str,
                                                contract: str) -> None:
    assert lint_imports(tree).returncode == 0  # the copy as it is keeps every contract
    path = tree / module
    path.write_text(path.read_text() + f"\n{added}  # noqa\n")
    result = lint_imports(tree)
    assert result.returncode != 0
    broken = [line for line in result.stdout.splitlines() if line.endswith("BROKEN")]
    assert [line for line in broken if line.startswith(contract)], result.stdout
