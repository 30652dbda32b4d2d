"""The Kubernetes emulator in a process of its own and what out-of-process tests of certop's
cluster modes do with it: a KUBECONFIG, the admin's client, Pebble's ClusterIssuer, an annotated
Ingress, the admin port's status. Shared by tests/k8s (certop as a Python process) and
tests/image (certop in its container)."""

from __future__ import annotations

import base64
import contextlib
import http.client
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pebblectl
from kmock_ext import ADMIN_TOKEN, OPERATOR_TOKEN
from kubernetes import client

HELPERS = Path(__file__).resolve().parent


@contextlib.contextmanager
def emulator_process(tmp_path: Path, layout: str = "split"
                     ) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """The emulator in a process of its own, with the RBAC of `layout` (manifests/LAYOUT):
    (its URL, the process)."""
    env = dict(os.environ, PYTHONPATH=f"{HELPERS}{os.pathsep}{HELPERS.parent.parent / 'pebble'}")
    with open(tmp_path / "emu.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, str(HELPERS / "emulator_server.py"), layout],
                                stdout=subprocess.PIPE, stderr=log, env=env)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().decode().strip()
        assert url.startswith("http://127.0.0.1:"), (tmp_path / "emu.log").read_text()
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
        if proc.stdout is not None:
            proc.stdout.close()
    # The operator ran under manifests/base/rbac.yaml: nothing it asked for was refused.
    refused = [line for line in (tmp_path / "emu.log").read_text().splitlines()
               if "forbidden:" in line]
    assert not refused, refused


def kubeconfig(path: Path, url: str, token: str = OPERATOR_TOKEN) -> Path:
    """A KUBECONFIG for the emulator at `url`, logging in with `token` (the operator's
    ServiceAccount by default)."""
    path.write_text(f"""apiVersion: v1
kind: Config
clusters: [{{name: emu, cluster: {{server: "{url}"}}}}]
users: [{{name: me, user: {{token: {token}}}}}]
contexts: [{{name: emu, context: {{cluster: emu, user: me}}}}]
current-context: emu
""")
    return path


def clusterissuer(api: client.ApiClient, info: pebblectl.PebbleInfo,
                  server: str | None = None) -> None:
    """The ClusterIssuer `pebble` (HTTP-01), at `server` (Pebble's directory by default)."""
    client.CustomObjectsApi(api).create_cluster_custom_object(
        "certop.dev", "v1", "clusterissuers", {
            "apiVersion": "certop.dev/v1", "kind": "ClusterIssuer",
            "metadata": {"name": "pebble"},
            "spec": {"acme": {
                "server": server or info.directory_url, "email": "ops@certop.test",
                "caBundle": base64.b64encode(Path(info.api_ca).read_bytes()).decode(),
                "privateKeySecretRef": {"name": "pebble-account"},
                "solvers": [{"http01": {"ingress": {}}}]}}})


def web_ingress(host: str, secret: str) -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": "web", "annotations": {"certop.dev/cluster-issuer": "pebble"}},
            "spec": {"tls": [{"hosts": [host], "secretName": secret}],
                     "rules": [{"host": host, "http": {"paths": [{
                         "path": "/", "pathType": "Prefix", "backend": {"service": {
                             "name": "web", "port": {"number": 80}}}}]}}]}}


def api_client(url: str) -> client.ApiClient:
    """The test's own client (the emulator's admin; the operator logs in as its
    ServiceAccount through the KUBECONFIG)."""
    config = client.Configuration()
    config.host = url
    config.api_key = {"authorization": ADMIN_TOKEN}
    config.api_key_prefix = {"authorization": "Bearer"}
    return client.ApiClient(config)


def status(port: int, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    except OSError:
        return 0
    finally:
        conn.close()


def read_secret(api: client.ApiClient, name: str, namespace: str) -> Any:
    """The Secret, or None while it does not exist."""
    try:
        return client.CoreV1Api(api).read_namespaced_secret(name, namespace)
    except client.ApiException:
        return None
