"""Leader election over a Lease: one holder; another takes over only after observing no
change for the lease duration by its own clock; a holder that cannot renew (any failure,
the API gone or silent) steps down before that; every request has a timeout."""

from __future__ import annotations

import asyncio
import datetime
import socket
import threading
from collections.abc import Iterator

import pytest
from kube import EmulatorThread, wait_for
from kubernetes import client

from certop.k8s.lease import Lease


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture(scope="module")
def kube() -> Iterator[EmulatorThread]:
    with EmulatorThread() as emulator:
        yield emulator


def set_renew_time(kube: EmulatorThread, name: str, when: datetime.datetime) -> None:
    client.CoordinationV1Api(kube.api_client()).patch_namespaced_lease(name, "certop", {
        "spec": {"renewTime": when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")}})


def test_another_replica_takes_over_only_after_observing_no_change_for_the_duration(
        kube: EmulatorThread) -> None:
    clock = Clock()
    a = Lease(kube.operator_client(), "certop", "leader-1", "replica-a", 15, clock)
    b = Lease(kube.operator_client(), "certop", "leader-1", "replica-b", 15, clock)
    assert a.try_acquire() and a.held
    assert not b.try_acquire()
    clock.t += 5
    assert a.try_acquire()  # renewal
    # replica-a's clock is far behind: its renewTime says five minutes ago. Not expired for
    # replica-b, which saw the record change just now.
    set_renew_time(kube, "leader-1", datetime.datetime.now(datetime.UTC)
                   - datetime.timedelta(minutes=5))
    assert not b.try_acquire()
    clock.t += 14.9  # replica-a stopped renewing; not yet a full duration without change
    assert not b.try_acquire()
    assert not a.held  # a holder that has not renewed for 2/3 of the duration stepped down
    clock.t += 0.2
    assert b.try_acquire() and b.held
    lease = client.CoordinationV1Api(kube.api_client()).read_namespaced_lease("leader-1",
                                                                             "certop")
    assert lease.spec.holder_identity == "replica-b"
    assert lease.spec.lease_transitions == 1
    assert not a.try_acquire() and not a.held


def test_a_renew_time_in_the_future_does_not_keep_a_dead_holder_forever(
        kube: EmulatorThread) -> None:
    clock = Clock()
    ghost = Lease(kube.operator_client(), "certop", "leader-3", "ghost", 15, clock)
    assert ghost.try_acquire()
    set_renew_time(kube, "leader-3", datetime.datetime.now(datetime.UTC)
                   + datetime.timedelta(days=365))  # a holder whose clock runs a year ahead
    b = Lease(kube.operator_client(), "certop", "leader-3", "replica-b", 15, clock)
    assert not b.try_acquire()
    clock.t += 15.1
    assert b.try_acquire()


def test_a_released_lease_is_taken_at_once(kube: EmulatorThread) -> None:
    a = Lease(kube.operator_client(), "certop", "leader-2", "replica-a")
    b = Lease(kube.operator_client(), "certop", "leader-2", "replica-b")
    assert a.try_acquire()
    a.release()
    assert b.try_acquire()


def test_a_holder_that_cannot_reach_the_api_fails_its_renewals_and_steps_down_in_time(
        ) -> None:
    clock = Clock()
    with EmulatorThread() as gone:
        a = Lease(gone.operator_client(), "certop", "leader", "replica-a", 15, clock)
        assert a.try_acquire()
    # The API server is gone: connection refused is a failed renewal, not an exception.
    clock.t += 5
    assert not a.try_acquire()
    assert a.held  # still within the renew deadline
    clock.t += 5
    assert not a.try_acquire()
    assert not a.held  # 10 s (2/3 of 15) without a renewal: stepped down
    assert a.renew_deadline < a.duration  # before any other replica may take over
    assert a.healthy()  # the loop goes on: attempts end


def test_an_api_server_that_never_answers_fails_the_attempt_at_its_request_timeout() -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # connections are accepted by the kernel, never answered
    port = silent.getsockname()[1]
    try:
        config = client.Configuration()
        config.host = f"http://127.0.0.1:{port}"
        lease = Lease(client.ApiClient(config), "certop", "leader", "replica-a", duration=1.5)
        results: list[bool] = []
        attempt = threading.Thread(target=lambda: results.append(lease.try_acquire()),
                                   daemon=True)
        attempt.start()
        wait_for(lambda: not attempt.is_alive(), timeout=30, what="the attempt to end")
        assert results == [False]
    finally:
        silent.close()


async def test_the_holder_reports_the_lease_lost_when_the_api_goes_away() -> None:
    emulator = EmulatorThread()
    await asyncio.to_thread(emulator.__enter__)
    lease = Lease(emulator.operator_client(), "certop", "leader", "replica-a", duration=1.5)
    leading, lost, stop = asyncio.Event(), asyncio.Event(), asyncio.Event()
    holder = asyncio.create_task(lease.hold(leading, lost, stop))
    try:
        await asyncio.wait_for(leading.wait(), 30)
        await asyncio.to_thread(emulator.__exit__, None, None, None)  # the API goes away
        await asyncio.wait_for(lost.wait(), 30)
        assert not lease.held
        await asyncio.wait_for(holder, 30)  # the loop ends once the Lease is lost
    finally:
        stop.set()
        if not holder.done():
            holder.cancel()


def test_the_times_written_to_the_lease_come_from_the_clock_it_is_given(
        kube: EmulatorThread) -> None:
    wall = datetime.datetime(2031, 5, 6, 7, 8, 9, 123456, tzinfo=datetime.UTC)
    lease = Lease(kube.operator_client(), "certop", "leader-wall", "replica-a", 15, Clock(),
                  wall=lambda: wall)
    assert lease.try_acquire()
    spec = client.CoordinationV1Api(kube.api_client()).read_namespaced_lease(
        "leader-wall", "certop").spec
    assert spec.acquire_time == wall and spec.renew_time == wall
