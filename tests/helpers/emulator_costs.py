"""What one request costs the emulator, with few and with many stored objects (the emulator must
measure certop, not itself). Prints one table; no thresholds, nothing asserted.

Usage: emulator_costs.py [--sizes 100,10000] [--requests 50000]

For each size N it stores N Secrets, N Ingresses and N Certificates spread over 10 namespaces
(plus 10 of each in a namespace of their own, "small") straight into the emulator, then times,
over HTTP with one keep-alive client as the admin: a GET by name, a merge PATCH of a
Certificate's status, a LIST of the 10 Secrets of "small", a LIST by label selector in a big
namespace that returns one object, and a PATCH seen by a watch of the Certificates of "small"
(patch to event). Then it serves --requests more GETs and PATCHes, reports the GET and PATCH
times again, and the memory (tracemalloc) kept per request over 2000 more.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import aiohttp
import kmock
from kmock_ext import ADMIN_TOKEN, Emulator
from kube import RESOURCES

KINDS = {"secrets": ("", "v1", "/api/v1"),
         "ingresses": ("networking.k8s.io", "v1", "/apis/networking.k8s.io/v1"),
         "certificates": ("certop.dev", "v1", "/apis/certop.dev/v1")}
BIG_NAMESPACES = 10


def populate(emulator: Emulator, count: int) -> None:
    """`count` objects of each kind over the big namespaces, 10 more in "small"."""
    rv = 0
    for plural, (group, version, _) in KINDS.items():
        resource = kmock.resource(group, version, plural)
        places = [(f"ns-{i % BIG_NAMESPACES}", f"o{i}") for i in range(count)]
        places += [("small", f"o{i}") for i in range(10)]
        for namespace, name in places:
            rv += 1
            emulator.objects[resource, namespace, name] = {
                "apiVersion": f"{group}/{version}".lstrip("/"),
                "metadata": {"name": name, "namespace": namespace, "uid": f"u{rv}",
                             "resourceVersion": str(rv), "labels": {"n": name}},
                "spec": {"k": "v" * 200}}
    emulator.current_rv = rv
    emulator._rv_counter = iter(range(rv + 1, 1 << 62))


async def per_request(call: Callable[[], Awaitable[Any]], times: int = 200) -> float:
    """Median milliseconds of `call()` over `times` calls (after 20 to warm up)."""
    for _ in range(20):
        await call()
    took = []
    for _ in range(times):
        start = time.perf_counter()
        await call()
        took.append(time.perf_counter() - start)
    return statistics.median(took) * 1000


async def measure(count: int, requests: int) -> dict[str, float]:
    async with Emulator() as emulator, kmock.Server(emulator) as server:
        for resource, info in RESOURCES.items():
            emulator.resources[resource] = info
        populate(emulator, count)
        base = f"http://{server.host}:{server.port}"
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        patch_headers = dict(headers, **{"Content-Type": "application/merge-patch+json"})
        secrets_small = f"{base}/api/v1/namespaces/small/secrets"
        certs = f"{base}/apis/certop.dev/v1/namespaces/small/certificates"
        counter = iter(range(1 << 62))
        async with aiohttp.ClientSession() as http:

            async def get() -> None:
                async with http.get(f"{secrets_small}/o1", headers=headers) as resp:
                    assert resp.status == 200, await resp.text()
                    await resp.read()

            async def patch() -> None:
                body = json.dumps({"status": {"n": next(counter)}})
                async with http.patch(f"{certs}/o2/status", data=body,
                                      headers=patch_headers) as resp:
                    assert resp.status == 200, await resp.text()
                    await resp.read()

            async def list_small() -> None:
                async with http.get(secrets_small, headers=headers) as resp:
                    assert len((await resp.json())["items"]) == 10

            async def list_selected() -> None:
                async with http.get(f"{base}/api/v1/namespaces/ns-3/secrets",
                                    params={"labelSelector": "n=o3"}, headers=headers) as resp:
                    assert len((await resp.json())["items"]) == 1

            result = {"get_ms": await per_request(get), "patch_ms": await per_request(patch),
                      "list_small_ms": await per_request(list_small),
                      "list_selector_ms": await per_request(list_selected)}
            listed = await (await http.get(certs, headers=headers)).json()
            async with http.get(certs, params={
                    "watch": "true", "resourceVersion": listed["metadata"]["resourceVersion"]},
                    headers=headers, timeout=aiohttp.ClientTimeout(total=None)) as stream:

                async def patch_seen() -> None:
                    await patch()
                    line = await stream.content.readline()
                    assert json.loads(line)["type"] == "MODIFIED"

                result["watch_event_ms"] = await per_request(patch_seen)
            for i in range(requests):
                await (get() if i % 2 else patch())
            result["get_ms_after"] = await per_request(get)
            result["patch_ms_after"] = await per_request(patch)
            tracemalloc.start()  # slows every allocation down: only over the last 2000
            before = tracemalloc.get_traced_memory()[0]
            for i in range(2000):
                await (get() if i % 2 else patch())
            result["bytes_kept_per_request"] = (tracemalloc.get_traced_memory()[0] -
                                                before) / 2000
            tracemalloc.stop()
        return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,10000")
    parser.add_argument("--requests", type=int, default=50000)
    args = parser.parse_args()
    columns = ["get_ms", "patch_ms", "list_small_ms", "list_selector_ms", "watch_event_ms",
               "get_ms_after", "patch_ms_after", "bytes_kept_per_request"]
    print("| objects per kind | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for size in (int(s) for s in args.sizes.split(",")):
        row = asyncio.run(measure(size, args.requests))
        print(f"| {size} | " + " | ".join(f"{row[c]:.2f}" for c in columns) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
