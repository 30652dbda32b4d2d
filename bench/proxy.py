"""Proxy benchmark: certop vs nginx (1 worker), HAProxy (1 thread) and Caddy, same run.

Setup (2 cores): the proxy under test is pinned to core 0 with `taskset`; the load generator
(`wrk`) and the backend (an nginx answering a 100-byte body) share core 1. Every proxy gets
the same ECDSA P-256 certificate, keep-alive to the backend, and `Host: bench.test`.
Scenarios: plain HTTP keep-alive, HTTPS keep-alive, new TLS connections (one request per
connection). Plus certop-only numbers: `--workers 2` scaling (no pinning), RSS with 10,000
idle keep-alive connections, RSS with 1,000 Ingresses and 1,000 certificates.
TLS handshakes (`run_handshakes`): full and resumed handshakes per second, X25519 with the
ECDSA P-256 certificate, certop and nginx with 1 worker (pinned to core 0) and 4 workers (not
pinned), through parallel `openssl s_time -new` / `-reuse` clients (each fetches `/`, so TLS
1.3 tickets are read and one request is proxied per connection).

Used by `bench/run.py --proxy`; prints nothing itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "pebble"))

import pebblectl  # noqa: E402

from certop import crypto  # noqa: E402

BODY = b"x" * 100
HOST = "bench.test"


@dataclass
class Result:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


def _wait_port(port: int, proc: subprocess.Popen[bytes] | None, what: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.02)  # polling the port until the server listens
    raise RuntimeError(f"{what} did not listen on {port}")


@contextlib.contextmanager
def started(cmd: list[str], port: int, what: str, cwd: Path, env: dict[str, str] | None = None
            ) -> Iterator[subprocess.Popen[bytes]]:
    with open(cwd / f"{what}.log", "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=cwd,
                                env=env, start_new_session=True)
    try:
        _wait_port(port, proc, what)
        yield proc
    finally:
        pebblectl.stop_process(proc)


def _ms(value: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)", value)
    if not m:
        return float("nan")
    n, unit = float(m.group(1)), m.group(2)
    return n / 1000 if unit == "us" else n * 1000 if unit == "s" else n


def wrk(url: str, seconds: int, connections: int = 64, close: bool = False) -> Result:
    cmd = ["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{seconds}s",
           "--latency", "-H", f"Host: {HOST}", url]
    if close:
        cmd[-1:-1] = ["-H", "Connection: close"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True,
                         timeout=seconds + 60).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = re.search(r"^\s*50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s*99%\s+(\S+)", out, re.M)
    errors = 0
    for m in re.finditer(r"(?:connect|read|write|timeout) (\d+)", out):
        errors += int(m.group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors += int(non2xx.group(1)) if non2xx else 0
    return Result(rps, _ms(p50.group(1)) if p50 else float("nan"),
                  _ms(p99.group(1)) if p99 else float("nan"), errors)


class Bench:
    def __init__(self, work: Path, certop: Path, seconds: int,
                 baseline: Path | None = None) -> None:
        self.work = work
        self.certop = certop
        self.baseline = baseline
        """Another build's `certop` (e.g. the last release), run as the peer `certop-baseline`."""
        self.seconds = seconds
        self.backend_port = pebblectl.free_port()
        cert, key = crypto.self_signed((HOST, "localhost"))
        self.cert = work / "cert.pem"
        self.key = work / "key.pem"
        self.combined = work / "combined.pem"
        self.cert.write_bytes(cert)
        self.key.write_bytes(key)
        os.chmod(self.key, 0o600)
        self.combined.write_bytes(cert + key)

    @contextlib.contextmanager
    def backend(self) -> Iterator[None]:
        conf = self.work / "backend.conf"
        conf.write_text(f"""worker_processes 1; daemon off; pid {self.work}/backend.pid;
error_log {self.work}/backend.err; events {{ worker_connections 20000; }}
http {{ access_log off; server {{ listen 127.0.0.1:{self.backend_port} reuseport;
location / {{ return 200 "{BODY.decode()}"; }} }} }}
""")
        with started(["taskset", "-c", "1", "nginx", "-c", str(conf)], self.backend_port,
                     "backend", self.work):
            yield

    def _nginx(self, http: int, https: int, workers: int = 1) -> list[str]:
        conf = self.work / "nginx.conf"
        reuseport = " reuseport" if workers > 1 else ""
        conf.write_text(f"""worker_processes {workers}; daemon off; pid {self.work}/nginx.pid;
error_log {self.work}/nginx.err; events {{ worker_connections 20000; }}
http {{ access_log off;
upstream web {{ server 127.0.0.1:{self.backend_port}; keepalive 128; }}
server {{ listen 127.0.0.1:{http}; listen 127.0.0.1:{https} ssl{reuseport};
ssl_certificate {self.cert}; ssl_certificate_key {self.key}; ssl_protocols TLSv1.2 TLSv1.3;
location / {{ proxy_pass http://web; proxy_http_version 1.1;
proxy_set_header Connection ""; proxy_set_header Host $host; }} }} }}
""")
        return ["nginx", "-c", str(conf)]

    def _haproxy(self, http: int, https: int) -> list[str]:
        conf = self.work / "haproxy.cfg"
        conf.write_text(f"""global
  nbthread 1
  maxconn 9000
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend f
  bind 127.0.0.1:{http}
  bind 127.0.0.1:{https} ssl crt {self.combined} alpn http/1.1
  default_backend b
backend b
  http-reuse always
  server s1 127.0.0.1:{self.backend_port}
""")
        return ["haproxy", "-f", str(conf), "-db"]

    def _caddy(self, http: int, https: int) -> list[str]:
        route = [{"handle": [{"handler": "reverse_proxy",
                              "upstreams": [{"dial": f"127.0.0.1:{self.backend_port}"}]}]}]
        conf = {
            "admin": {"disabled": True},
            "logging": {"logs": {"default": {"level": "ERROR"}}},
            "apps": {
                "http": {"http_port": http, "https_port": https, "servers": {
                    "plain": {"listen": [f"127.0.0.1:{http}"], "routes": route,
                              "automatic_https": {"disable": True}},
                    "tls": {"listen": [f"127.0.0.1:{https}"], "routes": route,
                            "automatic_https": {"disable": True},
                            "tls_connection_policies": [{"default_sni": HOST}]},
                }},
                "tls": {"certificates": {"load_files": [
                    {"certificate": str(self.cert), "key": str(self.key)}]}},
            },
        }
        path = self.work / "caddy.json"
        path.write_text(json.dumps(conf))
        return ["caddy", "run", "--config", str(path)]

    def _baseline(self, http: int, https: int) -> list[str]:
        assert self.baseline is not None, "--baseline-certop names the other build"
        return [str(self.baseline), *self._certop(http, https)[1:]]

    def _certop(self, http: int, https: int, workers: int = 1,
                manifest: Path | None = None) -> list[str]:
        supply: list[str] = []
        if manifest is None:
            manifest = self.work / "ingress.yaml"
            manifest.write_text(ingress_yaml(HOST, "bench-tls"))
            supply = ["--certificate", f"bench-tls={self.cert},{self.key}"]
        return [str(self.certop), "--log-level", "warning", "standalone", "-f", str(manifest),
                "--state-dir", str(self.work / "certop-state"), "--listen", "127.0.0.1",
                "--http-port", str(http), "--https-port", str(https),
                "--service", f"web=127.0.0.1:{self.backend_port}", *supply,
                "--default-certificate", f"{self.cert},{self.key}",
                "--workers", str(workers)]

    def run_peer(self, name: str) -> dict[str, Result]:
        http, https = pebblectl.free_port(), pebblectl.free_port()
        cmd = {"nginx": self._nginx, "haproxy": self._haproxy, "caddy": self._caddy,
               "certop": self._certop, "certop-baseline": self._baseline}[name](http, https)
        env = dict(os.environ, GOMAXPROCS="1")
        with started(["taskset", "-c", "0", *cmd], https, name, self.work, env):
            _wait_port(http, None, name)
            return self.measure(http, https)

    def measure(self, http: int, https: int) -> dict[str, Result]:
        """The scenarios of the table against a proxy listening on `http` and `https`
        (pinned to core 0 by the caller), wrk on core 1."""
        out: dict[str, Result] = {}
        wrk(f"http://127.0.0.1:{http}/", 1)  # warm-up
        out["http_keepalive"] = wrk(f"http://127.0.0.1:{http}/", self.seconds)
        # Latency below saturation: 4 connections (at 64 the p99 is mostly queueing).
        out["http_latency_c4"] = wrk(f"http://127.0.0.1:{http}/", self.seconds,
                                     connections=4)
        # "localhost" (127.0.0.1 here) so that wrk sends a name as SNI, never an IP.
        out["https_keepalive"] = wrk(f"https://localhost:{https}/", self.seconds)
        out["https_new_connections"] = wrk(f"https://localhost:{https}/", self.seconds,
                                           connections=16, close=True)
        return out

    def handshakes(self, name: str, workers: int, clients: int = 4) -> dict[str, float]:
        """Full and resumed TLS handshakes per second against `name` with `workers`
        processes, and the share of `-reuse` connections that did resume."""
        http, https = pebblectl.free_port(), pebblectl.free_port()
        if name == "certop":
            # s_time sends `GET / HTTP/1.0` with no Host and no SNI: a host-less rule proxies
            # it to the backend, as nginx's only server block does; the default certificate
            # is the same one.
            manifest = self.work / "catch-all.yaml"
            manifest.write_text(CATCH_ALL)
            cmd = self._certop(http, https, workers, manifest=manifest)
        else:
            cmd = self._nginx(http, https, workers)
        if workers == 1:
            cmd = ["taskset", "-c", "0", *cmd]
        out: dict[str, float] = {}
        with started(cmd, https, f"{name}-hs-w{workers}", self.work):
            for mode in ("new", "reuse"):
                rate, resumed = s_time(https, self.seconds, mode, clients,
                                       pin="1" if workers == 1 else None)
                out[mode] = rate
                if mode == "reuse":
                    out["reuse_resumed"] = resumed
        return out

    def certop_workers(self, workers: int) -> Result:
        http, https = pebblectl.free_port(), pebblectl.free_port()
        with started(self._certop(http, https, workers), https, f"certop-w{workers}",
                     self.work):
            wrk(f"http://127.0.0.1:{http}/", 1)
            return wrk(f"http://127.0.0.1:{http}/", self.seconds)

    def floor(self) -> Result:
        """The byte-copying uvloop proxy (bench/floor.py) on the same pinned core."""
        port = pebblectl.free_port()
        cmd = ["taskset", "-c", "0", str(self.certop.with_name("python")),
               str(ROOT / "bench" / "floor.py"), str(port), str(self.backend_port)]
        with started(cmd, port, "floor", self.work):
            wrk(f"http://127.0.0.1:{port}/", 1)
            return wrk(f"http://127.0.0.1:{port}/", self.seconds)

    def certop_idle_rss(self, connections: int = 10_000) -> float:
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
        http, https = pebblectl.free_port(), pebblectl.free_port()
        with started(self._certop(http, https), https, "certop-idle", self.work) as proc:
            socks = []
            try:
                for _ in range(connections):
                    s = socket.create_connection(("127.0.0.1", http), timeout=5)
                    s.sendall(f"GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
                    socks.append(s)
                for s in socks:  # each got its response: all are idle keep-alive now
                    s.recv(4096)
                return rss_mb(proc.pid)
            finally:
                for s in socks:
                    s.close()

    def certop_many_rss(self, count: int = 1000) -> tuple[float, float]:
        """(RSS MB, seconds to serve) with `count` Ingresses, each with its own certificate."""
        import base64

        docs = []
        for i in range(count):
            host = f"h{i}.bench.test"
            cert, key = crypto.self_signed((host,))
            docs.append(ingress_yaml(host, f"s{i}", f"i{i}") + f"""---
apiVersion: v1
kind: Secret
type: kubernetes.io/tls
metadata: {{name: s{i}}}
data:
  tls.crt: {base64.b64encode(cert).decode()}
  tls.key: {base64.b64encode(key).decode()}
""")
        manifest = self.work / "many.yaml"
        manifest.write_text("---\n".join(docs))
        http, https = pebblectl.free_port(), pebblectl.free_port()
        start = time.monotonic()
        cmd = self._certop(http, https, manifest=manifest)
        with started(cmd, https, "certop-many", self.work) as proc:
            took = time.monotonic() - start
            return rss_mb(proc.pid), took


def s_time(port: int, seconds: int, mode: str, clients: int,
           pin: str | None = None) -> tuple[float, float]:
    """(handshakes per second summed over `clients` parallel `openssl s_time -<mode>`
    clients, share of connections that resumed a session)."""
    cmd = ["openssl", "s_time", "-connect", f"127.0.0.1:{port}", f"-{mode}", "-www", "/",
           "-time", str(seconds)]
    if pin is not None:
        cmd = ["taskset", "-c", pin, *cmd]
    start = time.monotonic()
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
             for _ in range(clients)]
    outs = [p.communicate(timeout=seconds + 60)[0] for p in procs]
    took = time.monotonic() - start
    total = reused = 0
    for out in outs:
        m = re.search(r"(\d+) connections in [\d.]+s", out)
        total += int(m.group(1)) if m else 0
        # s_time prints one character per connection: 'r' for a resumed session.
        marks = re.search(r"starting\n([r*]*)", out)
        reused += marks.group(1).count("r") if marks else 0
    return total / took, (reused / total if total else 0.0)


