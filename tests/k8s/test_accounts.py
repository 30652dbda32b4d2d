"""ACME accounts belong to their issuer: an Issuer in a tenant's namespace that names the
same server and email as a ClusterIssuer never lends it its key Secret, CA trust or
skipTLSVerify; the CA bundle files are removed when the operator stops."""

from __future__ import annotations

import base64
import datetime
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kopf
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from kube import EmulatorThread, OperatorThread, wait_for

from certop.core.models import CertificateSpec, Fqdn, SecretName
from certop.k8s.certificates import CertificateController, OperatorSettings
from solvers.http01 import TokenStore

SERVER = "https://acme.example.test/directory"
EMAIL = "ops@certop.test"


def ca_pem(name: str) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(1).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


def issuer_spec(key_secret: str, ca: bytes | None = None, skip: bool = False
                ) -> dict[str, Any]:
    acme: dict[str, Any] = {"server": SERVER, "email": EMAIL,
                            "privateKeySecretRef": {"name": key_secret},
                            "solvers": [{"http01": {"ingress": {}}}]}
    if ca is not None:
        acme["caBundle"] = base64.b64encode(ca).decode()
    if skip:
        acme["skipTLSVerify"] = True
    return {"acme": acme}


def cert(namespace: str, issuer: str, kind: str) -> CertificateSpec:
    return CertificateSpec(namespace=namespace, secret_name=SecretName("web-tls"),
                           hosts=(Fqdn("web.test"),), issuer=issuer, issuer_kind=kind)


@pytest.fixture
def kube() -> Iterator[EmulatorThread]:
    with EmulatorThread() as emulator:
        yield emulator


@pytest.fixture
def own_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """tempfile's directory, so that what the controller leaves there can be seen."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def account_of(controller: CertificateController, spec: CertificateSpec) -> Any:
    """What the daemon's order for `spec` uses (as `_issue` picks it)."""
    issuer = controller._issuer(spec)
    namespace = spec.namespace if spec.issuer_kind == "Issuer" else \
        controller.settings.resource_namespace
    return controller._account(issuer, namespace)


def test_a_tenant_issuer_with_the_same_server_and_email_does_not_change_the_cluster_account(
        kube: EmulatorThread, own_tmp: Path) -> None:
    bundle = ca_pem("cluster CA")
    custom = kube.custom()
    custom.create_cluster_custom_object("certop.dev", "v1", "clusterissuers", {
        "apiVersion": "certop.dev/v1", "kind": "ClusterIssuer", "metadata": {"name": "shared"},
        "spec": issuer_spec("cluster-account", ca=bundle)})
    custom.create_namespaced_custom_object("certop.dev", "v1", "tenant", "issuers", {
        "apiVersion": "certop.dev/v1", "kind": "Issuer", "metadata": {"name": "mine"},
        "spec": issuer_spec("tenant-key", skip=True)})
    controller = CertificateController(kube.operator_client(), TokenStore(),
                                       OperatorSettings(resource_namespace="certop"))
    try:
        # The tenant's Certificate is handled first.
        tenant = account_of(controller, cert("tenant", "mine", "Issuer"))
        cluster = account_of(controller, cert("shop", "shared", "ClusterIssuer"))
        assert cluster is not tenant
        assert tenant.verify is False and tenant.store.namespace == "tenant"
        assert cluster.store.namespace == "certop"
        assert cluster.store._name(cluster.id) == "cluster-account"
        assert isinstance(cluster.verify, str) and Path(cluster.verify).read_bytes() == bundle
        # Each issuer keeps its own Account for its next orders.
        assert account_of(controller, cert("other", "shared", "ClusterIssuer")) is cluster
        assert account_of(controller, cert("tenant", "mine", "Issuer")) is tenant
        # A changed setting makes a new Account (and drops the old bundle).
        new_bundle = ca_pem("new cluster CA")
        patched = custom.patch_cluster_custom_object("certop.dev", "v1", "clusterissuers",
                                                     "shared", {"spec": issuer_spec(
                                                         "cluster-account", ca=new_bundle)})
        # The change as kopf's watch delivers it (no operator runs in this test).
        controller.on_issuer("MODIFIED", patched)
        changed = account_of(controller, cert("shop", "shared", "ClusterIssuer"))
        assert changed is not cluster
        assert Path(changed.verify).read_bytes() == new_bundle
        assert not Path(cluster.verify).exists()
    finally:
        controller.close()
    assert not list(own_tmp.glob("certop-ca-*"))


def test_the_ca_bundle_directory_goes_when_the_operator_stops(
        kube: EmulatorThread, own_tmp: Path, caplog: pytest.LogCaptureFixture) -> None:
    kube.custom().create_cluster_custom_object("certop.dev", "v1", "clusterissuers", {
        "apiVersion": "certop.dev/v1", "kind": "ClusterIssuer", "metadata": {"name": "ca"},
        "spec": issuer_spec("ca-account", ca=ca_pem("a CA"))})
    registry = kopf.OperatorRegistry()
    controller = CertificateController(kube.operator_client(), TokenStore(),
                                       OperatorSettings(resource_namespace="certop"))
    controller.register(registry)
    with caplog.at_level("INFO"), OperatorThread(registry, kube.url):
        wait_for(lambda: any("leftover-http01-ingresses' succeeded" in r.getMessage()
                             for r in caplog.records), what="the operator started")
        account_of(controller, cert("shop", "ca", "ClusterIssuer"))
        wait_for(lambda: bool(list(own_tmp.glob("certop-ca-*/*.pem"))), what="a CA bundle")
    assert not list(own_tmp.glob("certop-ca-*"))


def test_issuers_come_from_the_watch_parsed_once_per_version(kube: EmulatorThread) -> None:
    kube.custom().create_cluster_custom_object("certop.dev", "v1", "clusterissuers", {
        "apiVersion": "certop.dev/v1", "kind": "ClusterIssuer", "metadata": {"name": "pebble"},
        "spec": issuer_spec("pebble-account")})
    controller = CertificateController(kube.operator_client(), TokenStore())
    spec = cert("shop", "pebble", "ClusterIssuer")
    kube.emulator.reset_counts()
    first = controller._issuer(spec)
    assert controller._issuer(spec) is first  # parsed once
    assert kube.emulator.counts[("get", "clusterissuers")] == 1  # before any watch event
    doc = kube.custom().get_cluster_custom_object("certop.dev", "v1", "clusterissuers",
                                                  "pebble")
    doc["spec"]["acme"]["email"] = "changed@certop.test"
    doc["metadata"]["resourceVersion"] = str(int(doc["metadata"]["resourceVersion"]) + 1)
    controller.on_issuer("MODIFIED", doc)
    assert controller._issuer(spec).email == "changed@certop.test"
    controller.on_issuer("DELETED", doc)
    kube.emulator.reset_counts()
    controller._issuer(spec)
    assert kube.emulator.counts[("get", "clusterissuers")] == 1
