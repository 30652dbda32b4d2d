"""The emulator as a process of its own (for out-of-process tests): prints its URL on the
first line of stdout, serves until SIGTERM. Usage: emulator_server.py [split|all-in-one]

Like `kube.EmulatorThread`, it applies the RBAC of a layout of manifests/ (`kube.rbac_documents`,
default split) and enforces it: clients log in with `kmock_ext.OPERATOR_TOKEN` (ServiceAccount
certop: the operator, or `certop run` under all-in-one), `PROXY_TOKEN` (certop-proxy, split) or
`ADMIN_TOKEN` (the test). Every refused request is logged to stderr as a line with
"forbidden:", which the tests look for.

Request counts (`Emulator.counts`) are read out of process as the admin:
`curl -H "Authorization: Bearer emulator-admin-token" URL/_emulator/counts` answers
`{"counts": [[verb, resource, n], ...], "by_user": {...}}`; `DELETE` on the same path resets
them (bench/operator.py does both)."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

import kmock
from kmock_ext import Emulator, apply
from kube import RESOURCES, rbac_documents


async def main() -> None:
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING,
                        format="%(name)s %(levelname)s %(message)s")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with Emulator() as emulator, kmock.Server(emulator) as server:
        for resource, info in RESOURCES.items():
            emulator.resources[resource] = info
        await apply(emulator, rbac_documents(sys.argv[1] if len(sys.argv) > 1 else "split"))
        print(f"http://{server.host}:{server.port}", flush=True)
        await stop.wait()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
