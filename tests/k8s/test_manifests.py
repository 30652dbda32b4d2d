"""manifests/: two layouts over one base (kustomize), every manifest listed by some
kustomization; every object validates against the Kubernetes schemas (kubernetes-validate),
the example issuers validate against certop's own CRD schemas and parse as certop reads them;
the pods run unprivileged, the Services reach the ports they name, and each layout binds its
ServiceAccounts to the roles of what they run and nothing more."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from certop import __version__
from certop.cli import build_parser
from certop.core.issuers import parse_issuer

ROOT = Path(__file__).resolve().parents[2] / "manifests"
K8S_VERSION = kubernetes_validate.latest_version()
LAYOUTS = ("all-in-one", "split")


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def kustomizations() -> list[Path]:
    return sorted(p.parent for p in ROOT.rglob("kustomization.yaml"))


def resources(directory: Path) -> list[Path]:
    """What a kustomization lists: files, and directories (other kustomizations)."""
    listed = yaml.safe_load((directory / "kustomization.yaml").read_text())["resources"]
    return [(directory / r).resolve() for r in listed]


def files(directory: Path) -> list[Path]:
    """The manifest files a kustomization builds from, its bases' included, in order."""
    out: list[Path] = []
    for path in resources(directory):
        out.extend(files(path) if path.is_dir() else [path])
    return out


def objects(directory: Path) -> list[dict[str, Any]]:
    return [d for path in files(directory) for d in documents(path)]


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def manifests() -> list[Path]:
    return sorted({p for k in kustomizations() for p in files(k)})


def test_every_manifest_is_listed_by_a_kustomization() -> None:
    on_disk = {p.resolve() for p in ROOT.rglob("*.yaml")
               if p.name != "kustomization.yaml" and "examples" not in p.parts}
    assert set(manifests()) == on_disk
    for directory in kustomizations():
        for path in resources(directory):
            assert path.is_file() or (path / "kustomization.yaml").is_file(), path


def test_the_layouts_share_the_base_and_the_top_level_is_all_in_one() -> None:
    assert resources(ROOT) == [ROOT / "all-in-one"]
    base = files(ROOT / "base")
    for layout in LAYOUTS:
        assert resources(ROOT / layout)[0] == ROOT / "base"
        assert files(ROOT / layout)[:len(base)] == base
    kinds = sorted(d["kind"] for d in objects(ROOT / "base"))
    # The base binds nothing: which ServiceAccount gets which role is each layout's choice.
    assert "ServiceAccount" not in kinds and "Deployment" not in kinds
    assert not any(k.endswith("Binding") for k in kinds)


