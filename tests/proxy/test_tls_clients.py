"""What TLS clients and scanners see of the real proxy (`certop standalone` in a subprocess with
certificates from a root -> intermediate -> leaf PKI): key exchange groups and cipher suites
through `openssl s_client`, Mozilla "intermediate" compliance through sslyze, session
resumption across `--workers`, and handshakes in progress in /metrics."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from certopctl import Process, process, wait_for
from echo import Echo
from manifest_yaml import ingress_yaml
from pki import Pki, make_pki

ROOT = Path(__file__).resolve().parents[2]
SSLYZE_VENV = ROOT / ".venv-sslyze"
SSLYZE = "sslyze==6.3.1"
"""sslyze pins cryptography<47, certop 50.0.2: it lives in a venv of its own (`make
deps-sslyze`, or made here on first use)."""
HOSTS = {"ecdsa": "ecdsa.test", "rsa": "rsa.test"}


@pytest.fixture(scope="module")
def echo() -> Iterator[Echo]:
    with Echo("web") as e:
        yield e


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


Certop = Process


@contextlib.contextmanager
def certop(tmp: Path, pki: Pki, backend: int, *flags: str) -> Iterator[Process]:
    """`certop standalone` serving ecdsa.test and rsa.test over HTTPS from the backend, each
    with a leaf of its key type issued by `pki`'s intermediate."""
    manifest = tmp / "web.yaml"
    manifest.write_text("---\n".join(ingress_yaml(kind, host, secret=f"{kind}-tls")
                                     for kind, host in HOSTS.items()))
    certificates = []
    for kind, host in HOSTS.items():
        leaf = pki.leaf(kind, (host,), kind)
        certificates += ["--certificate", f"{kind}-tls={leaf.fullchain},{leaf.key}"]
    with process(tmp, manifest, "--service", f"web=127.0.0.1:{backend}", *certificates,
                 *flags) as run:
        yield run


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, pki: Pki, echo: Echo) -> Iterator[Certop]:
    with certop(tmp_path_factory.mktemp("certop"), pki, echo.port) as c:
        yield c


# -- openssl s_client -------------------------------------------------------------------------

@dataclass
class Handshake:
    ok: bool
    version: str
    cipher: str
    temp_key: str
    """`Server Temp Key` as s_client prints it (`X25519, 253 bits`, `DH, 8192 bits`)."""


def s_client(port: int, host: str, *options: str) -> Handshake:
    proc = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", host,
         *options], input=b"", capture_output=True, timeout=30, check=False)
    out = proc.stdout.decode(errors="replace")
    cipher = re.search(r"Cipher is (\S+)", out)
    version = re.search(r"^(?:New|Reused), (\S+),", out, re.M)
    temp = re.search(r"Server Temp Key: (.+)", out)
    ok = proc.returncode == 0 and cipher is not None and cipher[1] != "(NONE)"
    return Handshake(ok, version[1] if version else "", cipher[1] if cipher else "",
                     temp[1].strip() if temp else "")


@pytest.mark.parametrize("version", ["-tls1_3", "-tls1_2"])
@pytest.mark.parametrize(("group", "offered"), [
    pytest.param("X25519", "X25519", id="x25519"),
    pytest.param("P-256", "ECDH, prime256v1", id="p256"),
    pytest.param("P-384", "ECDH, secp384r1", id="p384"),
    pytest.param("ffdhe8192", None, id="ffdhe8192"),
    pytest.param("ffdhe2048", None, id="ffdhe2048"),
    pytest.param("X448", None, id="x448"),
    pytest.param("P-521", None, id="p521"),
])
def test_only_x25519_p256_and_p384_are_offered(served: Certop, version: str, group: str,
                                               offered: str | None) -> None:
    # RSA: a TLS 1.2 client that offers only P-384 could not use an ECDSA P-256 certificate.
    got = s_client(served.https_port, HOSTS["rsa"], version, "-groups", group)
    if offered is None:
        assert not got.ok, f"{group} handshake accepted: {got}"
    else:
        assert got.ok, got
        assert got.temp_key.startswith(offered), got


