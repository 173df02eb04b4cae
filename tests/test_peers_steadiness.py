"""The machine-steadiness summary printed next to the peer table (bench/peers/steadiness.py)."""

from __future__ import annotations

import os
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))

from peers import report, steadiness  # noqa: E402


def runs_of(durations: list[float]) -> list[tuple[float, float]]:
    out, t = [], 0.0
    for d in durations:
        out.append((t, d))
        t += d
    return out


@given(st.floats(min_value=1e-4, max_value=1e-2), st.integers(min_value=1, max_value=2000))
def test_a_steady_machine_has_no_slow_windows(d: float, n: int) -> None:
    s = steadiness.summarize(runs_of([d] * n))
    assert s.slow_windows == 0
    assert s.worst == pytest.approx(1.0)
    assert s.median_ms == pytest.approx(d * 1000)


def test_a_slow_spell_shows_as_slow_windows_with_its_factor() -> None:
    # 1 s at 1 ms per run, then 100 ms at 4 ms per run, then 1 s at 1 ms again
    s = steadiness.summarize(runs_of([0.001] * 1000 + [0.004] * 25 + [0.001] * 1000))
    assert s.windows == 42
    assert s.slow_windows == 2
    assert s.worst == pytest.approx(4.0)
    assert "2 of 42 50 ms windows (5%)" in s.text()
    assert "4.0× slower" in s.text()


def test_no_runs_is_an_error_that_says_so() -> None:
    with pytest.raises(ValueError, match="no runs"):
        steadiness.summarize([])


def test_sampling_runs_the_work_for_the_time_asked() -> None:
    runs = steadiness.sample(0.05)
    assert runs, "no run of the fixed work in 50 ms"
    assert all(d > 0 for _, d in runs)
    assert runs[-1][0] - runs[0][0] < 0.05
    assert [t for t, _ in runs] == sorted(t for t, _ in runs)


def test_the_section_states_the_steadiness_when_measured() -> None:
    text = report.section({}, 2000, "today", "this machine", {}, "setup", "a fixed piece of work was steady")
    assert "Machine steadiness, measured just before the run: a fixed piece of work was steady." in text
    assert "Machine steadiness" not in report.section({}, 2000, "today", "this machine", {}, "setup")
