"""Certificate objects -> ACME orders -> `kubernetes.io/tls` Secrets, one asyncio task each.

kopf delivers the Certificates' events (an event handler: kopf writes nothing on them, no
finalizer, no bookkeeping annotation); the first event of a Certificate starts its task, later
ones hand it the new body (a changed spec wakes it), deletion stops it. The task runs the
Certificate through the issuance driver (`issuance.pipeline`, over the pure
`core.issuing.transition`) with this module's ports: the last body for the spec, Secrets for
certificates, accounts and the journal, the status and events for reports. The driver looks
at the Secret, decides, orders in bounded steps run in a thread (the next step is scheduled,
never slept for in a thread), stores, reports on the status, then waits until the renewal time
(re-checked at least every `recheck` seconds, and at once when the object changes). What the
task keeps between events is small (`_Runner`: the Certificate's metadata and spec, not its
whole body), so memory grows with the Certificates by a few kilobytes each.

Issuance goes through named stages: `trigger` (decided to issue), the order's own `key`,
`order`, `challenges`, `finalize`, `certificate` (see `acme.orders`), then `store` (the Secret
is written) and `ready` (the status says Ready). A stopped task stops between two stages;
whatever must survive lives in the journal Secret and the TLS Secret, so a new run re-enters
the interrupted stage without a second order. A journal left by a run that stopped after
`store` (its order still on the status) is cleared at the first look that finds the Secret
current.
Failures back off with `core.backoff` (never under the CA's Retry-After) and show on the
status and as events with stable reasons.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import datetime
import json
import logging
import random
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, cast

import kopf
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from certop import crypto
from certop.acme.accounts import Account, account_id
from certop.acme.orders import OrderSession, Stage
from certop.core import issuing
from certop.core.backoff import Backoff
from certop.core.certificates import spec_of as _spec_of
from certop.core.clock import Clock, SystemClock
from certop.core.errors import CertopError, TemporaryError
from certop.core.issuers import parse_issuer
from certop.core.models import (
    AcmeIssuer,
    CertificateSpec,
    ObjectRef,
)
from certop.core.renewal import CertFacts
from certop.core.shim import CLASS_ANNOTATION
from certop.issuance import pipeline
from certop.issuance.accounts import AccountRegistry
from certop.issuance.ari import RenewalInfoCache
from certop.issuance.limits import OrderLimit
from certop.metrics import Metrics
from certop.store.listwatch import ListWatch
from certop.store.ports import CertStore, OrderJournal, StoredCert
from certop.store.secret_cache import SecretCache, secret_watch
from certop.store.secrets import (
    SecretAccountStore,
    SecretCertStore,
    SecretNotOwned,
    SecretOrderJournal,
)
from solvers.base import ClusterContext, SolverContext
from solvers.http01.ingress import TOKEN_LABEL
from solvers.http01.tokens import TokenStore
from solvers.registry import SolverRegistry

log = logging.getLogger(__name__)
GROUP, VERSION = "certop.dev", "v1"
_T = TypeVar("_T")
_ORDER_STATES = {Stage.ORDER: "pending"}
"""status.order.state after these stages: one status write per order placed (the next says
Ready or the failure); certop resumes a journalled order only while the status shows it."""
class StopFlag(Protocol):
    """A task's stop flag, as the stage hook sees it."""

    def is_set(self) -> bool: ...

    async def wait(self) -> None: ...


StageHook = Callable[[str, CertificateSpec, StopFlag], Awaitable[None]]
"""Called after each stage with its name and the task's stop flag (tests use it to stop the
operator there)."""
RESTART = 60.0
"""Seconds before a Certificate's task looks again after an unexpected error (a bug)."""
_KEPT_META = ("name", "namespace", "uid", "labels", "ownerReferences")


def _compact(body: Mapping[str, Any]) -> dict[str, Any]:
    """What a Certificate's task needs of its body between events: the metadata that names
    it, its owners and its solver selectors (labels, the class annotation), and the spec."""
    meta = body.get("metadata") or {}
    kept = {key: meta[key] for key in _KEPT_META if key in meta}
    asked = (meta.get("annotations") or {}).get(CLASS_ANNOTATION)
    if asked is not None:
        kept["annotations"] = {CLASS_ANNOTATION: asked}
    return {"apiVersion": body.get("apiVersion"), "kind": body.get("kind"),
            "metadata": kept, "spec": body.get("spec") or {}}


