"""Standalone mode's loop: manifests -> routes and certificates -> the proxy, kept current.

Owns the schedule: which certificate is issued when (renewal policy with the injected clock),
one order at a time per certificate, failures backing off with jitter (never under the CA's
Retry-After), and the hand-over of each new certificate to the store and to the proxy.
The ACME work is blocking and runs in a thread pool; this loop only decides and waits.
Edited manifest files are picked up by polling their modification times; a bad edit is logged
and the last good configuration stays in force.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime
import functools
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from certop import crypto
from certop.acme.accounts import Account
from certop.acme.orders import OrderSession, solver_for
from certop.core import annotations as ann
from certop.core import issuing, serving
from certop.core.backoff import Backoff
from certop.core.clock import Clock
from certop.core.desired import certificate_specs, with_certificates
from certop.core.errors import CertopError, ConfigError
from certop.core.models import AcmeIssuer, CertificateSpec
from certop.core.renewal import CertFacts, decide, renewal_point
from certop.issuance import pipeline
from certop.issuance.accounts import AccountRegistry, CaBundles
from certop.issuance.ari import RenewalInfoCache
from certop.issuance.limits import OrderLimit
from certop.standalone import loader, supplied
from certop.standalone.services import StaticBackends
from certop.store.files import StateDir, UnsafePath
from certop.store.memory import MemoryFailureRecords
from certop.store.ports import (
    AccountStore,
    CertStore,
    FailureRecords,
    OrderJournal,
    StoredCert,
)
from solvers.base import SolverContext
from solvers.http01.tokens import TokenStore
from solvers.registry import SolverRegistry

log = logging.getLogger(__name__)
_T = TypeVar("_T")
STOP_GRACE = 5.0
"""Seconds a stopping runner gives each certificate to end its look or order stage."""


@dataclass(frozen=True)
class StandaloneSettings:
    files: tuple[Path, ...]
    """Manifest files or directories (-f)."""
    state_dir: Path
    """Where accounts, certificates, keys and the order journal live."""
    services: tuple[str, ...] = ()
    """--service NAME[:PORT]=HOST:PORT flags."""
    cli_issuer: AcmeIssuer | None = None
    """The issuer given by --acme-directory/--email, named 'default'."""
    ca_bundle: Path | None = None
    """Trust for the ACME server's own TLS (--acme-ca-bundle)."""
    check_interval: float = 3600.0
    """Seconds between routine looks at every certificate's renewal time."""
    watch_interval: float = 1.0
    """Seconds between checks of the manifest files for edits."""
    workers: int = 32
    """Threads for blocking ACME work (concurrent orders)."""
    self_check_addr: tuple[str, int] | None = None
    """Where the HTTP-01 self-check connects (certop's own HTTP listener)."""
    certificates: tuple[str, ...] = ()
    """--certificate SECRET=CERT.pem,KEY.pem flags: certificates the user brings."""
    hsts: bool = False
    """Send Strict-Transport-Security on HTTPS responses unless an Ingress says otherwise."""
    serve_only: bool = False
    """Issue nothing; serve what another process (the issuing worker) stores (--workers)."""
    validation_timeout: float = 600.0
    """Seconds an order may stay pending at the CA once its challenges are answered."""
    dns01_nameservers: tuple[tuple[str, int], ...] = ()
    """Where DNS-01 propagation is checked (--dns01-nameservers); empty: the provider's own
    update server."""
    dns01_exec_allow: tuple[str, ...] = ()
    """Programs an `exec` DNS provider may run (--dns01-exec-allow)."""
    max_concurrent_orders: int | None = 32
    """Orders in flight at the CA at once; more wait in line (--max-concurrent-orders; None:
    no limit)."""


@dataclass(frozen=True)
class Config:
    """A loaded, checked configuration: everything derived from the manifest files."""

    manifests: loader.Manifests
    issuers: dict[str, AcmeIssuer]
    default_issuer: str | None
    specs: tuple[CertificateSpec, ...]
    serving: serving.Snapshot
    """What the proxy serves: routes, SNI map, --service endpoints, brought certificates."""
    warnings: tuple[str, ...]


