"""Leader election over a `coordination.k8s.io/v1` Lease (kopf's peering is not election).

One replica holds the Lease and runs the handlers; the others wait and take over when the
holder stops renewing (it crashed or lost the API server) for `duration` seconds. Renewal
writes carry the resourceVersion they read, so two replicas cannot both win a race.
Only the holder is ready (`/readyz`), so the solver Service sends challenge requests to the
replica that holds the tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _micro(when: datetime.datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse(value: Any) -> datetime.datetime | None:
    if isinstance(value, datetime.datetime):
        return value if value.tzinfo else value.replace(tzinfo=datetime.UTC)
    if isinstance(value, str) and value:
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return None


class Lease:
    def __init__(self, api: client.ApiClient, namespace: str, name: str, identity: str,
                 duration: float = 15.0) -> None:
        self.api = client.CoordinationV1Api(api)
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.duration = duration
        self.held = False
        self._told_waiting = False

    def try_acquire(self) -> bool:
        """One attempt to take or renew the Lease (blocking; run it in a thread)."""
        now = _now()
        spec = {"holderIdentity": self.identity, "leaseDurationSeconds": int(self.duration),
                "renewTime": _micro(now)}
        try:
            lease = self.api.read_namespaced_lease(self.name, self.namespace)
        except ApiException as exc:
            if exc.status != 404:
                return self._lost(f"reading the Lease: HTTP {exc.status}")
            body: Any = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                         "metadata": {"name": self.name, "namespace": self.namespace},
                         "spec": {**spec, "acquireTime": _micro(now)}}
            try:
                self.api.create_namespaced_lease(self.namespace, body)
            except ApiException:
                return self._lost("another replica created the Lease first")
            return self._won()
        holder = lease.spec.holder_identity if lease.spec else None
        renewed = _parse(lease.spec.renew_time) if lease.spec else None
        duration = (lease.spec.lease_duration_seconds if lease.spec else None) or self.duration
        expired = renewed is None or (now - renewed).total_seconds() > duration
        if holder not in (None, "", self.identity) and not expired:
            if not self.held and not self._told_waiting:
                log.info("standing by: the leader Lease %s/%s is held by %s", self.namespace,
                         self.name, holder)
                self._told_waiting = True
            return self._lost(None)
        version = lease.metadata.resource_version if lease.metadata else None
        patch: dict[str, Any] = {"metadata": {"resourceVersion": version}, "spec": spec}
        if holder != self.identity:
            patch["spec"]["acquireTime"] = _micro(now)
        try:
            self.api.patch_namespaced_lease(self.name, self.namespace, patch)
        except ApiException as exc:
            return self._lost(f"renewing the Lease: HTTP {exc.status}")
        return self._won()

    def release(self) -> None:
        if not self.held:
            return
        with contextlib.suppress(ApiException):
            self.api.patch_namespaced_lease(self.name, self.namespace,
                                            {"spec": {"holderIdentity": "",
                                                      "renewTime": None}})
        self.held = False

    def _won(self) -> bool:
        if not self.held:
            log.info("leader Lease %s/%s acquired by %s", self.namespace, self.name,
                     self.identity)
        self.held = True
        return True

    def _lost(self, why: str | None) -> bool:
        if self.held:
            log.warning("leader Lease %s/%s lost%s", self.namespace, self.name,
                        f": {why}" if why else "")
        self.held = False
        return False

    async def hold(self, leading: asyncio.Event, lost: asyncio.Event,
                   stop: asyncio.Event) -> None:
        """Acquire, then renew every third of the duration; set `leading` once held and
        `lost` if it is lost after that. Returns when `stop` is set."""
        while not stop.is_set():
            held = await asyncio.to_thread(self.try_acquire)
            if held:
                leading.set()
            elif leading.is_set():
                lost.set()
                return
            with contextlib.suppress(TimeoutError):  # the next renewal is due: check again
                await asyncio.wait_for(stop.wait(), self.duration / 3)
        await asyncio.to_thread(self.release)
