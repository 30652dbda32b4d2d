"""Operator benchmark: N annotated Ingresses created at once in the Kubernetes emulator (a
process of its own), `certop operator` (a process of its own, logged in by KUBECONFIG) and one
fresh Pebble per size. For each size: time until every Secret exists and until every
Certificate says Ready=True, the rate, the operator's peak RSS, the CPU seconds of the
operator, the emulator and Pebble over the run (from /proc/PID/stat), the operator's API
requests per certificate by verb and resource (the emulator's counts, `/_emulator/counts`,
reset just before the Ingresses are created: start-up lists and watches are not in them), ACME
requests per certificate (its /metrics), and, unless --no-standalone, `certop standalone`'s
time for the same number of certificates from another fresh Pebble.

The emulator's CPU includes creating the Ingresses and this script's polling: the operator's
`certop_certificates_issued_total` every 0.2 s until it reaches N, then a LIST of the Secrets
and of the Certificates every `max(0.2, N / 2000)` seconds until all are there (one or two).
Memory: the peak RSS (`VmHWM`) and the RSS just before the Ingresses are created (idle, the
watches running); kB per certificate is their difference over N.

Usage: operator.py [--sizes 1000[,5000,10000]] [--no-standalone]
(prints one JSON line; bench/run.py --only operator renders it)
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HELPERS = ROOT / "tests" / "helpers"
sys.path[:0] = [str(ROOT / "pebble"), str(HELPERS), str(ROOT / "bench")]

import issuance  # noqa: E402
import pebblectl  # noqa: E402
from kmock_ext import ADMIN_PATH, ADMIN_TOKEN, OPERATOR_TOKEN  # noqa: E402
from kubernetes import client  # noqa: E402

WAIT = 1800.0
"""Seconds a size may take until every Certificate is Ready."""
WRITES = ("create", "patch", "update", "delete", "deletecollection")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU seconds of these processes so far (/proc/PID/stat fields 14, 15)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def raw_list(call: Callable[..., Any], namespace: str, **kwargs: Any) -> list[Any]:
    """The items of a LIST as plain JSON (the client's models cost seconds at 10,000)."""
    response = call(namespace, _preload_content=False, **kwargs)
    return list(json.loads(response.data).get("items") or [])


def until_issued(admin: int, count: int, deadline: float,
                 operator: subprocess.Popen[bytes]) -> None:
    """Until the operator's /metrics says `count` certificates were issued."""
    while metric(admin, "certop_certificates_issued_total") < count:
        if operator.poll() is not None:
            raise RuntimeError(f"the operator exited with {operator.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"fewer than {count} certificates issued after {WAIT}s")
        time.sleep(0.2)  # polling the operator's counter above


def metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


def emulator_counts(url: str, method: str = "GET") -> dict[str, int]:
    """The RBAC-checked users' (here: the operator's) requests, "verb resource" -> count."""
    request = urllib.request.Request(f"{url}{ADMIN_PATH}/counts", method=method,
                                     headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    with urllib.request.urlopen(request, timeout=30) as resp:
        rows = json.loads(resp.read())["counts"]
    return {f"{verb} {resource}": n for verb, resource, n in rows}


def wait_ready(admin: int) -> None:
    deadline = time.monotonic() + 60
    while True:  # until the operator leads (polling its readiness)
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("the operator did not become ready")
        time.sleep(0.05)  # polling the condition above


def ingress(i: int) -> dict[str, Any]:
    host = f"h{i}.bench.test"
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": f"i{i}", "annotations": {"certop.dev/cluster-issuer": "pebble"}},
            "spec": {"tls": [{"hosts": [host], "secretName": f"s{i}"}],
                     "rules": [{"host": host, "http": {"paths": [{
                         "path": "/", "pathType": "Prefix", "backend": {"service": {
                             "name": "web", "port": {"number": 80}}}}]}}]}}


def run_operator(count: int, work: Path) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HELPERS), str(ROOT / "pebble")]))
    with open(work / "emulator.log", "wb") as log:
        emulator = subprocess.Popen([sys.executable, str(HELPERS / "emulator_server.py")],
                                    stdout=subprocess.PIPE, stderr=log, env=env)
    operator: subprocess.Popen[bytes] | None = None
    try:
        assert emulator.stdout is not None
        url = emulator.stdout.readline().decode().strip()
        kubeconfig = work / "kubeconfig"
        kubeconfig.write_text(
            f'apiVersion: v1\nkind: Config\nclusters: [{{name: e, cluster: {{server: "{url}"}}}}]'
            f"\nusers: [{{name: u, user: {{token: {OPERATOR_TOKEN}}}}}]\n"
            "contexts: [{name: e, context: {cluster: e, user: u}}]\ncurrent-context: e\n")
        with pebblectl.running(work / "pebble", http_port=pebblectl.free_port()) as info:
            config = client.Configuration()
            config.host = url
            config.api_key = {"authorization": ADMIN_TOKEN}  # the test's; the operator: its SA
            config.api_key_prefix = {"authorization": "Bearer"}
            api = client.ApiClient(config)
            client.CustomObjectsApi(api).create_cluster_custom_object(
                "certop.dev", "v1", "clusterissuers", {
                    "apiVersion": "certop.dev/v1", "kind": "ClusterIssuer",
                    "metadata": {"name": "pebble"},
                    "spec": {"acme": {"server": info.directory_url,
                                      "caBundle": base64.b64encode(
                                          Path(info.api_ca).read_bytes()).decode(),
                                      "solvers": [{"http01": {"ingress": {}}}]}}})
            admin = pebblectl.free_port()
            with open(work / "operator.log", "wb") as log:
                operator = subprocess.Popen(
                    [sys.executable, "-m", "certop.cli", "--log-level", "warning", "operator",
                     "-A", "--cluster-resource-namespace", "certop", "--listen", "127.0.0.1",
                     "--solver-port", str(info.http_port), "--admin-port", str(admin)],
                    stdout=log, stderr=subprocess.STDOUT,
                    env=dict(os.environ, KUBECONFIG=str(kubeconfig)))
            wait_ready(admin)
            net = client.NetworkingV1Api(api)
            core = client.CoreV1Api(api)
            custom = client.CustomObjectsApi(api)
            pids = {"operator": [operator.pid], "emulator": [emulator.pid],
                    "pebble": list(info.pids)}
            idle_rss = rss_mb(operator.pid)
            emulator_counts(url, "DELETE")
            cpu_before = {name: cpu_seconds(p) for name, p in pids.items()}
            start = time.monotonic()
            for i in range(count):
                net.create_namespaced_ingress("bench", ingress(i))
            created = time.monotonic() - start
            wanted = {f"s{i}" for i in range(count)}
            deadline = time.monotonic() + WAIT
            interval = max(0.2, count / 2000)

            def until(names: Callable[[], set[str]], what: str) -> float:
                """Seconds since `start` once `names()` covers `wanted` (polling the API)."""
                while True:
                    have = names()
                    if wanted <= have:
                        return time.monotonic() - start
                    if operator is not None and operator.poll() is not None:
                        raise RuntimeError(f"the operator exited with {operator.returncode}")
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{len(wanted & have)}/{count} {what} after {WAIT}s")
                    time.sleep(interval)  # polling the condition above

            # The operator's own count first (cheap), then the API confirms: a LIST of 10,000
            # Secrets every few seconds would load the emulator and this process more than
            # the operator.
            until_issued(admin, count, deadline, operator)
            took = until(lambda: {s["metadata"]["name"] for s in raw_list(
                core.list_namespaced_secret, "bench",
                field_selector="type=kubernetes.io/tls")}, "Secrets")
            all_ready = until(lambda: {
                c["spec"]["secretName"] for c in raw_list(
                    lambda ns, **kw: custom.list_namespaced_custom_object(
                        "certop.dev", "v1", ns, "certificates", **kw), "bench")
                if any(cond.get("type") == "Ready" and cond.get("status") == "True"
                       for cond in (c.get("status") or {}).get("conditions") or [])},
                "Certificates Ready")
            cpu = {name: cpu_seconds(p) - cpu_before[name] for name, p in pids.items()}
            counts = emulator_counts(url)
            issued = metric(admin, "certop_certificates_issued_total")
            acme = metric(admin, "certop_acme_requests_total")
            total = sum(counts.values())
            writes = sum(n for key, n in counts.items() if key.split()[0] in WRITES)
            return {"count": count, "seconds": took, "ready_seconds": all_ready,
                    "rate": count / all_ready, "create_seconds": created,
                    "peak_rss_mb": peak_rss_mb(operator.pid), "idle_rss_mb": idle_rss,
                    "kb_per_certificate": (peak_rss_mb(operator.pid) - idle_rss) * 1024 / count,
                    "operator_cpu_seconds": cpu["operator"],
                    "emulator_cpu_seconds": cpu["emulator"],
                    "pebble_cpu_seconds": cpu["pebble"],
                    "api_requests_per_certificate": total / count,
                    "api_writes_per_certificate": writes / count,
                    "api_per_certificate": {key: n / count for key, n in sorted(counts.items())},
                    "acme_requests_per_certificate": acme / issued if issued else 0.0}
    finally:
        for proc in (operator, emulator):
            if proc is not None:
                pebblectl.stop_process(proc, timeout=30)
        if emulator.stdout is not None:
            emulator.stdout.close()


