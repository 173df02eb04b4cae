"""The pure parts of the consumer-group benchmark (bench/group_bench.py, bench/group_rebalance.py):
how groups are spread over the offsets partitions, and how member events become the "every
partition read again" time. The bench itself runs real processes; these check its arithmetic."""

from __future__ import annotations

import collections
import os
import sys
from types import SimpleNamespace

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))

from group_bench import pct, spread_groups  # noqa: E402
from group_rebalance import MEMBERS, REBALANCE_PARTITIONS, Members  # noqa: E402
from kolk.groups.names import check_group, group_partition  # noqa: E402


def test_groups_take_turns_over_every_offsets_partition() -> None:
    names = spread_groups(64, 8, "c1r0-")
    assert len(set(names)) == 64
    for n in names:
        check_group(n)
    counts = collections.Counter(group_partition(n, 8) for n in names)
    assert sorted(counts) == list(range(8)) and set(counts.values()) == {8}
    # Each process takes a run of consecutive names: every run of 8 covers all 8 partitions.
    for start in range(0, 64, 8):
        assert {group_partition(n, 8) for n in names[start:start + 8]} == set(range(8))


def test_spread_groups_with_fewer_groups_than_partitions() -> None:
    names = spread_groups(3, 8, "x-")
    assert len({group_partition(n, 8) for n in names}) == 3


def test_pct_picks_the_nearest_rank() -> None:
    values = [float(i) for i in range(1, 101)]
    assert pct(values, 50) in (50.0, 51.0)
    assert pct(values, 99) == 99.0
    assert pct([7.0], 99) == 7.0


def members_with(pids: list[int]) -> Members:
    m = Members(["127.0.0.1:1"], "g")
    m.procs = {pid: SimpleNamespace(returncode=None) for pid in pids}  # type: ignore[misc]
    return m


def assign_evenly(m: Members, t: float) -> None:
    per = REBALANCE_PARTITIONS // MEMBERS
    for i, pid in enumerate(m.procs):
        m.on_event({"ev": "assigned", "pid": pid, "t": t, "parts": list(range(i * per, (i + 1) * per)), "epoch": 1})


def test_stable_needs_every_assigned_partition_read() -> None:
    m = members_with([1, 2, 3, 4])
    assign_evenly(m, 1.0)
    assert not m.stable()
    for p in range(REBALANCE_PARTITIONS):
        m.on_event({"ev": "first", "pid": 1 + p // 3, "t": 1.1, "p": p})
    assert m.stable()
    m.on_event({"ev": "revoked", "pid": 4, "t": 1.2, "parts": [11], "epoch": 2})
    assert not m.stable()  # member 4 holds 2 partitions now


def test_read_again_counts_only_live_members_after_the_event() -> None:
    m = members_with([1, 2, 3, 4])
    assign_evenly(m, 1.0)
    for p in range(REBALANCE_PARTITIONS):
        m.on_event({"ev": "first", "pid": 1 + p // 3, "t": 1.1, "p": p})
    mark = len(m.reads)
    for p in range(9):  # members 1-3 go on reading their partitions
        m.on_event({"ev": "read", "pid": 1 + p // 3, "t": 2.05, "p": p})
    m.on_event({"ev": "read", "pid": 4, "t": 2.1, "p": 9})  # the victim's own late read does not count
    assert m.read_again_after(2.0, mark, exclude=4) is None
    for p, pid, t in ((9, 1, 5.2), (10, 2, 5.3), (11, 3, 5.25)):
        m.on_event({"ev": "first", "pid": pid, "t": t, "p": p})
    assert m.read_again_after(2.0, mark, exclude=4) == 5.3
    # Reads from before the event do not count, even when they arrive after it.
    assert m.read_again_after(5.26, mark, exclude=4) is None
