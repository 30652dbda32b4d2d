"""The two ways to build the image agree, and `make image` is reproducible.

- The Containerfile (for users with a registry) builds here from a base made of Debian packages
  (mmdebstrap's minbase imported into podman as localhost/debian:bookworm-slim: nothing is
  pulled), with the wheels of `make image`; its /opt/certop is the same bytes, modes and links
  as `make image`'s, and it runs as the manifests run it.
- Two `make image` runs of one commit give the same digests and the same archive bytes.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import tarfile
from concurrent.futures import Future
from pathlib import Path

import pytest
from podmanctl import ROOT, Built, Podman, build

from certop import __version__

pytestmark = pytest.mark.slow
Row = tuple[str, str, int, int, int, str]


def opt_rows(tar: tarfile.TarFile) -> list[Row]:
    """Every entry under /opt of a root filesystem tar: path, type, mode, owner, and the
    content's sha256 or the link's target."""
    rows: list[Row] = []
    for member in tar:
        name = member.name.removeprefix("./").rstrip("/")
        if not name.startswith("opt/"):
            continue
        if member.isreg():
            what = hashlib.sha256(tar.extractfile(member).read()).hexdigest()  # type: ignore[union-attr]
        else:
            what = member.linkname
        mode = member.mode & 0o7777  # podman export adds the type bits
        rows.append((name, member.type.decode(), mode, member.uid, member.gid, what))
    return sorted(rows)


def local_base(podman: Podman) -> str:
    """debian:bookworm-slim's stand-in, made from Debian's archive like make image's root."""
    name = "localhost/debian:bookworm-slim"
    debootstrap = subprocess.Popen(
        ["mmdebstrap", "--quiet", "--mode=auto", "--variant=minbase", build.SUITE, "-",
         *build.MIRRORS],
        stdout=subprocess.PIPE, env={**podman.env, "SOURCE_DATE_EPOCH": "0"})  # fmt: skip
    imported = subprocess.run(podman.argv("import", "-", name), stdin=debootstrap.stdout,
                              capture_output=True, text=True, env=podman.env,
                              check=False)  # fmt: skip
    assert debootstrap.stdout is not None
    debootstrap.stdout.close()
    assert debootstrap.wait(timeout=300) == 0
    assert imported.returncode == 0, imported.stderr
    return name


def test_the_containerfile_builds_the_same_opt_tree_as_make_image(
        built: Built, podman: Podman, tmp_path: Path) -> None:
    # The build context as a user's clone has it after `make wheels`.
    context = tmp_path / "context"
    (context / "image").mkdir(parents=True)
    for name in ("Containerfile", ".dockerignore"):
        shutil.copy(ROOT / name, context / name)
    shutil.copy(ROOT / "image" / "install.py", context / "image" / "install.py")
    shutil.copytree(built.out / "wheels", context / "dist" / "wheels")
    tag = "localhost/certop-containerfile:test"
    epoch = build.source_date_epoch()
    podman("build", "--network=host", "--quiet", "--build-arg", f"BASE={local_base(podman)}",
           "--build-arg", f"VERSION={__version__}", "--build-arg", f"SOURCE_DATE_EPOCH={epoch}",
           "--tag", tag, "--file", str(context / "Containerfile"), str(context),
           timeout=600)  # fmt: skip

    with built.layer() as layer:
        ours = opt_rows(layer)
    container = podman("create", tag).stdout.strip()
    try:
        exported = podman.argv("export", container)
        tar_bytes = subprocess.run(exported, capture_output=True, env=podman.env, check=True,
                                   timeout=300).stdout  # fmt: skip
    finally:
        podman("rm", container)
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        theirs = opt_rows(tar)
    assert len(ours) > 1000
    assert ours == theirs, sorted(set(ours) ^ set(theirs))[:20]

    # It runs as make image's does: same user, entrypoint, environment.
    inspected = json.loads(podman("image", "inspect", tag).stdout)[0]["Config"]
    config = build.image_config(__version__, 0, "amd64")
    assert inspected["User"] == config.user
    assert inspected["Entrypoint"] == list(config.entrypoint)
    assert set(config.env) <= set(inspected["Env"])
    done = podman.run(tag, "--version")
    assert (done.returncode, done.stdout.strip()) == (0, f"certop {__version__}"), done.stderr


def test_two_make_image_runs_of_one_commit_give_the_same_digests(
        image_builds: tuple[Built, Future[Built]]) -> None:
    built, second = image_builds
    again = second.result()
    for key in ("manifest", "config", "layer", "compressed_bytes"):
        assert again.summary[key] == built.summary[key], key

    def sha(path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()

    assert sha(again.archive) == sha(built.archive)
