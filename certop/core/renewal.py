"""When a certificate must be (re-)issued: a pure function of what exists, what is wanted and now.

Renewal point: `renewBefore` when given, else 2/3 of the lifetime (1/2 for certificates under
10 days), as cert-manager and Let's Encrypt's guidance for short-lived certificates, moved
earlier by a spread of up to 1/15 of the lifetime that is drawn from the certificate itself
(its names and start), so that thousands issued in the same minute do not all renew in the
same minute, and a restart computes the same point again; an ARI window (RFC 9773) takes
precedence when the caller has one (the ARI client picks its own point in that window).
"""

from __future__ import annotations

import datetime
import enum
import hashlib
from dataclasses import dataclass

from certop.core.errors import AlreadyDue
from certop.core.models import CertificateSpec, KeyAlgorithm

SHORT_LIVED = datetime.timedelta(days=10)
SPREAD = 1 / 15
"""The renewal point is moved earlier by up to this share of the lifetime."""


class Reason(enum.StrEnum):
    """Why a certificate is (not) issued now; stable strings for logs, events and conditions."""

    UP_TO_DATE = "UpToDate"
    MISSING = "Missing"
    INVALID = "Invalid"
    HOSTS_CHANGED = "HostsChanged"
    KEY_CHANGED = "KeyAlgorithmChanged"
    EXPIRED = "Expired"
    RENEWAL_DUE = "RenewalDue"
    FORCED = "Forced"


@dataclass(frozen=True)
class CertFacts:
    """What certop knows about a stored certificate, read by the shell that loaded it."""

    hosts: frozenset[str]
    not_before: datetime.datetime
    not_after: datetime.datetime
    key_algorithm: KeyAlgorithm | None
    issuer_ok: bool = True
    """False when the certificate was not issued by the expected CA (foreign file)."""


@dataclass(frozen=True)
class Decision:
    issue: bool
    reason: Reason
    renew_at: datetime.datetime | None = None
    """When to look again (the renewal point) when nothing is to be done now."""


def spread_of(hosts: frozenset[str], not_before: datetime.datetime) -> float:
    """A stable draw in [0, 1) for one certificate (its names and start)."""
    seed = ",".join(sorted(hosts)) + "|" + not_before.isoformat()
    return int.from_bytes(hashlib.sha256(seed.encode()).digest()[:8], "big") / 2.0 ** 64


def renewal_time(
    not_before: datetime.datetime,
    not_after: datetime.datetime,
    renew_before: datetime.timedelta | None = None,
    spread: float = 0.0,
) -> datetime.datetime:
    """When to renew; `spread` in [0, 1) moves the policy's point earlier by that share of
    `SPREAD` of the lifetime (never for an explicit `renew_before`, which is exact)."""
    lifetime = not_after - not_before
    if renew_before is not None and renew_before < lifetime:
        return not_after - renew_before
    fraction = 1 / 2 if lifetime < SHORT_LIVED else 2 / 3
    return not_before + lifetime * (fraction - SPREAD * spread)


def renewal_point(facts: CertFacts, renew_before: datetime.timedelta | None = None
                  ) -> datetime.datetime:
    """`renewal_time` of a stored certificate, with its own spread."""
    return renewal_time(facts.not_before, facts.not_after, renew_before,
                        spread_of(facts.hosts, facts.not_before))


def decide(
    spec: CertificateSpec,
    facts: CertFacts | None,
    now: datetime.datetime,
    *,
    renew_before: datetime.timedelta | None = None,
    ari_renew_at: datetime.datetime | None = None,
    forced: bool = False,
) -> Decision:
    if forced:
        return Decision(True, Reason.FORCED)
    if facts is None:
        return Decision(True, Reason.MISSING)
    if not facts.issuer_ok:
        return Decision(True, Reason.INVALID)
    if facts.hosts != frozenset(spec.hosts):
        return Decision(True, Reason.HOSTS_CHANGED)
    if facts.key_algorithm is not spec.key_algorithm:
        return Decision(True, Reason.KEY_CHANGED)
    if now >= facts.not_after:
        return Decision(True, Reason.EXPIRED)
    at = ari_renew_at or renewal_point(facts, renew_before or spec.renew_before)
    if now >= at:
        return Decision(True, Reason.RENEWAL_DUE, at)
    return Decision(False, Reason.UP_TO_DATE, at)


def already_due(decision: Decision, ari_renew_at: datetime.datetime | None,
                now: datetime.datetime) -> AlreadyDue | None:
    """The guard against a hot loop, for a certificate this process has just issued: when
    `decision` (taken for it) says issue again, the error to back off with; else None.
    A CA whose renewal information asks to replace it at once is told apart from a clock
    ahead of the CA's (or a lifetime too short for the policy)."""
    if not decision.issue:
        return None
    if decision.reason is Reason.RENEWAL_DUE and ari_renew_at is not None \
            and ari_renew_at <= now:
        return AlreadyDue("the CA asks to replace the certificate it just issued")
    return AlreadyDue(f"the new certificate is already due ({decision.reason}): is this "
                      "machine's clock ahead of the CA's?")
