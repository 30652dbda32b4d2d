"""`make demo`: from nothing to a real HTTPS response with an ACME certificate, on loopback.

Starts a local Pebble (ACME CA), a small backend and `certop standalone` on the manifests in
examples/, waits until certop serves a certificate that verifies against Pebble's root, prints
and runs one `curl` over HTTPS, then serves until Ctrl-C (or exits at once with --once) and
stops everything it started, by the handles it started.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "pebble"))

import pebblectl  # noqa: E402

HOST = "demo.certop.test"
WAIT = 60.0


def wait_for_certificate(port: int, root_pem: str, proc: subprocess.Popen[bytes]) -> float:
    """Until certop serves HOST with a certificate that verifies against Pebble's root."""
    ctx = ssl.create_default_context(cadata=root_pem)
    start = time.monotonic()
    delay = 0.05
    while time.monotonic() - start < WAIT:
        if proc.poll() is not None:
            raise SystemExit(f"demo: certop exited with {proc.returncode}; see its log above")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as raw, \
                    ctx.wrap_socket(raw, server_hostname=HOST):
                return time.monotonic() - start
        except (OSError, ssl.SSLError):
            pass  # not issued yet: the default certificate does not verify
        time.sleep(delay)  # poll again: the condition is checked each time, never assumed
        delay = min(delay * 1.5, 0.5)
    raise SystemExit(f"demo: no verified certificate for {HOST} within {WAIT:.0f}s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--once", action="store_true", help="exit after the first response")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="certop-demo-"))
    http_port, https_port, backend_port = (pebblectl.free_port() for _ in range(3))
    procs: list[subprocess.Popen[bytes]] = []
    pebble = pebblectl.Pebble(work / "pebble", http_port=http_port)
    try:
        info = pebble.start()
        print(f"demo: Pebble ACME server at {info.directory_url}")
        procs.append(subprocess.Popen(
            [sys.executable, str(HERE / "backend.py"), str(backend_port)]))
        certop = [
            str(Path(sys.executable).with_name("certop")), "standalone",
            "-f", str(HERE / "ingress.yaml"),
            "--acme-directory", info.directory_url,
            "--acme-ca-bundle", info.api_ca,
            "--email", "demo@certop.test",
            "--state-dir", str(work / "state"),
            "--listen", "127.0.0.1",
            "--http-port", str(http_port),
            "--https-port", str(https_port),
            "--service", f"web=127.0.0.1:{backend_port}",
        ]
        print("demo: $ " + shlex.join(certop))
        proc = subprocess.Popen(certop)
        procs.append(proc)
        root = work / "pebble-root.pem"
        root.write_text(info.root_pem())
        took = wait_for_certificate(https_port, root.read_text(), proc)
        print(f"demo: certificate for {HOST} issued and served after {took:.2f}s")
        curl = ["curl", "-sS", "--cacert", str(root),
                "--resolve", f"{HOST}:{https_port}:127.0.0.1", f"https://{HOST}:{https_port}/"]
        print("demo: $ " + shlex.join(curl))
        result = subprocess.run(curl, capture_output=True, text=True, check=False)
        print(result.stdout, end="")
        if result.returncode != 0:
            print(result.stderr, file=sys.stderr, end="")
            return 1
        if args.once:
            return 0
        print(f"demo: serving https://{HOST}:{https_port}/ until Ctrl-C (state in {work})")
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
        return 0
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        pebble.stop()
        if args.once:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
