"""A TCP gate on loopback: accepts connections at once but forwards them to `target` only
once opened. Lets a test hold Pebble's HTTP-01 validation mid-order, deterministically."""

from __future__ import annotations

import asyncio
import contextlib
import threading

import pebblectl
from loopthread import LoopThread


class Gate(LoopThread):
    def __init__(self, target_port: int) -> None:
        super().__init__()
        self.port = pebblectl.free_port()
        self.target_port = target_port
        self.arrived = threading.Event()
        self._open = asyncio.Event()

    def open(self) -> None:
        self.loop.call_soon_threadsafe(self._open.set)

    async def serve(self) -> None:
        server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.started()
        await self.stopping.wait()
        server.close()
        current = asyncio.current_task()
        pending = [t for t in asyncio.all_tasks() if t is not current]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.arrived.set()
        await self._open.wait()
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))
