"""`kubectl apply -k manifests/LAYOUT` (what the README tells users to run) against the
emulator, for both layouts: kubectl (installed on these machines) builds the kustomization and
applies every object, the Namespace included, through its own client-side apply. The emulator
enforces the RBAC it was just given: kubectl logged in as each ServiceAccount gets what that
layout binds to it and is refused the rest."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from kmock_ext import ADMIN_USER, OPERATOR_TOKEN, OPERATOR_USER, PROXY_TOKEN, PROXY_USER
from kube import EmulatorThread
from kubernetes import client
from kubernetes.client.exceptions import ApiException

ROOT = Path(__file__).resolve().parents[2] / "manifests"

Kubectl = Callable[..., subprocess.CompletedProcess[str]]


def kubectl(*args: str, config: Path | None = None) -> subprocess.CompletedProcess[str]:
    where = ["--kubeconfig", str(config)] if config else []
    return subprocess.run(["kubectl", *where, *args], capture_output=True, text=True,
                          timeout=60, check=False)


def test_kubectl_apply_k_manifests_is_the_all_in_one_layout() -> None:
    top, all_in_one = kubectl("kustomize", str(ROOT)), kubectl("kustomize",
                                                              str(ROOT / "all-in-one"))
    assert top.returncode == 0 and all_in_one.returncode == 0, (top.stderr, all_in_one.stderr)
    assert top.stdout == all_in_one.stdout


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[tuple[EmulatorThread, Kubectl]]:
    """An emulator with nothing applied, and kubectl logged in to it as the admin."""
    with EmulatorThread(bundled=True, rbac=False) as kube:
        # kubectl sends no bearer token over plain HTTP: without credentials it is the admin
        # here, and `--as` (impersonation, which only the admin may do) is a ServiceAccount.
        kube.emulator.anonymous = ADMIN_USER
        config = tmp_path / "kubeconfig"
        config.write_text(
            f'apiVersion: v1\nkind: Config\nclusters: [{{name: e, cluster: {{server: '
            f'"{kube.url}"}}}}]\nusers: [{{name: u, user: {{}}}}]\ncontexts: '
            "[{name: e, context: {cluster: e, user: u}}]\ncurrent-context: e\n")
        yield kube, lambda *args: kubectl(*args, config=config)


OPERATOR_MAY = [("get", "ingresses", "-A", "-o", "name"),
                ("get", "certificates.certop.dev", "-A", "-o", "name"),
                ("get", "leases", "x", "-n", "certop")]
PROXY_MAY = [("get", "ingressclasses", "-o", "name"),
             ("get", "endpointslices", "-A", "-o", "name"),
             ("get", "services", "-A", "-o", "name"),
             ("get", "leases", "x", "-n", "certop")]
NOBODY_MAY = [("get", "pods", "-n", "certop"),
              ("get", "leases", "x", "-n", "default"),
              ("delete", "secret", "x", "-n", "certop")]
OPERATOR_ONLY = [("get", "certificates.certop.dev", "-A", "-o", "name"),
                 ("get", "secret", "x", "-n", "certop")]
PROXY_ONLY = [("get", "endpointslices", "-A", "-o", "name")]

LAYOUTS = {
    # layout: (objects, replicas per Deployment, user -> (may, may not), who writes status)
    "all-in-one": (17, {"certop": "2"}, {
        OPERATOR_USER: (OPERATOR_MAY + PROXY_MAY, NOBODY_MAY),
        PROXY_USER: ([], [*PROXY_MAY[:1], *NOBODY_MAY[:1]])},  # no such ServiceAccount
        {OPERATOR_TOKEN: True, PROXY_TOKEN: False}),
    "split": (19, {"certop": "2", "certop-proxy": "2"}, {
        OPERATOR_USER: (OPERATOR_MAY, NOBODY_MAY + PROXY_ONLY),
        PROXY_USER: (PROXY_MAY, NOBODY_MAY + OPERATOR_ONLY)},
        {OPERATOR_TOKEN: False, PROXY_TOKEN: True}),
}


def patch_ingress(kube: EmulatorThread, token: str, status: bool) -> int:
    """A merge patch of Ingress default/x (its status, else its metadata) as `token`, as the
    proxy sends it: blind, from its watch cache (kubectl patch would GET the Ingress first,
    which the proxy may not). The HTTP status."""
    net = client.NetworkingV1Api(kube.api_client(token))
    try:
        if status:
            net.patch_namespaced_ingress_status(
                "x", "default", {"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}}})
        else:
            net.patch_namespaced_ingress("x", "default", {"metadata": {"labels": {"a": "b"}}})
    except ApiException as exc:
        return int(exc.status)
    return 200


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_kubectl_applies_the_layout_and_its_rbac_holds(
        layout: str, emulator: tuple[EmulatorThread, Kubectl]) -> None:
    kube, run = emulator
    count, replicas, grants, writes_status = LAYOUTS[layout]
    built = kubectl("kustomize", str(ROOT / layout))
    assert built.returncode == 0, built.stderr
    assert sum(1 for d in yaml.safe_load_all(built.stdout) if d) == count
    applied = run("apply", "--validate=false", "-k", str(ROOT / layout))
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.count(" created") == count, applied.stdout
    assert "namespace/certop created" in applied.stdout
    for name, expected in replicas.items():
        got = run("get", "deployment", name, "-n", "certop", "-o", "jsonpath={.spec.replicas}")
        assert got.stdout == expected, (name, got.stderr)
    deployments = run("get", "deployments", "-n", "certop", "-o", "name")
    assert sorted(deployments.stdout.split()) == sorted(f"deployment.apps/{n}" for n in replicas)
    assert run("get", "namespace", "certop", "-o", "name").stdout.strip() == \
        "namespace/certop"
    # Applying again changes nothing.
    again = run("apply", "--validate=false", "-k", str(ROOT / layout))
    assert again.returncode == 0, again.stderr
    assert " created" not in again.stdout and " configured" not in again.stdout, again.stdout
    # The applied RBAC, enforced for each ServiceAccount.
    kube.denials_expected = True
    for user, (allowed, refused) in grants.items():
        for args in allowed:
            result = run("--as", user, *args)
            # allowed: listed, or (an object the emulator does not have) just absent
            assert result.returncode == 0 or "NotFound" in result.stderr or \
                "not found" in result.stderr, (user, args, result.stderr)
            assert "Forbidden" not in result.stderr, (user, args, result.stderr)
        for args in refused:
            result = run("--as", user, *args)
            assert result.returncode != 0 and "Forbidden" in result.stderr, \
                (user, args, result)
    # Ingress status: the proxy's one write to an Ingress (no other field, by no one).
    client.NetworkingV1Api(kube.api_client()).create_namespaced_ingress("default", {
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": "x", "namespace": "default"},
        "spec": {"ingressClassName": "certop", "defaultBackend": {
            "service": {"name": "web", "port": {"number": 80}}}}})
    for token, may in writes_status.items():
        assert patch_ingress(kube, token, status=True) == (200 if may else 403), token
        assert patch_ingress(kube, token, status=False) == 403, token
    got = run("get", "ingresses", "x", "-n", "default", "-o",
              "jsonpath={.status.loadBalancer.ingress[0].ip}")
    assert got.stdout == "192.0.2.1", got.stderr
    denied = "\n".join(kube.emulator.denied)
    for expected in ('cannot list resource "pods"', 'cannot get resource "leases" in '
                     'API group "coordination.k8s.io" in the namespace "default"',
                     'cannot delete resource "secrets"', 'cannot patch resource "ingresses"'):
        assert expected in denied, denied


def test_the_readmes_kubectl_create_ingress_makes_an_ingress_certop_serves() -> None:
    """The README's cluster walk-through creates its Ingress with `kubectl create ingress`:
    what kubectl makes of that command line parses, asks for the Let's Encrypt issuer, and
    is of certop's class."""
    import json
    import re
    import shlex

    from certop.core.ingress import parse_ingress
    from certop.core.ingress_class import Claim, IngressClass, serves

    readme = (ROOT.parent / "README.md").read_text()
    found = re.search(r"^kubectl create ingress (.*?)(?<!\\)$", readme.replace("\\\n", " "),
                      re.MULTILINE)
    assert found is not None
    args = shlex.split(found.group(1))
    made = subprocess.run(["kubectl", "create", "ingress", *args, "--dry-run=client", "-o",
                           "json"], capture_output=True, text=True, timeout=60, check=True)
    doc = json.loads(made.stdout)
    ingress = parse_ingress({**doc, "metadata": {**doc["metadata"], "namespace": "default"}})
    assert ingress.annotations["cert-manager.io/cluster-issuer"] == "letsencrypt-staging"
    assert [t.secret_name for t in ingress.tls] == ["web-tls"]
    classes = {"certop": IngressClass("certop", "certop.dev/ingress-controller")}
    assert serves(Claim.of(doc), classes, "certop.dev/ingress-controller", "certop")
