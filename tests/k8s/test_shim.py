"""The Ingress shim under kopf against the emulator: annotated Ingresses get Certificates,
kept in step with their tls entries; shared Secrets share one Certificate; conflicts are
events, never a tug of war."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import kopf
import pytest
from kube import EmulatorThread, OperatorThread, wait_for
from kubernetes import client

from certop.core.certificates import certificate_spec
from certop.core.desired import certificate_specs
from certop.core.ingress import parse_ingress
from certop.k8s.shim import Shim

NS = "shop"


@pytest.fixture
def cluster() -> Iterator[EmulatorThread]:
    with EmulatorThread() as kube:
        registry = kopf.OperatorRegistry()
        Shim(kube.operator_client()).register(registry)
        with OperatorThread(registry, kube.url, posting=True):
            yield kube


def ingress(name: str, hosts: list[str], secret: str,
            annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": name, "annotations": annotations if annotations is not None
                     else {"cert-manager.io/cluster-issuer": "letsencrypt"}},
        "spec": {"tls": [{"hosts": hosts, "secretName": secret}] if hosts else [],
                 "rules": [{"host": h, "http": {"paths": [{
                     "path": "/", "pathType": "Prefix",
                     "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}
                     for h in hosts or ["x.test"]]},
    }


def net(kube: EmulatorThread) -> client.NetworkingV1Api:
    return client.NetworkingV1Api(kube.api_client())


def certificates(kube: EmulatorThread) -> dict[str, dict[str, Any]]:
    items = kube.custom().list_namespaced_custom_object("certop.dev", "v1", NS,
                                                        "certificates")["items"]
    return {i["metadata"]["name"]: i for i in items}


def warnings_about(kube: EmulatorThread, reason: str) -> list[str]:
    events = kube.core().list_namespaced_event(NS).items
    return [f"{e.involved_object.name}: {e.message}" for e in events if e.reason == reason]


def test_an_annotated_ingress_gets_a_certificate_kept_in_step(cluster: EmulatorThread) -> None:
    api = net(cluster)
    made = api.create_namespaced_ingress(NS, ingress("web", ["a.test"], "web-tls"))
    wait_for(lambda: "web-tls" in certificates(cluster), what="the Certificate")
    cert = certificates(cluster)["web-tls"]
    assert cert["spec"]["dnsNames"] == ["a.test"]
    assert cert["spec"]["issuerRef"]["name"] == "letsencrypt"
    assert cert["metadata"]["ownerReferences"][0]["uid"] == made.metadata.uid
    # Hosts change: the Certificate follows.
    api.patch_namespaced_ingress("web", NS, {"spec": ingress("web", ["a.test", "b.test"],
                                                             "web-tls")["spec"]})
    wait_for(lambda: certificates(cluster)["web-tls"]["spec"]["dnsNames"] ==
             ["a.test", "b.test"], what="the new hosts")
    # The tls entry goes: so does the Certificate.
    api.patch_namespaced_ingress("web", NS, {"spec": {"tls": []}})
    wait_for(lambda: "web-tls" not in certificates(cluster), what="the deletion")


HANDLED = "kopf.zalando.org/last-handled-configuration"


def test_ingresses_without_a_trigger_annotation_are_left_alone(
        cluster: EmulatorThread) -> None:
    api = net(cluster)
    others = [api.create_namespaced_ingress(NS, ingress(name, ["p.test"], f"{name}-tls", asks))
              for name, asks in (("plain", {}), ("other", {"team": "web"}),
                                 # kubernetes.io/tls-acme asks only with --default-issuer
                                 ("acme-no-default", {"kubernetes.io/tls-acme": "true"}))]
    marker = api.create_namespaced_ingress(NS, ingress("marker", ["m.test"], "marker-tls"))
    wait_for(lambda: "marker-tls" in certificates(cluster), what="the annotated one")
    # The Ingress that asked is not written to either: kopf keeps no record on it.
    now = api.read_namespaced_ingress("marker", NS).metadata
    assert HANDLED not in (now.annotations or {}) and not now.finalizers
    assert now.resource_version == marker.metadata.resource_version
    for made in others:
        now = api.read_namespaced_ingress(made.metadata.name, NS).metadata
        # Untouched: no kopf annotation, no finalizer, not one write.
        assert now.annotations == made.metadata.annotations
        assert not now.finalizers
        assert now.resource_version == made.metadata.resource_version
    assert set(certificates(cluster)) == {"marker-tls"}
    events = cluster.core().list_namespaced_event(NS).items
    assert not [e for e in events if e.involved_object.kind == "Ingress"
                and e.involved_object.name != "marker"]


def test_an_ingress_that_stops_asking_loses_its_certificate(cluster: EmulatorThread) -> None:
    api = net(cluster)
    api.create_namespaced_ingress(NS, ingress("was", ["w.test"], "was-tls"))
    wait_for(lambda: "was-tls" in certificates(cluster), what="the Certificate")
    api.patch_namespaced_ingress("was", NS, {"metadata": {"annotations": {
        "cert-manager.io/cluster-issuer": None}}})
    wait_for(lambda: "was-tls" not in certificates(cluster), what="the Certificate to go")


def test_two_ingresses_share_one_certificate_and_a_conflict_is_an_event_on_both(
        cluster: EmulatorThread) -> None:
    api = net(cluster)
    api.create_namespaced_ingress(NS, ingress("one", ["s.test"], "shared-tls"))
    wait_for(lambda: "shared-tls" in certificates(cluster), what="the Certificate")
    api.create_namespaced_ingress(NS, ingress("two", ["s.test"], "shared-tls"))
    wait_for(lambda: len(certificates(cluster)["shared-tls"]["metadata"]
                         ["ownerReferences"]) == 2, what="the second owner")
    assert len(certificates(cluster)) == 1
    api.create_namespaced_ingress(NS, ingress("three", ["other.test"], "shared-tls"))
    wait_for(lambda: len(warnings_about(cluster, "CertificateConflict")) >= 2,
             what="conflict events")
    told = warnings_about(cluster, "CertificateConflict")
    assert any(t.startswith("three: ") for t in told)
    assert any(t.startswith(("one: ", "two: ")) for t in told)
    assert certificates(cluster)["shared-tls"]["spec"]["dnsNames"] == ["s.test"]


def test_the_shim_lists_once_per_namespace_and_writes_nothing_to_ingresses(
        cluster: EmulatorThread) -> None:
    """The plan for an Ingress reads the watch-fed cache: one LIST of the namespace in all
    (not one per Ingress event, which made N Ingresses cost N LISTs of N objects), and no
    write to any user's Ingress (kopf's diff-base annotation is gone)."""
    api = net(cluster)
    names = [f"app{i}" for i in range(30)]
    for name in names:
        api.create_namespaced_ingress(NS, ingress(name, [f"{name}.test"], f"{name}-tls"))
    wait_for(lambda: len(certificates(cluster)) == len(names), what="30 Certificates")
    api.patch_namespaced_ingress("app0", NS, {"spec": {"tls": [
        {"hosts": ["app0.test", "more.test"], "secretName": "app0-tls"}]}})
    wait_for(lambda: sorted(certificates(cluster)["app0-tls"]["spec"]["dnsNames"])
             == ["app0.test", "more.test"], what="the update")
    counts = cluster.emulator.counts
    # kopf's own (its Certificate watch starts with one) and the shim's, for the namespace.
    assert counts[("list", "certificates")] == 2
    assert counts[("create", "certificates")] == len(names)
    assert counts[("patch", "certificates")] == 1  # the update, nothing else
    assert not [key for key in counts if key[1] == "ingresses" and key[0] not in
                ("list", "watch")]
    assert counts[("get", "certificates")] == 0


def test_a_cache_behind_the_api_server_is_reread_once(cluster: EmulatorThread) -> None:
    """A Certificate the cache has not seen yet (409 on create) or has not seen go (404 on
    delete): that one object is read again and the Ingress planned once more."""
    custom = cluster.custom()
    body = ingress("late", ["late.test"], "late-tls")
    body["metadata"].update({"namespace": NS, "uid": "uid-late"})
    # Someone else's identical Certificate exists, unknown to a shim whose cache is filled.
    custom.create_namespaced_custom_object("certop.dev", "v1", NS, "certificates", {
        "apiVersion": "certop.dev/v1", "kind": "Certificate",
        "metadata": {"name": "late-tls", "namespace": NS},
        "spec": certificate_spec(certificate_specs(
            [parse_ingress(body)], None, None, require_annotation=True).specs[0])})
    shim = Shim(cluster.operator_client())
    shim.cache.fill(NS, [])
    shim._handle("ADDED", body)
    owners = certificates(cluster)["late-tls"]["metadata"].get("ownerReferences") or []
    assert [o["uid"] for o in owners] == ["uid-late"]  # adopted, after one re-read
    # Gone behind the cache's back: the delete finds nothing, the re-read agrees, done.
    custom.delete_namespaced_custom_object("certop.dev", "v1", NS, "certificates", "late-tls")
    body["spec"]["tls"] = []
    shim._handle("MODIFIED", body)
    assert shim.cache.get(NS, "late-tls") is None
