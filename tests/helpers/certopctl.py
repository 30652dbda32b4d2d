"""Run the real `certop standalone` in a subprocess for proxy tests, on free loopback ports,
stopped by its handle: `process()` with any manifest and flags (the admin port included), and
`running()`, one Ingress for `web.test` with a self-signed certificate (HTTPS) routed to a
backend."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pebblectl
from manifest_yaml import ingress_yaml
from proxy_helpers import self_signed_files

HOST = "web.test"


@dataclass
class Process:
    """A running `certop standalone` (and its forked workers, if any)."""

    proc: subprocess.Popen[bytes]
    http_port: int
    https_port: int
    admin_port: int
    log: Path

    def fds(self) -> int:
        """Open file descriptors of the proxy process."""
        return len(list(Path(f"/proc/{self.proc.pid}/fd").iterdir()))

    def status(self, field: str) -> int:
        """A size from /proc/PID/status (VmRSS, VmHWM), in bytes."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise AssertionError(f"no {field} in /proc/{self.proc.pid}/status")

    def pids(self) -> set[int]:
        """The serving processes: certop and its forked workers."""
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        return {self.proc.pid, *(int(p) for p in children.read_text().split())}

    def metrics(self) -> dict[str, float]:
        """The admin port's /metrics, name (with labels) -> value."""
        url = f"http://127.0.0.1:{self.admin_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read().decode()
        return {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
                if line and not line.startswith("#")}


@dataclass
class Running(Process):
    cert: Path = Path()
    """The self-signed certificate of web.test (a CA file for clients)."""


def wait_for(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll `check` until it holds; AssertionError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)  # polling a condition with a deadline


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
        return True
    return False


@contextlib.contextmanager
def process(tmp: Path, manifest: Path, *flags: str, event_loop: str = "uvloop",
            probe: tuple[str, ...] = ("http", "https", "admin")) -> Iterator[Process]:
    """`certop standalone -f manifest` with its HTTP, HTTPS and admin ports picked free, state
    in `tmp`, log in `tmp/certop.log`; waits until the `probe` ports listen (a probe is a
    connection: a test counting connections probes fewer)."""
    http_port, https_port, admin_port = (pebblectl.free_port() for _ in range(3))
    log = tmp / "certop.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "certop.cli", "--event-loop", event_loop, "standalone",
             "-f", str(manifest), "--state-dir", str(tmp / "state"), "--listen", "127.0.0.1",
             "--http-port", str(http_port), "--https-port", str(https_port),
             "--admin-port", str(admin_port), *flags],
            stdout=out, stderr=subprocess.STDOUT)
    try:
        ports = {"http": http_port, "https": https_port, "admin": admin_port}
        wait_for(lambda: proc.poll() is not None or all(
            _listening(ports[name]) for name in probe), "certop to listen")
        assert proc.poll() is None, log.read_text()
        yield Process(proc, http_port, https_port, admin_port, log)
    finally:
        pebblectl.stop_process(proc)


@contextlib.contextmanager
def running(tmp: Path, backend_port: int, *flags: str, annotations: dict[str, str] | None = None,
            event_loop: str = "uvloop") -> Iterator[Running]:
    """`certop standalone` serving web.test over HTTP and HTTPS from `backend_port`."""
    manifest = tmp / "web.yaml"
    # No redirect to HTTPS: plain HTTP is served too (it is tested beside HTTPS).
    manifest.write_text(ingress_yaml("web", HOST, {"certop.dev/ssl-redirect": "false",
                                                   **(annotations or {})}))
    cert, key = self_signed_files(tmp, "web", (HOST,))
    with process(tmp, manifest, "--certificate", f"web-tls={cert},{key}",
                 "--service", f"web=127.0.0.1:{backend_port}", *flags,
                 event_loop=event_loop) as run:
        yield Running(run.proc, run.http_port, run.https_port, run.admin_port, run.log, cert)
