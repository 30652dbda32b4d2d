"""One cache of the CA's renewal information (RFC 9773) for both modes, on one clock.

Per certificate (keyed by its namespace and Secret name): the CA's suggested renewal time for
the stored certificate and when to ask again, scheduled on the injected clock's monotonic time
from the CA's relative Retry-After (never comparing the CA's wall time with an injected clock).
A failed question (malformed answer, CA unreachable) keeps the last answer for the same
certificate and is asked again after a backoff (never under the CA's Retry-After, never in a
tight loop); a new certificate is asked about at once.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from certop.acme.accounts import Account
from certop.core.backoff import Backoff
from certop.core.clock import Clock

log = logging.getLogger(__name__)
Key = tuple[str, str]
MIN_INTERVAL = 60.0
"""Seconds between two questions about the same certificate at least (whatever the CA says)."""


Answer = tuple[datetime.datetime | None, float]
Blocking = Callable[[Callable[[], Answer]], Awaitable[Answer]]
"""Runs a blocking call off the event loop (the mode's thread pool)."""


@dataclass
class _Entry:
    cert: bytes
    when: datetime.datetime | None
    next_ask: float
    """Monotonic time of the next question."""


class RenewalInfoCache:
    def __init__(self, clock: Clock, backoff: Backoff, rand: Callable[[], float],
                 blocking: Blocking) -> None:
        self.clock = clock
        self.backoff = backoff
        self.rand = rand
        self._blocking = blocking
        self._entries: dict[Key, _Entry] = {}
        self._failures: dict[Key, int] = {}

    def failures(self, key: Key) -> int:
        """Consecutive failed questions about `key`'s certificate."""
        return self._failures.get(key, 0)

    def known(self, key: Key, cert_pem: bytes) -> datetime.datetime | None:
        """The last answer about this very certificate (None: none, or no renewal info)."""
        entry = self._entries.get(key)
        return entry.when if entry is not None and entry.cert == cert_pem else None

    def wait(self, key: Key, cert_pem: bytes) -> float:
        """Seconds until the next question about this certificate is due (0: due now)."""
        entry = self._entries.get(key)
        if entry is None or entry.cert != cert_pem:
            return 0.0
        return max(entry.next_ask - self.clock.monotonic(), 0.0)

    def forget(self, key: Key) -> None:
        self._entries.pop(key, None)
        self._failures.pop(key, None)

    async def ask(self, key: Key, cert_pem: bytes, label: str,
                  account: Callable[[], Awaitable[Account]]) -> datetime.datetime | None:
        """Ask the CA about `cert_pem` and remember the answer; returns the suggested renewal
        time (the last known one when the question failed). `label` names the certificate
        in log lines."""
        previous = self.known(key, cert_pem)
        try:
            acct = await account()
            when, again = await self._blocking(lambda: acct.renewal_info(cert_pem))
        except Exception as exc:  # whatever the CA answered: logged, asked again after a backoff
            failures = self._failures[key] = self._failures.get(key, 0) + 1
            delay = self.backoff.delay(failures, self.rand(), getattr(exc, "retry_after", None))
            log.warning("%s: no renewal information (%s); asking again in %.0fs", label, exc,
                        delay)
            self._entries[key] = _Entry(cert_pem, previous, self.clock.monotonic() + delay)
            return previous
        self._failures.pop(key, None)
        self._entries[key] = _Entry(cert_pem, when,
                                    self.clock.monotonic() + max(again, MIN_INTERVAL))
        if when is not None:
            log.info("%s: the CA suggests renewal at %s", label, when.isoformat())
        return when
