"""The issuance pieces both modes share: the already-due guard, the backoff a restarted
process continues, the renewal-information cache on the injected clock, the account registry."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
from fakeclock import FakeClock

from certop.acme.accounts import Account
from certop.core.backoff import Backoff
from certop.core.errors import AlreadyDue, TemporaryError
from certop.core.models import AcmeIssuer, CertificateSpec, Fqdn, ObjectRef, SecretName
from certop.core.renewal import CertFacts, Decision, Reason, already_due, decide
from certop.issuance.accounts import AccountRegistry, CaBundles
from certop.issuance.ari import MIN_INTERVAL, RenewalInfoCache
from certop.store.files import StateDir
from certop.store.memory import MemoryAccountStore

_T = TypeVar("_T")
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
SPEC = CertificateSpec("default", SecretName("s"), (Fqdn("a.example"),), "default")
FACTS = CertFacts(frozenset({"a.example"}), T0, T0 + dt.timedelta(days=90), SPEC.key_algorithm)


@pytest.mark.parametrize(("decision", "ari_at", "now", "says"), [
    (Decision(False, Reason.UP_TO_DATE), None, T0, None),
    (Decision(True, Reason.EXPIRED), None, T0, "already due (Expired): is this machine's clock"),
    (Decision(True, Reason.RENEWAL_DUE), None, T0, "already due (RenewalDue)"),
    (Decision(True, Reason.RENEWAL_DUE), T0, T0, "the CA asks to replace the certificate it just"),
    (Decision(True, Reason.RENEWAL_DUE), T0 + dt.timedelta(days=1), T0 + dt.timedelta(days=2),
     "the CA asks to replace"),
    (Decision(True, Reason.HOSTS_CHANGED), T0, T0, "already due (HostsChanged)"),
])
def test_the_already_due_guard(decision: Decision, ari_at: dt.datetime | None,
                               now: dt.datetime, says: str | None) -> None:
    guard = already_due(decision, ari_at, now)
    if says is None:
        assert guard is None
    else:
        assert isinstance(guard, AlreadyDue) and says in str(guard)


def test_the_guard_takes_the_decision_for_a_fresh_certificate_the_ca_wants_replaced() -> None:
    now = T0 + dt.timedelta(hours=1)
    decision = decide(SPEC, FACTS, now, ari_renew_at=T0)
    guard = already_due(decision, T0, now)
    assert guard is not None and "the CA asks to replace" in str(guard)
    assert already_due(decide(SPEC, FACTS, now), None, now) is None


@pytest.mark.parametrize(("failures", "last", "now", "draw", "remaining"), [
    (0, T0, T0, 0.0, 0.0),  # nothing failed
    (3, None, T0, 0.0, 0.0),  # no time known: no wait
    (1, T0, T0, 0.0, 5.0),  # 10 s at half jitter
    (3, T0, T0, 1.0, 40.0),
    (3, T0, T0 + dt.timedelta(seconds=15), 1.0, 25.0),  # the part still to wait
    (3, T0, T0 + dt.timedelta(hours=2), 1.0, 0.0),  # long over
    (20, T0, T0 + dt.timedelta(minutes=10), 1.0, 3000.0),  # capped at an hour
    (20, T0 + dt.timedelta(days=900), T0, 1.0, 3600.0),  # a failure "ahead": never longer
])
def test_the_backoff_a_restarted_process_continues(
        failures: int, last: dt.datetime | None, now: dt.datetime, draw: float,
        remaining: float) -> None:
    assert Backoff().remaining(failures, last, now, draw) == remaining


class FakeAccount:
    """Answers renewal information as told; counts the questions."""

    def __init__(self) -> None:
        self.answers: list[tuple[dt.datetime | None, float] | Exception] = []
        self.asked = 0

    def renewal_info(self, cert_pem: bytes) -> tuple[dt.datetime | None, float]:
        self.asked += 1
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


async def inline(call: Callable[[], _T]) -> _T:
    return call()


def cache_and_account(clock: FakeClock) -> tuple[RenewalInfoCache, FakeAccount,
                                                  Callable[[], object]]:
    cache = RenewalInfoCache(clock, Backoff(base=10.0), lambda: 0.0, inline)
    account = FakeAccount()

    async def get() -> Account:
        return account  # type: ignore[return-value]

    return cache, account, get


async def test_renewal_information_is_scheduled_on_the_injected_clock() -> None:
    # The injected clock is years away from the wall clock: the CA's "ask again in an hour"
    # is an hour on the injected clock all the same (no hot loop, no never-again).
    clock = FakeClock(dt.datetime(2041, 6, 1, tzinfo=dt.UTC))
    cache, account, get = cache_and_account(clock)
    key, cert = ("default", "s"), b"cert-1"
    assert cache.wait(key, cert) == 0.0 and cache.known(key, cert) is None
    window = T0 + dt.timedelta(days=30)
    account.answers.append((window, 3600.0))
    assert await cache.ask(key, cert, "default/s", get) == window  # type: ignore[arg-type]
    assert cache.known(key, cert) == window
    assert cache.wait(key, cert) == 3600.0
    clock.advance(dt.timedelta(minutes=59))
    assert cache.wait(key, cert) == 60.0
    clock.advance(dt.timedelta(minutes=1))
    assert cache.wait(key, cert) == 0.0
    # A new certificate is asked about at once; the old answer is not its answer.
    assert cache.wait(key, b"cert-2") == 0.0 and cache.known(key, b"cert-2") is None


async def test_a_ca_asking_to_be_asked_at_once_is_asked_again_after_a_minute() -> None:
    clock = FakeClock()
    cache, account, get = cache_and_account(clock)
    account.answers.append((None, -5.0))
    assert await cache.ask(("n", "s"), b"c", "n/s", get) is None  # type: ignore[arg-type]
    assert cache.wait(("n", "s"), b"c") == MIN_INTERVAL


async def test_a_failed_question_keeps_the_last_answer_and_backs_off() -> None:
    clock = FakeClock()
    cache, account, get = cache_and_account(clock)
    key, cert = ("n", "s"), b"c"
    window = T0 + dt.timedelta(days=3)
    account.answers += [(window, 0.0), TemporaryError("malformed"),
                        TemporaryError("busy", retry_after=120.0)]
    await cache.ask(key, cert, "n/s", get)  # type: ignore[arg-type]
    clock.advance(dt.timedelta(minutes=1))
    assert await cache.ask(key, cert, "n/s", get) == window  # type: ignore[arg-type]
    assert cache.failures(key) == 1
    assert cache.wait(key, cert) == 5.0  # 10 s at half jitter
    assert await cache.ask(key, cert, "n/s", get) == window  # type: ignore[arg-type]
    assert cache.failures(key) == 2 and cache.wait(key, cert) == 120.0  # the CA's Retry-After
    cache.forget(key)
    assert cache.failures(key) == 0 and cache.known(key, cert) is None


def issuer(name: str, ca: bytes | None = None, email: str = "a@b.test") -> AcmeIssuer:
    return AcmeIssuer(ObjectRef("ClusterIssuer", "", name), "https://ca.test/dir", email,
                      ca_bundle_pem=ca)


def test_one_account_per_issuer_and_settings_with_its_bundle_in_the_state_dir(
        tmp_path: Path) -> None:
    stores: list[str] = []

    def store_for(who: AcmeIssuer, namespace: str) -> MemoryAccountStore:
        stores.append(who.ref.name)
        return MemoryAccountStore()

    registry = AccountRegistry(store_for, CaBundles(StateDir(tmp_path)))
    first = registry.get(issuer("one", b"CA 1"), "")
    assert registry.get(issuer("one", b"CA 1"), "") is first
    assert isinstance(first.verify, str) and Path(first.verify).read_bytes() == b"CA 1"
    assert Path(first.verify).parent == tmp_path / "ca"
    other = registry.get(issuer("two", b"CA 1"), "")  # same server and email, other issuer
    assert other is not first and other.verify != first.verify
    changed = registry.get(issuer("one", b"CA 2"), "")
    assert changed is not first and Path(str(changed.verify)).read_bytes() == b"CA 2"
    assert not Path(first.verify).exists()  # the issuer's old bundle goes
    assert stores == ["one", "two", "one"]
    registry.close()
    assert Path(str(changed.verify)).exists()  # the state directory's bundles stay


def test_a_trusted_bundle_of_the_user_is_used_and_never_removed(tmp_path: Path) -> None:
    mine = tmp_path / "mine.pem"
    mine.write_bytes(b"CA")
    registry = AccountRegistry(lambda _i, _n: MemoryAccountStore(),
                               trust=lambda i: str(mine) if i.ref.name == "default" else None)
    default = registry.get(issuer("default"), "")
    assert default.verify == str(mine)
    assert registry.get(issuer("other"), "").verify is True
    registry.get(issuer("default", email="new@b.test"), "")  # changed: a new Account
    registry.close()
    assert mine.read_bytes() == b"CA"
