"""The emulator as a process of its own (for out-of-process tests): prints its URL on the
first line of stdout, serves until SIGTERM. Usage: emulator_server.py"""

from __future__ import annotations

import asyncio
import signal
import sys

import kmock
from kmock_ext import Emulator
from kube import RESOURCES


async def main() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with Emulator() as emulator, kmock.Server(emulator) as server:
        for resource, info in RESOURCES.items():
            emulator.resources[resource] = info
        print(f"http://{server.host}:{server.port}", flush=True)
        await stop.wait()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