def load_config(settings: StandaloneSettings, strict: bool = True) -> Config:
    """Everything the files say, checked; raises ConfigError naming file, object and field.
    Not `strict` (a reload while serving): a broken certificate file is a warning and its
    last good certificate stays in use. Any other exception while loading or checking is a
    ConfigError too: at start-up one line and exit 2, on a reload the last good configuration
    stays (a bug in a check must not stop the file watcher)."""
    try:
        return _load_config(settings, strict)
    except ConfigError:
        raise
    except Exception as exc:
        log.debug("checking the manifests failed", exc_info=True)
        files = ", ".join(str(f) for f in settings.files)
        raise ConfigError(files, "", "", "manifests certop can check (checking them failed: "
                          f"{loader.one_line(exc)})") from exc


def _load_config(settings: StandaloneSettings, strict: bool) -> Config:
    manifests = loader.load(settings.files)
    issuers = dict(manifests.issuers)
    if settings.cli_issuer is not None:
        issuers.setdefault("default", settings.cli_issuer)
    if settings.cli_issuer is not None:
        default: str | None = "default"
    elif len(manifests.issuers) == 1:
        default = next(iter(manifests.issuers))
    else:
        default = None
    backends = StaticBackends.from_flags(settings.services)
    backends.check(manifests.ingresses)
    brought = supplied.Supplied(strict).from_secrets(manifests.secrets,
                                                     manifests.secret_sources)
    brought.from_flags(settings.certificates)
    supplied_keys = frozenset(brought.pairs) | frozenset(brought.broken)
    desired = with_certificates(
        certificate_specs(manifests.ingresses, issuers, default, supplied=supplied_keys),
        manifests.certificates, issuers, supplied=supplied_keys)
    snapshot = serving.build(
        manifests.ingresses, backends.addresses, ann.DEFAULT_HSTS if settings.hsts else None,
        {key: serving.KeyPair(p.fullchain_pem, p.key_pem) for key, p in brought.pairs.items()},
        sni=[(host, spec.key) for _, spec in manifests.certificates for host in spec.hosts])
    warnings = (desired.warnings + snapshot.routes.conflicts
                + tuple(f"{why}; keeping the last good certificate"
                        for why in brought.broken.values()))
    return Config(manifests, issuers, default, desired.specs, snapshot, warnings)


def solver_context(settings: StandaloneSettings, tokens: TokenStore,
                   secrets: Callable[[str, str], bytes | None]) -> SolverContext:
    """What standalone mode offers the solvers it builds."""
    return SolverContext(tokens, settings.self_check_addr, secrets=secrets,
                         dns01_nameservers=settings.dns01_nameservers,
                         exec_allowed=settings.dns01_exec_allow)


def check_solvers(settings: StandaloneSettings, config: Config,
                  registry: SolverRegistry) -> None:
    """Every name of every certificate `config` wants has a solver certop can build from
    its issuer's blocks (selected, of a type certop runs, dns01 for a wildcard, settings
    and their Secrets right); else a ConfigError naming the issuer and field: exit 2 at
    start-up, the last good configuration kept on a reload. Nothing is asked of the
    network and nothing is written."""
    if settings.serve_only:
        return
    bound = registry.bind(solver_context(settings, TokenStore(),
                                         functools.partial(_secret_of, config)))
    for spec in config.specs:  # each block is built once (`bound` keeps them)
        issuer = config.issuers[spec.issuer]
        for host in spec.hosts:
            solver_for(issuer, issuer.solvers, host, None, bound)


def _secret_of(config: Config, name: str, key: str) -> bytes | None:
    """A key of a Secret among `config`'s manifests: the Secret in the issuers' namespace
    (`loader.RESOURCE_NAMESPACE`)."""
    data = config.manifests.secrets.get((loader.RESOURCE_NAMESPACE, name))
    return None if data is None else data.get(key)


