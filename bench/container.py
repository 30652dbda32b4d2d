"""The container image, measured: `make image`'s build time from nothing, the compressed and
unpacked size and where the bytes are, and what a read-only root filesystem costs at start
(podman, run as manifests/ runs it). Called by bench/run.py (`--only image`); not named
image.py, which would shadow the build's folder image/."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
import zlib
from collections import defaultdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests" / "helpers"))
from podmanctl import IMAGE, Built, Podman, manifest_flags  # noqa: E402

SITE = "opt/certop/lib/python3.11/site-packages/"
IMPORT = ("import time; t = time.perf_counter(); "
          "import certop.cli, certop.k8s.operator, certop.k8s.proxy_run, certop.standalone.runner; "
          "print(time.perf_counter() - t)")  # fmt: skip


def _group(name: str) -> str:
    """Where a file of the root filesystem belongs, for the size table."""
    if name.startswith(SITE):
        top = name[len(SITE):].split("/", 1)[0]
        return "venv: " + top.split("-", 1)[0].removesuffix(".dist").split(".")[0]
    if name.startswith("opt/"):
        return "venv: the rest"
    if name.startswith(("usr/lib/python3", "usr/bin/python3")):
        return "Debian: Python 3.11"
    return "Debian: the rest"


def sizes(built: Built) -> dict[str, dict[str, int]]:
    """Unpacked bytes per group, and each group's bytes gzip'ed alone (level 9, as the layer)."""
    raw: dict[str, int] = defaultdict(int)
    packers: dict[str, Any] = {}
    packed: dict[str, int] = defaultdict(int)
    with built.layer() as layer:
        for member in layer:
            if not member.isreg():
                continue
            group = _group(member.name.removeprefix("./"))
            data = layer.extractfile(member).read()  # type: ignore[union-attr]
            raw[group] += len(data)
            packer = packers.setdefault(group, zlib.compressobj(9, zlib.DEFLATED, 31))
            packed[group] += len(packer.compress(data))
    for group, packer in packers.items():
        packed[group] += len(packer.flush())
    return {g: {"unpacked": raw[g], "compressed": packed[g]} for g in raw}


def _median_seconds(argv: list[str], env: dict[str, str], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.monotonic()
        subprocess.run(argv, env=env, check=True, capture_output=True)
        times.append(time.monotonic() - start)
    return statistics.median(times)


def run(work: Path, runs: int = 5) -> dict[str, Any]:
    out = work / "image"
    start = time.monotonic()
    subprocess.run([sys.executable, str(ROOT / "image" / "build.py"), "--out", str(out),
                    "--no-load"], check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    build_seconds = time.monotonic() - start
    summary = json.loads(next(out.glob("certop-*.json")).read_text())
    built = Built(out, Path(summary["archive"]), summary)
    result: dict[str, Any] = {
        "build_seconds": build_seconds,
        "compressed": summary["compressed_bytes"],
        "digest": summary["manifest"],
        "groups": sizes(built),
    }
    result["unpacked"] = sum(g["unpacked"] for g in result["groups"].values())
    podman = Podman(work / "podman")
    try:
        podman("load", "--input", str(built.archive))
        version = podman.argv(*podman.run_args(IMAGE, ["--version"], (), ()))
        result["run_version_seconds"] = _median_seconds(version, podman.env, runs)
        imports = []
        for _ in range(runs):
            done = podman("run", "--rm", "--network=host", *manifest_flags(),
                          "--entrypoint", "/opt/certop/bin/python", IMAGE, "-c",
                          IMPORT)  # fmt: skip
            imports.append(float(done.stdout.strip()))
        result["import_seconds_container"] = statistics.median(imports)
        host = [float(subprocess.run([sys.executable, "-c", IMPORT], capture_output=True,
                                     text=True, check=True).stdout.strip())
                for _ in range(runs)]  # fmt: skip
        result["import_seconds_host"] = statistics.median(host)
    finally:
        podman.close()
    result["runs"] = runs
    return result


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory(prefix="certop-bench-image-") as tmp:
        print(json.dumps(run(Path(tmp)), indent=2))
