"""manifests/: every object validates against the Kubernetes schemas (kubernetes-validate),
the example issuers validate against certop's own CRD schemas and parse as certop reads them,
and kustomization.yaml lists every manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from certop.core.issuers import parse_issuer

ROOT = Path(__file__).resolve().parents[2] / "manifests"
K8S_VERSION = kubernetes_validate.latest_version()


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def kustomized() -> list[Path]:
    kustomization = yaml.safe_load((ROOT / "kustomization.yaml").read_text())
    return [ROOT / r for r in kustomization["resources"]]


def test_kustomization_lists_every_manifest() -> None:
    on_disk = {p for p in ROOT.rglob("*.yaml")
               if p.name != "kustomization.yaml" and "examples" not in p.parts}
    assert set(kustomized()) == on_disk


@pytest.mark.parametrize("path", kustomized(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_object_validates_against_the_kubernetes_schemas(path: Path) -> None:
    for doc in documents(path):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def crd_schemas() -> dict[str, dict[str, Any]]:
    schemas = {}
    for path in (ROOT / "crds").glob("*.yaml"):
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
    (crd,) = documents(ROOT / "crds" / "certificates.yaml")
    columns = [c["name"] for c in crd["spec"]["versions"][0]["additionalPrinterColumns"]]
    assert columns[:4] == ["Ready", "Secret", "Not After", "Renewal"]
    assert crd["spec"]["versions"][0]["subresources"] == {"status": {}}


def test_the_operator_runs_unprivileged_with_a_read_only_root() -> None:
    (deployment,) = documents(ROOT / "deployment.yaml")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert deployment["spec"]["replicas"] == 2


def test_rbac_grants_no_wildcards_and_no_secret_deletion() -> None:
    # Secrets are listed and watched (certop's own, by label) but never deleted or updated.
    for doc in documents(ROOT / "rbac.yaml"):
        for rule in doc.get("rules", []):
            assert "*" not in rule["verbs"] and "*" not in rule["resources"]
            if "secrets" in rule["resources"]:
                assert sorted(rule["verbs"]) == ["create", "get", "list", "patch", "watch"]