def run_handshakes(work: Path, certop: Path, seconds: int, peers: list[str]
                   ) -> dict[str, dict[str, dict[str, float]]]:
    """{peer: {workers: {"new": /s, "reuse": /s, "reuse_resumed": share}}} for certop and,
    when installed and asked for, nginx; 1 and 4 workers."""
    bench = Bench(work, certop, seconds)
    names = [n for n in ("certop", "nginx") if n in peers and shutil.which(
        "nginx" if n == "nginx" else "openssl")]
    results: dict[str, dict[str, dict[str, float]]] = {}
    with bench.backend():
        for name in names:
            results[name] = {}
            for workers in (1, 4):
                print(f"bench: handshakes: {name} --workers {workers}", flush=True)
                results[name][str(workers)] = bench.handshakes(name, workers)
    shutil.rmtree(work / "certop-state", ignore_errors=True)
    return results


def ingress_yaml(host: str, secret: str, name: str = "bench") -> str:
    """An Ingress with TLS; plain HTTP is proxied too (no redirect), like the peers' setup."""
    backend = "{service: {name: web, port: {number: 80}}}"
    return f"""apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: {name}
  annotations: {{certop.dev/ssl-redirect: "false"}}
spec:
  tls: [{{hosts: [{host}], secretName: {secret}}}]
  rules:
    - host: {host}
      http:
        paths: [{{path: /, pathType: Prefix, backend: {backend}}}]
"""


CATCH_ALL = """apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: catch-all}
spec:
  rules:
    - http:
        paths: [{path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}]
"""


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_all(work: Path, certop: Path, seconds: int, peers: list[str],
            baseline: Path | None = None) -> dict[str, object]:
    bench = Bench(work, certop, seconds, baseline)
    results: dict[str, object] = {"seconds": seconds}
    with bench.backend():
        table = {}
        for name in peers:
            print(f"bench: proxy: {name}", flush=True)
            table[name] = {k: vars(v) for k, v in bench.run_peer(name).items()}
        results["proxies"] = table
        print("bench: proxy: floor", flush=True)
        results["floor"] = vars(bench.floor())
        print("bench: proxy: certop --workers 1/2", flush=True)
        results["workers"] = {str(n): vars(bench.certop_workers(n)) for n in (1, 2)}
        print("bench: proxy: certop RSS", flush=True)
        results["idle_rss_mb_10k"] = bench.certop_idle_rss()
        rss, took = bench.certop_many_rss()
        results["many_rss_mb_1000"] = rss
        results["many_start_seconds_1000"] = took
    shutil.rmtree(work / "certop-state", ignore_errors=True)
    return results
