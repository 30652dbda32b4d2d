"""Operator benchmark: N annotated Ingresses created at once in the Kubernetes emulator (a
process of its own), `certop operator` (a process of its own, logged in by KUBECONFIG) and one
Pebble: time until every Secret exists and until every Certificate says Ready=True, the
operator's peak RSS, ACME requests per certificate (from its /metrics).

Usage: operator.py [N]   (prints one JSON line; bench/run.py --only operator renders it)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HELPERS = ROOT / "tests" / "helpers"
sys.path[:0] = [str(ROOT / "pebble"), str(HELPERS)]

import pebblectl  # noqa: E402
from kmock_ext import ADMIN_TOKEN, OPERATOR_TOKEN  # noqa: E402
from kubernetes import client  # noqa: E402


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def metric(port: int, name: str) -> float:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


def main(count: int) -> dict[str, float]:
    work = Path(tempfile.mkdtemp(prefix="certop-bench-operator-"))
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
            config.api_key = {"authorization": ADMIN_TOKEN}  # the operator: its ServiceAccount
            config.api_key_prefix = {"authorization": "Bearer"}
            api = client.ApiClient(config)
            import base64

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
            deadline = time.monotonic() + 60
            while True:  # until the operator leads (polling its readiness)
                try:
                    import urllib.request

                    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz",
                                                timeout=2) as resp:
                        if resp.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("the operator did not become ready")
                time.sleep(0.05)
            net = client.NetworkingV1Api(api)
            core = client.CoreV1Api(api)
            start = time.monotonic()
            for i in range(count):
                host = f"h{i}.bench.test"
                net.create_namespaced_ingress("bench", {
                    "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                    "metadata": {"name": f"i{i}",
                                 "annotations": {"certop.dev/cluster-issuer": "pebble"}},
                    "spec": {"tls": [{"hosts": [host], "secretName": f"s{i}"}],
                             "rules": [{"host": host, "http": {"paths": [{
                                 "path": "/", "pathType": "Prefix", "backend": {"service": {
                                     "name": "web", "port": {"number": 80}}}}]}}]}})
            created = time.monotonic() - start
            wanted = {f"s{i}" for i in range(count)}
            deadline = time.monotonic() + 600

            def until(names: Callable[[], set[str]], what: str) -> float:
                """Seconds since `start` once `names()` covers `wanted` (polling the API)."""
                while True:
                    have = names()
                    if wanted <= have:
                        return time.monotonic() - start
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{len(wanted & have)}/{count} {what} after 600 s")
                    time.sleep(0.2)

            took = until(lambda: {s.metadata.name for s in core.list_namespaced_secret(
                "bench").items if s.type == "kubernetes.io/tls"}, "Secrets")
            custom = client.CustomObjectsApi(api)
            all_ready = until(lambda: {
                c["metadata"]["name"] for c in custom.list_namespaced_custom_object(
                    "certop.dev", "v1", "bench", "certificates")["items"]
                if any(cond.get("type") == "Ready" and cond.get("status") == "True"
                       for cond in (c.get("status") or {}).get("conditions") or [])},
                "Certificates Ready")
            issued = metric(admin, "certop_certificates_issued_total")
            requests = metric(admin, "certop_acme_requests_total")
            return {"count": count, "seconds": took, "ready_seconds": all_ready,
                    "create_seconds": created,
                    "peak_rss_mb": peak_rss_mb(operator.pid),
                    "acme_requests_per_certificate": requests / issued if issued else 0.0}
    finally:
        for proc in (operator, emulator):
            if proc is not None:
                pebblectl.stop_process(proc, timeout=30)
        if emulator.stdout is not None:
            emulator.stdout.close()


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]) if len(sys.argv) > 1 else 500)))
