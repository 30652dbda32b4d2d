"""Go durations (`720h`, `1h30m`, `90s`), as cert-manager's `renewBefore` and the
`cert-manager.io/renew-before` annotation write them."""

from __future__ import annotations

import datetime
import re

_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(h|ms|m|s)")  # ASCII digits, as Go reads them
_UNIT = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def parse_duration(text: str) -> datetime.timedelta:
    """A positive Go duration; ValueError when it is not one."""
    value = text.strip()
    if not value or _PART.sub("", value):
        raise ValueError(f"not a duration: {text!r}")
    seconds = sum(float(number) * _UNIT[unit] for number, unit in _PART.findall(value))
    if seconds <= 0:
        raise ValueError(f"not a positive duration: {text!r}")
    return datetime.timedelta(seconds=seconds)


def format_duration(delta: datetime.timedelta) -> str:
    """As Go prints it: `720h0m0s`."""
    total = int(delta.total_seconds())
    hours, rest = divmod(total, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h{minutes}m{seconds}s"
