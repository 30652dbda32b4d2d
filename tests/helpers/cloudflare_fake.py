"""A small fake of Cloudflare's documented v4 DNS API on loopback, in front of a real BIND.

What it serves (https://developers.cloudflare.com/api/ : zones, DNS records), under
`/client/v4`: `GET /zones?name=`, `GET /zones/{id}/dns_records?type=&name=`,
`POST /zones/{id}/dns_records`, `DELETE /zones/{id}/dns_records/{record}`, each answering
Cloudflare's envelope (`success`, `errors`, `result`). A request without the right
`Authorization: Bearer <token>` gets 403 with error 9109 ("Invalid access token"); a record
identical to one that exists is refused with 400 and error 81058, as Cloudflare does. Records
it creates or deletes are written to the BIND it fronts (RFC 2136, with the zone's TSIG key),
so a test asks the nameserver what a provider did. Loopback only.
"""

from __future__ import annotations

import json
import threading
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import bindctl
import dns.name
import dns.query
import dns.tsig
import dns.update


class CloudflareFake:
    def __init__(self, bind: bindctl.BindInfo, token: str) -> None:
        self.bind = bind
        self.token = token
        self.zones = {z.name: (f"zone-{i}", z.key) for i, z in enumerate(bind.zones)}
        self.records: dict[str, dict[str, Any]] = {}
        self.requests: list[str] = []
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                fake._serve(self, "GET")

            def do_POST(self) -> None:
                fake._serve(self, "POST")

            def do_DELETE(self) -> None:
                fake._serve(self, "DELETE")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/client/v4"

    def __enter__(self) -> CloudflareFake:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- the API ------------------------------------------------------------------------

    def _serve(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        url = urllib.parse.urlsplit(handler.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        parts = url.path.removeprefix("/client/v4").strip("/").split("/")
        self.requests.append(f"{method} {url.path}")
        if handler.headers.get("Authorization") != f"Bearer {self.token}":
            return self._answer(handler, 403, errors=[{"code": 9109,
                                                      "message": "Invalid access token"}])
        length = int(handler.headers.get("Content-Length") or 0)
        body = json.loads(handler.rfile.read(length) or b"{}") if length else {}
        with self._lock:
            if method == "GET" and parts == ["zones"]:
                found = [{"id": zid, "name": name} for name, (zid, _) in self.zones.items()
                         if name == query.get("name")]
                return self._answer(handler, 200, found)
            zone = next((name for name, (zid, _) in self.zones.items()
                         if len(parts) >= 3 and parts[:1] == ["zones"] and parts[1] == zid
                         and parts[2] == "dns_records"), None)
            if zone is None:
                return self._answer(handler, 404, errors=[{"code": 7003,
                                                          "message": "Could not route"}])
            if method == "GET" and len(parts) == 3:
                found = [r for r in self.records.values() if r["zone"] == zone
                         and r["type"] == query.get("type", r["type"])
                         and r["name"] == query.get("name", r["name"])]
                return self._answer(handler, 200, found)
            if method == "POST" and len(parts) == 3:
                if any(r["name"] == body.get("name") and r["content"] == body.get("content")
                       and r["type"] == body.get("type") for r in self.records.values()):
                    return self._answer(handler, 400, errors=[{
                        "code": 81058, "message": "An identical record already exists."}])
                record = {"id": uuid.uuid4().hex, "zone": zone, "type": body["type"],
                          "name": body["name"], "content": body["content"],
                          "ttl": body.get("ttl", 1)}
                self._nameserver(zone, record, add=True)
                self.records[record["id"]] = record
                return self._answer(handler, 200, record)
            if method == "DELETE" and len(parts) == 4 and parts[3] in self.records:
                record = self.records.pop(parts[3])
                self._nameserver(zone, record, add=False)
                return self._answer(handler, 200, {"id": record["id"]})
        return self._answer(handler, 404, errors=[{"code": 81044,
                                                  "message": "Record does not exist."}])

    def _nameserver(self, zone: str, record: dict[str, Any], add: bool) -> None:
        key = self.zones[zone][1]
        update = dns.update.UpdateMessage(
            zone + ".", keyring={dns.name.from_text(key): dns.tsig.Key(
                key, self.bind.keys[key], dns.tsig.HMAC_SHA256)},
            keyname=dns.name.from_text(key), keyalgorithm=dns.tsig.HMAC_SHA256)
        name = record["name"] + "."
        if add:
            update.add(name, 60, "TXT", f'"{record["content"]}"')
        else:
            update.delete(name, "TXT", f'"{record["content"]}"')
        dns.query.tcp(update, self.bind.host, port=self.bind.port, timeout=5)

    @staticmethod
    def _answer(handler: BaseHTTPRequestHandler, status: int, result: Any = None,
                errors: list[dict[str, Any]] | None = None) -> None:
        payload = json.dumps({"success": status == 200, "errors": errors or [],
                              "messages": [], "result": result}).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)
