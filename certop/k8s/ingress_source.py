"""The proxy's configuration from the Kubernetes API: `certop proxy`'s source.

Five list-then-watch caches (`store.listwatch`): IngressClasses, Ingresses, Services,
EndpointSlices, and the Secrets of type `kubernetes.io/tls` (a field-selected watch: never
the cluster's other Secrets). Each keeps what it parsed, compact, and tells the source that
something changed; the source then rebuilds the serving snapshot on the event loop (changes
within `settle` seconds coalesce into one rebuild) and swaps it into the proxy whole, as
standalone mode does from files. Nothing is read from the API per request.

What is served: the Ingresses this controller serves (`core.ingress_class`), their
backends resolved through Services and EndpointSlices (`core.endpoints`), and for their
`spec.tls` the TLS Secrets of the same namespace. A served Ingress that does not parse is
skipped and told (an event on it naming the field, a log line, a metric); the others keep
being served. A Secret that does not hold a usable pair keeps its last good certificate and
is told the same way. An Ingress whose Service or Secret does not exist yet is served as
soon as it appears.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import datetime
import logging
import queue
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from kubernetes import client

from certop import crypto
from certop.core import endpoints, serving
from certop.core.errors import ConfigError
from certop.core.ingress import parse_ingress
from certop.core.ingress_class import Claim, IngressClass, parse_class, serves
from certop.core.models import Ingress, ServiceBackend
from certop.k8s.ingress_status import LbEntry, Seen, entries_of
from certop.metrics import Metrics
from certop.store.listwatch import ListWatch
from solvers.http01.ingress import KEY_AUTHORIZATION, TOKEN_LABEL
from solvers.http01.tokens import CHALLENGE_PATH

log = logging.getLogger(__name__)
_T = TypeVar("_T")
Key = tuple[str, str]
TLS_SECRETS = "type=kubernetes.io/tls"
_B64URL = re.compile(r"[A-Za-z0-9_-]{1,128}")


@dataclass(frozen=True)
class SourceSettings:
    controller: str = "certop.dev/ingress-controller"
    class_name: str = "certop"
    namespaces: tuple[str, ...] = ()
    """Watch only these (empty: all)."""
    hsts_default: str | None = None
    settle: float = 0.05
    """Changes within this many seconds make one rebuild."""
    grace: float = 30.0
    """Seconds the API server may be unreachable before `ready()` says False."""
    external_names: bool = False
    """Follow ExternalName Services (--allow-external-name-services)."""


@dataclass(frozen=True)
class _Ingress:
    claim: Claim
    ingress: Ingress | None
    error: ConfigError | None
    uid: str
    version: str
    status: LbEntry = ()
    """What its status.loadBalancer.ingress says now."""
    challenge: tuple[str, str, str] | None = None
    """(host, token, key authorization) of a temporary HTTP-01 Ingress of certop's
    operator."""


@dataclass(frozen=True)
class _Secret:
    pair: serving.KeyPair | None
    """The last good pair (kept when the Secret changes into something unusable)."""
    error: str | None
    uid: str
    version: str


class _Store(Generic[_T]):
    """A `ListWatch` sink: parsed objects by (namespace, name), from the watch threads."""

    def __init__(self, parse: Callable[[Mapping[str, Any], _T | None], _T | None],
                 changed: Callable[[], None]) -> None:
        self._parse = parse
        self._changed = changed
        self._items: dict[Key, _T] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _key(raw: Mapping[str, Any]) -> Key:
        meta = raw.get("metadata") or {}
        return str(meta.get("namespace") or ""), str(meta.get("name") or "")

    def replace(self, namespace: str | None, items: Iterable[Mapping[str, Any]],
                rv: str = "") -> None:
        with self._lock:
            old = self._items
            kept = {k: v for k, v in old.items()
                    if namespace is not None and k[0] != namespace}
            for raw in items:
                key = self._key(raw)
                value = self._parsed(key, raw, old.get(key))
                if value is not None:
                    kept[key] = value
            self._items = kept
        self._changed()

    def apply(self, kind: str, raw: Mapping[str, Any]) -> None:
        key = self._key(raw)
        with self._lock:
            if kind == "DELETED":
                self._items.pop(key, None)
            else:
                value = self._parsed(key, raw, self._items.get(key))
                if value is None:
                    self._items.pop(key, None)
                else:
                    self._items[key] = value
        self._changed()

    def _parsed(self, key: Key, raw: Mapping[str, Any], old: _T | None) -> _T | None:
        """One object parsed; one that cannot be (a bug of certop's, never a user's mistake:
        the parsers turn those into errors of their own) is left out and logged, never
        raised into the watch: one object must not stop the others from being served."""
        try:
            return self._parse(raw, old)
        except Exception:
            log.exception("%s/%s could not be read; left out", *key)
            return None

    def snapshot(self) -> dict[Key, _T]:
        with self._lock:
            return dict(self._items)

    def get(self, key: Key) -> _T | None:
        with self._lock:
            return self._items.get(key)


def _version(raw: Mapping[str, Any]) -> tuple[str, str]:
    meta = raw.get("metadata") or {}
    return str(meta.get("uid") or ""), str(meta.get("resourceVersion") or "")


def _parse_ingress(raw: Mapping[str, Any], _old: _Ingress | None) -> _Ingress:
    uid, version = _version(raw)
    doc = {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", **raw}
    status = entries_of(((raw.get("status") or {}).get("loadBalancer") or {}).get("ingress"))
    try:
        ingress = parse_ingress(doc)
    except ConfigError as exc:
        return _Ingress(Claim.of(raw), None, exc, uid, version, status)
    except Exception as exc:  # anything else in an object is still that object's problem
        meta = raw.get("metadata") or {}
        error = ConfigError("", f"Ingress {meta.get('namespace')}/{meta.get('name')}", "",
                            f"an Ingress certop can read ({type(exc).__name__}: {exc})")
        return _Ingress(Claim.of(raw), None, error, uid, version, status)
    return _Ingress(Claim.of(raw), ingress, None, uid, version, status,
                    _challenge(raw, ingress))


def _challenge(raw: Mapping[str, Any], ingress: Ingress) -> tuple[str, str, str] | None:
    """The host, token and key authorization a temporary HTTP-01 Ingress carries: its
    label, its annotation, one rule (a host) with the one challenge path of that token."""
    meta = raw.get("metadata") or {}
    key_authorization = ingress.annotations.get(KEY_AUTHORIZATION)
    if (meta.get("labels") or {}).get(TOKEN_LABEL) != "true" or not key_authorization \
            or len(ingress.rules) != 1 or len(ingress.rules[0].paths) != 1:
        return None
    path = ingress.rules[0].paths[0].path
    token = path.removeprefix(CHALLENGE_PATH)
    if token == path or not _B64URL.fullmatch(token) or \
            not re.fullmatch(re.escape(token) + r"\.[A-Za-z0-9_-]{1,128}", key_authorization):
        return None  # RFC 8555 section 8.1: token "." base64url(thumbprint)
    host = ingress.rules[0].host
    return (host, token, key_authorization) if host else None


def _parse_secret(raw: Mapping[str, Any], old: _Secret | None) -> _Secret:
    uid, version = _version(raw)
    data = raw.get("data") or {}
    last = old.pair if old is not None and old.uid == uid else None
    try:
        chain = base64.b64decode(data.get("tls.crt") or "", validate=True)
        key = base64.b64decode(data.get("tls.key") or "", validate=True)
        crypto.load_pair(chain, key)
    except (binascii.Error, ValueError) as exc:
        why = exc if isinstance(exc, crypto.CertificateUnreadable) else "data is not base64"
        return _Secret(last, f"tls.crt/tls.key: {why}", uid, version)
    except Exception as exc:  # e.g. a key type the cryptography library does not know
        return _Secret(last, f"tls.crt/tls.key: not a usable pair ({type(exc).__name__})",
                       uid, version)
    return _Secret(serving.KeyPair(chain, key), None, uid, version)


def _parse_slice(raw: Mapping[str, Any], _old: Any) -> endpoints.EndpointSlice | None:
    return endpoints.parse_slice(raw)


def _parse_service(raw: Mapping[str, Any], _old: Any) -> endpoints.Service:
    return endpoints.parse_service(raw)


def _parse_class(raw: Mapping[str, Any], _old: Any) -> IngressClass:
    return parse_class(raw)


@dataclass(frozen=True)
class Built:
    """What one rebuild served, for the status writer and the tests."""

    ingresses: tuple[Ingress, ...]
    skipped: Mapping[Key, str]
    """Served Ingresses left out, and why."""
    seen: Mapping[Key, Seen] = field(default_factory=dict)
    """Every Ingress: served here or not, and its status (for the status writer)."""


class ClusterSource:
    """Feeds `server` from the API. `start()` lists everything and swaps in the first
    snapshot; `stop()` ends the watches (the proxy keeps serving what it has)."""

    def __init__(self, api: client.ApiClient, server: serving.Server,
                 settings: SourceSettings | None = None, metrics: Metrics | None = None,
                 events: Callable[[Mapping[str, Any], str, str, str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings or SourceSettings()
        self.server = server
        self.metrics = metrics or Metrics()
        self.clock = clock
        self.events = events if events is not None else EventPoster(api)
        self.classes: _Store[IngressClass] = _Store(_parse_class, self._changed)
        self.ingresses: _Store[_Ingress] = _Store(_parse_ingress, self._changed)
        self.services: _Store[endpoints.Service] = _Store(_parse_service, self._changed)
        self.slices: _Store[endpoints.EndpointSlice] = _Store(_parse_slice, self._changed)
        self.secrets: _Store[_Secret] = _Store(_parse_secret, self._changed)
        self.built = Built((), {})
        self.rebuilds = 0
        self.rebuild_failed = False
        self.on_built: Callable[[Built], None] | None = None
        """Called after each swap (the status writer)."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending = False
        self._told: set[tuple[str, str, str]] = set()
        """(uid, resourceVersion, message) already told: once per version of an object."""
        namespaces = self.settings.namespaces
        core, net = client.CoreV1Api(api), client.NetworkingV1Api(api)
        discovery = client.DiscoveryV1Api(api)
        self._watches = [
            ListWatch(lambda _ns, **kw: net.list_ingress_class(**kw), self.classes,
                      what="IngressClasses"),
            ListWatch(_calls(net.list_ingress_for_all_namespaces, net.list_namespaced_ingress),
                      self.ingresses, namespaces, what="Ingresses"),
            ListWatch(_calls(core.list_service_for_all_namespaces, core.list_namespaced_service),
                      self.services, namespaces, what="Services"),
            ListWatch(_calls(discovery.list_endpoint_slice_for_all_namespaces,
                             discovery.list_namespaced_endpoint_slice),
                      self.slices, namespaces, what="EndpointSlices"),
            ListWatch(_calls(core.list_secret_for_all_namespaces, core.list_namespaced_secret),
                      self.secrets, namespaces, what="TLS Secrets", fields=TLS_SECRETS),
        ]

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self, timeout: float | None = None) -> None:
        """Watch, wait until everything was listed once (`timeout`: at most so long), serve
        it."""
        self._loop = asyncio.get_running_loop()
        listed = asyncio.Event()

        loop = self._loop

        def check() -> None:
            if self.synced:
                listed.set()

        def from_thread() -> None:
            loop.call_soon_threadsafe(check)

        for watch in self._watches:
            watch.on_synced = from_thread
            watch.start()
        check()
        try:
            await asyncio.wait_for(listed.wait(), timeout)
        except TimeoutError:
            missing = ", ".join(w.what for w in self._watches if not w.synced.is_set())
            raise TimeoutError(f"the API server did not list {missing} within "
                               f"{timeout:.0f}s") from None
        self._rebuild()

    def stop(self) -> None:
        for watch in self._watches:
            watch.stop()

    @property
    def synced(self) -> bool:
        return all(w.synced.is_set() for w in self._watches)

    def ready(self) -> bool:
        """Listed once, and the API server answering (or not for less than the grace)."""
        if not self.synced or self.rebuild_failed or not self.rebuilds:
            return False
        failing = [w.failing_since for w in self._watches if w.failing_since is not None]
        return not failing or self.clock() - min(failing) < self.settings.grace

    # -- rebuilding --------------------------------------------------------------------

    def _changed(self) -> None:
        """From a watch thread: rebuild soon (once for a burst of changes)."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self._schedule)

    def _schedule(self) -> None:
        if self._pending or self._loop is None or not self.synced:
            return
        self._pending = True
        self._loop.call_later(self.settings.settle, self._rebuild)

    def _rebuild(self) -> None:
        """Build and swap in the snapshot; a failure (a bug of certop's) keeps the last
        one serving, is logged and counted, and makes `ready()` False until a rebuild
        succeeds again (the next change tries again)."""
        self._pending = False
        try:
            self._build_and_swap()
        except Exception:
            log.exception("building the configuration failed; still serving the last one")
            self.metrics.add("proxy_rebuild_errors_total")
            self.rebuild_failed = True
        else:
            self.rebuild_failed = False

    def _build_and_swap(self) -> None:
        s = self.settings
        classes = {c.name: c for c in self.classes.snapshot().values()}
        services = self.services.snapshot()
        by_service: dict[Key, list[endpoints.EndpointSlice]] = {}
        for piece in self.slices.snapshot().values():
            by_service.setdefault((piece.namespace, piece.service), []).append(piece)
        secrets = self.secrets.snapshot()
        served: list[Ingress] = []
        skipped: dict[Key, str] = {}
        seen: dict[Key, Seen] = {}
        raws = self.ingresses.snapshot()
        # Oldest first (creationTimestamp, then namespace/name): the first Ingress naming a
        # host gets its routes (`routing.build`) and its certificate (`serving.sni_map`),
        # as in standalone mode; a newer one cannot take them over.
        for key, entry in sorted(raws.items(), key=_age):
            ours = serves(entry.claim, classes, s.controller, s.class_name)
            seen[key] = Seen(ours and entry.ingress is not None, entry.status, entry.version,
                             other=not ours and _foreign(entry.claim, classes, s.controller))
            if not ours:
                continue
            if entry.ingress is None:
                assert entry.error is not None
                skipped[key] = str(entry.error)
                self._tell(key, "Ingress", entry.uid, entry.version, "InvalidIngress",
                           "not served: " + ": ".join(
                               part for part in (entry.error.field, entry.error.expected)
                               if part))
                continue
            served.append(entry.ingress)
        problems: dict[ServiceBackend, str] = {}

        def resolve(backend: ServiceBackend) -> Sequence[endpoints.Address]:
            found, problem = endpoints.resolve(
                backend, services.get((backend.namespace, backend.name)),
                by_service.get((backend.namespace, backend.name), ()), s.external_names)
            if problem is not None:
                problems[backend] = problem
            return found

        pairs: dict[serving.SecretKey, serving.KeyPair] = {}
        for ing in served:
            for tls in ing.tls:
                if not tls.secret_name:
                    continue
                key = (ing.ref.namespace, str(tls.secret_name))
                secret = secrets.get(key)
                if secret is None:
                    continue  # served with the default certificate until it appears
                if secret.error is not None:
                    self._tell(key, "Secret", secret.uid, secret.version, "InvalidSecret",
                               f"{secret.error}; "
                               + ("keeping the last good certificate" if secret.pair
                                  else "its hosts get the default certificate"))
                if secret.pair is not None:
                    pairs[key] = secret.pair
        # The operator's temporary Ingresses: answered for their own host only, the oldest
        # Ingress first (`served` is oldest first), before any route.
        challenges: dict[tuple[str, str], str] = {}
        for ing in served:
            found = raws[(ing.ref.namespace, ing.ref.name)].challenge
            if found is not None:
                challenges.setdefault((found[0], found[1]), found[2])
        snapshot = serving.build(served, resolve, s.hsts_default, pairs,
                                 challenges=challenges)
        for ing in served:
            found_problems = [problems[b] for b in serving.backends([ing]) if b in problems]
            if found_problems:  # one event per version of the Ingress, however many
                entry = raws[(ing.ref.namespace, ing.ref.name)]
                shown = "; ".join(found_problems[:5]) + (
                    f"; and {len(found_problems) - 5} more" if len(found_problems) > 5 else "")
                self._tell((ing.ref.namespace, ing.ref.name), "Ingress", entry.uid,
                           entry.version, "BackendNotFound", shown)
        for conflict in snapshot.routes.conflicts:
            self._log_once(conflict)
        self.server.swap(snapshot)
        self.rebuilds += 1
        self.built = Built(tuple(served), skipped, seen)
        if self.on_built is not None:
            self.on_built(self.built)

    def published(self, service: Key) -> LbEntry:
        """The addresses a Service's status gives (--publish-service), from the cache."""
        found = self.services.get(service)
        return found.load_balancer if found is not None else ()

    def _log_once(self, message: str) -> None:
        if ("", "", message) not in self._told:
            self._told.add(("", "", message))
            log.warning("%s", message)

    def _tell(self, key: Key, kind: str, uid: str, version: str, reason: str,
              message: str) -> None:
        """Once per version of the object: an event, a log line, a metric."""
        told = (uid or f"{kind}/{key[0]}/{key[1]}", version, message)
        if told in self._told:
            return
        self._told.add(told)
        if len(self._told) > 100_000:  # bounded: forget (and maybe repeat) rather than grow
            self._told.clear()
        log.warning("%s %s/%s: %s", kind, key[0], key[1], message)
        self.metrics.add(f"proxy_{'ingress' if kind == 'Ingress' else 'secret'}_errors_total")
        involved = {"apiVersion": "networking.k8s.io/v1" if kind == "Ingress" else "v1",
                    "kind": kind, "metadata": {"namespace": key[0], "name": key[1],
                                               "uid": uid}}
        self.events(involved, "Warning", reason, message)


def _foreign(claim: Claim, classes: Mapping[str, IngressClass], controller: str) -> bool:
    """Does the Ingress name a class of another controller (its status is theirs)?"""
    found = classes.get(claim.field) if claim.field is not None else None
    return found is not None and found.controller != controller


def _age(item: tuple[Key, _Ingress]) -> tuple[str, Key]:
    key, entry = item
    return (entry.ingress.creation if entry.ingress is not None else ""), key


def _calls(all_namespaces: Callable[..., Any], namespaced: Callable[..., Any]
           ) -> Callable[..., Any]:
    def call(namespace: str | None, **kwargs: Any) -> Any:
        if namespace is None:
            return all_namespaces(**kwargs)
        return namespaced(namespace, **kwargs)
    return call


class EventPoster:
    """core/v1 Events, posted by one thread of their own (never on the event loop), best
    effort and bounded: at most `QUEUE` waiting (more are dropped and counted), at most
    `BURST` per object per `WINDOW` seconds (client-go's spam filter does the same); an
    event that cannot be posted is logged at debug level and dropped."""

    QUEUE = 1000
    BURST = 10
    WINDOW = 300.0

    def __init__(self, api: client.ApiClient, component: str = "certop-proxy") -> None:
        self.core = client.CoreV1Api(api)
        self.component = component
        self.dropped = 0
        self._queue: queue.Queue[tuple[Mapping[str, Any], str, str, str]] = \
            queue.Queue(self.QUEUE)
        self._sent: dict[str, list[float]] = {}
        self._thread: threading.Thread | None = None

    def __call__(self, involved: Mapping[str, Any], kind: str, reason: str,
                 message: str) -> None:
        meta = involved["metadata"]
        who = str(meta.get("uid") or f"{meta['namespace']}/{meta['name']}")
        now = time.monotonic()
        recent = [t for t in self._sent.get(who, []) if now - t < self.WINDOW]
        if len(recent) >= self.BURST:
            self.dropped += 1
            return
        self._sent[who] = [*recent, now]
        if len(self._sent) > 10_000:
            self._sent.clear()
        try:
            self._queue.put_nowait((involved, kind, reason, message))
        except queue.Full:
            self.dropped += 1
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, daemon=True, name="events")
            self._thread.start()

    def _work(self) -> None:
        while True:
            self._post(*self._queue.get())

    def _post(self, involved: Mapping[str, Any], kind: str, reason: str,
              message: str) -> None:
        meta = involved["metadata"]
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": involved["apiVersion"], "kind": involved["kind"],
                               "name": meta["name"], "namespace": meta["namespace"],
                               "uid": meta.get("uid") or None},
            "type": kind, "reason": reason, "message": message[:1024],
            "source": {"component": self.component},
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
            "reportingComponent": self.component,
        }
        try:
            self.core.create_namespaced_event(meta["namespace"], body)  # type: ignore[arg-type]
        except Exception as exc:  # best effort: the log line was written already
            log.debug("event %s on %s %s/%s not posted: %s", reason, involved["kind"],
                      meta["namespace"], meta["name"], exc)
