"""Issuance benchmark: time to valid certificates from one local Pebble, certop vs. peers.

Every tool gets the same Pebble (`PEBBLE_VA_NOSLEEP=1`, no nonce rejection, no authorization
reuse), HTTP-01 on the same loopback port, its own fresh state, and is timed the same way:
wall time from starting the command(s) until every certificate is on disk. Peers that issue one
certificate per run (lego, certbot) run once per host, one after the other, reusing their
account as a user would; Caddy and certop get all hosts in one configuration.

Used by `bench/run.py`; prints nothing itself.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "pebble"))

import pebblectl  # noqa: E402

WAIT = 900.0


@dataclass
class Env:
    pebble: pebblectl.PebbleInfo
    work: Path
    certop: Path
    certbot: Path | None


def hosts(n: int, tag: str) -> list[str]:
    return [f"h{i}-{tag}.bench.test" for i in range(n)]


STALL = 120.0
"""Seconds without a new certificate after which a run is given up as stalled (Debian's
Pebble 2.4 can deadlock under many concurrent orders: pebble/pebblectl.py)."""


def _wait_files(check: Callable[[], int], want: int, proc: subprocess.Popen[bytes],
                what: str) -> None:
    # Polling the disk: 5 ms resolution for a few certificates; for thousands a check costs
    # thousands of stat() calls, so it is made less often (0.5 s at 10,000), or the poller
    # would take CPU from what it measures.
    interval = max(0.005, want / 20000)
    deadline = time.monotonic() + WAIT
    done, progress = 0, time.monotonic()
    while (now := check()) < want:
        if now > done:
            done, progress = now, time.monotonic()
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: {now}/{want} certificates after {WAIT}s")
        if time.monotonic() - progress > STALL:
            raise RuntimeError(f"{what}: stalled at {now}/{want} certificates (no new one "
                               f"for {STALL:.0f}s; the CA stopped answering?)")
        time.sleep(interval)  # polling the disk for the condition above


def certop_run(env: Env, names: list[str], tag: str) -> float:
    """One `certop standalone` process for all hosts; seconds until all are on disk."""
    work = env.work / f"certop-{tag}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    docs = []
    for i, host in enumerate(names):
        docs.append(f"""apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {{name: i{i}, namespace: default}}
spec:
  tls: [{{hosts: [{host}], secretName: s{i}}}]
  rules:
    - host: {host}
      http:
        paths:
          - {{path: /, pathType: Prefix, backend: {{service: {{name: web, port: {{number: 80}}}}}}}}
