"""`certop run` out of process: the emulator as a subprocess with the all-in-one layout's
RBAC, `certop run` logged in through a KUBECONFIG as that layout's ServiceAccount (the
operator's and the proxy's roles), Pebble validating HTTP-01 through the proxy's own HTTP port, curl
verifying HTTPS through it, a renewal the CA asks for (ARI through the fault-injecting proxy)
swapping the certificate live, and the Ingress's deletion stopping its routes."""

from __future__ import annotations

import base64
import datetime
import http.client
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pebblectl
import pytest
from cluster_proxy import endpoint_slice, ingress_class, service
from echo import Echo
from kube import wait_for
from kubernetes import client
from operatorctl import (
    api_client,
    clusterissuer,
    emulator_process,
    kubeconfig,
    status,
)

from certop.acme import ari

NS = "shop"
HOST = "run.certop.test"


def plain(port: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/", headers={"Host": HOST})
        return conn.getresponse().status
    finally:
        conn.close()


def curl(port: int, root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "--silent", "--show-error", "--max-time", "5", "--cacert", str(root),
         "--resolve", f"{HOST}:{port}:127.0.0.1", "--write-out", "\n%{http_code}",
         f"https://{HOST}:{port}/"], capture_output=True, text=True, check=False)


def served_id(port: int) -> str:
    """The ARI certificate ID of the leaf the proxy presents for HOST (openssl s_client)."""
    out = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", HOST],
        input="", capture_output=True, text=True, timeout=10, check=False).stdout
    end = "-----END CERTIFICATE-----"
    pem = out[out.index("-----BEGIN CERTIFICATE-----"):out.index(end) + len(end)]
    return ari.cert_id(pem.encode())


def stored_id(api: client.ApiClient) -> str | None:
    try:
        found = client.CoreV1Api(api).read_namespaced_secret("run-tls", NS)
    except client.ApiException:
        return None
    return ari.cert_id(base64.b64decode(found.data["tls.crt"]))


def start(tmp_path: Path, url: str, name: str, token: str, *args: str
          ) -> tuple[subprocess.Popen[bytes], Path]:
    """`certop ARGS` logged in through a KUBECONFIG with `token`; its output in NAME.log."""
    env = dict(os.environ, KUBECONFIG=str(kubeconfig(tmp_path / f"{name}.kubeconfig", url,
                                                     token)))
    log_path = tmp_path / f"{name}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "certop.cli", *args],
                                stdout=log, stderr=subprocess.STDOUT, env=env)
    return proc, log_path


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["all-in-one", "split"])
def test_issued_through_certops_proxy_served_renewed_live_and_unrouted(
        tmp_path: Path, layout: str) -> None:
    """all-in-one: `certop run` (HTTP-01 tokens shared in-process). split: `certop operator`
    and `certop proxy` as two processes, each as its own ServiceAccount: the proxy answers
    the operator's challenges from its temporary Ingress."""
    from faultproxy import FaultProxy
    from kmock_ext import OPERATOR_TOKEN, PROXY_TOKEN

    http_port, https_port, admin = (pebblectl.free_port() for _ in range(3))
    with emulator_process(tmp_path, layout) as (url, _), Echo("web") as web, \
            pebblectl.running(tmp_path / "pebble", http_port=http_port) as info, \
            FaultProxy(info, tmp_path / "pebble") as ca:
        ca.rate_limited = False
        now = datetime.datetime.now(datetime.UTC)
        ca.ari_window = (now + datetime.timedelta(days=1), now + datetime.timedelta(days=2))
        ca.ari_due_first = True  # the first certificate is to be renewed at once
        api = api_client(url)
        clusterissuer(api, info, server=ca.directory_url)
        net = client.NetworkingV1Api(api)
        net.create_ingress_class(ingress_class("certop"))
        core, discovery = client.CoreV1Api(api), client.DiscoveryV1Api(api)
        core.create_namespaced_service(NS, service("web"))
        discovery.create_namespaced_endpoint_slice(
            NS, endpoint_slice("web-1", "web", web.port, ["127.0.0.1"]))
        body: dict[str, Any] = {
            "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": "run", "annotations": {
                "cert-manager.io/cluster-issuer": "pebble"}},
            "spec": {"ingressClassName": "certop",
                     "tls": [{"hosts": [HOST], "secretName": "run-tls"}],
                     "rules": [{"host": HOST, "http": {"paths": [{
                         "path": "/", "pathType": "Prefix",
                         "backend": {"service": {"name": "web", "port": {"name": "http"}}}}]}}]}}
        net.create_namespaced_ingress(NS, body)
        root = tmp_path / "root.pem"
        root.write_text(info.root_pem())
        common = ["--listen", "127.0.0.1", "-A"]
        serving = ["--http-port", str(http_port), "--https-port", str(https_port),
                   "--admin-port", str(admin), "--publish-address", "127.0.0.1"]
        operating = ["--cluster-resource-namespace", "certop",
                     "--solver-port", str(pebblectl.free_port())]
        if layout == "all-in-one":
            procs = [start(tmp_path, url, "run", OPERATOR_TOKEN, "run", *common, *serving,
                           *operating)]
        else:
            procs = [start(tmp_path, url, "operator", OPERATOR_TOKEN, "operator", *common,
                           *operating, "--http01-self-check", f"127.0.0.1:{http_port}"),
                     start(tmp_path, url, "proxy", PROXY_TOKEN, "proxy", *common, *serving)]
        log_path = procs[0][1]
        try:
            wait_for(lambda: status(admin, "/readyz") == 200, timeout=30,
                     what=f"the proxy ready: {log_path.read_text()[-2000:]}")
            # Issued (HTTP-01 answered on the proxy's HTTP port), then renewed at once (the
            # CA's renewal information says so); the renewed one is stored and served live.
            wait_for(lambda: len(ca.ari_asked) == 2 and stored_id(api) == ca.ari_asked[1],
                     timeout=60, what=f"the renewed certificate: {log_path.read_text()[-3000:]}")
            wait_for(lambda: served_id(https_port) == ca.ari_asked[1], timeout=10,
                     what="the renewed certificate served")
            answer = curl(https_port, root)
            assert answer.returncode == 0, answer.stderr
            assert answer.stdout.endswith("\n200") and '"service": "web"' in answer.stdout
            # The Ingress's status names the published address.
            wait_for(lambda: (net.read_namespaced_ingress("run", NS).status.load_balancer
                              .ingress or [None])[0] is not None, timeout=10,
                     what="the Ingress status")
            assert net.read_namespaced_ingress("run", NS).status.load_balancer.ingress[0].ip \
                == "127.0.0.1"
            net.delete_namespaced_ingress("run", NS)
            # Plain HTTP redirected to HTTPS while the Ingress has TLS; a 404 once it is gone.
            assert plain(http_port) == 308
            wait_for(lambda: plain(http_port) == 404, timeout=10, what="the routes gone")
        finally:
            for proc, _ in procs:
                proc.send_signal(signal.SIGTERM)
            for proc, path in procs:
                assert proc.wait(timeout=30) == 0, path.read_text()[-3000:]
