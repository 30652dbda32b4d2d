"""Cluster proxy benchmark (issue 11): `certop proxy` fed from the Kubernetes API.

The Kubernetes emulator (`tests/helpers/emulator_server.py split`, a process of its own, pinned
to core 1) with the split layout's RBAC; `certop proxy` (a process of its own, pinned to core 0,
logged in through a KUBECONFIG as its ServiceAccount certop-proxy, `kmock_ext.PROXY_TOKEN`);
this script creates and changes objects as the emulator's admin, raw JSON over keep-alive
connections (the `kubernetes` client's models would cost more than the emulator's own work).

1. Reconfiguration latency: an EndpointSlice change (the one endpoint of Service `ep` moves
   between 127.0.0.11 and 127.0.0.12, two loopback backends answering "a" and "b") and an
   Ingress change (Ingress `ing` switches its backend between Services `lat-a` and `lat-b`),
   each a merge patch. Right after the write returns, a client polls the proxy (a new
   connection per request, plain HTTP, 1 ms apart) until the answer is the new backend's: the
   latency is from the write's start to that answer. `--changes` of each kind, a random
   50-150 ms pause between changes (no two coalesce); the emulator's own time for the write is
   kept apart. Measured with the small configuration and again with the large one loaded
   (step 2, same process).
2. Start-up at scale: `--ingresses` Ingresses (each its own host, `spec.tls` naming its own
   kubernetes.io/tls Secret with its own self-signed certificate), as many Services, each with
   one EndpointSlice of `--endpoints` endpoints (distinct 127.1.x.y addresses; the last
   Service's are 127.0.0.1-5, where a backend answers "live"), all created before
   `certop proxy` starts (8 threads). Measured: from starting the process until its /readyz
   answers 200 and until an HTTPS request with the last Ingress's host as SNI gets that
   Ingress's certificate and "live"; its RSS then and at its peak (`VmHWM`, after the latency
   runs as well); CPU seconds of the proxy and of the emulator during the start-up; the time
   of each list and of the first snapshot from the proxy's own log (info level).
3. Throughput: bench/proxy.py's scenarios (same backend nginx, same request `Host: bench.test`,
   same certificate, proxy pinned to core 0, wrk on core 1), `certop standalone` with the
   Ingress as YAML and `--service web=...` (file-fed) against `certop proxy` with the same
   Ingress, Service, EndpointSlice and Secret in the emulator (API-fed), alternating, `--rounds`
   of each; the best of the rounds per scenario. Beside it, as on a shared machine req/s move
   by tens of percent from one minute to the next, bench/instructions.py's count for both
   feeds: instructions per keep-alive request under callgrind (`--requests`), and per request
   on a new TLS connection (a tenth as many), deterministic.

Usage: cluster_proxy.py [--ingresses 2000] [--endpoints 5] [--changes 100] [--seconds 8]
                        [--rounds 2] [--parts latency,throughput,instructions,scale]
                        [--requests 3000] [--keep] [--certop PATH]
(prints `bench: row:` lines on stderr and one JSON line; bench/run.py --only cluster-proxy
renders it)
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import http.client
import importlib.util
import json
import math
import os
import random
import re
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HELPERS = ROOT / "tests" / "helpers"
sys.path[:0] = [str(ROOT / "pebble"), str(HELPERS), str(ROOT / "bench")]

import instructions  # noqa: E402
import pebblectl  # noqa: E402
import proxy  # noqa: E402
from kmock_ext import ADMIN_TOKEN, PROXY_TOKEN  # noqa: E402


def _builders() -> ModuleType:
    """tests/helpers/cluster_proxy.py (the object builders), loaded by its path: this module
    has the same name."""
    spec = importlib.util.spec_from_file_location("cluster_proxy_builders",
                                                  HELPERS / "cluster_proxy.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


objects = _builders()

NS = "bench"
EP_HOST = "ep.bench.test"
"""Served through Service `ep`, whose EndpointSlice changes."""
ING_HOST = "ing.bench.test"
"""Served by Ingress `ing`, whose backend changes."""
MARKS = {"a": "127.0.0.11", "b": "127.0.0.12"}
"""Loopback backends answering their letter."""
LIVE = tuple(f"127.0.0.{i}" for i in range(1, 6))
"""Loopback backends answering "live" (the last large Service's endpoints)."""
WAIT = 10.0
"""Seconds one change may take to be seen."""
THREADS = 8
POLL = 0.001
"""Seconds between two requests polling for a change (the polls load the proxy's core)."""
COLLECTIONS = {
    "IngressClass": "/apis/networking.k8s.io/v1/ingressclasses",
    "Ingress": "/apis/networking.k8s.io/v1/namespaces/{ns}/ingresses",
    "Service": "/api/v1/namespaces/{ns}/services",
    "EndpointSlice": "/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices",
    "Secret": "/api/v1/namespaces/{ns}/secrets",
}


class Api:
    """The emulator's REST API as its admin: raw JSON over one keep-alive connection per
    thread."""

    def __init__(self, url: str) -> None:
        parts = urllib.parse.urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self._local = threading.local()

    def _connection(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
            self._local.conn = conn
        return conn

    def request(self, method: str, path: str, body: Any = None,
                content_type: str = "application/json") -> dict[str, Any]:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}", "Accept": "application/json",
                   "Content-Type": content_type}
        for attempt in (1, 2):  # a keep-alive connection the server closed: once more
            conn = self._connection()
            try:
                conn.request(method, path, data, headers)
                response = conn.getresponse()
                payload = response.read()
                break
            except (OSError, http.client.HTTPException):
                conn.close()
                self._local.conn = None
                if attempt == 2:
                    raise
        if response.status >= 300:
            raise RuntimeError(f"{method} {path}: {response.status} {payload[:300]!r}")
        found: dict[str, Any] = json.loads(payload)
        return found

    def create(self, obj: dict[str, Any]) -> float:
        """Create `obj` (in NS when namespaced); the seconds the write took."""
        start = time.perf_counter()
        self.request("POST", COLLECTIONS[obj["kind"]].format(ns=NS), obj)
        return time.perf_counter() - start

    def patch(self, kind: str, name: str, body: dict[str, Any]) -> None:
        self.request("PATCH", COLLECTIONS[kind].format(ns=NS) + "/" + name, body,
                     "application/merge-patch+json")


