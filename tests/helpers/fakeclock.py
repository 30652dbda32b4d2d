"""A clock tests move by hand (renewal windows, backoff), never by sleeping."""

from __future__ import annotations

import datetime


class FakeClock:
    def __init__(self, now: datetime.datetime | None = None) -> None:
        self._now = now or datetime.datetime.now(datetime.UTC)
        self._mono = 1000.0

    def now(self) -> datetime.datetime:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def advance(self, delta: datetime.timedelta) -> None:
        self._now += delta
        self._mono += delta.total_seconds()

    def set(self, when: datetime.datetime) -> None:
        """Jump the wall clock (either way); the monotonic clock does not move."""
        self._now = when
