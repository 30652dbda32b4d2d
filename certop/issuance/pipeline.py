"""The per-certificate issuance driver: runs one certificate through `core.issuing.transition`.

The mode supplies only ports (`Ports`): where the certificate's spec comes from, the
certificate and journal stores, what the order needs (account, solver blocks, bound solvers:
the solver factory), where status, stages and events go, how to wait, and the clock. This
driver looks (stored certificate, the CA's renewal time from the one ARI cache), carries out
the transition's actions, and runs an attempt in bounded order steps: order, store, hand the
new pair on (`Ports.stored`), then clear the journal (only after the store: a run stopped in
between resumes the stored order instead of placing a new one).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import datetime
import functools
import logging
import random
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from certop import crypto
from certop.acme.accounts import Account
from certop.acme.orders import OrderSession
from certop.core import issuing
from certop.core.clock import Clock
from certop.core.errors import CertopError, ConfigError
from certop.core.models import CertificateSpec, SolverSpec
from certop.core.renewal import CertFacts
from certop.issuance.ari import Key, RenewalInfoCache
from certop.issuance.limits import OrderLimit
from certop.store.ports import CertStore, OrderJournal, StoredCert
from solvers.base import SolverLookup

log = logging.getLogger(__name__)
_T = TypeVar("_T")


@dataclass(frozen=True)
class OrderInputs:
    """What an order for a certificate needs, as the mode finds it at the attempt."""

    account: Account
    solver_specs: tuple[SolverSpec, ...]
    solvers: SolverLookup
    labels: Mapping[str, str] | None = None
    resume: bool = True
    """Look in the journal for an order in flight (the mode may know there is none)."""
    clear_finished: bool = True
    """Empty the journal once the certificate is stored (see `OrderSession`)."""


class Ports(Protocol):
    """What a mode supplies for one certificate."""

    clock: Clock
    certs: CertStore
    journal: OrderJournal
    ari: RenewalInfoCache
    key: Key
    """The certificate's key in the ARI cache."""
    validation_timeout: float
    orders: OrderLimit
    """The mode's bound on orders in flight at the CA (shared by its certificates)."""

    def stopped(self) -> bool: ...

    def forced(self) -> bool:
        """A renewal was asked for by hand (`certop renew`); cleared by `issued`."""
        ...

    async def blocking(self, call: Callable[[], _T]) -> _T:
        """`call()` off the event loop."""
        ...

    def spec(self) -> CertificateSpec:
        """The wanted certificate now (raises ConfigError naming the bad field)."""
        ...

    async def account(self, spec: CertificateSpec) -> Account:
        """The issuer's account (for renewal information)."""
        ...

    async def order_inputs(self, spec: CertificateSpec) -> OrderInputs:
        """Account, solver blocks and bound solvers for an attempt (the solver factory); may
        raise a CertopError that fails the attempt (e.g. the Secret is not certop's)."""
        ...

    async def pause(self, seconds: float) -> None:
        """Until `seconds` pass, the driver is stopped or the spec changes."""
        ...

    async def step_wait(self, seconds: float) -> None:
        """Until the order's next check is due or the driver is stopped."""
        ...

    errors: tuple[type[BaseException], ...]
    """What fails an attempt (backed off and reported); anything else propagates."""
    expected: tuple[type[BaseException], ...]
    """Of `errors`, those that are no bug of certop's (others are logged with a traceback)."""

    # -- the status/event sink -------------------------------------------------------------

    async def stage(self, stage: str, spec: CertificateSpec,
                    session: OrderSession | None) -> None:
        """Stage `stage` is done (trigger, the order's stages, store, ready)."""
        ...

    async def ready(self, spec: CertificateSpec, facts: CertFacts,
                    renew_at: datetime.datetime, failures: int) -> None: ...

    async def failed(self, spec: CertificateSpec | None, reason: str, message: str,
                     failures: int, delay: float | None) -> None:
        """An attempt failed (`delay`: the backoff) or the spec is invalid (None)."""
        ...

    async def held(self, spec: CertificateSpec, failures: int, seconds: float) -> None: ...

    async def issued(self, spec: CertificateSpec) -> None: ...

    async def ordering(self, spec: CertificateSpec) -> None:
        """An order session starts."""
        ...

    async def ordered(self, spec: CertificateSpec, session: OrderSession) -> None:
        """The session's clean-up is done (requests counted, an abandoned order unrecorded)."""
        ...

    async def stored(self, spec: CertificateSpec, pair: StoredCert) -> None:
        """The new pair is in the store: hand it on (the proxy, metrics)."""
        ...


