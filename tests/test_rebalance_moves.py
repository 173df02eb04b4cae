"""Partition moves as pure commands, checked against a model (metadata/move_ops.py,
docs/rebalance.md): random moves, in-sync joins, produces, SPU deaths and revivals, cancels and
controller rounds, with the invariants of KIP-455 checked after every step."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from kolk.metadata.apply import apply
from kolk.metadata.controllers import reconcile_leaders
from kolk.metadata.move_ops import reconcile_moves, reconcile_preferred_leaders
from kolk.metadata.objects import PARTITION, State

SPUS = 5


def cluster(rf: int = 2, partitions: int = 2) -> State:
    s = State()
    for i in range(SPUS):
        s = apply(s, {"op": "register_spu", "id": i, "rack": None, "public_address": f"h:{1000 + i}",
                      "private_address": f"h:{2000 + i}", "ts": 1}).state
    assignment = [[(k + j) % SPUS for j in range(rf)] for k in range(partitions)]
    a = apply(s, {"op": "create_topic", "name": "t", "partitions": partitions, "replication_factor": rf,
                  "config": {}, "assignment": assignment, "ts": 2})
    assert a.outcome.ok, a.outcome
    return a.state


def run(s: State, cmd: dict[str, Any]) -> State:
    return apply(s, cmd).state


@settings(max_examples=300, deadline=None)
@given(st.data(), st.integers(1, 3))
def test_moves_keep_the_in_sync_guarantee(data: st.DataObject, rf: int) -> None:
    """Invariants after every step: a partition with a leader has it in a non-empty in-sync
    set, and the in-sync set is part of the replicas; a replica leaves the replica list only by
    a finished move whose every target replica was in sync (or by a cancel, which removes only
    replicas the move added); and every acknowledged record is on a replica that is still
    assigned (``holders``: the replicas known to hold every acknowledged record)."""
    s = cluster(rf)
    names = sorted(p.name for p in s.all(PARTITION))
    holders = {n: set(s.get(PARTITION, n).status["isr"]) for n in names}
    alive = set(range(SPUS))
    for _ in range(data.draw(st.integers(1, 40))):
        before = s
        step = data.draw(st.sampled_from(["move", "join", "produce", "die", "revive", "controller", "cancel"]))
        name = data.draw(st.sampled_from(names))
        p = s.get(PARTITION, name)
        spec, status = p.spec, p.status
        if step == "move":
            target = data.draw(st.permutations(range(SPUS)))[:rf]
            s = run(s, {"op": "move_partition", "partition": name, "target": target, "epoch": status["epoch"],
                        "ts": 3, "throttle": 1000})
        elif step == "join":
            out = [r for r in spec["replicas"] if r not in status["isr"] and r in alive]
            if out and status["leader"] is not None:
                r = data.draw(st.sampled_from(out))
                s = run(s, {"op": "update_isr", "partition": name, "isr": list(status["isr"]) + [r],
                            "epoch": status["epoch"], "leader": status["leader"], "ts": 3})
                if s is not before:
                    holders[name].add(r)  # it caught up before the leader added it
        elif step == "produce":
            if status["leader"] is not None:
                holders[name] = set(status["isr"])  # acks=all: on every in-sync replica
        elif step in ("die", "revive"):
            spu = data.draw(st.integers(0, SPUS - 1))
            (alive.discard if step == "die" else alive.add)(spu)
            s = run(s, {"op": "set_spu_status", "id": spu, "alive": step == "revive", "ts": 3})
            for cmd in reconcile_leaders(s, 4):
                s = run(s, cmd)
        elif step == "controller":
            for cmd in reconcile_moves(s, 4) + reconcile_preferred_leaders(s, 4):
                s = run(s, cmd)
        else:
            s = run(s, {"op": "cancel_move", "partition": name, "ts": 3})
        for n in names:
            old, new = before.get(PARTITION, n), s.get(PARTITION, n)
            leader, isr, replicas = new.status["leader"], new.status["isr"], new.spec["replicas"]
            assert set(isr) <= set(replicas)
            if leader is not None:
                assert isr and leader in isr
            assert set(isr) <= holders[n] or leader is None
            assert holders[n] & set(replicas), f"acknowledged records only on removed replicas of {n}"
            removed = set(old.spec["replicas"]) - set(replicas)
            if removed:
                target, origin = old.spec.get("target"), old.spec.get("moving_from")
                assert target is not None
                finished = list(replicas) == list(target) and set(target) <= set(old.status["isr"])
                cancelled = list(replicas) == list(origin) and not removed & set(origin)
                assert finished or cancelled


def test_a_move_finishes_in_three_steps() -> None:
    s = cluster(2, 1)
    p = s.get(PARTITION, "t-0")
    assert p.spec["replicas"] == [0, 1] and p.status["leader"] == 0
    s = run(s, {"op": "move_partition", "partition": "t-0", "target": [2, 3], "epoch": p.status["epoch"], "ts": 3})
    p = s.get(PARTITION, "t-0")
    assert p.spec["replicas"] == [0, 1, 2, 3] and p.spec["target"] == [2, 3] and p.spec["moving_from"] == [0, 1]
    assert reconcile_moves(s, 4) == []  # the new replicas are not in sync yet
    s = run(s, {"op": "update_isr", "partition": "t-0", "isr": [0, 1, 2, 3], "epoch": p.status["epoch"],
                "leader": 0, "ts": 4})
    [elect] = reconcile_moves(s, 5)
    assert elect["op"] == "elect_leader" and elect["leader"] == 2
    s = run(s, elect)
    [finish] = reconcile_moves(s, 6)
    assert finish["op"] == "finish_move"
    s = run(s, finish)
    p = s.get(PARTITION, "t-0")
    assert p.spec["replicas"] == [2, 3] and p.status["isr"] == [2, 3] and "target" not in p.spec
    assert reconcile_moves(s, 7) == []


def refused(s: State, cmd: dict[str, Any]) -> str:
    a = apply(s, cmd)
    assert not a.outcome.ok
    return a.outcome.message


def test_bad_moves_are_refused_each_with_its_reason() -> None:
    s = cluster(2, 1)
    e = s.get(PARTITION, "t-0").status["epoch"]
    move = {"op": "move_partition", "partition": "t-0", "epoch": e, "ts": 3}
    assert "must be 2 distinct SPU ids" in refused(s, {**move, "target": [1, 1]})
    assert "must be 2 distinct SPU ids" in refused(s, {**move, "target": [1]})
    assert "target SPU 9 is not registered" in refused(s, {**move, "target": [1, 9]})
    assert "throttle -1 must be" in refused(s, {**move, "target": [1, 2], "throttle": -1})
    assert "is at epoch" in refused(s, {**move, "epoch": e + 5, "target": [1, 2]})
    drained = run(s, {"op": "set_draining", "id": 3, "draining": True, "ts": 3})
    assert "SPU 3 is draining" in refused(drained, {**move, "target": [0, 3]})
    moving = run(s, {**move, "target": [2, 3]})
    assert "already moving to [2, 3]" in refused(moving, {**move, "epoch": e + 1, "target": [3, 4]})
    assert "not in sync yet" in refused(moving, {"op": "finish_move", "partition": "t-0", "epoch": e + 1, "ts": 4})
    assert "is not moving" in refused(s, {"op": "cancel_move", "partition": "t-0", "ts": 4})
    assert "SPU 9 is not registered" in refused(s, {"op": "set_draining", "id": 9, "draining": True, "ts": 4})


def test_draining_survives_reregistration() -> None:
    s = run(cluster(), {"op": "set_draining", "id": 1, "draining": True, "ts": 3})
    s = run(s, {"op": "register_spu", "id": 1, "rack": None, "public_address": "h:1001", "private_address": "h:2001",
                "ts": 4})
    assert s.get("spu", "1").spec["draining"] is True
