"""A tiny HTTP backend for the demo and tests: answers every request with who it is and what
it saw (method, path, Host, X-Forwarded-*). Usage: backend.py PORT [NAME]."""

from __future__ import annotations

import contextlib
import http.server
import json
import sys


def make_handler(name: str) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "certop-demo-backend"

        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body_in = self.rfile.read(length) if length else b""
            payload = {
                "backend": name,
                "method": self.command,
                "path": self.path,
                "host": self.headers.get("Host"),
                "x_forwarded_proto": self.headers.get("X-Forwarded-Proto"),
                "x_forwarded_for": self.headers.get("X-Forwarded-For"),
                "body_bytes": len(body_in),
            }
            body = (f"Hello from {name} over certop!\n" + json.dumps(payload) + "\n").encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _answer

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


def main() -> None:
    port = int(sys.argv[1])
    name = sys.argv[2] if len(sys.argv) > 2 else "demo-backend"
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), make_handler(name))
    server.daemon_threads = True
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


if __name__ == "__main__":
    main()
