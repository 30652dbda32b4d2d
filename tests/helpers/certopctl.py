"""Run the real `certop standalone` in a subprocess for client-facing proxy tests: one Ingress
for `web.test` with a self-signed certificate (HTTPS) routed to a backend on loopback, the
ports picked free, stopped by its handle."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pebblectl
from proxy_helpers import ingress_yaml, self_signed_files

HOST = "web.test"


@dataclass
class Running:
    proc: subprocess.Popen[bytes]
    http_port: int
    https_port: int
    cert: Path
    """The self-signed certificate of web.test (a CA file for clients)."""
    log: Path

    def fds(self) -> int:
        """Open file descriptors of the proxy process."""
        return len(list(Path(f"/proc/{self.proc.pid}/fd").iterdir()))


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
def running(tmp: Path, backend_port: int, *flags: str, annotations: dict[str, str] | None = None,
            event_loop: str = "uvloop") -> Iterator[Running]:
    """`certop standalone` serving web.test over HTTP and HTTPS from `backend_port`."""
    manifest = tmp / "web.yaml"
    # No redirect to HTTPS: plain HTTP is served too (it is tested beside HTTPS).
    manifest.write_text(ingress_yaml("web", HOST, {"certop.dev/ssl-redirect": "false",
                                                   **(annotations or {})}))
    cert, key = self_signed_files(tmp, "web", (HOST,))
    http_port, https_port = pebblectl.free_port(), pebblectl.free_port()
    log = tmp / "certop.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "certop.cli", "--event-loop", event_loop, "standalone",
             "-f", str(manifest), "--state-dir", str(tmp / "state"), "--listen", "127.0.0.1",
             "--http-port", str(http_port), "--https-port", str(https_port),
             "--certificate", f"web-tls={cert},{key}",
             "--service", f"web=127.0.0.1:{backend_port}", *flags],
            stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: proc.poll() is not None or
                 (_listening(http_port) and _listening(https_port)), "certop to listen")
        assert proc.poll() is None, log.read_text()
        yield Running(proc, http_port, https_port, cert, log)
    finally:
        pebblectl.stop_process(proc)