# -- processes -------------------------------------------------------------------------------


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of the process so far (/proc/PID/stat fields 14, 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def emulator(work: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """The emulator (split layout's RBAC) on core 1: (its URL, the process)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HELPERS), str(ROOT / "pebble")]))
    with open(work / "emulator.log", "wb") as log:
        proc = subprocess.Popen(["taskset", "-c", "1", sys.executable,
                                 str(HELPERS / "emulator_server.py"), "split"],
                                stdout=subprocess.PIPE, stderr=log, env=env)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().decode().strip()
        if not url.startswith("http://127.0.0.1:"):
            raise RuntimeError(f"the emulator did not start: {url!r}")
        yield url, proc
    finally:
        pebblectl.stop_process(proc, timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()
    refused = [line for line in (work / "emulator.log").read_text().splitlines()
               if "forbidden:" in line]
    if refused:
        raise RuntimeError(f"the emulator refused the proxy: {refused[:3]}")


@contextlib.contextmanager
def markers(work: Path) -> Iterator[int]:
    """One nginx on core 1 answering "a" on 127.0.0.11, "b" on 127.0.0.12 and "live" on
    127.0.0.1-5, all on one port (yielded)."""
    port = pebblectl.free_port()
    live = " ".join(f"listen {a}:{port};" for a in LIVE)
    conf = work / "markers.conf"
    conf.write_text(f"""worker_processes 1; daemon off; pid {work}/markers.pid;
error_log {work}/markers.err; events {{ worker_connections 4096; }}
http {{ access_log off;
server {{ listen {MARKS["a"]}:{port}; location / {{ return 200 "a"; }} }}
server {{ listen {MARKS["b"]}:{port}; location / {{ return 200 "b"; }} }}
server {{ {live} location / {{ return 200 "live"; }} }} }}
""")
    with proxy.started(["taskset", "-c", "1", "nginx", "-c", str(conf)], port, "markers", work):
        yield port


def kubeconfig(path: Path, url: str) -> Path:
    """A KUBECONFIG logging in as the proxy's ServiceAccount (certop-proxy)."""
    path.write_text(
        f'apiVersion: v1\nkind: Config\nclusters: [{{name: e, cluster: {{server: "{url}"}}}}]'
        f"\nusers: [{{name: u, user: {{token: {PROXY_TOKEN}}}}}]\n"
        "contexts: [{name: e, context: {cluster: e, user: u}}]\ncurrent-context: e\n")
    return path


def proxy_args(bench: proxy.Bench, http: int, https: int, admin: int,
               log_level: str = "warning") -> list[str]:
    """`certop proxy`'s arguments (the same default certificate as bench/proxy.py's peers)."""
    return ["--log-level", log_level, "proxy", "-A", "--listen", "127.0.0.1",
            "--http-port", str(http), "--https-port", str(https), "--admin-port", str(admin),
            "--default-certificate", f"{bench.cert},{bench.key}"]


class ClusterProxy:
    """`certop proxy` as a process of its own, pinned to core 0."""

    def __init__(self, work: Path, url: str, bench: proxy.Bench, name: str,
                 log_level: str = "warning") -> None:
        self.http, self.https, self.admin = (pebblectl.free_port() for _ in range(3))
        self.log = work / f"{name}.log"
        env = dict(os.environ, KUBECONFIG=str(kubeconfig(work / f"{name}.kubeconfig", url)))
        cmd = ["taskset", "-c", "0", str(bench.certop),
               *proxy_args(bench, self.http, self.https, self.admin, log_level)]
        self.started_wall = time.time()
        self.started = time.perf_counter()
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)

    def until(self, check: Callable[[], bool], what: str, timeout: float = 120.0) -> float:
        """Seconds since the start once `check()` is true (polling every 5 ms)."""
        deadline = time.perf_counter() + timeout
        while not check():
            if self.proc.poll() is not None:
                raise RuntimeError(f"certop proxy exited with {self.proc.returncode}: "
                                   f"{self.log.read_text()[-2000:]}")
            if time.perf_counter() > deadline:
                raise RuntimeError(f"{what} not within {timeout}s: "
                                   f"{self.log.read_text()[-2000:]}")
            time.sleep(0.005)  # polling the condition above
        return time.perf_counter() - self.started

    def ready(self) -> bool:
        return status(self.admin, "/readyz") == 200

    def stop(self) -> None:
        pebblectl.stop_process(self.proc, timeout=30)

    def logged(self) -> dict[str, float]:
        """Seconds since the start of each "... listed: N" line and of "serving N Ingresses"
        in its log (info level)."""
        found: dict[str, float] = {}
        for line in self.log.read_text().splitlines():
            m = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \w+ [\w.]+: "
                         r"(.+ listed|serving \d+ Ingresses)", line)
            if m:
                when = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f")
                found[m.group(2)] = when.timestamp() - self.started_wall
        return found


