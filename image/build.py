"""`make image`: build certop's container image from Debian packages and the project's wheels.

No base image is pulled from a registry: mmdebstrap assembles a bookworm root filesystem from
Debian's archive (the essential packages, python3, ca-certificates), image/install.py puts
certop's venv at /opt/certop inside it (the same script the Containerfile runs), and
image/oci.py writes the result as one reproducible layer in an OCI archive under dist/.
The image is loaded as certop:<version> into podman and into a Docker engine, where there is one.

Reproducible: SOURCE_DATE_EPOCH (the commit's time unless set) dates every file and
document, and the wheels are the exact versions of image/requirements.txt, so two builds of
one commit from the same Debian archive give the same digests.

Usage: python image/build.py [--out DIR] [--no-load] [--wheels-only] [--write-lock]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parent))  # image/oci.py
from oci import Image, ImageConfig, write_archive

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "image" / "requirements.txt"
LOCK_HEADER = """\
# The image's Python distributions, exact, with their wheels' hashes (x86_64 and aarch64): what
# certop needs at run time (pyproject.toml's dependencies and theirs) and nothing else.
# tests/unit/image/test_lock.py holds it to pyproject.toml. Written by
# `.venv/bin/python image/build.py --write-lock` after a change of dependencies.
"""
NAME = "certop"
SUITE = "bookworm"
MIRRORS = (
    f"deb http://deb.debian.org/debian {SUITE} main",
    f"deb http://deb.debian.org/debian {SUITE}-updates main",
    f"deb http://deb.debian.org/debian-security {SUITE}-security main",
)
SOURCES = ("pyproject.toml", "README.md", "certop", "solvers")  # what certop's wheel is made of
DEBS = ("python3", "python3-venv", "ca-certificates")
# What a container never reads: as debian:bookworm-slim leaves out, plus glibc's iconv modules.
DPKG_EXCLUDES = (
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/groff/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/lintian/*",
    "path-exclude=/usr/share/linda/*",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/bash-completion/*",
    "path-exclude=/usr/lib/*/gconv/*",
)
UID = 65532
ARCHES = {"x86_64": ("amd64", "x86_64"), "aarch64": ("arm64", "aarch64")}


class BuildError(Exception):
    """A build step failed: the message says which and what to do."""


def version() -> str:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return str(tomllib.load(f)["project"]["version"])


def git(*args: str) -> str:
    done = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else ""


def source_date_epoch() -> int:
    given = os.environ.get("SOURCE_DATE_EPOCH")
    if given:
        if not given.isdigit():
            raise BuildError(f"SOURCE_DATE_EPOCH={given!r}: seconds since 1970 expected")
        return int(given)
    committed = git("log", "-1", "--format=%ct")
    if not committed:
        raise BuildError("no SOURCE_DATE_EPOCH and no git commit to take it from: set one")
    return int(committed)


def run(argv: list[str], quiet: bool = False, **kwargs: object) -> None:
    if not quiet:
        print("+", " ".join(argv[:6]), "..." if len(argv) > 6 else "", flush=True)
    done = subprocess.run(argv, **kwargs)  # type: ignore[call-overload]
    if done.returncode != 0:
        raise BuildError(f"{argv[0]} exited with {done.returncode}")


def runtime_lock() -> list[str]:
    """image/requirements.txt's lines: certop's run-time closure as installed in this venv,
    each pinned with the sha256 of its wheel for every architecture the image is built for
    (downloaded from the package index to hash them), so that every build of a commit, on
    any machine, installs the same bytes (pip then requires the hashes)."""
    pins = runtime_pins()
    hashes: dict[str, set[str]] = {name: set() for name in pins}
    for wheel_arch in sorted({arch for _, arch in ARCHES.values()}):
        with tempfile.TemporaryDirectory(prefix="certop-lock-") as tmp:
            pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
            run([*pip, "download", "--no-deps", "--only-binary=:all:", "-d", tmp,
                 "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311",
                 *platforms(wheel_arch), *(f"{n}=={v}" for n, v in pins.items())],
                quiet=True)  # fmt: skip
            for wheel in Path(tmp).glob("*.whl"):
                name = wheel.name.split("-", 1)[0].lower().replace("_", "-")
                hashes[name].add(hashlib.sha256(wheel.read_bytes()).hexdigest())
    return [
        f"{name}=={version}" + "".join(f" \\\n    --hash=sha256:{h}" for h in sorted(hashes[name]))
        for name, version in sorted(pins.items())
    ]


def runtime_pins() -> dict[str, str]:
    """certop's run-time closure as installed in this venv: name -> version."""
    import importlib.metadata as md

    from packaging.requirements import Requirement

    seen: dict[str, str] = {}
    todo = [NAME]
    while todo:
        dist = md.distribution(todo.pop())
        key = dist.metadata["Name"].lower().replace("_", "-")
        if key in seen:
            continue
        seen[key] = dist.version
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return {k: v for k, v in sorted(seen.items()) if k != NAME}


