"""DNS-01 end to end in standalone mode: `certop standalone` (a real process) with a
cert-manager RFC 2136 ClusterIssuer (only its apiVersion changed) and the TSIG Secret among
the manifests, a real BIND taking the updates, Pebble resolving at that BIND: one
certificate for `*.example.test` and `example.test`, served over HTTPS to curl, and the
challenge records gone from BIND afterwards."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import bindctl
import dns.message
import dns.query
import dns.rdatatype
import pebblectl
import pytest
from echo import Echo

ZONE = "example.test"
KEY = "certop-key"


@pytest.fixture
def bind(tmp_path: Path) -> Iterator[bindctl.BindInfo]:
    secret = os.urandom(32)
    zone = bindctl.Zone(ZONE, KEY, records=["@ 60 A 127.0.0.1", "* 60 A 127.0.0.1"])
    with bindctl.running(tmp_path / "bind", [zone], {KEY: secret}) as info:
        yield info


README = Path(__file__).resolve().parents[2] / "README.md"


def readme_issuer() -> str:
    """The README's DNS-01 example: a cert-manager RFC 2136 ClusterIssuer with only its
    apiVersion changed, and its TSIG Secret."""
    text = README.read_text()
    start = text.index("```yaml\n", text.index("### DNS-01")) + len("```yaml\n")
    return text[start:text.index("\n```", start)] + "\n"


def manifests(bind: bindctl.BindInfo, pebble: pebblectl.PebbleInfo,
              server: str | None = None) -> str:
    """The README's ClusterIssuer and TSIG Secret with this test's values (ACME `server`:
    Pebble's directory unless given, trusted through caBundle; the nameserver; the secret),
    and the Ingress for `*.example.test` and `example.test`."""
    tsig = base64.b64encode(base64.b64encode(bind.keys[KEY])).decode()
    ca = base64.b64encode(Path(pebble.api_ca).read_bytes()).decode()
    issuer = readme_issuer()
    for old, new in (("https://acme-v02.api.letsencrypt.org/directory",
                      f"{server or pebble.directory_url}\n    caBundle: {ca}"),
                     ("192.0.2.53:53", bind.nameserver),
                     ("<base64 of the tsig-keygen secret>", tsig)):
        assert old in issuer, f"README's DNS-01 example changed: {old} not found"
        issuer = issuer.replace(old, new)
    assert f"tsigKeyName: {KEY}" in issuer and "apiVersion: certop.dev/v1" in issuer
    return issuer + """\
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: wild
  annotations:
    cert-manager.io/cluster-issuer: dns
spec:
  tls:
    - hosts: ["*.example.test", "example.test"]
      secretName: wild-tls
  rules:
    - host: "*.example.test"
      http:
        paths:
          - {path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}
    - host: example.test
      http:
        paths:
          - {path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}
"""


def txt_names(bind: bindctl.BindInfo) -> set[str]:
    """The values at _acme-challenge.example.test, as BIND serves them."""
    response = dns.query.udp(dns.message.make_query(f"_acme-challenge.{ZONE}.",
                                                    dns.rdatatype.TXT),
                             bind.host, port=bind.port, timeout=2)
    return {b"".join(r.strings).decode() for rrset in response.answer for r in rrset}


def curl(port: int, host: str, root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "--silent", "--show-error", "--max-time", "5", "--cacert", str(root),
         "--resolve", f"{host}:{port}:127.0.0.1", f"https://{host}:{port}/"],
        capture_output=True, text=True, check=False)


def start(tmp_path: Path, files: Path, http_port: int, https_port: int,
          echo: Echo, log: Path) -> subprocess.Popen[bytes]:
    """`certop standalone` over `files`, its output appended to `log`."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "certop.cli", "standalone", "-f", str(files),
             "--state-dir", str(tmp_path / "state"), "--listen", "127.0.0.1",
             "--http-port", str(http_port), "--https-port", str(https_port),
             "--service", f"web=127.0.0.1:{echo.port}"],
            stdout=out, stderr=subprocess.STDOUT)


