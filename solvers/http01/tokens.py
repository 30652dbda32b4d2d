"""Challenge tokens waiting to be fetched by the CA: token -> key authorization.

Shared between the solver (worker threads) and the proxy's responder (event loop): reads are a
single dict lookup, writes replace the dict entry; both are atomic under the GIL.
With a `directory` the tokens are also files there, so that every proxy process of
`--workers N` (any of which may get the CA's request) can answer: a token this process does
not hold in memory is looked up on disk. Key authorizations are not secrets (the CA fetches
them over plain HTTP), but nothing else is ever read from that directory.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

CHALLENGE_PATH = "/.well-known/acme-challenge/"
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]+$")


class TokenStore:
    def __init__(self, directory: Path | None = None) -> None:
        self._tokens: dict[str, str] = {}
        self.directory = directory

    def put(self, token: str, key_authorization: str) -> None:
        if not _TOKEN_RE.match(token):
            raise ValueError("an ACME token is base64url")
        self._tokens[token] = key_authorization
        if self.directory is not None:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            tmp = self.directory / f".{token}.tmp"
            tmp.write_text(key_authorization)
            os.replace(tmp, self.directory / token)

    def remove(self, token: str) -> None:
        self._tokens.pop(token, None)
        if self.directory is not None and _TOKEN_RE.match(token):
            with contextlib.suppress(FileNotFoundError):
                (self.directory / token).unlink()

    def get(self, token: str) -> str | None:
        found = self._tokens.get(token)
        if found is None and self.directory is not None and _TOKEN_RE.match(token):
            with contextlib.suppress(OSError, UnicodeDecodeError):
                return (self.directory / token).read_text()
        return found

    def answer(self, path: str) -> str | None:
        """The body to serve for a request path, or None when it is no known challenge."""
        if not path.startswith(CHALLENGE_PATH):
            return None
        return self.get(path[len(CHALLENGE_PATH) :])

    def __len__(self) -> int:
        return len(self._tokens)
