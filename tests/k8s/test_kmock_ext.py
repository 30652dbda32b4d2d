"""The emulator subclass behaves like an API server where kopf and certop rely on it."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from kube import EmulatorThread
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException


@pytest.fixture(scope="module")
def kube() -> Iterator[EmulatorThread]:
    with EmulatorThread() as emulator:
        yield emulator


def secret(name: str = "", generate: str = "") -> client.V1Secret:
    return client.V1Secret(metadata=client.V1ObjectMeta(name=name or None,
                                                        generate_name=generate or None),
                           data={"k": "dg=="})


def test_create_stamps_identity_and_fills_namespace_and_generate_name(
        kube: EmulatorThread) -> None:
    api = kube.core()
    made = api.create_namespaced_secret("ns-a", secret("one"))
    assert made.metadata.namespace == "ns-a"
    assert made.metadata.uid and made.metadata.creation_timestamp
    assert int(made.metadata.resource_version) > 0
    generated = api.create_namespaced_secret("ns-a", secret(generate="tmp-"))
    assert generated.metadata.name.startswith("tmp-") and len(generated.metadata.name) == 9
    with pytest.raises(ApiException) as info:
        api.create_namespaced_secret("ns-a", secret("one"))
    assert info.value.status == 409


def test_patches_bump_the_version_and_stale_versions_conflict(kube: EmulatorThread) -> None:
    api = kube.core()
    made = api.create_namespaced_secret("ns-b", secret("two"))
    rv = made.metadata.resource_version
    patched = api.patch_namespaced_secret("two", "ns-b", {"metadata": {"resourceVersion": rv},
                                                          "data": {"k": "dw=="}})
    assert int(patched.metadata.resource_version) > int(rv)
    with pytest.raises(ApiException) as info:
        api.patch_namespaced_secret("two", "ns-b", {"metadata": {"resourceVersion": rv},
                                                    "data": {"k": "eA=="}})
    assert info.value.status == 409
    assert api.read_namespaced_secret("two", "ns-b").data == {"k": "dw=="}


def test_a_failed_json_patch_test_is_422(kube: EmulatorThread) -> None:
    api = kube.core()
    made = api.create_namespaced_secret("ns-c", secret("three"))
    ops = [{"op": "test", "path": "/metadata/resourceVersion", "value": "stale"},
           {"op": "replace", "path": "/data/k", "value": "eQ=="}]
    with pytest.raises(ApiException) as info:
        api.patch_namespaced_secret("three", "ns-c", ops)
    assert info.value.status == 422
    ok = [{"op": "test", "path": "/metadata/resourceVersion",
           "value": made.metadata.resource_version},
          {"op": "replace", "path": "/data/k", "value": "eQ=="}]
    patched = api.patch_namespaced_secret("three", "ns-c", ok)
    assert patched.data == {"k": "eQ=="}
    assert int(patched.metadata.resource_version) > int(made.metadata.resource_version)


def test_a_watch_from_a_listed_version_sees_only_what_came_after(kube: EmulatorThread) -> None:
    api = kube.core()
    api.create_namespaced_secret("ns-d", secret("before"))
    listed = api.list_namespaced_secret("ns-d")
    assert [s.metadata.name for s in listed.items] == ["before"]
    seen: list[tuple[str, str]] = []
    started = threading.Event()

    def follow() -> None:
        w = watch.Watch()
        started.set()
        for event in w.stream(api.list_namespaced_secret, "ns-d",
                              resource_version=listed.metadata.resource_version,
                              _request_timeout=10):
            seen.append((event["type"], event["object"].metadata.name))
            if event["object"].metadata.name == "after":
                w.stop()

    thread = threading.Thread(target=follow)
    thread.start()
    started.wait(5)
    # The watch may or may not be connected yet: either way "after" must arrive exactly once.
    api.create_namespaced_secret("ns-d", secret("after"))
    thread.join(15)
    assert seen == [("ADDED", "after")]


def test_the_request_history_stays_bounded(kube: EmulatorThread) -> None:
    api = kube.core()
    for _ in range(50):
        api.list_namespaced_secret("ns-e")
    assert len(kube.emulator._requests) <= 2


def test_core_discovery_names_its_group_version_like_an_api_server(
        kube: EmulatorThread) -> None:
    import json
    import urllib.request

    with urllib.request.urlopen(kube.url + "/api/v1", timeout=5) as resp:
        assert json.loads(resp.read())["groupVersion"] == "v1"


def test_namespaces_are_objects_of_their_own_and_namespaced_paths_still_work(
        kube: EmulatorThread) -> None:
    api = kube.core()
    made = api.create_namespace({"apiVersion": "v1", "kind": "Namespace",
                                 "metadata": {"name": "team-a"}})
    assert made.metadata.name == "team-a" and made.metadata.uid
    assert made.metadata.namespace is None
    assert api.read_namespace("team-a").metadata.uid == made.metadata.uid
    assert "team-a" in [n.metadata.name for n in api.list_namespace().items]
    with pytest.raises(ApiException) as info:
        api.read_namespace("team-b")
    assert info.value.status == 404
    # A Secret in the namespace is still under /api/v1/namespaces/team-a/secrets.
    api.create_namespaced_secret("team-a", secret("inside"))
    assert api.read_namespaced_secret("inside", "team-a").metadata.namespace == "team-a"
    api.delete_namespace("team-a")
    with pytest.raises(ApiException) as info:
        api.read_namespace("team-a")
    assert info.value.status == 404
