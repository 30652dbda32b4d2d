"""image/requirements.txt, the exact Python distributions of the container image, agrees with
pyproject.toml: every dependency certop declares is there at the version it pins (what the
image needs beyond them is proved by the image build itself, which installs with --no-index)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def pins(lines: list[str]) -> dict[str, str]:
    found = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"not an exact pin: {line!r}"
            found[re.sub(r"[-_.]+", "-", name).lower()] = version
    return found


def test_the_image_lock_pins_what_pyproject_pins() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = pins(project["dependencies"])
    locked = pins((ROOT / "image" / "requirements.txt").read_text().splitlines())
    assert {name: locked.get(name) for name in declared} == declared
    assert "certop" not in locked  # built from the tree, not pinned
    assert not {"pip", "setuptools", "wheel"} & set(locked)  # what only an install needs
