"""The issuance lifecycle as a table: (state, observation) -> (state, actions), exactly."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from certop.core.backoff import Backoff
from certop.core.issuing import (
    ClearJournal,
    Failed,
    Issue,
    JournalCleared,
    Looked,
    Policy,
    ReportFailed,
    ReportHeld,
    ReportInvalid,
    ReportIssued,
    ReportReady,
    ReportStage,
    Restored,
    SpecInvalid,
    State,
    Succeeded,
    Wait,
    transition,
)
from certop.core.models import CertificateSpec, Fqdn, ObjectRef, SecretName
from certop.core.renewal import CertFacts, Reason, renewal_point

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)
SPEC = CertificateSpec("default", SecretName("s"), (Fqdn("a.example"),), "default")
FACTS = CertFacts(frozenset({"a.example"}), T0, T0 + 90 * DAY, SPEC.key_algorithm)
"""Issued at T0 for 90 days: renewal in days 54..60 (its own spread)."""
POLICY = Policy(Backoff(base=10.0, cap=3600.0), recheck=3600.0)
DUE = renewal_point(FACTS)
ALREADY_DUE = "the new certificate is already due (RenewalDue): is this machine's clock " \
              "ahead of the CA's?"


def look(facts: CertFacts | None = FACTS, now: dt.datetime = T0 + DAY,
         ari_at: dt.datetime | None = None, draw: float = 0.0,
         forced: bool = False, mono: float = 0.0, spec: CertificateSpec = SPEC) -> Looked:
    return Looked(spec, facts, ari_at, now, draw, forced, mono)


OTHER = dataclasses.replace(SPEC, hosts=(Fqdn("a.example"), Fqdn("b.example")))
"""SPEC asking for one more name."""
OWNED = dataclasses.replace(SPEC, owners=(ObjectRef("Ingress", "default", "web"),))
"""SPEC asked for by one more Ingress (the same certificate)."""


TABLE = [
    pytest.param(State(), Restored(3, 25.0, True), State(3, 25.0, journalled=True), (),
                 id="restored-from-the-store"),
    pytest.param(State(), look(None), State(journalled=True, spec=SPEC),
                 (ReportStage("trigger"), Issue(Reason.MISSING)), id="missing-is-issued"),
    pytest.param(State(), look(forced=True), State(journalled=True, spec=SPEC),
                 (ReportStage("trigger"), Issue(Reason.FORCED)), id="forced-is-issued"),
    pytest.param(State(failures=2), look(), State(failures=2, reported=True, spec=SPEC),
                 (ReportReady(FACTS, DUE, 2), ReportStage("ready"), Wait(3600.0)),
                 id="current-is-ready-once-and-rechecked"),
    pytest.param(State(reported=True), look(now=DUE - dt.timedelta(seconds=5)),
                 State(reported=True, spec=SPEC), (ReportReady(FACTS, DUE, 0), Wait(5.0)),
                 id="ready-reported-once-waits-for-the-renewal-time"),
    pytest.param(State(journalled=True, fresh=True), look(), State(journalled=True,
                 reported=True, spec=SPEC), (ClearJournal(), ReportReady(FACTS, DUE, 0),
                                  ReportStage("ready"), Wait(3600.0)),
                 id="a-journal-left-after-store-is-cleared"),
    pytest.param(State(journalled=True), JournalCleared(True), State(), (),
                 id="journal-cleared"),
    pytest.param(State(journalled=True), JournalCleared(False), State(journalled=True), (),
                 id="journal-not-cleared-is-tried-again"),
    pytest.param(State(), look(ari_at=T0 + 2 * DAY, now=T0 + 3 * DAY),
                 State(journalled=True, spec=SPEC),
                 (ReportStage("trigger"), Issue(Reason.RENEWAL_DUE)),
                 id="ari-time-takes-precedence"),
    pytest.param(State(3, 25.0), look(now=DUE), State(3, 0.0, retry_at=25.0, spec=SPEC),
                 (ReportHeld(3, 25.0), Wait(25.0)), id="restored-backoff-is-waited-out"),
    pytest.param(State(3, 25.0), look(), State(3, 25.0, reported=True, spec=SPEC),
                 (ReportReady(FACTS, DUE, 3), ReportStage("ready"), Wait(3600.0)),
                 id="restored-backoff-irrelevant-when-current"),
    pytest.param(State(fresh=True), look(now=DUE, draw=0.0),
                 State(failures=1, retry_at=5.0, spec=SPEC),
                 (ReportFailed("AlreadyDue", ALREADY_DUE, 1, 5.0), Wait(5.0)),
                 id="fresh-and-due-is-a-failure-not-a-hot-loop"),
    pytest.param(State(fresh=True), look(now=T0 + 3 * DAY, ari_at=T0 + 2 * DAY),
                 State(failures=1, retry_at=5.0, spec=SPEC),
                 (ReportFailed("AlreadyDue", "the CA asks to replace the certificate it just "
                               "issued", 1, 5.0), Wait(5.0)),
                 id="fresh-and-the-ca-asks-at-once"),
    pytest.param(State(failures=2, journalled=True, fresh=True), Succeeded(),
                 State(fresh=True), (ReportIssued(),), id="success-resets-failures"),
    pytest.param(State(failures=2, reported=True, fresh=True),
                 Failed("ChallengeFailed", "boom", None, 1.0 - 1e-9),
                 State(failures=3, reported=True, retry_at=pytest.approx(40.0)),
                 (ReportFailed("ChallengeFailed", "boom", 3,
                                                                 pytest.approx(40.0)),
                                                    Wait(pytest.approx(40.0))),
                 id="failure-backs-off"),
    pytest.param(State(), Failed("RateLimited", "slow down", 600.0, 0.0, mono=100.0),
                 State(failures=1, retry_at=700.0),
                 (ReportFailed("RateLimited", "slow down", 1, 600.0), Wait(600.0)),
                 id="never-under-retry-after"),
    pytest.param(State(failures=1, retry_at=40.0, spec=SPEC), look(None, mono=30.0),
                 State(failures=1, retry_at=40.0, spec=SPEC), (Wait(10.0),),
                 id="a-wake-during-the-backoff-waits-the-rest"),
    pytest.param(State(failures=1, retry_at=40.0, spec=SPEC), look(None, mono=41.0),
                 State(failures=1, retry_at=40.0, journalled=True, spec=SPEC),
                 (ReportStage("trigger"), Issue(Reason.MISSING)), id="after-the-backoff"),
    pytest.param(State(failures=3, retry_at=400.0, spec=SPEC),
                 look(None, mono=30.0, spec=OTHER),
                 State(journalled=True, spec=OTHER),
                 (ReportStage("trigger"), Issue(Reason.MISSING)),
                 id="a-changed-spec-ends-the-backoff"),
    pytest.param(State(failures=3, retry_at=400.0, spec=SPEC),
                 look(None, mono=30.0, spec=OWNED),
                 State(failures=3, retry_at=400.0, spec=OWNED), (Wait(370.0),),
                 id="another-owner-is-no-change"),
    pytest.param(State(failures=2), SpecInvalid("bad"), State(failures=2),
                 (ReportInvalid("bad", 2), Wait(3600.0)), id="invalid-spec-waits-uncounted"),
]


@pytest.mark.parametrize(("state", "seen", "after", "actions"), TABLE)
def test_transition(state: State, seen: object, after: State, actions: tuple[object, ...]
                    ) -> None:
    assert transition(state, seen, POLICY) == (after, actions)  # type: ignore[arg-type]
