"""--max-concurrent-orders: at most N orders in flight, the rest queued (and counted)."""

from __future__ import annotations

import asyncio

import pytest

from certop.issuance.limits import OrderLimit
from certop.metrics import Metrics


def test_at_most_n_orders_run_and_the_rest_wait_in_line() -> None:
    async def scenario() -> None:
        limit = OrderLimit(2)
        release = asyncio.Event()
        peak = 0

        async def order() -> None:
            nonlocal peak
            async with limit.slot():
                peak = max(peak, limit.running)
                await release.wait()

        tasks = [asyncio.create_task(order()) for _ in range(5)]
        while limit.running + limit.queued < 5:
            await asyncio.sleep(0)  # let every task reach the limit
        assert (limit.running, limit.queued) == (2, 3)
        metrics = Metrics()
        metrics.gauges["orders_queued"] = lambda: limit.queued
        assert "certop_orders_queued 3" in metrics.render(0, {})
        # A waiter that is cancelled leaves the line without taking a slot.
        tasks[4].cancel()
        await asyncio.gather(tasks[4], return_exceptions=True)
        assert (limit.running, limit.queued) == (2, 2)
        release.set()
        await asyncio.gather(*tasks[:4])
        assert peak == 2 and (limit.running, limit.queued) == (0, 0)

    asyncio.run(scenario())


def test_the_flag_takes_one_or_more() -> None:
    from certop.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["operator", "--max-concurrent-orders", "4"]) \
        .max_concurrent_orders == 4
    assert parser.parse_args(["operator"]).max_concurrent_orders == 32
    with pytest.raises(SystemExit):
        parser.parse_args(["operator", "--max-concurrent-orders", "0"])
