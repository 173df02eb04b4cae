"""Partition moves that never give up the in-sync guarantee (Kafka's KIP-455), and draining
SPUs: pure command handlers and the controller that finishes moves (docs/rebalance.md).

A move of a partition to a target replica list takes three steps, each a Raft command:

1. ``move_partition`` {partition, target, epoch, ts, [throttle]}: ``spec.replicas`` becomes
   the current replicas followed by the new ones (each copies the log from the leader and
   joins the in-sync set as any new replica does, at ``throttle`` bytes/s), the spec records
   ``target`` and ``moving_from``; the epoch bumps so every replica sees the change.
2. When every target replica is in the in-sync set and the leader is not in the target,
   :func:`reconcile_moves` elects one from target ∩ in-sync (``elect_leader``, epoch bump).
3. ``finish_move`` {partition, epoch, ts}: only when every target replica is in sync and the
   leader is one of them: ``replicas = target``, ``isr = target``, epoch bump. The removed
   replicas are deleted by their SPUs (no longer assigned). The in-sync set after the move
   is the whole target, so every acknowledged record is on every replica that stays.

``cancel_move`` puts ``moving_from`` back while the leader is one of its replicas (a move whose
target SPU died waits for it; cancel is the way out). ``set_draining`` {id, draining, ts}
marks an SPU that the planner (metadata/rebalance.py) empties and that placement avoids.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

from .command import (INVALID_ARGUMENT, NOT_FOUND, STALE_EPOCH, Applied, Edit, fail, get_field, get_partition,
                      get_spu_id, get_ts)
from .objects import PARTITION, SPU, State, spu_name
from .specs import REPLICATION_FACTOR_MAX, PartitionSpec, PartitionStatus, SpuSpec

__all__ = ["MOVE_OPS", "THROTTLE_MAX", "reconcile_moves", "reconcile_preferred_leaders"]

THROTTLE_MAX = 1 << 40  # bytes/s; 0 means unthrottled


def _typed(p: Any) -> tuple[PartitionSpec, PartitionStatus]:
    return PartitionSpec.from_dict(p.spec), PartitionStatus.from_dict(p.status)


def _check_epoch(name: str, epoch: int, status: PartitionStatus) -> None:
    if epoch != status.epoch:
        raise fail(STALE_EPOCH, f"partition {name} is at epoch {status.epoch}, the move assumed {epoch}")


def move_partition(state: State, cmd: Mapping[str, Any]) -> Applied:
    p = get_partition(state, cmd)
    spec, status = _typed(p)
    ts = get_ts(cmd)
    epoch = get_field(cmd, "epoch", int)
    target = get_field(cmd, "target", list)
    throttle = get_field(cmd, "throttle", int, optional=True) or 0
    _check_epoch(p.name, epoch, status)
    if spec.target is not None:
        raise fail(INVALID_ARGUMENT, f"partition {p.name} is already moving to {list(spec.target)}; "
                                     "wait for it or cancel it first")
    if (not target or not all(isinstance(r, int) and not isinstance(r, bool) for r in target)
            or len(set(target)) != len(target) or len(target) != len(spec.replicas)):
        raise fail(INVALID_ARGUMENT, f"partition {p.name}: target {target!r} must be {len(spec.replicas)} distinct "
                                     "SPU ids")
    spus = {o.spec["id"]: o for o in state.all(SPU)}
    for r in target:
        if r not in spus:
            raise fail(NOT_FOUND, f"partition {p.name}: target SPU {r} is not registered")
        if r not in spec.replicas and spus[r].spec.get("draining"):
            raise fail(INVALID_ARGUMENT, f"partition {p.name}: SPU {r} is draining; no replica may move to it")
    if not 0 <= throttle <= THROTTLE_MAX:
        raise fail(INVALID_ARGUMENT, f"throttle {throttle} must be 0-{THROTTLE_MAX} bytes/s (0: none)")
    if status.leader is None:
        raise fail(INVALID_ARGUMENT, f"partition {p.name} is offline; a move needs a leader to copy from")
    replicas = tuple(spec.replicas) + tuple(r for r in target if r not in spec.replicas)
    if len(replicas) > REPLICATION_FACTOR_MAX:
        raise fail(INVALID_ARGUMENT, f"partition {p.name}: moving to {target} would hold {len(replicas)} replicas "
                                     f"at once, more than {REPLICATION_FACTOR_MAX}; move fewer replicas at a time")
    edit = Edit(state)
    if tuple(target) == spec.replicas:
        return edit.finish(ts, {"partition": p.name, "target": target, "epoch": epoch})
    moving = dataclasses.replace(spec, replicas=replicas, target=tuple(target), moving_from=spec.replicas,
                                 throttle=throttle)
    edit.put(PARTITION, p.name, moving.to_dict(), dataclasses.replace(status, epoch=epoch + 1).to_dict())
    return edit.finish(ts, {"partition": p.name, "target": target, "epoch": epoch + 1})


def finish_move(state: State, cmd: Mapping[str, Any]) -> Applied:
    p = get_partition(state, cmd)
    spec, status = _typed(p)
    ts = get_ts(cmd)
    _check_epoch(p.name, get_field(cmd, "epoch", int), status)
    if spec.target is None:
        raise fail(INVALID_ARGUMENT, f"partition {p.name} is not moving")
    waiting = [r for r in spec.target if r not in status.isr]
    if waiting:
        raise fail(INVALID_ARGUMENT, f"partition {p.name}: target replicas {waiting} are not in sync yet")
    if status.leader not in spec.target:
        raise fail(INVALID_ARGUMENT, f"partition {p.name}: the leader {status.leader} is not in the target "
                                     f"{list(spec.target)}; elect one of the target first")
    done = dataclasses.replace(spec, replicas=spec.target, target=None, moving_from=None, throttle=0)
    new = dataclasses.replace(status.without_lost(set(spec.replicas) - set(spec.target)), isr=spec.target,
                              epoch=status.epoch + 1)
    edit = Edit(state)
    edit.put(PARTITION, p.name, done.to_dict(), new.to_dict())
    return edit.finish(ts, {"partition": p.name, "replicas": list(spec.target), "epoch": status.epoch + 1})


def cancel_move(state: State, cmd: Mapping[str, Any]) -> Applied:
    p = get_partition(state, cmd)
    spec, status = _typed(p)
    ts = get_ts(cmd)
    if spec.target is None or spec.moving_from is None:
        raise fail(INVALID_ARGUMENT, f"partition {p.name} is not moving")
    origin = spec.moving_from
    isr = tuple(r for r in origin if r in status.isr)
    if status.leader is not None and status.leader not in origin:
        raise fail(INVALID_ARGUMENT, f"partition {p.name}: its leader {status.leader} is a new replica; the move "
                                     "cannot be cancelled without moving leadership back first")
    if status.isr and not isr:
        # Offline or not: the in-sync replicas alone hold every acknowledged record, and they are
        # all new ones; dropping them would delete those records (found in review, issue 22).
        raise fail(INVALID_ARGUMENT, f"partition {p.name}: no replica it started from is in sync (in-sync "
                                     f"{list(status.isr)}, all added by the move); the move cannot be cancelled")
    back = dataclasses.replace(spec, replicas=origin, target=None, moving_from=None, throttle=0)
    new = dataclasses.replace(status.without_lost(set(spec.replicas) - set(origin)),
                              isr=isr,
                              epoch=status.epoch + 1)
    edit = Edit(state)
    edit.put(PARTITION, p.name, back.to_dict(), new.to_dict())
    return edit.finish(ts, {"partition": p.name, "replicas": list(origin), "epoch": status.epoch + 1})


def set_draining(state: State, cmd: Mapping[str, Any]) -> Applied:
    spu_id = get_spu_id(cmd)
    ts = get_ts(cmd)
    draining = get_field(cmd, "draining", bool)
    current = state.get(SPU, spu_name(spu_id))
    if current is None:
        raise fail(NOT_FOUND, f"SPU {spu_id} is not registered")
    spec = dataclasses.replace(SpuSpec.from_dict(current.spec), draining=draining)
    edit = Edit(state)
    if spec.to_dict() != dict(current.spec):
        edit.put(SPU, current.name, spec.to_dict(), current.status)
    return edit.finish(ts, {"id": spu_id, "draining": draining})


MOVE_OPS: Mapping[str, Callable[[State, Mapping[str, Any]], Applied]] = {
    "move_partition": move_partition,
    "finish_move": finish_move,
    "cancel_move": cancel_move,
    "set_draining": set_draining,
}


def _alive(state: State) -> set[int]:
    return {o.spec["id"] for o in state.all(SPU) if o.status.get("alive")}


def reconcile_moves(state: State, now_ms: int, leaving: frozenset[int] = frozenset()) -> list[dict[str, Any]]:
    """The next step of every move whose target replicas are all in sync: elect a leader from
    the target when the leader is not in it, else finish. A move with a target replica not in
    sync (copying, or its SPU dead) waits. ``leaving``: SPUs stopping (core/sc/leaving.py), never
    elected (still alive in the metadata until the controller marks them)."""
    alive = _alive(state) - leaving
    out: list[dict[str, Any]] = []
    for p in sorted(state.all(PARTITION), key=lambda o: o.name):
        target = p.spec.get("target")
        leader, isr, epoch = p.status["leader"], p.status["isr"], p.status["epoch"]
        if target is None or leader is None or not all(r in isr for r in target):
            continue
        if leader in target:
            out.append({"op": "finish_move", "partition": p.name, "epoch": epoch, "ts": now_ms})
            continue
        candidates = [r for r in target if r in alive]
        if candidates:
            out.append({"op": "elect_leader", "partition": p.name, "leader": candidates[0], "epoch": epoch,
                        "ts": now_ms})
    return out


def reconcile_preferred_leaders(state: State, now_ms: int,
                                leaving: frozenset[int] = frozenset()) -> list[dict[str, Any]]:
    """Kafka's auto.leader.rebalance: a partition led by another replica than its preferred one
    (the first) gets it back when that one is alive, in sync and not stopping (``leaving``).
    Moving partitions are left to :func:`reconcile_moves`."""
    alive = _alive(state) - leaving
    out: list[dict[str, Any]] = []
    for p in sorted(state.all(PARTITION), key=lambda o: o.name):
        if p.spec.get("target") is not None:
            continue
        preferred, leader = p.spec["replicas"][0], p.status["leader"]
        if leader is not None and leader != preferred and preferred in p.status["isr"] and preferred in alive:
            out.append({"op": "elect_leader", "partition": p.name, "leader": preferred,
                        "epoch": p.status["epoch"], "ts": now_ms})
    return out