@dataclass
class _CertState:
    spec: CertificateSpec
    facts: CertFacts | None = None
    cert_pem: bytes | None = None
    """The current certificate (the one `facts` describe), for renewal information."""
    version: str | None = None
    """The stored version last handed to the proxy (serve-only processes)."""
    task: asyncio.Task[None] | None = None
    """The certificate's issuance driver (none in serve-only processes)."""
    busy: bool = False
    """An order is in flight."""
    forced: bool = False
    looks: int = 0
    """Looks done (each followed by a pause): a caller waits for the look after a wake."""
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    """Ends the driver's pause early: the spec changed, the files were edited, a wake."""


@dataclass
class Stats:
    orders: int = 0
    issued: int = 0
    failures: int = 0
    acme_requests: int = 0
    resumed: int = 0
    reload_errors: int = 0
    events: list[str] = field(default_factory=list)


class Standalone:
    def __init__(
        self,
        settings: StandaloneSettings,
        proxy: serving.Server,
        certs: CertStore,
        accounts: AccountStore,
        journal: OrderJournal,
        clock: Clock,
        backoff: Backoff | None = None,
        rand: Callable[[], float] = random.random,
        solvers: SolverRegistry | None = None,
        failures: FailureRecords | None = None,
        tokens: TokenStore | None = None,
    ) -> None:
        self.settings = settings
        self.solvers = solvers if solvers is not None else SolverRegistry()
        """The solvers an issuer's blocks may name (the installed entry points by default)."""
        self.proxy = proxy
        self.certs = certs
        self.accounts_store = accounts
        self.journal = journal
        self.failure_records: FailureRecords = failures if failures is not None \
            else MemoryFailureRecords()
        """Failed attempts per certificate, so a restart continues the backoff."""
        self.clock = clock
        self.backoff = backoff or Backoff()
        self.rand = rand
        self.config: Config | None = None
        self.stats = Stats()
        self._states: dict[tuple[str, str], _CertState] = {}
        self.accounts = AccountRegistry(
            lambda _issuer, _namespace: accounts, CaBundles(StateDir(settings.state_dir)),
            trust=self._trust)
        self.ari = RenewalInfoCache(clock, self.backoff, rand, self._in_pool)
        self.orders = OrderLimit(settings.max_concurrent_orders)
        """Orders open at the CA at once (the thread pool, `workers`, bounds only the
        requests in progress: without this every certificate would have an order open)."""
        self._running = False
        self._stopping = False
        self._stop = asyncio.Event()
        """Set when the runner stops: drivers end at their next stage or pause."""
        self._issued = asyncio.Condition()
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=settings.workers, thread_name_prefix="certop-acme"
        )
        self.solver_context = solver_context(
            settings, tokens if tokens is not None else TokenStore(), self._secret)
        self._file_stamp: tuple[tuple[str, float, int], ...] = ()

    def _secret(self, name: str, key: str) -> bytes | None:
        """A key of a Secret among the loaded manifests, for solver settings (DNS providers'
        credentials)."""
        return None if self.config is None else _secret_of(self.config, name, key)

    # -- configuration -----------------------------------------------------------------

    def apply(self, config: Config) -> None:
        """Make `config` current: routes, SNI map, certificate states. Never blocks."""
        for warning in config.warnings:
            log.warning("%s", warning)
        self.config = config
        self.proxy.swap(config.serving)
        wanted = {spec.key: spec for spec in config.specs}
        for key in list(self._states):
            if key not in wanted:
                gone = self._states.pop(key)
                self.ari.forget(key)
                if gone.task is not None:
                    gone.task.cancel()
        for key, spec in wanted.items():
            state = self._states.get(key)
            if state is None:
                state = self._states[key] = _CertState(spec)
                self._load_stored(state)
                self._start(state)
                continue
            if state.spec != spec:
                drop = state.busy and state.spec.hosts != spec.hosts
                state.spec = spec
                if drop and state.task is not None:
                    # The order in flight is for other names: stop it, start over for these
                    # (the driver's next look sees the new spec, which ends any backoff).
                    state.task.cancel()
                    self._start(state, after=state.task)
            state.changed.set()

    def _load_stored(self, state: _CertState) -> None:
        """Serve what is stored (even expired or for other hosts) until its replacement is
        ready."""
        spec = state.spec
        try:
            stored = self.certs.load(spec.namespace, spec.secret_name)
        except UnsafePath as exc:
            log.warning("%s: stored certificate not read (%s)", spec, exc)
            return
        if stored is None:
            return
        try:
            loaded = crypto.load_pair(stored.fullchain_pem, stored.key_pem)
        except crypto.CertificateUnreadable as exc:
            log.warning("%s: stored certificate unusable (%s): issuing a new one", spec, exc)
            return
        state.facts, state.cert_pem = loaded.facts, stored.fullchain_pem
        state.version = self.certs.version(spec.namespace, spec.secret_name)
        self.proxy.serve_certificate(spec.key, serving.KeyPair(stored.fullchain_pem,
                                                               stored.key_pem))

    # -- accounts ----------------------------------------------------------------------

    def _trust(self, issuer: AcmeIssuer) -> str | None:
        """--acme-ca-bundle: the trust of the issuer named 'default' without its own bundle."""
        if self.settings.ca_bundle is not None and issuer.ref.name == "default":
            return str(self.settings.ca_bundle)
        return None

    def _account(self, issuer_name: str) -> Account:
        assert self.config is not None
        issuer = self.config.issuers[issuer_name]
        return self.accounts.get(issuer, issuer.ref.namespace)

    async def _in_pool(self, call: Callable[[], _T]) -> _T:
        return await pipeline.in_thread(call, self._executor)

    def ari_at(self, key: tuple[str, str]) -> datetime.datetime | None:
        """The CA's suggested renewal time for `key`'s current certificate (RFC 9773), if
        it offered one."""
        state = self._states.get(key)
        if state is None or state.cert_pem is None:
            return None
        return self.ari.known(key, state.cert_pem)

    # -- scheduling: one issuance driver per certificate -----------------------------------

    def force_renew(self, namespace: str, name: str) -> None:
        state = self._states.get((namespace, name))
        if state is not None:
            state.forced = True
            state.changed.set()

    def wake(self) -> None:
        """Look at every certificate now (after a clock change, ...)."""
        for state in self._states.values():
            state.changed.set()

    def _start(self, state: _CertState, after: asyncio.Task[None] | None = None) -> None:
        """Run `state`'s driver (once `after`, a stopped one, has ended)."""
        if self._running and not self.settings.serve_only:
            state.task = asyncio.create_task(self._drive(state, after))

    def _restored(self, spec: CertificateSpec) -> issuing.Restored:
        """What the failure records say (a journal may exist: cleared at the first look that
        finds the certificate current)."""
        failures, last = 0, None
        entry = self.failure_records.load(spec.namespace, spec.secret_name) or {}
        count = entry.get("failures")
        if isinstance(count, int) and not isinstance(count, bool) and count > 0:
            with contextlib.suppress(TypeError, ValueError):
                last = datetime.datetime.fromisoformat(str(entry.get("last")))
                if last.tzinfo is None:
                    last = last.replace(tzinfo=datetime.UTC)
            failures = count
        hold = self.backoff.remaining(failures, last, self.clock.now(), self.rand())
        return issuing.Restored(failures, hold, journalled=True)

    async def _drive(self, state: _CertState, after: asyncio.Task[None] | None) -> None:
        if after is not None:
            await asyncio.gather(after, return_exceptions=True)
        policy = issuing.Policy(self.backoff, self.settings.check_interval)
        ports = _Ports(self, state)
        while not ports.stopped():
            try:
                restored = await ports.blocking(lambda: self._restored(state.spec))
                await pipeline.run(ports, restored, policy, self.rand)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug must not stop this certificate for good
                delay = self.backoff.delay(1, self.rand())
                log.exception("%s: unexpected error; looked at again in %.0fs", state.spec,
                              delay)
                state.busy = False
                await ports.pause(delay)

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 60.0) -> None:
        """Until `predicate()` holds; re-checked after every finished order and file reload."""
        async def until() -> None:
            async with self._issued:
                await self._issued.wait_for(predicate)

        await asyncio.wait_for(until(), timeout)

    async def wait_ready(self, timeout: float = 60.0) -> None:
        """Until every wanted certificate is issued and current (for tools and tests)."""
        await self.wait_until(self.all_ready, timeout)

    def all_ready(self) -> bool:
        now = self.clock.now()
        for state in self._states.values():
            if state.busy or state.facts is None:
                return False
            if decide(state.spec, state.facts, now, forced=state.forced).issue:
                return False
        return True

    async def _notify(self) -> None:
        async with self._issued:
            self._issued.notify_all()

    # -- files -------------------------------------------------------------------------

    def _stamp(self) -> tuple[tuple[str, float, int], ...]:
        stamps: list[tuple[str, float, int]] = []
        for path in (*self.settings.files, *supplied.flag_files(self.settings.certificates)):
            candidates = sorted(path.iterdir()) if path.is_dir() else [path]
            for p in candidates:
                with contextlib.suppress(OSError):
                    st = p.stat()
                    stamps.append((str(p), st.st_mtime, st.st_size))
        return tuple(stamps)

    async def _watch_files(self) -> None:
        """Poll the files; apply a good edit, log a bad one and keep the last good config.
        Nothing ends this loop but cancellation: a watcher that died would silently ignore
        every later edit."""
        loop = asyncio.get_running_loop()
        self._file_stamp = await loop.run_in_executor(self._executor, self._stamp)
        while True:
            await asyncio.sleep(self.settings.watch_interval)
            try:
                await self._look_at_files(loop)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug: log it and keep watching
                log.exception("reloading the manifests failed; still watching them")
                self.stats.reload_errors += 1
                await self._notify()

    async def _look_at_files(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.settings.serve_only:
            self._pick_up_stored()
        stamp = await loop.run_in_executor(self._executor, self._stamp)
        if stamp == self._file_stamp:
            return
        self._file_stamp = stamp
        try:
            config = await loop.run_in_executor(self._executor, load_config, self.settings,
                                                False)
            check_solvers(self.settings, config, self.solvers)
        except ConfigError as exc:
            log.error("manifests changed but are invalid, keeping the last good ones: %s",
                      exc)
            self.stats.reload_errors += 1
            await self._notify()
            return
        log.info("manifests changed: %d Ingresses, %d certificates",
                 len(config.manifests.ingresses), len(config.specs))
        self.apply(config)
        await self._notify()

    def _pick_up_stored(self) -> None:
        """Serve-only: load the pairs the issuing process stored since the last look."""
        for state in list(self._states.values()):
            spec = state.spec
            version = self.certs.version(spec.namespace, spec.secret_name)
            if version is not None and version != state.version:
                self._load_stored(state)

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Reconcile until `stop` is set (or the task is cancelled)."""
        watcher = asyncio.create_task(self._watch_files())
        stop = stop or asyncio.Event()
        self._running = True
        for state in self._states.values():
            self._start(state)
        try:
            await stop.wait()
        finally:
            # As the operator's daemons stop: each driver ends its look or order stage (a
            # bounded step) and stops between two; what has not after STOP_GRACE is cancelled.
            self._running, self._stopping = False, True
            self._stop.set()
            watcher.cancel()
            tasks = [s.task for s in self._states.values() if s.task is not None]
            if tasks:
                await asyncio.wait(tasks, timeout=STOP_GRACE)
            for task in tasks:
                task.cancel()
            await asyncio.gather(watcher, *tasks, return_exceptions=True)
            self._executor.shutdown(wait=False, cancel_futures=True)


async def _first(seconds: float, *events: asyncio.Event) -> None:
    """Until `seconds` pass or one of `events` is set."""
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


class _Ports:
    """One certificate's ports for the issuance driver: the runner's file stores, its
    statistics and log for reports, the proxy for new certificates."""

    errors: tuple[type[BaseException], ...] = (Exception,)
    """A bug fails one attempt (with a traceback in the log), not the certificate for good."""
    expected: tuple[type[BaseException], ...] = (CertopError, crypto.CertificateUnreadable,
                                                 OSError)

    def __init__(self, runner: Standalone, state: _CertState) -> None:
        self.runner = runner
        self.state = state
        self.clock = runner.clock
        self.certs: CertStore = runner.certs
        self.journal: OrderJournal = runner.journal
        self.ari = runner.ari
        self.key = state.spec.key
        self.validation_timeout = runner.settings.validation_timeout
        self.orders = runner.orders

    def stopped(self) -> bool:
        return self.runner._stopping or self.runner._states.get(self.key) is not self.state

    def forced(self) -> bool:
        return self.state.forced

    async def blocking(self, call: Callable[[], _T]) -> _T:
        return await pipeline.in_thread(call, self.runner._executor)

    def spec(self) -> CertificateSpec:
        return self.state.spec

    async def account(self, spec: CertificateSpec) -> Account:
        return self.runner._account(spec.issuer)

    async def order_inputs(self, spec: CertificateSpec) -> pipeline.OrderInputs:
        runner = self.runner
        assert runner.config is not None
        return pipeline.OrderInputs(runner._account(spec.issuer),
                                    runner.config.issuers[spec.issuer].solvers,
                                    runner.solvers.bind(runner.solver_context))

    async def pause(self, seconds: float) -> None:
        self.state.looks += 1
        await self.runner._notify()
        changed = self.state.changed
        await _first(seconds, changed, self.runner._stop)
        changed.clear()

    async def step_wait(self, seconds: float) -> None:
        await _first(seconds, self.runner._stop)  # the order's next check, scheduled

    async def stage(self, stage: str, spec: CertificateSpec,
                    session: OrderSession | None) -> None:
        log.debug("%s: %s done", spec, stage)

    async def ready(self, spec: CertificateSpec, facts: CertFacts,
                    renew_at: datetime.datetime, failures: int) -> None:
        await self.runner._notify()

    async def failed(self, spec: CertificateSpec | None, reason: str, message: str,
                     failures: int, delay: float | None) -> None:
        runner, spec = self.runner, spec or self.state.spec
        if delay is None:
            log.error("%s: %s", spec, message)
            return
        runner.stats.failures += 1
        now = self.clock.now()
        at = now + datetime.timedelta(seconds=delay)
        text = f"{spec}: {message}; attempt {failures} failed, next attempt in " \
               f"{delay:.0f}s (at {at.strftime('%H:%M:%S')} UTC)"
        runner.stats.events.append(text)
        log.warning("%s", text)
        entry = {"failures": failures, "last": now.isoformat()}
        await self._record(lambda: runner.failure_records.save(*spec.key, entry))
        await runner._notify()

    async def _record(self, call: Callable[[], None]) -> None:
        try:
            await self.blocking(call)
        except (CertopError, OSError) as exc:
            log.warning("%s: failed attempts not recorded (%s)", self.state.spec, exc)

    async def held(self, spec: CertificateSpec, failures: int, seconds: float) -> None:
        log.info("%s: attempt %d failed before this run; next attempt in %.0fs", spec,
                 failures, seconds)

    async def issued(self, spec: CertificateSpec) -> None:
        # No notification here: the look that follows at once reports Ready, or the
        # already-due guard's failure, and notifies then.
        self.runner.stats.issued += 1
        self.state.forced = False
        facts = self.state.facts
        if facts is not None:
            renew_at = renewal_point(facts, spec.renew_before)
            log.info("%s: certificate issued, valid until %s, renewal at %s", spec,
                     facts.not_after.isoformat(), renew_at.isoformat())
        await self._record(lambda: self.runner.failure_records.clear(*spec.key))

    async def ordering(self, spec: CertificateSpec) -> None:
        log.info("%s: issuing", spec)
        self.runner.stats.orders += 1
        self.state.busy = True

    async def ordered(self, spec: CertificateSpec, session: OrderSession) -> None:
        stats = self.runner.stats
        stats.acme_requests += session.requests_sent
        stats.resumed += int(session.resumed)
        self.state.busy = False
        await self.runner._notify()

    async def stored(self, spec: CertificateSpec, pair: StoredCert) -> None:
        loaded = crypto.load_pair(pair.fullchain_pem, pair.key_pem)
        self.state.facts, self.state.cert_pem = loaded.facts, pair.fullchain_pem
        self.runner.proxy.serve_certificate(spec.key, serving.KeyPair(pair.fullchain_pem,
                                                                      pair.key_pem))
