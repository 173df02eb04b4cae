"""How steady this machine's CPU is: the noise floor printed next to the peer table.

A fixed piece of pure-Python work (about 1 ms) runs back to back for a few seconds, nothing
else running; each run's duration is kept. On a quiet machine every 50 ms window runs at
the median speed. On the VMs we measure on, the host slows both vCPUs together for ~100 ms
every 1.5–2 s, by 2–6×; CPU-bound work (Kolk's Python per request) stretches with it, which
is what sets Kolk's tail latency there (docs/benchmarks.md, "Reading the peer comparison").
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

WORK_ITERATIONS = 20_000  # ~1 ms of bytecode on the machines we use
WINDOW_S = 0.05
SLOW_FACTOR = 1.3


def _work() -> int:
    x = 0
    for i in range(WORK_ITERATIONS):
        x += i
    return x


def sample(seconds: float) -> list[tuple[float, float]]:
    """(start, duration) of each run of the fixed work, back to back for ``seconds``."""
    clock = time.perf_counter
    out: list[tuple[float, float]] = []
    end = clock() + seconds
    while True:
        t = clock()
        if t >= end:
            return out
        _work()
        out.append((t, clock() - t))


@dataclass(frozen=True)
class Steadiness:
    median_ms: float
    windows: int
    slow_windows: int  # windows whose mean run took SLOW_FACTOR x the median or longer
    worst: float  # the slowest window's mean run / median

    def text(self) -> str:
        share = 100 * self.slow_windows / self.windows if self.windows else 0.0
        return (f"a fixed {self.median_ms:.1f} ms piece of CPU work, run back to back with nothing else "
                f"running, was {SLOW_FACTOR:g}× slower than its median or worse in {self.slow_windows} of "
                f"{self.windows} {WINDOW_S * 1000:.0f} ms windows ({share:.0f}%); the worst window was "
                f"{self.worst:.1f}× slower")


def summarize(runs: list[tuple[float, float]], window_s: float = WINDOW_S) -> Steadiness:
    """Group ``runs`` (start, duration) into windows of ``window_s`` by start time and compare
    each window's mean duration with the median of all runs."""
    if not runs:
        raise ValueError("no runs to summarize")
    median = statistics.median(d for _, d in runs)
    t0 = runs[0][0]
    windows: dict[int, list[float]] = {}
    for start, duration in runs:
        windows.setdefault(int((start - t0) / window_s), []).append(duration)
    ratios = [statistics.fmean(ds) / median for ds in windows.values()] if median > 0 else [1.0]
    return Steadiness(median * 1000, len(ratios), sum(1 for r in ratios if r >= SLOW_FACTOR), max(ratios))
