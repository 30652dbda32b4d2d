"""Instructions per proxied request, counted by valgrind (callgrind): a deterministic measure of
the proxy's per-request cost, for before/after comparisons that a busy or shared machine's
requests per second cannot settle (on the 2-core benchmark machine the same build measured
anywhere from 14k to 21k req/s from one minute to the next; its instruction count moves by well
under 1 %).

Each build (a Python interpreter with certop importable, e.g. another checkout's `.venv/bin/python`)
runs `certop standalone` under callgrind with the benchmark's Ingress and backend. After a
warm-up, the counters are zeroed (`callgrind_control -z`), `requests` keep-alive requests are
sent over 8 connections in rounds (one request on each, then each answer read), the counters are
dumped, and the total is divided by the number of requests. Plain HTTP and HTTPS are counted
separately. The count covers everything the process does meanwhile (parsing, routing, the
upstream request, the event loop, OpenSSL for HTTPS); the client and the backend are other
processes. Loopback only.

Used by `bench/run.py --only instructions`; prints nothing itself.
"""

from __future__ import annotations

import contextlib
import glob
import os
import socket
import ssl
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pebblectl
import proxy

CONNECTIONS = 8
REQUEST = f"GET / HTTP/1.1\r\nHost: {proxy.HOST}\r\n\r\n".encode()


def _exchange(port: int, tls: bool, count: int) -> None:
    """`count` requests over CONNECTIONS keep-alive connections, each answer read in full."""
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    socks: list[socket.socket] = []
    try:
        for _ in range(CONNECTIONS):
            raw = socket.create_connection(("127.0.0.1", port), timeout=60)
            socks.append(ctx.wrap_socket(raw, server_hostname=proxy.HOST) if tls else raw)
        for _ in range(max(1, count // CONNECTIONS)):
            for sock in socks:
                sock.sendall(REQUEST)
            for sock in socks:
                got = b""
                while not got.endswith(proxy.BODY):
                    chunk = sock.recv(65536)
                    if not chunk:
                        raise RuntimeError("the proxy closed a keep-alive connection")
                    got += chunk
    finally:
        for sock in socks:
            sock.close()


def _exchange_new(port: int, count: int) -> None:
    """`count` requests over TLS, each on a new connection (a full handshake each)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    for _ in range(count):
        with socket.create_connection(("127.0.0.1", port), timeout=60) as raw, \
                ctx.wrap_socket(raw, server_hostname=proxy.HOST) as sock:
            sock.sendall(REQUEST.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
            got = b""
            while chunk := sock.recv(65536):
                got += chunk
            if not got.endswith(proxy.BODY):
                raise RuntimeError("no answer on a new TLS connection")


def _total(dump: str) -> int:
    with open(dump) as lines:
        for line in lines:
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    raise RuntimeError(f"no totals in {dump}")


def count(bench: proxy.Bench, python: Path, requests: int,
          args: Callable[[int, int], list[str]] | None = None, env: dict[str, str] | None = None,
          ready: Callable[[int, int], bool] | None = None,
          new_connections: int = 0) -> dict[str, float]:
    """{"http": instructions per request, "https": ...} for the certop `python` runs: with
    `args(http_port, https_port)` (certop's arguments; by default `certop standalone` with the
    benchmark's Ingress), counted once `ready(http_port, https_port)` (by default: listening).
    `new_connections`: also "https_new", per request on a new TLS connection, over so many."""
    http, https = pebblectl.free_port(), pebblectl.free_port()
    out = bench.work / f"callgrind-{http}.out"
    certop_args = args(http, https) if args is not None else bench._certop(http, https)[1:]
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", str(python), "-m",
           "certop.cli", *certop_args]
    log = open(bench.work / f"callgrind-{http}.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    result: dict[str, float] = {}
    try:
        deadline = time.monotonic() + 300  # start-up under valgrind is slow
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"certop under callgrind exited with {proc.returncode}")
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", https), 1).close()
                break
            if time.monotonic() > deadline:
                raise RuntimeError("certop under callgrind did not listen")
            time.sleep(0.5)  # polling the port until the server listens
        while ready is not None and not ready(http, https):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("certop under callgrind did not get ready")
            time.sleep(0.5)  # polling until it serves the benchmark's Ingress
        modes = [("http", http, False), ("https", https, True)]
        if new_connections:
            modes.append(("https_new", https, True))
        for name, port, tls in modes:
            _exchange(port, tls, 200)  # warm-up: imports, pools, caches
            subprocess.run(["callgrind_control", "-z", str(proc.pid)], check=True,
                           capture_output=True)
            if name == "https_new":
                _exchange_new(port, new_connections)
            else:
                _exchange(port, tls, requests)
            before = set(glob.glob(f"{out}.*"))
            subprocess.run(["callgrind_control", "-d", str(proc.pid)], check=True,
                           capture_output=True)
            dumps = set(glob.glob(f"{out}.*")) - before
            if len(dumps) != 1:
                raise RuntimeError(f"expected one callgrind dump, found {sorted(dumps)}")
            sent = new_connections if name == "https_new" else \
                max(1, requests // CONNECTIONS) * CONNECTIONS
            result[name] = _total(dumps.pop()) / sent
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        for dump in glob.glob(f"{out}*"):
            os.remove(dump)
    return result


def run_all(work: Path, builds: dict[str, Path], requests: int) -> dict[str, dict[str, float]]:
    """{build name: {"http": ..., "https": ...}} with the benchmark's backend."""
    bench = proxy.Bench(work, next(iter(builds.values())).with_name("certop"), 1)
    results: dict[str, dict[str, float]] = {}
    with bench.backend():
        for name, python in builds.items():
            print(f"bench: instructions: {name}", flush=True)
            results[name] = count(bench, python, requests)
    return results
