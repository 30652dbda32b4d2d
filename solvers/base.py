"""The solver interface: how certop proves control of an identifier to the CA.

An ACME driver calls, per pending authorization: `present` (make the key authorization
reachable), `check` (certop's own self-check before telling the CA to validate), and on every
exit path `cleanup`. All three are idempotent: a resumed order presents again.
"""

from __future__ import annotations

from typing import Protocol


class Solver(Protocol):
    challenge_type: str
    """The ACME challenge type this solver answers ("http-01", "dns-01")."""

    def present(self, identifier: str, token: str, key_authorization: str) -> None: ...

    def check(self, identifier: str, token: str, key_authorization: str) -> bool:
        """True when the CA would see what was presented (one bounded attempt, no waiting)."""
        ...

    def cleanup(self, identifier: str, token: str) -> None: ...
