"""The userspace netem's planner (jepsen/wire.py ``plan_frame``), pure: a frame and the dice in,
the times to send it out. The relay around it is tested with real hosts in test_netns_hosts.py."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from jepsen.wire import Faults, plan_frame


@settings(max_examples=200, deadline=None)
@given(delay=st.integers(0, 1000), jitter=st.integers(0, 1000), loss=st.floats(0, 100), dup=st.floats(0, 100),
       reorder=st.floats(0, 100), seed=st.integers(0, 2**32))
def test_plan_frame_stays_within_its_settings(delay: int, jitter: int, loss: float, dup: float, reorder: float,
                                              seed: int) -> None:
    jitter = min(jitter, delay)
    f = Faults(delay, jitter, loss, dup, reorder)
    times = plan_frame(f, 100.0, random.Random(seed))
    assert len(times) <= 2
    assert times or loss > 0  # only loss loses a frame
    assert len(times) < 2 or dup > 0  # only duplication sends one twice
    for t in times:
        assert 100.0 <= t <= 100.0 + (delay + jitter) / 1000.0 + 1e-9


def test_plan_frame_extremes() -> None:
    dice = random.Random(1)
    assert plan_frame(Faults(loss_pct=100), 5.0, dice) == []
    assert plan_frame(Faults(duplicate_pct=100), 5.0, dice) == [5.0, 5.0]
    assert plan_frame(Faults(delay_ms=200), 5.0, dice) == [5.2]
    assert plan_frame(Faults(delay_ms=200, reorder_pct=100), 5.0, dice) == [5.0]
