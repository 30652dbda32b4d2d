"""The floor of a Python data path: a uvloop proxy that pairs each client connection with one
upstream connection and copies bytes without looking at them (no HTTP parsing, no routing).
Whatever certop spends above this per request is its own Python work.

Usage: floor.py LISTEN_PORT UPSTREAM_PORT   (runs until SIGTERM/SIGINT)
"""

from __future__ import annotations

import asyncio
import signal
import sys

import uvloop


class Upstream(asyncio.Protocol):
    def __init__(self, client: Client) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.client.transport is not None and not self.client.transport.is_closing():
            self.client.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.client.transport is not None:
            self.client.transport.close()


class Client(asyncio.Protocol):
    upstream_port = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport | None = transport  # type: ignore[assignment]
        self.upstream: Upstream | None = None
        self.pending: list[bytes] = []
        self.connecting = asyncio.ensure_future(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        _, self.upstream = await loop.create_connection(
            lambda: Upstream(self), "127.0.0.1", self.upstream_port)
        assert self.upstream.transport is not None
        self.upstream.transport.writelines(self.pending)

    def data_received(self, data: bytes) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.write(data)
        else:
            self.pending.append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.close()


async def main(port: int) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    server = await loop.create_server(Client, "127.0.0.1", port)
    await stop.wait()
    server.close()


if __name__ == "__main__":
    Client.upstream_port = int(sys.argv[2])
    uvloop.run(main(int(sys.argv[1])))