""")
    manifest = work / "ingresses.yaml"
    manifest.write_text("---\n".join(docs))
    state = work / "state"
    certs = state / "certs" / "default"
    cmd = [str(env.certop), "--log-level", "warning", "standalone", "-f", str(manifest),
           "--acme-directory", env.pebble.directory_url, "--acme-ca-bundle", env.pebble.api_ca,
           "--email", "bench@certop.test", "--state-dir", str(state), "--listen", "127.0.0.1",
           "--http-port", str(env.pebble.http_port), "--https-port",
           str(pebblectl.free_port()), "--service", "web=127.0.0.1:9"]

    return time_certop(cmd, certs, len(names), work / "certop.log")


def time_certop(cmd: list[str], certs: Path, want: int, log_path: Path) -> float:
    """Start `certop standalone` (`cmd`); seconds until `want` certificates are stored under
    `certs` (its state directory's certs/<namespace>)."""

    def count() -> int:
        if not certs.exists():
            return 0
        return sum(1 for d in certs.iterdir() if (d / "current" / "tls.crt").exists())

    with open(log_path, "wb") as log:
        start = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_files(count, want, proc, "certop")
            return time.monotonic() - start
        finally:
            pebblectl.stop_process(proc)


def certop_inprocess(env: Env, names: list[str], tag: str) -> float:
    """certop's issuance alone (no interpreter start-up): runner start to all certificates."""
    out = subprocess.run(
        [str(env.certop.with_name("python")), str(ROOT / "bench" / "inprocess.py"),
         env.pebble.directory_url, env.pebble.api_ca, str(env.pebble.http_port),
         str(env.work / f"inproc-{tag}"), *names],
        capture_output=True, text=True, check=True, timeout=WAIT,
    )
    return float(json.loads(out.stdout.strip().splitlines()[-1])["seconds"])


def lego_run(env: Env, names: list[str], tag: str) -> float:
    work = env.work / f"lego-{tag}"
    shutil.rmtree(work, ignore_errors=True)
    environ = dict(os.environ, LEGO_CA_CERTIFICATES=env.pebble.api_ca)
    start = time.monotonic()
    for host in names:
        subprocess.run(
            ["lego", "--accept-tos", "--email", "bench@certop.test",
             "--server", env.pebble.directory_url, "--http",
             "--http.port", f"127.0.0.1:{env.pebble.http_port}", "--domains", host,
             "--path", str(work), "run"],
            env=environ, check=True, capture_output=True, timeout=WAIT,
        )
    took = time.monotonic() - start
    found = len(list((work / "certificates").glob("*.crt"))) - len(
        list((work / "certificates").glob("*.issuer.crt")))
    if found != len(names):
        raise RuntimeError(f"lego: {found}/{len(names)} certificates")
    return took


def certbot_run(env: Env, names: list[str], tag: str) -> float:
    assert env.certbot is not None
    work = env.work / f"certbot-{tag}"
    shutil.rmtree(work, ignore_errors=True)
    environ = dict(os.environ, REQUESTS_CA_BUNDLE=env.pebble.api_ca)
    start = time.monotonic()
    for host in names:
        subprocess.run(
            [str(env.certbot), "certonly", "--standalone", "--non-interactive",
             "--agree-tos", "--email", "bench@certop.test", "--server",
             env.pebble.directory_url, "--http-01-port", str(env.pebble.http_port),
             "--http-01-address", "127.0.0.1", "-d", host, "--config-dir",
             str(work / "config"), "--work-dir", str(work / "work"), "--logs-dir",
             str(work / "logs"), "--quiet"],
            env=environ, check=True, capture_output=True, timeout=WAIT,
        )
    took = time.monotonic() - start
    found = len(list((work / "config" / "live").glob("*/fullchain.pem")))
    if found != len(names):
        raise RuntimeError(f"certbot: {found}/{len(names)} certificates")
    return took


def caddy_run(env: Env, names: list[str], tag: str) -> float:
    work = env.work / f"caddy-{tag}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    https_port = pebblectl.free_port()
    config = {
        "admin": {"disabled": True},
        "storage": {"module": "file_system", "root": str(work / "storage")},
        "apps": {
            "http": {
                "http_port": env.pebble.http_port,
                "https_port": https_port,
                "servers": {"bench": {
                    "listen": [f"127.0.0.1:{https_port}"],
                    "routes": [{"match": [{"host": names}],
                                "handle": [{"handler": "static_response", "body": "ok"}]}],
                }},
            },
            "tls": {"automation": {"policies": [{
                "subjects": names,
                "issuers": [{
                    "module": "acme", "ca": env.pebble.directory_url,
                    "email": "bench@certop.test",
                    "trusted_roots_pem_files": [env.pebble.api_ca],
                    "challenges": {"tls-alpn": {"disabled": True},
                                   "http": {"alternate_port": env.pebble.http_port}},
                }],
                "disable_ocsp_stapling": True,
            }]}},
        },
    }
    cfg = work / "caddy.json"
    cfg.write_text(json.dumps(config))
    environ = dict(os.environ, HOME=str(work), XDG_DATA_HOME=str(work / "data"),
                   XDG_CONFIG_HOME=str(work / "config"))

    def count() -> int:
        root = work / "storage" / "certificates"
        return len(list(root.glob("*/*/*.crt"))) if root.exists() else 0

    with open(work / "caddy.log", "wb") as log:
        start = time.monotonic()
        proc = subprocess.Popen(["caddy", "run", "--config", str(cfg)], stdout=log,
                                stderr=subprocess.STDOUT, env=environ)
        try:
            _wait_files(count, len(names), proc, "caddy")
            return time.monotonic() - start
        finally:
            pebblectl.stop_process(proc)


TOOLS: dict[str, Callable[[Env, list[str], str], float]] = {
    "certop": certop_run,
    "lego": lego_run,
    "certbot": certbot_run,
    "caddy": caddy_run,
}


def median_single(fn: Callable[[Env, list[str], str], float], env: Env, tool: str,
                  runs: int) -> tuple[float, list[float]]:
    times = [fn(env, hosts(1, f"{tool}-one{r}"), f"one{r}") for r in range(runs)]
    return statistics.median(times), times
