from __future__ import annotations

import datetime as dt

from acme import messages

from certop.acme.network import map_problem, parse_retry_after
from certop.core.errors import AcmeRejected, RateLimited, TemporaryError


def test_retry_after_reads_seconds_and_http_dates() -> None:
    now = dt.datetime(2026, 11, 22, 12, 0, 0, tzinfo=dt.UTC)
    assert parse_retry_after("120") == 120
    assert parse_retry_after("Sun, 22 Nov 2026 12:01:00 GMT", now) == 60
    assert parse_retry_after("Sun, 22 Nov 2026 11:00:00 GMT", now) == 0
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
