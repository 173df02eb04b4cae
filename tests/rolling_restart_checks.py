"""What the rolling-restart test checks, as plain functions (tests/test_rolling_restart.py).

* :func:`longest_leaderless`: from the poller's samples ``(time, partition, serving leader or
  None)``, the longest time each partition was seen without a serving leader: from the first
  sample without one to the first sample with one after it (a run still open at the end lasts
  until the last sample).
* :func:`acked_problems`: every acknowledged record read back exactly once, at the offset it
  was acknowledged with, and in send order per partition.
"""

from __future__ import annotations

from typing import Iterable


def leaderless_runs(samples: Iterable[tuple[float, int, int | None]]) -> list[tuple[int, float, float]]:
    """Every run of samples without a leader: ``(partition, first such sample, first sample with
    a leader after it)``; a run still open at the end ends at the last sample."""
    since: dict[int, float] = {}
    runs: list[tuple[int, float, float]] = []
    last_t = 0.0
    for t, p, leader in sorted(samples, key=lambda s: s[0]):
        last_t = max(last_t, t)
        if leader is None:
            since.setdefault(p, t)
        elif p in since:
            runs.append((p, since.pop(p), t))
    runs.extend((p, start, last_t) for p, start in since.items())
    return runs


def longest_leaderless(samples: Iterable[tuple[float, int, int | None]]) -> dict[int, float]:
    """Partition -> the longest leaderless run in seconds (0.0 if never seen without a leader)."""
    samples = list(samples)
    longest = {p: 0.0 for _, p, _ in samples}
    for p, start, end in leaderless_runs(samples):
        longest[p] = max(longest[p], end - start)
    return longest


def acked_problems(acked: dict[int, list[tuple[int, bytes]]], read: dict[int, list[tuple[int, bytes]]]) -> list[str]:
    """``acked[p]``: ``(offset, value)`` in send order; ``read[p]``: ``(offset, value)`` as read
    back. Returns one line per problem (empty: nothing lost, duplicated, moved or reordered)."""
    problems: list[str] = []
    for p, records in sorted(acked.items()):
        got = read.get(p, [])
        at = dict(got)
        counts: dict[bytes, int] = {}
        for _off, value in got:
            counts[value] = counts.get(value, 0) + 1
        for off, value in records:
            if at.get(off) != value:
                problems.append(f"partition {p}: acknowledged {value!r} at offset {off}, read {at.get(off)!r} there")
            elif counts[value] != 1:
                problems.append(f"partition {p}: {value!r} read {counts[value]} times")
        offsets = [off for off, _ in records]
        if offsets != sorted(offsets):
            problems.append(f"partition {p}: acknowledged offsets out of send order")
    return problems
