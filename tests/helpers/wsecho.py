"""A WebSocket echo backend (the `websockets` library's server) on its own loop in a thread: it
echoes every message and records, per connection, the close code it received from its peer
(None when the connection ended without a Close frame)."""

from __future__ import annotations

import threading

from loopthread import LoopThread
from websockets.asyncio.server import ServerConnection, serve


class WsEcho(LoopThread):
    def __init__(self) -> None:
        super().__init__()
        self.port = 0
        self.closes: list[int | None] = []
        """Per finished connection: the code of the Close frame the peer sent."""
        self._lock = threading.Lock()

    async def _echo(self, ws: ServerConnection) -> None:
        try:
            async for message in ws:
                await ws.send(message)
        finally:
            await ws.wait_closed()
            received = ws.protocol.close_rcvd
            with self._lock:
                self.closes.append(received.code if received is not None else None)

    async def serve(self) -> None:
        async with serve(self._echo, "127.0.0.1", 0) as server:
            self.port = next(iter(server.sockets)).getsockname()[1]
            self.started()
            await self.stopping.wait()
