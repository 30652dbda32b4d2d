"""image/requirements.txt, the exact Python distributions of the container image, agrees with
pyproject.toml: every dependency certop declares is there at the version it pins (what the
image needs beyond them is proved by the image build itself, which installs with --no-index)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def pins(lines: list[str]) -> dict[str, str]:
    """name -> version of `name==version [--hash=...]` lines (continued with a backslash)."""
    found = {}
    joined = "\n".join(line.split("#", 1)[0] for line in lines).replace("\\\n", " ")
    for line in joined.splitlines():
        if line.strip():
            requirement, *options = line.split()
            name, _, version = requirement.partition("==")
            assert version, f"not an exact pin: {line!r}"
            assert all(option.startswith("--hash=sha256:") for option in options), line
            found[re.sub(r"[-_.]+", "-", name).lower()] = version
    return found


def test_the_image_lock_pins_what_pyproject_pins() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = pins(project["dependencies"])
    text = (ROOT / "image" / "requirements.txt").read_text()
    locked = pins(text.splitlines())
    # Every wheel is pinned by hash (pip then refuses any other bytes for it).
    assert text.count("--hash=sha256:") >= len(locked)
    assert {name: locked.get(name) for name in declared} == declared
    assert "certop" not in locked  # built from the tree, not pinned
    assert not {"pip", "setuptools", "wheel"} & set(locked)  # what only an install needs
