"""Safety review of issue 22's moves, throttle and SC membership, as pure tests on the state
machines (metadata/move_ops.py, core/spu/move_throttle.py, metadata/sc_ops.py)."""

from __future__ import annotations

from typing import Any

from kolk.metadata.apply import apply
from kolk.metadata.controllers import reconcile_leaders
from kolk.metadata.objects import PARTITION, State
from kolk.metadata.sc_ops import members_of
from kolk.spu.move_throttle import move_throttle

SPUS = 4


def cluster() -> State:
    s = State()
    for i in range(SPUS):
        s = apply(s, {"op": "register_spu", "id": i, "rack": None, "public_address": f"h:{1000 + i}",
                      "private_address": f"h:{2000 + i}", "ts": 1}).state
    a = apply(s, {"op": "create_topic", "name": "t", "partitions": 1, "replication_factor": 1, "config": {},
                  "assignment": [[0]], "ts": 2})
    assert a.outcome.ok, a.outcome
    return a.state


def run(s: State, cmd: dict[str, Any]) -> State:
    a = apply(s, cmd)
    assert a.outcome.ok, (cmd, a.outcome)
    return a.state


def die(s: State, spu: int) -> State:
    s = run(s, {"op": "set_spu_status", "id": spu, "alive": False, "ts": 3})
    for cmd in reconcile_leaders(s, 4):
        s = run(s, cmd)
    return s


def test_cancelling_a_move_never_drops_the_only_in_sync_replicas() -> None:
    """A move 0 -> 1; SPU 1 joins the in-sync set; SPU 0 dies, so SPU 1 leads alone and
    acknowledges records that only it holds; then SPU 1 dies too: offline, in-sync set [1].
    Cancelling the move then must not drop SPU 1 (its SPU would delete the only copy of those
    records) and empty the in-sync set: it was accepted, leaving replicas [0] and no in-sync
    replica at all."""
    s = cluster()
    e = s.get(PARTITION, "t-0").status["epoch"]
    s = run(s, {"op": "move_partition", "partition": "t-0", "target": [1], "epoch": e, "ts": 3})
    p = s.get(PARTITION, "t-0")
    s = run(s, {"op": "update_isr", "partition": "t-0", "isr": [0, 1], "epoch": p.status["epoch"], "leader": 0,
                "ts": 3})
    s = die(s, 0)
    p = s.get(PARTITION, "t-0")
    assert p.status["leader"] == 1 and p.status["isr"] == [1]  # records acknowledged now live on SPU 1 only
    s = die(s, 1)
    p = s.get(PARTITION, "t-0")
    assert p.status["leader"] is None and p.status["isr"] == [1]
    a = apply(s, {"op": "cancel_move", "partition": "t-0", "ts": 5})
    after = a.state.get(PARTITION, "t-0")
    assert 1 in after.spec["replicas"] and after.status["isr"], \
        f"cancel dropped the only in-sync replica: replicas {after.spec['replicas']}, isr {after.status['isr']}"


def test_a_new_replica_is_not_throttled_once_in_sync() -> None:
    """Once a replica a move adds is in the in-sync set, the high watermark (and so every
    acks=all produce) waits for it: throttling it would cap the partition's produce at the
    copy rate (docs/rebalance.md: the partition's produce goes on at full speed; Kafka
    throttles only replicas outside the in-sync set)."""
    spec = {"replicas": [1, 2, 3], "moving_from": [1, 2], "target": [2, 3], "throttle": 5000}
    assert move_throttle({"spec": spec, "status": {"leader": 1, "isr": [1, 2]}}, 3) == 5000  # copying
    assert move_throttle({"spec": spec, "status": {"leader": 1, "isr": [1, 2, 3]}}, 3) == 0  # in sync


def _members(*ids: int) -> list[dict[str, Any]]:
    return [{"id": i, "raft": f"h:{7000 + i}", "admin": f"h:{9000 + i}"} for i in ids]


