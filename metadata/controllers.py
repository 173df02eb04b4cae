"""Controllers: pure functions from state (and what the SC leader observed) to commands.

They run on the SC leader only, in a loop and after every change; what they return is
proposed through Raft, and apply re-validates it, so a controller working from a state that
moved on is harmless (its command fails with ``stale_epoch`` or similar and the next round
starts from the new state). Time comes in as ``now_ms``.

* :func:`place_replicas`: where a new topic's replicas go. Least-loaded SPUs first, the
  replicas of one partition on distinct racks while racks last, the first replica (the
  preferred leader) spread by leader count. Deterministic for a given state.
* :func:`reconcile_liveness`: an SPU that has not sent a heartbeat for ``timeout_ms`` is marked
  dead; one that sends again is marked alive.
* :func:`reconcile_leaders`: a partition whose leader is gone (dead, or none) gets the first
  live replica of its in-sync set as leader, with the epoch bumped and the dead replicas
  dropped from the in-sync set; with no live in-sync replica it goes offline (leader None,
  epoch bumped, so the old leader is fenced, in-sync set kept so that one of them can lead
  when it returns). Unclean election (a replica outside the set) never happens. An SPU that
  is stopping (controlled shutdown) loses its leaderships the same way, at once.
* :func:`reconcile_replicas`: self-healing. A replica on an SPU dead for ``move_after_ms``
  moves to a live SPU that holds no replica of the partition (other racks first, then the
  least loaded); the new replica copies the log from the leader and joins the in-sync set
  when it has caught up. Only partitions with a live leader move (it is the copy's source).
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Mapping

from .objects import PARTITION, SPU, MetaObject, State
from .specs import PartitionSpec, PartitionStatus


def place_replicas(state: State, partitions: int, replication_factor: int) -> list[list[int]]:
    """Replica lists for ``partitions`` new partitions; raises ValueError if RF > SPUs."""
    spus = sorted(state.all(SPU), key=lambda o: o.spec["id"])
    if replication_factor > len(spus):
        raise ValueError(f"replication factor {replication_factor} is more than the {len(spus)} registered SPUs")
    # A draining SPU (docs/rebalance.md) counts as not alive: the last choice.
    alive = {o.spec["id"] for o in spus if o.status.get("alive") and not o.spec.get("draining")}
    rack_of = {o.spec["id"]: o.spec.get("rack") for o in spus}
    load: Counter[int] = Counter({o.spec["id"]: 0 for o in spus})
    leaders: Counter[int] = Counter({o.spec["id"]: 0 for o in spus})
    for p in state.all(PARTITION):
        for r in p.spec["replicas"]:
            if r in load:
                load[r] += 1
        first = p.spec["replicas"][0] if p.spec["replicas"] else None
        if first in leaders:
            leaders[first] += 1
    out = []
    for _ in range(partitions):
        # The preferred leader: a live SPU with the fewest leaders, then the fewest replicas.
        first = min(load, key=lambda s: (s not in alive, leaders[s], load[s], s))
        chosen = [first]
        racks_used = {rack_of[first]}
        rest = sorted((s for s in load if s != first), key=lambda s: (s not in alive, load[s], s))
        # One replica per rack while racks last, then anywhere.
        for s in rest:
            if len(chosen) < replication_factor and (rack_of[s] is None or rack_of[s] not in racks_used):
                chosen.append(s)
                racks_used.add(rack_of[s])
        for s in rest:
            if len(chosen) < replication_factor and s not in chosen:
                chosen.append(s)
        for s in chosen:
            load[s] += 1
        leaders[first] += 1
        out.append(chosen)
    return out


def reconcile_liveness(state: State, last_heartbeat_ms: Mapping[int, int], now_ms: int,
                       timeout_ms: int) -> list[dict[str, Any]]:
    """``set_spu_status`` commands for SPUs whose liveness changed.

    ``last_heartbeat_ms`` is the SC leader's memory; an SPU it has not heard from since it
    became leader should be given the leader's start time, so a new leader waits a whole
    timeout before it declares anyone dead.
    """
    commands = []
    for spu in state.all(SPU):
        spu_id = spu.spec["id"]
        seen = last_heartbeat_ms.get(spu_id)
        alive_now = seen is not None and now_ms - seen < timeout_ms
        if bool(spu.status.get("alive")) != alive_now:
            commands.append({"op": "set_spu_status", "id": spu_id, "alive": alive_now, "ts": now_ms})
    return commands


def reconcile_leaders(state: State, now_ms: int, leaving: frozenset[int] = frozenset()) -> list[dict[str, Any]]:
    """``elect_leader`` commands for partitions whose leader is gone or missing.

    ``leaving``: SPUs stopping (controlled shutdown, core/sc/leaving.py), never candidates. A
    partition led by one of them with no other live in-sync replica keeps it as leader (it
    still serves) rather than go offline before it has to.
    """
    alive = {o.spec["id"] for o in state.all(SPU) if o.status.get("alive")} - leaving
    commands = []
    for p in sorted(state.all(PARTITION), key=lambda o: o.name):
        leader = p.status["leader"]
        if leader is not None and leader in alive:
            continue
        isr = p.status["isr"]
        # Prefer the replica order (the first replica is the preferred leader).
        candidates = [r for r in p.spec["replicas"] if r in isr and r in alive]
        new_leader = candidates[0] if candidates else None
        if new_leader is None and leader is None:
            continue  # already offline; nothing new to say
        if new_leader is None and leader in leaving:
            continue  # nobody else can lead: the stopping SPU serves until it is gone
        cmd: dict[str, Any] = {"op": "elect_leader", "partition": p.name, "leader": new_leader,
                               "epoch": p.status["epoch"], "ts": now_ms}
        if new_leader is not None:
            cmd["isr"] = [r for r in isr if r in alive]
        commands.append(cmd)
    return commands


def reconcile_replicas(state: State, now_ms: int, move_after_ms: int) -> list[dict[str, Any]]:
    """``reassign_partition`` commands moving replicas off SPUs dead for ``move_after_ms``."""
    spus = {o.spec["id"]: o for o in state.all(SPU)}
    alive = {i for i, o in spus.items() if o.status.get("alive")}
    gone = {i for i, o in spus.items()
            if not o.status.get("alive") and now_ms - int(o.status.get("changed_ms", now_ms)) >= move_after_ms}
    if not gone:
        return []
    load: Counter[int] = Counter({i: 0 for i in alive})
    for p in state.all(PARTITION):
        for r in p.spec["replicas"]:
            if r in load:
                load[r] += 1
    commands = []
    for p in sorted(state.all(PARTITION), key=lambda o: o.name):
        leader = p.status["leader"]
        replicas = list(p.spec["replicas"])
        if leader is None or leader not in alive or not gone & set(replicas) or p.spec.get("target") is not None:
            continue  # a moving partition waits for its move (metadata/move_ops.py)
        new = list(replicas)
        for i, r in enumerate(replicas):
            if r not in gone:
                continue
            racks = {spus[x].spec.get("rack") for x in new if x != r and spus[x].spec.get("rack")}
            choices = [s for s in alive if s not in new]
            if not choices:
                break
            pick = min(choices, key=lambda s: (spus[s].spec.get("rack") in racks, load[s], s))
            new[i] = pick
            load[pick] += 1
        if new != replicas:
            commands.append({"op": "reassign_partition", "partition": p.name, "replicas": new,
                             "epoch": p.status["epoch"], "ts": now_ms})
    return commands


def choose_leader(state: State, p: MetaObject, wanted: int | None, unclean: bool) -> int | str:
    """The leader an operator's election (``kolk partition elect``) would pick, or why none.

    Clean: a live in-sync replica (``wanted`` if it is one, else the first in replica order).
    Unclean: ``wanted``, else the first live replica not recorded as lost, else any live one.
    """
    alive = {o.spec["id"] for o in state.all(SPU) if o.status.get("alive")}
    status = PartitionStatus.from_dict(p.status)
    replicas = list(PartitionSpec.from_dict(p.spec).replicas)
    if wanted is not None and wanted not in replicas:
        return f"SPU {wanted} holds no replica of {p.name} (replicas {replicas})"
    live_in_sync = [r for r in replicas if r in status.isr and r in alive]
    if unclean:
        if live_in_sync:
            return (f"in-sync replica SPU {live_in_sync[0]} of {p.name} is alive and holds every acknowledged record; "
                    "an unclean election would only lose records (elect without --unclean)")
        if wanted is not None:
            return wanted if wanted in alive else f"SPU {wanted} is not alive"
        lost = status.lost_spus
        live = [r for r in replicas if r in alive]
        if not live:
            return f"no replica of {p.name} is alive (replicas {replicas})"
        return next((r for r in live if r not in lost), live[0])
    candidates = live_in_sync
    if wanted is not None:
        if wanted in candidates:
            return wanted
        return (f"SPU {wanted} is not a live in-sync replica of {p.name} (in-sync {list(status.isr)}, "
                f"alive {sorted(alive & set(replicas))}); an unclean election (--unclean) can choose it")
    if not candidates:
        return offline_reason(status, replicas, alive) or f"{p.name} has no live in-sync replica"
    return candidates[0]


def offline_reason(status: PartitionStatus | Mapping[str, Any], replicas: list[int], alive: set[int]) -> str | None:
    """Why a partition has no leader, naming the missing replicas; None when it has one.
    ``status`` typed, or as stored (a dict; read leniently: the SPU passes what it has)."""
    if isinstance(status, PartitionStatus):
        status = status.to_dict()
    if status.get("leader") is not None:
        return None
    isr = list(status.get("isr", []))
    lost = {e["spu"]: e["reason"] for e in status.get("lost", [])}
    if isr:
        down = [r for r in isr if r not in alive]
        text = f"offline: its in-sync replicas {isr} are not alive" if down == isr else \
            f"offline: waiting for an election among in-sync replicas {isr}"
    else:
        text = "offline: no in-sync replica holds every acknowledged record"
    if lost:
        text += "; lost data: " + "; ".join(f"SPU {s} ({why})" for s, why in sorted(lost.items()))
    if not isr:
        text += ("; it stays offline rather than serve a log that may lack acknowledged records, until an "
                 "operator accepts the loss with `kolk partition elect <partition> --unclean`")
    return text
