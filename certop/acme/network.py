"""A `ClientNetwork` that survives a real CA: bad nonces, 5xx, dropped connections, 429.

The stock client retries `badNonce` once; at a 50 % rejection rate that fails most issuances.
Here a POST is re-signed with a fresh nonce up to `BAD_NONCE_TRIES` times, and transient server
trouble (connection errors, timeouts, 5xx) is retried a few times with exponential backoff and
jitter before it becomes an `AcmeUnavailable` for the scheduler's slower backoff. Whatever comes
out of this module is a `certop.core.errors` error carrying the CA's detail and Retry-After.
"""

from __future__ import annotations

import datetime
import email.utils
import logging
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

import requests
from acme import client, errors, messages

from certop.core.clock import Clock, SystemClock
from certop.core.errors import (
    AcmeRejected,
    AcmeUnavailable,
    CertopError,
    RateLimited,
    TemporaryError,
)

log = logging.getLogger(__name__)

BAD_NONCE_TRIES = 20
TRANSIENT_TRIES = 4
TRANSIENT_BASE_DELAY = 0.1
T = TypeVar("T")

SYSTEM_CLOCK: Clock = SystemClock()

# Problem types (RFC 8555 section 6.7) that a retry of the same request will not fix.
_PERMANENT = {
    "unauthorized", "rejectedIdentifier", "unsupportedIdentifier", "caa", "badCSR",
    "invalidContact", "unsupportedContact", "externalAccountRequired", "accountDoesNotExist",
    "userActionRequired", "malformed", "badSignatureAlgorithm", "badPublicKey",
}


def parse_retry_after(value: str | None, clock: Clock = SYSTEM_CLOCK) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP-date), None if absent/bad.

    An HTTP-date is the CA's wall time, so it is measured against `clock.now()`: the system
    clock unless a caller (a test) passes another. The result is relative seconds, for the
    caller to schedule on its own (injected) monotonic clock."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # "²".isdigit() is True, float("²") raises
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return max(0.0, (when - clock.now()).total_seconds())


class RetryingNetwork(client.ClientNetwork):
    """One per concurrent issuance (it holds a nonce pool and a `requests.Session`)."""

    def __init__(self, *args: Any, clock: Clock = SYSTEM_CLOCK, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.clock = clock
        """The wall clock a Retry-After HTTP-date is measured against."""
        self.last_response: requests.Response | None = None
        self.requests_sent = 0

    def _send_request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:
        self.requests_sent += 1
        response = super()._send_request(method, url, *args, **kwargs)
        self.last_response = response
        return response

    def _retry_after(self) -> float | None:
        if self.last_response is None:
            return None
        return parse_retry_after(self.last_response.headers.get("Retry-After"), self.clock)

    def _transient(self, fn: Callable[[], T], what: str) -> T:
        delay = TRANSIENT_BASE_DELAY
        bad_nonces = 0
        attempt = 0
        while True:
            self.last_response = None
            try:
                return fn()
            except messages.Error as exc:
                if exc.code == "badNonce" and bad_nonces < BAD_NONCE_TRIES:
                    bad_nonces += 1
                    continue
                status = self.last_response.status_code if self.last_response else 0
                if status < 500 or attempt + 1 >= TRANSIENT_TRIES:
                    raise map_problem(exc, self._retry_after(), what) from exc
            except (requests.ConnectionError, requests.Timeout) as exc:
                if attempt + 1 >= TRANSIENT_TRIES:
                    raise AcmeUnavailable(f"{what}: ACME server unreachable: {exc}") from exc
            except errors.ConflictError:
                raise
            except errors.ClientError as exc:
                status = self.last_response.status_code if self.last_response else 0
                if status < 500 or attempt + 1 >= TRANSIENT_TRIES:
                    raise AcmeUnavailable(
                        f"{what}: unexpected answer from the ACME server (HTTP {status})",
                        self._retry_after(),
                    ) from exc
            attempt += 1
            # A short pause between retries of one request; longer waits are the scheduler's.
            time.sleep(delay * (0.5 + random.random() / 2))
            delay *= 2

    def post(self, *args: Any, **kwargs: Any) -> requests.Response:
        url = args[0] if args else kwargs.get("url", "?")
        return self._transient(lambda: self._post_once(*args, **kwargs), f"POST {url}")

    def get(self, url: str, content_type: str = client.ClientNetwork.JSON_CONTENT_TYPE,
            **kwargs: Any) -> requests.Response:
        return self._transient(
            lambda: super(RetryingNetwork, self).get(url, content_type, **kwargs), f"GET {url}"
        )


def map_problem(exc: messages.Error, retry_after: float | None, what: str) -> CertopError:
    """An ACME problem document as the certop error that says what to do next."""
    detail = exc.detail or exc.description or str(exc)
    code = exc.code or "unknown"
    if code == "rateLimited":
        return RateLimited(f"{what}: rate limited by the CA: {detail}", retry_after or 3600.0)
    if code in _PERMANENT:
        return AcmeRejected(f"{what}: the CA refused ({code}): {detail}")
    return TemporaryError(f"{what}: the CA answered {code}: {detail}", retry_after)
