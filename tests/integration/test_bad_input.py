"""Bad input: one line naming file, object and field; exit code 2; nothing written."""

from __future__ import annotations

import http.client
import json
import os
import resource
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pebblectl
import pytest
from echo import Echo

from certop.standalone.runner import StandaloneSettings, load_config

INGRESS = """\
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: {name}
{extra_meta}spec:
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
            path_type: str = "            pathType: Prefix\n", namespace: str | None = None,
            annotations: dict[str, str] | None = None) -> str:
    extra = f"  namespace: {json.dumps(namespace)}\n" if namespace is not None else ""
    if annotations:
        extra += "  annotations:\n" + "".join(f"    {k}: {json.dumps(v)}\n"
                                               for k, v in annotations.items())
    return INGRESS.format(name=name, host=host, tls_hosts=tls_hosts or f"\"{host}\"", secret=secret,
                          service=service, path_type=path_type, extra_meta=extra)


def issuer(name: str = "le", key_secret: str = "le-account") -> str:
    return (f"apiVersion: certop.dev/v1\nkind: ClusterIssuer\n"
            f"metadata: {{name: {json.dumps(name)}}}\nspec:\n  acme:\n    server: https://127.0.0.1:9/dir\n"
            f"    privateKeySecretRef: {{name: {json.dumps(key_secret)}}}\n")


def certificate(name: str = "site", hosts: str = "[a.example.test]",
                secret: str = "site-tls", issuer: str = "default", extra: str = "",
                api: str = "certop.dev/v1", namespace: str | None = None) -> str:
    """A Certificate manifest; `extra`: more lines of its spec (indented two spaces)."""
    meta = f"{{name: {json.dumps(name)}" + (f", namespace: {json.dumps(namespace)}}}"
                                           if namespace is not None else "}")
    return (f"apiVersion: {api}\nkind: Certificate\nmetadata: {meta}\nspec:\n"
            f"  secretName: {json.dumps(secret)}\n  dnsNames: {hosts}\n"
            f"  issuerRef: {{name: {json.dumps(issuer)}}}\n{extra}")


def laughs(levels: int = 9) -> str:
    """The "billion laughs": each level nine aliases of the one before (9**9 strings)."""
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, cur in zip("abcdefgh"[: levels - 1], "bcdefghi"[: levels - 1], strict=True):
        lines.append(f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def dns_issuer(block: str, secret: bool = True) -> str:
    """A ClusterIssuer `dns` whose one solver is `dns01: {block}`, an Ingress for it and
    (`secret`) the TSIG Secret `tsig` (key `secret`)."""
    return (ingress(annotations={"cert-manager.io/cluster-issuer": "dns"}) + "---\n"
            "apiVersion: cert-manager.io/v1\nkind: ClusterIssuer\nmetadata: {name: dns}\n"
            "spec:\n  acme:\n    server: https://127.0.0.1:9/dir\n"
            f"    privateKeySecretRef: {{name: dns-account}}\n    solvers:\n"
            f"      - dns01: {block}\n"
            + ("---\napiVersion: v1\nkind: Secret\nmetadata: {name: tsig}\n"
               "stringData: {secret: c2VjcmV0}\n" if secret else ""))


RFC2136 = "{{rfc2136: {{nameserver: '127.0.0.1:9', tsigKeyName: k, tsigAlgorithm: {algo}, " \
    "tsigSecretSecretRef: {{name: tsig, key: secret}}}}}}"
DNS01 = "ClusterIssuer default/dns: spec.acme.solvers[0].dns01"


LABEL = "a DNS-1123 label"
SUBDOMAIN = "a DNS-1123 subdomain"
BODY_SIZE = "nginx.ingress.kubernetes.io/proxy-body-size"


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
    # Names that become paths under --state-dir: as the API server checks them.
    pytest.param(ingress(namespace="../../outside"), "Ingress web: metadata.namespace",
                 f"{LABEL} (lower-case letters", id="namespace-climbs-out"),
    pytest.param(ingress(namespace="/tmp/elsewhere"), "Ingress web: metadata.namespace",
                 f"{LABEL}", id="namespace-absolute"),
    pytest.param(ingress(namespace="n" * 64), "Ingress web: metadata.namespace",
                 "at most 63 characters", id="namespace-too-long"),
    pytest.param(ingress(namespace="Shop"), "Ingress web: metadata.namespace",
                 "not 'Shop'", id="namespace-upper-case"),
    pytest.param(ingress(name="web/../../x"), "Ingress: metadata.name",
                 SUBDOMAIN, id="ingress-name-with-slash"),
    pytest.param(ingress(name="w" * 254), "Ingress: metadata.name",
                 "at most 253 characters", id="ingress-name-too-long"),
    pytest.param(ingress(secret="../../../outside"), "Ingress default/web: spec.tls[0].secretName",
                 SUBDOMAIN, id="secret-name-climbs-out"),
    pytest.param(ingress(secret="\"web-tls\\n\""), "Ingress default/web: spec.tls[0].secretName",
                 "not 'web-tls\\n'", id="secret-name-with-newline"),
    pytest.param(ingress() + "---\n" + issuer(name="../evil"), "ClusterIssuer: metadata.name",
                 SUBDOMAIN, id="issuer-name-climbs-out"),
    pytest.param(ingress() + "---\n" + issuer(key_secret="../../k"),
                 "ClusterIssuer default/le: spec.acme.privateKeySecretRef.name", SUBDOMAIN,
                 id="account-key-secret-climbs-out"),
    pytest.param(ingress() + "---\napiVersion: v1\nkind: Secret\n"
                 "metadata: {name: web-tls, namespace: ../x}\nstringData: {a: b}\n",
                 "Secret web-tls: metadata.namespace", LABEL, id="secret-namespace-climbs-out"),
    pytest.param(ingress() + "---\napiVersion: v1\nkind: Secret\n"
                 "metadata: {name: /web-tls}\nstringData: {a: b}\n",
                 "Secret: metadata.name", SUBDOMAIN, id="secret-name-absolute"),
    # Certificate manifests: the same fields and checks as cluster mode's Certificates.
    pytest.param(certificate(hosts="[]"), "Certificate default/site: spec.dnsNames",
                 "at least one DNS name", id="certificate-no-dnsNames"),
    pytest.param(certificate(hosts="[Bad_Host.test]"),
                 "Certificate default/site: spec.dnsNames[0]", "a DNS name like",
                 id="certificate-bad-dnsName"),
    pytest.param(certificate(hosts="[a.example.test, 7]"),
                 "Certificate default/site: spec.dnsNames[1]", "a DNS name like",
                 id="certificate-dnsName-not-a-string"),
    pytest.param(certificate(secret="../../outside"),
                 "Certificate default/site: spec.secretName", SUBDOMAIN,
                 id="certificate-secret-climbs-out"),
    pytest.param(certificate(namespace="../x"), "Certificate site: metadata.namespace", LABEL,
                 id="certificate-namespace-climbs-out"),
    pytest.param(certificate(issuer="nope"), "Certificate default/site: spec.issuerRef.name",
                 "a known ClusterIssuer, not 'nope'", id="certificate-unknown-issuer"),
    pytest.param(certificate(extra="  issuerRef: {name: default, kind: Vault}\n"),
                 "Certificate default/site: spec.issuerRef.kind", "ClusterIssuer or Issuer",
                 id="certificate-issuer-kind"),
    pytest.param(certificate(extra="  privateKey: {algorithm: RSA, size: 1024}\n"),
                 "Certificate default/site: spec.privateKey.size", "2048, 3072 or 4096",
                 id="certificate-rsa-1024"),
    pytest.param(certificate(extra="  privateKey: {rotationPolicy: Sometimes}\n"),
                 "Certificate default/site: spec.privateKey.rotationPolicy", "Always or Never",
                 id="certificate-rotation-policy"),
    pytest.param(certificate(extra="  renewBefore: soon\n"),
                 "Certificate default/site: spec.renewBefore", "a duration such as 720h",
                 id="certificate-renewBefore"),
    pytest.param(certificate(hosts="['*.example.test']"),
                 "Certificate default/site: spec.dnsNames[0]", "needs a DNS-01 solver",
                 id="certificate-wildcard-with-http01"),
    pytest.param(ingress() + "---\n" + certificate(secret="web-tls", hosts="[b.example.test]"),
                 "Certificate default/site: spec.secretName", "already used",
                 id="certificate-same-secret-as-an-ingress-other-hosts"),
    pytest.param(certificate(api="cert-manager.io/v1", extra="  bogus: [\n"), "line",
                 "valid YAML", id="certificate-yaml"),
    pytest.param(certificate(api="cert-manager.io/v2"), "Certificate: apiVersion/kind",
                 "not cert-manager.io/v2/Certificate", id="certificate-unknown-version"),
    # An issuer's DNS-01 settings are checked at start-up, before any order (exit 2).
    pytest.param(dns_issuer("{route66: {}}"), f"{DNS01}:",
                 "a DNS provider certop has (cloudflare, exec, rfc2136), not 'route66'",
                 id="dns01-unknown-provider"),
    pytest.param(dns_issuer(RFC2136.format(algo="HMACSHA256"), secret=False),
                 f"{DNS01}.rfc2136.tsigSecretSecretRef", "Secret tsig with key secret: not found",
                 id="dns01-tsig-secret-missing"),
    pytest.param(dns_issuer(RFC2136.format(algo="HMACSHA3")), f"{DNS01}.rfc2136.tsigAlgorithm",
                 "one of HMACMD5, HMACSHA1", id="dns01-unknown-algorithm"),
    pytest.param(dns_issuer("{rfc2136: {nameserver: 'ns:x', tsigKeyName: k}}"),
                 f"{DNS01}.rfc2136.nameserver", "host[:port]", id="dns01-bad-nameserver"),
    pytest.param(dns_issuer("{exec: {command: /bin/true}}"), f"{DNS01}.exec.command",
                 "--dns01-exec-allow", id="dns01-exec-not-allowed"),
    # Anything that goes wrong while reading manifests is a configuration error.
    pytest.param(ingress(annotations={BODY_SIZE: "\u00b2"}),
                 f"Ingress default/web: metadata.annotations[{BODY_SIZE}]", "a size like 8m",
                 id="superscript-two-body-size"),
    pytest.param(ingress(annotations={"certop.dev/renew-before": "\u0663h"}),
                 "Ingress default/web: metadata.annotations[certop.dev/renew-before]",
                 "a duration such as 720h", id="arabic-indic-digit-renew-before"),
    pytest.param("kind: Ingress\nmetadata: " + "[" * 5000 + "]" * 5000 + "\n", "line 2",
                 "nested deeper than 100 levels", id="deeply-nested"),
    pytest.param(laughs() + "kind: *i\n", "line 5", "aliases expand to more than",
                 id="billion-laughs"),
]


MEMORY_CAP = 1 << 30


def _memory_cap() -> None:
    """certop under a 1 GiB address space: a YAML bomb ends in an error, never eats the host."""
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


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
        capture_output=True, text=True, timeout=60, check=False, preexec_fn=_memory_cap,
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


def _cli(tmp_path: Path, manifest: Path, state: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "certop.cli", "standalone", "-f", str(manifest),
            "--state-dir", str(state), "--listen", "127.0.0.1", *extra]


def _pebble_flags(pebble: pebblectl.PebbleInfo) -> list[str]:
    return ["--acme-directory", pebble.directory_url, "--acme-ca-bundle", pebble.api_ca,
            "--email", "test@certop.test", "--http-port", str(pebble.http_port),
            "--https-port", str(pebblectl.free_port()), "--service", "web=127.0.0.1:9"]


def _victim(tmp_path: Path) -> Path:
    """A directory outside the state directory shaped like a certificate's, with data in it."""
    victim = tmp_path / "outside" / "web-tls"
    for version in ("v1", "v2"):
        (victim / version).mkdir(parents=True)
        (victim / version / "precious").write_text("not certop's")
    return victim


