"""ACME orders that stop making progress (issue 8): real Pebble behind the fault proxy, which
plays a CA that leaves an order `pending` after its authorization died, one that never finishes
validating, and one whose renewal information is malformed. certop must fail such an attempt
with the CA's words, drop the dead order, place a new one after the backoff, and never ask in
a tight loop."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pebblectl
import pytest
from conftest import standalone
from echo import Echo
from fakeclock import FakeClock
from faultproxy import FaultProxy
from gate import Gate
from manifest_yaml import write_ingress

from certop.core.backoff import Backoff


@pytest.fixture
def backend() -> Iterator[Echo]:
    with Echo("web") as echo:
        yield echo


def journal(state: Path) -> Path:
    return state / "orders/default/web-tls.json"


async def test_an_invalid_authorization_in_a_pending_order_fails_at_once_and_is_not_resumed(
        tmp_path: Path, backend: Echo) -> None:
    """Pebble validates on a port where nothing listens, and the CA keeps showing the order
    pending: the attempt fails with the CA's detail, the order is dropped, and once the cause
    is fixed the next attempt places a new order that succeeds."""
    host = "stuck.certop.test"
    certop_http = pebblectl.free_port()
    validation_port = pebblectl.free_port()  # nothing listens here yet
    state = tmp_path / "state"
    files = [write_ingress(tmp_path / "web.yaml", "web", [host], "web-tls")]
    with pebblectl.running(tmp_path / "pebble", http_port=validation_port) as info, \
            FaultProxy(info, Path(info.api_ca).parent) as proxy:
        proxy.rate_limited = False
        proxy.invalid_stays_pending = True
        async with standalone(info, state, files, [f"web=127.0.0.1:{backend.port}"],
                              http_port=certop_http, directory_url=proxy.directory_url,
                              backoff=Backoff(base=1.0)) as run:
            await run.runner.wait_until(lambda: run.runner.stats.failures >= 1, timeout=30)
            event = run.runner.stats.events[0]
            assert f"challenge for {host} failed" in event
            assert "http-01 challenge invalid" in event
            assert "connection refused" in event.lower()
            assert "Status(" not in event
            assert not journal(state).exists()
            assert len(proxy.orders) == 1
            # The cause is fixed: Pebble's validation now reaches certop's listener.
            gate = Gate(certop_http)
            gate.port = validation_port
            with gate:
                gate.open()
                await run.runner.wait_until(lambda: run.runner.stats.issued == 1, timeout=30)
        assert len(proxy.orders) == 2  # a new order, not the dead one resumed


async def test_a_journalled_order_whose_authorization_died_is_dropped_on_resume(
        tmp_path: Path, backend: Echo) -> None:
    """certop stops while Pebble is validating; the validation then fails. The next run finds
    the order pending (as the CA shows it), sees its dead authorization, drops it from the
    journal and orders anew, instead of resuming the dead order for ever."""
    host = "resumed.certop.test"
    certop_http = pebblectl.free_port()
    dead_port = pebblectl.free_port()
    state = tmp_path / "state"
    files = [write_ingress(tmp_path / "web.yaml", "web", [host], "web-tls")]
    with Gate(dead_port) as gate, \
            pebblectl.running(tmp_path / "pebble", http_port=gate.port) as info, \
            FaultProxy(info, Path(info.api_ca).parent) as proxy:
        proxy.rate_limited = False
        proxy.invalid_stays_pending = True
        async with standalone(info, state, files, [f"web=127.0.0.1:{backend.port}"],
                              http_port=certop_http, directory_url=proxy.directory_url):
            assert await asyncio.to_thread(gate.arrived.wait, 30)
        assert journal(state).exists()  # stopped mid-validation: the order is journalled
        gate.open()  # the held validation now fails: nothing listens behind the gate
        async with standalone(info, state, files, [f"web=127.0.0.1:{backend.port}"],
                              http_port=certop_http, directory_url=proxy.directory_url,
                              backoff=Backoff(base=1.0)) as run:
            await run.runner.wait_until(lambda: run.runner.stats.failures >= 1, timeout=30)
            assert run.runner.stats.resumed == 1
            event = run.runner.stats.events[0]
            assert f"challenge for {host} failed" in event, event
            assert "Status(" not in event
            assert not journal(state).exists()
            gate.target_port = certop_http  # the cause is fixed
            await run.runner.wait_until(lambda: run.runner.stats.issued == 1, timeout=30)
        assert len(proxy.orders) == 2


async def test_validation_that_never_finishes_meets_its_deadline_and_a_new_order_follows(
        tmp_path: Path, pebble: pebblectl.PebbleInfo, backend: Echo) -> None:
    state = tmp_path / "state"
    files = [write_ingress(tmp_path / "web.yaml", "web", ["forever.certop.test"], "web-tls")]
    with FaultProxy(pebble, Path(pebble.api_ca).parent) as proxy:
        proxy.rate_limited = False
        proxy.hold_pending = True
        async with standalone(pebble, state, files, [f"web=127.0.0.1:{backend.port}"],
                              directory_url=proxy.directory_url, backoff=Backoff(base=0.2),
                              validation_timeout=1.0) as run:
            await run.runner.wait_until(lambda: run.runner.stats.failures >= 1, timeout=30)
            event = run.runner.stats.events[0]
            assert "did not finish validating within 1 s" in event, event
            assert "forever.certop.test pending" in event
            assert not journal(state).exists()
            await run.runner.wait_until(lambda: len(proxy.orders) >= 2, timeout=30)


async def test_malformed_renewal_information_is_asked_again_after_a_backoff_not_at_once(
        tmp_path: Path, pebble: pebblectl.PebbleInfo, backend: Echo) -> None:
    clock = FakeClock()
    files = [write_ingress(tmp_path / "web.yaml", "web", ["ari-bad.certop.test"], "web-tls")]
    with FaultProxy(pebble, Path(pebble.api_ca).parent) as proxy:
        proxy.rate_limited = False
        now = dt.datetime.now(dt.UTC)
        proxy.ari_window = (now + dt.timedelta(days=1), now + dt.timedelta(days=2))
        proxy.ari_malformed = True
        async with standalone(pebble, tmp_path / "state", files,
                              [f"web=127.0.0.1:{backend.port}"], clock=clock,
                              directory_url=proxy.directory_url) as run:
            state = run.runner._states[("default", "web-tls")]
            ari = run.runner.ari
            await run.runner.wait_until(lambda: ari.failures(state.spec.key) == 1, timeout=30)
            asked = sum(n for p, n in proxy.counts.items() if p.startswith("/renewal-info/"))
            assert asked == 1
            # The next question waits for the backoff (the fake clock has not moved) ...
            looks = state.looks
            run.runner.wake()
            await run.runner.wait_until(lambda: state.looks > looks, timeout=30)
            # ... and is asked once the backoff has passed.
            clock.advance(dt.timedelta(minutes=5))
            run.runner.wake()
            await run.runner.wait_until(lambda: ari.failures(state.spec.key) == 2, timeout=30)
            asked = sum(n for p, n in proxy.counts.items() if p.startswith("/renewal-info/"))
            assert asked == 2
            assert run.runner.stats.issued == 1  # the lifetime policy still holds

