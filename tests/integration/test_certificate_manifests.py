"""Standalone mode reads Certificate manifests (certop.dev/v1 and cert-manager.io/v1), read
with the conversion cluster mode uses, against a real Pebble."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pebblectl
import pytest
from conftest import standalone
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from echo import Echo
from manifest_yaml import ingress_yaml
from test_standalone_pebble import CertopProcess

from certop.store.files import FileCertStore

HOST = "cert.certop.test"
OTHER = "www.cert.certop.test"


def certificate_yaml(api: str, name: str, secret: str, hosts: list[str],
                     extra: str = "") -> str:
    return f"""apiVersion: {api}
kind: Certificate
metadata: {{name: {name}, namespace: default}}
spec:
  secretName: {secret}
  dnsNames: [{", ".join(hosts)}]
  issuerRef: {{name: default, kind: ClusterIssuer, group: {api.split("/")[0]}}}
{extra}"""


@pytest.fixture
def backend() -> Iterator[Echo]:
    with Echo("web") as echo:
        yield echo


async def test_a_certificate_manifest_alone_is_issued_into_the_state_dir(
        tmp_path: Path, pebble: pebblectl.PebbleInfo) -> None:
    path = tmp_path / "cert.yaml"
    path.write_text(certificate_yaml(
        "cert-manager.io/v1", "site", "site-tls", [HOST, OTHER],
        "  privateKey: {algorithm: RSA, size: 2048}\n"))
    state = tmp_path / "state"
    async with standalone(pebble, state, [path], []) as run:
        assert [str(s) for s in run.runner.config.specs] == [  # type: ignore[union-attr]
            f"default/site-tls [{HOST}, {OTHER}]"]
        await run.runner.wait_ready(timeout=60)
    stored = FileCertStore(state).load("default", "site-tls")
    assert stored is not None
    cert = x509.load_pem_x509_certificate(stored.fullchain_pem)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(names.get_values_for_type(x509.DNSName)) == sorted([HOST, OTHER])
    key = load_pem_private_key(stored.key_pem, None)
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048
    key_file = state / "certs/default/site-tls/current/tls.key"
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"


def test_a_certificate_manifest_serves_https_for_a_host_an_ingress_routes(
        tmp_path: Path, pebble: pebblectl.PebbleInfo, pebble_root: str, backend: Echo) -> None:
    cert = tmp_path / "cert.yaml"
    cert.write_text(certificate_yaml("certop.dev/v1", "site", "site-tls", [HOST]))
    ingress = tmp_path / "web.yaml"
    ingress.write_text(ingress_yaml("web", HOST, tls=False))  # routes the host, names no Secret
    certop = CertopProcess(tmp_path, pebble, [cert, ingress], [f"web=127.0.0.1:{backend.port}"],
                           pebble.http_port, tmp_path / "state")
    try:
        status, body = certop.wait_https(HOST, pebble_root)
        assert status == 200
        assert json.loads(body)["service"] == "web"
    finally:
        assert certop.stop() == 0
    assert (tmp_path / "state/certs/default/site-tls/current/tls.crt").is_file()