@pytest.mark.parametrize("path", manifests(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_object_validates_against_the_kubernetes_schemas(path: Path) -> None:
    for doc in documents(path):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def crd_schemas() -> dict[str, dict[str, Any]]:
    schemas = {}
    for path in (ROOT / "base" / "crds").glob("*.yaml"):
        (crd,) = documents(path)
        (version,) = crd["spec"]["versions"]
        schemas[crd["spec"]["names"]["kind"]] = version["schema"]["openAPIV3Schema"]
    return schemas


def test_the_example_issuers_match_the_crds_and_parse() -> None:
    schemas = crd_schemas()
    examples = documents(ROOT / "examples" / "letsencrypt.yaml")
    assert len(examples) == 2
    for doc in examples:
        jsonschema.validate(doc, schemas[doc["kind"]])
        issuer = parse_issuer(doc, "letsencrypt.yaml", lambda ns, n: None)
        assert issuer.server.startswith("https://acme-")
        assert issuer.solver_types == ("http-01",)


def test_the_certificate_crd_shows_ready_secret_not_after_and_renewal() -> None:
    (crd,) = documents(ROOT / "base" / "crds" / "certificates.yaml")
    columns = [c["name"] for c in crd["spec"]["versions"][0]["additionalPrinterColumns"]]
    assert columns[:4] == ["Ready", "Secret", "Not After", "Renewal"]
    assert crd["spec"]["versions"][0]["subresources"] == {"status": {}}


DEPLOYMENTS = [("all-in-one", "certop", "run"), ("split", "certop", "operator"),
               ("split", "certop-proxy", "proxy")]
"""(layout, Deployment, certop subcommand)"""


@pytest.mark.parametrize(("layout", "name", "command"), DEPLOYMENTS,
                         ids=[f"{layout}-{name}" for layout, name, _ in DEPLOYMENTS])
def test_every_deployment_runs_unprivileged_with_a_read_only_root(
        layout: str, name: str, command: str) -> None:
    deployment = one(objects(ROOT / layout), "Deployment", name)
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert container["securityContext"] == {"allowPrivilegeEscalation": False,
                                            "readOnlyRootFilesystem": True,
                                            "capabilities": {"drop": ["ALL"]}}
    # The name `make image` gives the image (and kind/k3s/minikube load): never pulled.
    assert (container["image"], container["imagePullPolicy"]) == (f"certop:{__version__}",
                                                                   "IfNotPresent")
    assert container["args"][0] == command
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert all(port >= 1024 for port in ports.values())  # no NET_BIND_SERVICE needed
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert f"--admin-port={ports['admin']}" in container["args"]


@pytest.mark.parametrize(("layout", "name", "command"), DEPLOYMENTS,
                         ids=[f"{layout}-{name}" for layout, name, _ in DEPLOYMENTS])
def test_every_deployments_arguments_parse_as_certop_reads_them(
        layout: str, name: str, command: str) -> None:
    (container,) = one(objects(ROOT / layout), "Deployment", name)["spec"]["template"][
        "spec"]["containers"]
    errors = io.StringIO()
    with contextlib.redirect_stderr(errors):
        try:
            args = build_parser().parse_args(container["args"])
        except SystemExit:
            pytest.fail(errors.getvalue())
    assert args.command == command


def pods_selected(docs: list[dict[str, Any]], service: dict[str, Any]) -> list[str]:
    selector = service["spec"]["selector"].items()
    return [d["metadata"]["name"] for d in docs if d["kind"] == "Deployment"
            and selector <= d["spec"]["template"]["metadata"]["labels"].items()]


def container_ports(deployment: dict[str, Any]) -> dict[str, int]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return {p["name"]: p["containerPort"] for p in container["ports"]}


@pytest.mark.parametrize(("layout", "service", "deployment"),
                         [("all-in-one", "certop", "certop"),
                          ("split", "certop-proxy", "certop-proxy")])
def test_the_load_balancer_maps_80_and_443_to_the_proxy_it_publishes(
        layout: str, service: str, deployment: str) -> None:
    docs = objects(ROOT / layout)
    lb = one(docs, "Service", service)
    assert lb["spec"]["type"] == "LoadBalancer"
    assert pods_selected(docs, lb) == [deployment]
    pod = one(docs, "Deployment", deployment)
    ports = container_ports(pod)
    assert {p["port"]: ports[p["targetPort"]] for p in lb["spec"]["ports"]} == \
        {80: 8080, 443: 8443}
    (container,) = pod["spec"]["template"]["spec"]["containers"]
    assert {"--http-port=8080", "--https-port=8443",
            f"--publish-service=certop/{service}"} <= set(container["args"])
    # Clients reach the Service's ports: redirects and X-Forwarded-Port name those.
    args = build_parser().parse_args(container["args"])
    by_target = {p["targetPort"]: p["port"] for p in lb["spec"]["ports"]}
    assert (args.public_http_port, args.public_https_port) == (by_target["http"],
                                                               by_target["https"])
    # Only one LoadBalancer per layout: the other Services are in-cluster.
    assert [d["metadata"]["name"] for d in docs if d["kind"] == "Service"
            and d["spec"].get("type") == "LoadBalancer"] == [service]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_solver_service_reaches_the_operators_responder(layout: str) -> None:
    # The temporary HTTP-01 Ingresses route to certop-solver: the pods that run the operator
    # (`certop run` or `certop operator`), never split's proxy pods.
    docs = objects(ROOT / layout)
    solver = one(docs, "Service", "certop-solver")
    assert pods_selected(docs, solver) == ["certop"]
    (port,) = solver["spec"]["ports"]
    (container,) = one(docs, "Deployment", "certop")["spec"]["template"]["spec"]["containers"]
    responder = container_ports(one(docs, "Deployment", "certop"))[port["targetPort"]]
    assert f"--solver-port={responder}" in container["args"]


def roles_of(docs: list[dict[str, Any]]) -> dict[str, set[str]]:
    """ServiceAccount name -> the (Cluster)Roles bound to it."""
    bound: dict[str, set[str]] = {d["metadata"]["name"]: set() for d in docs
                                  if d["kind"] == "ServiceAccount"}
    for d in docs:
        if d["kind"] in ("RoleBinding", "ClusterRoleBinding"):
            for subject in d["subjects"]:
                assert (subject["kind"], subject["namespace"]) == ("ServiceAccount", "certop")
                bound[subject["name"]].add(f"{d['roleRef']['kind']}/{d['roleRef']['name']}")
    return bound


OPERATOR_ROLES = {"ClusterRole/certop", "Role/certop-leader"}
PROXY_ROLES = {"ClusterRole/certop-proxy", "Role/certop-proxy-status"}


@pytest.mark.parametrize(("layout", "expected"), [
    ("all-in-one", {"certop": OPERATOR_ROLES | PROXY_ROLES}),
    ("split", {"certop": OPERATOR_ROLES, "certop-proxy": PROXY_ROLES})])
def test_each_serviceaccount_is_bound_to_the_roles_of_what_it_runs(
        layout: str, expected: dict[str, set[str]]) -> None:
    docs = objects(ROOT / layout)
    assert roles_of(docs) == expected
    accounts = {d["spec"]["template"]["spec"]["serviceAccountName"] for d in docs
                if d["kind"] == "Deployment"}
    assert accounts == set(expected)
    defined = {f"{d['kind']}/{d['metadata']['name']}" for d in docs
               if d["kind"] in ("Role", "ClusterRole")}
    assert defined == OPERATOR_ROLES | PROXY_ROLES


def rules(name: str) -> list[dict[str, Any]]:
    return [r for d in documents(ROOT / "base" / name) for r in d.get("rules", [])]


def test_rbac_grants_no_wildcards_and_no_secret_deletion() -> None:
    # Secrets are listed and watched (certop's own, by label) but never deleted or updated.
    for rule in rules("rbac.yaml") + rules("rbac-proxy.yaml"):
        assert "*" not in rule["verbs"] and "*" not in rule["resources"]
        assert "*" not in rule["apiGroups"] and "update" not in rule["verbs"]
    for rule in rules("rbac.yaml"):
        if "secrets" in rule["resources"]:
            assert sorted(rule["verbs"]) == ["create", "get", "list", "patch", "watch"]


def test_the_proxy_writes_only_ingress_status_its_lease_and_events() -> None:
    writes = {"create", "patch", "delete", "update", "deletecollection"}
    written = {(g, res) for rule in rules("rbac-proxy.yaml") if writes & set(rule["verbs"])
               for g in rule["apiGroups"] for res in rule["resources"]}
    assert written == {("networking.k8s.io", "ingresses/status"), ("", "events"),
                       ("coordination.k8s.io", "leases")}
    for rule in rules("rbac-proxy.yaml"):
        if "secrets" in rule["resources"]:
            assert sorted(rule["verbs"]) == ["list", "watch"]  # by type, never one by name
    (role,) = [d for d in documents(ROOT / "base" / "rbac-proxy.yaml") if d["kind"] == "Role"]
    assert role["metadata"] == {"name": "certop-proxy-status", "namespace": "certop"}
