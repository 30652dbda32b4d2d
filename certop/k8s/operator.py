"""`certop operator`: the Ingress shim and the Certificate tasks under kopf, behind a Lease.

Start-up: load the Kubernetes login (in-cluster service account or KUBECONFIG; kopf reads the
same), serve the HTTP-01 responder and the admin port, wait for the leader Lease, then run
kopf. Losing the Lease stops the process (the Deployment restarts it as a follower).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import uuid
from dataclasses import dataclass

import kopf
import kubernetes

from certop.k8s.certificates import CertificateController, OperatorSettings, StageHook
from certop.k8s.lease import Lease
from certop.k8s.login import API_TIMEOUT, load_kubernetes_config
from certop.k8s.shim import Shim
from certop.metrics import Metrics
from certop.proxy.admin import Admin
from certop.proxy.server import Proxy
from certop.proxy.tls import CertBook
from solvers.http01 import TokenStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OperatorRun:
    namespaces: tuple[str, ...] = ()
    """Namespaces to watch; empty means all (-A)."""
    default_issuer: str | None = None
    """ClusterIssuer for Ingresses annotated only with kubernetes.io/tls-acme: "true"."""
    resource_namespace: str = "certop"
    """Where ClusterIssuers' Secrets and the Lease live."""
    listen: str = "0.0.0.0"
    """Address of the responder and admin ports."""
    solver_port: int = 8089
    """The HTTP-01 responder's port (the solver Service's target)."""
    solver_service: str = "certop-solver"
    """The Service temporary Ingresses route to."""
    admin_port: int | None = None
    """/healthz, /readyz (only the Lease holder is ready), /metrics."""
    lease_name: str = "certop-leader"
    lease_duration: int = 15
    """The coordination.k8s.io Lease that elects the active replica."""
    max_concurrent_orders: int = 32
    """Orders in flight at the CA at once (--max-concurrent-orders)."""
    dns01_nameservers: tuple[tuple[str, int], ...] = ()
    """Where DNS-01 propagation is checked (--dns01-nameservers)."""
    dns01_exec_allow: tuple[str, ...] = ()
    """Programs a ClusterIssuer's exec DNS provider may run (--dns01-exec-allow)."""
    http01_self_check: tuple[str, int] | None = None
    """Where the HTTP-01 self-check asks for a token (--http01-self-check): the Ingress
    controller that serves the temporary Ingresses; None: certop's own responder."""


KOPF_WORKERS = 128
"""kopf's per-object workers per watched resource at once (events of other objects wait in
the watch stream: backpressure, nothing is lost)."""
WATCH_TIMEOUT = 300.0
"""Seconds a watch request lasts before kopf reconnects (asked of the server; the client
gives up a minute later), so a silently dead connection is noticed."""


def configure_kopf(settings: kopf.OperatorSettings) -> None:
    """kopf as certop runs it (a startup handler; the in-process tests call it too):
    - no scanning: kopf neither lists CustomResourceDefinitions nor Namespaces, so the RBAC
      needs no grant on them (certop's CRDs are installed before it starts; `-n NS` names
      namespaces that exist);
    - every API request has a timeout, watches included;
    - at most `KOPF_WORKERS` objects per resource are worked on at once (kopf runs one worker
      per object with events; 10,000 Ingresses created at once would otherwise hold 10,000
      workers and their events in memory), and an idle worker ends after half a second."""
    settings.scanning.disabled = True
    settings.queueing.worker_limit = KOPF_WORKERS
    settings.queueing.idle_timeout = 0.5
    settings.networking.request_timeout = API_TIMEOUT
    settings.networking.connect_timeout = API_TIMEOUT
    settings.watching.connect_timeout = API_TIMEOUT
    settings.watching.server_timeout = WATCH_TIMEOUT
    settings.watching.client_timeout = WATCH_TIMEOUT + 60


def _configure_kopf_handler(settings: kopf.OperatorSettings, **_: object) -> None:
    configure_kopf(settings)


@dataclass(frozen=True)
class Wiring:
    registry: kopf.OperatorRegistry
    certificates: CertificateController
    """Its tasks stop with kopf's cleanup; `certificates.stop(0)` cancels them at once (the
    Lease was lost: kopf was cancelled and runs no cleanup)."""


