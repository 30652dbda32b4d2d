"""One certificate's issuance lifecycle as a pure transition: (state, observation) -> (state,
actions).

The driver (`certop.issuance.pipeline`) observes (the stored certificate's facts, the CA's
renewal time, now, the outcome of an attempt, of a journal clean-up, what the store says of
past failures) and carries out the actions this returns (report Ready, clear the journal,
issue, report a failure, wait). Everything that decides lives here: `decide`, the backoff
(restored from the store), the already-due guard against a hot loop, when the journal of a
finished order is cleared and when the Ready stage is reported. The random draw for the
backoff's jitter is part of the observation, so every transition is exact in tests.
"""

from __future__ import annotations

import dataclasses
import datetime
from dataclasses import dataclass

from certop.core.backoff import Backoff
from certop.core.models import CertificateSpec
from certop.core.renewal import CertFacts, Reason, already_due, decide


@dataclass(frozen=True)
class Policy:
    backoff: Backoff = dataclasses.field(default_factory=Backoff)
    recheck: float = 3600.0
    """Seconds between looks at a certificate that is not due yet, at most."""


@dataclass(frozen=True)
class State:
    failures: int = 0
    """Consecutive failed attempts (reported on every status, restored at start)."""
    hold: float = 0.0
    """Seconds still to wait before the next attempt: the rest of a restored backoff."""
    journalled: bool = False
    """An order journal may exist (cleared at the first look that finds the store current)."""
    reported: bool = False
    """The Ready stage was reported for the current certificate."""
    fresh: bool = False
    """The stored certificate was issued by this driver's last attempt."""
    retry_at: float = 0.0
    """Monotonic time before which no attempt is made (the backoff after a failure): a wake
    for another reason (a file edit, a clock change) does not cut it short."""
    spec: CertificateSpec | None = None
    """The spec of the last look: a change of what is asked for ends the backoff."""


# -- observations ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Restored:
    """At start: what the store says of earlier runs."""

    failures: int
    hold: float
    """Seconds of that backoff still to wait (`Backoff.remaining`)."""
    journalled: bool


@dataclass(frozen=True)
class Looked:
    """One look at the stored certificate."""

    spec: CertificateSpec
    facts: CertFacts | None
    ari_at: datetime.datetime | None
    now: datetime.datetime
    draw: float
    """Uniform in [0, 1): the backoff's jitter, should this look fail."""
    forced: bool = False
    mono: float = 0.0
    """The monotonic clock now (backoff deadlines)."""
    ari_wait: float | None = None
    """Seconds until the CA's renewal information is to be asked again (None: not at all)."""


@dataclass(frozen=True)
class SpecInvalid:
    message: str


@dataclass(frozen=True)
class JournalCleared:
    ok: bool


@dataclass(frozen=True)
class Succeeded:
    """The attempt stored a new certificate (and its journal is cleared)."""


@dataclass(frozen=True)
class Failed:
    reason: str
    """A stable word for conditions and events (the error's class name)."""
    error: str
    retry_after: float | None
    draw: float
    mono: float = 0.0
    """The monotonic clock now (the backoff's deadline starts here)."""


Observation = Restored | Looked | SpecInvalid | JournalCleared | Succeeded | Failed


# -- actions ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ClearJournal:
    pass


@dataclass(frozen=True)
class ReportReady:
    facts: CertFacts
    renew_at: datetime.datetime
    failures: int


@dataclass(frozen=True)
class ReportStage:
    stage: str
    """`ready` or `trigger` (the order's own stages are reported by the driver)."""


@dataclass(frozen=True)
class ReportHeld:
    """The rest of a backoff from before this run is waited out."""

    failures: int
    seconds: float


@dataclass(frozen=True)
class ReportInvalid:
    message: str
    failures: int


@dataclass(frozen=True)
class ReportFailed:
    reason: str
    error: str
    failures: int
    delay: float


@dataclass(frozen=True)
class ReportIssued:
    pass


