"""Partition leadership and in-sync sets: elections, in-sync set changes, replica moves, and
replicas that lost their data (DESIGN.md §5, docs/replication.md). Pure command handlers.

**Replicas that lost data.** A replica whose SPU came back with another storage id, whose log
recovered below the high watermark it had persisted, whose disk failed, or whose leader-side
log was found short by a follower, is *lost*: :func:`lose_replica` takes it out of the
in-sync set (and out of leadership) with an epoch bump, in the same command that reports it,
so it can neither lead nor count toward ``min_in_sync`` before it has caught up again. The
partition's ``status.lost`` lists such replicas with the reason, until they rejoin the
in-sync set. With no in-sync replica left the partition stays offline (leader None, empty
set) rather than lose records; only an operator's unclean election (``elect_leader`` with
``unclean``) accepts the loss, and ``status.last_unclean_epoch`` records it so that followers
may then truncate below their high watermark.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from .command import (INVALID_ARGUMENT, NOT_PARTITION_LEADER, STALE_EPOCH, VERSION_CONFLICT, Applied, Edit, fail,
                      get_field, get_partition, get_spu_id, get_ts, invalid_spec)
from .objects import PARTITION, SPU, MetaObject, State, spu_name
from .specs import REASON_CHARS_MAX, LostReplica, PartitionSpec, PartitionStatus, SpecError, check_storage_id

__all__ = ["REASON_CHARS_MAX", "REPORTED_LOSSES_MAX", "elect_leader", "fence_replica", "get_lost", "get_storage_id",
           "lose_replica", "reassign_partition", "register_effects", "update_isr"]

REPORTED_LOSSES_MAX = 10_000  # lost replicas one SPU may report as it registers


def get_storage_id(cmd: Mapping[str, Any]) -> str | None:
    storage_id = get_field(cmd, "storage_id", (str, type(None)), optional=True)
    if storage_id is None:
        return None
    try:
        return check_storage_id(storage_id)
    except SpecError as e:
        raise invalid_spec(e) from None


def get_lost(cmd: Mapping[str, Any]) -> dict[str, str]:
    """``lost``: [{partition, reason}] — replicas the registering SPU found short of their
    high watermark on start."""
    raw = get_field(cmd, "lost", list, optional=True) or []
    if len(raw) > REPORTED_LOSSES_MAX:
        raise fail(INVALID_ARGUMENT, f"lost: {len(raw)} entries, more than {REPORTED_LOSSES_MAX}")
    out = {}
    for entry in raw:
        if (not isinstance(entry, dict) or not isinstance(entry.get("partition"), str)
                or not isinstance(entry.get("reason"), str)):
            raise fail(INVALID_ARGUMENT, "lost: each entry must be {partition: text, reason: text}")
        out[entry["partition"]] = entry["reason"][:REASON_CHARS_MAX]
    return out


def _typed(p: MetaObject) -> tuple[PartitionSpec, PartitionStatus]:
    """A stored partition's spec and status as typed values (apply made them: they are valid)."""
    return PartitionSpec.from_dict(p.spec), PartitionStatus.from_dict(p.status)


def _spu_id_list(value: list[Any]) -> bool:
    """Every element an SPU id (checked before the list is hashed: JSON lists and objects
    cannot be)."""
    return all(isinstance(r, int) and not isinstance(r, bool) for r in value)


def _hashable(value: list[Any]) -> bool:
    return not any(isinstance(r, (list, dict)) for r in value)


def _same_members(a: list[Any], b: Any) -> bool:
    try:
        return sorted(a) == sorted(b)
    except TypeError:  # elements that do not compare (text and numbers): not the same set
        return False


def lose_replica(edit: Edit, p: MetaObject, spu_id: int, reason: str, ts: int, keep_last: bool = False) -> None:
    """Record that ``spu_id``'s replica of ``p`` lost data: out of the in-sync set and of
    leadership, listed in ``status.lost``, at a new epoch (always: a leader's in-sync change
    computed before, which might add it back, then fails as stale). ``keep_last`` (a disk
    fault: the log still holds what was acknowledged) leaves the set alone when the replica
    is its only member, so a fault never takes the last copy out of the set; the epoch still
    moves on, because the replica may come back without the tail it had not fsynced, and a
    follower that had copied that tail must then truncate it (found by the replica model in
    tests/test_replica_state.py)."""
    status = PartitionStatus.from_dict(p.status)
    if keep_last and status.isr == (spu_id,):
        edit.put(PARTITION, p.name, p.spec, dataclasses.replace(status, epoch=status.epoch + 1).to_dict())
        return
    others = status.without_lost({spu_id})
    status = dataclasses.replace(
        others, lost=others.lost + (LostReplica(spu_id, reason[:REASON_CHARS_MAX], ts),),
        isr=tuple(r for r in status.isr if r != spu_id), epoch=status.epoch + 1,
        leader=None if status.leader == spu_id else status.leader)
    edit.put(PARTITION, p.name, p.spec, status.to_dict())


