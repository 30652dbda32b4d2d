"""An asyncio service on its own event loop in a thread, so that blocking test code can drive
it: `with Service(...) as s:` starts it and waits until it is ready, leaving stops it.

A subclass implements `serve()`: bind, call `self.started()`, `await self.stopping.wait()`,
clean up. Loopback only, like everything the tests start."""

from __future__ import annotations

import asyncio
import threading
from typing import Any


class LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.stopping = asyncio.Event()
        self._ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    async def serve(self) -> None:
        raise NotImplementedError

    def started(self) -> None:
        """Called by `serve()` once the service answers."""
        self._ready.set()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.serve())
        self.loop.close()

    def __enter__(self) -> Any:
        self.thread.start()
        if not self._ready.wait(20):
            raise RuntimeError(f"{type(self).__name__} did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.stopping.set)
        self.thread.join(20)