@pytest.mark.parametrize("cipher", [
    "ECDHE-RSA-AES128-SHA", "ECDHE-RSA-AES256-SHA384", "ECDHE-RSA-AES128-SHA256",
    "AES128-GCM-SHA256", "AES256-SHA256", "DHE-RSA-AES128-GCM-SHA256",
    "DHE-RSA-CHACHA20-POLY1305",
])
def test_tls_1_2_refuses_cbc_rsa_key_exchange_and_dhe(served: Certop, cipher: str) -> None:
    got = s_client(served.https_port, HOSTS["rsa"], "-tls1_2", "-cipher", cipher)
    assert not got.ok, got


@pytest.mark.parametrize(("kind", "prefers", "also"), [
    ("ecdsa", "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-ECDSA-AES256-GCM-SHA384"),
    ("rsa", "ECDHE-RSA-CHACHA20-POLY1305", "ECDHE-RSA-AES256-GCM-SHA384"),
    ("ecdsa", "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-CHACHA20-POLY1305"),
])
def test_tls_1_2_follows_the_clients_preference(served: Certop, kind: str, prefers: str,
                                                also: str) -> None:
    got = s_client(served.https_port, HOSTS[kind], "-tls1_2", "-cipher", f"{prefers}:{also}")
    assert got.ok and got.cipher == prefers, got


@pytest.mark.parametrize("prefers", ["TLS_CHACHA20_POLY1305_SHA256", "TLS_AES_128_GCM_SHA256"])
def test_tls_1_3_follows_the_clients_preference(served: Certop, prefers: str) -> None:
    suites = f"{prefers}:TLS_AES_256_GCM_SHA384"
    got = s_client(served.https_port, HOSTS["ecdsa"], "-tls1_3", "-ciphersuites", suites)
    assert got.ok and got.cipher == prefers, got


# -- sslyze ------------------------------------------------------------------------------------

def sslyze_bin() -> Path:
    """sslyze from its own venv, made when missing."""
    exe = SSLYZE_VENV / "bin" / "sslyze"
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "venv", str(SSLYZE_VENV)], check=True)
        subprocess.run([str(SSLYZE_VENV / "bin" / "pip"), "install", "--quiet",
                        "--disable-pip-version-check", SSLYZE], check=True)
    return exe


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["ecdsa", "rsa"])
def test_sslyze_finds_the_proxy_compliant_with_mozilla_intermediate(
        served: Certop, pki: Pki, kind: str, tmp_path: Path) -> None:
    report = tmp_path / "sslyze.json"
    # host:port{ip}: SNI and certificate name `host`, connections to the loopback address only.
    target = f"{HOSTS[kind]}:{served.https_port}{{127.0.0.1}}"
    proc = subprocess.run(
        [str(sslyze_bin()), "--mozilla_config=intermediate", f"--certinfo_ca_file={pki.root}",
         f"--json_out={report}", target],
        capture_output=True, timeout=300, check=False,
        env={**os.environ, "NO_PROXY": "*", "no_proxy": "*"})
    out = proc.stdout.decode(errors="replace")
    assert proc.returncode == 0, out + proc.stderr.decode(errors="replace")
    assert f"{HOSTS[kind]}:{served.https_port}: OK - Compliant." in out, out
    result = json.loads(report.read_text())["server_scan_results"][0]["scan_result"]
    deployment = result["certificate_info"]["result"]["certificate_deployments"][0]
    # The chain as served: the leaf, then the intermediate that issued it; verified to the root.
    assert [c["subject"]["rfc4514_string"] for c in deployment["received_certificate_chain"]] \
        == [f"CN={HOSTS[kind]}", "CN=certop test intermediate"]
    assert deployment["received_chain_has_valid_order"]
    assert [c["subject"]["rfc4514_string"] for c in deployment["verified_certificate_chain"]] \
        == [f"CN={HOSTS[kind]}", "CN=certop test intermediate", "CN=certop test root"]
    curves = result["elliptic_curves"]["result"]["supported_curves"]
    assert {c["name"] for c in curves} == {"X25519", "secp256r1", "secp384r1"}