def register_effects(edit: Edit, state: State, spu_id: int, storage_lost: str | None, lost: Mapping[str, str],
                     ts: int) -> None:
    """What an SPU's (re)registration does to the partitions it holds.

    ``storage_lost`` (a reason) when its storage id changed: every replica it holds is new and
    empty. ``lost``: partitions whose replica it found short on start. Any other partition it
    leads moves to a new epoch: it restarted and may have lost what it had not fsynced, so its
    followers truncate against what it really has (as a Kafka broker epoch would).
    """
    from .erasure_ops import reopen_erasures  # erasures build on partitions, not the other way

    gone: dict[str, set[int]] = {}
    for p in sorted(state.all(PARTITION), key=lambda o: o.name):
        if spu_id not in p.spec["replicas"]:
            continue
        status = PartitionStatus.from_dict(p.status)
        reason = storage_lost or lost.get(p.name)
        if reason is not None:
            lose_replica(edit, p, spu_id, reason, ts)
            gone[p.name] = {spu_id}
        elif status.leader == spu_id:
            edit.put(PARTITION, p.name, p.spec, dataclasses.replace(status, epoch=status.epoch + 1).to_dict())
    reopen_erasures(edit, state, gone)


def fence_replica(state: State, cmd: Mapping[str, Any]) -> Applied:
    """An SPU reports a replica that lost data: its own (a disk fault) or its leader's (found
    short of the reporter's high watermark). ``epoch``, when given, must be current, so a
    report about an old leadership never fences a replica that has caught up since."""
    p = get_partition(state, cmd)
    spec, status = _typed(p)
    ts = get_ts(cmd)
    spu_id = get_spu_id(cmd)
    reason = get_field(cmd, "reason", str)
    epoch = get_field(cmd, "epoch", int, optional=True)
    if spu_id not in spec.replicas:
        raise fail(INVALID_ARGUMENT, f"partition {p.name}: SPU {spu_id} holds no replica of it "
                                     f"(replicas {list(spec.replicas)})")
    if epoch is not None and epoch != status.epoch:
        raise fail(STALE_EPOCH, f"partition {p.name} is at epoch {status.epoch}, the report is about {epoch}")
    from .erasure_ops import reopen_erasures

    edit = Edit(state)
    lose_replica(edit, p, spu_id, reason, ts, bool(get_field(cmd, "keep_last", bool, optional=True)))
    reopen_erasures(edit, state, {p.name: {spu_id}})
    return edit.finish(ts, {"partition": p.name, "spu": spu_id})


def elect_leader(state: State, cmd: Mapping[str, Any]) -> Applied:
    p = get_partition(state, cmd)
    spec, status = _typed(p)
    ts = get_ts(cmd)
    epoch = get_field(cmd, "epoch", int)
    leader = get_field(cmd, "leader", (int, type(None)))
    if epoch != status.epoch:
        raise fail(STALE_EPOCH, f"partition {p.name} is at epoch {status.epoch}, the election assumed {epoch}")
    if get_field(cmd, "unclean", bool, optional=True):
        return _elect_unclean(state, p, spec, status, leader, ts)
    if leader is not None and leader not in status.isr:
        raise fail(INVALID_ARGUMENT,
                    f"partition {p.name}: SPU {leader} is not in the in-sync set {list(status.isr)}")
    isr = get_field(cmd, "isr", list, optional=True)
    if isr is not None:
        # The controller drops dead SPUs from the in-sync set as it elects (as Kafka's KIP-841
        # does): a shrink only, and the new leader stays in it.
        if (not _hashable(isr) or len(set(isr)) != len(isr) or not set(isr) <= set(status.isr)
                or (leader is not None and leader not in isr) or not isr):
            raise fail(INVALID_ARGUMENT,
                        f"partition {p.name}: the new in-sync set {isr!r} must be a non-empty part of "
                        f"{list(status.isr)} holding the new leader {leader}")
    new = dataclasses.replace(status, leader=leader, epoch=epoch + 1)
    if isr is not None:
        new = dataclasses.replace(new, isr=tuple(r for r in spec.replicas if r in isr))
    edit = Edit(state)
    edit.put(PARTITION, p.name, p.spec, new.to_dict())
    return edit.finish(ts, {"partition": p.name, "leader": leader, "epoch": epoch + 1})


