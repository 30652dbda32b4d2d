"""certop's own Secrets as one label-selected watch keeps them (cluster mode).

`secret_watch` (a `ListWatch`, the list-then-watch loop the operator's own caches share)
lists and watches only the Secrets labelled `certop.dev/managed=true` (TLS
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
import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kubernetes import client

from certop.store.listwatch import ListWatch

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
            if kind == "DELETED":
                if before is None or _older(rv, before.rv):
                    return
                del self._items[key]
            elif before is not None and (before.rv == rv or _older(rv, before.rv)):
                return  # the echo of certop's own write, or an event from before it
            else:
                self._items[key] = cached_of(raw)
        self._changed(key)

    def replace(self, namespace: str | None, items: Iterable[Mapping[str, Any]],
                rv: str = "") -> None:
        """A fresh listing of `namespace` (None: all), taken at resourceVersion `rv`: what
        it does not hold is gone, except what certop wrote after it (a newer write-through
        entry is kept, as `apply` keeps it against an older event)."""
        fresh = {}
        for raw in items:
            meta = raw.get("metadata") or {}
            fresh[(str(meta.get("namespace") or ""), str(meta.get("name") or ""))] = \
                cached_of(raw)
        changed = []
        with self._lock:
            old = {k: v for k, v in self._items.items()
                   if namespace is None or k[0] == namespace}
            for key, before in old.items():
                listed = fresh.get(key)
                if listed is None and rv and _older(rv, before.rv):
                    continue  # written after the listing was taken
                if listed is not None and _older(listed.rv, before.rv):
                    fresh[key] = before
                    continue
                if listed is None:
                    del self._items[key]
                if listed != before:
                    changed.append(key)
            self._items.update(fresh)
        for key in changed:
            self._changed(key)

    def _changed(self, key: Key) -> None:
        if self.on_change is not None:
            try:
                self.on_change(*key)
            except Exception:  # a listener's bug must not end the watch
                log.exception("Secret %s/%s: change listener failed", *key)


def secret_watch(api: client.CoreV1Api, cache: SecretCache, namespaces: Sequence[str] = (),
                 on_synced: Callable[[], None] | None = None) -> ListWatch:
    """certop's own Secrets (`MANAGED_SELECTOR`) into `cache`, which is synced with it."""

    def call(namespace: str | None, **kwargs: Any) -> Any:
        if namespace is None:
            return api.list_secret_for_all_namespaces(**kwargs)
        return api.list_namespaced_secret(namespace, **kwargs)

    def synced() -> None:
        cache.synced.set()
        if on_synced is not None:
            on_synced()

    return ListWatch(call, cache, namespaces, MANAGED_SELECTOR, "certop's Secrets",
                     on_synced=synced)


