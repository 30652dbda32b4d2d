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
import logging
import signal
from dataclasses import dataclass

from certop.k8s.ingress_source import ClusterSource, SourceSettings
from certop.k8s.operator import load_kubernetes_config
from certop.proxy.admin import Admin
from certop.proxy.server import Proxy, ProxySettings
from certop.proxy.tls import CertBook
from certop.store.ports import StoredCert
from solvers.http01 import TokenStore

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


async def run_proxy(run: ProxyRun, stop: asyncio.Event | None = None) -> int:
    api = await asyncio.to_thread(load_kubernetes_config)
    # No tokens of its own: challenge paths reach the operator's responder through the
    # temporary Ingresses, as any other route.
    proxy = Proxy(CertBook(run.default_certificate), TokenStore(), run.proxy)
    await proxy.start(run.listen, run.http_port, run.https_port)
    source = ClusterSource(api, proxy, run.source, proxy.metrics)
    admin = Admin(proxy, source.ready)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        if run.admin_port is not None:
            await admin.start(run.listen, run.admin_port)
        started = asyncio.create_task(source.start())
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({started, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if started.done():
            started.result()
            log.info("serving %d Ingresses", len(source.built.ingresses))
            await stopping
        else:
            started.cancel()
    finally:
        source.stop()
        await admin.close()
        await proxy.close(grace=run.grace)
    return 0
