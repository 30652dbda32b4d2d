"""A watch-fed cache of the Certificates certop's shim manages, so that no Ingress event LISTs.

Filled once at start (one LIST of Certificates in every watched namespace, in a startup
handler, which kopf runs before any watch starts) and kept current from the Certificate watch
kopf runs anyway (an event handler: it writes nothing to the object), and from the answers to
certop's own writes (write-through). It holds a compact record per Certificate (name,
namespace, uid, resourceVersion, labels, annotations, ownerReferences, spec; no status, no
managed fields) and an index from an owning Ingress's uid to the Certificates it owns, so the
shim's plan for one Ingress costs what that Ingress asks for and owns, not the namespace.

Trust: a decision taken on the cache may be stale (an event still on its way). The API server
says so (409 on a create of something that exists, 404 on a patch of something gone); the shim
then reads that one object, puts it here and plans once more (`refresh`). A missed delete or
create shows the same way. The record of an object is replaced whole by a newer
resourceVersion and never by an older one.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from typing import Any

log = logging.getLogger(__name__)
Key = tuple[str, str]
_KEPT_META = ("name", "namespace", "uid", "resourceVersion", "labels", "annotations",
              "ownerReferences", "deletionTimestamp")


def _compact(body: Mapping[str, Any]) -> dict[str, Any]:
    meta = body.get("metadata") or {}
    kept = {k: meta[k] for k in _KEPT_META if meta.get(k) is not None}
    return {"metadata": kept, "spec": dict(body.get("spec") or {})}


def _rv(record: Mapping[str, Any]) -> int | None:
    try:
        return int(str((record.get("metadata") or {}).get("resourceVersion")))
    except (TypeError, ValueError):
        return None  # an opaque version (not a number): the newest seen wins


class CertificateCache:
    def __init__(self) -> None:
        self._records: dict[Key, dict[str, Any]] = {}
        self._owned: dict[str, set[Key]] = {}
        self._filled: set[str] = set()
        self._lock = threading.RLock()
        """The shim runs in threads, the watch handler on the event loop."""

    def __len__(self) -> int:
        return len(self._records)

    def filled(self, namespace: str) -> bool:
        """The namespace's LIST is in (before that, an absence means nothing)."""
        return namespace in self._filled

    def fill(self, namespace: str, items: Iterable[Mapping[str, Any]]) -> None:
        """One LIST of the namespace, once: what the watch said meanwhile is not undone
        (older versions are ignored; a Certificate deleted after the LIST was taken comes
        back here as stale, and the 404 of the next write on it removes it)."""
        with self._lock:
            for item in items:
                self.put(item)
            self._filled.add(namespace)

    def put(self, body: Mapping[str, Any]) -> None:
        """An object as the API server returned or announced it (unless an older version)."""
        with self._lock:
            self._put(body)

    def _put(self, body: Mapping[str, Any]) -> None:
        record = _compact(body)
        meta = record["metadata"]
        key = (str(meta.get("namespace", "")), str(meta.get("name", "")))
        old = self._records.get(key)
        if old is not None:
            new_rv, old_rv = _rv(record), _rv(old)
            if new_rv is not None and old_rv is not None and new_rv < old_rv:
                return
            self._unindex(key, old)
        self._records[key] = record
        for uid in _owner_uids(record):
            self._owned.setdefault(uid, set()).add(key)

    def remove(self, namespace: str, name: str) -> None:
        with self._lock:
            old = self._records.pop((namespace, name), None)
            if old is not None:
                self._unindex((namespace, name), old)

    def observe(self, kind: str | None, body: Mapping[str, Any]) -> None:
        """A watch event (kopf's `type`: None for the initial listing, ADDED, MODIFIED,
        DELETED)."""
        meta = body.get("metadata") or {}
        if kind == "DELETED":
            self.remove(str(meta.get("namespace", "")), str(meta.get("name", "")))
        else:
            self.put(body)

    def get(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        return self._records.get((namespace, name))

    def for_owner(self, namespace: str, owner_uid: str, names: Iterable[str]
                  ) -> dict[str, Mapping[str, Any]]:
        """The Certificates named `names` and those `owner_uid` owns in `namespace`: all the
        shim's plan for that Ingress looks at."""
        found: dict[str, Mapping[str, Any]] = {}
        with self._lock:
            for name in names:
                record = self._records.get((namespace, name))
                if record is not None:
                    found[name] = record
            for key in self._owned.get(owner_uid, ()):
                if key[0] == namespace:
                    found[key[1]] = self._records[key]
        return found

    def owns_any(self, owner_uid: str) -> bool:
        return bool(self._owned.get(owner_uid))

    def _unindex(self, key: Key, record: Mapping[str, Any]) -> None:
        for uid in _owner_uids(record):
            keys = self._owned.get(uid)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._owned[uid]


def _owner_uids(record: Mapping[str, Any]) -> list[str]:
    refs = (record.get("metadata") or {}).get("ownerReferences") or []
    return [str(r["uid"]) for r in refs if r.get("kind") == "Ingress" and r.get("uid")]
