"""Challenge tokens waiting to be fetched by the CA: token -> key authorization.

Shared between the solver (worker threads) and the proxy's responder (event loop): reads are a
single dict lookup, writes replace the dict entry; both are atomic under the GIL.
"""

from __future__ import annotations

import re

CHALLENGE_PATH = "/.well-known/acme-challenge/"
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]+$")


class TokenStore:
    def __init__(self) -> None:
        self._tokens: dict[str, str] = {}

    def put(self, token: str, key_authorization: str) -> None:
        if not _TOKEN_RE.match(token):
            raise ValueError("an ACME token is base64url")
        self._tokens[token] = key_authorization

    def remove(self, token: str) -> None:
        self._tokens.pop(token, None)

    def get(self, token: str) -> str | None:
        return self._tokens.get(token)

    def answer(self, path: str) -> str | None:
        """The body to serve for a request path, or None when it is no known challenge."""
        if not path.startswith(CHALLENGE_PATH):
            return None
        return self._tokens.get(path[len(CHALLENGE_PATH) :])

    def __len__(self) -> int:
        return len(self._tokens)