def _spec_hash(body: Mapping[str, Any]) -> int:
    return hash(json.dumps(body.get("spec") or {}, sort_keys=True, default=str))


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class _IssuerSink:
    """Issuers from a `ListWatch` thread into the controller, in the event loop."""

    def __init__(self, controller: CertificateController, loop: asyncio.AbstractEventLoop,
                 cluster: bool) -> None:
        self.controller = controller
        self.loop = loop
        self.cluster = cluster
        self.kind = "ClusterIssuer" if cluster else "Issuer"

    def replace(self, namespace: str | None, items: Iterable[Mapping[str, Any]],
                rv: str = "") -> None:
        self._call(self.controller.on_issuers_listed, namespace, self.cluster, list(items))

    def apply(self, kind: str, raw: Mapping[str, Any]) -> None:
        self._call(self.controller.on_issuer, kind, {**raw, "kind": self.kind})

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        # A done event with a result: the listing is in the controller before `synced`.
        done = threading.Event()

        def run() -> None:
            try:
                fn(*args)
            finally:
                done.set()

        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(run)
            done.wait(10)


class _Runner:
    """One Certificate's task and what it keeps between events: a few small objects (at
    10,000 Certificates memory is counted per object). One future at a time stands for
    every wait of the task (a pause, an order step), resolved by its timer, a stop or (for a
    pause) a wake."""

    __slots__ = (
        "_waiter",
        "_wakeable",
        "body",
        "spec_hash",
        "status",
        "stopped",
        "task",
        "uid",
        "woken",
    )

    def __init__(self, uid: str, body: dict[str, Any], status: dict[str, Any]) -> None:
        self.uid = uid
        self.body = body
        """The Certificate as its last event showed it (`_compact`)."""
        self.status: dict[str, Any] | None = status
        """The status at the first event (restores the backoff); dropped once read."""
        self.spec_hash = _spec_hash(body)
        self.stopped = False
        """The Certificate is deleted or the operator stops."""
        self.woken = False
        """The spec (or the Secret) changed: the next pause ends at once."""
        self.task: asyncio.Task[None] | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._wakeable = False

    def stop(self) -> None:
        self.stopped = True
        self._resolve()

    def wake(self) -> None:
        self.woken = True
        if self._wakeable:
            self._resolve()

    def is_set(self) -> bool:
        """`StopFlag`: stopped."""
        return self.stopped

    async def wait(self, seconds: float | None = None, wakeable: bool = False) -> None:
        """Until `seconds` pass (None: for ever), the task is stopped or (`wakeable`) woken."""
        if self.stopped or (wakeable and self.woken):
            self.woken = self.woken and not wakeable
            return
        loop = asyncio.get_running_loop()
        self._waiter = waiter = loop.create_future()
        self._wakeable = wakeable
        timer = loop.call_later(seconds, _resolve, waiter) if seconds is not None else None
        try:
            await waiter
        finally:
            if timer is not None:
                timer.cancel()
            self._waiter = None
            if wakeable:
                self.woken = False

    def _resolve(self) -> None:
        if self._waiter is not None:
            _resolve(self._waiter)

    @property
    def key(self) -> tuple[str, str]:
        meta = self.body["metadata"]
        return str(meta.get("namespace") or ""), str(meta.get("name") or "")

    @property
    def ref(self) -> str:
        return "/".join(self.key)

    @property
    def secret(self) -> tuple[str, str]:
        """(namespace, the TLS Secret's name)."""
        return self.key[0], str((self.body.get("spec") or {}).get("secretName") or "")



