from __future__ import annotations

import collections
import datetime as dt

import pytest

from certop.core.backoff import Backoff
from certop.core.models import CertificateSpec, Fqdn, KeyAlgorithm, SecretName
from certop.core.renewal import CertFacts, Reason, decide, renewal_point, renewal_time

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
        # the renewal point of a 90-day certificate lies in days 54..60 (its spread)
        pytest.param(facts(90), 53.9, False, Reason.UP_TO_DATE, id="before-window"),
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
    assert decision.renew_at == renewal_point(facts(90))
    assert T0 + dt.timedelta(days=54) <= decision.renew_at <= T0 + dt.timedelta(days=60)


def test_ten_thousand_certificates_issued_in_one_minute_renew_over_days_not_a_minute(
        ) -> None:
    start = T0 + dt.timedelta(seconds=17)
    points = [renewal_point(CertFacts(frozenset({f"h{i}.example"}),
                                      start + dt.timedelta(seconds=i % 60),
                                      start + dt.timedelta(days=90, seconds=i % 60),
                                      KeyAlgorithm.ECDSA_P256))
              for i in range(10_000)]
    assert max(points) - min(points) > dt.timedelta(days=5.9)
    per_minute = collections.Counter(p.replace(second=0, microsecond=0) for p in points)
    assert max(per_minute.values()) <= 10  # about 1.2 per minute over six days
    # The same certificate gets the same point (a restart computes it again) ...
    again = CertFacts(frozenset({"h7.example"}), start + dt.timedelta(seconds=7),
                      start + dt.timedelta(days=90, seconds=7), KeyAlgorithm.ECDSA_P256)
    assert renewal_point(again) == points[7]
    # ... and an explicit renewBefore is exact.
    assert renewal_point(again, dt.timedelta(days=30)) == again.not_after - \
        dt.timedelta(days=30)


def test_backoff_doubles_with_jitter_up_to_the_cap() -> None:
    b = Backoff(base=10, cap=3600)
    assert b.delay(0, 0.5) == 0
    assert [b.delay(n, 0.0) for n in (1, 2, 3)] == [5, 10, 20]
    assert [b.delay(n, 0.999999) for n in (1, 2, 3)] == pytest.approx([10, 20, 40], rel=1e-5)
    assert b.delay(40, 0.999999) == pytest.approx(3600, rel=1e-5)


def test_backoff_never_undercuts_the_cas_retry_after() -> None:
    assert Backoff(base=10).delay(1, 0.0, retry_after=120) == 120


@pytest.mark.parametrize(("text", "seconds"), [
    ("720h", 720 * 3600), ("1h30m", 5400), ("90s", 90), ("1.5h", 5400), ("2h0m0s", 7200),
    ("500ms", 0.5)])
def test_go_durations(text: str, seconds: float) -> None:
    from certop.core.duration import parse_duration

    assert parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["", "h", "5", "5d", "1h 30m", "-1h", "0s", "1hx"])
def test_not_go_durations(text: str) -> None:
    from certop.core.duration import parse_duration

    with pytest.raises(ValueError):
        parse_duration(text)


def test_a_certificates_own_renew_before_moves_its_renewal() -> None:
    from dataclasses import replace

    early = replace(SPEC, renew_before=dt.timedelta(days=45))
    now = T0 + dt.timedelta(days=50)  # before 2/3 of 90 days, but inside the last 45
    assert decide(early, facts(90), now).issue
    assert not decide(SPEC, facts(90), now).issue