def _elect_unclean(state: State, p: MetaObject, spec: PartitionSpec, status: PartitionStatus, leader: int | None,
                   ts: int) -> Applied:
    """The operator accepts losing what only the in-sync replicas had: any live replica leads,
    alone in the in-sync set, and the others truncate to its log."""
    replicas = list(spec.replicas)
    if leader is None or leader not in spec.replicas:
        raise fail(INVALID_ARGUMENT, f"partition {p.name}: an unclean election needs one of its replicas "
                                     f"{replicas} as leader, got {leader}")
    spu = state.get(SPU, spu_name(leader))
    if spu is None or not spu.status.get("alive"):
        raise fail(INVALID_ARGUMENT, f"partition {p.name}: SPU {leader} is not alive; an unclean election needs a "
                                     "live replica")
    live_in_sync = [r for r in status.isr if (o := state.get(SPU, spu_name(r))) and o.status.get("alive")]
    if live_in_sync:
        # As Kafka's ELECTION_NOT_NEEDED: a live in-sync replica holds every acknowledged record.
        raise fail(INVALID_ARGUMENT, f"partition {p.name}: in-sync replica SPU {live_in_sync[0]} is alive and holds "
                                     "every acknowledged record; an unclean election would only lose records (use a "
                                     "clean election)")
    epoch = status.epoch + 1
    new = dataclasses.replace(status.without_lost({leader}), leader=leader, epoch=epoch, isr=(leader,),
                              last_unclean_epoch=epoch)
    edit = Edit(state)
    edit.put(PARTITION, p.name, p.spec, new.to_dict())
    return edit.finish(ts, {"partition": p.name, "leader": leader, "epoch": epoch, "unclean": True})



def reassign_partition(state: State, cmd: Mapping[str, Any]) -> Applied:
    """New replicas for a partition (self-healing): the in-sync set keeps the replicas that
    stay; new ones join it only after they have copied the log. The epoch bumps, so every
    replica (and a leader working from the old set) sees the change."""
    p = get_partition(state, cmd)
    spec, status = _typed(p)
    ts = get_ts(cmd)
    epoch = get_field(cmd, "epoch", int)
    replicas = get_field(cmd, "replicas", list)
    if epoch != status.epoch:
        raise fail(STALE_EPOCH, f"partition {p.name} is at epoch {status.epoch}, the move assumed {epoch}")
    known = set(state.spu_ids())
    if (len(replicas) != len(spec.replicas) or not _spu_id_list(replicas) or not all(r in known for r in replicas)
            or len(set(replicas)) != len(replicas)):
        raise fail(INVALID_ARGUMENT,
                    f"partition {p.name}: replicas {replicas!r} must be {len(spec.replicas)} distinct "
                    "registered SPU ids")
    leader = status.leader
    if leader is None or leader not in replicas:
        raise fail(INVALID_ARGUMENT,
                    f"partition {p.name}: a move keeps the live leader (now {leader}) among the replicas {replicas!r}")
    moved = dataclasses.replace(spec, replicas=tuple(replicas))
    new = dataclasses.replace(status.without_lost(set(spec.replicas) - set(replicas)),
                              isr=tuple(r for r in replicas if r in status.isr), epoch=epoch + 1)
    edit = Edit(state)
    edit.put(PARTITION, p.name, moved.to_dict(), new.to_dict())
    return edit.finish(ts, {"partition": p.name, "replicas": list(replicas), "epoch": epoch + 1})



def update_isr(state: State, cmd: Mapping[str, Any]) -> Applied:
    p = get_partition(state, cmd)
    spec, status = _typed(p)
    ts = get_ts(cmd)
    epoch = get_field(cmd, "epoch", int)
    requester = get_field(cmd, "leader", int)
    isr = get_field(cmd, "isr", list)
    if epoch != status.epoch:
        raise fail(STALE_EPOCH, f"partition {p.name} is at epoch {status.epoch}, the request has {epoch}")
    if requester != status.leader:
        raise fail(NOT_PARTITION_LEADER,
                    f"SPU {requester} is not the leader of {p.name} (the leader is {status.leader})")
    based_on = get_field(cmd, "based_on", list, optional=True)
    if based_on is not None and not _same_members(based_on, status.isr):
        # The leader computed the change from a set that has changed since (Kafka checks the
        # partition epoch of AlterPartition for the same reason).
        raise fail(VERSION_CONFLICT, f"partition {p.name}: the in-sync set is {list(status.isr)}, the request was "
                                      f"based on {based_on}")
    if (not _spu_id_list(isr) or len(set(isr)) != len(isr)
            or not set(isr) <= set(spec.replicas) or requester not in isr):
        raise fail(INVALID_ARGUMENT,
                    f"partition {p.name}: in-sync set {isr!r} must be distinct replicas {list(spec.replicas)} "
                    "including the leader")
    edit = Edit(state)
    if sorted(isr) != sorted(status.isr):
        # Back in sync: no longer lost.
        new = dataclasses.replace(status.without_lost(isr), isr=tuple(r for r in spec.replicas if r in isr))
        edit.put(PARTITION, p.name, p.spec, new.to_dict())
    return edit.finish(ts, {"partition": p.name, "isr": isr})
