"""Start and stop a local Pebble ACME server plus pebble-challtestsrv on free loopback ports.

Used by the tests, `make demo` and the benchmarks alike. Owns: generating the CA and the
`localhost`/`127.0.0.1` certificate for Pebble's own API (the Debian package ships none), the
Pebble config file, the two processes, and their shutdown by the handle it started (never by
name).

Rules (see ../shared/notes/test-stack.md):
- Pebble always gets `-dnsserver` pointing at challtestsrv (or at the loopback BIND a DNS-01
  test names), so it never resolves through real DNS.
- challtestsrv answers A queries with 127.0.0.1 and no AAAA, so HTTP-01 dials IPv4 loopback.
- challtestsrv's own HTTP-01/TLS-ALPN servers are off: certop serves Pebble's `httpPort`.

Known trap: Debian's Pebble 2.4 can deadlock under many concurrent orders of one account
(seen in benchmarks with 20 to 1,000 certificates on a loaded machine: every handler entered,
none returning, GET /dir still answering). A goroutine dump (`kill -QUIT` on its pid, stacks
in its log) shows `MemoryStore.FindValidAuthorization` (newOrder) holding the store's read
lock while it waits for an authorization's lock, and the writers queued behind it: a lock
order inversion in Pebble's memory store, not a certop fault. A run that hangs is repeated.

As a script: `pebblectl.py start --dir D --http-port P` writes `D/pebble.json` (URLs, ports,
pids) and returns once Pebble answers; `pebblectl.py stop --dir D` stops those pids.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

LOOPBACK = "127.0.0.1"
START_TIMEOUT = 20.0


def free_port() -> int:
    """A TCP port that is free on loopback right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """SIGTERM the process we started (by its handle), SIGKILL it after `timeout` s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def free_udp_tcp_port() -> int:
    """A port free for both UDP and TCP on loopback (challtestsrv's DNS listens on both)."""
    for _ in range(50):
        port = free_port()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            try:
                u.bind((LOOPBACK, port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free UDP+TCP port on loopback")


def ensure_installed() -> None:
    """Fail with a clear message when the Debian package is missing."""
    missing = [b for b in ("pebble", "pebble-challtestsrv") if shutil.which(b) is None]
    if missing:
        raise SystemExit(
            f"pebblectl: {', '.join(missing)} not found; install Debian's package: "
            "apt-get install pebble (`make test` and `make demo` do this for you)"
        )


def _write_ca_and_leaf(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a leaf for Pebble's API (SAN localhost + 127.0.0.1, EKU serverAuth)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "certop test Pebble API CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())


    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(LOOPBACK))]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path = directory / "api-ca.pem"
    cert_path = directory / "api-cert.pem"
    key_path = directory / "api-key.pem"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    os.chmod(key_path, 0o600)
    return ca_path, cert_path, key_path


@dataclass
class PebbleInfo:
    """Where a running Pebble listens; serialisable to `pebble.json`."""

    directory_url: str
    management_url: str
    api_ca: str
    http_port: int
    tls_port: int
    dns_port: int
    challtestsrv_url: str
    pids: list[int] = field(default_factory=list)

    def root_pem(self) -> str:
        """Pebble's current issuing root (it changes on every start)."""
        return _fetch(f"{self.management_url}/roots/0", self.api_ca)

    def intermediate_pem(self) -> str:
        return _fetch(f"{self.management_url}/intermediates/0", self.api_ca)


def _fetch(url: str, ca: str) -> str:
    ctx = ssl.create_default_context(cafile=ca)
    with urllib.request.urlopen(url, context=ctx, timeout=10) as resp:
        return str(resp.read().decode())


class Pebble:
    """Pebble and challtestsrv as child processes of this process."""

    def __init__(
        self,
        workdir: Path,
        *,
        http_port: int,
        nonce_reject: int = 0,
        authz_reuse: int = 0,
        eab_keys: dict[str, str] | None = None,
        log: Path | None = None,
        dns_server: str | None = None,
    ) -> None:
        self.workdir = workdir
        self.http_port = http_port
        self.nonce_reject = nonce_reject
        self.authz_reuse = authz_reuse
        self.eab_keys = eab_keys
        self.dns_server = dns_server
        """host:port Pebble resolves names at (a BIND of the DNS-01 tests) instead of
        challtestsrv's DNS."""
        self.log = log or workdir / "pebble.log"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.info: PebbleInfo | None = None

    def start(self) -> PebbleInfo:
        ensure_installed()
        self.workdir.mkdir(parents=True, exist_ok=True)
        ca, cert, key = _write_ca_and_leaf(self.workdir)
        acme_port, mgmt_port, tls_port, cts_mgmt = (free_port() for _ in range(4))
        dns_port = free_udp_tcp_port()
        config: dict[str, object] = {
            "listenAddress": f"{LOOPBACK}:{acme_port}",
            "managementListenAddress": f"{LOOPBACK}:{mgmt_port}",
            "certificate": str(cert),
            "privateKey": str(key),
            "httpPort": self.http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": bool(self.eab_keys),
        }
        if self.eab_keys:
            config["externalAccountMACKeys"] = self.eab_keys
        cfg_path = self.workdir / "pebble-config.json"
        cfg_path.write_text(json.dumps({"pebble": config}, indent=2))
        logf = open(self.log, "ab")  # noqa: SIM115 - kept open for the children's lifetime
        cts = subprocess.Popen(
            [
                "pebble-challtestsrv",
                "-defaultIPv4", LOOPBACK, "-defaultIPv6", "",
                "-http01", "", "-https01", "", "-tlsalpn01", "",
                "-dns01", f"{LOOPBACK}:{dns_port}",
                "-management", f"{LOOPBACK}:{cts_mgmt}",
            ],
            stdout=logf, stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.procs.append(cts)
        env = dict(os.environ)
        env.update(
            PEBBLE_VA_NOSLEEP="1",
            PEBBLE_WFE_NONCEREJECT=str(self.nonce_reject),
            PEBBLE_AUTHZREUSE=str(self.authz_reuse),
        )
        peb = subprocess.Popen(
            ["pebble", "-config", str(cfg_path), "-dnsserver",
             self.dns_server or f"{LOOPBACK}:{dns_port}"],
            stdout=logf, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
        self.procs.append(peb)
        logf.close()
        self.info = PebbleInfo(
            directory_url=f"https://{LOOPBACK}:{acme_port}/dir",
            management_url=f"https://{LOOPBACK}:{mgmt_port}",
            api_ca=str(ca),
            http_port=self.http_port,
            tls_port=tls_port,
            dns_port=dns_port,
            challtestsrv_url=f"http://{LOOPBACK}:{cts_mgmt}",
            pids=[p.pid for p in self.procs],
        )
        try:
            self._wait_ready(self.info)
        except BaseException:
            self.stop()
            raise
        return self.info

    def _wait_ready(self, info: PebbleInfo) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        delay = 0.02
        last: Exception | None = None
        while time.monotonic() < deadline:
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(
                        f"{p.args[0]} exited with {p.returncode} during start-up; see {self.log}"
                    )
            try:
                _fetch(info.directory_url, info.api_ca)
                _fetch(f"{info.management_url}/roots/0", info.api_ca)
                return
            except OSError as exc:
                last = exc
            time.sleep(delay)  # polling a child process that is starting: a check, then retry
            delay = min(delay * 1.5, 0.25)
        raise RuntimeError(f"Pebble did not answer within {START_TIMEOUT}s: {last}; see {self.log}")

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs.clear()

    def __enter__(self) -> PebbleInfo:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def running(workdir: Path, **kwargs: object) -> Iterator[PebbleInfo]:
    pebble = Pebble(workdir, **kwargs)  # type: ignore[arg-type]
    with pebble as info:
        yield info


def _cmd_start(args: argparse.Namespace) -> int:
    workdir = Path(args.dir)
    pebble = Pebble(workdir, http_port=args.http_port, nonce_reject=args.nonce_reject)
    info = pebble.start()
    (workdir / "pebble.json").write_text(json.dumps(asdict(info), indent=2))
    # Detach: the children run in their own sessions; `stop` ends them by these pids.
    pebble.procs.clear()
    print(json.dumps(asdict(info)))
    return 0


def _cmd_stop(args: argparse.Namespace) -> int:
    state = Path(args.dir) / "pebble.json"
    if not state.exists():
        return 0
    info = json.loads(state.read_text())
    for pid in info.get("pids", []):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    state.unlink()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    start = sub.add_parser("start")
    start.add_argument("--dir", required=True)
    start.add_argument("--http-port", type=int, required=True)
    start.add_argument("--nonce-reject", type=int, default=0)
    stop = sub.add_parser("stop")
    stop.add_argument("--dir", required=True)
    args = parser.parse_args(argv)
    return _cmd_start(args) if args.cmd == "start" else _cmd_stop(args)


if __name__ == "__main__":
    sys.exit(main())
