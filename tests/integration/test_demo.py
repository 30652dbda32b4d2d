"""`make demo` end to end: what a newcomer runs first must print a real HTTPS response."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_demo_prints_an_https_response_from_the_backend() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "examples/demo.py"), "--once"],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Hello from demo-backend over certop!" in result.stdout
    assert '"x_forwarded_proto": "https"' in result.stdout
