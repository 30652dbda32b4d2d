"""Standalone mode wired: the proxy, the runner and the file stores, built in one place.

`certop standalone` (and each of its workers), the in-process tests and the benchmark all
call `standalone()`; nothing else constructs a `Standalone` runner. The caller runs the
runner (`runner.run(stop)`) inside the context; leaving it stops accepting and drains the
proxy's connections.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from certop.core.backoff import Backoff
from certop.core.clock import Clock, SystemClock
from certop.proxy.libssl import TicketKeys
from certop.proxy.server import Proxy, ProxySettings
from certop.proxy.tls import CertBook
from certop.standalone.runner import (
    Config,
    Standalone,
    StandaloneSettings,
    check_solvers,
    load_config,
)
from certop.store.files import (
    FileAccountStore,
    FileCertStore,
    FileFailureRecords,
    FileOrderJournal,
)
from certop.store.ports import StoredCert
from solvers.http01 import TokenStore
from solvers.registry import SolverRegistry


@dataclass(frozen=True)
class Wired:
    proxy: Proxy
    runner: Standalone
    config: Config
    """The configuration applied at start (the runner's `config` follows file edits)."""


@contextlib.asynccontextmanager
async def standalone(
    settings: StandaloneSettings,
    listen: str,
    http_port: int | None,
    https_port: int | None,
    *,
    config: Config | None = None,
    proxy_settings: ProxySettings | None = None,
    default_certificate: StoredCert | None = None,
    tickets: TicketKeys | None = None,
    tokens: TokenStore | None = None,
    reuse_port: bool = False,
    clock: Clock | None = None,
    backoff: Backoff | None = None,
    solvers: SolverRegistry | None = None,
    grace: float = 5.0,
) -> AsyncIterator[Wired]:
    """Load the manifests and check their solvers (unless `config` is given: checked by the
    caller), start the proxy on `listen` (a port None is not opened, 0 is a free one),
    build the runner over the file stores in `settings.state_dir` and apply the
    configuration. Raises ConfigError for bad input and
    OSError when a port cannot be bound (nothing is left running then). `tokens`: the HTTP-01
    token store (shared between workers through a directory); `tickets`: TLS session-ticket
    keys shared between workers; `grace`: seconds requests in flight get when leaving."""
    solvers = solvers if solvers is not None else SolverRegistry()
    if config is None:
        config = load_config(settings)
        check_solvers(settings, config, solvers)
    # `is not None`: an empty TokenStore is falsy (it has a length), and the shared one of
    # --workers starts empty.
    tokens = tokens if tokens is not None else TokenStore()
    proxy = Proxy(CertBook(default_certificate, tickets), tokens, proxy_settings)
    await proxy.start(listen, http_port, https_port, reuse_port=reuse_port)
    try:
        state = settings.state_dir
        runner = Standalone(settings, proxy, FileCertStore(state), FileAccountStore(state),
                            FileOrderJournal(state), clock or SystemClock(), backoff,
                            solvers=solvers, failures=FileFailureRecords(state), tokens=tokens)
        proxy.metrics.gauges["orders_queued"] = lambda: runner.orders.queued
        proxy.metrics.gauges["orders_in_progress"] = lambda: runner.orders.running
        runner.apply(config)
        yield Wired(proxy, runner, config)
    finally:
        await proxy.close(grace=grace)
