"""The consumer-group calls of the SPU's wire (``groupHeartbeat``, ``offsetCommit``,
``offsetFetch``, ``describeGroup``, ``listGroups``, ``deleteGroup``): checks, the policy, then
the coordinator (core/spu/coordinator.py) and the group state machine (core/groups/state.py).
docs/consumers.md has the protocol; /docs/policy.md the actions (``read``, ``describe``,
``admin`` on ``group:NAME``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import TYPE_CHECKING, Any

from ..groups import records as R
from ..groups.names import DEFAULT_ASSIGNOR, OFFSETS_TOPIC, TopicPartition, group_problem
from ..groups.records import Committed
from ..groups.state import (JOIN, LEAVE, LEAVE_FOR_NOW, GroupError, HeartbeatIn, answer, check_commit, gone,
                            heartbeat, leave, regrant, set_partitions, snapshot)
from ..node.authz import Denied
from ..protocol import limits as L
from ..protocol.codes import RETRIABLE, ErrorCode
from ..protocol.wire import set_error
from .coordinator import CoordinatorError, GroupEntry, OffsetsPartition, now_ms

if TYPE_CHECKING:
    from ..security.tls import Peer
    from .server import SpuServer

log = logging.getLogger("kolk.groups")


class _Refused(Exception):
    def __init__(self, code: str, message: str, leader: str = "", retriable: bool | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.leader = leader
        self.retriable = retriable


def _fill_error(result: Any, e: Exception) -> None:
    if isinstance(e, CoordinatorError):
        set_error(result, e.code, str(e), e.leader, e.retriable)
    elif isinstance(e, GroupError):
        code = ErrorCode(e.code)
        set_error(result, e.code, str(e), None, code in RETRIABLE)
    elif isinstance(e, _Refused):
        retriable = e.retriable if e.retriable is not None else ErrorCode(e.code) in RETRIABLE
        set_error(result, e.code, str(e), e.leader, retriable)
    elif isinstance(e, Denied):
        set_error(result, "denied", str(e))
    else:
        raise e


ANSWER_JSON_BYTES_MAX = 16 << 20  # a describe or list answer's JSON; the rest of the frame is headroom


def _answer_json(value: Any, what: str) -> str:
    """``value`` as the JSON of an answer, or tooLarge (one line) when no frame could carry it:
    sent anyway, the client would drop the connection at the frame limit."""
    text = json.dumps(value)
    size = len(text.encode())
    if size > ANSWER_JSON_BYTES_MAX:
        raise _Refused("tooLarge", f"{what} is {size} bytes of JSON, more than one answer holds "
                       f"({ANSWER_JSON_BYTES_MAX})")
    return text


def _partitions(lists: Any, what: str) -> frozenset[TopicPartition]:
    """A ``List(TopicPartitions)`` as a set, at most GROUP_PARTITIONS_MAX in all."""
    out: set[TopicPartition] = set()
    total = 0
    for tps in lists:
        total += len(tps.partitions)
        if total > L.GROUP_PARTITIONS_MAX:
            raise _Refused("tooLarge", f"{what} names more than {L.GROUP_PARTITIONS_MAX} partitions")
        topic = tps.topic
        for p in tps.partitions:
            out.add(TopicPartition(topic, int(p)))
    return frozenset(out)


def _wire_partitions(target: Any, field: str, tps: frozenset[TopicPartition]) -> None:
    by_topic: dict[str, list[int]] = {}
    for tp in tps:
        by_topic.setdefault(tp.topic, []).append(tp.partition)
    lst = target.init(field, len(by_topic))
    for i, (topic, parts) in enumerate(sorted(by_topic.items())):
        lst[i].topic = topic
        ps = lst[i].init("partitions", len(parts))
        for j, p in enumerate(sorted(parts)):
            ps[j] = p


class GroupCalls:
    """Mixed into core/spu/api.py's SpuHandler (``self.s``: the server, ``self.peer``)."""

    s: "SpuServer"
    peer: "Peer"

    # ---------------------------------------------------------------- helpers

    def _group_name(self, name: str) -> str:
        problem = group_problem(name)
        if problem is not None:
            raise _Refused("invalidArgument", problem)
        return name

    def _part(self, group: str) -> OffsetsPartition:
        return self.s.coordinator.partition_of(group)

    def _audit_change(self, action: str, group: str, detail: dict[str, Any]) -> None:
        self.s.authz.audited_change(self.peer, action, f"group:{group}", detail)

    # ---------------------------------------------------------------- membership

    async def groupHeartbeat(self, req: Any, out: Any) -> None:  # noqa: N802 - the wire name
        try:
            await self._heartbeat(req, out)
        except (CoordinatorError, GroupError, _Refused, Denied) as e:
            _fill_error(out.result, e)

    async def _heartbeat(self, req: Any, out: Any) -> None:
        name = self._group_name(req.group)
        self.s.authz.check(self.peer, "read", f"group:{name}")
        epoch = int(req.memberEpoch)
        topics = frozenset(req.topics)
        # A leave names no subscription to check: a member whose topic was deleted (or whose
        # consume right was taken away) still leaves at once instead of holding its partitions.
        for t in sorted(topics) if epoch not in (LEAVE, LEAVE_FOR_NOW) else ():
            if t == OFFSETS_TOPIC:
                raise _Refused("invalidArgument", f"{OFFSETS_TOPIC} is internal: groups cannot subscribe to it")
            self.s.authz.check(self.peer, "consume", f"topic:{t}")
            if t not in self.s.topics:
                raise _Refused("notFound", f"topic {t} does not exist (SPU {self.s.config.spu_id}, metadata version "
                               f"{self.s.metadata_version})", retriable=True)
        owned = _partitions(req.owned, "owned")
        part = self._part(name)
        entry = part.entry(name, create=epoch == JOIN)
        if entry is None:
            raise GroupError("staleMember", f"member {req.memberId} is not in group {name}: the group has no members "
                             "now; rejoin")
        g = entry.group
        now = now_ms()
        if epoch in (LEAVE, LEAVE_FOR_NOW):
            if leave(g, req.memberId, epoch, now):
                log.info("group %s: member %s left", name, req.memberId)
                part.changed(entry)
                await part.persist(name, entry)
            out.memberId = req.memberId
            out.memberEpoch = epoch
            out.groupEpoch = g.epoch
            out.result.ok = True
            return
        hin = HeartbeatIn(req.memberId, req.instanceId or None, epoch, topics, owned,
                          int(req.sessionTimeoutMs) or L.SESSION_TIMEOUT_MS_DEFAULT,
                          int(req.rebalanceTimeoutMs) or L.REBALANCE_TIMEOUT_MS_DEFAULT,
                          req.assignor or DEFAULT_ASSIGNOR, self.peer.address)
        counts = self.s.coordinator.partition_counts(set(topics))
        g.partitions.update(counts)
        hb = heartbeat(g, hin, now, uuid.uuid4().hex)
        member_id = hb.member_id
        if epoch == JOIN and hin.instance_id is None:
            # The whole membership is one record: a join that would make it larger than one batch
            # of the offsets topic is undone at once (it could never be written, and every other
            # member's heartbeat would fail with it).
            size = len(R.group_value(snapshot(g)))
            if size > part.batch_budget():
                leave(g, member_id, LEAVE, now)
                raise _Refused("tooLarge", f"group {name}: with this member its membership would be {size} bytes, "
                               f"more than one record of {part.replica.name} holds ({part.batch_budget()}): "
                               "subscribe to fewer or shorter-named topics, or use another group")
        if epoch == JOIN:
            log.info("group %s: member %s joined (instance %s, topics %s)", name, member_id, hin.instance_id,
                     ",".join(sorted(topics)))
        changed = set_partitions(g, self.s.coordinator.partition_counts(g.subscribed_topics())) or hb.changed
        if changed:
            part.changed(entry)
            await part.persist(name, entry)
        assignment = answer(g, member_id)
        loop = asyncio.get_running_loop()
        # Held at most half the member's session: a member is removed when its session passes
        # without a heartbeat, so a longer hold would remove it while its heartbeat waits here.
        member = g.members.get(member_id)  # gone when removed while its change was persisted
        wait_ms = min(int(req.waitMs), L.HEARTBEAT_WAIT_MS_MAX, member.session_timeout_ms // 2 if member else 0)
        deadline = loop.time() + wait_ms / 1000
        while assignment is not None and assignment == owned and epoch != JOIN:
            left = deadline - loop.time()
            if left <= 0:
                break
            wakeup = entry.wakeup
            try:
                await asyncio.wait_for(wakeup.wait(), left)
            except TimeoutError:
                break
            part.check_serving()
            if regrant(g, member_id, now_ms()):
                part.changed(entry)
                await part.persist(name, entry)
            assignment = answer(g, member_id)
        assignment = answer(g, member_id)  # the member may have been removed while the answer waited
        if assignment is None or part.groups.get(name) is not entry:
            raise gone(g, member_id, hin.instance_id)  # removed, or replaced, while its heartbeat waited
        m = g.members[member_id]
        m.deadline_ms = max(m.deadline_ms, now_ms() + m.session_timeout_ms)
        out.memberId = member_id
        out.memberEpoch = m.epoch
        out.groupEpoch = g.epoch
        _wire_partitions(out, "assignment", assignment)
        out.heartbeatIntervalMs = hb.interval_ms
        out.result.ok = True

    # ---------------------------------------------------------------- offsets

    async def offsetCommit(self, req: Any, out: Any) -> None:  # noqa: N802 - the wire name
        try:
            await self._commit(req, out)
        except (CoordinatorError, GroupError, _Refused, Denied) as e:
            _fill_error(out.result, e)

    async def _commit(self, req: Any, out: Any) -> None:
        name = self._group_name(req.group)
        member_id = req.memberId
        self.s.authz.check(self.peer, "read" if member_id else "admin", f"group:{name}")
        wall = int(time.time() * 1000)
        commits: dict[TopicPartition, Committed] = {}
        for o in req.offsets:
            tp = TopicPartition(o.topic, int(o.partition))
            if tp.topic == OFFSETS_TOPIC:
                raise _Refused("invalidArgument", f"{OFFSETS_TOPIC} is internal: groups do not read it, so commit no "
                               "offsets of it")
            if int(o.offset) < 0:
                raise _Refused("invalidArgument", f"offset {o.offset} for {tp} is negative: commit the next offset "
                               "to read, 0 or more")
            if not member_id:
                topic = self.s.topics.get(tp.topic)
                if topic is None or tp.partition >= int(topic["spec"]["partitions"]):
                    raise _Refused("notFound", f"partition {tp} does not exist")
            commits[tp] = Committed(int(o.offset), o.metadata, wall)
        if not commits:
            raise _Refused("invalidArgument", "a commit names at least one partition")
        part = self._part(name)
        created = name not in part.groups
        entry = part.entry(name, create=not member_id)
        if entry is None:
            raise GroupError("staleMember", f"member {member_id} is not in group {name} (the group has no members): "
                             "its commit is refused")
        entry.writing += 1  # the coordinator's tick keeps an entry with a write on the way
        try:
            check_commit(entry.group, member_id, int(req.memberEpoch), commits)
            await part.write([(R.offset_key(name, tp), R.offset_value(c)) for tp, c in commits.items()],
                             ": commit fewer partitions or shorter metadata at once")
            entry.offsets.update(commits)
        finally:
            entry.writing -= 1
            if created and entry.idle and part.groups.get(name) is entry:
                del part.groups[name]
        if not member_id:
            # DEBUG: a reset commits in chunks and each is audited; an INFO line per commit cost
            # 2-10% of the coordinator's CPU under load (docs/benchmarks.md, issue 20).
            log.debug("group %s: offsets of %d partition(s) set by %s", name, len(commits), self.peer)
            self._audit_change("admin", name, {"call": "offsetCommit", "offsets":
                                               {str(tp): c.offset for tp, c in sorted(commits.items())[:100]}})
        out.result.ok = True

    async def offsetFetch(self, req: Any, out: Any) -> None:  # noqa: N802 - the wire name
        try:
            name = self._group_name(req.group)
            self.s.authz.check(self.peer, "read", f"group:{name}")
            wanted = _partitions(req.topics, "topics")
            topics = {tps.topic for tps in req.topics if not len(tps.partitions)}
            part = self._part(name)
            entry = part.entry(name, create=False)
            found = [] if entry is None else sorted(
                (tp, c) for tp, c in entry.offsets.items()
                if (not len(req.topics)) or tp in wanted or tp.topic in topics)
            if len(found) > L.OBJECTS_PER_ANSWER_MAX:
                raise _Refused("tooLarge", f"group {name} has {len(found)} committed offsets; ask for fewer topics")
            lst = out.init("offsets", len(found))
            for i, (tp, c) in enumerate(found):
                lst[i].topic = tp.topic
                lst[i].partition = tp.partition
                lst[i].offset = c.offset
                lst[i].metadata = c.metadata
            out.result.ok = True
        except (CoordinatorError, GroupError, _Refused, Denied) as e:
            _fill_error(out.result, e)

    # ---------------------------------------------------------------- operations

    def _describe(self, part: OffsetsPartition, name: str, entry: GroupEntry) -> dict[str, Any]:
        g = entry.group
        now = now_ms()
        wall = int(time.time() * 1000)
        return {
            "group": name, "state": g.state, "epoch": g.epoch, "assignor": g.assignor,
            "coordinator": self.s.config.spu_id, "offsets_partition": part.replica.name,
            "members": [{
                "member_id": m.member_id, "instance_id": m.instance_id, "client": m.client,
                "topics": sorted(m.topics),
                "assignment": sorted([tp.topic, tp.partition] for tp in g.target.get(m.member_id, frozenset())),
                "owned": sorted([tp.topic, tp.partition] for tp in m.owned), "member_epoch": m.epoch,
                "session_timeout_ms": m.session_timeout_ms, "away": m.away,
                "last_heartbeat_ms_ago": max(0, now - m.last_seen_ms) if m.last_seen_ms else None,
            } for m in sorted(g.members.values(), key=lambda m: m.member_id)],
            "offsets": [{"topic": tp.topic, "partition": tp.partition, "offset": c.offset, "metadata": c.metadata,
                         "commit_ms": c.ts, "age_ms": max(0, wall - c.ts)}
                        for tp, c in sorted(entry.offsets.items())],
        }

    async def describeGroup(self, req: Any, out: Any) -> None:  # noqa: N802 - the wire name
        try:
            name = self._group_name(req.group)
            self.s.authz.check(self.peer, "describe", f"group:{name}")
            part = self._part(name)
            entry = part.entry(name, create=False)
            if entry is None or entry.empty:
                raise _Refused("notFound", f"group {name} does not exist (no members and no committed offsets)")
            out.groupJson = _answer_json(self._describe(part, name, entry), f"the description of group {name}")
            out.result.ok = True
        except (CoordinatorError, GroupError, _Refused, Denied) as e:
            _fill_error(out.result, e)

    async def listGroups(self, req: Any, out: Any) -> None:  # noqa: N802 - the wire name
        groups = []
        for part, name, entry in self.s.coordinator.groups():
            if entry.empty or not self.s.authz.allowed(self.peer, "describe", f"group:{name}"):
                continue
            groups.append({"group": name, "state": entry.group.state, "members": len(entry.group.members),
                           "coordinator": self.s.config.spu_id, "offsets_partition": part.replica.name})
        try:
            out.groupsJson = _answer_json(sorted(groups, key=lambda g: g["group"]),
                                          f"the list of the {len(groups)} groups SPU {self.s.config.spu_id} "
                                          "coordinates")
        except _Refused as e:
            _fill_error(out.result, e)
            return
        out.result.ok = True

    async def deleteGroup(self, req: Any, out: Any) -> None:  # noqa: N802 - the wire name
        try:
            name = self._group_name(req.group)
            self.s.authz.check(self.peer, "admin", f"group:{name}")
            part = self._part(name)
            entry = part.entry(name, create=False)
            if entry is None or entry.empty:
                raise _Refused("notFound", f"group {name} does not exist (no members and no committed offsets)")
            if entry.group.members:
                raise _Refused("inUse", f"group {name} has {len(entry.group.members)} active member(s); stop them "
                               "(or wait for their session timeout) before deleting it")
            tombstones: list[tuple[bytes, bytes | None]] = [(R.offset_key(name, tp), None) for tp in entry.offsets]
            tombstones.append((R.group_key(name), None))
            entry.writing += 1
            try:
                await part.write(tombstones)
            finally:
                entry.writing -= 1
            if part.groups.get(name) is entry and not entry.group.members:
                del part.groups[name]
            log.info("group %s deleted by %s (%d committed offsets)", name, self.peer, len(entry.offsets))
            self._audit_change("admin", name, {"call": "deleteGroup", "offsets": len(entry.offsets)})
            out.result.ok = True
        except (CoordinatorError, GroupError, _Refused, Denied) as e:
            _fill_error(out.result, e)
