"""SC membership at run time: the member list each SC knows, and `kolk cluster sc add|remove`
carried out on the leader (docs/operations.md, "Adding and removing SCs").

The decisions are core/sc/sc_members.py's; this module is the edge: it reads which members the
leader reaches, probes a new SC, changes Raft's configuration through pysyncobj and commits
the member list (``set_sc_members``, metadata/sc_ops.py). Every SC follows the committed list:
it learns the members' admin addresses from it, a joining SC starts elections only once it is
listed, and an SC that finds itself left out stops campaigning and refuses writes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import TYPE_CHECKING, Any, Callable

from ..metadata.objects import State
from ..metadata.sc_ops import ScMember, members_of
from ..raft.node import RaftError
from .sc_members import Refusal, new_member, plan_add, plan_remove

if TYPE_CHECKING:
    from .server import ScServer

log = logging.getLogger("kolk.sc")

PROBE_TIMEOUT_S = 2.0  # a new SC's addresses must accept a TCP connection within this
CATCH_UP_TIMEOUT_S = 10.0  # how long the leader waits for a new SC to have the log
CATCH_UP_POLL_S = 0.05


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class ScMembership:
    """One per SC: the members it knows and the one membership change it may be running."""

    def __init__(self, server: "ScServer") -> None:
        self.s = server
        self.listed = False  # this SC appears in the committed member list
        self.removed = False  # it did, and a later list left it out
        self.change: str | None = None  # the change in flight on this leader ("adding SC 4")
        if server.config.join:
            server.raft.set_campaigning(False)
            log.info("SC %d is joining: it will not start elections until `kolk cluster sc add` lists it",
                     server.config.node_id)
        server.sm.add_listener(self._on_state)
        self._on_state(server.sm.state)

    # ---------------------------------------------------------------- what every SC knows

    def members(self) -> tuple[ScMember, ...]:
        """The committed member list, or (before the leader has seeded it) this SC's flags."""
        listed = members_of(self.s.sm.state)
        if listed is not None:
            return listed
        return tuple(sorted(ScMember(p.node_id, p.raft_address, p.admin_address) for p in self.s.config.peers.values()))

    def _on_state(self, state: State) -> None:
        listed = members_of(state)
        if listed is None:
            return
        for m in listed:
            self.s._admin_by_raft[m.raft] = m.admin
            self.s._id_by_raft[m.raft] = m.id
        me = self.s.config.node_id
        if any(m.id == me for m in listed):
            if not self.listed or self.removed:
                self.s.raft.set_campaigning(True)
                log.info("SC %d is a member of the SC group (%s)", me, ", ".join(str(m.id) for m in listed))
            self.listed, self.removed = True, False
        elif self.listed or not self.s.config.join:
            # Not sticky: a restarted SC replays older lists before the newest one (which may list it).
            if not self.removed:
                self.removed = True
                self.s.raft.set_campaigning(False)
                log.error("SC %d was removed from the SC group (members now %s): it no longer serves writes or "
                          "linearizable reads; stop it", me, ", ".join(str(m.id) for m in listed))

    def refusal(self) -> dict[str, Any] | None:
        """The outcome of a write on an SC that is no longer a member (ScServer.propose)."""
        if not self.removed:
            return None
        return {"ok": False, "code": "notLeader", "retriable": True,
                "message": f"SC {self.s.config.node_id} was removed from the SC group; ask a member"}

    async def reconcile(self) -> None:
        """On the leader: seed the committed list from the flags once (a cluster started before
        the list existed, or a new one)."""
        if members_of(self.s.sm.state) is None and self.change is None:
            try:
                await self._commit(self.members(), None)
            except Refusal as e:  # the next round tries again; the other controllers go on
                log.warning("the SC member list could not be written yet: %s", e)

    # ---------------------------------------------------------------- changes, on the leader

    def _connected(self, members: tuple[ScMember, ...]) -> frozenset[int]:
        peers = self.s.raft.status()["peers"]
        return frozenset(m.id for m in members if m.id == self.s.config.node_id or peers.get(m.raft, False))

    def _begin(self, what: str) -> None:
        if self.change is not None:
            raise Refusal("inUse", f"another SC membership change is in flight ({self.change}); retry once it is done",
                          True)
        self.change = what

    async def add(self, ident: int, raft: str, admin: str) -> tuple[ScMember, ...]:
        new = new_member(ident, raft, admin)
        self._begin(f"adding SC {ident}")
        try:
            based_on, members = members_of(self.s.sm.state), self.members()
            plan_add(members, new, self._connected(members))  # duplicates and the majority, before probing
            await _probe(ident, new.raft, "Raft")
            await _probe_sc(new, self.s.config.tls)  # an SC, that one: not any port that accepts (an SPU's)
            after = plan_add(members, new, self._connected(members))
            if new.raft not in self.s.raft.status()["peers"]:  # a retried add whose Raft step went through
                await self._raft_change(self.s.raft.add_node, new.raft)
            await self._catch_up(new)
            await self._commit(after, based_on)
            return after
        finally:
            self.change = None

    async def remove(self, ident: int) -> tuple[ScMember, ...]:
        self._begin(f"removing SC {ident}")
        try:
            based_on, members = members_of(self.s.sm.state), self.members()
            peers = self.s.raft.status()["peers"]
            voters = {r: self.s._id_by_raft[r] for r in peers if r in self.s._id_by_raft}
            after = plan_remove(members, ident, self._connected(members), frozenset(voters.values()))
            if ident == self.s.config.node_id:
                await self._raft_change(self.s.raft.transfer_leadership, None)
                raise Refusal("notLeader", f"SC {ident} is the leader: it has handed leadership over; the new "
                                           "leader carries out the removal", True)
            gone = next((m for m in members if m.id == ident), None)
            if gone is None:  # left out of the list by a removal cut short: Raft's step only
                await self._raft_change(self.s.raft.remove_node,
                                        next(r for r, i in voters.items() if i == ident))
                return after
            # The list first, so the SC being removed still receives it and stops campaigning.
            await self._commit(after, based_on)
            await self._drain(gone)
            if gone.raft in self.s.raft.status()["peers"]:
                await self._raft_change(self.s.raft.remove_node, gone.raft)
            return after
        finally:
            self.change = None

    async def _drain(self, gone: ScMember) -> None:
        """Before Raft drops ``gone``: let it apply the list (from then on it refuses writes),
        then commit what it forwarded before that, so that no write a client sent through it is
        left without an answer. A barrier after the list reaches ``gone`` with a commit index that
        covers the list; a second barrier commits the writes it forwarded before. Skipped (bounded)
        when ``gone`` is down."""
        await self._barrier()
        target = self.s.raft.progress().commit_index
        deadline = time.monotonic() + CATCH_UP_TIMEOUT_S / 2
        while self.s.raft.match_index(gone.raft) < target and time.monotonic() < deadline:
            if not self.s.raft.status()["peers"].get(gone.raft, False):
                return  # down: nothing forwarded through it can be answered anyway
            await asyncio.sleep(CATCH_UP_POLL_S)  # polling pysyncobj's match index: no event to wait on
        await self._barrier()

    async def _barrier(self) -> None:
        outcome = await self.s.propose({"op": "barrier", "ts": now_ms()})
        if not outcome.get("ok"):
            raise Refusal(str(outcome.get("code", "internal")), str(outcome.get("message")),
                          bool(outcome.get("retriable")))

    async def _commit(self, members: tuple[ScMember, ...], based_on: tuple[ScMember, ...] | None) -> None:
        """Commit ``members`` if the committed list is still ``based_on`` (None: no list yet):
        a change planned before a leader change never undoes one made after it."""
        outcome = await self.s.propose({"op": "set_sc_members", "members": [m.to_dict() for m in members],
                                        "based_on": None if based_on is None else [m.to_dict() for m in based_on],
                                        "ts": now_ms()})
        if not outcome.get("ok"):
            if outcome.get("code") == "version_conflict":
                raise Refusal("versionConflict", str(outcome.get("message")), True)
            raise Refusal(str(outcome.get("code", "internal")), str(outcome.get("message")),
                          bool(outcome.get("retriable")))

    async def _raft_change(self, call: Callable[..., None], address: str | None) -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[RaftError | None] = loop.create_future()

        def done(err: RaftError | None) -> None:
            loop.call_soon_threadsafe(lambda: fut.done() or fut.set_result(err))

        if address is None:
            call(done)
        else:
            call(address, done)
        try:
            err = await asyncio.wait_for(fut, self.s.config.request_timeout_s)
        except asyncio.TimeoutError:
            raise Refusal("timeout", f"the Raft membership change ({self.change}) did not commit within "
                                     f"{self.s.config.request_timeout_s} s; check `kolk cluster status`", True) from None
        if err is not None:
            raise Refusal("timeout", f"{self.change}: {err.reason}", err.retriable)

    async def _catch_up(self, new: ScMember) -> None:
        """Wait (bounded) until the new SC holds the log up to what was committed when it joined."""
        target = self.s.raft.progress().commit_index
        deadline = time.monotonic() + CATCH_UP_TIMEOUT_S
        while self.s.raft.match_index(new.raft) < target:
            if time.monotonic() > deadline:
                log.warning("SC %d has not caught up with the Raft log within %.0f s (has %d of %d); adding it to "
                            "the member list anyway", new.id, CATCH_UP_TIMEOUT_S, self.s.raft.match_index(new.raft),
                            target)
                return
            await asyncio.sleep(CATCH_UP_POLL_S)  # polling pysyncobj's match index: no event to wait on