@pytest.mark.slow
def test_a_wildcard_and_its_apex_through_rfc2136_are_served_over_https(
        tmp_path: Path, bind: bindctl.BindInfo) -> None:
    http_port, https_port = pebblectl.free_port(), pebblectl.free_port()
    with pebblectl.running(tmp_path / "pebble", http_port=http_port,
                           dns_server=bind.nameserver) as pebble, Echo("web") as echo:
        root = tmp_path / "root.pem"
        root.write_text(pebble.root_pem())
        files = tmp_path / "site.yaml"
        files.write_text(manifests(bind, pebble))
        log = tmp_path / "certop.log"
        proc = start(tmp_path, files, http_port, https_port, echo, log)
        try:
            deadline = time.monotonic() + 60
            while (answer := curl(https_port, "app.example.test", root)).returncode != 0:
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, (answer.stderr, log.read_text())
                time.sleep(0.1)  # polling the condition above (curl verifies the chain)
            assert "web" in answer.stdout
            apex = curl(https_port, "example.test", root)
            assert apex.returncode == 0 and "web" in apex.stdout, apex.stderr
            # Both challenges' values are gone once the order is done.
            assert txt_names(bind) == set()
        finally:
            pebblectl.stop_process(proc)


@pytest.mark.slow
def test_a_resumed_order_removes_the_records_its_crashed_run_left(
        tmp_path: Path, bind: bindctl.BindInfo) -> None:
    """A run answers the DNS-01 challenges and dies (no cleanup); the next run resumes the
    order, finds the authorizations valid (nothing to present) and still removes the
    records: the journal said what was presented."""
    from certop.acme.accounts import Account
    from certop.acme.orders import OrderSession, Stage
    from certop.core import issuers
    from certop.core.models import CertificateSpec, Fqdn, SecretName
    from certop.store.memory import MemoryAccountStore, MemoryOrderJournal
    from solvers.base import SolverContext
    from solvers.http01 import TokenStore
    from solvers.registry import SolverRegistry

    with pebblectl.running(tmp_path / "pebble", http_port=pebblectl.free_port(),
                           dns_server=bind.nameserver) as pebble:
        issuer = issuers.parse_issuer({
            "apiVersion": "certop.dev/v1", "kind": "ClusterIssuer", "metadata": {"name": "dns"},
            "spec": {"acme": {"server": pebble.directory_url, "solvers": [{"dns01": {
                "rfc2136": {"nameserver": bind.nameserver, "tsigKeyName": KEY,
                            "tsigAlgorithm": "HMACSHA256",
                            "tsigSecretSecretRef": {"name": "tsig", "key": "k"}}}}]}}},
            "issuer.yaml", lambda namespace, name: None)
        secret = base64.b64encode(bind.keys[KEY])
        context = SolverContext(TokenStore(), secrets=lambda name, key: secret)
        spec = CertificateSpec(namespace="default", secret_name=SecretName("wild-tls"),
                               hosts=(Fqdn("*.example.test"), Fqdn("example.test")),
                               issuer="dns")
        account = Account(issuer, MemoryAccountStore(), verify=pebble.api_ca)
        journal = MemoryOrderJournal()

        def session() -> OrderSession:
            return OrderSession(spec, account, SolverRegistry().bind(context), journal,
                                poll_min=0.05, poll_max=0.5)

        first = session()
        deadline = time.monotonic() + 60
        # Validated and finalizing: the run dies here, its records still in DNS.
        while (step := first.step()).stage is not Stage.FINALIZE:
            assert time.monotonic() < deadline and not step.done
            time.sleep(step.after)  # the order's next check, as the runners schedule it
        assert len(txt_names(bind)) == 2
        again = session()
        while not (step := again.step()).done:
            assert time.monotonic() < deadline
            time.sleep(step.after)  # the order's next check, as the runners schedule it
        # The resumed run had nothing to present (the order was past its challenges) and
        # removed what the journal said the first one had put there.
        assert again.resumed and step.fullchain_pem is not None
        assert txt_names(bind) == set()


