"""DNS-01 benchmark: time to a wildcard + apex certificate, certop vs. `lego --dns rfc2136`.

One real BIND (`named`, tests/helpers/bindctl.py) on a free loopback port serves the zone
`bench.test`, updatable with one TSIG key (hmac-sha256); one Pebble (`PEBBLE_VA_NOSLEEP=1`)
resolves at that BIND. Every certificate is `*.NAME` plus `NAME` (two authorizations, two TXT
values on the same `_acme-challenge.NAME` at once), NAME a fresh subdomain of `bench.test` per
certificate, so no authorization is reused. Both tools update the same BIND over RFC 2136 and
are timed the same way as in bench/issuance.py: wall time from starting the command(s) until
every certificate is on disk, each run with fresh state (its account included).

- certop: one `certop standalone` process with a cert-manager RFC 2136 ClusterIssuer (only its
  apiVersion changed), the TSIG Secret and one Ingress per certificate;
  `--dns01-nameservers` names the BIND, so its propagation check asks that server only.
- lego 4.9.1 (Debian): one `lego run` per certificate, one after the other, reusing its account
  (as issuance.lego_run). `--dns.resolvers` names the BIND (the zone lookup and lego's initial
  TXT query go there) and `--dns.disable-cp` turns off its check of the zone's authoritative
  nameservers: lego 4.9.1 always asks those on port 53 by their NS host name (resolved through
  the system resolver), which is not where the loopback BIND listens. lego's rfc2136 provider
  replaces the TXT RRset on every update, so it solves a certificate's authorizations one after
  the other and sleeps RFC2136_SEQUENCE_INTERVAL (default 60 s) in between; it is set to 0 here
  (nothing caches on loopback), and so is RFC2136_POLLING_INTERVAL (default 2 s, which lego
  also sleeps once before its first check of each authorization): both only help lego.

Used by `bench/run.py --only dns01`; prints only `bench:` progress and `bench: row:` lines.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT / "pebble"), str(ROOT / "tests" / "helpers"),
                str(ROOT / "bench")]

import bindctl  # noqa: E402
import issuance  # noqa: E402
import pebblectl  # noqa: E402

ZONE = "bench.test"
KEY = "bench-key"
WAIT = issuance.WAIT
LEGO_ENV = {
    "RFC2136_TSIG_ALGORITHM": "hmac-sha256.",
    "RFC2136_SEQUENCE_INTERVAL": "0",
    "RFC2136_POLLING_INTERVAL": "0",
    "RFC2136_PROPAGATION_TIMEOUT": "60",
    "RFC2136_TTL": "60",
}
"""What lego is given besides the nameserver and the key (see the module docstring)."""
LEGO_FLAGS = ["--dns", "rfc2136", "--dns.disable-cp"]


@dataclass
class Env:
    pebble: pebblectl.PebbleInfo
    bind: bindctl.BindInfo
    work: Path
    certop: Path


@contextlib.contextmanager
def servers(work: Path, certop: Path) -> Iterator[Env]:
    """The BIND and the Pebble resolving at it, both stopped by their handles afterwards."""
    zone = bindctl.Zone(ZONE, KEY)
    with bindctl.running(work / "bind", [zone], {KEY: os.urandom(32)}) as bind, \
            pebblectl.running(work / "pebble", http_port=pebblectl.free_port(),
                              dns_server=bind.nameserver) as pebble:
        yield Env(pebble, bind, work, certop)


def names(n: int, tag: str) -> list[str]:
    """One name per certificate; each certificate is `*.NAME` and `NAME`."""
    return [f"w{i}-{tag}.{ZONE}" for i in range(n)]


def _certop_manifests(env: Env, hosts: list[str]) -> str:
    tsig = base64.b64encode(base64.b64encode(env.bind.keys[KEY])).decode()
    ca = base64.b64encode(Path(env.pebble.api_ca).read_bytes()).decode()
    docs = [f"""apiVersion: certop.dev/v1
kind: ClusterIssuer
metadata: {{name: dns}}
spec:
  acme:
    server: {env.pebble.directory_url}
    email: bench@certop.test
    caBundle: {ca}
    privateKeySecretRef: {{name: dns-account}}
    solvers:
      - dns01:
          rfc2136:
            nameserver: {env.bind.nameserver}
            tsigKeyName: {KEY}
            tsigAlgorithm: HMACSHA256
            tsigSecretSecretRef: {{name: tsig-secret, key: tsig-secret-key}}
""", f"""apiVersion: v1
kind: Secret
metadata: {{name: tsig-secret}}
type: Opaque
data: {{tsig-secret-key: {tsig}}}
"""]
    backend = "{service: {name: web, port: {number: 80}}}"
    for i, host in enumerate(hosts):
        docs.append(f"""apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: i{i}
  namespace: default
  annotations: {{cert-manager.io/cluster-issuer: dns}}
