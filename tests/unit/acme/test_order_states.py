"""Authorization states from which an order can never complete (RFC 8555 section 7.1.6), read
from the CA's JSON as the driver reads it, and named in words."""

from __future__ import annotations

from typing import Any

import pytest
from acme import messages

from certop.acme.orders import OrderSession, status_word


def authz(status: str, challenge: dict[str, Any] | None = None) -> messages.AuthorizationResource:
    chall = {"type": "http-01", "url": "https://ca.test/chall/1", "token": "a" * 43,
             "status": "pending", **(challenge or {})}
    body = messages.Authorization.from_json({
        "identifier": {"type": "dns", "value": "web.certop.test"}, "status": status,
        "challenges": [chall]})
    return messages.AuthorizationResource(body=body, uri="https://ca.test/authz/1")


@pytest.mark.parametrize("status", ["invalid", "deactivated", "expired", "revoked"])
def test_a_dead_authorization_fails_with_its_status_in_words(status: str) -> None:
    failed = OrderSession._dead(authz(status))
    assert failed is not None
    assert str(failed) == ("challenge for web.certop.test failed: authorization is "
                           f"{status} (the CA gave no detail)")


def test_an_invalid_challenge_carries_the_cas_detail_even_while_its_authorization_is_pending(
        ) -> None:
    failed = OrderSession._dead(authz("pending", {
        "status": "invalid", "error": {"type": "urn:ietf:params:acme:error:connection",
                                       "detail": "connection refused"}}))
    assert str(failed) == ("challenge for web.certop.test failed: http-01 challenge invalid: "
                           "connection refused")


@pytest.mark.parametrize("status", ["pending", "valid"])
def test_a_live_authorization_is_not_dead(status: str) -> None:
    assert OrderSession._dead(authz(status)) is None


def test_statuses_are_words() -> None:
    assert status_word(messages.STATUS_INVALID) == "invalid"
    assert status_word("pending") == "pending"
