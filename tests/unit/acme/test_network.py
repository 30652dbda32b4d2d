from __future__ import annotations

import datetime as dt
import http.server
import threading

import pytest
from acme import messages
from fakeclock import FakeClock

from certop.acme.network import RetryingNetwork, map_problem, parse_retry_after
from certop.core.errors import AcmeRejected, RateLimited, TemporaryError


def test_retry_after_reads_seconds_and_http_dates() -> None:
    clock = FakeClock(dt.datetime(2026, 11, 22, 12, 0, 0, tzinfo=dt.UTC))
    assert parse_retry_after("120") == 120
    assert parse_retry_after("Sun, 22 Nov 2026 12:01:00 GMT", clock) == 60
    assert parse_retry_after("Sun, 22 Nov 2026 11:00:00 GMT", clock) == 0
    clock.advance(dt.timedelta(seconds=45))  # an HTTP-date is measured on the clock passed in
    assert parse_retry_after("Sun, 22 Nov 2026 12:01:00 GMT", clock) == 15
    assert parse_retry_after("soon") is None
    assert parse_retry_after("²") is None  # a Unicode digit is no number of seconds
    assert parse_retry_after(None) is None


def test_problems_map_to_what_to_do_next() -> None:
    limited = map_problem(messages.Error.with_code("rateLimited", detail="too many"), 30, "x")
    assert isinstance(limited, RateLimited) and limited.retry_after == 30
    refused = map_problem(messages.Error.with_code("rejectedIdentifier", detail="no"), None, "x")
    assert isinstance(refused, AcmeRejected) and "no" in str(refused)
    other = map_problem(messages.Error.with_code("serverInternal", detail="oops"), None, "x")
    assert isinstance(other, TemporaryError) and not isinstance(other, RateLimited)


class _RateLimiting(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b'{"type": "urn:ietf:params:acme:error:rateLimited", "detail": "slow down"}'
        self.send_response(429)
        self.send_header("Content-Type", "application/problem+json")
        self.send_header("Retry-After", "Sun, 22 Nov 2026 12:10:00 GMT")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_the_network_measures_a_retry_after_date_on_its_clock() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RateLimiting)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        clock = FakeClock(dt.datetime(2026, 11, 22, 12, 0, 0, tzinfo=dt.UTC))
        net = RetryingNetwork(None, clock=clock)
        with pytest.raises(RateLimited) as raised:
            net.get(f"http://127.0.0.1:{server.server_address[1]}/dir")
        assert raised.value.retry_after == 600
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
