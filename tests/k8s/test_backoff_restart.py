"""A restarted operator continues a Certificate's failure backoff from its status
(`failedIssuanceAttempts`, `lastFailureTime`) instead of starting again from the first,
shortest delay."""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from typing import Any

import kopf
import pytest
from fakeclock import FakeClock
from kube import EmulatorThread, OperatorThread, wait_for

from certop.core.backoff import Backoff
from certop.k8s.certificates import CertificateController, OperatorSettings
from solvers.http01 import TokenStore

NS = "shop"


@pytest.fixture
def kube() -> Iterator[EmulatorThread]:
    with EmulatorThread() as emulator:
        yield emulator


def failed_before(kube: EmulatorThread, attempts: int, last: str) -> None:
    """A Certificate whose issuer does not exist (every attempt fails at once), with the
    status a previous run left: `attempts` failures, the last at `last`."""
    custom = kube.custom()
    custom.create_namespaced_custom_object("certop.dev", "v1", NS, "certificates", {
        "apiVersion": "certop.dev/v1", "kind": "Certificate",
        "metadata": {"name": "web-tls"},
        "spec": {"secretName": "web-tls", "dnsNames": ["web.certop.test"],
                 "issuerRef": {"name": "missing", "kind": "ClusterIssuer"}}})
    custom.patch_namespaced_custom_object_status(
        "certop.dev", "v1", NS, "certificates", "web-tls", {"status": {
            "conditions": [{"type": "Ready", "status": "False", "reason": "ApiException",
                            "message": f"attempt {attempts} failed"}],
            "failedIssuanceAttempts": attempts, "lastFailureTime": last}})


def status(kube: EmulatorThread) -> dict[str, Any]:
    found = kube.custom().get_namespaced_custom_object("certop.dev", "v1", NS, "certificates",
                                                       "web-tls")
    return dict(found.get("status") or {})


def operator(kube: EmulatorThread, clock: FakeClock | None = None) -> OperatorThread:
    registry = kopf.OperatorRegistry()
    CertificateController(kube.operator_client(), TokenStore(),
                          OperatorSettings(resource_namespace="certop"), clock=clock,
                          backoff=Backoff(base=10.0)).register(registry)
    return OperatorThread(registry, kube.url)


def test_a_restarted_operator_counts_on_from_the_failures_on_the_status(
        kube: EmulatorThread) -> None:
    failed_before(kube, 3, "2001-01-01T00:00:00Z")  # its backoff long over
    with operator(kube):
        wait_for(lambda: status(kube).get("failedIssuanceAttempts") != 3, timeout=30,
                 what="the next attempt")
        assert status(kube)["failedIssuanceAttempts"] == 4
        assert "attempt 4 failed, next in" in status(kube)["conditions"][0]["message"]


def test_a_restarted_operator_waits_out_the_rest_of_the_backoff_first(
        kube: EmulatorThread, caplog: pytest.LogCaptureFixture) -> None:
    last = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
    # 5 s after the third failure: its backoff (20 s to 40 s after the third) is not over.
    failed_before(kube, 3, "2030-01-01T00:00:00Z")
    clock = FakeClock(last + datetime.timedelta(seconds=5))

    def held() -> list[str]:
        return [r.getMessage() for r in caplog.records
                if "attempt 3 failed before this run" in r.getMessage()]

    with caplog.at_level("INFO", logger="certop"), operator(kube, clock):
        wait_for(lambda: bool(held()), timeout=30, what="the restored backoff")
        seconds = float(held()[0].rsplit("next attempt in ", 1)[1].rstrip("s"))
        assert 15 <= seconds <= 35
        # Nothing was attempted before the log line: the status is the previous run's.
        assert status(kube)["failedIssuanceAttempts"] == 3
