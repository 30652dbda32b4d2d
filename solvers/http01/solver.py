"""The HTTP-01 solver: present into the token store, self-check through certop's own listener.

The self-check fetches `http://<identifier>/.well-known/acme-challenge/<token>` from the
address certop's HTTP port listens on, with the identifier as Host header. That proves the
proxy routes the challenge for that host (no user route can shadow it) without depending on
hairpin NAT or public DNS (cert-manager #863, #1292).
"""

from __future__ import annotations

import http.client
import logging

from solvers.base import Challenge, TokenSink
from solvers.http01.tokens import CHALLENGE_PATH

log = logging.getLogger(__name__)


class Http01Solver:
    challenge_type = "http-01"

    def __init__(self, tokens: TokenSink, self_check_addr: tuple[str, int] | None,
                 timeout: float = 5.0) -> None:
        self.tokens = tokens
        self.self_check_addr = self_check_addr
        self.timeout = timeout

    def present(self, challenge: Challenge) -> None:
        self.tokens.put(challenge.token, challenge.key_authorization)

    def check(self, challenge: Challenge) -> bool:
        identifier, token = challenge.identifier, challenge.token
        if self.self_check_addr is None:
            return True
        host, port = self.self_check_addr
        conn = http.client.HTTPConnection(host, port, timeout=self.timeout)
        try:
            conn.request("GET", CHALLENGE_PATH + token, headers={"Host": identifier})
            resp = conn.getresponse()
            body = resp.read()
        except OSError as exc:
            log.info("self-check for %s: cannot reach %s:%s: %s", identifier, host, port, exc)
            return False
        finally:
            conn.close()
        ok = resp.status == 200 and body.decode(errors="replace").strip() == \
            challenge.key_authorization
        if not ok:
            log.info("self-check for %s: got HTTP %s, not the key authorization",
                     identifier, resp.status)
        return ok

    def cleanup(self, challenge: Challenge) -> None:
        self.tokens.remove(challenge.token)
