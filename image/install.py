"""Install certop into an image's root filesystem: the one step both image routes share.

Runs *inside* the target (an mmdebstrap chroot for `make image`, a `RUN` of the Containerfile
for users with a registry) with Debian's python3, so that both routes write the same bytes
under /opt/certop:

1. a venv at /opt/certop from the wheels in --wheels only (no index, no network);
2. what certop never imports removed (pip, setuptools, the kubernetes asyncio client, tests,
   type stubs, activate scripts);
3. every module compiled to an unchecked-hash .pyc (reproducible, and a read-only root
   filesystem costs nothing: no source is stat'ed or recompiled at import);
4. the user and group 65532 ("nonroot") the image runs as, its state folder /var/lib/certop,
   and no set-user-ID programs;
5. python3-venv and the wheels it brings purged, and /usr/share/certop/packages.txt listing
   every Debian package and Python distribution the image holds.

Standard library only: the target has nothing else yet.
"""

from __future__ import annotations

import argparse
import compileall
import os
import py_compile
import shutil
import stat
import subprocess
import sys
from pathlib import Path

PREFIX = Path("/opt/certop")
UID = GID = 65532
VERSIONS = Path("/usr/share/certop/packages.txt")
STATE = Path("/var/lib/certop")

# Relative to site-packages: never imported by certop or what it imports.
PRUNE = (
    "pip",
    "setuptools",
    "pkg_resources",
    "_distutils_hack",
    "distutils-precedence.pth",
    "kubernetes/aio",  # the asyncio twin of kubernetes.client (68 MB): certop uses kopf for that
    "kubernetes/e2e_test",
    "kubernetes/test",
)
PRUNE_GLOBS = (
    "pip-*.dist-info",
    "setuptools-*.dist-info",
    "**/tests",
    "**/*.pyi",
    *(f"**/*.{ext}" for ext in ("pyx", "pxd", "pxi", "c", "h", "cpp")),  # extensions' sources
)
PRUNE_BIN = ("pip", "pip3", "pip3.11", "activate", "activate.csh", "activate.fish", "Activate.ps1")
# Debian packages that only the install needs.
BUILD_ONLY_DEBS = ("python3-venv", "python3.11-venv", "python3-pip-whl", "python3-setuptools-whl")


def run(*argv: str) -> None:
    subprocess.run(argv, check=True)


def site_packages(prefix: Path) -> Path:
    return prefix / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"


def install(wheels: Path, requirement: str, prefix: Path) -> None:
    run(sys.executable, "-m", "venv", str(prefix))
    run(
        str(prefix / "bin" / "python"), "-m", "pip", "--isolated", "install",
        "--no-index", "--find-links", str(wheels), "--no-cache-dir", "--no-compile",
        "--disable-pip-version-check", "--no-warn-script-location", "--quiet",
        requirement,
    )  # fmt: skip


def prune(prefix: Path) -> None:
    site = site_packages(prefix)
    doomed = [site / name for name in PRUNE]
    for pattern in PRUNE_GLOBS:
        doomed.extend(site.glob(pattern))
    doomed.extend(prefix / "bin" / name for name in PRUNE_BIN)
    doomed.extend(prefix.rglob("__pycache__"))  # whatever pip or venv compiled: redone below
    for path in sorted(set(doomed), reverse=True):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def compile_all(prefix: Path) -> None:
    ok = compileall.compile_dir(
        str(site_packages(prefix)),
        quiet=1,
        workers=1,  # the bytes of a .pyc do not depend on it; the order of errors does
        invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
    )
    if not ok:
        sys.exit("install.py: some modules did not compile")


def add_user(root: Path) -> None:
    passwd, group = root / "etc" / "passwd", root / "etc" / "group"
    if f":{UID}:" not in passwd.read_text():
        with passwd.open("a") as f:
            f.write(f"nonroot:x:{UID}:{GID}:nonroot:/nonexistent:/usr/sbin/nologin\n")
    if f":{GID}:" not in group.read_text():
        with group.open("a") as f:
            f.write(f"nonroot:x:{GID}:\n")


def make_state_dir(root: Path) -> None:
    """/var/lib/certop, the user's own (0700): a named volume mounted there starts with this
    owner (Docker and podman copy it up), so `certop standalone --state-dir /var/lib/certop`
    works with no chown on the host."""
    state = root / STATE.relative_to("/")
    state.mkdir(mode=0o700, parents=True, exist_ok=True)
    state.chmod(0o700)
    os.chown(state, UID, GID)


def drop_setuid(root: Path) -> None:
    """No set-user-ID or set-group-ID programs (su, newgrp, unix_chkpwd): certop needs none,
    and the manifests' no-new-privileges is then not the only thing standing in their way."""
    for folder, _, files in os.walk(root / "usr"):
        for name in files:
            path = Path(folder) / name
            mode = path.lstat().st_mode
            if not path.is_symlink() and mode & (stat.S_ISUID | stat.S_ISGID):
                path.chmod(stat.S_IMODE(mode) & ~(stat.S_ISUID | stat.S_ISGID))


def purge_build_only() -> None:
    installed = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Package}\\n", *BUILD_ONLY_DEBS],
        capture_output=True, text=True, check=False,
    ).stdout.split()  # fmt: skip
    if installed:
        run("dpkg", "--purge", *installed)


def write_versions(prefix: Path) -> None:
    debs = subprocess.run(
        ["dpkg-query", "-W", "-f", "${db:Status-Abbrev}\\t${Package}\\t${Version}\\n"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    lines = ["# Debian packages (dpkg) and Python distributions (/opt/certop) in this image"]
    for row in sorted(debs.splitlines()):
        status, name, version = row.split("\t")
        if status.startswith("ii"):
            lines.append(f"debian {name} {version}")
    listing = subprocess.run(
        [
            str(prefix / "bin" / "python"), "-c",
            "import importlib.metadata as m\n"
            "for d in m.distributions(): print(d.metadata['Name'], d.version)",
        ],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    lines.extend(f"python {row}" for row in sorted(listing.splitlines(), key=str.lower))
    VERSIONS.parent.mkdir(parents=True, exist_ok=True)
    VERSIONS.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--wheels", type=Path, required=True, help="folder of wheels to install")
    parser.add_argument("--requirement", required=True, help="what to install, e.g. certop==0.1")
    args = parser.parse_args()
    os.environ["PYTHONDONTWRITEBYTECODE"] = "1"
    os.umask(0o022)  # not the caller's: files readable by uid 65532, and the same in every build
    install(args.wheels, args.requirement, PREFIX)
    prune(PREFIX)
    compile_all(PREFIX)
    add_user(Path("/"))
    make_state_dir(Path("/"))
    purge_build_only()
    drop_setuid(Path("/"))
    write_versions(PREFIX)


if __name__ == "__main__":
    main()
