"""Out of process: the emulator as a subprocess, `certop operator` started with a KUBECONFIG
(no test-only login path), driven with the `kubernetes` client; real Pebble as the CA."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pebblectl
import pytest
from kube import wait_for
from kubernetes import client
from operatorctl import (
    api_client,
    clusterissuer,
    emulator_process,
    kubeconfig,
    read_secret,
    status,
    web_ingress,
)


@pytest.fixture
def emulator_url(tmp_path: Path) -> Iterator[str]:
    with emulator_process(tmp_path) as (url, _):
        yield url


def start_operator(tmp_path: Path, emulator_url: str, name: str, *args: str,
                   admin: int | None = None) -> tuple[subprocess.Popen[bytes], Path]:
    """`certop operator ARGS` logged in through a KUBECONFIG, its admin port on `admin` (a
    free one if not given); its output in NAME.log."""
    env = dict(os.environ, KUBECONFIG=str(kubeconfig(tmp_path / "kubeconfig", emulator_url)))
    log_path = tmp_path / f"{name}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "certop.cli", "operator", "--cluster-resource-namespace",
             "certop", "--listen", "127.0.0.1", "--admin-port",
             str(admin or pebblectl.free_port()), *args],
            stdout=log, stderr=subprocess.STDOUT, env=env)
    return proc, log_path


@pytest.mark.slow
def test_certop_operator_issues_a_secret_for_an_annotated_ingress(
        tmp_path: Path, emulator_url: str, pebble: pebblectl.PebbleInfo) -> None:
    api = api_client(emulator_url)
    clusterissuer(api, pebble)
    admin = pebblectl.free_port()
    proc, log_path = start_operator(tmp_path, emulator_url, "operator", "-A", "--solver-port",
                                    str(pebble.http_port), admin=admin)
    try:
        wait_for(lambda: status(admin, "/readyz") == 200, timeout=30,
                 what=f"the operator to lead: {log_path.read_text()}")
        body = web_ingress("op.certop.test", "op-tls")
        body["metadata"]["annotations"]["kubernetes.io/tls-acme"] = "true"
        client.NetworkingV1Api(api).create_namespaced_ingress("shop", body)

        wait_for(lambda: read_secret(api, "op-tls", "shop") is not None, timeout=60,
                 what=f"the Secret: {log_path.read_text()[-2000:]}")
        assert read_secret(api, "op-tls", "shop").type == "kubernetes.io/tls"
        lease = client.CoordinationV1Api(api).read_namespaced_lease("certop-leader", "certop")
        assert lease.spec.holder_identity
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log_path.read_text()[-3000:]


@pytest.mark.slow
def test_a_replica_that_does_not_hold_the_lease_is_alive_but_not_ready(
        tmp_path: Path, emulator_url: str) -> None:
    import datetime

    api = api_client(emulator_url)
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    client.CoordinationV1Api(api).create_namespaced_lease("certop", {
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "certop-leader"},
        "spec": {"holderIdentity": "the-other-replica", "leaseDurationSeconds": 3600,
                 "renewTime": now}})
    admin = pebblectl.free_port()
    proc, log_path = start_operator(tmp_path, emulator_url, "operator", "-A", "--solver-port",
                                    str(pebblectl.free_port()), admin=admin)
    try:
        wait_for(lambda: status(admin, "/healthz") == 200, timeout=30, what="the admin port")
        wait_for(lambda: "standing by" in log_path.read_text(), timeout=30,
                 what="the operator to see the other holder")
        # The solver Service must not send the CA's requests to a follower.
        assert status(admin, "/readyz") == 503
        lease = client.CoordinationV1Api(api).read_namespaced_lease("certop-leader", "certop")
        assert lease.spec.holder_identity == "the-other-replica"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log_path.read_text()[-3000:]


def test_no_kubernetes_login_is_one_clear_line(tmp_path: Path) -> None:
    env = dict(os.environ, KUBECONFIG=str(tmp_path / "missing"))
    env.pop("KUBERNETES_SERVICE_HOST", None)
    result = subprocess.run([sys.executable, "-m", "certop.cli", "operator", "--listen",
                             "127.0.0.1", "--solver-port", "0"],
                            capture_output=True, text=True, timeout=60, env=env, check=False)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("certop: error: no Kubernetes login")


@pytest.mark.slow
def test_kill_9_mid_challenge_then_restart_removes_the_leaked_ingress_and_resumes(
        tmp_path: Path, emulator_url: str) -> None:
    from gate import Gate

    from solvers.http01.ingress import TOKEN_LABEL

    api = api_client(emulator_url)
    net = client.NetworkingV1Api(api)
    responder = pebblectl.free_port()

    def start(name: str) -> tuple[subprocess.Popen[bytes], Path]:
        return start_operator(tmp_path, emulator_url, name, "-A", "--solver-port",
                              str(responder), "--lease-duration", "3")

    def temporary() -> list[str]:
        return [i.metadata.name for i in net.list_namespaced_ingress("shop").items
                if (i.metadata.labels or {}).get(TOKEN_LABEL) == "true"]

    def secret() -> Any:
        try:
            return client.CoreV1Api(api).read_namespaced_secret("kill-tls", "shop")
        except client.ApiException:
            return None

    # Pebble validates through a gate held shut: the challenge is answered, never validated.
    with Gate(responder) as gate, \
            pebblectl.running(tmp_path / "pebble", http_port=gate.port) as info:
        clusterissuer(api, info)
        net.create_namespaced_ingress("shop", web_ingress("kill.certop.test", "kill-tls"))
        first, first_log = start("first")
        try:
            assert gate.arrived.wait(60), first_log.read_text()[-3000:]
        finally:
            first.kill()  # SIGKILL: no cleanup runs
            first.wait(timeout=30)
        leaked = temporary()
        assert len(leaked) == 1, "the crash leaves its temporary Ingress behind"
        assert "placed order" in first_log.read_text()

        second, second_log = start("second")
        try:
            # The dead replica's Lease runs out (3 s), the new one leads, sweeps, resumes.
            wait_for(lambda: "presented http-01" in second_log.read_text(), timeout=30,
                     what=f"the resumed order: {second_log.read_text()[-2000:]}")
            gate.open()
            wait_for(lambda: secret() is not None, timeout=60,
                     what=f"the Secret: {second_log.read_text()[-2000:]}")
            wait_for(lambda: not temporary(), what="no temporary Ingress left")
        finally:
            second.send_signal(signal.SIGTERM)
            assert second.wait(timeout=30) == 0, second_log.read_text()[-3000:]
        text = second_log.read_text()
        assert f"removed leftover HTTP-01 Ingress shop/{leaked[0]}" in text
        assert "resuming order" in text
        assert "placed order" not in text


@pytest.mark.slow
def test_an_operator_for_one_namespace_leaves_the_others_alone(
        tmp_path: Path, emulator_url: str, pebble: pebblectl.PebbleInfo) -> None:
    api = api_client(emulator_url)
    clusterissuer(api, pebble)
    net, core = client.NetworkingV1Api(api), client.CoreV1Api(api)
    for name in ("shop", "elsewhere"):  # kopf serves namespaces that exist
        core.create_namespace({"apiVersion": "v1", "kind": "Namespace",
                               "metadata": {"name": name}})
    proc, log_path = start_operator(tmp_path, emulator_url, "operator", "-n", "shop",
                                    "--solver-port", str(pebble.http_port))

    def secret(namespace: str) -> Any:
        try:
            return core.read_namespaced_secret("ns-tls", namespace)
        except client.ApiException:
            return None

    try:
        net.create_namespaced_ingress("elsewhere", web_ingress("else.certop.test", "ns-tls"))
        net.create_namespaced_ingress("shop", web_ingress("shop.certop.test", "ns-tls"))
        wait_for(lambda: secret("shop") is not None, timeout=60,
                 what=f"the Secret in shop: {log_path.read_text()[-2000:]}")
        custom = client.CustomObjectsApi(api)
        assert custom.list_namespaced_custom_object("certop.dev", "v1", "elsewhere",
                                                    "certificates")["items"] == []
        assert secret("elsewhere") is None
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log_path.read_text()[-3000:]


@pytest.mark.slow
def test_a_leader_that_loses_the_api_server_stops_being_ready_and_exits(
        tmp_path: Path) -> None:
    with emulator_process(tmp_path) as (url, emulator):
        admin = pebblectl.free_port()
        proc, log_path = start_operator(tmp_path, url, "operator", "-A", "--solver-port",
                                        str(pebblectl.free_port()), "--lease-duration", "3",
                                        admin=admin)
        try:
            wait_for(lambda: status(admin, "/readyz") == 200, timeout=30,
                     what=f"the operator to lead: {log_path.read_text()}")
            emulator.send_signal(signal.SIGTERM)  # the API server goes away
            emulator.wait(timeout=15)
            # Renewals fail (connection refused): within 2/3 of the lease duration it steps
            # down and exits, so that a follower can take over once the Lease expires.
            wait_for(lambda: proc.poll() is not None, timeout=60,
                     what=f"the operator to stop: {log_path.read_text()[-2000:]}")
            assert proc.returncode == 1
            text = log_path.read_text()
            assert "attempt failed" in text and "the leader Lease was lost" in text
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=30)
