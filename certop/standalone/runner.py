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
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from certop import crypto
from certop.acme.accounts import Account
from certop.acme.orders import OrderSession
from certop.core import annotations as ann
from certop.core import serving
from certop.core.backoff import Backoff
from certop.core.clock import Clock
from certop.core.desired import certificate_specs, with_certificates
from certop.core.errors import CertopError, ConfigError
from certop.core.models import AcmeIssuer, CertificateSpec
from certop.core.renewal import CertFacts, already_due, decide, renewal_time
from certop.issuance.accounts import AccountRegistry, CaBundles
from certop.issuance.ari import RenewalInfoCache
from certop.proxy.server import Proxy
from certop.standalone import loader, supplied
from certop.standalone.services import StaticBackends
from certop.store.files import StateDir, UnsafePath
from certop.store.ports import AccountStore, CertStore, OrderJournal, StoredCert
from solvers.base import SolverContext
from solvers.registry import SolverRegistry

log = logging.getLogger(__name__)
_T = TypeVar("_T")


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


@dataclass
class _CertState:
    spec: CertificateSpec
    facts: CertFacts | None = None
    task: asyncio.Task[None] | None = None
    failures: int = 0
    not_before_attempt: float = 0.0
    """Monotonic time before which no new attempt is made (backoff)."""
    forced: bool = False
    version: str | None = None
    """The stored version last handed to the proxy (serve-only processes)."""
    cert_pem: bytes | None = None
    """The current certificate (the one `facts` describe), for renewal information."""
    ari_task: asyncio.Task[None] | None = None
    fresh: bool = False
    """The current certificate came from this process's last order (and ARI not asked yet)."""


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
        proxy: Proxy,
        certs: CertStore,
        accounts: AccountStore,
        journal: OrderJournal,
        clock: Clock,
        backoff: Backoff | None = None,
        rand: Callable[[], float] = random.random,
        solvers: SolverRegistry | None = None,
    ) -> None:
        self.settings = settings
        self.solvers = solvers if solvers is not None else SolverRegistry()
        """The solvers an issuer's blocks may name (the installed entry points by default)."""
        self.proxy = proxy
        self.certs = certs
        self.accounts_store = accounts
        self.journal = journal
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
        self._wake = asyncio.Event()
        self._issued = asyncio.Condition()
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=settings.workers, thread_name_prefix="certop-acme"
        )
        self.solver_context = SolverContext(proxy.tokens, settings.self_check_addr)
        self._file_stamp: tuple[tuple[str, float, int], ...] = ()

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
                for task in (gone.task, gone.ari_task):
                    if task is not None:
                        task.cancel()
        for key, spec in wanted.items():
            existing = self._states.get(key)
            if existing is None:
                state = self._states[key] = _CertState(spec)
                self._load_stored(state)
                continue
            state = existing
            if state.spec != spec:
                if state.task is not None and state.spec.hosts != spec.hosts:
                    state.task.cancel()
                state.spec = spec
                state.failures = 0
                state.not_before_attempt = 0.0
        self._wake.set()

    def _load_stored(self, state: _CertState) -> None:
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
        if not self.settings.serve_only and \
                not decide(spec, loaded.facts, self.clock.now()).issue:
            # Stored and current: an order journalled before a crash between storing the
            # certificate and clearing the journal is done with.
            self.journal.clear(spec.namespace, spec.secret_name)
        # Serve what exists (even expired or for other hosts) until its replacement is ready.
        self.proxy.certs.put(spec.key, stored)

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
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    def ari_at(self, key: tuple[str, str]) -> datetime.datetime | None:
        """The CA's suggested renewal time for `key`'s current certificate (RFC 9773), if
        it offered one."""
        state = self._states.get(key)
        if state is None or state.cert_pem is None:
            return None
        return self.ari.known(key, state.cert_pem)

    # -- scheduling --------------------------------------------------------------------

    def force_renew(self, namespace: str, name: str) -> None:
        state = self._states.get((namespace, name))
        if state is not None:
            state.forced = True
            self._wake.set()

    def wake(self) -> None:
        """Look at every certificate now (after a clock change, a file edit, ...)."""
        self._wake.set()

    def _reconcile(self) -> float:
        """Start the orders that are due; return seconds until the next look is needed."""
        now = self.clock.now()
        mono = self.clock.monotonic()
        next_look = self.settings.check_interval
        for state in self._states.values():
            if state.task is not None or self.settings.serve_only:
                continue
            ari_at = None
            if state.cert_pem is not None:
                ari_at = self.ari.known(state.spec.key, state.cert_pem)
                if state.ari_task is None:
                    wait = self.ari.wait(state.spec.key, state.cert_pem)
                    if wait <= 0:
                        state.ari_task = asyncio.create_task(self._ask_renewal_info(state))
                    else:
                        next_look = min(next_look, wait)
            if state.not_before_attempt > mono:
                next_look = min(next_look, state.not_before_attempt - mono)
                continue
            decision = decide(state.spec, state.facts, now, forced=state.forced,
                              ari_renew_at=ari_at)
            if decision.issue:
                log.info("%s: issuing (%s)", state.spec, decision.reason)
                state.task = asyncio.create_task(self._issue(state))
            elif decision.renew_at is not None:
                next_look = min(next_look, (decision.renew_at - now).total_seconds())
        return max(next_look, 0.0)

    async def _ask_renewal_info(self, state: _CertState) -> None:
        """The CA's suggested renewal time for the stored certificate (RFC 9773), asked again
        when the CA's Retry-After says; a CA without `renewalInfo` leaves the lifetime policy."""
        try:
            await self._renewal_info(state)
        finally:
            state.ari_task = None
            self._wake.set()
        await self._notify()

    async def _renewal_info(self, state: _CertState) -> None:
        spec, cert_pem = state.spec, state.cert_pem
        if cert_pem is None:
            return

        async def account() -> Account:
            return self._account(spec.issuer)

        when = await self.ari.ask(spec.key, cert_pem, str(spec), account)
        now = self.clock.now()
        if state.fresh and state.facts is not None and when is not None and when <= now:
            # Never a hot loop: a CA asking to replace what it just issued waits a backoff.
            guard = already_due(decide(spec, state.facts, now, ari_renew_at=when), when, now)
            if guard is not None:
                self._failed(state, guard, None)
        state.fresh = False

    async def _issue(self, state: _CertState) -> None:
        spec = state.spec
        loop = asyncio.get_running_loop()
        session: OrderSession | None = None
        try:
            account = self._account(spec.issuer)
            stored = await loop.run_in_executor(self._executor, self.certs.load,
                                                spec.namespace, spec.secret_name)
            assert self.config is not None
            solvers = self.solvers.bind(self.solver_context)
            session = OrderSession(spec, account, solvers, self.journal, stored=stored,
                                   solver_specs=self.config.issuers[spec.issuer].solvers,
                                   validation_timeout=self.settings.validation_timeout,
                                   monotonic=self.clock.monotonic)
            self.stats.orders += 1
            while True:
                step = await loop.run_in_executor(self._executor, session.step)
                if step.done:
                    break
                await asyncio.sleep(step.after)  # the order's next check, scheduled
            assert step.fullchain_pem is not None and step.key_pem is not None
            pair = StoredCert(step.fullchain_pem, step.key_pem)
            loaded = crypto.load_pair(pair.fullchain_pem, pair.key_pem)
            await loop.run_in_executor(self._executor, self.certs.save, spec.namespace,
                                       spec.secret_name, pair)
            await loop.run_in_executor(self._executor, session.finish)
            self.proxy.certs.put(spec.key, pair)
            state.facts, state.cert_pem, state.fresh = loaded.facts, pair.fullchain_pem, True
            state.failures = 0
            state.forced = False
            self.stats.issued += 1
            renew_at = renewal_time(loaded.facts.not_before, loaded.facts.not_after,
                                    spec.renew_before)
            log.info("%s: certificate issued, valid until %s, renewal at %s", spec,
                     loaded.facts.not_after.isoformat(), renew_at.isoformat())
            now = self.clock.now()
            guard = already_due(decide(spec, loaded.facts, now), None, now)
            if guard is not None:
                # Never a hot loop: a fresh certificate that is already due means the clock
                # is ahead of the CA's or the lifetime is too short for the policy.
                self._failed(state, guard, None)
        except asyncio.CancelledError:
            raise
        except (CertopError, crypto.CertificateUnreadable, OSError) as exc:
            self._failed(state, exc, getattr(exc, "retry_after", None))
        except Exception as exc:  # a bug must not stop the other certificates
            log.exception("%s: unexpected error", spec)
            self._failed(state, exc, None)
        finally:
            if session is not None:
                session.cleanup()
                self.stats.acme_requests += session.requests_sent
                self.stats.resumed += int(session.resumed)
            state.task = None
            self._wake.set()
            await self._notify()

    def _failed(self, state: _CertState, exc: BaseException, retry_after: float | None) -> None:
        state.failures += 1
        self.stats.failures += 1
        delay = self.backoff.delay(state.failures, self.rand(), retry_after)
        state.not_before_attempt = self.clock.monotonic() + delay
        at = self.clock.now() + datetime.timedelta(seconds=delay)
        message = f"{state.spec}: {exc}; attempt {state.failures} failed, next attempt in " \
                  f"{delay:.0f}s (at {at.strftime('%H:%M:%S')} UTC)"
        self.stats.events.append(message)
        log.warning("%s", message)

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
            if state.task is not None or state.facts is None:
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
        stopper = asyncio.create_task(stop.wait())
        try:
            while not stop.is_set():
                self._wake.clear()
                timeout = self._reconcile()
                waker = asyncio.create_task(self._wake.wait())
                await asyncio.wait({waker, stopper}, timeout=timeout,
                                   return_when=asyncio.FIRST_COMPLETED)
                waker.cancel()
        finally:
            stopper.cancel()
            watcher.cancel()
            tasks = [t for s in self._states.values() for t in (s.task, s.ari_task)
                     if t is not None]
            for task in tasks:
                task.cancel()
            await asyncio.gather(watcher, stopper, *tasks, return_exceptions=True)
            self._executor.shutdown(wait=False, cancel_futures=True)
