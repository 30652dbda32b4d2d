"""certop's container image under test: `make image` into a folder of the test's, podman with a
store of its own (nothing touches the machine's images), and containers run the way
manifests/ deploys them, with the flags read from the Deployment itself.

Two traps of these VMs are set in a containers.conf of the test's (../shared/notes/container.md):
crun cannot run here, runc can; RLIMIT_NOFILE cannot be raised, so the ulimits are given.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

from certop import __version__

IMAGE = f"docker.io/library/certop:{__version__}"  # what `certop:VERSION` in manifests/ means
ROOT = Path(__file__).resolve().parents[2]
DEPLOYMENT = ROOT / "manifests" / "all-in-one" / "deployment.yaml"



def _load_build() -> ModuleType:
    """image/build.py as a module: the settings `make image` runs with."""
    spec = importlib.util.spec_from_file_location("image_build", ROOT / "image" / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = _load_build()

CONTAINERS_CONF = """[containers]
default_ulimits = ["nofile=16384:16384", "nproc=4096:4096"]

[engine]
runtime = "runc"
"""


@dataclass(frozen=True)
class Built:
    """One `make image` run: its archive and the digests it reported."""

    out: Path
    archive: Path
    summary: dict[str, Any]

    @contextlib.contextmanager
    def layer(self) -> Iterator[tarfile.TarFile]:
        """The image's only layer, as a tar of the root filesystem (read as a stream)."""
        with tarfile.open(self.archive) as outer:
            manifest = json.load(outer.extractfile("manifest.json"))  # type: ignore[arg-type]
            blob = outer.extractfile(manifest[0]["Layers"][0])
            with tarfile.open(fileobj=blob, mode="r|gz") as layer:
                yield layer

    def config(self) -> dict[str, Any]:
        with tarfile.open(self.archive) as outer:
            manifest = json.load(outer.extractfile("manifest.json"))  # type: ignore[arg-type]
            return dict(json.load(outer.extractfile(manifest[0]["Config"])))  # type: ignore[arg-type]


def make_image(out: Path, *extra: str) -> Built:
    """`make image` exactly as a user runs it, into `out`, not loaded (the tests load it into
    their own store)."""
    args = " ".join(["--out", str(out), "--no-load", *extra])
    done = subprocess.run(["make", "-C", str(ROOT), "image", f"IMAGE_ARGS={args}"],
                          capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads(next(out.glob("certop-*.json")).read_text())
    return Built(out, Path(summary["archive"]), summary)


def manifest_flags() -> list[str]:
    """`podman run` flags for what manifests/all-in-one's Deployment asks of its container:
    the pod's user and group, the container's securityContext, /tmp as its emptyDir."""
    doc = yaml.safe_load(DEPLOYMENT.read_text())
    pod = doc["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    ctx = container["securityContext"]
    flags = [f"--user={pod['securityContext']['runAsUser']}:{pod['securityContext']['runAsGroup']}"]
    if ctx.get("readOnlyRootFilesystem"):
        flags.append("--read-only")
    flags += [f"--cap-drop={cap}" for cap in ctx["capabilities"]["drop"]]
    if ctx.get("allowPrivilegeEscalation") is False:
        flags.append("--security-opt=no-new-privileges")
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in container["volumeMounts"]:
        size = volumes[mount["name"]]["emptyDir"]["sizeLimit"].lower().removesuffix("i")
        flags.append(f"--tmpfs={mount['mountPath']}:rw,size={size},mode=1777")
    return flags


@dataclass
class Container:
    """A running container: its name in the store, the `podman run` process, its log."""

    podman: Podman
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def running(self) -> bool:
        return self.proc.poll() is None

    def process_status(self) -> dict[str, str]:
        """/proc/PID/status of the container's first process (certop), as the host sees it."""
        pid = self.podman("inspect", "--format", "{{.State.Pid}}", self.name).stdout.strip()
        rows = Path(f"/proc/{pid}/status").read_text().splitlines()
        return {k: v.strip() for k, _, v in (row.partition(":") for row in rows)}

    def stop(self) -> int:
        """SIGTERM to certop (podman forwards it); its exit status."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)


@dataclass
class Podman:
    """podman with a store in `home`, removed with it."""

    home: Path
    runroot: Path = field(init=False)

    def __post_init__(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "containers.conf").write_text(CONTAINERS_CONF)
        # podman refuses a run root longer than 50 characters: a short one of its own.
        self.runroot = Path(tempfile.mkdtemp(prefix="certop-podman-"))

    def argv(self, *args: str) -> list[str]:
        return ["podman", "--root", str(self.home / "root"), "--runroot", str(self.runroot),
                *args]  # fmt: skip

    @property
    def env(self) -> dict[str, str]:
        return dict(os.environ, CONTAINERS_CONF=str(self.home / "containers.conf"))

    def __call__(self, *args: str, timeout: float = 300,
                 check: bool = True) -> subprocess.CompletedProcess[str]:  # fmt: skip
        done = subprocess.run(self.argv(*args), capture_output=True, text=True,
                              timeout=timeout, env=self.env, check=False)  # fmt: skip
        if check:
            assert done.returncode == 0, f"podman {' '.join(args)}: {done.stderr[-3000:]}"
        return done

    def run(self, image: str, *args: str, mounts: Sequence[str] = (),
            env: Sequence[str] = (), timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """A container of `image` as the manifests run it, to its end."""
        return self(*self.run_args(image, args, mounts, env), timeout=timeout, check=False)

    @contextlib.contextmanager
    def started(self, image: str, *args: str, log: Path, mounts: Sequence[str] = (),
                env: Sequence[str] = (), publish: Sequence[str] = ()) -> Iterator[Container]:
        """A container of `image` as the manifests run it, in the background, its output in
        `log`; stopped with SIGTERM (forwarded to certop) and removed on the way out."""
        name = f"certop-test-{uuid.uuid4().hex[:12]}"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                self.argv(*self.run_args(image, args, mounts, env, name=name, publish=publish)),
                stdout=out, stderr=subprocess.STDOUT, env=self.env)
        try:
            yield Container(self, name, proc, log)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    self("kill", name, check=False)
                    proc.wait(timeout=30)
            self("rm", "--force", "--ignore", name, check=False)

    def run_args(self, image: str, args: Sequence[str], mounts: Sequence[str],
                 env: Sequence[str], name: str | None = None,
                 publish: Sequence[str] = ()) -> list[str]:  # fmt: skip
        """`run` arguments: the host's network (loopback shared with the test), or the
        default bridge with `publish`ed ports (`127.0.0.1:HOSTPORT:PORT`)."""
        network = [f"--publish={p}" for p in publish] if publish else ["--network=host"]
        return ["run", "--rm", *network, *manifest_flags(),
                *(["--name", name] if name else []),
                *(f"--volume={m}" for m in mounts), *(f"--env={e}" for e in env),
                image, *args]  # fmt: skip

    def close(self) -> None:
        """Every container and image of this store gone, then its files."""
        self("rm", "--all", "--force", check=False)
        self("system", "reset", "--force", check=False)
        shutil.rmtree(self.runroot, ignore_errors=True)