def status(port: int, path: str, host: str | None = None) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers={"Host": host} if host else {})
        return conn.getresponse().status
    except OSError:
        return 0
    finally:
        conn.close()


def answers(port: int, host: str) -> Callable[[], bool]:
    """A check: a plain-HTTP request for `host` gets a 200."""
    return lambda: status(port, "/", host) == 200


def body(port: int, host: str) -> bytes:
    """A plain-HTTP GET for `host` through the proxy on a new connection: the body of a 200,
    else b""."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/", headers={"Host": host})
        response = conn.getresponse()
        data = response.read()
        return data if response.status == 200 else b""
    except (OSError, http.client.HTTPException):
        return b""
    finally:
        conn.close()


def https_served(port: int, host: str, der: bytes) -> bool:
    """An HTTPS request with `host` as SNI gets the certificate `der` and "live"."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                context.wrap_socket(raw, server_hostname=host) as tls:
            if tls.getpeercert(binary_form=True) != der:
                return False
            tls.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
                        .encode())
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
            return data.startswith(b"HTTP/1.1 200") and data.endswith(b"live")
    except (OSError, ssl.SSLError):
        return False


# -- objects ---------------------------------------------------------------------------------


def slice_for(name: str, service: str, port: int, addresses: list[str]) -> dict[str, Any]:
    return objects.endpoint_slice(name, service, port, addresses)