@dataclass(frozen=True)
class OperatorSettings:
    resource_namespace: str = "certop"
    """Where ClusterIssuers' Secrets (account keys, EAB) live (--cluster-resource-namespace)."""
    solver_service: str = "certop-solver"
    """The Service temporary Ingresses route HTTP-01 challenges to."""
    solver_port: int = 80
    """Its port."""
    self_check_addr: tuple[str, int] | None = None
    """certop's own responder, for the self-check before answering a challenge."""
    recheck: float = 3600.0
    """Seconds between looks at a certificate that is not due yet."""
    validation_timeout: float = 600.0
    """Seconds an order may stay pending at the CA once its challenges are answered."""
    max_concurrent_orders: int = 32
    """Orders in flight at the CA at once; more wait in line (--max-concurrent-orders)."""
    namespaces: tuple[str, ...] = ()
    """The namespaces the operator serves (empty: all): where certop's Secrets are watched."""
    dns01_nameservers: tuple[tuple[str, int], ...] = ()
    """Where DNS-01 propagation is checked (--dns01-nameservers); empty: the provider's."""
    dns01_exec_allow: tuple[str, ...] = ()
    """Programs a ClusterIssuer's exec DNS provider may run (--dns01-exec-allow)."""


def _condition(ready: bool, reason: str, message: str, now: datetime.datetime
               ) -> list[dict[str, Any]]:
    return [{"type": "Ready", "status": "True" if ready else "False", "reason": reason,
             "message": message, "lastTransitionTime": now.strftime("%Y-%m-%dT%H:%M:%SZ")}]


def status_change(current: Mapping[str, Any] | None, patch: Mapping[str, Any]
                  ) -> dict[str, Any] | None:
    """The merge patch that makes `current` say what `patch` says, or None when it does
    already (no write). A condition keeps its `lastTransitionTime` while its status stays."""
    current = current or {}
    patch = dict(patch)
    if patch.get("conditions"):
        old = {c.get("type"): c for c in current.get("conditions") or []
               if isinstance(c, Mapping)}
        conditions = []
        for condition in patch["conditions"]:
            before = old.get(condition.get("type"))
            if before is not None and before.get("status") == condition.get("status") and \
                    before.get("lastTransitionTime"):
                condition = {**condition, "lastTransitionTime": before["lastTransitionTime"]}
            conditions.append(condition)
        patch["conditions"] = conditions
    if all(current.get(key) == value for key, value in patch.items()):
        return None
    return patch


def _tell(body: Mapping[str, Any], kind: str, reason: str, message: str,
          owners: bool = True) -> None:
    """An event on the Certificate and (`owners`) on every Ingress that owns it (what users
    look at)."""
    meta = body["metadata"]
    targets: list[Any] = [body]
    for ref in meta.get("ownerReferences") or [] if owners else []:
        if ref.get("kind") == "Ingress":
            targets.append({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                            "metadata": {"name": ref.get("name"), "uid": ref.get("uid"),
                                         "namespace": meta.get("namespace")}})
    kopf.event(targets, type=kind, reason=reason, message=message)