def _tree(top: Path) -> list[str]:
    return sorted(str(p.relative_to(top)) for p in top.rglob("*"))


def _run_until(cmd: list[str], log: Path, escaped: Path, timeout: float = 60) -> int | None:
    """Run certop until it exits or `escaped` appears (the old behaviour); its exit code, or
    None when it was still running and had to be stopped."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while proc.poll() is None and not escaped.exists() and time.monotonic() < deadline:
            time.sleep(0.02)  # polls the condition itself: an exit or a file outside
        return proc.poll()
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.wait(timeout=15)


def test_a_namespace_climbing_out_of_the_state_dir_writes_and_removes_nothing(
        tmp_path: Path, pebble: pebblectl.PebbleInfo) -> None:
    victim = _victim(tmp_path)
    before = _tree(tmp_path / "outside")
    path = tmp_path / "site.yaml"
    path.write_text(ingress(namespace="../../outside", host="web.certop.test"))
    state = tmp_path / "state"
    log = tmp_path / "certop.log"
    code = _run_until(_cli(tmp_path, path, state, *_pebble_flags(pebble)), log,
                      victim / "current")
    # Before: the key of a real certificate landed in outside/web-tls/v3/ and v1 was removed.
    assert _tree(tmp_path / "outside") == before
    assert (victim / "v1" / "precious").read_text() == "not certop's"
    assert code == 2, log.read_text()
    assert log.read_text() == (
        f"certop: error: {path}: Ingress web: metadata.namespace: a DNS-1123 label (lower-case "
        "letters, digits and '-', starting and ending with a letter or digit, at most 63 "
        "characters, e.g. 'my-name'), not '../../outside'\n")
    assert not state.exists()


def test_a_symlink_in_the_state_dir_pointing_out_is_refused_at_start(
        tmp_path: Path, pebble: pebblectl.PebbleInfo) -> None:
    victim = _victim(tmp_path)
    before = _tree(tmp_path / "outside")
    path = tmp_path / "site.yaml"
    path.write_text(ingress(host="web.certop.test"))
    state = tmp_path / "state"
    (state / "certs").mkdir(parents=True)
    (state / "certs" / "default").symlink_to(tmp_path / "outside")
    log = tmp_path / "certop.log"
    code = _run_until(_cli(tmp_path, path, state, *_pebble_flags(pebble)), log,
                      victim / "current")
    assert _tree(tmp_path / "outside") == before
    assert code == 2, log.read_text()
    assert log.read_text() == (
        f"certop: error: {state / 'certs' / 'default'}: a directory inside the state directory "
        f"{state}, not a symlink (to {tmp_path / 'outside'}): certop never writes through one\n")
    assert sorted(p.name for p in state.iterdir()) == ["certs"]


class LiveCertop:
    """`certop standalone` serving plain HTTP from a manifest it watches."""

    def __init__(self, tmp_path: Path, manifest: Path, backend_port: int) -> None:
        self.http_port = pebblectl.free_port()
        self.log = tmp_path / "certop.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                _cli(tmp_path, manifest, tmp_path / "state", "--http-port", str(self.http_port),
                     "--https-port", str(pebblectl.free_port()),
                     "--service", f"web=127.0.0.1:{backend_port}"),
                stdout=out, stderr=subprocess.STDOUT, preexec_fn=_memory_cap)

    def text(self) -> str:
        return self.log.read_text()

    def wait_log(self, needle: str, count: int = 1, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.text().count(needle) < count:
            assert self.proc.poll() is None, f"certop exited: {self.text()}"
            assert time.monotonic() < deadline, f"no {needle!r} in log: {self.text()}"
            time.sleep(0.02)  # re-read the log: the condition itself is what we wait for

    def status(self, host: str) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=10)
        try:
            conn.request("GET", "/", headers={"Host": host})
            resp = conn.getresponse()
            resp.read()
            return resp.status
        finally:
            conn.close()

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=15)


PLAIN = """\
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: web
  annotations: {{{annotations}}}
