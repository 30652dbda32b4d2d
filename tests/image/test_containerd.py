"""The archive of `make image` through containerd, as `kind load image-archive` and
`k3s ctr images import` take it: a containerd of the test's own (root, state and socket under
tmp_path; not the machine's), the image imported into the kubelet's namespace k8s.io under the
name a kubelet resolves `certop:VERSION` to, and run by containerd with runc. (containerd 1.6,
Debian's, still puts its shims' sockets in /run/containerd/s: a path it does not let one set.)"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from podmanctl import IMAGE, Built

from certop import __version__

pytestmark = pytest.mark.slow  # containerd and runc: make test installs them (deps-image)

CONFIG = """version = 2
root = "{home}/root"
state = "{home}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
"""


class Containerd:
    """A containerd serving on a socket under `home`, stopped by its handle."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.sock = home / "c.sock"
        assert len(str(self.sock)) < 100, f"unix socket path too long: {self.sock}"
        (home / "config.toml").write_text(CONFIG.format(home=home, sock=self.sock))
        self.log = (home / "containerd.log").open("wb")
        self.proc = subprocess.Popen(
            ["containerd", "--config", str(home / "config.toml")],
            stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while self.ctr("version", check=False).returncode != 0:
            assert self.proc.poll() is None, (home / "containerd.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "containerd did not answer on its socket"
            time.sleep(0.1)  # not listening yet: ask again

    def ctr(self, *args: str, check: bool = True, stdin: Path | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:  # fmt: skip
        argv = ["ctr", "--address", str(self.sock), "--namespace", "k8s.io", *args]
        done = subprocess.run(argv, input=stdin.read_bytes() if stdin else b"",
                              capture_output=True, timeout=timeout, check=False)  # fmt: skip
        out = subprocess.CompletedProcess(argv, done.returncode,
                                          done.stdout.decode(errors="replace"),
                                          done.stderr.decode(errors="replace"))  # fmt: skip
        if check:
            assert out.returncode == 0, f"{' '.join(argv)}: {out.stdout}{out.stderr}"
        return out

    def run(self, name: str, *args: str) -> subprocess.CompletedProcess[str]:
        """`ctr run` of the image with the host's network; FIFOs and runc's state are ours."""
        for folder in ("fifo", "runc"):
            (self.home / folder).mkdir(exist_ok=True)
        return self.ctr("run", "--rm", "--net-host", "--fifo-dir", str(self.home / "fifo"),
                        "--runc-root", str(self.home / "runc"), IMAGE, name, *args,
                        check=False)  # fmt: skip

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture
def containerd(tmp_path: Path) -> Iterator[Containerd]:
    daemon = Containerd(tmp_path)
    try:
        yield daemon
    finally:
        daemon.close()


def test_kind_load_image_archive_names_and_runs_the_image(
    built: Built, containerd: Containerd
) -> None:
    # What `kind load image-archive` runs on a node (the archive on stdin).
    containerd.ctr("images", "import", "--all-platforms", "--digests",
                   "--snapshotter=overlayfs", "-", stdin=built.archive)  # fmt: skip
    names = containerd.ctr("images", "ls", "-q").stdout.split()
    assert IMAGE in names, names
    listed = containerd.ctr("images", "ls", f"name=={IMAGE}").stdout
    assert built.summary["manifest"] in listed, listed

    version = containerd.run("certop-version", "/opt/certop/bin/certop", "--version")
    assert (version.returncode, version.stdout.strip()) == (0, f"certop {__version__}"), version
    # No arguments: the image's own Entrypoint runs, as the image's own User.
    usage = containerd.run("certop-usage")
    assert usage.returncode == 2 and "usage: certop" in usage.stdout + usage.stderr, usage
    ident = containerd.run("certop-id", "id", "-u")
    assert ident.stdout.strip() == "65532", ident