def _ts(when: datetime.datetime) -> str:
    return when.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class CertificateController:
    def __init__(self, api: client.ApiClient, tokens: TokenStore,
                 settings: OperatorSettings | None = None, clock: Clock | None = None,
                 backoff: Backoff | None = None, metrics: Metrics | None = None,
                 stage_hook: StageHook | None = None,
                 solvers: SolverRegistry | None = None) -> None:
        self.api = api
        self.solvers = solvers if solvers is not None else SolverRegistry()
        """The solvers an issuer's blocks may name (the installed entry points by default)."""
        self.stage_hook = stage_hook
        self.metrics = metrics or Metrics()
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.tokens = tokens
        self.settings = settings or OperatorSettings()
        self.clock = clock or SystemClock()
        self.backoff = backoff or Backoff()
        self.secrets = SecretCache(on_change=self._secret_changed)
        """certop's own Secrets, as one label-selected watch has them (`watch()`)."""
        self.certs = SecretCertStore(self.core, cache=self.secrets)
        self.journal = SecretOrderJournal(self.core, cache=self.secrets)
        self._watches: list[ListWatch] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listed = False
        """The watches listed certop's Secrets and the issuers: no task starts before."""
        self._waiting: list[_Runner] = []
        """Certificates seen before that: their tasks start then."""
        self._by_secret: dict[tuple[str, str], str] = {}
        """(namespace, TLS Secret name) -> the uid of the Certificate that writes it."""
        self.accounts = AccountRegistry(self._account_store)
        """Issuers' accounts; their CA bundles in a temporary directory removed at stop."""
        self._runners: dict[str, _Runner] = {}
        """By the Certificate's uid: its task and last body."""
        self._stopping = False
        self.orders = OrderLimit(self.settings.max_concurrent_orders)
        self.metrics.gauges["orders_queued"] = lambda: self.orders.queued
        self.metrics.gauges["orders_in_progress"] = lambda: self.orders.running
        self._issuer_docs: dict[tuple[str, str, str], dict[str, Any]] = {}
        """(kind, namespace, name) -> the Issuer or ClusterIssuer as the watch last said."""
        self._parsed: dict[tuple[str, str, str], tuple[str, AcmeIssuer]] = {}
        """The same key -> (resourceVersion, parsed issuer): parsed once per version."""
        self.ari = RenewalInfoCache(self.clock, self.backoff, random.random, asyncio.to_thread)
        """The CA's renewal information, by the Certificate's (namespace, name)."""

    def register(self, registry: kopf.OperatorRegistry) -> None:
        # An event handler, not a kopf daemon or on.update: kopf writes nothing on a
        # Certificate (no finalizer, no diff-base annotation); one task per Certificate is
        # started and stopped from here, the last spec remembered here.
        kopf.on.event(GROUP, VERSION, "certificates", registry=registry, id="issuance")(
            self.on_certificate_event)
        kopf.on.startup(registry=registry, id="leftover-http01-ingresses")(
            self.remove_leftover_ingresses)
        kopf.on.startup(registry=registry, id="secret-and-issuer-watches")(self.watch)
        kopf.on.cleanup(registry=registry, id="issuance")(self.stop)

    async def watch(self, **_: Any) -> None:
        """Start the watches of certop's own Secrets and of the issuers (before kopf's
        watchers start); no task looks before both have listed."""
        loop = self._loop = asyncio.get_running_loop()
        namespaces = self.settings.namespaces

        def listed() -> None:
            if all(w.synced.is_set() for w in self._watches):
                loop.call_soon_threadsafe(self._start_waiting)

        def issuers(namespace: str | None, **kwargs: Any) -> Any:
            if namespace is None:
                return self.custom.list_cluster_custom_object(GROUP, VERSION, "issuers",
                                                              **kwargs)
            return self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace,
                                                             "issuers", **kwargs)

        def cluster_issuers(namespace: str | None, **kwargs: Any) -> Any:
            return self.custom.list_cluster_custom_object(GROUP, VERSION, "clusterissuers",
                                                          **kwargs)

        self._watches = [
            secret_watch(self.core, self.secrets, namespaces, on_synced=listed),
            ListWatch(issuers, _IssuerSink(self, loop, cluster=False), namespaces,
                      what="Issuers", on_synced=listed),
            ListWatch(cluster_issuers, _IssuerSink(self, loop, cluster=True),
                      what="ClusterIssuers", on_synced=listed)]
        for watch in self._watches:
            watch.start()

    def _secret_changed(self, namespace: str, name: str) -> None:
        """From the watch's thread: a Secret changed other than by certop's write (deleted,
        edited): the Certificate that writes it looks again now."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._wake_for, namespace, name)

    def _wake_for(self, namespace: str, name: str) -> None:
        runner = self._runners.get(self._by_secret.get((namespace, name), ""))
        if runner is not None:
            runner.wake()

    def close(self, **_: Any) -> None:
        """Remove the CA bundle files (the operator stops)."""
        self.accounts.close()

    def remove_leftover_ingresses(self, **_: Any) -> None:
        """Temporary Ingresses of a previous run are removed at start; an order that is still
        pending gets its Ingress again when its task resumes it."""
        net = client.NetworkingV1Api(self.api)
        listing = net.list_ingress_for_all_namespaces(label_selector=f"{TOKEN_LABEL}=true")
        for item in listing.items:
            meta = item.metadata
            if meta is None or not meta.name or not meta.namespace or \
                    (meta.labels or {}).get(TOKEN_LABEL) != "true":
                continue  # an API server ignoring the selector (the test emulator does)
            try:
                net.delete_namespaced_ingress(meta.name, meta.namespace)
                log.info("removed leftover HTTP-01 Ingress %s/%s", meta.namespace, meta.name)
            except ApiException as exc:
                if exc.status != 404:
                    raise

    async def on_certificate_event(self, type: str | None, uid: str, body: kopf.Body,
                                   **_: Any) -> None:
        """Start the Certificate's task at its first event, hand it each new body (a changed
        spec wakes it), stop it when the Certificate is deleted or being deleted."""
        if type == "DELETED" or body.get("metadata", {}).get("deletionTimestamp"):
            runner = self._runners.pop(uid, None)
            if runner is not None:
                runner.stop()
                if self._by_secret.get(runner.secret) == uid:
                    del self._by_secret[runner.secret]
            return
        if self._stopping:
            return
        compact = _compact(body)
        runner = self._runners.get(uid)
        if runner is None:
            runner = _Runner(uid, compact, dict(body.get("status") or {}))
            self._runners[uid] = runner
            self._by_secret[runner.secret] = uid
            if self._listed:
                self._start(runner)
            else:
                self._waiting.append(runner)
            return
        before = runner.spec_hash
        if self._by_secret.get(runner.secret) == uid:
            del self._by_secret[runner.secret]
        runner.body = compact
        runner.spec_hash = _spec_hash(compact)
        self._by_secret[runner.secret] = uid
        if before != runner.spec_hash:
            runner.wake()

    def _start(self, runner: _Runner) -> None:
        runner.task = asyncio.create_task(self._drive(runner), name=f"certificate {runner.ref}")

    def _start_waiting(self) -> None:
        """The watches have listed: the tasks of the Certificates seen so far start."""
        self._listed = True
        waiting, self._waiting = self._waiting, []
        for runner in waiting:
            if not runner.stopped and self._runners.get(runner.uid) is runner:
                self._start(runner)

    async def stop(self, grace: float = 5.0, **_: Any) -> None:
        """The operator stops: every task is asked to stop (between two stages, removing its
        temporary Ingresses) and cancelled if it has not after `grace` seconds; the CA
        bundle files are removed."""
        self._stopping = True
        for watch in self._watches:
            watch.stop()
        runners = list(self._runners.values())
        self._runners.clear()
        for runner in runners:
            runner.stop()
        tasks = [r.task for r in runners if r.task is not None and not r.task.done()]
        if tasks:
            late = (await asyncio.wait(tasks, timeout=grace))[1]
            for task in late:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        self.close()

    async def _pause(self, runner: _Runner, seconds: float) -> None:
        """Until `seconds` pass, the task is stopped, or the spec changes."""
        await runner.wait(seconds, wakeable=True)

    # -- issuers -------------------------------------------------------------------------

    def on_issuer(self, kind: str, body: Mapping[str, Any]) -> None:
        """An Issuer or ClusterIssuer as the watch delivers it (in the event loop)."""
        meta = body.get("metadata") or {}
        cluster = body.get("kind") == "ClusterIssuer"
        key = ("ClusterIssuer" if cluster else "Issuer",
               "" if cluster else str(meta.get("namespace") or ""), str(meta.get("name")))
        if kind == "DELETED":
            self._issuer_docs.pop(key, None)
        else:
            self._issuer_docs[key] = dict(body)
        self._parsed.pop(key, None)

    def on_issuers_listed(self, namespace: str | None, cluster: bool,
                          items: list[Mapping[str, Any]]) -> None:
        """A fresh listing: what it does not hold is gone."""
        kind = "ClusterIssuer" if cluster else "Issuer"
        # (A copy: `_issuer` adds to these from an order's thread.)
        for key in [k for k in list(self._issuer_docs) if k[0] == kind and
                    (cluster or namespace is None or k[1] == namespace)]:
            self._issuer_docs.pop(key, None)
            self._parsed.pop(key, None)
        for body in items:
            self.on_issuer("ADDED", {**body, "kind": kind})

    def _issuer(self, spec: CertificateSpec) -> AcmeIssuer:
        """The Certificate's issuer: from the watch (a GET only when the watch has not
        delivered it yet), parsed once per resourceVersion."""
        namespaced = spec.issuer_kind == "Issuer"
        key = (spec.issuer_kind, spec.namespace if namespaced else "", spec.issuer)
        doc: dict[str, Any] | None = self._issuer_docs.get(key)
        if doc is None:
            if namespaced:
                doc = cast(dict[str, Any], self.custom.get_namespaced_custom_object(
                    GROUP, VERSION, spec.namespace, "issuers", spec.issuer))
            else:
                doc = cast(dict[str, Any], self.custom.get_cluster_custom_object(
                    GROUP, VERSION, "clusterissuers", spec.issuer))
            self._issuer_docs.setdefault(key, doc)  # the watch's later events replace it
        rv = str((doc.get("metadata") or {}).get("resourceVersion") or "")
        parsed = self._parsed.get(key)
        if parsed is not None and rv and parsed[0] == rv:
            return parsed[1]
        issuer = self._parse_issuer(spec, doc)
        if rv:
            self._parsed[key] = (rv, issuer)
        return issuer

    def _parse_issuer(self, spec: CertificateSpec, doc: dict[str, Any]) -> AcmeIssuer:
        namespace = spec.namespace if spec.issuer_kind == "Issuer" else \
            self.settings.resource_namespace

        def secret(ns: str, name: str) -> Mapping[str, bytes] | None:
            try:
                return self._secret_data(ns, name)
            except ApiException:
                return None

        issuer = parse_issuer(doc, f"{spec.issuer_kind} {spec.issuer}",
                              secret, namespace)
        # Who the issuer is comes from where it was read, not from what the object says.
        ref = ObjectRef(spec.issuer_kind, spec.namespace if spec.issuer_kind == "Issuer"
                        else "", spec.issuer)
        # A solver's settings errors name the issuer as its ref does (no file to name).
        solvers = tuple(dataclasses.replace(block, origin=("", str(ref), block.origin[2]))
                        for block in issuer.solvers)
        return dataclasses.replace(issuer, ref=ref, solvers=solvers)

    def _secret_data(self, namespace: str, name: str) -> Mapping[str, bytes] | None:
        """A Secret an issuer references, read by name (None: there is none; blocking)."""
        try:
            found = self.core.read_namespaced_secret(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return {k: base64.b64decode(v) for k, v in (found.data or {}).items()}

    def _secret_value(self, namespace: str, name: str, key: str) -> bytes | None:
        """A key of a Secret in the issuer's namespace (a DNS provider's credentials), read
        when a solver is built for an order (blocking: from the order's thread)."""
        try:
            data = self._secret_data(namespace, name)
        except ApiException as exc:
            raise TemporaryError(f"reading Secret {namespace}/{name}: HTTP {exc.status}") \
                from exc
        return None if data is None else data.get(key)

    def _account_store(self, issuer: AcmeIssuer, namespace: str) -> SecretAccountStore:
        key_id = account_id(issuer.server, issuer.email)
        names = {key_id: issuer.account_key_secret} if issuer.account_key_secret else {}
        return SecretAccountStore(self.core, namespace, names)

    def _account(self, issuer: AcmeIssuer, namespace: str) -> Account:
        """The issuer's own Account (its key Secret in `namespace`, its CA trust): never one
        of another issuer with the same server and email; made anew when its settings
        change."""
        return self.accounts.get(issuer, namespace)

    def _key_namespace(self, spec: CertificateSpec) -> str:
        """Where the account key of `spec`'s issuer lives."""
        return spec.namespace if spec.issuer_kind == "Issuer" else \
            self.settings.resource_namespace

    # -- status ----------------------------------------------------------------------------

    def _status(self, namespace: str, name: str, status: dict[str, Any]) -> bool:
        """Patch the status; False (logged) when the API server refused."""
        try:
            self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, "certificates", name, {"status": status})
        except ApiException as exc:
            log.warning("Certificate %s/%s: status not written: HTTP %s", namespace, name,
                        exc.status)
            return False
        return True

    # -- the task --------------------------------------------------------------------------

    async def _drive(self, runner: _Runner) -> None:
        """One Certificate's issuance until it is stopped; a bug of certop's (an unexpected
        exception) is logged and the certificate looked at again after `RESTART` seconds."""
        try:
            while not runner.stopped:
                try:
                    await self._run(runner)
                except Exception:
                    log.exception("Certificate %s: unexpected error; looking again in %.0fs",
                                  runner.ref, RESTART)
                    await self._pause(runner, RESTART)
                else:
                    break
        finally:
            if self._runners.get(runner.uid) is runner:
                del self._runners[runner.uid]
            namespace, name = runner.key
            self.ari.forget((namespace, name))
            secret = runner.secret[1]
            self.certs.forget(namespace, secret)
            self.journal.forget(namespace, secret)

    async def _stage(self, stage: str, spec: CertificateSpec, stop: StopFlag) -> bool:
        """Stage `stage` is done: log it, tell the hook; True when the task must stop now."""
        asked = f" (Ingress {', '.join(o.name for o in spec.owners)})" if spec.owners else ""
        log.info("Certificate %s/%s%s: %s done", spec.namespace, spec.secret_name, asked, stage)
        if self.stage_hook is not None:
            await self.stage_hook(stage, spec, stop)
        return stop.is_set()

    async def _run(self, runner: _Runner) -> None:
        # The backoff continues where the last run left it (its status): a restart is no
        # reason to hammer the CA again from the first, shortest delay.
        status, runner.status = runner.status or {}, None
        failures, hold = self._restored_backoff(status)
        # An order journal may be left over when the status still shows an order (a run that
        # stopped after storing the certificate): cleared at the first look that finds the
        # Secret current. No status order, no journal to look for.
        journalled = bool(status.get("order"))
        await pipeline.run(_Ports(self, runner, status),
                           issuing.Restored(failures, hold, journalled),
                           issuing.Policy(self.backoff, self.settings.recheck))

    def _restored_backoff(self, status: Mapping[str, Any]) -> tuple[int, float]:
        """(failed attempts so far, seconds still to wait) as the status last said."""
        failures = status.get("failedIssuanceAttempts")
        if not isinstance(failures, int) or isinstance(failures, bool) or failures < 0:
            return 0, 0.0
        last = None
        with contextlib.suppress(TypeError, ValueError):
            last = datetime.datetime.fromisoformat(
                str(status.get("lastFailureTime")).replace("Z", "+00:00"))
            if last.tzinfo is None:
                last = last.replace(tzinfo=datetime.UTC)
        return failures, self.backoff.remaining(failures, last, self.clock.now(),
                                                random.random())


