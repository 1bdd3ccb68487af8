from __future__ import annotations

from kubediffusion.router.balancer import Balancer

A, B, C = "http://a:1", "http://b:1", "http://c:1"


def test_least_in_flight_endpoint_is_picked() -> None:
    balancer = Balancer()
    balancer.acquire(A)
    balancer.acquire(A)
    balancer.acquire(B)
    assert balancer.pick([A, B, C]) == C
    balancer.acquire(C)
    balancer.acquire(C)
    assert balancer.pick([A, B, C]) == B


def test_ties_rotate_so_idle_pods_share_work() -> None:
    balancer = Balancer()
    picks = [balancer.pick([A, B, C]) for _ in range(6)]
    assert picks == [A, B, C, A, B, C]


def test_release_returns_capacity_once() -> None:
    balancer = Balancer()
    lease = balancer.acquire(A)
    assert balancer.in_flight(A) == 1
    lease.release()
    lease.release()
    assert balancer.in_flight(A) == 0


def test_excluded_endpoints_are_skipped_and_none_when_all_excluded() -> None:
    balancer = Balancer()
    assert balancer.pick([A, B], exclude=[A]) == B
    assert balancer.pick([A, B], exclude=[A, B]) is None
    assert balancer.pick([]) is None


def test_ejected_endpoint_is_avoided_until_its_time_is_up() -> None:
    now = [0.0]
    balancer = Balancer(eject_seconds=5, clock=lambda: now[0])
    balancer.eject(A)
    assert [balancer.pick([A, B]) for _ in range(3)] == [B, B, B]
    assert balancer.pick([A]) == A  # the only one left is still tried
    now[0] = 6.0
    assert {balancer.pick([A, B]) for _ in range(2)} == {A, B}


def test_forget_drops_idle_state_of_vanished_endpoints() -> None:
    balancer = Balancer()
    balancer.acquire(A)
    balancer.pick([B])
    balancer.forget_except([C])
    assert balancer.in_flight(A) == 1  # busy state is kept until released
    assert B not in balancer._states