def platforms(arch: str) -> list[str]:
    """pip's --platform for bookworm (glibc 2.36): pip does not expand manylinux_2_X itself."""
    tags = [f"manylinux_2_{minor}_{arch}" for minor in range(36, 4, -1)]
    tags += [f"manylinux2014_{arch}", f"manylinux2010_{arch}", f"manylinux1_{arch}"]
    return [arg for tag in tags for arg in ("--platform", tag)]


def build_wheels(wheels: Path, arch: str) -> None:
    """OUT/wheels: certop's own wheel and the locked wheels for Debian's Python 3.11."""
    if wheels.exists():
        shutil.rmtree(wheels)
    wheels.mkdir(parents=True)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(source_date_epoch())}
    with tempfile.TemporaryDirectory(prefix="certop-source-") as source:
        # A copy of the project's sources: setuptools writes build/ and *.egg-info beside
        # them, which two builds at once (or a stale build/) would share.
        for name in SOURCES:
            src, dst = ROOT / name, Path(source) / name
            if src.is_dir():
                shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(src, dst)
        run([*pip, "wheel", "--no-deps", "-w", str(wheels), source], env=env)
    run(
        [
            *pip, "download", "--no-deps", "--only-binary=:all:", "-d", str(wheels),
            "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311",
            *platforms(arch), "-r", str(LOCK),
        ]
    )  # fmt: skip
    for wheel in sorted(wheels.glob("*.whl")):
        strip_wheel(wheel)


def strip_wheel(wheel: Path) -> None:
    """Strip the shared objects of `wheel` in place (debug symbols: 6 MB of the compressed
    image) and record their new hashes in its RECORD, so pip installs exactly these bytes."""
    with zipfile.ZipFile(wheel) as src:
        members = [(info, src.read(info)) for info in src.infolist()]
    changed: dict[str, bytes] = {}
    for info, data in members:
        if info.filename.endswith(".so"):
            with tempfile.NamedTemporaryFile(suffix=".so") as tmp:
                tmp.write(data)
                tmp.flush()
                run(["strip", "--strip-unneeded", tmp.name], quiet=True)
                stripped = Path(tmp.name).read_bytes()
            if stripped != data:
                changed[info.filename] = stripped
    if not changed:
        return
    rewritten: list[tuple[zipfile.ZipInfo, bytes]] = []
    for info, data in members:
        if info.filename in changed:
            data = changed[info.filename]
        elif info.filename.endswith(".dist-info/RECORD"):
            data = _rerecord(data.decode(), changed).encode()
        rewritten.append((info, data))
    tmp_wheel = wheel.with_suffix(".tmp")
    with zipfile.ZipFile(tmp_wheel, "w") as dst:
        for info, data in rewritten:
            dst.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)
    tmp_wheel.replace(wheel)


def _rerecord(record: str, changed: dict[str, bytes]) -> str:
    lines = []
    for line in record.splitlines():
        path = line.split(",", 1)[0]
        if path in changed:
            digest = base64.urlsafe_b64encode(hashlib.sha256(changed[path]).digest())
            line = f"{path},sha256={digest.decode().rstrip('=')},{len(changed[path])}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def build_rootfs(out: Path, wheels: Path, epoch: int, requirement: str) -> None:
    if shutil.which("mmdebstrap") is None:
        raise BuildError("mmdebstrap is missing: `make image` installs it (Debian: mmdebstrap)")
    stage = "/tmp/certop-image"
    hooks = [
        f"--customize-hook=mkdir -p \"$1{stage}\"",
        f"--customize-hook=copy-in {ROOT / 'image' / 'install.py'} {wheels} {stage}",
        # A clean environment: nothing of this machine's (PIP_* settings, say) reaches the
        # install, which is then the same as the Containerfile's.
        f"--customize-hook=chroot \"$1\" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin"
        f" LANG=C.UTF-8 SOURCE_DATE_EPOCH={epoch} python3 {stage}/install.py"
        f" --wheels {stage}/wheels --requirement {requirement}",
        f"--customize-hook=rm -rf \"$1{stage}\" \"$1/var/cache/ldconfig/aux-cache\"",
        # mmdebstrap copies the build machine's: the runtime provides both, and they would
        # make images of one commit differ between machines.
        "--customize-hook=rm -f \"$1/etc/hostname\" && : > \"$1/etc/resolv.conf\"",
    ]
    run(
        [
            "mmdebstrap", "--quiet", "--mode=auto", "--variant=essential",
            "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
            f"--include={','.join(DEBS)}",
            *(f"--dpkgopt={rule}" for rule in DPKG_EXCLUDES),
            *hooks, SUITE, str(out), *MIRRORS,
        ],
        env={**os.environ, "SOURCE_DATE_EPOCH": str(epoch)},
    )  # fmt: skip


