"""Bad input: one line naming file, object and field; exit code 2; nothing written."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from certop.standalone.runner import StandaloneSettings, load_config

INGRESS = """\
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: {name}
spec:
  tls:
    - hosts: [{tls_hosts}]
      secretName: {secret}
  rules:
    - host: "{host}"
      http:
        paths:
          - path: /
{path_type}            backend:
              service:
                name: {service}
                port:
                  number: 80
"""


def ingress(name: str = "web", host: str = "a.example.test", tls_hosts: str | None = None,
            secret: str = "web-tls", service: str = "web",
            path_type: str = "            pathType: Prefix\n") -> str:
    return INGRESS.format(name=name, host=host, tls_hosts=tls_hosts or f"\"{host}\"", secret=secret,
                          service=service, path_type=path_type)


CASES = [
    pytest.param("kind: Ingress\nmetadata: {name: [unclosed\n", "line 3",
                 "valid YAML", id="yaml-does-not-parse"),
    pytest.param("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n",
                 "Deployment: apiVersion/kind", "not apps/v1/Deployment", id="unknown-kind"),
    pytest.param(ingress(path_type=""),
                 "Ingress default/web: spec.rules[0].http.paths[0].pathType",
                 "required", id="missing-pathType"),
    pytest.param(ingress(service="api"),
                 "Ingress default/web: spec.rules[0].http.paths[0].backend.service",
                 "--service api:80=HOST:PORT", id="backend-not-mapped"),
    pytest.param(ingress(host="*.example.test"),
                 "Ingress default/web: spec.tls[0].hosts[0]", "needs a DNS-01 solver",
                 id="wildcard-with-http01"),
    pytest.param(ingress() + "---\n" + ingress(name="other", host="b.example.test"),
                 "Ingress default/other: spec.tls[0].secretName", "already used",
                 id="same-secret-other-hosts"),
]


@pytest.mark.parametrize(("manifest", "where", "expected"), CASES)
def test_bad_input_is_one_clear_line_and_exit_2(tmp_path: Path, manifest: str, where: str,
                                                 expected: str) -> None:
    path = tmp_path / "site.yaml"
    path.write_text(manifest)
    state = tmp_path / "state"
    result = subprocess.run(
        [sys.executable, "-m", "certop.cli", "standalone", "-f", str(path),
         "--acme-directory", "https://127.0.0.1:9/dir", "--state-dir", str(state),
         "--listen", "127.0.0.1", "--http-port", "0", "--https-port", "0",
         "--service", "web=127.0.0.1:9"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"certop: error: {path}")
    assert where in lines[0] and expected in lines[0]
    assert "Traceback" not in result.stderr
    assert not state.exists()


def test_a_tls_host_no_rule_serves_is_only_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    path.write_text(ingress(tls_hosts="a.example.test, b.example.test"))
    from certop.core.models import AcmeIssuer, ObjectRef

    settings = StandaloneSettings(
        files=(path,), state_dir=tmp_path / "state", services=("web=127.0.0.1:9",),
        cli_issuer=AcmeIssuer(ObjectRef("ClusterIssuer", "", "default"), "https://x/dir", None),
    )
    config = load_config(settings)
    assert len(config.specs) == 1
    assert [w for w in config.warnings if "b.example.test is served by no rule" in w]


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "certop.cli", "standalone", "-f", str(tmp_path / "nope.yaml"),
         "--state-dir", str(tmp_path / "state")],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == textwrap.dedent(
        f"certop: error: {tmp_path / 'nope.yaml'}: a readable file or directory of manifests")
