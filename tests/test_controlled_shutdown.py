"""Controlled shutdown as pure functions: when a stopping SPU may exit (core/spu/shutdown.py),
what the SC leader remembers of stopping SPUs (core/sc/leaving.py), and the elections it makes
for them (metadata/controllers.py ``reconcile_leaders`` with ``leaving``)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from kolk.metadata.apply import apply
from kolk.metadata.controllers import reconcile_leaders
from kolk.metadata.objects import PARTITION, State
from kolk.sc.leaving import heard_from, leaving_spus, note_heartbeat
from kolk.spu.config import SpuConfig
from kolk.spu.shutdown import SHUTDOWN_TIMEOUT_MS_MAX, shutdown_pending

import pytest


def spus(alive: dict[int, bool]) -> dict[int, dict[str, Any]]:
    return {i: {"spec": {"id": i}, "status": {"alive": a}} for i, a in alive.items()}


def part(leader: int | None, isr: list[int]) -> dict[str, Any]:
    return {"spec": {"replicas": sorted(set(isr) | ({leader} if leader is not None else set()))},
            "status": {"leader": leader, "isr": isr, "epoch": 1}}


# ---------------------------------------------------------------- the SPU's decision


def test_waits_until_the_sc_marks_it_stopping() -> None:
    """Still alive in the metadata: the SC has not taken the news; an election could still pick it."""
    why = shutdown_pending(1, {}, spus({1: True, 2: True}))
    assert why == "the SC has not yet marked SPU 1 as stopping"


def test_waits_while_it_leads_a_partition_another_can_lead() -> None:
    why = shutdown_pending(1, {"t-0": part(2, [1, 2]), "t-1": part(1, [1, 2, 3])}, spus({1: False, 2: True, 3: True}))
    assert why == "t-1 is still led by SPU 1 (SPU 2 can take over)"


def test_may_exit_when_it_leads_nothing() -> None:
    assert shutdown_pending(1, {"t-0": part(2, [2, 3]), "t-1": part(None, [1])}, spus({1: False, 2: True})) is None


def test_may_exit_leading_a_partition_nobody_else_can_lead() -> None:
    """Its only other in-sync replica is dead, or it is alone in the set: the SC keeps it as
    leader, so waiting would change nothing."""
    partitions = {"t-0": part(1, [1, 2]), "t-1": part(1, [1])}
    assert shutdown_pending(1, partitions, spus({1: False, 2: False, 3: True})) is None


def test_an_spu_unknown_to_the_metadata_may_exit() -> None:
    assert shutdown_pending(7, {"t-0": part(7, [7, 2])}, spus({2: True})) is None


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.integers(1, 5), st.booleans(), min_size=1),
       st.lists(st.tuples(st.one_of(st.none(), st.integers(1, 5)), st.lists(st.integers(1, 5), max_size=5)),
                max_size=8))
def test_may_exit_exactly_when_no_leadership_can_move(alive: dict[int, bool], plist: list) -> None:
    """Any metadata: SPU 1 may exit iff the SC has marked it (or does not know it) and every
    partition it leads has no other live in-sync replica."""
    partitions = {f"t-{i}": part(leader, isr) for i, (leader, isr) in enumerate(plist)}
    view = spus(alive)
    movable = [n for n, p in partitions.items() if p["status"]["leader"] == 1
               and any(r != 1 and alive.get(r) for r in p["status"]["isr"])]
    expected = 1 not in alive or (not alive[1] and not movable)
    assert (shutdown_pending(1, partitions, view) is None) == expected


def test_shutdown_timeout_is_bounded() -> None:
    base = dict(spu_id=1, data_dir="/tmp/x", sc_addresses=["127.0.0.1:1"], public_address="127.0.0.1:2")
    assert SpuConfig(**base, shutdown_timeout_ms=0).shutdown_timeout_ms == 0
    with pytest.raises(ValueError, match=r"^--shutdown-timeout-ms must be from 0 to 600000, got -1$"):
        SpuConfig(**base, shutdown_timeout_ms=-1)
    with pytest.raises(ValueError, match=r"^--shutdown-timeout-ms must be from 0 to 600000, got 600001$"):
        SpuConfig(**base, shutdown_timeout_ms=SHUTDOWN_TIMEOUT_MS_MAX + 1)


# ---------------------------------------------------------------- the SC leader's memory


def test_leaving_starts_with_a_leaving_heartbeat_and_ends_with_a_regular_one() -> None:
    leaving: dict[int, int] = {}
    assert note_heartbeat(leaving, 1, True, 100) is True
    assert note_heartbeat(leaving, 1, True, 200) is False  # still leaving, not new
    assert leaving == {1: 200}
    assert note_heartbeat(leaving, 1, False, 300) is False  # back (or re-registered)
    assert leaving == {}


def test_leaving_lasts_while_leaving_heartbeats_come() -> None:
    leaving = {1: 1_000, 2: 4_000}
    assert leaving_spus(leaving, 3_999, 3_000) == frozenset({1, 2})
    assert leaving_spus(leaving, 4_000, 3_000) == frozenset({2})  # SPU 1 stopped: down like any other
    assert leaving_spus(leaving, 7_000, 3_000) == frozenset()


def test_a_new_sc_leader_waits_for_the_living_but_does_not_revive_the_dead() -> None:
    """Not heard from since the leader started: alive ones get the leader's start time (a whole
    timeout before they are declared dead), dead ones stay dead; a leaving SPU is dead at once;
    a heartbeat counts whatever the metadata says."""
    spus = [(1, True), (2, False), (3, True), (4, False)]
    assert heard_from(spus, {4: 900}, 500, frozenset({3})) == {1: 500, 4: 900}


# ---------------------------------------------------------------- the elections


def cluster(n: int) -> State:
    s = State()
    for i in range(n):
        s = apply(s, {"op": "register_spu", "id": i, "rack": None, "public_address": f"h:{1000 + i}",
                      "private_address": f"h:{2000 + i}", "ts": 1}).state
    return s


def test_a_leaving_leader_hands_over_to_a_live_in_sync_replica() -> None:
    """SPU 0 leaves: the SC marks it dead at once; t-0 moves to SPU 1 and drops 0 from the set;
    t-1, where 0 is alone in the set, keeps 0 as leader while it still heart-beats; once its
    heartbeats stop (not leaving any more) t-1 goes offline as for any dead leader."""
    s = cluster(3)
    s = apply(s, {"op": "create_topic", "name": "t", "partitions": 2, "replication_factor": 2, "config": {},
                  "assignment": [[0, 1], [0, 2]], "ts": 2}).state
    s = apply(s, {"op": "update_isr", "partition": "t-1", "isr": [0], "epoch": 0, "leader": 0, "ts": 3}).state
    s = apply(s, {"op": "set_spu_status", "id": 0, "alive": False, "ts": 4}).state
    cmds = reconcile_leaders(s, now_ms=5, leaving=frozenset({0}))
    assert cmds == [{"op": "elect_leader", "partition": "t-0", "leader": 1, "epoch": 0, "ts": 5, "isr": [1]}]
    s = apply(s, cmds[0]).state
    assert reconcile_leaders(s, now_ms=6, leaving=frozenset({0})) == []
    assert reconcile_leaders(s, now_ms=7) == [{"op": "elect_leader", "partition": "t-1", "leader": None,
                                               "epoch": 0, "ts": 7}]


def test_a_leaving_spu_is_never_elected() -> None:
    """Even while the metadata still shows it alive (its mark not yet committed), a leaving SPU
    is no candidate: a partition whose leader died moves past it."""
    s = cluster(3)
    s = apply(s, {"op": "create_topic", "name": "t", "partitions": 1, "replication_factor": 3, "config": {},
                  "assignment": [[0, 1, 2]], "ts": 2}).state
    s = apply(s, {"op": "set_spu_status", "id": 0, "alive": False, "ts": 4}).state
    (cmd,) = reconcile_leaders(s, now_ms=5, leaving=frozenset({1}))
    assert cmd["leader"] == 2 and cmd["isr"] == [2]
    s = apply(s, cmd).state
    assert s.get(PARTITION, "t-0").status["leader"] == 2
