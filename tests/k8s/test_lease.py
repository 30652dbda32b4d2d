"""Leader election over a Lease: one holder, renewals, take-over after the holder stops."""

from __future__ import annotations

import datetime
from collections.abc import Iterator

import pytest
from kube import EmulatorThread
from kubernetes import client

from certop.k8s.lease import Lease


@pytest.fixture(scope="module")
def kube() -> Iterator[EmulatorThread]:
    with EmulatorThread() as emulator:
        yield emulator


def test_one_replica_holds_the_lease_and_another_takes_over_when_it_lapses(
        kube: EmulatorThread) -> None:
    a = Lease(kube.operator_client(), "certop", "leader-1", "replica-a", duration=15)
    b = Lease(kube.operator_client(), "certop", "leader-1", "replica-b", duration=15)
    assert a.try_acquire() and a.held
    assert not b.try_acquire()
    assert a.try_acquire()  # renewal
    # replica-a stops renewing (it crashed long ago): its renewTime is far in the past.
    old = (datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5))
    coordination = client.CoordinationV1Api(kube.api_client())
    coordination.patch_namespaced_lease("leader-1", "certop", {"spec": {
        "renewTime": old.strftime("%Y-%m-%dT%H:%M:%S.%fZ")}})
    assert b.try_acquire() and b.held
    lease = coordination.read_namespaced_lease("leader-1", "certop")
    assert lease.spec.holder_identity == "replica-b"
    assert not a.try_acquire() and not a.held


def test_a_released_lease_is_taken_at_once(kube: EmulatorThread) -> None:
    a = Lease(kube.operator_client(), "certop", "leader-2", "replica-a")
    b = Lease(kube.operator_client(), "certop", "leader-2", "replica-b")
    assert a.try_acquire()
    a.release()
    assert b.try_acquire()
