"""`certop proxy`: the proxy fed from the Kubernetes API (`k8s.ingress_source`).

Listens first (so the ports are certop's before anything is served), lists what it serves,
swaps it in, then follows the watches until SIGTERM/SIGINT, when connections in flight get
`grace` seconds. `/healthz` answers while the process runs; `/readyz` once the first
configuration is served and while the API server answers (or has not answered for less than
`--api-grace` seconds: the last configuration is served meanwhile). No leader: every replica
serves.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import socket
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from certop.k8s.ingress_source import ClusterSource, SourceSettings
from certop.k8s.ingress_status import LbEntry, StatusWriter, address_entries
from certop.k8s.lease import Lease
from certop.k8s.login import load_kubernetes_config
from certop.proxy.admin import Admin
from certop.proxy.server import Proxy, ProxySettings
from certop.proxy.tls import CertBook
from certop.store.ports import StoredCert
from solvers.http01 import TokenStore

if TYPE_CHECKING:
    from certop.k8s.operator import OperatorRun

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProxyRun:
    listen: str
    http_port: int
    https_port: int
    admin_port: int | None
    source: SourceSettings
    proxy: ProxySettings
    default_certificate: StoredCert | None = None
    grace: float = 5.0
    publish_service: tuple[str, str] | None = None
    """namespace/name of the Service whose status gives the address (--publish-service)."""
    publish_address: str | None = None
    """The address written into served Ingresses' status (--publish-address)."""
    lease_namespace: str = "certop"
    status_lease: str = "certop-proxy-status"


async def run_proxy(run: ProxyRun, stop: asyncio.Event | None = None,
                    api: Any = None, tokens: TokenStore | None = None) -> int:
    """`certop proxy` until SIGTERM/SIGINT (or `stop`, whose owner handles the signals).
    `tokens`: HTTP-01 tokens answered directly (`certop run`: the operator's); without, the
    challenge paths reach the operator's responder through the temporary Ingresses, as any
    other route."""
    if api is None:
        api = await asyncio.to_thread(load_kubernetes_config)
    # `is not None`: an empty TokenStore is falsy (it has a length).
    proxy = Proxy(CertBook(run.default_certificate),
                  tokens if tokens is not None else TokenStore(), run.proxy)
    await proxy.start(run.listen, run.http_port, run.https_port)
    # The operator's temporary HTTP-01 Ingresses carry their key authorization: every replica
    # answers them itself (for their host), whichever one the CA's request reaches.
    source = ClusterSource(api, proxy, run.source, proxy.metrics)
    admin = Admin(proxy, source.ready)
    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
    writer = status_writer(api, run, source)
    writing = asyncio.create_task(writer.run(stop)) if writer is not None else None
    try:
        if run.admin_port is not None:
            await admin.start(run.listen, run.admin_port)
        started = asyncio.create_task(source.start())
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({started, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if started.done():
            started.result()
            log.info("serving %d Ingresses", len(source.built.ingresses))
            # What the first listing built lives as long as the process: out of the
            # collector's sight, so that a full collection after a later change does not
            # walk it (a 100 ms pause at 2,000 Ingresses, bench/cluster_proxy.py).
            gc.freeze()
            await stopping
        else:
            started.cancel()
    finally:
        stop.set()
        if writing is not None:
            await writing
        source.stop()
        await admin.close()
        await proxy.close(grace=run.grace)
    return 0


def status_writer(api: Any, run: ProxyRun, source: ClusterSource) -> StatusWriter | None:
    """The writer of served Ingresses' status, when an address is to be published."""
    if run.publish_address is None and run.publish_service is None:
        return None
    if run.publish_address is not None:
        fixed = address_entries(run.publish_address)

        def published() -> LbEntry:
            return fixed
    else:
        assert run.publish_service is not None
        service = run.publish_service

        def published() -> LbEntry:
            return source.published(service)

    identity = f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
    writer = StatusWriter(api, Lease(api, run.lease_namespace, run.status_lease, identity),
                          published)
    source.on_built = lambda built: writer.update(built.seen)
    return writer


async def run_both(operator: OperatorRun, run: ProxyRun) -> int:
    """`certop run`: the operator and the proxy in one process, sharing one API client and
    the HTTP-01 tokens (the proxy answers them on its HTTP port; the temporary Ingresses
    still route to the responder, for split layouts and other controllers). Either one
    ending (the Lease lost, a failure) stops both."""
    from certop.k8s.operator import run_operator  # kopf: loaded by `certop run` only

    api = await asyncio.to_thread(load_kubernetes_config)
    tokens = TokenStore()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    tasks = [asyncio.create_task(run_proxy(run, stop, api, tokens)),
             asyncio.create_task(run_operator(operator, api, tokens, stop))]
    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    stop.set()
    codes = await asyncio.gather(*tasks, return_exceptions=True)
    for code in codes:
        if isinstance(code, BaseException):
            raise code
    return max(int(c) for c in codes if not isinstance(c, BaseException))
