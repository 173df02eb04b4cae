"""The SC leader's part in moving replicas (docs/rebalance.md): starting the moves of a plan,
finishing moves whose new replicas are in sync, preferred-leader election, and the automatic
rebalance. The decisions are pure (metadata/move_ops.py, metadata/rebalance.py); this proposes
them through Raft and logs what happened.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..metadata.move_ops import reconcile_moves, reconcile_preferred_leaders
from ..metadata.objects import PARTITION, State
from ..metadata.rebalance import Move, PlanError, plan, plan_inputs

if TYPE_CHECKING:
    from .server import ScServer

log = logging.getLogger("kolk.sc")

THROTTLE_DEFAULT = 10 << 20  # bytes/s a moving replica copies at (kolk partition rebalance --throttle)
AUTO_REBALANCE_INTERVAL_MS = 30_000  # how often the leader plans under --auto-rebalance
LEADER_REBALANCE_INTERVAL_DEFAULT_MS = 30_000


@dataclass(frozen=True)
class Started:
    move: Move
    error: str | None  # None: started


def moving(server: "ScServer") -> list[dict[str, Any]]:
    """Moves in progress: [{partition, from, to, waiting: [SPUs not in sync yet]}]."""
    out = []
    for p in sorted(server.sm.state.all(PARTITION), key=lambda o: o.name):
        target = p.spec.get("target")
        if target is not None:
            out.append({"partition": p.name, "from": p.spec.get("moving_from"), "to": target,
                        "waiting": [r for r in target if r not in p.status["isr"]]})
    return out


async def start_moves(server: "ScServer", moves: list[Move], throttle: int, now_ms: int) -> list[Started]:
    """Propose ``move_partition`` for each move (one Raft command each, so one refused move
    does not hold back the others)."""
    out = []
    for m in moves:
        p = server.sm.state.get(PARTITION, m.partition)
        if p is None:
            out.append(Started(m, f"partition {m.partition} no longer exists"))
            continue
        outcome = await server.propose({"op": "move_partition", "partition": m.partition, "target": list(m.after),
                                        "epoch": p.status["epoch"], "throttle": throttle, "ts": now_ms})
        error = None if outcome.get("ok") else str(outcome.get("message", "refused"))
        log.info("%s: moving from %s to %s at %d bytes/s: %s", m.partition, list(m.before), list(m.after), throttle,
                 "started" if error is None else error)
        out.append(Started(m, error))
    return out


class MoveControl:
    """Called every controller round on the SC leader (core/sc/server.py)."""

    def __init__(self, server: "ScServer") -> None:
        self.s = server
        self._preferred_at = 0
        self._auto_at = 0
        self._planning = asyncio.Lock()
        self.draining = asyncio.Lock()  # drainSpu's check and its commit (core/sc/move_api.py)

    async def plan(self, state: State, draining: int | None = None) -> list[Move]:
        """The rebalance plan for ``state`` (``draining``: as if that SPU were draining too), or
        PlanError. The planner runs in a worker thread, one plan at a time: a plan for a large
        cluster takes far longer than the event loop may be held (1,000 partitions on 100 SPUs:
        seconds), and an operator's request must not stop heartbeats and Raft meanwhile."""
        spus, parts = plan_inputs(state, draining)  # plain values, read on the loop
        async with self._planning:
            return await asyncio.to_thread(plan, spus, parts)

    def _leaving(self) -> frozenset[int]:
        """SPUs stopping now, as the server last heard (a leaving heartbeat may arrive during a
        round, after liveness was reconciled: core/sc/leaving.py)."""
        return frozenset(self.s._leaving)

    async def round(self, now_ms: int) -> None:
        for cmd in reconcile_moves(self.s.sm.state, now_ms, self._leaving()):
            if cmd.get("leader") in self._leaving():
                continue  # it started stopping while this round proposed
            outcome = await self.s.propose(cmd)
            what = "finished" if cmd["op"] == "finish_move" else f"leader SPU {cmd.get('leader')} from its target"
            log.info("%s: move %s: %s", cmd["partition"], what, "done" if outcome.get("ok") else outcome.get("message"))
        config = self.s.config
        interval = config.leader_rebalance_interval_ms
        if interval and now_ms - self._preferred_at >= interval:
            self._preferred_at = now_ms
            for cmd in reconcile_preferred_leaders(self.s.sm.state, now_ms, self._leaving()):
                if cmd["leader"] in self._leaving():
                    continue  # it started stopping while this round proposed
                p = self.s.sm.state.get(PARTITION, cmd["partition"])
                was = p.status["leader"] if p is not None else None
                outcome = await self.s.propose(cmd)
                log.info("%s: preferred leader SPU %s leads again (was SPU %s), by the controller: %s",
                         cmd["partition"], cmd["leader"], was, "done" if outcome.get("ok") else outcome.get("message"))
        if config.auto_rebalance and now_ms - self._auto_at >= AUTO_REBALANCE_INTERVAL_MS:
            self._auto_at = now_ms
            if moving(self.s):
                return
            try:
                moves = await self.plan(self.s.sm.state)
            except PlanError as e:
                log.warning("automatic rebalance: %s", e)
                return
            if moves:
                log.info("automatic rebalance: %d moves", len(moves))
                await start_moves(self.s, moves, THROTTLE_DEFAULT, now_ms)
