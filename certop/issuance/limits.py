"""How many orders may be at the CA at once: the rest wait in line (`--max-concurrent-orders`).

10,000 certificates due together must not become 10,000 concurrent orders against the CA (nor
10,000 threads here). A slot is held from the attempt's first request to its end (the order's
polling included), so the limit is the number of orders in flight at the CA.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class OrderLimit:
    def __init__(self, limit: int | None = None) -> None:
        """At most `limit` orders at once (None: no limit of its own)."""
        self.limit = limit
        self._free = asyncio.Semaphore(limit) if limit is not None else None
        self.queued = 0
        """Attempts waiting for a slot now (a gauge: `certop_orders_queued`)."""
        self.running = 0
        """Orders in flight now (`certop_orders_in_progress`)."""

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        self.queued += 1
        try:
            if self._free is not None:
                await self._free.acquire()
        finally:
            self.queued -= 1
        self.running += 1
        try:
            yield
        finally:
            self.running -= 1
            if self._free is not None:
                self._free.release()
