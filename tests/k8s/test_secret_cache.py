"""The operator's watch-fed cache of its own Secrets, against the emulator (which honours label
selectors, resourceVersions and watches), and the list-then-watch loop's recovery."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from kube import EmulatorThread, wait_for
from kubernetes import client

from certop.store.listwatch import ListWatch
from certop.store.secret_cache import SecretCache, secret_watch

NS = "cached"


@pytest.fixture
def kube() -> Iterator[EmulatorThread]:
    with EmulatorThread() as emulator:
        yield emulator


def tls(name: str, crt: bytes, managed: bool = True) -> client.V1Secret:
    return client.V1Secret(
        type="kubernetes.io/tls",
        metadata=client.V1ObjectMeta(name=name, labels={"certop.dev/managed": "true"}
                                     if managed else {"app": "theirs"}),
        data={"tls.crt": base64.b64encode(crt).decode(),
              "tls.key": base64.b64encode(b"key").decode()})


def test_only_certops_secrets_are_cached_and_followed(kube: EmulatorThread) -> None:
    admin = kube.core()
    admin.create_namespaced_secret(NS, tls("mine", b"one"))
    admin.create_namespaced_secret(NS, tls("theirs", b"x", managed=False))
    changed: list[tuple[str, str]] = []
    cache = SecretCache(on_change=lambda ns, name: changed.append((ns, name)))
    watch = secret_watch(client.CoreV1Api(kube.operator_client()), cache, (NS,))
    watch.start()
    try:
        assert cache.synced.wait(10)
        found = cache.get(NS, "mine")
        assert found is not None and found.tls_crt == b"one" and found.tls_key == b"key"
        assert cache.get(NS, "theirs") is None  # not certop's: never in the watch
        # Edited by someone else: followed, and the change is told.
        admin.patch_namespaced_secret("mine", NS, {"data": {
            "tls.crt": base64.b64encode(b"two").decode()}})
        wait_for(lambda: getattr(cache.get(NS, "mine"), "tls_crt", None) == b"two",
                 what="the edit in the cache")
        assert (NS, "mine") in changed
        # certop's own write goes in at once (its echo: `test_the_echo_of_a_write...`).
        written = admin.patch_namespaced_secret("mine", NS, {"data": {
            "tls.crt": base64.b64encode(b"three").decode()}})
        cache.put(NS, "mine", admin.api_client.sanitize_for_serialization(written))
        assert getattr(cache.get(NS, "mine"), "tls_crt", None) == b"three"
        admin.create_namespaced_secret(NS, tls("marker", b"m"))
        wait_for(lambda: cache.get(NS, "marker") is not None, what="the marker")
        assert getattr(cache.get(NS, "mine"), "tls_crt", None) == b"three"
        # Deleted: gone from the cache, told.
        admin.delete_namespaced_secret("mine", NS)
        wait_for(lambda: cache.get(NS, "mine") is None, what="the deletion")
        assert (NS, "mine") in changed
        # A label removed: the Secret is no longer certop's (a real API server sends
        # DELETED to a label-selected watch; the loop makes one of a MODIFIED that left it).
        admin.patch_namespaced_secret("marker", NS, {"metadata": {"labels": {
            "certop.dev/managed": None}}})
        wait_for(lambda: cache.get(NS, "marker") is None, what="the unlabelled Secret gone")
    finally:
        started = time.monotonic()
        watch.stop()
        for thread in watch._threads:
            thread.join(5)
            assert not thread.is_alive()
    assert time.monotonic() - started < 5  # stop wakes a thread waiting for an event


def _raw(name: str, rv: str, crt: bytes) -> dict[str, Any]:
    return {"type": "kubernetes.io/tls",
            "metadata": {"namespace": NS, "name": name, "resourceVersion": rv},
            "data": {"tls.crt": base64.b64encode(crt).decode(), "tls.key": ""}}


def test_the_echo_of_a_write_and_older_events_change_nothing_and_tell_nothing() -> None:
    changed: list[tuple[str, str]] = []
    cache = SecretCache(on_change=lambda ns, name: changed.append((ns, name)))
    cache.put(NS, "s", _raw("s", "7", b"mine"))  # certop's write, as the API answered it
    cache.apply("MODIFIED", _raw("s", "7", b"mine"))  # its echo
    cache.apply("MODIFIED", _raw("s", "5", b"older"))  # an event from before the write
    cache.apply("DELETED", _raw("s", "6", b"older"))
    assert changed == [] and getattr(cache.get(NS, "s"), "tls_crt", None) == b"mine"
    cache.apply("MODIFIED", _raw("s", "9", b"theirs"))  # someone else's edit, later
    assert changed == [(NS, "s")] and getattr(cache.get(NS, "s"), "tls_crt", None) == b"theirs"
    cache.apply("DELETED", _raw("s", "10", b"theirs"))
    assert cache.get(NS, "s") is None and changed == [(NS, "s"), (NS, "s")]


class _Response:
    """What the `kubernetes` client returns with `_preload_content=False`."""

    def __init__(self, doc: Mapping[str, Any] | None = None,
                 events: list[Mapping[str, Any]] | None = None) -> None:
        self.data = json.dumps(doc or {}).encode()
        self.lines = b"".join(json.dumps(e).encode() + b"\n" for e in events or [])

    def stream(self, amt: Any = None, decode_content: bool = False) -> Iterator[bytes]:
        yield self.lines

    def release_conn(self) -> None:
        pass


class _Sink:
    def __init__(self) -> None:
        self.items: dict[str, Mapping[str, Any]] = {}
        self.lists = 0

    def replace(self, namespace: str | None, items: Any, rv: str = "") -> None:
        self.lists += 1
        self.items = {i["metadata"]["name"]: i for i in items}

    def apply(self, kind: str, raw: Mapping[str, Any]) -> None:
        if kind == "DELETED":
            self.items.pop(raw["metadata"]["name"], None)
        else:
            self.items[raw["metadata"]["name"]] = raw


def _obj(name: str, rv: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "resourceVersion": rv}}


def test_a_410_gone_lists_again_and_replaces_what_was_held() -> None:
    """A watch that answers 410 Gone (its resourceVersion is too old) is not resumed: the
    namespace is listed again, and what the new listing lacks is gone."""
    calls: list[dict[str, Any]] = []
    done = threading.Event()
    sink = _Sink()

    def call(namespace: str | None, **kwargs: Any) -> _Response:
        calls.append(kwargs)
        lists = [c for c in calls if not c.get("watch")]
        if not kwargs.get("watch"):
            items = [_obj("a", "1"), _obj("b", "2")] if len(lists) == 1 else [_obj("b", "5")]
            return _Response({"metadata": {"resourceVersion": "5" if len(lists) > 1 else "2"},
                              "items": items})
        if len(lists) == 1:
            return _Response(events=[{"type": "MODIFIED", "object": _obj("a", "3")},
                                     {"type": "ERROR", "object": {"code": 410}}])
        done.set()
        return _Response(events=[])

    watch = ListWatch(call, sink, what="things")
    watch.start()
    assert done.wait(10)
    watch.stop()
    assert sink.lists == 2 and set(sink.items) == {"b"}
    watches = [c for c in calls if c.get("watch")]
    assert watches[0]["resource_version"] == "2"  # from the first listing
    assert watches[1]["resource_version"] == "5"  # from the second, not from the 410
    assert watch.synced.is_set()


def test_a_relist_keeps_what_certop_wrote_after_it_and_tells_only_real_changes() -> None:
    changed: list[tuple[str, str]] = []
    cache = SecretCache(on_change=lambda ns, name: changed.append((ns, name)))
    cache.replace(None, [_raw("old", "3", b"a"), _raw("edited", "4", b"b"),
                         _raw("gone", "5", b"c")], "5")
    cache.put(NS, "written", _raw("written", "12", b"new"))  # certop, after the listing
    cache.put(NS, "old", _raw("old", "13", b"newer"))  # certop rewrote it, after too
    changed.clear()
    cache.replace(None, [_raw("old", "3", b"a"), _raw("edited", "9", b"B")], "11")
    assert getattr(cache.get(NS, "written"), "tls_crt", None) == b"new"
    assert getattr(cache.get(NS, "old"), "tls_crt", None) == b"newer"
    assert getattr(cache.get(NS, "edited"), "tls_crt", None) == b"B"
    assert cache.get(NS, "gone") is None
    assert sorted(changed) == [(NS, "edited"), (NS, "gone")]