def test_a_member_list_planned_from_an_older_list_is_refused() -> None:
    """Two SC membership changes planned on two leaders (one before and one after a leader
    change) each write a whole list computed from the list they read: the later write used to
    undo the earlier (SC 4's addition lost while Raft keeps it as a voter, and then `sc remove 4`
    is refused as 'not a member'). A list carries the list it was planned from, and apply
    refuses it when the committed list has changed since."""
    s = run(State(), {"op": "set_sc_members", "members": _members(1, 2, 3), "ts": 1})
    read = _members(1, 2, 3)
    # The old leader adds SC 4 (planned from [1, 2, 3]) ...
    s = run(s, {"op": "set_sc_members", "members": _members(1, 2, 3, 4), "based_on": read, "ts": 2})
    # ... while the new leader removes SC 3, also planned from [1, 2, 3].
    a = apply(s, {"op": "set_sc_members", "members": _members(1, 2), "based_on": read, "ts": 3})
    assert not a.outcome.ok
    assert [m.id for m in members_of(a.state) or ()] == [1, 2, 3, 4]


def test_a_voter_the_list_already_left_out_can_still_be_removed() -> None:
    """`sc remove 3` commits the list without SC 3 first and then asks Raft to drop it; if the
    leader dies (or the Raft step times out) in between, SC 3 stays a Raft voter that the list no
    longer names. Retrying `sc remove 3` was refused ('not a member'), so nothing could take
    the leftover voter out: with it stopped, the group had one failure less to spare. The
    retry finishes the Raft step, under the same majority rule."""
    from kolk.metadata.sc_ops import check_members
    from kolk.sc.sc_members import Refusal, plan_remove

    listed = check_members(_members(1, 2, 4))  # SC 3 already left out of the list
    assert plan_remove(listed, 3, frozenset({1, 2, 4}), voters=frozenset({1, 2, 3, 4})) == listed
    try:  # and never a voter nobody knows of
        plan_remove(listed, 5, frozenset({1, 2, 4}), voters=frozenset({1, 2, 3, 4}))
        raise AssertionError("an unknown SC was removed")
    except Refusal as e:
        assert e.code == "notFound"
    try:  # nor when the SCs left could not commit
        plan_remove(listed, 3, frozenset({1}), voters=frozenset({1, 2, 3, 4}))
        raise AssertionError("a removal without a majority went ahead")
    except Refusal as e:
        assert e.code == "notEnoughReplicas"


def test_preferred_leader_election_never_picks_a_stopping_spu() -> None:
    """An SPU's first leaving heartbeat can arrive while a controller round is under way, after
    liveness was reconciled: it is still alive in the metadata, and the preferred-leader
    election (and a move's election from its target) used to hand it leaderships back while it
    stops. Both take the SPUs leaving as the leader election does."""
    from kolk.metadata.move_ops import reconcile_moves, reconcile_preferred_leaders

    s = cluster()
    e = s.get(PARTITION, "t-0").status["epoch"]
    s = run(s, {"op": "move_partition", "partition": "t-0", "target": [1], "epoch": e, "ts": 3})
    p = s.get(PARTITION, "t-0")
    s = run(s, {"op": "update_isr", "partition": "t-0", "isr": [0, 1], "epoch": p.status["epoch"], "leader": 0,
                "ts": 3})
    assert [(c["op"], c["leader"]) for c in reconcile_moves(s, 4)] == [("elect_leader", 1)]
    assert reconcile_moves(s, 4, frozenset({1})) == []  # SPU 1 stopping: the move waits
    two = State()
    for i in range(2):
        two = apply(two, {"op": "register_spu", "id": i, "rack": None, "public_address": f"h:{1000 + i}",
                          "private_address": f"h:{2000 + i}", "ts": 1}).state
    two = run(two, {"op": "create_topic", "name": "u", "partitions": 1, "replication_factor": 2, "config": {},
                    "assignment": [[0, 1]], "ts": 2})
    q = two.get(PARTITION, "u-0")
    two = run(two, {"op": "elect_leader", "partition": "u-0", "leader": 1, "epoch": q.status["epoch"], "ts": 3})
    assert [c["leader"] for c in reconcile_preferred_leaders(two, 4)] == [0]
    assert reconcile_preferred_leaders(two, 4, frozenset({0})) == []  # SPU 0 is stopping
