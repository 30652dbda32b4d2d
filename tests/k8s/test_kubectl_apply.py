"""The manifests apply with kubectl (installed on these machines) to the emulator.

The Namespace object is left out: kmock 0.8 cannot create cluster-scoped namespaces (its
path parser takes `namespaces` for a namespace segment); every other manifest goes through
kubectl's own client-side apply."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml
from kube import EmulatorThread

ROOT = Path(__file__).resolve().parents[2] / "manifests"
FILES = ["crds/certificates.yaml", "crds/clusterissuers.yaml", "crds/issuers.yaml",
         "rbac.yaml", "service.yaml", "deployment.yaml", "ingressclass.yaml"]


def test_kubectl_applies_the_manifests(tmp_path: Path) -> None:
    with EmulatorThread(bundled=True) as kube:
        config = tmp_path / "kubeconfig"
        config.write_text(
            f'apiVersion: v1\nkind: Config\nclusters: [{{name: e, cluster: {{server: '
            f'"{kube.url}"}}}}]\nusers: [{{name: u, user: {{token: x}}}}]\ncontexts: '
            "[{name: e, context: {cluster: e, user: u}}]\ncurrent-context: e\n")
        kubectl = ["kubectl", "--kubeconfig", str(config)]
        applied = subprocess.run(
            [*kubectl, "apply", "--validate=false",
             *[arg for f in FILES for arg in ("-f", str(ROOT / f))]],
            capture_output=True, text=True, timeout=60, check=False)
        assert applied.returncode == 0, applied.stderr
        objects = sum(1 for f in FILES for d in yaml.safe_load_all((ROOT / f).read_text()) if d)
        assert applied.stdout.count(" created") == objects == 11
        replicas = subprocess.run(
            [*kubectl, "get", "deployment", "certop", "-n", "certop", "-o",
             "jsonpath={.spec.replicas}"], capture_output=True, text=True, timeout=60,
            check=False)
        assert replicas.stdout == "2", replicas.stderr