# -- session resumption across workers ---------------------------------------------------------

def _server_pid(sock: ssl.SSLSocket, pids: set[int]) -> int:
    """Which process holds the server side of this connection (from /proc)."""
    def hexaddr(addr: tuple[str, int]) -> str:
        return f"{socket.htonl(0x7F000001):08X}:{addr[1]:04X}"

    server, client = hexaddr(sock.getpeername()), hexaddr(sock.getsockname())
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == server and fields[2] == client and fields[9] != "0":
            inode = fields[9]
    assert inode, "server socket not found"
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) == f"socket:[{inode}]":
                        return pid
    raise AssertionError("no worker holds the connection")


def _get(port: int, ctx: ssl.SSLContext, session: ssl.SSLSession | None,
         pids: set[int]) -> tuple[ssl.SSLSession, bool, int]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname=HOSTS["ecdsa"], session=session) as tls:
        pid = _server_pid(tls, pids)
        tls.sendall(b"GET / HTTP/1.1\r\nHost: ecdsa.test\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := tls.recv(65536):  # reading to the end also takes in TLS 1.3 tickets
            data += chunk
        assert data.startswith(b"HTTP/1.1 200"), data[:200]
        assert tls.session is not None
        return tls.session, tls.session_reused, pid


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2],
                         ids=["tls1.3", "tls1.2"])
def test_sessions_resume_across_workers(tmp_path: Path, pki: Pki, echo: Echo,
                                        version: ssl.TLSVersion) -> None:
    with certop(tmp_path, pki, echo.port, "--workers", "2") as c:
        wait_for(lambda: len(c.pids()) == 2, "the second worker")
        pids = c.pids()
        wait_for(lambda: all(_serves(c.https_port, pids, pid) for pid in pids),
                 "both workers to serve HTTPS", timeout=60)
        ctx = ssl.create_default_context(cafile=str(pki.root))
        ctx.minimum_version = ctx.maximum_version = version
        session, reused, _ = _get(c.https_port, ctx, None, pids)
        assert not reused
        served_by: list[int] = []
        results: list[bool] = []
        # New connections each time: SO_REUSEPORT spreads them over both workers. At least 10,
        # and on until each worker has resumed a session the other one issued.
        while len(results) < 10 or len(set(served_by)) < 2:
            assert len(results) < 100, "SO_REUSEPORT never picked the other worker"
            session, reused, pid = _get(c.https_port, ctx, session, pids)
            results.append(reused)
            served_by.append(pid)
        assert all(results), f"{results.count(False)} of {len(results)} not resumed " \
                             f"(served by {served_by})"
        assert set(served_by) == pids


_seen: dict[int, set[int]] = {}


def _serves(port: int, pids: set[int], pid: int) -> bool:
    """True once a fresh HTTPS connection has landed on `pid` (any connection counts)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 5) as raw, \
            ctx.wrap_socket(raw, server_hostname=HOSTS["ecdsa"]) as tls:
        _seen.setdefault(port, set()).add(_server_pid(tls, pids))
    return pid in _seen.get(port, set())


# -- handshakes in progress --------------------------------------------------------------------

def test_connections_in_the_tls_handshake_show_in_metrics(served: Certop) -> None:
    before = served.metrics()
    assert before["certop_tls_handshakes_in_progress"] == 0
    idle = [socket.create_connection(("127.0.0.1", served.https_port), 5) for _ in range(5)]
    try:
        # Five connections that never send a ClientHello: each counts as open and in handshake.
        wait_for(lambda: served.metrics()["certop_tls_handshakes_in_progress"] == 5,
                 "the handshakes in /metrics")
        now = served.metrics()
        assert now["certop_open_connections"] >= before["certop_open_connections"] + 5
    finally:
        for s in idle:
            s.close()
    wait_for(lambda: served.metrics()["certop_tls_handshakes_in_progress"] == 0,
             "closed handshakes to leave /metrics")