def labels(tag: str, epoch: int) -> dict[str, str]:
    from datetime import UTC, datetime

    revision = git("rev-parse", "HEAD")
    if git("status", "--porcelain", "--", *SOURCES, "image"):
        print(f"warning: the work tree differs from {revision[:12]}: labelled -dirty")
        revision += "-dirty"
    found = {
        "org.opencontainers.image.title": NAME,
        "org.opencontainers.image.description": "Automatic HTTPS for Kubernetes Ingress: "
        "ACME operator and TLS-terminating proxy",
        "org.opencontainers.image.version": tag,
        "org.opencontainers.image.revision": revision,
        "org.opencontainers.image.source": source_url(),
        "org.opencontainers.image.licenses": "Apache-2.0",
        "org.opencontainers.image.created": datetime.fromtimestamp(epoch, UTC).strftime(
            "%Y-%m-%dT%H:%M:%SZ"
        ),
        "org.opencontainers.image.base.name": f"debian:{SUITE} (mmdebstrap, essential)",
    }
    return {key: value for key, value in found.items() if value}


def source_url() -> str:
    """Where the source is published: $CERTOP_IMAGE_SOURCE, else pyproject.toml's
    [project.urls] Source, else the git remote `origin` as an https URL; "" (no label, never
    a guessed address) when none is known."""
    given = os.environ.get("CERTOP_IMAGE_SOURCE", "")
    if given:
        return given
    with (ROOT / "pyproject.toml").open("rb") as f:
        urls = tomllib.load(f)["project"].get("urls", {})
    if urls.get("Source"):
        return str(urls["Source"])
    origin = git("remote", "get-url", "origin")
    if origin.startswith("git@") and ":" in origin:  # git@host:owner/repo.git
        host, _, path = origin.removeprefix("git@").partition(":")
        origin = f"https://{host}/{path}"
    return origin.removesuffix(".git") if origin.startswith("https://") else ""


def image_config(tag: str, epoch: int, oci_arch: str) -> ImageConfig:
    return ImageConfig(
        architecture=oci_arch,
        user=f"{UID}:{UID}",
        entrypoint=("/opt/certop/bin/certop",),
        env=(
            "PATH=/opt/certop/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "PYTHONDONTWRITEBYTECODE=1",
            "PYTHONUNBUFFERED=1",
        ),
        labels=labels(tag, epoch),
        created_by=f"image/build.py: mmdebstrap {SUITE} + image/install.py",
    )


def docker_engine() -> bool:
    """A Docker engine answers (not only the client: these machines have one without it)."""
    if shutil.which("docker") is None:
        return False
    try:
        done = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"],
                              capture_output=True, timeout=10)  # fmt: skip
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


def load(image: Image, tag: str) -> None:
    """Into podman and into a Docker engine, where there is one. Both take the name from the
    archive: docker.io/library/certop:TAG, which is what `certop:TAG` in manifests/ means to
    a kubelet too."""
    loaded = []
    if shutil.which("podman") is not None:
        run(["podman", "load", "--quiet", "-i", str(image.archive)], stdout=subprocess.DEVNULL)
        loaded.append("podman")
    if docker_engine():
        run(["docker", "load", "--quiet", "-i", str(image.archive)], stdout=subprocess.DEVNULL)
        loaded.append("docker")
    if not loaded:
        print(f"neither podman nor a Docker engine here: {image.archive} is ready to load")
    for tool in loaded:
        print(f"loaded into {tool}: {tool} run --rm {NAME}:{tag} --version")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "dist",
                        help="where the archive and wheels/ go (default: dist/)")  # fmt: skip
    parser.add_argument("--no-load", action="store_true", help="do not load into podman")
    parser.add_argument("--wheels-only", action="store_true", help="only build dist/wheels")
    parser.add_argument("--write-lock", action="store_true",
                        help="rewrite image/requirements.txt from this venv (after a change of "
                             "dependencies; asks the package index for the wheels' hashes)")
    args = parser.parse_args()
    if args.write_lock:
        LOCK.write_text(LOCK_HEADER + "\n".join(runtime_lock()) + "\n")
        print(f"wrote {LOCK.relative_to(ROOT)}")
        return 0
    machine = platform.machine()
    if machine not in ARCHES:
        raise BuildError(f"architecture {machine} is not supported (only {', '.join(ARCHES)})")
    oci_arch, wheel_arch = ARCHES[machine]
    tag = version()
    epoch = source_date_epoch()
    out = args.out.resolve()
    build_wheels(out / "wheels", wheel_arch)
    if args.wheels_only:
        return 0
    with tempfile.TemporaryDirectory(prefix="certop-image-", dir=out) as tmp:
        rootfs = Path(tmp) / "rootfs.tar"
        build_rootfs(rootfs, out / "wheels", epoch, f"{NAME}=={tag}")
        archive = out / f"{NAME}-{tag}.oci.tar"
        image = write_archive(rootfs, archive, name=NAME, tag=tag,
                              config=image_config(tag, epoch, oci_arch), epoch=epoch)  # fmt: skip
    summary = {
        "archive": str(image.archive),
        "image": f"{NAME}:{tag}",
        "manifest": image.manifest_digest,
        "config": image.config_digest,
        "layer": image.layer_digest,
        "compressed_bytes": image.layer_size,
    }
    (out / f"{NAME}-{tag}.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    if not args.no_load:
        load(image, tag)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BuildError as e:
        sys.exit(f"make image: {e}")