def small(api: Api, bench: proxy.Bench, marks: int) -> None:
    """The IngressClass, the latency objects and the throughput objects."""
    api.create(objects.ingress_class("certop"))
    for name, mark in (("ep", "a"), ("lat-a", "a"), ("lat-b", "b")):
        api.create(objects.service(name))
        api.create(slice_for(f"{name}-1", name, marks, [MARKS[mark]]))
    api.create(objects.ingress("ep", EP_HOST, service="ep"))
    api.create(objects.ingress("ing", ING_HOST, service="lat-a"))
    # bench/proxy.py's Ingress (ingress_yaml): host bench.test, TLS, no redirect.
    api.create(objects.service("web"))
    api.create(slice_for("web-1", "web", bench.backend_port, ["127.0.0.1"]))
    api.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "bench-tls"},
                "type": "kubernetes.io/tls",
                "data": {"tls.crt": base64.b64encode(bench.cert.read_bytes()).decode(),
                         "tls.key": base64.b64encode(bench.key.read_bytes()).decode()}})
    api.create(objects.ingress("bench", proxy.HOST, tls_secret="bench-tls",
                               annotations={"certop.dev/ssl-redirect": "false"}))


def address(n: int) -> str:
    """The n-th endpoint address of the large configuration (loopback, nothing listens)."""
    return f"127.1.{n // 250}.{n % 250 + 1}"


def large(api: Api, count: int, per_service: int, live_port: int) -> dict[str, Any]:
    """`count` Secrets, Services, EndpointSlices and Ingresses; the timings, and the DER
    certificate of the last Ingress's Secret."""
    start = time.perf_counter()
    secrets = [objects.tls_secret(f"s{i}", (f"h{i}.bench.test",)) for i in range(count)]
    made = time.perf_counter() - start
    last_pem = base64.b64decode(secrets[-1]["data"]["tls.crt"]).decode()
    kinds: dict[str, list[dict[str, Any]]] = {
        "Secret": secrets,
        "Service": [objects.service(f"svc{i}") for i in range(count)],
        "EndpointSlice": [
            slice_for(f"svc{i}-1", f"svc{i}", live_port, list(LIVE[:per_service]))
            if i == count - 1 else
            slice_for(f"svc{i}-1", f"svc{i}", live_port,
                      [address(i * per_service + j) for j in range(per_service)])
            for i in range(count)],
        "Ingress": [objects.ingress(f"i{i}", f"h{i}.bench.test", service=f"svc{i}",
                                    tls_secret=f"s{i}") for i in range(count)],
    }
    seconds: dict[str, float] = {}
    writes: list[float] = []
    with ThreadPoolExecutor(THREADS) as pool:
        for kind, bodies in kinds.items():
            begin = time.perf_counter()
            writes += pool.map(api.create, bodies)
            seconds[kind] = time.perf_counter() - begin
            plural = kind + ("es" if kind.endswith("s") else "s")
            print(f"bench: cluster-proxy: {count} {plural} created in {seconds[kind]:.1f}s",
                  file=sys.stderr, flush=True)
    return {"certificates_seconds": made, "create_seconds": seconds,
            "create_ms": summary(writes), "last_der": ssl.PEM_cert_to_DER_cert(last_pem)}


# -- measurements ----------------------------------------------------------------------------


def summary(seconds: list[float]) -> dict[str, float]:
    """Median, p99 (nearest rank), max and min, in ms."""
    ordered = sorted(seconds)
    p99 = ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]
    return {"n": len(ordered), "median": statistics.median(ordered) * 1000,
            "p99": p99 * 1000, "max": ordered[-1] * 1000, "min": ordered[0] * 1000}


