"""ClusterIssuer manifests in standalone mode: caBundle, External Account Binding, Secrets."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from pathlib import Path

import pebblectl
import pytest
from conftest import https_request, standalone
from echo import Echo
from manifest_yaml import write_ingress

HOST = "eab.certop.test"
HMAC = base64.urlsafe_b64encode(b"0123456789abcdef0123456789abcdef").decode().rstrip("=")


def issuer_yaml(server: str, ca_pem: str, eab: bool) -> str:
    ca = base64.b64encode(ca_pem.encode()).decode()
    binding = """
    externalAccountBinding:
      keyID: kid-1
      keySecretRef:
        name: eab-hmac
        key: secret""" if eab else ""
    return f"""apiVersion: cert-manager.io/v1
kind: ClusterIssuer
metadata:
  name: pebble
spec:
  acme:
    server: {server}
    email: eab@certop.test
    caBundle: {ca}
    privateKeySecretRef:
      name: pebble-account{binding}
    solvers:
      - http01:
          ingress:
            ingressClassName: certop
---
apiVersion: v1
kind: Secret
metadata:
  name: eab-hmac
  namespace: default
stringData:
  secret: {HMAC}
"""


@pytest.fixture
def eab_pebble(tmp_path: Path) -> Iterator[pebblectl.PebbleInfo]:
    with pebblectl.running(tmp_path / "pebble", http_port=pebblectl.free_port(),
                           eab_keys={"kid-1": HMAC}) as info:
        yield info


async def test_a_cluster_issuer_with_eab_and_ca_bundle_issues(
        tmp_path: Path, eab_pebble: pebblectl.PebbleInfo) -> None:
    issuer = tmp_path / "issuer.yaml"
    issuer.write_text(issuer_yaml(eab_pebble.directory_url,
                                  Path(eab_pebble.api_ca).read_text(), eab=True))
    ingress = write_ingress(tmp_path / "web.yaml", "web", [HOST], "eab-tls",
                            extra_annotations={"cert-manager.io/cluster-issuer": "pebble"},
                            issuer=None)
    with Echo("web") as echo:
        async with standalone(eab_pebble, tmp_path / "state", [issuer, ingress],
                              [f"web=127.0.0.1:{echo.port}"], cli_issuer=False) as run:
            await run.runner.wait_ready(timeout=60)
            status, _ = await asyncio.to_thread(https_request, run.https_port, HOST,
                                                eab_pebble.root_pem())
            assert status == 200


async def test_without_the_binding_the_ca_refusal_is_reported_not_retried_hot(
        tmp_path: Path, eab_pebble: pebblectl.PebbleInfo) -> None:
    issuer = tmp_path / "issuer.yaml"
    issuer.write_text(issuer_yaml(eab_pebble.directory_url,
                                  Path(eab_pebble.api_ca).read_text(), eab=False))
    ingress = write_ingress(tmp_path / "web.yaml", "web", [HOST], "eab-tls", issuer="pebble")
    with Echo("web") as echo:
        async with standalone(eab_pebble, tmp_path / "state", [issuer, ingress],
                              [f"web=127.0.0.1:{echo.port}"], cli_issuer=False) as run:
            await run.runner.wait_until(lambda: run.runner.stats.failures == 1)
            event = run.runner.stats.events[0]
            assert "externalAccountRequired" in event and "next attempt in" in event
            assert run.runner.stats.orders == 1
