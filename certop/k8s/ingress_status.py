"""`status.loadBalancer.ingress` of the Ingresses the proxy serves.

Every replica serves; one writes: the holder of a Lease (`k8s.lease`, the operator's
election). After each rebuild the holder compares what each Ingress's status says (from the
watch cache, so nothing is read) with the address it publishes, and patches only those that
differ: the Ingresses it serves get the address, an Ingress it no longer serves that still
carries exactly that address gets it removed, unless it now names another controller's
class (then its status is that controller's). Nothing else is ever written. The address
is `--publish-address` (an IP, else a host name) or what the `--publish-service` Service's
own status says (its LoadBalancer's addresses).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kubernetes import client

from certop.k8s.lease import Lease

log = logging.getLogger(__name__)
Key = tuple[str, str]
RETRY = 5.0
"""Seconds before a status write that failed is tried again."""
LbEntry = tuple[tuple[str, str], ...]
"""One status.loadBalancer.ingress list, comparable: ((field, value), ...) per entry,
`field` "ip" or "hostname"."""


def address_entries(address: str) -> LbEntry:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return (("hostname", address),)
    return (("ip", address),)


def entries_of(raw: Sequence[Mapping[str, Any]] | None) -> LbEntry:
    """A status's `loadBalancer.ingress` list in comparable form (IPs and host names)."""
    found: list[tuple[str, str]] = []
    for item in raw or []:
        if isinstance(item, Mapping):
            for field in ("ip", "hostname"):
                if item.get(field):
                    found.append((field, str(item[field])))
    return tuple(found)


def status_body(entries: LbEntry) -> dict[str, Any]:
    return {"status": {"loadBalancer": {"ingress": [{k: v} for k, v in entries] or None}}}


@dataclass(frozen=True)
class Seen:
    """An Ingress as the writer needs it: served by this proxy or not, and its status."""

    served: bool
    status: LbEntry
    version: str = ""
    """Its resourceVersion as the cache has it."""
    other: bool = False
    """It names a class of another controller: its status is that controller's, never
    written here."""


class StatusWriter:
    def __init__(self, api: client.ApiClient, lease: Lease,
                 published: Callable[[], LbEntry]) -> None:
        self.net = client.NetworkingV1Api(api)
        self.lease = lease
        self.published = published
        self.writes = 0
        self._wanted: dict[Key, Seen] = {}
        self._written: dict[Key, tuple[str, LbEntry]] = {}
        """Key -> (the resourceVersion the cache showed, what we wrote over it): not written
        again while the cache has not caught up with our own write (a later version, ours
        or anyone's, is looked at afresh)."""
        self._dirty = asyncio.Event()

    def update(self, ingresses: Mapping[Key, Seen]) -> None:
        """After a rebuild (on the event loop): what the cache now says."""
        self._wanted = dict(ingresses)
        for key in set(self._written) - set(self._wanted):
            del self._written[key]
        self._dirty.set()

    def wake(self) -> None:
        """The published address or the leadership changed: look again."""
        self._dirty.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Write while holding the Lease; elect in the background until `stop`."""
        election = asyncio.create_task(self._elect(stop))
        try:
            while not stop.is_set():
                waiting = {asyncio.create_task(self._dirty.wait()),
                           asyncio.create_task(stop.wait())}
                _, pending = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                for task in pending:
                    task.cancel()
                if stop.is_set():
                    break
                self._dirty.clear()
                if self.lease.held:
                    await self._write()
        finally:
            await election

    async def _elect(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            leading, lost = asyncio.Event(), asyncio.Event()
            leader = asyncio.create_task(self.lease.hold(leading, lost, stop))
            got = asyncio.create_task(leading.wait())
            await asyncio.wait({leader, got}, return_when=asyncio.FIRST_COMPLETED)
            got.cancel()
            if leading.is_set():
                log.info("writing Ingress status (holding Lease %s/%s)", self.lease.namespace,
                         self.lease.name)
                self.wake()
            await leader
            if lost.is_set():
                log.warning("Lease %s/%s lost: another replica writes Ingress status",
                            self.lease.namespace, self.lease.name)

    async def _write(self) -> None:
        address = self.published()
        for key, seen in self._wanted.items():
            if seen.served:
                target = address
            elif address and seen.status == address and not seen.other:
                target = ()  # ours once (no longer served): take our address away
            else:
                continue
            if seen.status == target or (seen.served and not target) or \
                    self._written.get(key) == (seen.version, target):
                continue
            try:
                await asyncio.to_thread(self.net.patch_namespaced_ingress_status,
                                        key[1], key[0], status_body(target))
                self.writes += 1
                self._written[key] = (seen.version, target)
            except Exception as exc:  # looked at again in RETRY seconds
                log.warning("status of Ingress %s/%s not written: %s", key[0], key[1],
                            getattr(exc, "status", None) or exc)
                asyncio.get_running_loop().call_later(RETRY, self.wake)
