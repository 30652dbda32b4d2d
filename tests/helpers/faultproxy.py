"""A fault-injecting HTTPS proxy in front of Pebble (which never rate-limits by itself).

It terminates TLS with Pebble's own API certificate, forwards each request to Pebble with its
own Host header (Pebble builds every URL from the Host it sees, so clients stay on the proxy),
counts requests per path, and answers `rateLimited` (429 + Retry-After) for new orders while
`rate_limited` is set. With `ari_window` it also offers ACME Renewal Information (RFC 9773):
a `renewalInfo` URL in the directory and that window for every certificate (with
`ari_due_first`, a window in the past for the first one asked about; with `ari_malformed`, an
answer no client can use). It records the payload of every newOrder (`orders`) and the
certificate IDs asked about (`ari_asked`). It can also play a CA that leaves orders `pending`:
after an authorization became invalid (`invalid_stays_pending`), or for ever (`hold_pending`:
orders, authorizations and challenges all shown pending). Loopback only."""

from __future__ import annotations

import asyncio
import base64
import collections
import datetime
import http.client
import json
import ssl
from pathlib import Path

import pebblectl
from loopthread import LoopThread


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class FaultProxy(LoopThread):
    def __init__(self, info: pebblectl.PebbleInfo, workdir: Path, retry_after: int = 30) -> None:
        super().__init__()
        self.info = info
        self.target_port = int(info.directory_url.split(":")[2].split("/")[0])
        self.port = pebblectl.free_port()
        self.retry_after = retry_after
        self.rate_limited = True
        self.ari_window: tuple[datetime.datetime, datetime.datetime] | None = None
        self.ari_due_first = False
        """The first certificate asked about gets a window in the past: renew it now."""
        self.ari_asked: list[str] = []
        """Certificate IDs asked about, in order (no repeats)."""
        self.orders: list[dict[str, object]] = []
        """The payload of every newOrder request."""
        self.refuse_replaces = False
        """Answer `alreadyReplaced` to a newOrder that names a certificate it replaces."""
        self.conflict_orders = False
        """Answer 409 to every newOrder."""
        self.ari_malformed = False
        """Answer renewal-information requests with a window that is not a pair of times."""
        self.invalid_stays_pending = False
        """Show an invalid order as pending (some CAs do, against RFC 8555 section 7.1.6)."""
        self.hold_pending = False
        """Show every order, authorization and challenge as pending: validation never ends."""
        self.counts: collections.Counter[str] = collections.Counter()
        self.server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.server_ctx.load_cert_chain(workdir / "api-cert.pem", workdir / "api-key.pem")
        self.client_ctx = ssl.create_default_context(cafile=info.api_ca)
        self._handlers: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def directory_url(self) -> str:
        return f"https://127.0.0.1:{self.port}/dir"

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    async def serve(self) -> None:
        server = await asyncio.start_server(self._handle, "127.0.0.1", self.port,
                                            ssl=self.server_ctx)
        self.started()
        await self.stopping.wait()
        server.close()
        # Keep-alive clients may still be connected: drop them, and wait for their tasks.
        for writer in list(self._writers):
            writer.transport.abort()
        handlers = list(self._handlers)
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()

    def _forward(self, method: str, path: str, headers: dict[str, str], body: bytes
                 ) -> tuple[int, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPSConnection("127.0.0.1", self.target_port,
                                           context=self.client_ctx, timeout=10)
        try:
            conn.request(method, path, body=body or None, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.getheaders(), resp.read()
        finally:
            conn.close()

    def _rewrite_status(self, path: str, status: int, payload: bytes) -> bytes:
        """Orders, authorizations and challenges as a CA that leaves them pending shows them."""
        kinds = ("/my-order/", "/authZ/", "/chalZ/") if self.hold_pending else \
            ("/my-order/",) if self.invalid_stays_pending else ()
        if status != 200 or not path.startswith(kinds):
            return payload
        doc = json.loads(payload)
        if self.hold_pending:
            doc["status"] = "pending"
            for chall in doc.get("challenges", []):
                chall["status"] = "pending"
                chall.pop("error", None)
                chall.pop("validated", None)
        elif doc.get("status") == "invalid":
            doc["status"] = "pending"
            doc.pop("error", None)
        return json.dumps(doc).encode()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
                length = int(headers.get("Content-Length", "0") or 0)
                body = await reader.readexactly(length) if length else b""
                self.counts[path] += 1
                if path == "/order-plz":
                    jws = json.loads(body)
                    self.orders.append(json.loads(_unb64(jws["payload"])))
                if self.ari_window is not None and path.startswith("/renewal-info/"):
                    asked = path.rsplit("/", 1)[1]
                    if asked not in self.ari_asked:
                        self.ari_asked.append(asked)
                    window = self.ari_window
                    if self.ari_due_first and asked == self.ari_asked[0]:
                        now = datetime.datetime.now(datetime.UTC)
                        window = (now - datetime.timedelta(hours=2),
                                  now - datetime.timedelta(hours=1))
                    start, end = (w.strftime("%Y-%m-%dT%H:%M:%SZ") for w in window)
                    if self.ari_malformed:
                        start, end = "soon", "later"
                    payload = json.dumps({"suggestedWindow": {"start": start,
                                                              "end": end}}).encode()
                    status, out_headers = 200, [("Content-Type", "application/json"),
                                                ("Retry-After", "3600")]
                elif path == "/order-plz" and (self.conflict_orders or (
                        self.refuse_replaces and "replaces" in self.orders[-1])):
                    payload = json.dumps({"type": "urn:ietf:params:acme:error:alreadyReplaced",
                                          "detail": "already replaced"}).encode()
                    status, out_headers = 409, [("Content-Type", "application/problem+json")]
                elif self.rate_limited and path == "/order-plz":
                    problem = json.dumps({"type": "urn:ietf:params:acme:error:rateLimited",
                                          "detail": "too many new orders recently"}).encode()
                    status, out_headers = 429, [
                        ("Content-Type", "application/problem+json"),
                        ("Retry-After", str(self.retry_after))]
                    payload = problem
                else:
                    status, out_headers, payload = await asyncio.to_thread(
                        self._forward, method, path, headers, body)
                    out_headers = [(k, v) for k, v in out_headers
                                   if k.lower() not in ("content-length", "connection",
                                                        "transfer-encoding")]
                    if self.ari_window is not None and path == "/dir":
                        directory = json.loads(payload)
                        directory["renewalInfo"] = f"https://127.0.0.1:{self.port}/renewal-info"
                        payload = json.dumps(directory).encode()
                    payload = self._rewrite_status(path, status, payload)
                lines_out = [f"HTTP/1.1 {status} X"] + [f"{k}: {v}" for k, v in out_headers]
                lines_out.append(f"Content-Length: {len(payload)}")
                writer.write(("\r\n".join(lines_out) + "\r\n\r\n").encode("latin-1") + payload)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            self._handlers.discard(task)
            self._writers.discard(writer)
            writer.transport.abort()
