"""Errors grouped by what to do next.

- `ConfigError`: the user must change a file or object; names the source, object and field.
- `TemporaryError`: try again later (`retry_after` seconds when the server said so).
- `PermanentError`: will not succeed without a change somewhere; retried only slowly.

Shells convert these at their boundary (CLI exit code 2, kopf errors, events); they never
leak a traceback for a user mistake.
"""

from __future__ import annotations


class CertopError(Exception):
    """Root of every error certop raises on purpose."""


class PermanentError(CertopError):
    """Retrying the same thing will not help until something is changed."""


class TemporaryError(CertopError):
    """Retrying later may help; `retry_after` is the server's hint in seconds, if any."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ConfigError(PermanentError):
    """Bad input: names where it is (file, object, field) and what is expected."""

    def __init__(self, source: str, obj: str, field: str, expected: str) -> None:
        self.source = source
        self.obj = obj
        self.field = field
        self.expected = expected
        where = ": ".join(part for part in (source, obj, field) if part)
        super().__init__(f"{where}: {expected}")


class AcmeUnavailable(TemporaryError):
    """The ACME server could not be reached or answered with a server error."""


class RateLimited(TemporaryError):
    """The CA said `rateLimited`; `retry_after` is when to come back."""


class ChallengeFailed(TemporaryError):
    """The CA could not validate a challenge for `identifier`; `detail` is the CA's text."""

    def __init__(self, identifier: str, detail: str) -> None:
        super().__init__(f"challenge for {identifier} failed: {detail}")
        self.identifier = identifier
        self.detail = detail


class OrderFailed(TemporaryError):
    """The order became invalid; a fresh order is needed."""


class AcmeRejected(PermanentError):
    """The CA refused the request for a reason retrying will not fix (e.g. unauthorized)."""


class AlreadyDue(TemporaryError):
    """A certificate is due for renewal right after it was issued (clock skew, a lifetime too
    short for the policy, a CA asking for renewal at once): back off instead of looping."""
