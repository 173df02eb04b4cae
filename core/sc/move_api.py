"""The SC calls that grow and shrink the cluster (docs/rebalance.md): ``rebalance`` (plan, and
with ``execute`` start the moves) and ``drainSpu`` (mark an SPU draining, or undo). Both need
admin on cluster; every change is audited and logged like other operator changes. A mixin of
:class:`~kolk.sc.api.ScApi`.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from ..metadata.move_ops import THROTTLE_MAX
from ..metadata.objects import SPU
from ..metadata.rebalance import PlanError
from ..protocol.wire import set_error
from .answers import fill_error
from .change_log import admin_change_line
from .move_control import THROTTLE_DEFAULT, moving, start_moves
from .server import now_ms

log = logging.getLogger("kolk.sc")


class MoveCalls:
    s: Any
    peer: Any

    def _allowed(self, result: Any, action: str, resource: str) -> bool:  # ScApi's
        raise NotImplementedError

    def _moves_changed(self, what: str) -> None:
        self.s.authz.record(self.peer, "admin", "cluster", "allow", None, what)
        log.info("%s", admin_change_line("admin", f"cluster:{what}", self.peer.identity, self.peer.address,
                                         self.s.sm.state.version))

    async def rebalance(self, req: Any, out: Any) -> None:
        if not self._allowed(out.result, "admin", "cluster"):
            return
        throttle = int(req.throttleBytesPerSec) or THROTTLE_DEFAULT
        if throttle > THROTTLE_MAX:
            set_error(out.result, "invalidArgument", f"throttle {throttle} bytes/s is more than {THROTTLE_MAX}")
            return
        if req.cancel:
            await self._cancel_moves(out)
            return
        try:
            moves = await self.s.moves.plan(self.s.sm.state)
        except PlanError as e:
            set_error(out.result, "invalidArgument", str(e))
            return
        answer: dict[str, Any] = {"moves": [m.to_json() for m in moves], "started": [], "refused": []}
        if req.execute and moves:
            for started in await start_moves(self.s, moves, throttle, now_ms()):
                if started.error is None:
                    answer["started"].append(started.move.partition)
                else:
                    answer["refused"].append({"partition": started.move.partition, "message": started.error})
            self._moves_changed(f"rebalance started {len(answer['started'])} moves at {throttle} bytes/s")
        answer["moving"] = moving(self.s)
        out.planJson = json.dumps(answer)
        out.result.ok = True

    async def _cancel_moves(self, out: Any) -> None:
        answer: dict[str, Any] = {"moves": [], "started": [], "refused": []}
        for m in moving(self.s):
            outcome = await self.s.propose({"op": "cancel_move", "partition": m["partition"], "ts": now_ms()})
            if outcome.get("ok"):
                answer["started"].append(m["partition"])
            else:
                answer["refused"].append({"partition": m["partition"], "message": outcome.get("message", "")})
        if answer["started"]:
            self._moves_changed(f"rebalance cancelled {len(answer['started'])} moves")
        answer["moving"] = moving(self.s)
        out.planJson = json.dumps(answer)
        out.result.ok = True

    async def drainSpu(self, req: Any, out: Any) -> None:  # noqa: N802
        if not self._allowed(out.result, "admin", "cluster"):
            return
        spu_id, draining = int(req.spu), not req.undo
        # One drain at a time, check to commit: concurrent drains each checked a state without
        # the others and together drained every SPU.
        async with self.s.moves.draining:
            state = self.s.sm.state
            if state.get(SPU, str(spu_id)) is None:
                set_error(out.result, "notFound", f"SPU {spu_id} is not registered")
                return
            if draining:
                # Refuse before marking: the others must be able to hold its replicas.
                try:
                    await self.s.moves.plan(state, draining=spu_id)
                except PlanError as e:
                    set_error(out.result, "invalidArgument", f"SPU {spu_id} cannot be drained: {e}")
                    return
            outcome = await self.s.propose({"op": "set_draining", "id": spu_id, "draining": draining,
                                            "ts": now_ms()})
        if not fill_error(out.result, outcome, self.s):
            return
        self._moves_changed(f"SPU {spu_id} {'draining' if draining else 'no longer draining'}")
        try:
            moves = await self.s.moves.plan(self.s.sm.state)
        except PlanError:
            moves = []
        out.planJson = json.dumps({"moves": [m.to_json() for m in moves], "started": [], "refused": [],
                                   "moving": moving(self.s)})
