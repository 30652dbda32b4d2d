"""A bounded soak on loopback: 64 concurrent keep-alive clients (half over TLS) while the
certificate is swapped and the routes change several times a second. Every request must
succeed and come from the right backend."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import ssl
import time
from pathlib import Path

import pytest
from echo import Echo
from manifest_yaml import ingress_yaml
from proxy_helpers import client_context, self_signed_files, serving

from certop import crypto

CLIENTS = 64
DURATION = 4.0  # seconds of load; a bound on the test, not a performance threshold
CHANGES = 0.25  # seconds between configuration changes


def manifests(extra_backend: str) -> str:
    # a.test and b.test never change; c.test flips between the backends, adding churn.
    return "---\n".join([ingress_yaml("a", "a.test", service="svc-a"),
                         ingress_yaml("b", "b.test", service="svc-b", tls=False),
                         ingress_yaml("c", "c.test", service=extra_backend, tls=False)])


async def client(n: int, port_http: int, port_https: int, stop: asyncio.Event,
                 results: dict[str, int]) -> None:
    tls = n % 2 == 0
    host, expected = ("a.test", "svc-a") if tls else ("b.test", "svc-b")
    ctx: ssl.SSLContext | None = client_context() if tls else None
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port_https if tls else port_http, ssl=ctx,
        server_hostname=host if tls else None)
    request = f"GET /{n} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    try:
        while not stop.is_set():
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length")))
            body = await reader.readexactly(length)
            if status != 200:
                results["failed"] += 1
            elif json.loads(body)["service"] != expected:
                results["wrong"] += 1
            else:
                results["ok"] += 1
    except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
        results["dropped"] += 1
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await writer.wait_closed()


def replace(path: Path, data: bytes, mtime: float) -> None:
    """Write as an editor or a deploy tool would: a new file renamed over the old one."""
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.utime(tmp, (mtime, mtime))
    os.replace(tmp, path)


def _applied(s: object, last: tuple[bytes, str]) -> bool:
    cert, backend = last
    pair = s.proxy.certs.pair(("default", "a-tls"))  # type: ignore[attr-defined]
    route = s.proxy.routes.match("c.test", "/")  # type: ignore[attr-defined]
    return pair is not None and pair.fullchain_pem == cert and route.backend.name == backend


@pytest.mark.slow
async def test_soak_with_certificate_swaps_and_route_changes(tmp_path: Path) -> None:
    with Echo("svc-a") as a, Echo("svc-b") as b:
        cert, key = self_signed_files(tmp_path, "a", ("a.test",))
        services = [f"svc-a=127.0.0.1:{a.port}", f"svc-b=127.0.0.1:{b.port}"]
        async with serving(tmp_path, manifests("svc-a"), services,
                           [f"a-tls={cert},{key}"]) as s:
            stop = asyncio.Event()
            results = {"ok": 0, "failed": 0, "wrong": 0, "dropped": 0}
            tasks = [asyncio.create_task(client(n, s.http_port, s.https_port, stop, results))
                     for n in range(CLIENTS)]
            changes = 0
            deadline = time.monotonic() + DURATION
            while time.monotonic() < deadline:
                await asyncio.sleep(CHANGES)  # pacing the churn, not waiting for a result
                changes += 1
                later = time.time() + changes
                new_cert, new_key = crypto.self_signed(("a.test",))
                replace(key, new_key, later)
                replace(cert, new_cert, later)
                replace(s.manifest, manifests("svc-b" if changes % 2 else "svc-a").encode(),
                        later)
            last = (new_cert, "svc-b" if changes % 2 else "svc-a")
            await s.runner.wait_until(lambda: _applied(s, last), timeout=10)
            stop.set()
            await asyncio.gather(*tasks)
            reloads = s.runner.stats.reload_errors
    assert results["failed"] == results["wrong"] == results["dropped"] == 0, results
    assert results["ok"] > CLIENTS
    assert reloads == 0
