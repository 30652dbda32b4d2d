"""Cluster mode end to end: kmock's emulator as the API server, real Pebble as the CA, kopf
running the Ingress shim and the Certificate daemons, HTTP-01 through a temporary Ingress
and certop's responder."""

from __future__ import annotations

import base64
import itertools
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pebblectl
import pytest
from cryptography import x509
from kube import EmulatorThread, OperatorThread, wait_for
from kubernetes import client
from loopthread import LoopThread

from certop import crypto
from certop.core.models import CertificateSpec
from certop.k8s.certificates import OperatorSettings, StageHook, StopFlag
from certop.k8s.operator import build_registry
from certop.proxy.server import Proxy
from certop.proxy.tls import CertBook
from solvers.http01 import TokenStore

NS = "shop"


class Responder(LoopThread):
    """certop's HTTP-01 responder (the proxy with no routes) on its own loop in a thread."""

    def __init__(self, tokens: TokenStore, port: int) -> None:
        super().__init__()
        self.tokens = tokens
        self.port = port

    async def serve(self) -> None:
        proxy = Proxy(CertBook(), self.tokens)
        await proxy.start("127.0.0.1", self.port, None)
        self.started()
        await self.stopping.wait()
        await proxy.close(grace=0.5)


def create_issuer(kube: EmulatorThread, info: pebblectl.PebbleInfo,
                  solver: dict[str, Any] | None = None, server: str | None = None,
                  solvers: list[dict[str, Any]] | None = None) -> None:
    """The ClusterIssuer `pebble`, trusting Pebble's API through caBundle."""
    kube.custom().create_cluster_custom_object("certop.dev", "v1", "clusterissuers", {
        "apiVersion": "certop.dev/v1", "kind": "ClusterIssuer",
        "metadata": {"name": "pebble"},
        "spec": {"acme": {
            "server": server or info.directory_url, "email": "ops@certop.test",
            "caBundle": base64.b64encode(Path(info.api_ca).read_bytes()).decode(),
            "privateKeySecretRef": {"name": "pebble-account"},
            "solvers": solvers or [{"http01": {"ingress": solver or {}}}]}},
    })


def operator(kube: EmulatorThread, tokens: TokenStore, responder_port: int,
             posting: bool = False, stage_hook: StageHook | None = None,
             max_concurrent_orders: int = 32) -> OperatorThread:
    """The shim and the Certificate tasks under kopf, as `certop operator` wires them."""
    settings = OperatorSettings(resource_namespace="certop",
                                self_check_addr=("127.0.0.1", responder_port),
                                max_concurrent_orders=max_concurrent_orders)
    wiring = build_registry(kube.operator_client(), tokens, settings, stage_hook=stage_hook)
    return OperatorThread(wiring.registry, kube.url, posting=posting)


def certificate_status(kube: EmulatorThread, name: str = "web-tls") -> dict[str, Any]:
    """The Certificate's status, {} while the shim has not created it yet."""
    try:
        found = kube.custom().get_namespaced_custom_object("certop.dev", "v1", NS,
                                                           "certificates", name)
    except client.ApiException:
        return {}
    return dict(found.get("status") or {})


def ready_condition(kube: EmulatorThread, name: str = "web-tls") -> dict[str, Any]:
    """The Certificate's Ready condition, {} before it has one."""
    conditions = certificate_status(kube, name).get("conditions") or []
    return dict(conditions[0]) if conditions else {}


@pytest.fixture
def cluster(pebble: pebblectl.PebbleInfo) -> Iterator[EmulatorThread]:
    tokens = TokenStore()
    with EmulatorThread() as kube, Responder(tokens, pebble.http_port):
        create_issuer(kube, pebble, {"ingressClassName": "certop"})
        with operator(kube, tokens, pebble.http_port, posting=True):
            yield kube


