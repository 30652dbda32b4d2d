"""The order journal in Secrets, as the operator's ServiceAccount uses it under the RBAC of
manifests/base/rbac.yaml: cleared without a `delete` grant, never touching a Secret certop does not
own, and one distinct journal per TLS Secret name however long."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from kube import EmulatorThread
from kubernetes import client

from certop.store.secrets import SecretNotOwned, SecretOrderJournal, journal_name

NS = "shop"
DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


@pytest.fixture
def kube() -> Iterator[EmulatorThread]:
    with EmulatorThread() as emulator:
        yield emulator


def journal(kube: EmulatorThread) -> SecretOrderJournal:
    return SecretOrderJournal(client.CoreV1Api(kube.operator_client()))


def test_the_operator_clears_its_journal_without_deleting_a_secret(
        kube: EmulatorThread) -> None:
    orders = journal(kube)
    orders.save(NS, "web-tls", {"order_url": "https://ca/order/1", "key_pem": "k"})
    assert orders.load(NS, "web-tls") == {"order_url": "https://ca/order/1", "key_pem": "k"}
    orders.clear(NS, "web-tls")  # a real API server refuses a delete: RBAC grants none
    assert orders.load(NS, "web-tls") is None
    orders.clear(NS, "web-tls")
    orders.save(NS, "web-tls", {"order_url": "https://ca/order/2"})
    assert orders.load(NS, "web-tls") == {"order_url": "https://ca/order/2"}
    assert not kube.emulator.denied


def test_a_secret_with_the_journals_name_that_certop_does_not_own_is_left_alone(
        kube: EmulatorThread) -> None:
    theirs = {"order": "eyJvcmRlcl91cmwiOiAiaHR0cHM6Ly9ldmlsL29yZGVyIn0="}
    kube.core().create_namespaced_secret(NS, {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "certop-order-web-tls"},
        "data": theirs})
    orders = journal(kube)
    for call in (lambda: orders.load(NS, "web-tls"),
                 lambda: orders.save(NS, "web-tls", {"order_url": "https://ca/order/1"}),
                 lambda: orders.clear(NS, "web-tls")):
        with pytest.raises(SecretNotOwned) as info:
            call()
        assert "certop-order-web-tls" in str(info.value)
    assert kube.core().read_namespaced_secret("certop-order-web-tls", NS).data == theirs


def test_long_secret_names_get_distinct_valid_journal_names(kube: EmulatorThread) -> None:
    common = "a" * 240
    names = [common + "-first", common + "-other", "b" * 253, "c" * 240]
    journals = [journal_name(n) for n in names]
    assert len(set(journals)) == len(names)
    for made in journals:
        assert len(made) <= 253 and DNS_SUBDOMAIN.fullmatch(made), made
    assert journals[3] == "certop-order-" + "c" * 240  # fits: the readable name
    orders = journal(kube)
    for i, name in enumerate(names):
        orders.save(NS, name, {"order_url": f"https://ca/order/{i}"})
    for i, name in enumerate(names):
        assert orders.load(NS, name) == {"order_url": f"https://ca/order/{i}"}


def _writes_and_reads(kube: EmulatorThread) -> dict[tuple[str, str], int]:
    return {key: n for key, n in kube.emulator.counts.items() if key[1] == "secrets"}


def test_writes_go_by_what_was_last_seen_and_a_stale_view_is_read_once(
        kube: EmulatorThread, tmp_path: Path) -> None:
    """No GET before each write: a Secret certop just read or wrote is written with that
    resourceVersion; when someone else changed it meanwhile, the write fails, the Secret is
    read once and the write decided again (here: now someone else's, so refused)."""
    from pki import make_pki

    from certop.store.ports import StoredCert
    from certop.store.secrets import SecretCertStore

    certs = SecretCertStore(client.CoreV1Api(kube.operator_client()))
    leaf = make_pki(tmp_path).leaf("a", ("a.test",))
    pair = StoredCert(leaf.fullchain.read_bytes(), leaf.key.read_bytes())
    assert certs.load(NS, "web-tls") is None  # the look
    kube.emulator.reset_counts()
    certs.save(NS, "web-tls", pair)
    certs.save(NS, "web-tls", pair)  # a renewal
    assert _writes_and_reads(kube) == {("create", "secrets"): 1, ("patch", "secrets"): 1}
    # Replaced behind certop's back by a Secret that is not certop's.
    core = kube.core()
    core.delete_namespaced_secret("web-tls", NS)
    core.create_namespaced_secret(NS, {"metadata": {"name": "web-tls"},
                                       "type": "kubernetes.io/tls",
                                       "data": {"tls.crt": "", "tls.key": ""}})
    kube.emulator.reset_counts()
    with pytest.raises(SecretNotOwned):
        certs.save(NS, "web-tls", pair)
    assert _writes_and_reads(kube) == {("patch", "secrets"): 1, ("get", "secrets"): 1}
    assert core.read_namespaced_secret("web-tls", NS).metadata.labels is None


def test_the_journal_is_written_once_per_change_and_not_read_first(
        kube: EmulatorThread) -> None:
    orders = journal(kube)
    assert orders.load(NS, "web-tls") is None  # the order's first stage reads it
    kube.emulator.reset_counts()
    orders.save(NS, "web-tls", {"key_pem": "k"})
    orders.save(NS, "web-tls", {"key_pem": "k", "order_url": "https://ca/order/1"})
    orders.clear(NS, "web-tls")
    orders.clear(NS, "web-tls")  # empty already: nothing to write
    assert _writes_and_reads(kube) == {("create", "secrets"): 1, ("patch", "secrets"): 2}