async def run(ports: Ports, restored: issuing.Restored, policy: issuing.Policy,
              rand: Callable[[], float] = random.random) -> None:
    """Drive one certificate until `ports.stopped()`."""
    state: issuing.State | None
    state, _ = issuing.transition(issuing.State(), restored, policy)
    while state is not None and not ports.stopped():
        try:
            spec = ports.spec()
        except ConfigError as exc:
            state = await _act(ports, state, issuing.SpecInvalid(str(exc)), None, None, policy,
                               rand)
            continue
        stored = await ports.blocking(
            functools.partial(ports.certs.load, spec.namespace, spec.secret_name))
        facts = None
        if stored is not None:
            try:
                facts = crypto.load_pair(stored.fullchain_pem, stored.key_pem).facts
            except crypto.CertificateUnreadable:
                facts = None
        ari_at, ari_wait = None, None
        if facts is not None and stored is not None:
            ari_at = await _ari_time(ports, spec, stored)
            ari_wait = ports.ari.wait(ports.key, stored.fullchain_pem)
        seen = issuing.Looked(spec, facts, ari_at, ports.clock.now(), rand(), ports.forced(),
                              ports.clock.monotonic(), ari_wait)
        state = await _act(ports, state, seen, spec, stored, policy, rand)


async def _act(ports: Ports, state: issuing.State, seen: issuing.Observation,
               spec: CertificateSpec | None, stored: StoredCert | None,
               policy: issuing.Policy, rand: Callable[[], float]) -> issuing.State | None:
    """Carry out what `seen` calls for; the next state, or None when stopped meanwhile."""
    state, actions = issuing.transition(state, seen, policy)
    for action in actions:
        if isinstance(action, issuing.ReportInvalid):
            await ports.failed(None, "InvalidSpec", action.message, action.failures, None)
            continue
        if isinstance(action, issuing.Wait):
            await ports.pause(action.seconds)
            continue
        assert spec is not None
        if isinstance(action, issuing.ClearJournal):
            state, _ = issuing.transition(state, issuing.JournalCleared(
                await _clear_journal(ports, spec)), policy)
        elif isinstance(action, issuing.ReportReady):
            await ports.ready(spec, action.facts, action.renew_at, action.failures)
        elif isinstance(action, issuing.ReportStage):
            await ports.stage(action.stage, spec, None)
            if ports.stopped():
                return None
        elif isinstance(action, issuing.ReportHeld):
            await ports.held(spec, action.failures, action.seconds)
        elif isinstance(action, issuing.ReportFailed):
            await ports.failed(spec, action.reason, action.error, action.failures,
                               action.delay)
        elif isinstance(action, issuing.ReportIssued):
            await ports.issued(spec)
        else:
            outcome: issuing.Observation
            try:
                done = await attempt(ports, spec, stored)
            except ports.errors as exc:
                if not isinstance(exc, ports.expected):
                    log.error("Certificate %s/%s: unexpected error", spec.namespace,
                              spec.secret_name, exc_info=exc)
                outcome = issuing.Failed(_reason(exc), str(exc) or _reason(exc),
                                         getattr(exc, "retry_after", None), rand(),
                                         ports.clock.monotonic())
            else:
                if not done:
                    return None  # stopped between two stages
                outcome = issuing.Succeeded()
            return await _act(ports, state, outcome, spec, stored, policy, rand)
    return state


