"""kmock's Kubernetes emulator on its own event loop in a thread, so that blocking code (the
`kubernetes` client, store adapters) can talk to it from the test thread. Loopback only."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import kmock
from kmock_ext import Emulator
from kubernetes import client


class EmulatorThread:
    def __init__(self, resources: dict[str, dict[str, Any]] | None = None) -> None:
        self.resources = resources or {"v1/secrets": {"kind": "Secret", "namespaced": True},
                                       "v1/namespaces": {"kind": "Namespace",
                                                         "namespaced": False}}
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.stopping: asyncio.Event | None = None
        self.url = ""
        self.emulator: Any = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._serve())
        self.loop.close()

    async def _serve(self) -> None:
        self.stopping = asyncio.Event()
        async with Emulator() as emulator, kmock.Server(emulator) as server:
            for resource, info in self.resources.items():
                emulator.resources[resource] = info
            self.emulator = emulator
            self.url = f"http://{server.host}:{server.port}"
            self.ready.set()
            await self.stopping.wait()

    def __enter__(self) -> EmulatorThread:
        self.thread.start()
        if not self.ready.wait(20):
            raise RuntimeError("the Kubernetes emulator did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.stopping is not None
        self.loop.call_soon_threadsafe(self.stopping.set)
        self.thread.join(20)

    def core(self) -> client.CoreV1Api:
        config = client.Configuration()
        config.host = self.url
        return client.CoreV1Api(client.ApiClient(config))
