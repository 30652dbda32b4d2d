"""`pipeline.in_thread`: a cancelled caller waits for its call only once it has started."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading

from certop.issuance.pipeline import in_thread


def test_a_cancelled_caller_drops_a_queued_call_and_waits_for_a_started_one() -> None:
    ran: list[str] = []
    release = threading.Event()
    started = threading.Event()

    def blocking() -> str:
        started.set()
        release.wait(10)
        ran.append("first")
        return "first"

    def queued() -> str:
        ran.append("second")
        return "second"

    async def main() -> None:
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            first = asyncio.ensure_future(in_thread(blocking, pool))
            second = asyncio.ensure_future(in_thread(queued, pool))
            await asyncio.to_thread(started.wait, 10)
            second.cancel()
            await asyncio.gather(second, return_exceptions=True)
            assert second.cancelled()  # at once: the call had not left the queue
            first.cancel()
            await asyncio.sleep(0)  # the cancellation is delivered; the call still runs
            assert not first.done()
            release.set()
            await asyncio.gather(first, return_exceptions=True)
            assert first.cancelled() and ran == ["first"]  # waited for; never the second
        assert ran == ["first"]

    asyncio.run(main())
