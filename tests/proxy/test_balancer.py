"""The balancer skips an endpoint that failed until its hold is over, by the clock it is given
(a fake one here, moved by hand)."""

from __future__ import annotations

from certop.core.models import ServiceBackend
from certop.proxy.upstream import FAIL_HOLD, Balancer

WEB = ServiceBackend("default", "web", 80)
A, B, C = ("127.0.0.1", 8001), ("127.0.0.1", 8002), ("127.0.0.1", 8003)


class Monotonic:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def picks(balancer: Balancer, n: int = 6) -> list[tuple[str, int] | None]:
    return [balancer.pick(WEB) for _ in range(n)]


def test_a_failed_endpoint_is_skipped_until_the_clock_passes_its_hold() -> None:
    clock = Monotonic()
    balancer = Balancer(clock)
    balancer.endpoints = {WEB: (A, B, C)}
    assert set(picks(balancer)) == {A, B, C}
    balancer.failed(A)
    assert A not in picks(balancer)
    assert balancer.candidates(WEB)[-1] == A  # still tried, last, if the others fail too
    clock.t += FAIL_HOLD - 0.001
    assert A not in picks(balancer)
    clock.t += 0.002
    assert set(picks(balancer)) == {A, B, C}


def test_when_every_endpoint_failed_they_are_all_still_candidates() -> None:
    clock = Monotonic()
    balancer = Balancer(clock)
    balancer.endpoints = {WEB: (A, B)}
    balancer.failed(A)
    balancer.failed(B)
    assert sorted(balancer.candidates(WEB)) == [A, B]
    balancer.succeeded(B)
    assert picks(balancer) == [B] * 6


def test_the_proxy_gives_its_balancer_the_clock_it_is_given() -> None:
    from certop.proxy.server import Proxy
    from certop.proxy.tls import CertBook
    from solvers.http01 import TokenStore

    clock = Monotonic()
    balancer = Proxy(CertBook(), TokenStore(), monotonic=clock).balancer
    balancer.endpoints = {WEB: (A, B)}
    balancer.failed(A)
    assert A not in picks(balancer)
    clock.t += FAIL_HOLD + 1
    assert A in picks(balancer)


def test_with_two_endpoints_the_one_that_failed_takes_its_turn_again_after_its_hold() -> None:
    """Two steps of the round robin per pick (once to rotate, once more among the healthy)
    picked the same endpoint for ever when there are two: the one that failed never got a
    request again, so never a success to clear it."""
    clock = Monotonic()
    balancer = Balancer(clock)
    balancer.endpoints = {WEB: (A, B)}
    balancer.failed(A)
    assert set(picks(balancer)) == {B}
    clock.t += FAIL_HOLD + 1
    assert set(picks(balancer)) == {A, B}
    assert picks(balancer, 4) in ([A, B, A, B], [B, A, B, A])  # round robin again