def build_registry(api: kubernetes.client.ApiClient, tokens: TokenStore,
                   settings: OperatorSettings, *, default_issuer: str | None = None,
                   metrics: Metrics | None = None,
                   stage_hook: StageHook | None = None,
                   registry: kopf.OperatorRegistry | None = None) -> Wiring:
    """`registry` (a new one by default) with the Ingress shim and the Certificate controller:
    what `certop operator` runs once it leads (the in-process tests run it too). Login and
    kopf's settings are the caller's (`run_operator` registers kubectl's login and
    `configure_kopf` first)."""
    registry = registry if registry is not None else kopf.OperatorRegistry()
    Shim(api, default_issuer).register(registry)
    certificates = CertificateController(api, tokens, settings, metrics=metrics,
                                         stage_hook=stage_hook)
    certificates.register(registry)
    return Wiring(registry, certificates)


async def run_operator(run: OperatorRun, api: kubernetes.client.ApiClient | None = None,
                       tokens: TokenStore | None = None,
                       stop: asyncio.Event | None = None) -> int:
    """`certop operator`: the responder, the election, and once leading the shim and the
    Certificate controller, until SIGTERM/SIGINT. `certop run` passes its own `api`,
    `tokens` (shared with its proxy, which answers them directly) and `stop` (it handles
    the signals)."""
    if api is None:
        api = await asyncio.to_thread(load_kubernetes_config)
    tokens = tokens if tokens is not None else TokenStore()
    responder = Proxy(CertBook(), tokens)
    await responder.start(run.listen, run.solver_port, None)
    identity = f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
    lease = Lease(api, run.resource_namespace, run.lease_name, identity,
                  run.lease_duration)
    leading, lost = asyncio.Event(), asyncio.Event()
    admin = Admin(responder, lambda: leading.is_set() and not lost.is_set() and lease.held,
                  healthy=lease.healthy)
    if run.admin_port is not None:
        await admin.start(run.listen, run.admin_port)
    loop = asyncio.get_running_loop()
    if stop is None:
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
    holder = asyncio.create_task(lease.hold(leading, lost, stop))
    code = 0
    try:
        waiting = {asyncio.create_task(leading.wait()), asyncio.create_task(stop.wait())}
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        for task in waiting:
            task.cancel()
        if not stop.is_set():
            log.info("leading: starting the Ingress shim and the Certificate controller")
            settings = OperatorSettings(
                resource_namespace=run.resource_namespace, solver_service=run.solver_service,
                solver_port=80, max_concurrent_orders=run.max_concurrent_orders,
                namespaces=run.namespaces, dns01_nameservers=run.dns01_nameservers,
                dns01_exec_allow=run.dns01_exec_allow,
                self_check_addr=run.http01_self_check or (
                    "127.0.0.1" if run.listen in ("0.0.0.0", "") else run.listen,
                    run.solver_port))
            registry = kopf.OperatorRegistry()
            # The same login as our own client: in-cluster service account or KUBECONFIG.
            kopf.on.login(registry=registry)(kopf.login_via_client)
            kopf.on.startup(registry=registry, id="settings")(_configure_kopf_handler)
            wiring = build_registry(api, tokens, settings, default_issuer=run.default_issuer,
                                    metrics=responder.metrics, registry=registry)
            flag: asyncio.Future[None] = loop.create_future()
            operator = asyncio.create_task(kopf.operator(
                registry=registry, clusterwide=not run.namespaces,
                namespaces=list(run.namespaces), standalone=True, stop_flag=flag))
            watchers = {asyncio.create_task(stop.wait()), asyncio.create_task(lost.wait())}
            await asyncio.wait({operator, *watchers}, return_when=asyncio.FIRST_COMPLETED)
            for task in watchers:
                task.cancel()
            if lost.is_set():
                # Not renewed within the renew deadline: the handlers stop now (cancelled, not
                # drained), before another replica may see the Lease expire.
                log.error("the leader Lease was lost: stopping so that a follower takes over")
                code = 1
                operator.cancel()
                await wiring.certificates.stop(grace=0.0)
            if not flag.done():
                flag.set_result(None)
            with contextlib.suppress(asyncio.CancelledError):
                await operator
    finally:
        stop.set()
        await holder
        await admin.close()
        await responder.close(grace=1.0)
    return code
