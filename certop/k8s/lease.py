"""Leader election over a `coordination.k8s.io/v1` Lease (kopf's peering is not election).

One replica holds the Lease and runs the handlers; the others wait and take over when the
holder stops renewing (it crashed or lost the API server). The rules, as client-go's
leaderelection has them:
- Expiry is judged by this replica's own clock from when it *observed* the current record
  (holder, renewTime, ...) last change: another replica may take over only after seeing no
  change for `duration` seconds. The holder's renewTime is never compared with our clock, so
  clock skew between nodes cannot hand the Lease over early.
- The holder renews every `retry` seconds; any failure (an HTTP error, connection refused, a
  timeout, anything raised) is a failed renewal. A holder that has not renewed for
  `renew_deadline` seconds (2/3 of the duration) has lost the Lease and stops, so it has
  stopped before another replica can see the Lease expire (a third of the duration later).
- Every request has a timeout (`timeout`), so an attempt never hangs.
- Renewal writes carry the resourceVersion they read, so two replicas cannot both win a race.
Only the holder is ready (`/readyz`), so the solver Service sends challenge requests to the
replica that holds the tokens. `healthy()` says whether the election loop is still making
attempts (the liveness of a replica that cannot reach the API).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import time
from collections.abc import Callable
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _micro(when: datetime.datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Lease:
    def __init__(self, api: client.ApiClient, namespace: str, name: str, identity: str,
                 duration: float = 15.0, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], datetime.datetime] = _now) -> None:
        self.api = client.CoordinationV1Api(api)
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.duration = duration
        """Seconds without an observed change before another replica may take the Lease."""
        self.renew_deadline = duration * 2 / 3
        """Seconds the holder may go without a successful renewal before it steps down."""
        self.retry = duration / 5
        """Seconds between attempts (renewals while holding, checks while standing by)."""
        self.timeout = duration / 5
        """Seconds one API request may take."""
        self.clock = clock
        """Local monotonic seconds: all timing here is by this replica's own clock."""
        self.wall = wall
        """UTC wall time, only written (renewTime, acquireTime) for others to read, never
        compared."""
        self._renewed_at: float | None = None
        """When our last successful write of the Lease started."""
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0
        self._taken = False
        """Another replica holds the Lease (observed since our last renewal)."""
        self._told_waiting = False
        self._last_attempt = clock()

    @property
    def held(self) -> bool:
        """We hold the Lease: renewed within the renew deadline and not seen taken since."""
        return (self._renewed_at is not None and not self._taken
                and self.clock() - self._renewed_at < self.renew_deadline)

    def healthy(self) -> bool:
        """The election loop is alive: an attempt ended within three durations."""
        return self.clock() - self._last_attempt < 3 * self.duration

    def try_acquire(self) -> bool:
        """One attempt to take or renew the Lease (blocking; run it in a thread): True when
        this attempt wrote it. Never raises: a failure is a failed attempt."""
        started = self.clock()
        was_held = self.held
        try:
            won = self._attempt(started)
        except Exception as exc:  # any failure is a failed renewal
            log.warning("leader Lease %s/%s: attempt failed: %s: %s", self.namespace,
                        self.name, type(exc).__name__, exc)
            won = False
        finally:
            self._last_attempt = self.clock()
        if won:
            if not was_held:
                log.info("leader Lease %s/%s acquired by %s", self.namespace, self.name,
                         self.identity)
        elif was_held and not self.held:
            log.warning("leader Lease %s/%s lost", self.namespace, self.name)
        return won

    def _attempt(self, started: float) -> bool:
        now = self.wall()
        spec: dict[str, Any] = {"holderIdentity": self.identity,
                                "leaseDurationSeconds": max(1, round(self.duration)),
                                "renewTime": _micro(now)}
        try:
            lease = self.api.read_namespaced_lease(self.name, self.namespace,
                                                   _request_timeout=self.timeout)
        except ApiException as exc:
            if exc.status != 404:
                raise
            body: Any = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                         "metadata": {"name": self.name, "namespace": self.namespace},
                         "spec": {**spec, "acquireTime": _micro(now), "leaseTransitions": 0}}
            try:
                self.api.create_namespaced_lease(self.namespace, body,
                                                 _request_timeout=self.timeout)
            except ApiException as exc2:
                if exc2.status == 409:
                    return False  # another replica created it first
                raise
            return self._renewed(started)
        record = lease.spec
        holder = record.holder_identity if record else None
        observed = (holder, str(record.renew_time) if record else None,
                    str(record.acquire_time) if record else None,
                    record.lease_duration_seconds if record else None,
                    record.lease_transitions if record else None)
        if observed != self._observed:
            self._observed, self._observed_at = observed, self.clock()
        if holder not in (None, "", self.identity):
            self._taken = True
            duration = (record.lease_duration_seconds if record else None) or self.duration
            if self.clock() < self._observed_at + duration:
                if not self._told_waiting:
                    log.info("standing by: the leader Lease %s/%s is held by %s",
                             self.namespace, self.name, holder)
                    self._told_waiting = True
                return False
        version = lease.metadata.resource_version if lease.metadata else None
        patch: dict[str, Any] = {"metadata": {"resourceVersion": version}, "spec": spec}
        if holder != self.identity:
            patch["spec"]["acquireTime"] = _micro(now)
            patch["spec"]["leaseTransitions"] = ((record.lease_transitions if record else 0)
                                                 or 0) + 1
        try:
            self.api.patch_namespaced_lease(self.name, self.namespace, patch,
                                            _request_timeout=self.timeout)
        except ApiException as exc:
            if exc.status == 409:
                return False  # someone wrote it since we read it
            raise
        return self._renewed(started)

    def _renewed(self, started: float) -> bool:
        self._renewed_at, self._taken, self._told_waiting = started, False, False
        return True

    def release(self) -> None:
        """Give the Lease up at once (a clean stop), so a follower need not wait."""
        if not self.held:
            return
        self._renewed_at = None
        with contextlib.suppress(Exception):
            self.api.patch_namespaced_lease(self.name, self.namespace,
                                            {"spec": {"holderIdentity": "",
                                                      "renewTime": None}},
                                            _request_timeout=self.timeout)

    async def hold(self, leading: asyncio.Event, lost: asyncio.Event,
                   stop: asyncio.Event) -> None:
        """Acquire, then renew every `retry` seconds; set `leading` once held and `lost` as
        soon as it is no longer held after that (not renewed within the renew deadline, or
        taken). Returns when `stop` is set or the Lease is lost."""
        while not stop.is_set():
            attempt = asyncio.ensure_future(asyncio.to_thread(self.try_acquire))
            # The request timeout bounds the attempt; the deadline is watched meanwhile too.
            while not attempt.done():
                await asyncio.wait({attempt}, timeout=self._until_deadline())
                if leading.is_set() and not self.held:
                    break
            if leading.is_set() and not self.held:
                lost.set()
                attempt.cancel()
                return
            if attempt.result():
                leading.set()
            with contextlib.suppress(TimeoutError):  # the next attempt is due: check again
                await asyncio.wait_for(stop.wait(), self._until_deadline(self.retry))
        await asyncio.to_thread(self.release)

    def _until_deadline(self, at_most: float | None = None) -> float:
        """Seconds until the renew deadline (at most `at_most`), at least a little."""
        left = self.retry if at_most is None else at_most
        if self._renewed_at is not None:
            left = min(left, self._renewed_at + self.renew_deadline - self.clock())
        return max(left, 0.01)
