"""The rebalance planner as a pure function (metadata/rebalance.py, docs/rebalance.md)."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kolk.metadata.rebalance import Move, PlanError, PlannedPartition, PlannedSpu, plan


def applied(parts: list[PlannedPartition], moves: list[Move]) -> list[PlannedPartition]:
    after = {m.partition: m.after for m in moves}
    return [PlannedPartition(p.name, after.get(p.name, p.replicas)) for p in parts]


@st.composite
def clusters(draw: st.DrawFn, racks: bool) -> tuple[list[PlannedSpu], list[PlannedPartition]]:
    n = draw(st.integers(1, 7))
    rack_names = st.sampled_from(["a", "b", "c"]) if racks else st.none()
    spus = [PlannedSpu(i, draw(rack_names), draw(st.booleans()) if i else True, draw(st.booleans()) if i else False)
            for i in range(n)]
    eligible = sum(1 for s in spus if s.eligible)
    rf = draw(st.integers(1, eligible))
    parts = []
    for k in range(draw(st.integers(0, 12))):
        replicas = draw(st.permutations(range(n)))[:rf]
        parts.append(PlannedPartition(f"t-{k}", tuple(replicas)))
    return spus, parts


@settings(max_examples=300, deadline=None)
@given(clusters(racks=False))
def test_plan_without_racks_is_even_valid_and_idempotent(cluster: tuple) -> None:
    """Without racks, after the plan: replicas per eligible SPU differ by at most 1, every
    partition keeps its replication factor on distinct eligible SPUs (nothing on a dead or
    draining one), and a second plan is empty."""
    spus, parts = cluster
    moves = plan(spus, parts)
    after = applied(parts, moves)
    eligible = [s.id for s in spus if s.eligible]
    load = Counter(r for p in after for r in p.replicas)
    assert max(load[i] for i in eligible) - min(load[i] for i in eligible) <= 1
    for before, p in zip(parts, after):
        assert len(p.replicas) == len(before.replicas) == len(set(p.replicas))
        assert all(r in eligible for r in p.replicas)
    assert plan(spus, after) == []


@settings(max_examples=300, deadline=None)
@given(clusters(racks=True))
def test_plan_with_racks_keeps_racks_distinct(cluster: tuple) -> None:
    """With racks: a partition whose replicas were on distinct racks before, and that did not
    have to leave a dead or draining SPU, stays on distinct racks; draining and dead SPUs end
    empty; a second plan is empty; a plan only moves what it must (each move changes its list)."""
    spus, parts = cluster
    moves = plan(spus, parts)
    after = applied(parts, moves)
    rack = {s.id: s.rack for s in spus}
    eligible = {s.id for s in spus if s.eligible}
    for before, p in zip(parts, after):
        assert all(r in eligible for r in p.replicas)
        if set(before.replicas) <= eligible and len({rack[r] for r in before.replicas}) == len(before.replicas):
            assert len({rack[r] for r in p.replicas}) == len(p.replicas)
    assert all(m.before != m.after for m in moves)
    assert plan(spus, after) == []


@settings(max_examples=200, deadline=None)
@given(st.integers(2, 6), st.integers(1, 12))
def test_leaders_even_after_adding_an_spu(n: int, count: int) -> None:
    """All partitions on the first n SPUs (RF 2), one empty SPU added: replicas even within 1
    and preferred leaders even within 1."""
    spus = [PlannedSpu(i) for i in range(n + 1)]
    parts = [PlannedPartition(f"t-{k}", (k % n, (k + 1) % n)) for k in range(count)]
    after = applied(parts, plan(spus, parts))
    load = Counter(r for p in after for r in p.replicas)
    leaders = Counter(p.replicas[0] for p in after)
    assert max(load[i] for i in range(n + 1)) - min(load[i] for i in range(n + 1)) <= 1
    assert max(leaders[i] for i in range(n + 1)) - min(leaders[i] for i in range(n + 1)) <= 1


def test_plan_is_deterministic_and_balanced_is_empty() -> None:
    spus = [PlannedSpu(i) for i in range(4)]
    parts = [PlannedPartition(f"t-{k}", (k % 3, (k + 1) % 3)) for k in range(6)]
    assert plan(spus, parts) == plan(list(reversed(spus)), list(reversed(parts)))
    assert plan(spus, applied(parts, plan(spus, parts))) == []


def test_draining_everything_is_refused_naming_the_partition() -> None:
    spus = [PlannedSpu(0), PlannedSpu(1, draining=True)]
    with pytest.raises(PlanError, match=r"partition t-0 needs 2 replicas but only 1 SPUs"):
        plan(spus, [PlannedPartition("t-0", (0, 1))])


def test_moving_partitions_are_left_alone() -> None:
    spus = [PlannedSpu(0), PlannedSpu(1, draining=True), PlannedSpu(2)]
    assert plan(spus, [PlannedPartition("t-0", (0, 1), moving=True)]) == []
