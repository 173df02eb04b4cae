"""The copy throttle of moving replicas as pure code (core/spu/move_throttle.py)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from kolk.spu.move_throttle import MoveThrottle, move_throttle


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 10_000_000), st.lists(st.integers(0, 5_000_000), min_size=1, max_size=50))
def test_waiting_as_told_keeps_the_rate(rate: int, sizes: list[int]) -> None:
    """A follower that waits as told copies at most one second's burst more than ``rate`` per
    second over any run of fetches."""
    clock = Clock()
    bucket = MoveThrottle(clock)
    for n in sizes:
        clock.now += bucket.delay(n, rate)
    assert sum(sizes) <= rate * (clock.now + 1) + max(sizes)


def test_unthrottled_and_caught_up_never_wait() -> None:
    clock = Clock()
    bucket = MoveThrottle(clock)
    assert bucket.delay(10 << 20, 0) == 0.0
    assert bucket.delay(1000, 1000) == 1.0  # an empty bucket: a second for a second's worth
    clock.now += 10
    assert bucket.delay(500, 1000) == 0.0  # refilled (at most one second's worth)


def test_only_replicas_a_move_adds_are_throttled() -> None:
    moving = {"spec": {"replicas": [1, 2, 3], "moving_from": [1, 2], "target": [2, 3], "throttle": 5000}}
    assert move_throttle(moving, 3) == 5000
    assert move_throttle(moving, 1) == 0 and move_throttle(moving, 2) == 0
    assert move_throttle({"spec": {"replicas": [1, 2]}}, 2) == 0
