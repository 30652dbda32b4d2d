"""Failure backoff per certificate: exponential with jitter, never under the CA's Retry-After.

Schedule (base 10 s, cap 1 h, jitter 50-100 %): ~10 s, 20 s, 40 s, ... 1 h; a `retry_after`
from the CA (rateLimited, 503) is honoured as the minimum. Pure: the caller passes the random
draw so tests are exact.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    base: float = 10.0
    """Delay after the first failure, seconds."""
    cap: float = 3600.0
    """Largest delay, seconds."""

    def delay(self, failures: int, draw: float, retry_after: float | None = None) -> float:
        """Seconds to wait after `failures` consecutive failures; `draw` is uniform in [0, 1)."""
        if failures <= 0:
            return 0.0
        raw = min(self.cap, self.base * 2.0 ** min(failures - 1, 30))
        jittered = raw * (0.5 + draw / 2)
        return max(jittered, retry_after or 0.0)

    def remaining(self, failures: int, last_failure: datetime.datetime | None,
                  now: datetime.datetime, draw: float) -> float:
        """Seconds still to wait after `failures` failures, the last at `last_failure` (as a
        restarted process reads them back from where it wrote them): the backoff continues
        where it was instead of restarting from zero."""
        if failures <= 0 or last_failure is None:
            return 0.0
        passed = max((now - last_failure).total_seconds(), 0.0)  # a time ahead: no longer
        return max(self.delay(failures, draw) - passed, 0.0)