class _Skipped(Exception):
    """The caller was cancelled before its call left the executor's queue."""


async def in_thread(call: Callable[[], _T],
                    executor: concurrent.futures.Executor | None = None) -> _T:
    """`call()` in a thread (of `executor`, or asyncio's default one). Cancelled meanwhile,
    it still waits for a call that has started to end, so that nothing the call does
    (presenting a token, creating an Ingress) happens after the caller's cleanup; a call
    still waiting for a thread is dropped (a stop does not wait for a queue of them)."""
    context = contextvars.copy_context()  # as to_thread
    lock = threading.Lock()
    state = {"started": False, "dropped": False}

    def run() -> _T:
        with lock:
            if state["dropped"]:
                raise _Skipped
            state["started"] = True
        return context.run(call)

    future = asyncio.get_running_loop().run_in_executor(executor, run)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        with lock:
            state["dropped"] = not state["started"]
        if state["dropped"]:
            future.add_done_callback(_retrieve)  # its _Skipped is nobody's error
        else:
            with contextlib.suppress(Exception):
                await future
        raise


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _reason(exc: BaseException) -> str:
    return type(exc).__name__


async def _clear_journal(ports: Ports, spec: CertificateSpec) -> bool:
    try:
        await ports.blocking(lambda: ports.journal.clear(spec.namespace, spec.secret_name))
    except CertopError as exc:
        log.warning("Certificate %s/%s: %s (tried again at the next look)", spec.namespace,
                    spec.secret_name, exc)
        return False
    return True


async def _ari_time(ports: Ports, spec: CertificateSpec,
                    stored: StoredCert | None) -> datetime.datetime | None:
    """The CA's suggested renewal time (RFC 9773), asked again at most as often as the CA's
    Retry-After says; None when the CA offers no renewal info."""
    if stored is None:
        return None
    if ports.ari.wait(ports.key, stored.fullchain_pem) > 0:
        return ports.ari.known(ports.key, stored.fullchain_pem)

    async def account() -> Account:
        return await ports.account(spec)

    return await ports.ari.ask(ports.key, stored.fullchain_pem,
                               f"Certificate {spec.namespace}/{spec.secret_name}", account)


async def attempt(ports: Ports, spec: CertificateSpec, stored: StoredCert | None) -> bool:
    """Order, answer, store, hand on, clear the journal, in one of the mode's order slots;
    False when stopped between two stages (nothing is lost: the next run re-enters it)."""
    async with ports.orders.slot():
        if ports.stopped():
            return False
        return await _attempt(ports, spec, stored)


async def _attempt(ports: Ports, spec: CertificateSpec, stored: StoredCert | None) -> bool:
    inputs = await ports.order_inputs(spec)
    session = OrderSession(spec, inputs.account, inputs.solvers, ports.journal, stored=stored,
                           labels=inputs.labels, solver_specs=inputs.solver_specs,
                           validation_timeout=ports.validation_timeout,
                           monotonic=ports.clock.monotonic, resume=inputs.resume,
                           clear_finished=inputs.clear_finished)
    await ports.ordering(spec)
    try:
        while True:
            step = await ports.blocking(session.step)
            if step.stage is not None:
                await ports.stage(step.stage.value, spec, session)
                if ports.stopped():
                    return False
            if step.done:
                break
            await ports.step_wait(step.after)  # the order's next check, scheduled
            if ports.stopped():
                return False
    finally:
        await ports.blocking(session.cleanup)
        await ports.ordered(spec, session)
    assert step.fullchain_pem is not None and step.key_pem is not None
    pair = StoredCert(step.fullchain_pem, step.key_pem)
    await ports.blocking(lambda: ports.certs.save(spec.namespace, spec.secret_name, pair))
    await ports.stored(spec, pair)
    await ports.stage("store", spec, session)
    if ports.stopped():
        return False
    await ports.blocking(session.finish)
    return True