@dataclass(frozen=True)
class Issue:
    reason: Reason


@dataclass(frozen=True)
class Wait:
    seconds: float
    """Until then, a stop or a change of the spec, whichever comes first."""


Action = (ClearJournal | ReportReady | ReportStage | ReportHeld | ReportInvalid | ReportFailed
          | ReportIssued | Issue | Wait)


def transition(state: State, seen: Observation, policy: Policy = Policy()
               ) -> tuple[State, tuple[Action, ...]]:
    if isinstance(seen, Restored):
        return dataclasses.replace(state, failures=seen.failures, hold=seen.hold,
                                   journalled=seen.journalled), ()
    if isinstance(seen, SpecInvalid):
        return state, (ReportInvalid(seen.message, state.failures), Wait(policy.recheck))
    if isinstance(seen, JournalCleared):
        return dataclasses.replace(state, journalled=state.journalled and not seen.ok), ()
    if isinstance(seen, Succeeded):
        return dataclasses.replace(state, failures=0, journalled=False, reported=False,
                                   fresh=True), (ReportIssued(),)
    if isinstance(seen, Failed):
        return _failed(state, seen.reason, seen.error, seen.retry_after, seen.draw, seen.mono,
                       policy)
    return _looked(state, seen, policy)


def _failed(state: State, reason: str, error: str, retry_after: float | None, draw: float,
            mono: float, policy: Policy) -> tuple[State, tuple[Action, ...]]:
    failures = state.failures + 1
    delay = policy.backoff.delay(failures, draw, retry_after)
    return dataclasses.replace(state, failures=failures, fresh=False,
                               retry_at=mono + delay), (
        ReportFailed(reason, error, failures, delay), Wait(delay))


def _asked(spec: CertificateSpec) -> CertificateSpec:
    """What a certificate is asked to be (who asks for it is not part of that)."""
    return dataclasses.replace(spec, owners=())


def _looked(state: State, seen: Looked, policy: Policy) -> tuple[State, tuple[Action, ...]]:
    if state.spec is not None and _asked(state.spec) != _asked(seen.spec):
        # Something else is asked for: the backoff of the old request does not hold it up
        # (cert-manager re-issues at once when a Certificate's spec changes).
        state = dataclasses.replace(state, failures=0, hold=0.0, retry_at=0.0)
    state = dataclasses.replace(state, spec=seen.spec)
    decision = decide(seen.spec, seen.facts, seen.now, ari_renew_at=seen.ari_at,
                      forced=seen.forced)
    if not decision.issue:
        assert seen.facts is not None and decision.renew_at is not None
        actions: list[Action] = [ClearJournal()] if state.journalled else []
        actions.append(ReportReady(seen.facts, decision.renew_at, state.failures))
        if not state.reported:
            actions.append(ReportStage("ready"))
        wait = min(max((decision.renew_at - seen.now).total_seconds(), 0.0), policy.recheck)
        if seen.ari_wait is not None:
            wait = min(wait, max(seen.ari_wait, 0.0))
        actions.append(Wait(wait))
        return dataclasses.replace(state, fresh=False, reported=True), tuple(actions)
    if state.hold > 0:
        return dataclasses.replace(state, hold=0.0, retry_at=seen.mono + state.hold), (
            ReportHeld(state.failures, state.hold), Wait(state.hold))
    if state.retry_at > seen.mono:
        return state, (Wait(state.retry_at - seen.mono),)
    if state.fresh and seen.facts is not None:
        # Never a hot loop: a certificate due right after its issuance means the clock is
        # off or the CA asks for renewal at once; back off.
        guard = already_due(decision, seen.ari_at, seen.now)
        assert guard is not None
        return _failed(state, type(guard).__name__, str(guard), guard.retry_after, seen.draw,
                       seen.mono, policy)
    return dataclasses.replace(state, journalled=True), (ReportStage("trigger"),
                                                         Issue(decision.reason))