spec:
  tls: [{{hosts: ["*.{host}", "{host}"], secretName: s{i}}}]
  rules:
    - host: "*.{host}"
      http:
        paths: [{{path: /, pathType: Prefix, backend: {backend}}}]
    - host: "{host}"
      http:
        paths: [{{path: /, pathType: Prefix, backend: {backend}}}]
""")
    return "---\n".join(docs)


def certop_run(env: Env, hosts: list[str], tag: str) -> float:
    """One `certop standalone` process for all certificates; seconds until all are on disk."""
    work = env.work / f"certop-{tag}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    manifest = work / "site.yaml"
    manifest.write_text(_certop_manifests(env, hosts))
    state = work / "state"
    certs = state / "certs" / "default"
    cmd = [str(env.certop), "--log-level", "warning", "standalone", "-f", str(manifest),
           "--state-dir", str(state), "--listen", "127.0.0.1",
           "--http-port", str(pebblectl.free_port()),
           "--https-port", str(pebblectl.free_port()), "--service", "web=127.0.0.1:9",
           "--dns01-nameservers", env.bind.nameserver]

    return issuance.time_certop(cmd, certs, len(hosts), work / "certop.log")


def certop_running(env: Env, hosts: list[str], tag: str) -> float:
    """certop's issuance alone, as in a process that is already running when the Ingresses
    appear (no interpreter start-up): bench/inprocess.py over the same manifests."""
    work = env.work / f"certop-running-{tag}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    manifest = work / "site.yaml"
    manifest.write_text(_certop_manifests(env, hosts))
    out = subprocess.run(
        [str(env.certop.with_name("python")), str(HERE / "inprocess.py"), "--manifests",
         str(manifest), str(work / "state"), env.bind.nameserver],
        capture_output=True, text=True, check=True, timeout=WAIT)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if result["issued"] != len(hosts):
        raise RuntimeError(f"certop (running): {result}")
    return float(result["seconds"])


def lego_run(env: Env, hosts: list[str], tag: str) -> float:
    """One `lego run` per certificate, one after the other, reusing its account."""
    work = env.work / f"lego-{tag}"
    shutil.rmtree(work, ignore_errors=True)
    environ = dict(os.environ, LEGO_CA_CERTIFICATES=env.pebble.api_ca,
                   RFC2136_NAMESERVER=env.bind.nameserver, RFC2136_TSIG_KEY=KEY,
                   RFC2136_TSIG_SECRET=base64.b64encode(env.bind.keys[KEY]).decode(),
                   **LEGO_ENV)
    start = time.monotonic()
    for host in hosts:
        subprocess.run(
            ["lego", "--accept-tos", "--email", "bench@certop.test",
             "--server", env.pebble.directory_url, *LEGO_FLAGS,
             "--dns.resolvers", env.bind.nameserver,
             "--domains", f"*.{host}", "--domains", host, "--path", str(work), "run"],
            env=environ, check=True, capture_output=True, timeout=WAIT,
        )
    took = time.monotonic() - start
    found = len(list((work / "certificates").glob("*.crt"))) - len(
        list((work / "certificates").glob("*.issuer.crt")))
    if found != len(hosts):
        raise RuntimeError(f"lego: {found}/{len(hosts)} certificates")
    return took


TOOLS: dict[str, Callable[[Env, list[str], str], float]] = {
    "certop": certop_run,
    "certop-running": certop_running,
    "lego": lego_run,
}


def run(work: Path, certop: Path, tools: list[str], runs: int,
        count: int) -> dict[str, Any]:
    """Each tool: `runs` single certificates (median), then `count` certificates at once."""
    if "lego" in tools and shutil.which("lego") is None:
        raise SystemExit("bench: lego is missing: run `make bench`, which installs it")
    table: dict[str, dict[str, object]] = {}
    with servers(work, certop) as env:
        for tool in tools:
            fn = TOOLS[tool]
            print(f"bench: dns01: {tool}: one certificate x{runs}", flush=True)
            times = [fn(env, names(1, f"{tool}-one{r}"), f"one{r}") for r in range(runs)]
            print(f"bench: dns01: {tool}: {count} certificates", flush=True)
            total = fn(env, names(count, f"{tool}-n{count}"), f"n{count}")
            row: dict[str, object] = {"one_median": statistics.median(times),
                                      "one_mean": statistics.mean(times),
                                      "one_runs": times, f"total_{count}": total,
                                      f"rate_{count}": count / total}
            print(f"bench: row: {json.dumps({'tool': tool, **row})}", flush=True)
            table[tool] = row
    return {"tools": table, "count": count, "runs": runs,
            "lego_env": LEGO_ENV, "lego_flags": LEGO_FLAGS}
