from __future__ import annotations

import datetime as dt

import pytest

from certop.core.backoff import Backoff
from certop.core.models import CertificateSpec, Fqdn, KeyAlgorithm, SecretName
from certop.core.renewal import CertFacts, Reason, decide, renewal_time

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
SPEC = CertificateSpec("default", SecretName("s"), (Fqdn("a.example"),), "default")


def facts(days: float, hosts: tuple[str, ...] = ("a.example",),
          algo: KeyAlgorithm = KeyAlgorithm.ECDSA_P256) -> CertFacts:
    return CertFacts(frozenset(hosts), T0, T0 + dt.timedelta(days=days), algo)


def test_renewal_is_at_two_thirds_of_the_lifetime() -> None:
    assert renewal_time(T0, T0 + dt.timedelta(days=90)) == T0 + dt.timedelta(days=60)


def test_short_lived_certificates_renew_at_half_their_lifetime() -> None:
    assert renewal_time(T0, T0 + dt.timedelta(days=6)) == T0 + dt.timedelta(days=3)


def test_renew_before_overrides_the_fraction() -> None:
    assert renewal_time(T0, T0 + dt.timedelta(days=90), dt.timedelta(days=10)) == \
        T0 + dt.timedelta(days=80)


@pytest.mark.parametrize(
    ("existing", "now_days", "issue", "reason"),
    [
        pytest.param(None, 0, True, Reason.MISSING, id="missing"),
        pytest.param(facts(90), 59.9, False, Reason.UP_TO_DATE, id="before-window"),
        pytest.param(facts(90), 60, True, Reason.RENEWAL_DUE, id="at-two-thirds"),
        pytest.param(facts(90), 91, True, Reason.EXPIRED, id="expired"),
        pytest.param(facts(90, ("b.example",)), 1, True, Reason.HOSTS_CHANGED, id="other-hosts"),
        pytest.param(facts(90, algo=KeyAlgorithm.RSA2048), 1, True, Reason.KEY_CHANGED,
                     id="other-key"),
    ],
)
def test_decide(existing: CertFacts | None, now_days: float, issue: bool,
                reason: Reason) -> None:
    decision = decide(SPEC, existing, T0 + dt.timedelta(days=now_days))
    assert (decision.issue, decision.reason) == (issue, reason)


def test_up_to_date_says_when_to_look_again() -> None:
    decision = decide(SPEC, facts(90), T0 + dt.timedelta(days=1))
    assert decision.renew_at == T0 + dt.timedelta(days=60)


def test_backoff_doubles_with_jitter_up_to_the_cap() -> None:
    b = Backoff(base=10, cap=3600)
    assert b.delay(0, 0.5) == 0
    assert [b.delay(n, 0.0) for n in (1, 2, 3)] == [5, 10, 20]
    assert [b.delay(n, 0.999999) for n in (1, 2, 3)] == pytest.approx([10, 20, 40], rel=1e-5)
    assert b.delay(40, 0.999999) == pytest.approx(3600, rel=1e-5)


def test_backoff_never_undercuts_the_cas_retry_after() -> None:
    assert Backoff(base=10).delay(1, 0.0, retry_after=120) == 120
