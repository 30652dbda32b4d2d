"""The list-then-watch loop of the operator's own caches (certop's Secrets, issuers).

Per namespace (or all): list, paged, and hand the items to a `Sink` (which replaces what it
held for that namespace); then watch from the listing's resourceVersion and hand each event
on; a watch that ends is renewed from the last resourceVersion seen; `410 Gone`, an error or
a broken connection lists again (backing off, at most 30 s). `synced` is set once every
namespace was listed. The `kubernetes` client, in threads of its own; `stop()` wakes them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

log = logging.getLogger(__name__)


class Sink(Protocol):
    """Where a `ListWatch` puts what it sees (`SecretCache` for Secrets)."""

    def replace(self, namespace: str | None, items: Iterable[Mapping[str, Any]],
                rv: str = "") -> None:
        """A fresh listing of `namespace` (None: all), taken at resourceVersion `rv`."""
        ...

    def apply(self, kind: str, raw: Mapping[str, Any]) -> None: ...


ListCall = Callable[..., Any]
"""A `kubernetes` client list call for one namespace (its first argument) or all (None)."""


class ListWatch:
    """One thread per watched namespace (one for all when none is named): list (paged),
    then watch from the listing's resourceVersion; relist on 410 Gone or a failure. The
    items go to `sink`; `on_synced` is called once every namespace was listed once."""

    def __init__(self, call: ListCall, sink: Sink, namespaces: Sequence[str] = (),
                 selector: str = "", what: str = "objects", timeout: int = 300,
                 page: int = 500, request_timeout: float = 10.0,
                 on_synced: Callable[[], None] | None = None, fields: str = "") -> None:
        self.call = call
        self.sink = sink
        self.namespaces: tuple[str | None, ...] = tuple(namespaces) or (None,)
        self.selector = selector
        self.fields = fields
        """An equality field selector (`type=kubernetes.io/tls`), sent and checked."""
        self.what = what
        self.timeout = timeout
        """Seconds a watch request lasts (asked of the server) before it is renewed."""
        self.page = page
        self.request_timeout = request_timeout
        self.on_synced = on_synced
        self.synced = threading.Event()
        self._stop = threading.Event()
        self._listed: set[str | None] = set()
        self._lock = threading.Lock()
        self._responses: dict[str | None, Any] = {}
        self._threads: list[threading.Thread] = []
        self.failing_since: float | None = None
        """When the API server stopped answering (monotonic), None while it answers."""

    def start(self) -> None:
        for namespace in self.namespaces:
            thread = threading.Thread(target=self._run, args=(namespace,), daemon=True,
                                      name=f"watch {self.what} {namespace or '*'}")
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
                self.failing_since = None
                delay = 0.5
                while not self._stop.is_set() and rv is not None:
                    rv = self._watch(namespace, rv)
            except Exception as exc:
                if self._stop.is_set():
                    return
                if self.failing_since is None:
                    self.failing_since = time.monotonic()
                log.warning("watching %s in %s: %s; listing again in %.1fs", self.what,
                            where, _why(exc), delay)
                self._stop.wait(delay)
                delay = min(delay * 2, 30.0)

    def _selector(self) -> dict[str, Any]:
        found: dict[str, Any] = {"label_selector": self.selector} if self.selector else {}
        if self.fields:
            found["field_selector"] = self.fields
        return found

    def _selected(self, items: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
        return _by_fields(_selected(items, self.selector), self.fields)

    def _list(self, namespace: str | None) -> str:
        items: list[Mapping[str, Any]] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {**self._selector(), "limit": self.page,
                                      "_preload_content": False,
                                      "_request_timeout": self.request_timeout}
            if token:
                kwargs["_continue"] = token
            response = self.call(namespace, **kwargs)
            doc = json.loads(response.data)
            items.extend(self._selected(doc.get("items") or []))
            meta = doc.get("metadata") or {}
            token = meta.get("continue") or None
            if not token:
                break
        self.sink.replace(namespace, items, str(meta.get("resourceVersion") or ""))
        with self._lock:
            self._listed.add(namespace)
            done = len(self._listed) == len(self.namespaces)
        if done and not self.synced.is_set():
            self.synced.set()
            log.info("%s listed: %d", self.what, len(items))
            if self.on_synced is not None:
                self.on_synced()
        return str(meta.get("resourceVersion") or "")

    def _watch(self, namespace: str | None, rv: str) -> str | None:
        """Events from `rv` until the watch request ends; the last resourceVersion seen, or
        None to list again (410 Gone)."""
        kwargs: dict[str, Any] = {
            **self._selector(), "watch": True, "resource_version": rv,
            "allow_watch_bookmarks": True, "timeout_seconds": self.timeout,
            "_preload_content": False,
            "_request_timeout": (self.request_timeout, self.timeout + 60)}
        response = self.call(namespace, **kwargs)
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
                if kind in ("ADDED", "MODIFIED", "DELETED"):
                    # An object that left the selector is gone for this watch (an API
                    # server says DELETED; one that ignores selectors does not).
                    self.sink.apply(kind if self._selected([raw]) else "DELETED", raw)
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


def _by_fields(items: Iterable[Mapping[str, Any]], fields: str) -> list[Mapping[str, Any]]:
    """The items an equality field selector (`type=kubernetes.io/tls`,
    `metadata.name=x`) selects."""
    wanted = [part.split("=", 1) for part in fields.split(",") if "=" in part]

    def value(raw: Mapping[str, Any], path: str) -> Any:
        found: Any = raw
        for key in path.split("."):
            found = found.get(key) if isinstance(found, Mapping) else None
        return found

    return [raw for raw in items if all(str(value(raw, k)) == v for k, v in wanted)]


def _why(exc: BaseException) -> str:
    if isinstance(exc, ApiException):
        return f"HTTP {exc.status}"
    return str(exc) or type(exc).__name__
