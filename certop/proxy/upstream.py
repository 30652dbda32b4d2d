"""Upstream side of the proxy: endpoint choice per request and a keep-alive connection pool.

`Backends` (a port) turns an Ingress backend into endpoint addresses; standalone mode maps them
from `--service`, cluster mode from EndpointSlices. `Balancer` picks endpoints round robin per
request and skips endpoints that failed recently. `Pool` keeps idle connections per endpoint.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from certop.core.models import ServiceBackend

Address = tuple[str, int]
FAIL_HOLD = 5.0
"""Seconds a failed endpoint is skipped before it is tried again."""


class Backends(Protocol):
    def addresses(self, backend: ServiceBackend) -> Sequence[Address]:
        """The endpoints of a backend, empty when it has none."""
        ...


@dataclass
class Balancer:
    backends: Backends
    _counters: dict[ServiceBackend, itertools.count[int]] = field(default_factory=dict)
    _failed: dict[Address, float] = field(default_factory=dict)

    def candidates(self, backend: ServiceBackend) -> list[Address]:
        """Endpoints to try in order: round robin, recently failed ones last."""
        addrs = list(self.backends.addresses(backend))
        if not addrs:
            return []
        counter = self._counters.get(backend)
        if counter is None:
            counter = self._counters[backend] = itertools.count()
        start = next(counter) % len(addrs)
        ordered = addrs[start:] + addrs[:start]
        if self._failed:
            now = time.monotonic()
            ok = [a for a in ordered if self._failed.get(a, 0.0) <= now]
            ordered = ok + [a for a in ordered if a not in ok]
        return ordered

    def failed(self, addr: Address) -> None:
        self._failed[addr] = time.monotonic() + FAIL_HOLD

    def succeeded(self, addr: Address) -> None:
        self._failed.pop(addr, None)


Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class Pool:
    def __init__(self, max_idle_per_endpoint: int = 64) -> None:
        self.max_idle = max_idle_per_endpoint
        self._idle: dict[Address, deque[Conn]] = {}

    async def acquire(self, addr: Address, connect_timeout: float) -> tuple[Conn, bool]:
        """(connection, reused?)."""
        idle = self._idle.get(addr)
        while idle:
            reader, writer = idle.pop()
            if not reader.at_eof() and not writer.is_closing():
                return (reader, writer), True
            writer.close()
        conn = await asyncio.wait_for(
            asyncio.open_connection(addr[0], addr[1], limit=1 << 16), connect_timeout
        )
        return conn, False

    def release(self, addr: Address, conn: Conn) -> None:
        idle = self._idle.setdefault(addr, deque())
        if len(idle) >= self.max_idle or conn[1].is_closing():
            conn[1].close()
            return
        idle.append(conn)

    def close(self) -> None:
        for idle in self._idle.values():
            for _, writer in idle:
                writer.close()
        self._idle.clear()
