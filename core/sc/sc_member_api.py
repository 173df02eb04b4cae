"""The SC calls that change the SC group: ``addSc`` and ``removeSc`` (admin on cluster;
docs/operations.md "Adding and removing SCs"). A mixin of :class:`~kolk.sc.api.ScApi`; the work
is core/sc/sc_membership.py's, on the leader (a follower answers notLeader with the leader's
address, which the client follows). Every change is audited and change-logged."""

from __future__ import annotations

import json
from typing import Any

from ..protocol.wire import set_error
from .sc_members import Refusal


class ScMemberCalls:
    async def addSc(self, req: Any, out: Any) -> None:  # noqa: N802
        ident = int(req.id)
        await self._member_change(out, "add", ident, lambda m: m.add(ident, req.raft, req.admin))

    async def removeSc(self, req: Any, out: Any) -> None:  # noqa: N802
        ident = int(req.id)
        await self._member_change(out, "remove", ident, lambda m: m.remove(ident))

    async def _member_change(self, out: Any, action: str, ident: int, run: Any) -> None:
        if not self._allowed(out.result, "admin", "cluster"):  # type: ignore[attr-defined]
            return
        server = self.s  # type: ignore[attr-defined]
        if not server.raft.is_leader():
            set_error(out.result, "notLeader", "SC membership changes go to the SC leader", server.leader_admin(),
                      True)
            return
        try:
            members = await run(server.sc_members)
        except Refusal as e:
            leader = server.leader_admin() if e.code == "notLeader" else None
            set_error(out.result, e.code, e.message, leader, e.retriable)
            return
        self._changed("admin", "cluster", (action, f"sc:{ident}"))  # type: ignore[attr-defined]
        out.membersJson = json.dumps([m.to_dict() for m in members])
        out.result.ok = True
