"""The operator's status reports: a report that changes nothing is no write."""

from __future__ import annotations

from certop.k8s.certificates import status_change


def test_a_status_report_that_changes_nothing_writes_nothing() -> None:
    ready = {"type": "Ready", "status": "True", "reason": "Ready", "message": "ok",
             "lastTransitionTime": "2026-01-01T00:00:00Z"}
    current = {"conditions": [ready], "notAfter": "2027-01-01T00:00:00Z",
               "failedIssuanceAttempts": 0}
    later = {**ready, "lastTransitionTime": "2026-06-01T00:00:00Z"}
    assert status_change(current, {"conditions": [later], "failedIssuanceAttempts": 0,
                                   "order": None}) is None
    # A change writes; the condition keeps its transition time while its status stays.
    changed = status_change(current, {"conditions": [{**later, "message": "renewed"}]})
    assert changed == {"conditions": [{**ready, "message": "renewed"}]}
    failed = {**later, "status": "False", "reason": "ChallengeFailed"}
    assert status_change(current, {"conditions": [failed]}) == {"conditions": [failed]}
