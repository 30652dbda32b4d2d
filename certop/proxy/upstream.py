"""Upstream side of the proxy: endpoint choice per request and a keep-alive connection pool.

The endpoints of each backend come with the serving snapshot (`core.serving`): standalone mode
maps them from `--service`, cluster mode from EndpointSlices. `Balancer` picks endpoints round
robin per request and skips endpoints that failed recently. `Pool` keeps idle connections per
endpoint.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Generic, Protocol, TypeVar

from certop.core.models import ServiceBackend
from certop.core.serving import Address

FAIL_HOLD = 5.0
"""Seconds a failed endpoint is skipped before it is tried again."""


class Balancer:
    """Round robin per request over the healthy endpoints of a backend."""

    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._monotonic = monotonic
        """Seconds that never go back; read only while some endpoint has failed lately."""
        self._counters: dict[ServiceBackend, itertools.count[int]] = {}
        self._failed: dict[Address, float] = {}
        self._addresses: dict[ServiceBackend, tuple[Address, ...]] = {}

    @property
    def endpoints(self) -> Mapping[ServiceBackend, tuple[Address, ...]]:
        return self._addresses

    @endpoints.setter
    def endpoints(self, endpoints: Mapping[ServiceBackend, tuple[Address, ...]]) -> None:
        """The endpoints of every backend (a snapshot's); round robin and failures stay."""
        self._addresses = dict(endpoints)

    def _addrs(self, backend: ServiceBackend) -> Sequence[Address]:
        return self._addresses.get(backend, ())

    def pick(self, backend: ServiceBackend) -> Address | None:
        """The endpoint for this request (the common case: nothing failed lately)."""
        if self._failed:
            found = self.candidates(backend)
            return found[0] if found else None
        addrs = self._addresses.get(backend, ())
        if not addrs:
            return None
        counter = self._counters.get(backend)
        if counter is None:
            counter = self._counters[backend] = itertools.count()
        return addrs[next(counter) % len(addrs)]

    def candidates(self, backend: ServiceBackend, first: Address | None = None) -> list[Address]:
        """Endpoints to try in order: healthy ones round robin (from `first` when it is
        healthy), recently failed ones last. A failure whose hold is over is forgotten, so the
        endpoint takes its turn again (one step of the round robin per call: two steps would
        skip every other endpoint, and with two endpoints never return to the one that
        failed)."""
        addrs = self._addrs(backend)
        if not addrs:
            return []
        if self._failed:
            now = self._monotonic()
            for addr in [a for a, until in self._failed.items() if until <= now]:
                del self._failed[addr]
        if first is not None and first in addrs and first not in self._failed:
            i = addrs.index(first)
            start = [*addrs[i:], *addrs[:i]]
        else:
            counter = self._counters.get(backend)
            if counter is None:
                counter = self._counters[backend] = itertools.count()
            healthy_now = [a for a in addrs if a not in self._failed] or list(addrs)
            i = next(counter) % len(healthy_now)
            start = [*healthy_now[i:], *healthy_now[:i]]
        if not self._failed:
            return start
        healthy = [a for a in start if a not in self._failed]
        failed = list(dict.fromkeys(a for a in (*start, *addrs) if a in self._failed))
        return [*healthy, *failed] if healthy else failed

    def failed(self, addr: Address) -> None:
        self._failed[addr] = self._monotonic() + FAIL_HOLD

    def succeeded(self, addr: Address) -> None:
        if self._failed:
            self._failed.pop(addr, None)


class Pooled(Protocol):
    """What the pool needs of an upstream connection."""

    @property
    def addr(self) -> Address: ...

    @property
    def connected(self) -> bool: ...

    @property
    def transport(self) -> asyncio.Transport | None: ...


C = TypeVar("C", bound=Pooled)


class Pool(Generic[C]):
    """Idle keep-alive upstream connections per endpoint (most recently used first)."""

    def __init__(self, max_idle_per_endpoint: int = 256) -> None:
        self.max_idle = max_idle_per_endpoint
        self._idle: dict[Address, list[C]] = {}

    def take(self, addr: Address) -> C | None:
        idle = self._idle.get(addr)
        while idle:
            conn = idle.pop()
            if conn.connected and conn.transport is not None and not conn.transport.is_closing():
                return conn
        return None

    def release(self, conn: C) -> None:
        idle = self._idle.setdefault(conn.addr, [])
        if len(idle) >= self.max_idle:
            if conn.transport is not None:
                conn.transport.close()
            return
        idle.append(conn)

    def forget(self, conn: C) -> None:
        idle = self._idle.get(conn.addr)
        if idle and conn in idle:
            idle.remove(conn)

    def close(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                if conn.transport is not None:
                    conn.transport.close()
        self._idle.clear()