def latency(api: Api, port: int, changes: int) -> dict[str, Any]:
    """`changes` EndpointSlice changes, then as many Ingress changes, each polled for."""
    def endpoint(letter: str) -> None:
        api.patch("EndpointSlice", "ep-1", {"endpoints": [
            {"addresses": [MARKS[letter]],
             "conditions": {"ready": True, "serving": True, "terminating": False}}]})

    def ingress(letter: str) -> None:
        api.patch("Ingress", "ing", {"spec": {"rules": objects.ingress(
            "ing", ING_HOST, service=f"lat-{letter}")["spec"]["rules"]}})

    out: dict[str, Any] = {}
    for kind, host, change in (("endpointslice", EP_HOST, endpoint),
                               ("ingress", ING_HOST, ingress)):
        seen = body(port, host)
        if seen not in (b"a", b"b"):
            raise RuntimeError(f"{host} answers {seen!r}")
        now = seen.decode()
        took: list[float] = []
        wrote: list[float] = []
        polls = 0
        for _ in range(changes):
            want = "b" if now == "a" else "a"
            start = time.perf_counter()
            change(want)
            written = time.perf_counter()
            while body(port, host) != want.encode():
                polls += 1
                if time.perf_counter() - start > WAIT:
                    raise RuntimeError(f"{kind} change to {want} not seen within {WAIT}s")
                time.sleep(POLL)  # polling the proxy for the change
            took.append(time.perf_counter() - start)
            wrote.append(written - start)
            now = want
            time.sleep(random.uniform(0.05, 0.15))  # the next change is a burst of its own
        out[kind] = {"seen_ms": summary(took), "write_ms": summary(wrote),
                     "polls_per_change": polls / changes}
        print(f"bench: row: {json.dumps({'latency': kind, **out[kind]})}", file=sys.stderr,
              flush=True)
        out[kind]["samples_ms"] = [round(t * 1000, 1) for t in took]
    return out


def throughput(work: Path, url: str, bench: proxy.Bench, rounds: int) -> dict[str, Any]:
    """bench/proxy.py's scenarios, file-fed and API-fed alternating; the best per scenario."""
    runs: dict[str, list[dict[str, proxy.Result]]] = {"file": [], "api": []}
    for n in range(rounds):
        print(f"bench: cluster-proxy: throughput round {n + 1}: file-fed", file=sys.stderr,
              flush=True)
        runs["file"].append(bench.run_peer("certop"))
        print(f"bench: cluster-proxy: throughput round {n + 1}: API-fed", file=sys.stderr,
              flush=True)
        fed = ClusterProxy(work, url, bench, f"proxy-throughput-{n}")
        try:
            fed.until(fed.ready, "/readyz 200")
            fed.until(answers(fed.http, proxy.HOST), proxy.HOST)
            runs["api"].append(bench.measure(fed.http, fed.https))
        finally:
            fed.stop()
    best: dict[str, Any] = {}
    for feed, results in runs.items():
        best[feed] = {key: vars(max((r[key] for r in results), key=lambda r: r.rps))
                      for key in results[0]}
        best[feed + "_rounds"] = [{k: vars(v) for k, v in r.items()} for r in results]
    shutil.rmtree(work / "certop-state", ignore_errors=True)
    return best