spec:
  rules:
    - host: {host}
      http:
        paths:
          - {{path: /, pathType: Prefix, backend: {{service: {{name: web, port: {{number: 80}}}}}}}}
"""

BAD_EDITS = [
    pytest.param(PLAIN.format(annotations=f'{BODY_SIZE}: "\u00b2"', host="b.example.test"),
                 f"metadata.annotations[{BODY_SIZE}]: a size like 8m", id="superscript-two"),
    pytest.param("kind: Ingress\nmetadata: " + "[" * 5000 + "]" * 5000 + "\n",
                 "nested deeper than 100 levels", id="deeply-nested"),
    pytest.param(laughs() + "kind: *i\n", "aliases expand to more than", id="billion-laughs"),
]


def _edit(path: Path, text: str, tick: int) -> None:
    path.write_text(text)
    # Make sure each edit is visible as a change even within one mtime tick.
    os.utime(path, (time.time() + tick, time.time() + tick))


@pytest.mark.parametrize(("bad", "reason"), BAD_EDITS)
def test_a_bad_edit_is_logged_and_a_later_good_edit_is_still_applied(
        tmp_path: Path, bad: str, reason: str) -> None:
    path = tmp_path / "site.yaml"
    path.write_text(PLAIN.format(annotations="", host="a.example.test"))
    with Echo("web") as backend:
        certop = LiveCertop(tmp_path, path, backend.port)
        try:
            certop.wait_log("serving 1 Ingresses")
            assert certop.status("a.example.test") == 200
            _edit(path, bad, 5)
            certop.wait_log("manifests changed but are invalid, keeping the last good ones")
            assert reason in certop.text()
            assert certop.status("a.example.test") == 200
            _edit(path, PLAIN.format(annotations="", host="b.example.test"), 10)
            certop.wait_log("manifests changed: 1 Ingresses")
            assert certop.status("b.example.test") == 200
            assert certop.status("a.example.test") == 404
        finally:
            assert certop.stop() == 0
    assert "Traceback" not in certop.text()


def test_a_unicode_digit_in_a_flag_is_one_clear_line(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    path.write_text(ingress())
    result = subprocess.run(
        _cli(tmp_path, path, tmp_path / "state", "--acme-directory", "https://127.0.0.1:9/dir",
             "--http-port", "0", "--https-port", "0", "--service", "web=127.0.0.1:8\u00b2"),
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr == ("certop: error: --service: web=127.0.0.1:8\u00b2: an address "
                             "HOST:PORT after '=', e.g. 127.0.0.1:8080\n")
    assert not (tmp_path / "state").exists()