def run_standalone(count: int, work: Path) -> float:
    """`certop standalone` issuing `count` certificates from a fresh Pebble (bench/issuance.py's
    way of timing it): seconds until all are on disk."""
    with pebblectl.running(work / "pebble-standalone", http_port=pebblectl.free_port()) as info:
        env = issuance.Env(info, work, Path(sys.executable).with_name("certop"), None)
        return issuance.certop_run(env, issuance.hosts(count, f"op{count}"), f"op{count}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000",
                        help="Ingress counts, comma-separated (5000 and 10000 take minutes)")
    parser.add_argument("--no-standalone", action="store_true",
                        help="skip standalone mode's time for the same counts")
    parser.add_argument("count", nargs="?", type=int, help="one size (instead of --sizes)")
    args = parser.parse_args(argv)
    sizes = [args.count] if args.count else [int(s) for s in args.sizes.split(",") if s]
    runs = []
    for count in sizes:
        work = Path(tempfile.mkdtemp(prefix=f"certop-bench-operator-{count}-"))
        print(f"bench: operator: {count} Ingresses ({work})", file=sys.stderr, flush=True)
        row = run_operator(count, work)
        if not args.no_standalone:
            print(f"bench: standalone: {count} certificates", file=sys.stderr, flush=True)
            try:
                row["standalone_seconds"] = run_standalone(count, work)
            except RuntimeError as exc:  # the comparison failed: the operator's row stands
                row["standalone_error"] = str(exc)
        print(f"bench: row: {json.dumps(row)}", file=sys.stderr, flush=True)
        runs.append(row)
    return {"sizes": sizes, "runs": runs}


if __name__ == "__main__":
    print(json.dumps(main()))
