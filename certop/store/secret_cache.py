"""certop's own Secrets as one label-selected watch keeps them (cluster mode).

`SecretWatch` lists and watches only the Secrets labelled `certop.dev/managed=true` (TLS
Secrets, order journals, account keys certop created), in the operator's namespaces, and
feeds `SecretCache`: per Secret its resourceVersion and, for a `kubernetes.io/tls` one, the
certificate and key bytes (no other field of the body is kept). A look at a certificate reads
the cache, not the API server; a Secret certop does not own is not in it (a read of one by
name, at the attempt, tells "someone else's" from "absent").

Trust:
- Nothing is read from the cache before the first listing of every namespace is complete
  (`synced`); until then the stores ask the API server.
- certop's own writes go into the cache at once (write-through), so a look right after a write
  sees it; the watch's echo of the same write changes nothing.
- A missed event is recovered by the watch: a broken watch resumes from the last
  resourceVersion seen; a `410 Gone` (or any other failure) lists again and replaces the
  namespace's entries. A write based on a stale entry fails (409/404) and the store reads
  that Secret once (`certop.store.secrets`).
Blocking (the `kubernetes` client): the watch runs in threads of its own.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import socket
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

log = logging.getLogger(__name__)
MANAGED_SELECTOR = "certop.dev/managed=true"
TLS_TYPE = "kubernetes.io/tls"
Key = tuple[str, str]


@dataclass(frozen=True, slots=True)
class CachedSecret:
    rv: str
    type: str
    tls_crt: bytes | None = None
    tls_key: bytes | None = None
    filled: bool = False
    """An order journal that holds an order."""


def _decode(data: Mapping[str, Any], key: str) -> bytes | None:
    value = data.get(key)
    if not isinstance(value, str):
        return None
    try:
        return base64.b64decode(value)
    except ValueError:
        return None


def cached_of(raw: Mapping[str, Any]) -> CachedSecret:
    """The compact record of a Secret (its raw JSON body)."""
    meta = raw.get("metadata") or {}
    kind = str(raw.get("type") or "")
    data = raw.get("data") or {}
    if kind == TLS_TYPE:
        return CachedSecret(str(meta.get("resourceVersion") or ""), kind,
                            _decode(data, "tls.crt"), _decode(data, "tls.key"))
    return CachedSecret(str(meta.get("resourceVersion") or ""), kind,
                        filled=bool(data.get("order")))


def _older(new: str, old: str) -> bool:
    """`new` is older than `old`: a safety net only (API servers' resourceVersions are
    etcd revisions, integers; anything else is never judged older)."""
    return new.isdigit() and old.isdigit() and int(new) < int(old)


class SecretCache:
    def __init__(self, on_change: Callable[[str, str], None] | None = None) -> None:
        self._items: dict[Key, CachedSecret] = {}
        self._lock = threading.Lock()
        self.synced = threading.Event()
        """Every namespace was listed once: the cache may be trusted."""
        self.on_change = on_change
        """Called (from the watch's thread) with (namespace, name) when a Secret changed
        other than by certop's own write-through."""

    def __len__(self) -> int:
        return len(self._items)

    def get(self, namespace: str, name: str) -> CachedSecret | None:
        return self._items.get((namespace, name))

    def put(self, namespace: str, name: str, raw: Mapping[str, Any]) -> None:
        """certop wrote this Secret (`raw`: what the API server answered)."""
        with self._lock:
            self._items[(namespace, name)] = cached_of(raw)

    def apply(self, kind: str, raw: Mapping[str, Any]) -> None:
        """A watch event (ADDED, MODIFIED, DELETED)."""
        meta = raw.get("metadata") or {}
        key = (str(meta.get("namespace") or ""), str(meta.get("name") or ""))
        rv = str(meta.get("resourceVersion") or "")
        with self._lock:
            before = self._items.get(key)
            if before is not None and (before.rv == rv or _older(rv, before.rv)):
                return  # the echo of certop's own write, or an event from before it
            if kind == "DELETED":
                if before is None:
                    return
                del self._items[key]
            else:
                self._items[key] = cached_of(raw)
        self._changed(key)

    def replace(self, namespace: str | None, items: Iterable[Mapping[str, Any]]) -> None:
        """A fresh listing of `namespace` (None: all): what it does not hold is gone."""
        fresh = {}
        for raw in items:
            meta = raw.get("metadata") or {}
            fresh[(str(meta.get("namespace") or ""), str(meta.get("name") or ""))] = \
                cached_of(raw)
        with self._lock:
            old = {k: v for k, v in self._items.items()
                   if namespace is None or k[0] == namespace}
            for key in old:
                if key not in fresh:
                    del self._items[key]
            self._items.update(fresh)
        for key in set(old) | set(fresh):
            if old.get(key) != fresh.get(key) and old.get(key) is not None:
                self._changed(key)

    def _changed(self, key: Key) -> None:
        if self.on_change is not None:
            try:
                self.on_change(*key)
            except Exception:  # a listener's bug must not end the watch
                log.exception("Secret %s/%s: change listener failed", *key)


class SecretWatch:
    """One thread per watched namespace (one for all when none is named): list (paged),
    then watch from the listing's resourceVersion; relist on 410 Gone or a failure."""

    def __init__(self, api: client.CoreV1Api, cache: SecretCache,
                 namespaces: Sequence[str] = (), selector: str = MANAGED_SELECTOR,
                 timeout: int = 300, page: int = 500, request_timeout: float = 10.0,
                 on_synced: Callable[[], None] | None = None) -> None:
        self.api = api
        self.cache = cache
        self.namespaces: tuple[str | None, ...] = tuple(namespaces) or (None,)
        self.selector = selector
        self.timeout = timeout
        """Seconds a watch request lasts (asked of the server) before it is renewed."""
        self.page = page
        self.request_timeout = request_timeout
        self.on_synced = on_synced
        self._stop = threading.Event()
        self._listed: set[str | None] = set()
        self._lock = threading.Lock()
        self._responses: dict[str | None, Any] = {}
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for namespace in self.namespaces:
            thread = threading.Thread(target=self._run, args=(namespace,), daemon=True,
                                      name=f"secret-watch {namespace or '*'}")
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            responses = list(self._responses.values())
        for response in responses:  # unblocks a thread waiting for the next event
            _shut(response)

    # -- one namespace ---------------------------------------------------------------------

    def _run(self, namespace: str | None) -> None:
        delay = 0.5
        where = namespace or "all namespaces"
        while not self._stop.is_set():
            try:
                rv: str | None = self._list(namespace)
                delay = 0.5
                while not self._stop.is_set() and rv is not None:
                    rv = self._watch(namespace, rv)
            except Exception as exc:
                if self._stop.is_set():
                    return
                log.warning("watching certop's Secrets in %s: %s; listing again in %.1fs",
                            where, _why(exc), delay)
                self._stop.wait(delay)
                delay = min(delay * 2, 30.0)

    def _list(self, namespace: str | None) -> str:
        items: list[Mapping[str, Any]] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"label_selector": self.selector, "limit": self.page,
                                      "_preload_content": False,
                                      "_request_timeout": self.request_timeout}
            if token:
                kwargs["_continue"] = token
            response: Any = self.api.list_namespaced_secret(namespace, **kwargs) \
                if namespace is not None else \
                self.api.list_secret_for_all_namespaces(**kwargs)
            doc = json.loads(response.data)
            items.extend(_selected(doc.get("items") or [], self.selector))
            meta = doc.get("metadata") or {}
            token = meta.get("continue") or None
            if not token:
                break
        self.cache.replace(namespace, items)
        with self._lock:
            self._listed.add(namespace)
            done = len(self._listed) == len(self.namespaces)
        if done and not self.cache.synced.is_set():
            self.cache.synced.set()
            log.info("certop's Secrets listed: %d", len(self.cache))
            if self.on_synced is not None:
                self.on_synced()
        return str(meta.get("resourceVersion") or "")

    def _watch(self, namespace: str | None, rv: str) -> str | None:
        """Events from `rv` until the watch request ends; the last resourceVersion seen, or
        None to list again (410 Gone)."""
        kwargs: dict[str, Any] = {
            "label_selector": self.selector, "watch": True, "resource_version": rv,
            "allow_watch_bookmarks": True, "timeout_seconds": self.timeout,
            "_preload_content": False,
            "_request_timeout": (self.request_timeout, self.timeout + 60)}
        response: Any = self.api.list_namespaced_secret(namespace, **kwargs) \
            if namespace is not None else self.api.list_secret_for_all_namespaces(**kwargs)
        with self._lock:
            self._responses[namespace] = response
        try:
            for line in iter_resp_lines(response):  # type: ignore[no-untyped-call]
                if self._stop.is_set():
                    return None
                event = json.loads(line)
                kind, raw = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    if raw.get("code") == 410:
                        return None
                    raise ApiException(status=raw.get("code"), reason=raw.get("message"))
                rv = str((raw.get("metadata") or {}).get("resourceVersion") or rv)
                if kind in ("ADDED", "MODIFIED", "DELETED") and _selected([raw], self.selector):
                    self.cache.apply(kind, raw)
        finally:
            with self._lock:
                self._responses.pop(namespace, None)
            response.release_conn()
        return rv


def _shut(response: Any) -> None:
    """Shut the socket of a watch response down, so that the thread reading it wakes (closing
    the response instead waits for that read: it holds the reader's lock)."""
    for path in (("_connection", "sock"), ("_fp", "fp", "raw", "_sock")):
        target = response
        for name in path:
            target = getattr(target, name, None)
        if isinstance(target, socket.socket):
            with contextlib.suppress(OSError):
                target.shutdown(socket.SHUT_RDWR)
            return


def _selected(items: Iterable[Mapping[str, Any]], selector: str) -> list[Mapping[str, Any]]:
    """The items the (equality) selector selects: an API server that ignores it sends more."""
    wanted = dict(part.split("=", 1) for part in selector.split(",") if "=" in part)
    return [raw for raw in items
            if all(((raw.get("metadata") or {}).get("labels") or {}).get(k) == v
                   for k, v in wanted.items())]


def _why(exc: BaseException) -> str:
    if isinstance(exc, ApiException):
        return f"HTTP {exc.status}"
    return str(exc) or type(exc).__name__
