"""kopf runs against the emulator subclass: create handlers run exactly once for objects made
before and after the operator starts, status is written, finalizers and deletion work."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import kopf
import pytest
from kube import EmulatorThread, OperatorThread, wait_for


@pytest.fixture
def kube() -> Iterator[EmulatorThread]:
    with EmulatorThread() as emulator:
        yield emulator


def certificate(name: str) -> dict[str, Any]:
    return {"apiVersion": "certop.dev/v1", "kind": "Certificate", "metadata": {"name": name},
            "spec": {"secretName": name, "dnsNames": [f"{name}.test"],
                     "issuerRef": {"name": "x"}}}


def test_kopf_handles_each_object_once_and_sees_deletions(kube: EmulatorThread) -> None:
    api = kube.custom()
    registry = kopf.OperatorRegistry()
    created: list[str] = []
    deleted: list[str] = []

    @kopf.on.create("certop.dev", "v1", "certificates", registry=registry)
    def on_create(name: str, patch: kopf.Patch, **_: Any) -> None:
        created.append(name)
        patch.status["observed"] = True

    @kopf.on.delete("certop.dev", "v1", "certificates", registry=registry)
    def on_delete(name: str, **_: Any) -> None:
        deleted.append(name)

    def make(name: str) -> None:
        api.create_namespaced_custom_object("certop.dev", "v1", "ns", "certificates",
                                            certificate(name))

    def get(name: str) -> dict[str, Any]:
        found: dict[str, Any] = api.get_namespaced_custom_object(
            "certop.dev", "v1", "ns", "certificates", name)
        return found

    for i in range(5):
        make(f"before-{i}")
    with OperatorThread(registry, kube.url):
        for i in range(5):
            make(f"after-{i}")
        names = [f"before-{i}" for i in range(5)] + [f"after-{i}" for i in range(5)]
        wait_for(lambda: all(get(n).get("status", {}).get("observed") for n in names),
                 what="every Certificate handled")
        assert sorted(created) == sorted(names)  # each exactly once
        assert get("after-0")["metadata"]["finalizers"]
        api.delete_namespaced_custom_object("certop.dev", "v1", "ns", "certificates",
                                            "after-0")
        wait_for(lambda: "after-0" in deleted, what="the deletion handler")
        wait_for(lambda: not [i for i in api.list_namespaced_custom_object(
            "certop.dev", "v1", "ns", "certificates")["items"]
            if i["metadata"]["name"] == "after-0"], what="the object to go")
    assert sorted(created) == sorted(names)