class _Ports:
    """One Certificate's ports for the issuance driver: its last body, Secrets, the status
    and events, the task's stop flag."""

    errors: tuple[type[BaseException], ...] = (CertopError, crypto.CertificateUnreadable,
                                               ApiException)
    expected = errors

    def __init__(self, controller: CertificateController, runner: _Runner,
                 status: Mapping[str, Any]) -> None:
        self.controller = controller
        self.runner = runner
        self.name = runner.key[1]
        self.clock = controller.clock
        self.certs: CertStore = controller.certs
        self.journal: OrderJournal = controller.journal
        self.ari = controller.ari
        self.key = runner.key
        self.validation_timeout = controller.settings.validation_timeout
        self.orders = controller.orders
        self.known: dict[str, Any] = dict(status)
        """The status as this task last wrote it (certop is its only writer), from the
        body at start: a report that changes nothing writes nothing."""

    @property
    def body(self) -> Mapping[str, Any]:
        return self.runner.body

    async def _patch_status(self, status: dict[str, Any]) -> None:
        changed = status_change(self.known, status)
        if changed is None:
            return
        namespace = self.body["metadata"]["namespace"]
        if await asyncio.to_thread(self.controller._status, namespace, self.name, changed):
            self.known = {**self.known, **changed}

    def stopped(self) -> bool:
        return self.runner.stopped

    def forced(self) -> bool:
        return False

    async def blocking(self, call: Callable[[], _T]) -> _T:
        return await pipeline.in_thread(call)

    def spec(self) -> CertificateSpec:
        return _spec_of(self.body)

    async def account(self, spec: CertificateSpec) -> Account:
        issuer = await asyncio.to_thread(self.controller._issuer, spec)
        return self.controller._account(issuer, self.controller._key_namespace(spec))

    async def order_inputs(self, spec: CertificateSpec) -> pipeline.OrderInputs:
        c = self.controller
        issuer = await asyncio.to_thread(c._issuer, spec)
        account = c._account(issuer, c._key_namespace(spec))
        if await asyncio.to_thread(c.certs.owned, spec.namespace, spec.secret_name) is False:
            raise SecretNotOwned(spec.namespace, spec.secret_name)
        meta = self.body["metadata"]
        asked = (meta.get("annotations") or {}).get(CLASS_ANNOTATION)
        labels = dict(meta.get("labels") or {})
        cluster = ClusterContext(c.api, spec.namespace, c.settings.solver_service,
                                 c.settings.solver_port, asked)
        namespace = c._key_namespace(spec)
        bound = c.solvers.bind(SolverContext(
            c.tokens, c.settings.self_check_addr, cluster, labels,
            secrets=lambda name, key: c._secret_value(namespace, name, key),
            dns01_nameservers=c.settings.dns01_nameservers,
            # A namespaced Issuer is a tenant's: its exec hook would run with certop's rights.
            exec_allowed=c.settings.dns01_exec_allow if spec.issuer_kind == "ClusterIssuer"
            else ()))
        # The status says whether an order is in flight (written right after the journal):
        # the journal is read only then, and left as it is once the certificate is stored
        # (the Ready status drops the order): one journal write per order.
        return pipeline.OrderInputs(account, issuer.solvers, bound, labels,
                                    resume=bool(self.known.get("order")),
                                    clear_finished=False)

    async def pause(self, seconds: float) -> None:
        await self.controller._pause(self.runner, seconds)

    async def step_wait(self, seconds: float) -> None:
        await self.runner.wait(seconds)

    async def stage(self, stage: str, spec: CertificateSpec,
                    session: OrderSession | None) -> None:
        if session is not None and stage in {s.value for s in _ORDER_STATES}:
            await self._patch_status({
                "order": {"url": session.order_url, "state": _ORDER_STATES[Stage(stage)]}})
        await self.controller._stage(stage, spec, self.runner)

    async def ready(self, spec: CertificateSpec, facts: CertFacts,
                    renew_at: datetime.datetime, failures: int) -> None:
        now = self.clock.now()
        await self._patch_status({
            "conditions": _condition(True, "Ready", "certificate is up to date", now),
            "notBefore": _ts(facts.not_before), "notAfter": _ts(facts.not_after),
            "renewalTime": _ts(renew_at), "failedIssuanceAttempts": failures,
            "order": None})

    async def failed(self, spec: CertificateSpec | None, reason: str, message: str,
                     failures: int, delay: float | None) -> None:
        if delay is not None:
            message = f"{message}; attempt {failures} failed, next in {delay:.0f}s"
        now = self.clock.now()
        await self._patch_status({
            "conditions": _condition(False, reason, message, now),
            "failedIssuanceAttempts": failures, "lastFailureTime": _ts(now)})
        if delay is None:
            return
        _tell(self.body, "Warning", reason, f"Certificate {self.name}: {message}")

    async def held(self, spec: CertificateSpec, failures: int, seconds: float) -> None:
        log.info("Certificate %s/%s: attempt %d failed before this run; next attempt "
                 "in %.0fs", spec.namespace, self.name, failures, seconds)

    async def issued(self, spec: CertificateSpec) -> None:
        # On the Certificate only (cert-manager's place for it): one event per issuance.
        # Failures are told on the Ingresses too.
        _tell(self.body, "Normal", "Issued", f"certificate for {', '.join(spec.hosts)} "
              f"stored in Secret {spec.secret_name}", owners=False)

    async def ordering(self, spec: CertificateSpec) -> None:
        self.controller.metrics.add("acme_orders_total")

    async def ordered(self, spec: CertificateSpec, session: OrderSession) -> None:
        self.controller.metrics.add("acme_requests_total", session.requests_sent)
        if session.order_url is None and session.placed:
            # Abandoned (the CA made it invalid): the next attempt orders afresh.
            await self._patch_status({"order": None})

    async def stored(self, spec: CertificateSpec, pair: StoredCert) -> None:
        self.controller.metrics.add("certificates_issued_total")
