"""`kubectl apply -k manifests/` (what the README tells users to run) against the emulator:
kubectl (installed on these machines) builds the kustomization and applies every object,
the Namespace included, through its own client-side apply. The emulator enforces the RBAC it
was just given: kubectl logged in as the operator's ServiceAccount gets what rbac.yaml grants
and is refused the rest."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml
from kmock_ext import ADMIN_USER, OPERATOR_USER, PROXY_USER
from kube import EmulatorThread

ROOT = Path(__file__).resolve().parents[2] / "manifests"


def test_kubectl_applies_the_kustomization(tmp_path: Path) -> None:
    listed = yaml.safe_load((ROOT / "kustomization.yaml").read_text())["resources"]
    objects = sum(1 for f in listed for d in yaml.safe_load_all((ROOT / f).read_text()) if d)
    with EmulatorThread(bundled=True, rbac=False) as kube:
        # kubectl sends no bearer token over plain HTTP: without credentials it is the admin
        # here, and `--as` (impersonation, which only the admin may do) is the operator.
        kube.emulator.anonymous = ADMIN_USER
        config = tmp_path / "kubeconfig"
        config.write_text(
            f'apiVersion: v1\nkind: Config\nclusters: [{{name: e, cluster: {{server: '
            f'"{kube.url}"}}}}]\nusers: [{{name: u, user: {{}}}}]\ncontexts: '
            "[{name: e, context: {cluster: e, user: u}}]\ncurrent-context: e\n")
        kubectl = ["kubectl", "--kubeconfig", str(config)]

        def run(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([*kubectl, *args], capture_output=True, text=True,
                                  timeout=60, check=False)

        applied = run("apply", "--validate=false", "-k", str(ROOT))
        assert applied.returncode == 0, applied.stderr
        assert applied.stdout.count(" created") == objects == 17, applied.stdout
        assert "namespace/certop created" in applied.stdout
        replicas = run("get", "deployment", "certop", "-n", "certop", "-o",
                       "jsonpath={.spec.replicas}")
        assert replicas.stdout == "2", replicas.stderr
        assert run("get", "namespace", "certop", "-o", "name").stdout.strip() == \
            "namespace/certop"
        # Applying again changes nothing.
        again = run("apply", "--validate=false", "-k", str(ROOT))
        assert again.returncode == 0, again.stderr
        assert " created" not in again.stdout, again.stdout
        # The applied RBAC, enforced for the operator's ServiceAccount.
        kube.denials_expected = True
        granted = run("--as", OPERATOR_USER, "get", "ingresses", "-A", "-o", "name")
        assert granted.returncode == 0, granted.stderr
        lease = run("--as", OPERATOR_USER, "get", "leases", "x", "-n", "certop")
        assert "Not Found" in lease.stderr, lease.stderr  # allowed, just absent
        for refused in (("get", "pods", "-n", "certop"),
                        ("get", "leases", "x", "-n", "default"),
                        ("delete", "secret", "x", "-n", "certop")):
            result = run("--as", OPERATOR_USER, *refused)
            assert result.returncode != 0 and "Forbidden" in result.stderr, (refused, result)
        # The proxy's: it reads what it serves and writes nothing but events.
        for allowed in (("get", "ingressclasses", "-o", "name"),
                        ("get", "endpointslices", "-A", "-o", "name"),
                        ("get", "services", "-A", "-o", "name")):
            result = run("--as", PROXY_USER, *allowed)
            assert result.returncode == 0, (allowed, result.stderr)
        for refused in (("get", "secret", "x", "-n", "certop"),
                        ("delete", "ingresses", "x", "-n", "certop"),
                        ("get", "pods", "-n", "certop")):
            result = run("--as", PROXY_USER, *refused)
            assert result.returncode != 0 and "Forbidden" in result.stderr, (refused, result)
        denied = "\n".join(kube.emulator.denied)
        for expected in ('cannot list resource "pods"', 'cannot get resource "leases" in '
                         'API group "coordination.k8s.io" in the namespace "default"',
                         'cannot delete resource "secrets"'):
            assert expected in denied, denied
