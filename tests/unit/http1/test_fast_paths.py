"""The fast paths must agree with the general parser, and step aside whenever a message is not
plain (hop-by-hop headers, several Hosts or Content-Lengths, odd framing)."""

from __future__ import annotations

import pytest

from certop.proxy.http1 import fast_request, fast_response, parse_head, request_framing


@pytest.mark.parametrize(
    ("raw", "fast"),
    [
        pytest.param(b"GET /a?b=1 HTTP/1.1\r\nHost: Ex.test:8080\r\nAccept: */*\r\n\r\n", True,
                     id="plain"),
        pytest.param(b"POST /a HTTP/1.1\r\nHost: ex.test\r\nContent-Length: 12\r\n\r\n", True,
                     id="with-length"),
        pytest.param(b"GET / HTTP/1.0\r\nHost: ex.test\r\n\r\n", True, id="http-1.0"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", False, id="two-hosts"),
        pytest.param(b"GET / HTTP/1.1\r\n\r\n", False, id="no-host"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", False,
                     id="connection"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n", False,
                     id="x-forwarded"),
        pytest.param(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", False,
                     id="chunked"),
        pytest.param(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1"
                     b"\r\n\r\n", False, id="two-lengths"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", False,
                     id="bad-length"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n", False, id="folded"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n", False,
                     id="upgrade"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nTE: trailers\r\n\r\n", False, id="te"),
        pytest.param(b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n", False, id="absolute-form"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nX_Real_IP: 1\r\n\r\n", False,
                     id="underscore-name"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nCookie: _ga=1_2\r\n\r\n", True,
                     id="underscore-value"),
    ],
)
def test_fast_request_agrees_with_the_general_parser(raw: bytes, fast: bool) -> None:
    got = fast_request(raw)
    assert (got is not None) is fast
    if got is None:
        return
    head = parse_head(raw, request=True)
    assert head is not None
    assert (got.method, got.target, got.version) == head.start
    assert got.host == head.get(b"host")
    assert got.length == (request_framing(head).length or 0)


@pytest.mark.parametrize(
    ("raw", "method", "keep", "expected"),
    [
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", b"GET", True, (200, 5),
                     id="plain"),
        pytest.param(b"HTTP/1.1 404 Not Found\r\nConnection: keep-alive\r\nContent-Length: 0"
                     b"\r\n\r\n", b"GET", True, (404, 0), id="nginx-keep-alive"),
        pytest.param(b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n",
                     b"GET", False, None, id="keep-alive-but-closing"),
        pytest.param(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
                     b"GET", True, None, id="connection-close"),
        pytest.param(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"GET", True,
                     None, id="chunked"),
        pytest.param(b"HTTP/1.1 200 OK\r\n\r\n", b"GET", True, None, id="until-close"),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", b"HEAD", True, None,
                     id="head"),
        pytest.param(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n", b"GET", True,
                     None, id="not-modified"),
        pytest.param(b"HTTP/1.1 101 Switching\r\nUpgrade: x\r\n\r\n", b"GET", True, None,
                     id="switching"),
        pytest.param(b"HTTP/1.1 200 OK\rSet-Cookie: a=b\r\nContent-Length: 5\r\n\r\n", b"GET",
                     True, None, id="bare-cr-in-reason"),
        pytest.param(b"HTTP/1.1 200 O\tK\r\nContent-Length: 5\r\n\r\n", b"GET", True,
                     (200, 5), id="htab-in-reason"),
    ],
)
def test_fast_response_takes_only_plain_responses(raw: bytes, method: bytes, keep: bool,
                                                  expected: tuple[int, int] | None) -> None:
    assert fast_response(raw, method, keep) == expected


@pytest.mark.parametrize("name", [b"Proxy-Authorization", b"X-Forwarded-Proto", b"Keep-Alive",
                                  b"Trailer", b"TE", b"Connection", b"Upgrade", b"Expect",
                                  b"Forwarded", b"X-Real-IP"])
def test_every_hop_by_hop_or_forwarded_header_takes_the_general_path(name: bytes) -> None:
    raw = b"GET / HTTP/1.1\r\nHost: a\r\n" + name + b": x\r\n\r\n"
    assert fast_request(raw) is None