def ingress(name: str, host: str, secret: str,
            annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": name,
                         "annotations": {"certop.dev/cluster-issuer": "pebble",
                                         **(annotations or {})}},
            "spec": {"ingressClassName": "certop",
                     "tls": [{"hosts": [host], "secretName": secret}],
                     "rules": [{"host": host, "http": {"paths": [{
                         "path": "/", "pathType": "Prefix",
                         "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]}}


def secret_data(kube: EmulatorThread, namespace: str, name: str) -> Any:
    try:
        return kube.core().read_namespaced_secret(name, namespace)
    except client.ApiException:
        return None


@pytest.mark.slow
def test_an_annotated_ingress_gets_a_tls_secret_from_pebble(
        cluster: EmulatorThread, pebble: pebblectl.PebbleInfo) -> None:
    client.NetworkingV1Api(cluster.api_client()).create_namespaced_ingress(
        NS, ingress("web", "web.certop.test", "web-tls"))
    wait_for(lambda: secret_data(cluster, NS, "web-tls") is not None, timeout=60,
             what="the TLS Secret")
    secret = secret_data(cluster, NS, "web-tls")
    assert secret.type == "kubernetes.io/tls"
    assert secret.metadata.labels == {"certop.dev/managed": "true"}
    pair = crypto.load_pair(base64.b64decode(secret.data["tls.crt"]),
                            base64.b64decode(secret.data["tls.key"]))
    assert pair.facts.hosts == {"web.certop.test"}
    # The chain verifies up to Pebble's root.
    root = x509.load_pem_x509_certificate(pebble.root_pem().encode())
    chain = [*pair.chain]
    for child, parent in itertools.pairwise(chain):
        child.verify_directly_issued_by(parent)
    chain[-1].verify_directly_issued_by(root)

    def certificate() -> dict[str, Any]:
        found: dict[str, Any] = cluster.custom().get_namespaced_custom_object(
            "certop.dev", "v1", NS, "certificates", "web-tls")
        return found

    wait_for(lambda: any(c.get("status") == "True" for c in
                         certificate().get("status", {}).get("conditions", [])),
             what="Ready=True")
    status = certificate()["status"]
    assert status["notAfter"] and status["renewalTime"]
    # The temporary Ingress existed during the order and is gone now.
    temporary = [key for key in cluster.emulator.objects
                 if key[0].plural == "ingresses" and key[2].startswith("certop-http01-")]
    assert temporary
    assert all(cluster.emulator.objects[key].deleted for key in temporary)
    last = cluster.emulator.objects[temporary[0]].last.raw
    assert last["spec"]["ingressClassName"] == "certop"  # the issuer's override
    (rule,) = last["spec"]["rules"]
    assert rule["host"] == "web.certop.test"
    (path,) = rule["http"]["paths"]
    assert path["pathType"] == "Exact"
    assert path["path"].startswith("/.well-known/acme-challenge/")
    assert path["backend"]["service"]["name"] == "certop-solver"
    # The ACME account key is kept in the resource namespace, in the Secret the issuer names.
    account = secret_data(cluster, "certop", "pebble-account")
    assert account is not None and "tls.key" in account.data


@pytest.mark.slow
def test_renew_before_and_rotation_policy_never_from_cert_manager_annotations(
        cluster: EmulatorThread) -> None:
    import datetime

    net = client.NetworkingV1Api(cluster.api_client())
    asks = {"cert-manager.io/renew-before": "720h",
            "cert-manager.io/private-key-rotation-policy": "Never"}
    net.create_namespaced_ingress(NS, ingress("web", "keep.certop.test", "web-tls", asks))
    wait_for(lambda: ready_condition(cluster).get("status") == "True", timeout=60,
             what="the first certificate Ready")
    found = cluster.custom().get_namespaced_custom_object("certop.dev", "v1", NS,
                                                          "certificates", "web-tls")
    assert found["spec"]["renewBefore"] == "720h0m0s"
    assert found["spec"]["privateKey"]["rotationPolicy"] == "Never"

    def when(field: str) -> datetime.datetime:
        return datetime.datetime.fromisoformat(
            certificate_status(cluster)[field].replace("Z", "+00:00"))

    assert when("notAfter") - when("renewalTime") == datetime.timedelta(hours=720)
    first = secret_data(cluster, NS, "web-tls")
    changed = ingress("web", "keep.certop.test", "web-tls", asks)
    changed["spec"]["tls"][0]["hosts"].append("kept.certop.test")
    net.patch_namespaced_ingress("web", NS, {"spec": changed["spec"]})

    def reissued() -> bool:
        found = secret_data(cluster, NS, "web-tls")
        return found is not None and found.data["tls.crt"] != first.data["tls.crt"]

    wait_for(reissued, timeout=60, what="the re-issued certificate")
    assert secret_data(cluster, NS, "web-tls").data["tls.key"] == first.data["tls.key"]


@pytest.mark.slow
def test_changed_hosts_are_reissued_and_a_foreign_secret_is_left_alone(
        cluster: EmulatorThread) -> None:
    net = client.NetworkingV1Api(cluster.api_client())
    net.create_namespaced_ingress(NS, ingress("web", "a.certop.test", "web-tls"))

    def hosts() -> set[str]:
        found = secret_data(cluster, NS, "web-tls")
        if found is None:
            return set()
        pair = crypto.load_pair(base64.b64decode(found.data["tls.crt"]),
                                base64.b64decode(found.data["tls.key"]))
        return set(pair.facts.hosts)

    wait_for(lambda: hosts() == {"a.certop.test"}, timeout=60, what="the first certificate")
    first_key = secret_data(cluster, NS, "web-tls").data["tls.key"]
    changed = ingress("web", "a.certop.test", "web-tls")
    changed["spec"]["tls"][0]["hosts"].append("b.certop.test")
    changed["spec"]["rules"][0]["host"] = "a.certop.test"
    net.patch_namespaced_ingress("web", NS, {"spec": changed["spec"]})
    wait_for(lambda: hosts() == {"a.certop.test", "b.certop.test"}, timeout=60,
             what="the re-issued certificate")
    assert secret_data(cluster, NS, "web-tls").data["tls.key"] != first_key  # Always rotates

    # A Secret someone else made is never overwritten; the reason shows on the Certificate.
    cluster.core().create_namespaced_secret(NS, {
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": "theirs-tls"},
        "data": {"tls.crt": "Zm9yZWlnbg==", "tls.key": "Zm9yZWlnbg=="}})
    net.create_namespaced_ingress(NS, ingress("other", "c.certop.test", "theirs-tls"))

    def reason() -> str | None:
        try:
            found = cluster.custom().get_namespaced_custom_object(
                "certop.dev", "v1", NS, "certificates", "theirs-tls")
        except client.ApiException:
            return None
        conditions = found.get("status", {}).get("conditions", [])
        return str(conditions[0]["reason"]) if conditions else None

    wait_for(lambda: reason() == "SecretNotOwned", timeout=30, what="SecretNotOwned")
    assert secret_data(cluster, NS, "theirs-tls").data["tls.crt"] == "Zm9yZWlnbg=="


@pytest.mark.slow
def test_a_deleted_secret_is_issued_again_at_once_and_a_taken_over_one_is_refused_unordered(
        cluster: EmulatorThread, caplog: pytest.LogCaptureFixture) -> None:
    """The watch of certop's Secrets wakes the Certificate (not the hourly look): a deleted
    TLS Secret gets a new certificate; one a user took over (certop's label removed) is
    refused (SecretNotOwned) before anything is ordered, and left as the user made it."""
    net = client.NetworkingV1Api(cluster.api_client())
    net.create_namespaced_ingress(NS, ingress("web", "gone.certop.test", "gone-tls"))
    wait_for(lambda: secret_data(cluster, NS, "gone-tls") is not None, timeout=60,
             what="the first certificate")
    first = secret_data(cluster, NS, "gone-tls").data["tls.key"]
    with caplog.at_level("INFO", logger="certop"):
        cluster.core().delete_namespaced_secret("gone-tls", NS)
        wait_for(lambda: secret_data(cluster, NS, "gone-tls") is not None, timeout=30,
                 what="the certificate issued again")
        assert secret_data(cluster, NS, "gone-tls").data["tls.key"] != first
        assert len(placed_orders(caplog)) == 1
        wait_for(lambda: ready_condition(cluster, "gone-tls").get("status") == "True",
                 what="Ready again")
        caplog.clear()
        # Taken over in one step (a delete then a create would leave a moment with no
        # Secret, in which issuing anew is right): certop's label removed, data replaced.
        cluster.core().patch_namespaced_secret("gone-tls", NS, {
            "metadata": {"labels": {"certop.dev/managed": None}},
            "data": {"tls.crt": "Zm9yZWlnbg==", "tls.key": "Zm9yZWlnbg=="}})
        wait_for(lambda: ready_condition(cluster, "gone-tls").get("reason") ==
                 "SecretNotOwned", timeout=30, what="SecretNotOwned")
    assert placed_orders(caplog) == []
    assert secret_data(cluster, NS, "gone-tls").data["tls.crt"] == "Zm9yZWlnbg=="


def placed_orders(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "placed order" in r.getMessage()]


STAGES = ["trigger", "key", "order", "challenges", "finalize", "certificate", "store", "ready"]


@pytest.mark.slow
@pytest.mark.parametrize("stage", STAGES)
def test_an_operator_stopped_after_any_stage_completes_on_restart_with_one_order(
        stage: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Stopped right after `stage`, a new run (fresh memory) completes the certificate: one
    order placed in all, no temporary Ingress left, no order left on the status."""
    from gate import Gate

    reached = threading.Event()

    async def hold(name: str, spec: CertificateSpec, stopped: StopFlag) -> None:
        if name == stage:
            reached.set()
            await stopped.wait()  # the operator stops here, between two stages

    responder_port = pebblectl.free_port()
    host = f"{stage}.stages.certop.test"
    with EmulatorThread() as kube, Gate(responder_port) as gate, \
            pebblectl.running(tmp_path / "pebble", http_port=gate.port) as info:
        create_issuer(kube, info)
        if stage != "challenges":
            gate.open()  # held only to stop with the challenge answered, not yet validated

        def journal() -> Any:
            """The journal Secret while it holds an order (clearing empties it)."""
            found = secret_data(kube, NS, "certop-order-web-tls")
            return found if found is not None and (found.data or {}).get("order") else None

        def temporary() -> list[Any]:
            return [key for key in kube.emulator.objects if key[0].plural == "ingresses"
                    and key[2].startswith("certop-http01-")
                    and not kube.emulator.objects[key].deleted]

        def done(name: str) -> list[str]:
            return [r.getMessage() for r in caplog.records
                    if r.getMessage().endswith(f" {name} done")]

        with caplog.at_level("INFO", logger="certop"):
            tokens = TokenStore()
            with Responder(tokens, responder_port), \
                    operator(kube, tokens, responder_port, stage_hook=hold):
                client.NetworkingV1Api(kube.api_client()).create_namespaced_ingress(
                    NS, ingress("web", host, "web-tls"))
                assert reached.wait(60), f"stage {stage} never reached"
            # Stopped: no later stage ran; the interrupted state is what a new run finds.
            later = STAGES[STAGES.index(stage) + 1:]
            assert not any(done(name) for name in later), later
            if stage == "challenges":
                assert gate.arrived.is_set() and journal() is not None
            assert not temporary(), "a stopped operator removes its temporary Ingress"
            # The current order shows on the Certificate's status, as the journal has it.
            order = certificate_status(kube).get("order")
            if stage in ("order", "challenges", "finalize", "certificate", "store"):
                entry = json.loads(base64.b64decode(journal().data["order"]))
                assert order == {"url": entry["order_url"], "state": "pending"}
            else:
                assert not order
            placed = len(placed_orders(caplog))
            caplog.clear()
            tokens = TokenStore()
            with Responder(tokens, responder_port), operator(kube, tokens, responder_port):
                if stage == "challenges":
                    wait_for(lambda: len(tokens) > 0, what="the token presented again")
                    gate.open()
                # This run's own look (the status may say Ready from before the stop).
                wait_for(lambda: bool(done("ready")), timeout=60,
                         what=f"Ready after a stop at {stage}")
                assert ready_condition(kube).get("status") == "True"
                secret = secret_data(kube, NS, "web-tls")
                pair = crypto.load_pair(base64.b64decode(secret.data["tls.crt"]),
                                        base64.b64decode(secret.data["tls.key"]))
                assert pair.facts.hosts == {host}
                # The Ready status drops the order: the journal's entry (left for the next
                # order to overwrite) is not resumed again.
                wait_for(lambda: not certificate_status(kube).get("order"),
                         what="the order off the status")
                assert not temporary()
                resumed = any("resuming order" in r.getMessage() for r in caplog.records)
                assert resumed == (stage in ("order", "challenges", "finalize", "certificate"))
                again = bool(done("trigger"))
                assert again == (stage not in ("store", "ready"))
            placed += len(placed_orders(caplog))
        assert placed == 1, placed


@pytest.mark.slow
def test_a_failed_challenge_backs_off_with_a_condition_and_events_on_the_ingress(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Pebble validates on a port where nothing answers; certop's own self-check passes.
    responder_port = pebblectl.free_port()
    with EmulatorThread() as kube, \
            pebblectl.running(tmp_path / "pebble", http_port=pebblectl.free_port()) as info:
        create_issuer(kube, info)
        tokens = TokenStore()
        with caplog.at_level("INFO", logger="certop"), Responder(tokens, responder_port), \
                operator(kube, tokens, responder_port, posting=True):
            client.NetworkingV1Api(kube.api_client()).create_namespaced_ingress(
                NS, ingress("web", "fail.certop.test", "web-tls"))

            wait_for(lambda: ready_condition(kube).get("reason") == "ChallengeFailed", timeout=30,
                     what="Ready=False, ChallengeFailed")
            assert ready_condition(kube)["status"] == "False"
            assert "fail.certop.test" in ready_condition(kube)["message"]
            assert "next in" in ready_condition(kube)["message"]
            assert not certificate_status(kube).get("order")  # abandoned: the next is new

            def warnings_on(kind: str) -> list[str]:
                return [e.message for e in kube.core().list_namespaced_event(NS).items
                        if e.reason == "ChallengeFailed" and e.involved_object.kind == kind]

            wait_for(lambda: bool(warnings_on("Ingress")) and bool(warnings_on("Certificate")),
                     what="events on the Ingress and the Certificate")
            # Backing off: the next order is seconds away, not a hot loop.
            placed = [r for r in caplog.records if "placed order" in r.getMessage()]
            assert len(placed) == 1



@pytest.mark.slow
def test_rate_limited_orders_wait_for_retry_after_with_no_hot_loop(tmp_path: Path) -> None:
    from faultproxy import FaultProxy

    responder_port = pebblectl.free_port()
    with EmulatorThread() as kube, \
            pebblectl.running(tmp_path / "pebble", http_port=responder_port) as info, \
            FaultProxy(info, tmp_path / "pebble", retry_after=30) as proxy:
        create_issuer(kube, info, server=proxy.directory_url)
        tokens = TokenStore()
        with Responder(tokens, responder_port), \
                operator(kube, tokens, responder_port, posting=True):
            client.NetworkingV1Api(kube.api_client()).create_namespaced_ingress(
                NS, ingress("web", "limited.certop.test", "web-tls"))

            wait_for(lambda: ready_condition(kube).get("reason") == "RateLimited", timeout=30,
                     what="Ready=False, RateLimited")
            # The CA's Retry-After, honoured:
            assert "next in 30s" in ready_condition(kube)["message"]
            assert proxy.counts["/order-plz"] == 1
            # directory, nonce, account, one refused order: a handful, not a loop
            assert proxy.total <= 6, dict(proxy.counts)



@pytest.mark.slow
def test_the_renewal_time_follows_the_cas_renewal_info_when_offered(tmp_path: Path) -> None:
    import datetime

    from faultproxy import FaultProxy

    responder_port = pebblectl.free_port()
    now = datetime.datetime.now(datetime.UTC)
    window = (now + datetime.timedelta(days=1), now + datetime.timedelta(days=2))
    with EmulatorThread() as kube, \
            pebblectl.running(tmp_path / "pebble", http_port=responder_port) as info, \
            FaultProxy(info, tmp_path / "pebble") as proxy:
        proxy.rate_limited = False
        proxy.ari_window = window
        create_issuer(kube, info, server=proxy.directory_url)
        tokens = TokenStore()
        with Responder(tokens, responder_port), operator(kube, tokens, responder_port):
            client.NetworkingV1Api(kube.api_client()).create_namespaced_ingress(
                NS, ingress("web", "ari.certop.test", "web-tls"))

            wait_for(lambda: bool(certificate_status(kube).get("renewalTime")), timeout=60,
                     what="a renewal time")
            when = datetime.datetime.fromisoformat(
                str(certificate_status(kube)["renewalTime"]).replace("Z", "+00:00"))
            # Pebble's certificates last 5 years: 2/3 of that would be years away.
            assert window[0] - datetime.timedelta(seconds=1) <= when <= window[1]
            assert any(path.startswith("/renewal-info/") for path in proxy.counts)


@pytest.mark.slow
def test_malformed_renewal_info_leaves_the_lifetime_policy_and_is_not_asked_in_a_loop(
        tmp_path: Path) -> None:
    import datetime

    from faultproxy import FaultProxy

    responder_port = pebblectl.free_port()
    now = datetime.datetime.now(datetime.UTC)
    with EmulatorThread() as kube, \
            pebblectl.running(tmp_path / "pebble", http_port=responder_port) as info, \
            FaultProxy(info, tmp_path / "pebble") as proxy:
        proxy.rate_limited = False
        proxy.ari_window = (now + datetime.timedelta(days=1), now + datetime.timedelta(days=2))
        proxy.ari_malformed = True
        create_issuer(kube, info, server=proxy.directory_url)
        tokens = TokenStore()
        with Responder(tokens, responder_port), operator(kube, tokens, responder_port):
            client.NetworkingV1Api(kube.api_client()).create_namespaced_ingress(
                NS, ingress("web", "ari-bad.certop.test", "web-tls"))
            wait_for(lambda: ready_condition(kube).get("status") == "True", timeout=60,
                     what="Ready")
            when = datetime.datetime.fromisoformat(
                str(certificate_status(kube)["renewalTime"]).replace("Z", "+00:00"))
            assert when > now + datetime.timedelta(days=365)  # 2/3 of Pebble's 5 years
        asked = [p for p in proxy.counts if p.startswith("/renewal-info/")]
        assert sum(proxy.counts[p] for p in asked) == 1, dict(proxy.counts)


@pytest.mark.slow
def test_a_renewal_the_ca_asks_for_names_the_certificate_it_replaces(tmp_path: Path) -> None:
    import datetime

    from faultproxy import FaultProxy

    from certop.acme import ari

    responder_port = pebblectl.free_port()
    now = datetime.datetime.now(datetime.UTC)
    with EmulatorThread() as kube, \
            pebblectl.running(tmp_path / "pebble", http_port=responder_port) as info, \
            FaultProxy(info, tmp_path / "pebble") as proxy:
        proxy.rate_limited = False
        proxy.ari_window = (now + datetime.timedelta(days=1), now + datetime.timedelta(days=2))
        proxy.ari_due_first = True  # the CA asks for the first certificate to be replaced now
        create_issuer(kube, info, server=proxy.directory_url)
        tokens = TokenStore()
        with Responder(tokens, responder_port), operator(kube, tokens, responder_port):
            client.NetworkingV1Api(kube.api_client()).create_namespaced_ingress(
                NS, ingress("web", "replace.certop.test", "web-tls"))

            def stored_id() -> str | None:
                found = secret_data(kube, NS, "web-tls")
                return ari.cert_id(base64.b64decode(found.data["tls.crt"])) if found else None

            wait_for(lambda: len(proxy.ari_asked) == 2 and stored_id() == proxy.ari_asked[1],
                     timeout=60, what="the renewed certificate, asked about")
            wait_for(lambda: certificate_status(kube).get("renewalTime", "") >
                     now.strftime("%Y-%m-%dT%H:%M:%SZ"), what="the second certificate Ready")
        first, renewal = proxy.orders  # one order each, no more
        assert "replaces" not in first
        assert renewal["replaces"] == proxy.ari_asked[0]  # acme's ID for the first certificate


@pytest.mark.slow
def test_the_issuers_solver_selectors_pick_the_class_per_host(
        pebble: pebblectl.PebbleInfo) -> None:
    tokens = TokenStore()
    with EmulatorThread() as kube, Responder(tokens, pebble.http_port):
        create_issuer(kube, pebble, solvers=[
            {"http01": {"ingress": {"ingressClassName": "everyone"}}},
            {"selector": {"dnsNames": ["picked.certop.test"]},
             "http01": {"ingress": {"ingressClassName": "picked",
                                    "pathType": "ImplementationSpecific"}}},
            {"selector": {"dnsZones": ["dns.certop.test"]}, "dns01": {"rfc2136": {
                "nameserver": "127.0.0.1:53"}}}])
        with operator(kube, tokens, pebble.http_port, posting=True):
            net = client.NetworkingV1Api(kube.api_client())
            net.create_namespaced_ingress(NS, ingress("web", "picked.certop.test", "web-tls"))
            net.create_namespaced_ingress(NS, ingress("dns", "a.dns.certop.test", "dns-tls"))
            wait_for(lambda: ready_condition(kube).get("status") == "True", timeout=60,
                     what="the HTTP-01 certificate")
            (key,) = [k for k in kube.emulator.objects if k[0].plural == "ingresses"
                      and k[2].startswith("certop-http01-")]
            made = kube.emulator.objects[key].last.raw
            assert made["spec"]["ingressClassName"] == "picked"
            assert made["spec"]["rules"][0]["http"]["paths"][0]["pathType"] == \
                "ImplementationSpecific"
            # A host the issuer gives to its DNS-01 solver is not tried over HTTP-01: that
            # block's settings are incomplete, which its condition says field by field.
            wait_for(lambda: ready_condition(kube, "dns-tls").get("reason") == "ConfigError",
                     timeout=30, what="the DNS-01 block refused")
            message = ready_condition(kube, "dns-tls")["message"]
            assert "spec.acme.solvers[2].dns01.rfc2136.tsigKeyName" in message, message


@pytest.mark.slow
def test_a_namespaced_issuer_keeps_its_account_in_its_own_namespace(
        pebble: pebblectl.PebbleInfo) -> None:
    tokens = TokenStore()
    with EmulatorThread() as kube, Responder(tokens, pebble.http_port):
        kube.custom().create_namespaced_custom_object("certop.dev", "v1", NS, "issuers", {
            "apiVersion": "certop.dev/v1", "kind": "Issuer",
            "metadata": {"name": "team-ca", "namespace": NS},
            "spec": {"acme": {
                "server": pebble.directory_url, "email": "team@certop.test",
                "caBundle": base64.b64encode(Path(pebble.api_ca).read_bytes()).decode(),
                "privateKeySecretRef": {"name": "team-account"},
                "solvers": [{"http01": {"ingress": {}}}]}}})
        with operator(kube, tokens, pebble.http_port):
            body = ingress("web", "team.certop.test", "web-tls")
            body["metadata"]["annotations"] = {"cert-manager.io/issuer": "team-ca"}
            client.NetworkingV1Api(kube.api_client()).create_namespaced_ingress(NS, body)
            wait_for(lambda: ready_condition(kube).get("status") == "True", timeout=60,
                     what="the certificate from the namespaced Issuer")
            found = kube.custom().get_namespaced_custom_object("certop.dev", "v1", NS,
                                                               "certificates", "web-tls")
            assert found["spec"]["issuerRef"]["kind"] == "Issuer"
            assert secret_data(kube, NS, "team-account") is not None
            assert secret_data(kube, "certop", "team-account") is None


@pytest.mark.slow
def test_a_restart_with_every_certificate_ready_writes_nothing(
        pebble: pebblectl.PebbleInfo) -> None:
    """Nothing changed, nothing written: the Ready status a restarted daemon would report is
    the one the Certificate has (its lastTransitionTime kept), so no patch; the shim's plans
    are no-ops and kopf keeps no records on the objects."""
    looked = threading.Event()

    async def hook(name: str, spec: CertificateSpec, stopped: StopFlag) -> None:
        if name == "ready":
            looked.set()

    tokens = TokenStore()
    with EmulatorThread() as kube, Responder(tokens, pebble.http_port):
        create_issuer(kube, pebble, {"ingressClassName": "certop"})
        with operator(kube, tokens, pebble.http_port, posting=True):
            client.NetworkingV1Api(kube.api_client()).create_namespaced_ingress(
                NS, ingress("web", "restart.certop.test", "web-tls"))
            wait_for(lambda: ready_condition(kube).get("status") == "True", timeout=60,
                     what="Ready=True")
        before = certificate_status(kube)
        kube.emulator.reset_counts()
        with operator(kube, tokens, pebble.http_port, posting=True, stage_hook=hook):
            assert looked.wait(60), "the restarted daemon never looked"
        writes = {key: n for key, n in kube.emulator.counts.items()
                  if key[0] in ("create", "update", "patch", "delete")}
        assert writes == {}
        assert kube.emulator.counts[("get", "clusterissuers")] == 0  # from the watch
        assert certificate_status(kube) == before



BUDGET_CERTIFICATES = 50
WRITES = ("create", "update", "patch", "delete")


@pytest.mark.slow
def test_the_api_budget_per_certificate_first_issuance_and_restart(
        pebble: pebblectl.PebbleInfo) -> None:
    """50 annotated Ingresses through the real operator (shim, Certificate tasks, Secret
    watch, events posted), counted by the emulator per verb and resource: at most 12 API
    requests per first issuance, at most 8 of them writes (watch requests, long-lived and
    renewed on a timer, not counted); then a restart with every certificate Ready and nothing
    changed makes no request per certificate at all: lists and watches only, and no ACME
    request but the issuer's directory and account lookup (the CA behind a counting proxy)."""
    from faultproxy import FaultProxy

    looked: set[str] = set()
    lock = threading.Lock()

    async def hook(name: str, spec: CertificateSpec, stopped: StopFlag) -> None:
        if name == "ready":
            with lock:
                looked.add(spec.secret_name)

    tokens = TokenStore()
    hosts = [f"budget-{i}.certop.test" for i in range(BUDGET_CERTIFICATES)]
    with EmulatorThread() as kube, Responder(tokens, pebble.http_port), \
            FaultProxy(pebble, Path(pebble.api_ca).parent) as ca:
        ca.rate_limited = False
        create_issuer(kube, pebble, {"ingressClassName": "certop"}, server=ca.directory_url)
        net = client.NetworkingV1Api(kube.api_client())
        custom = kube.custom()

        def all_ready() -> bool:
            items = custom.list_namespaced_custom_object("certop.dev", "v1", NS,
                                                         "certificates")["items"]
            return len(items) == BUDGET_CERTIFICATES + 1 and all(
                any(c.get("type") == "Ready" and c.get("status") == "True"
                    for c in (i.get("status") or {}).get("conditions") or [])
                for i in items)

        # Few orders at once: Debian's Pebble 2.4 can deadlock under many (pebblectl.py).
        with operator(kube, tokens, pebble.http_port, posting=True, max_concurrent_orders=8):
            # The issuer's account (its key Secret, registered once per issuer) first.
            net.create_namespaced_ingress(NS, ingress("warm-up", "warm.certop.test", "warm"))
            wait_for(lambda: ready_condition(kube, "warm").get("status") == "True",
                     timeout=60, what="the first certificate")
            kube.emulator.reset_counts()
            for i, host in enumerate(hosts):
                net.create_namespaced_ingress(NS, ingress(f"web-{i}", host, f"tls-{i}"))
            wait_for(all_ready, timeout=240, what="every Certificate Ready")
            # Reports that follow Ready (events) are posted before the counts are taken.
            wait_for(lambda: kube.emulator.counts[("create", "events")] >=
                     BUDGET_CERTIFICATES, what="the Issued events")
            counts = dict(kube.emulator.counts)
        requests = {k: n for k, n in counts.items() if k[0] != "watch"}
        writes = {k: n for k, n in requests.items() if k[0] in WRITES}
        per = sum(requests.values()) / BUDGET_CERTIFICATES
        per_write = sum(writes.values()) / BUDGET_CERTIFICATES
        print(f"per certificate: {per} requests, {per_write} writes: {requests}")
        assert per <= 12, (per, requests)
        assert per_write <= 8, (per_write, writes)
        # Nothing read per event that grows with the cluster.
        assert not [k for k in requests if k[0] == "list"], requests
        assert requests.get(("get", "clusterissuers"), 0) == 0, requests

        kube.emulator.reset_counts()
        ca.counts.clear()
        with operator(kube, tokens, pebble.http_port, posting=True, stage_hook=hook):
            wait_for(lambda: len(looked) == BUDGET_CERTIFICATES + 1, timeout=60,
                     what="every restarted Certificate task looked")
        # The account, once per issuer (directory, a nonce, the account lookup): no order,
        # no renewal information, nothing per certificate.
        assert set(ca.counts) <= {"/dir", "/nonce-plz", "/sign-me-up"}, dict(ca.counts)
        assert sum(ca.counts.values()) <= 3, dict(ca.counts)
        after = {k: n for k, n in kube.emulator.counts.items()
                 if k[0] not in ("list", "watch")}
        # Per issuer, not per certificate: its account key Secret, read once.
        assert after in ({}, {("get", "secrets"): 1}), after
        lists = sum(n for k, n in kube.emulator.counts.items() if k[0] == "list")
        assert lists <= 8, dict(kube.emulator.counts)  # one per watched resource


@pytest.mark.slow
def test_a_wildcard_and_its_apex_through_rfc2136_in_cluster_mode(tmp_path: Path) -> None:
    """DNS-01 in cluster mode: a ClusterIssuer with an rfc2136 solver whose TSIG Secret
    lives in the resource namespace, a real BIND, Pebble resolving at it; the Secret holds
    one certificate for `*.wild.test` and `wild.test`, the TXT values are gone afterwards."""
    import os

    import bindctl
    import dns.message
    import dns.query
    import dns.rdatatype

    key = "certop-key"
    zone = bindctl.Zone("wild.test", key)
    with bindctl.running(tmp_path / "bind", [zone], {key: os.urandom(32)}) as bind, \
            pebblectl.running(tmp_path / "pebble", http_port=pebblectl.free_port(),
                              dns_server=bind.nameserver) as info, \
            EmulatorThread() as kube:
        kube.core().create_namespaced_secret("certop", {
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "tsig"},
            "data": {"key": base64.b64encode(base64.b64encode(bind.keys[key])).decode()}})
        create_issuer(kube, info, solvers=[{"dns01": {"rfc2136": {
            "nameserver": bind.nameserver, "tsigKeyName": key, "tsigAlgorithm": "HMACSHA256",
            "tsigSecretSecretRef": {"name": "tsig", "key": "key"}}}}])
        tokens = TokenStore()
        with operator(kube, tokens, info.http_port, posting=True):
            wild = ingress("wild", "wild.test", "wild-tls")
            wild["spec"]["tls"][0]["hosts"] = ["*.wild.test", "wild.test"]
            client.NetworkingV1Api(kube.api_client()).create_namespaced_ingress(NS, wild)
            wait_for(lambda: ready_condition(kube, "wild-tls").get("status") == "True",
                     timeout=60, what="the DNS-01 certificate Ready")
        secret = secret_data(kube, NS, "wild-tls")
        pair = crypto.load_pair(base64.b64decode(secret.data["tls.crt"]),
                                base64.b64decode(secret.data["tls.key"]))
        assert pair.facts.hosts == {"*.wild.test", "wild.test"}
        response = dns.query.udp(dns.message.make_query("_acme-challenge.wild.test.",
                                                        dns.rdatatype.TXT),
                                 bind.host, port=bind.port, timeout=2)
        assert response.answer == []


@pytest.mark.slow
def test_dns01_refusals_are_a_ready_false_condition_and_never_a_repeated_order(
        tmp_path: Path) -> None:
    """Bad DNS-01 input in cluster mode: a TSIG Secret that does not exist and a wildcard
    given to an http01 solver are refused before any order (Ready=False naming the issuer
    and field); a wrong TSIG secret is refused by BIND when the record is presented. Each
    is retried with the backoff, and the retry of the wrong key resumes its one order
    instead of placing another (the CA behind a counting proxy sees one newOrder)."""
    import os

    import bindctl
    from faultproxy import FaultProxy

    key = "certop-key"
    zones = [bindctl.Zone("bad.test", key), bindctl.Zone("missing.test", key)]
    with bindctl.running(tmp_path / "bind", zones, {key: os.urandom(32)}) as bind, \
            pebblectl.running(tmp_path / "pebble", http_port=pebblectl.free_port(),
                              dns_server=bind.nameserver) as info, \
            FaultProxy(info, tmp_path / "pebble") as ca, EmulatorThread() as kube:
        ca.rate_limited = False
        wrong = base64.b64encode(os.urandom(32))  # not BIND's secret for the key
        kube.core().create_namespaced_secret("certop", {
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "tsig"},
            "data": {"key": base64.b64encode(wrong).decode()}})

        def rfc2136(secret: str, zone: str) -> dict[str, Any]:
            return {"selector": {"dnsZones": [zone]}, "dns01": {"rfc2136": {
                "nameserver": bind.nameserver, "tsigKeyName": key,
                "tsigAlgorithm": "HMACSHA256",
                "tsigSecretSecretRef": {"name": secret, "key": "key"}}}}

        create_issuer(kube, info, server=ca.directory_url, solvers=[
            rfc2136("tsig", "bad.test"), rfc2136("nope", "missing.test"),
            {"http01": {"ingress": {}}}])
        net = client.NetworkingV1Api(kube.api_client())
        for name, hosts in (("wrong-key", ["*.bad.test", "bad.test"]),
                            ("no-secret", ["www.missing.test"]),
                            ("wild-http", ["*.web.test"])):
            body = ingress(name, hosts[-1], f"{name}-tls")
            body["spec"]["tls"][0]["hosts"] = hosts
            net.create_namespaced_ingress(NS, body)
        expected = {
            "wrong-key-tls": "rejected the signature of key certop-key",
            "no-secret-tls": "ClusterIssuer pebble: spec.acme.solvers[1].dns01.rfc2136."
                             "tsigSecretSecretRef: Secret nope with key key: not found",
            "wild-http-tls": "ClusterIssuer pebble: spec.acme.solvers: a solver for "
                             "*.web.test: a wildcard host (*.web.test) needs a DNS-01 solver; "
                             "solvers[2], selected for it, is http-01",
        }
        tokens = TokenStore()
        with operator(kube, tokens, info.http_port, posting=True):
            # Two attempts each (the second after the backoff's first delay, 5-10 s).
            wait_for(lambda: all(certificate_status(kube, name).get("failedIssuanceAttempts",
                                                                    0) >= 2
                                 for name in expected), timeout=60,
                     what="two failed attempts of each Certificate")
            for name, text in expected.items():
                ready = ready_condition(kube, name)
                assert ready["status"] == "False", (name, ready)
                assert text in ready["message"], (name, ready)
                assert "attempt 2 failed, next in" in ready["message"], (name, ready)
            assert ready_condition(kube, "no-secret-tls")["reason"] == "ConfigError"
        ordered = [sorted(str(i["value"]) for i in order["identifiers"])  # type: ignore[union-attr]
                   for order in ca.orders]
        assert ordered == [["*.bad.test", "bad.test"]], ordered
        assert ca.counts["/order-plz"] == 1, dict(ca.counts)