@pytest.mark.slow
def test_kill_9_with_the_records_in_dns_then_a_restart_removes_them(
        tmp_path: Path, bind: bindctl.BindInfo) -> None:
    """A whole `certop standalone` process is killed (-9) while its order waits for the CA
    (the counting proxy in front of Pebble shows it pending for ever), its two TXT values
    still in BIND. The next process on the same state directory resumes that order (no
    second newOrder), serves the certificate, and removes the values: asked of BIND."""
    from faultproxy import FaultProxy

    http_port, https_port = pebblectl.free_port(), pebblectl.free_port()
    with pebblectl.running(tmp_path / "pebble", http_port=http_port,
                           dns_server=bind.nameserver) as pebble, \
            FaultProxy(pebble, Path(pebble.api_ca).parent) as ca, Echo("web") as echo:
        ca.rate_limited = False
        ca.hold_pending = True
        root = tmp_path / "root.pem"
        root.write_text(pebble.root_pem())
        files = tmp_path / "site.yaml"
        files.write_text(manifests(bind, pebble, server=ca.directory_url))
        log = tmp_path / "certop.log"
        proc = start(tmp_path, files, http_port, https_port, echo, log)
        try:
            deadline = time.monotonic() + 60
            # Both values presented and both challenges answered: the order then waits.
            while len(txt_names(bind)) < 2 or \
                    sum(1 for path in list(ca.counts) if path.startswith("/chalZ/")) < 2:
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)  # polling BIND and the proxy's counts
            proc.kill()
            proc.wait(timeout=10)
            assert len(txt_names(bind)) == 2  # nobody cleaned up
            ca.hold_pending = False
            proc = start(tmp_path, files, http_port, https_port, echo, log)
            while (answer := curl(https_port, "app.example.test", root)).returncode != 0:
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, (answer.stderr, log.read_text())
                time.sleep(0.1)  # polling the condition above (curl verifies the chain)
            assert "web" in answer.stdout
            assert txt_names(bind) == set(), log.read_text()
            assert len(ca.orders) == 1, ca.orders  # the order was resumed, not placed again
        finally:
            pebblectl.stop_process(proc)


@pytest.mark.slow
def test_a_wrong_tsig_key_is_one_clear_line_per_attempt_and_never_a_second_order(
        tmp_path: Path, bind: bindctl.BindInfo) -> None:
    """BIND refuses the update signed with a wrong secret: each attempt fails with a line
    naming the issuer field and the key, the attempts follow the backoff, and the retry
    resumes the one order (the counting proxy in front of Pebble sees one newOrder)."""
    from faultproxy import FaultProxy

    http_port, https_port = pebblectl.free_port(), pebblectl.free_port()
    wrong = bindctl.BindInfo(bind.host, bind.port, {KEY: os.urandom(32)}, bind.zones,
                             bind.workdir)
    with pebblectl.running(tmp_path / "pebble", http_port=http_port,
                           dns_server=bind.nameserver) as pebble, \
            FaultProxy(pebble, Path(pebble.api_ca).parent) as ca, Echo("web") as echo:
        ca.rate_limited = False
        files = tmp_path / "site.yaml"
        files.write_text(manifests(wrong, pebble, server=ca.directory_url))
        log = tmp_path / "certop.log"
        proc = start(tmp_path, files, http_port, https_port, echo, log)
        try:
            deadline = time.monotonic() + 60
            while "attempt 2 failed, next attempt in" not in log.read_text():
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)  # polling the log for the second attempt's line
            failures = [line for line in log.read_text().splitlines()
                        if "attempt" in line and "failed, next attempt in" in line]
            assert len(failures) == 2, failures
            for line in failures:
                assert ("ClusterIssuer default/dns: spec.acme.solvers[0].dns01.rfc2136."
                        "tsigSecretSecretRef: " in line), line
                assert f"rejected the signature of key {KEY}" in line, line
            assert len(ca.orders) == 1, ca.orders
            assert txt_names(bind) == set()
        finally:
            pebblectl.stop_process(proc)