def instructions_per_request(work: Path, url: str, bench: proxy.Bench,
                             requests: int) -> dict[str, dict[str, float]]:
    """bench/instructions.py's count (callgrind, keep-alive requests for bench.test): file-fed
    and API-fed, this interpreter's certop."""
    python = Path(sys.executable)
    print("bench: cluster-proxy: instructions per request: file-fed", file=sys.stderr,
          flush=True)
    new = max(1, requests // 10)
    out = {"file": instructions.count(bench, python, requests, new_connections=new)}
    admin = pebblectl.free_port()
    env = dict(os.environ, KUBECONFIG=str(kubeconfig(work / "callgrind.kubeconfig", url)))

    def ready(http: int, _https: int) -> bool:
        return status(admin, "/readyz") == 200 and status(http, "/", proxy.HOST) == 200

    print("bench: cluster-proxy: instructions per request: API-fed", file=sys.stderr,
          flush=True)
    out["api"] = instructions.count(
        bench, python, requests, lambda http, https: proxy_args(bench, http, https, admin),
        env, ready, new_connections=new)
    print(f"bench: row: {json.dumps({'instructions': out})}", file=sys.stderr, flush=True)
    shutil.rmtree(work / "certop-state", ignore_errors=True)
    return out


def run(work: Path, certop: Path, count: int, per_service: int, changes: int, seconds: int,
        rounds: int, parts: set[str], requests: int = 3000) -> dict[str, Any]:
    bench = proxy.Bench(work, certop, seconds)
    results: dict[str, Any] = {"ingresses": count, "endpoints_per_service": per_service,
                               "changes": changes, "seconds": seconds, "rounds": rounds,
                               "requests": requests}
    with emulator(work) as (url, emu), markers(work) as marks, bench.backend():
        api = Api(url)
        small(api, bench, marks)
        if "latency" in parts:
            print("bench: cluster-proxy: latency, small configuration", file=sys.stderr,
                  flush=True)
            fed = ClusterProxy(work, url, bench, "proxy-small")
            try:
                fed.until(fed.ready, "/readyz 200")
                fed.until(lambda: body(fed.http, EP_HOST) == b"a", EP_HOST)
                results["latency_small"] = latency(api, fed.http, changes)
            finally:
                fed.stop()
        if "throughput" in parts:
            results["throughput"] = throughput(work, url, bench, rounds)
        if "instructions" in parts:
            results["instructions"] = instructions_per_request(work, url, bench, requests)
        if "scale" not in parts:
            return results
        print(f"bench: cluster-proxy: creating {count} x 4 objects", file=sys.stderr,
              flush=True)
        made = large(api, count, per_service, marks)
        der = made.pop("last_der")
        results["create"] = made
        print("bench: cluster-proxy: start-up, large configuration", file=sys.stderr,
              flush=True)
        emu_cpu = cpu_seconds(emu.pid)
        fed = ClusterProxy(work, url, bench, "proxy-large", log_level="info")
        try:
            ready = fed.until(fed.ready, "/readyz 200")
            served = fed.until(lambda: https_served(fed.https, f"h{count - 1}.bench.test", der),
                               "the last Ingress served")
            startup = {"ready_seconds": ready, "served_seconds": served,
                       "rss_mb": rss_mb(fed.proc.pid),
                       "peak_rss_mb": rss_mb(fed.proc.pid, "VmHWM"),
                       "proxy_cpu_seconds": cpu_seconds(fed.proc.pid),
                       "emulator_cpu_seconds": cpu_seconds(emu.pid) - emu_cpu,
                       "logged": fed.logged()}
            print(f"bench: row: {json.dumps({'startup': startup})}", file=sys.stderr,
                  flush=True)
            print("bench: cluster-proxy: latency, large configuration", file=sys.stderr,
                  flush=True)
            results["latency_large"] = latency(api, fed.http, changes)
            startup["peak_rss_after_latency_mb"] = rss_mb(fed.proc.pid, "VmHWM")
            startup["rss_after_latency_mb"] = rss_mb(fed.proc.pid)
            results["startup"] = startup
        finally:
            fed.stop()
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ingresses", type=int, default=2000,
                        help="Ingresses (and Secrets, Services, EndpointSlices) at scale")
    parser.add_argument("--endpoints", type=int, default=5, help="endpoints per Service")
    parser.add_argument("--changes", type=int, default=100, help="changes of each kind")
    parser.add_argument("--seconds", type=int, default=8, help="length of each wrk run")
    parser.add_argument("--rounds", type=int, default=2,
                        help="throughput rounds of each feed, alternating")
    parser.add_argument("--parts", default="latency,throughput,instructions,scale",
                        help="what to measure: latency (small configuration), throughput "
                             "(wrk), instructions (callgrind), scale (start-up, RSS and "
                             "latency with --ingresses)")
    parser.add_argument("--requests", type=int, default=3000,
                        help="requests counted per feed by the instructions count")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    parser.add_argument("--certop", type=Path, metavar="PATH",
                        default=Path(sys.executable).with_name("certop"),
                        help="the certop executable (another build, or a wrapper trying a fix)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="certop-bench-cluster-proxy-"))
    print(f"bench: cluster-proxy: {work}", file=sys.stderr, flush=True)
    try:
        return run(work, args.certop, args.ingresses,
                   args.endpoints, args.changes, args.seconds, args.rounds,
                   set(args.parts.split(",")), args.requests)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    print(json.dumps(main()))
