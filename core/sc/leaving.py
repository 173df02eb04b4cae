"""SPUs that are stopping (controlled shutdown), as the SC leader remembers them.

An SPU sent SIGTERM sends heartbeats with ``leaving`` set until it exits
(core/spu/shutdown.py). The SC leader then, at once rather than after the heartbeat timeout:
marks it not alive (so nothing is placed on it and no election picks it), and moves every
leadership it holds to another live in-sync replica (metadata/controllers.py
``reconcile_leaders`` with ``leaving``). A partition with no other live in-sync replica keeps
the leaving SPU as its leader while it still heart-beats: taking it offline early would only
lengthen the outage. Once its heartbeats stop for the heartbeat timeout it is an SPU down like
any other. A regular heartbeat (or a registration: the SPU came back) ends the leaving.

Plain functions over the leader's memory (``spu id -> time of its last leaving heartbeat``).
"""

from __future__ import annotations

from typing import Iterable, Mapping


def note_heartbeat(leaving: dict[int, int], spu_id: int, is_leaving: bool, now_ms: int) -> bool:
    """Record a heartbeat in ``leaving``; True when ``spu_id`` has just started leaving."""
    if not is_leaving:
        leaving.pop(spu_id, None)
        return False
    started = spu_id not in leaving
    leaving[spu_id] = now_ms
    return started


def leaving_spus(leaving: dict[int, int], now_ms: int, timeout_ms: int) -> frozenset[int]:
    """The SPUs still leaving: a leaving heartbeat within ``timeout_ms``. Those whose heartbeats
    stopped longer ago are gone (the caller forgets them)."""
    return frozenset(spu for spu, seen in leaving.items() if now_ms - seen < timeout_ms)


def heard_from(spus: Iterable[tuple[int, bool]], heartbeats: Mapping[int, int], leader_since_ms: int,
               leaving: frozenset[int]) -> dict[int, int]:
    """When the SC leader last heard from each SPU (``(id, alive in the metadata)``), the input of
    ``reconcile_liveness``; an SPU left out is dead now.

    A leaving SPU is left out: it is marked not alive at once. One not heard from since this SC
    became leader is given the leader's start time if the metadata shows it alive (a new leader
    waits a whole timeout before declaring anyone dead), but is left out if it shows it dead: a
    new leader must not bring a dead SPU back on no evidence (it did: for one heartbeat timeout
    after every change of SC leader, each stopped SPU showed alive and could be elected).
    """
    out = {}
    for spu_id, alive in spus:
        if spu_id in leaving:
            continue
        seen = heartbeats.get(spu_id)
        if seen is None and alive:
            seen = leader_since_ms
        if seen is not None:
            out[spu_id] = seen
    return out