async def _probe(ident: int, address: str, what: str) -> None:
    host, _, port = address.rpartition(":")
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host.strip("[]"), int(port)), PROBE_TIMEOUT_S)
    except (OSError, asyncio.TimeoutError, ValueError) as e:
        reason = "no answer within %.0f s" % PROBE_TIMEOUT_S if isinstance(e, asyncio.TimeoutError) else \
            (os.strerror(e.errno) if e.errno else str(e)).lower() if isinstance(e, OSError) else str(e)
        raise Refusal("notEnoughReplicas", f"SC {ident} is not reachable on its {what} address {address}: {reason}; "
                                           f"start it (`kolk sc --id {ident} --join ...`) first") from None
    writer.close()


async def _probe_sc(new: ScMember, tls: Any) -> None:
    """Refuse unless ``new.admin`` is the admin API of SC ``new.id`` advertising Raft at ``new.raft``.
    A TCP connect alone was not enough: adding an SC at an SPU's (or any other) listening port
    made Raft count a voter that never answers, and a 1-SC cluster lost its quorum for good."""
    from ..client.admin import AdminClient
    from ..protocol.errors import KolkError

    client = AdminClient([new.admin], timeout_s=PROBE_TIMEOUT_S, tls=tls)
    try:
        status = await client.cluster_status()
        me = next((m for m in status.get("scs", []) if m.get("id") == status.get("self")), None)
        found = (status.get("self"), me.get("raft") if me else None)
    except (KolkError, OSError, asyncio.TimeoutError, ValueError, KeyError, AttributeError, TypeError) as e:
        raise Refusal("notEnoughReplicas", f"SC {new.id}: {new.admin} does not answer as a Kolk SC ({e}); start it "
                                           f"(`kolk sc --id {new.id} --join ...`) first") from None
    finally:
        await client.close()
    # Its own entry may be missing: on a retried add it may hold a committed list without it yet.
    if found[0] != new.id or found[1] not in (None, new.raft):
        raise Refusal("invalidArgument", f"{new.admin} is SC {found[0]} with Raft at {found[1]}, not SC {new.id} "
                                         f"with Raft at {new.raft}")
