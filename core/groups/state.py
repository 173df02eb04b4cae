"""One consumer group's membership and assignment as a state machine: events in, effects out.

The coordinator (core/spu/coordinator.py) owns one :class:`Group` per group it coordinates and
calls the functions here with the time; they change the group and say what the edge must do:
persist the group (``changed``) before any answer that relies on the change, wake the members
waiting in a held heartbeat. Nothing here does I/O, reads a clock or draws a random number (the
new member id comes in with the event).

The rule that keeps a partition in one member's hands at a time (docs/consumers.md):

- ``target`` is the assignor's answer for the current members (recomputed when members join or
  leave, subscriptions change or partitions are added; the group ``epoch`` grows when it changes).
- ``owned`` is, per member, what the coordinator has given it and not seen it hand back. A
  heartbeat reports what the member holds now; whatever it no longer reports is handed back.
- A member is answered ``owned ∩ target`` plus the partitions of its target that no other member
  owns. What it owns outside its target it must hand back (after committing its position); until
  its next heartbeat says so, nobody else is given them. So a partition moves revoke first, then
  assign; a member that does not hand back within its rebalance timeout is removed.
- A member not heard from for its session timeout is removed; its partitions are free at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from ..protocol import limits as L
from .assignors import Subscription, assign
from .names import ASSIGNORS, DEFAULT_ASSIGNOR, TopicPartition

JOIN = 0
LEAVE = -1
LEAVE_FOR_NOW = -2  # a static member going away for a restart: keeps its partitions for its session

HEARTBEAT_INTERVAL_MS_MAX = 3_000
HEARTBEAT_INTERVAL_MS_MIN = 100


def heartbeat_interval_ms(session_timeout_ms: int) -> int:
    """How often a member heartbeats: a fifth of its session, within 100 ms to 3 s."""
    return max(HEARTBEAT_INTERVAL_MS_MIN, min(HEARTBEAT_INTERVAL_MS_MAX, session_timeout_ms // 5))


class GroupError(Exception):
    """A refused group call: ``code`` is a wire error code (core/protocol/codes.py)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Member:
    member_id: str
    instance_id: str | None
    topics: frozenset[str]
    session_timeout_ms: int
    rebalance_timeout_ms: int
    client: str = ""
    epoch: int = 0                       # the group epoch when this member's assignment last changed
    owned: frozenset[TopicPartition] = frozenset()
    deadline_ms: int = 0                 # removed when not heard from by then
    revoke_deadline_ms: int | None = None  # removed when still holding revoked partitions by then
    last_seen_ms: int = 0
    away: bool = False                   # a static member that left for now
    answered: frozenset[TopicPartition] | None = None  # the assignment last answered


@dataclass
class Group:
    name: str
    epoch: int = 0
    assignor: str = DEFAULT_ASSIGNOR
    members: dict[str, Member] = field(default_factory=dict)
    target: dict[str, frozenset[TopicPartition]] = field(default_factory=dict)
    partitions: dict[str, int] = field(default_factory=dict)  # topic -> partition count
    unsafe_assign: bool = False  # the broken build of jepsen's self-test: assign before revoke

    @property
    def state(self) -> str:
        if not self.members:
            return "empty"
        settled = all(m.owned == self.target.get(m.member_id, frozenset()) for m in self.members.values())
        return "stable" if settled else "reconciling"

    def subscribed_topics(self) -> set[str]:
        return {t for m in self.members.values() for t in m.topics}

    def owner_of(self, tp: TopicPartition) -> str | None:
        for m in self.members.values():
            if tp in m.owned:
                return m.member_id
        return None


@dataclass(frozen=True)
class HeartbeatIn:
    member_id: str
    instance_id: str | None
    member_epoch: int
    topics: frozenset[str]
    owned: frozenset[TopicPartition]
    session_timeout_ms: int
    rebalance_timeout_ms: int
    assignor: str
    client: str = ""


@dataclass(frozen=True)
class HeartbeatOut:
    member_id: str
    member_epoch: int
    group_epoch: int
    assignment: frozenset[TopicPartition]
    interval_ms: int
    changed: bool  # the group changed: persist it before answering


# ---------------------------------------------------------------- checks of a request


def check_heartbeat(req: HeartbeatIn) -> None:
    """Refuse what no group may accept (GroupError ``invalidArgument``, one line)."""
    if not L.SESSION_TIMEOUT_MS_MIN <= req.session_timeout_ms <= L.SESSION_TIMEOUT_MS_MAX:
        raise GroupError("invalidArgument", f"session timeout {req.session_timeout_ms} ms is out of range: "
                         f"{L.SESSION_TIMEOUT_MS_MIN}-{L.SESSION_TIMEOUT_MS_MAX} ms")
    if not L.REBALANCE_TIMEOUT_MS_MIN <= req.rebalance_timeout_ms <= L.REBALANCE_TIMEOUT_MS_MAX:
        raise GroupError("invalidArgument", f"rebalance timeout {req.rebalance_timeout_ms} ms is out of range: "
                         f"{L.REBALANCE_TIMEOUT_MS_MIN}-{L.REBALANCE_TIMEOUT_MS_MAX} ms")
    if req.assignor not in ASSIGNORS:
        raise GroupError("invalidArgument", f"assignor {req.assignor!r} is not one of {', '.join(ASSIGNORS)}")
    if req.member_epoch < LEAVE_FOR_NOW:
        raise GroupError("invalidArgument", f"member epoch {req.member_epoch} is not allowed: 0 joins, -1 leaves, "
                         "-2 leaves for now (static members), otherwise the last epoch answered")
    if req.member_epoch == JOIN and req.member_id:
        raise GroupError("invalidArgument", "a join (member epoch 0) names no member id: the coordinator gives one")
    if req.member_epoch != JOIN and not req.member_id:
        raise GroupError("invalidArgument", f"member epoch {req.member_epoch} needs the member id the join answered")
    if req.member_epoch != JOIN and not req.topics and req.member_epoch > 0:
        raise GroupError("invalidArgument", "a member subscribes to at least one topic")
    if req.member_epoch == JOIN and not req.topics:
        raise GroupError("invalidArgument", "a member subscribes to at least one topic")


# ---------------------------------------------------------------- events


def heartbeat(g: Group, req: HeartbeatIn, now_ms: int, new_member_id: str) -> HeartbeatOut:
    """A join (``member_epoch`` 0) or a heartbeat of a member; raises GroupError when refused."""
    check_heartbeat(req)
    changed = False
    if req.member_epoch == JOIN:
        m, changed = _join(g, req, now_ms, new_member_id)
    else:
        m = g.members.get(req.member_id)
        if m is None:
            raise gone(g, req.member_id, req.instance_id)
        if req.member_epoch > m.epoch:
            raise GroupError("staleMember", f"member {req.member_id} of group {g.name} sent epoch "
                             f"{req.member_epoch}, newer than its epoch {m.epoch}; rejoin")
        if m.topics != req.topics:
            m.topics = req.topics
            changed |= _retarget(g)
        m.away = False
    m.last_seen_ms = now_ms
    m.deadline_ms = now_ms + m.session_timeout_ms
    m.client = req.client or m.client
    changed |= _reconcile(g, m, req.owned, now_ms)
    changed |= _answered(g, m)
    return HeartbeatOut(m.member_id, m.epoch, g.epoch, m.owned & g.target.get(m.member_id, frozenset()),
                        heartbeat_interval_ms(m.session_timeout_ms), changed)


def gone(g: Group, member_id: str, instance_id: str | None) -> GroupError:
    """The error for a member no longer in the group: ``fencedInstance`` when a newer process
    took over its ``group_instance_id`` (it must stop, not rejoin and take it back), else
    ``staleMember`` (rejoin)."""
    if instance_id is not None and any(o.instance_id == instance_id for o in g.members.values()):
        return GroupError("fencedInstance", f"member {member_id} of group {g.name} was replaced by a newer process "
                          f"with group_instance_id {instance_id}; this one stops")
    return GroupError("staleMember", f"member {member_id} is not in group {g.name}: it left, or was removed after "
                      "missing heartbeats for its session timeout or holding revoked partitions past its rebalance "
                      "timeout; rejoin")


def answer(g: Group, member_id: str) -> frozenset[TopicPartition] | None:
    """What a member would be answered now (None when it is no longer in the group): a held
    heartbeat compares it with what the member reported."""
    m = g.members.get(member_id)
    if m is None:
        return None
    return m.owned & g.target.get(member_id, frozenset())


def _answered(g: Group, m: Member) -> bool:
    """The member is answered a new assignment: it moves to the group's epoch (persisted, so
    that a new coordinator never knows the member by an older epoch than it was told)."""
    now = m.owned & g.target.get(m.member_id, frozenset())
    if now == m.answered:
        return False
    m.answered = now
    if m.epoch != g.epoch:
        m.epoch = g.epoch
    return True


def regrant(g: Group, member_id: str, now_ms: int) -> bool:
    """Give a waiting member the partitions of its target that became free (a held heartbeat
    woken by another member's change); whether the group changed."""
    m = g.members.get(member_id)
    if m is None:
        return False
    changed = _reconcile(g, m, m.owned, now_ms)
    return _answered(g, m) or changed


def leave(g: Group, member_id: str, member_epoch: int, now_ms: int) -> bool:
    """A member leaving (-1: at once; -2: a static member going away for its session). Whether
    the group changed; an unknown member is refused with staleMember."""
    m = g.members.get(member_id)
    if m is None:
        raise GroupError("staleMember", f"member {member_id} is not in group {g.name}")
    if member_epoch == LEAVE_FOR_NOW and m.instance_id is not None:
        m.away = True
        m.deadline_ms = now_ms + m.session_timeout_ms
        return False
    _remove(g, member_id)
    return True


def expire(g: Group, now_ms: int) -> list[tuple[str, str]]:
    """Remove members past their session or rebalance deadline: [(member id, why)]."""
    gone: list[tuple[str, str]] = []
    for m in list(g.members.values()):
        if now_ms > m.deadline_ms:
            gone.append((m.member_id, f"no heartbeat for {m.session_timeout_ms} ms (session timeout)"))
        elif m.revoke_deadline_ms is not None and now_ms > m.revoke_deadline_ms:
            gone.append((m.member_id, f"did not hand back revoked partitions within {m.rebalance_timeout_ms} ms "
                                      "(rebalance timeout)"))
    for member_id, _why in gone:
        _remove(g, member_id)
    return gone


def set_partitions(g: Group, partitions: Mapping[str, int]) -> bool:
    """The partition counts of the topics the group subscribes to (from the metadata); whether
    the group changed."""
    counts = {t: int(partitions.get(t, 0)) for t in g.subscribed_topics()}
    if counts == g.partitions:
        return False
    g.partitions = counts
    return _retarget(g)


def check_commit(g: Group, member_id: str, member_epoch: int, tps: Iterable[TopicPartition]) -> None:
    """Refuse a commit (GroupError) unless the member owns every partition it commits; a commit
    without a member only while the group has none."""
    if not member_id:
        if g.members:
            raise GroupError("inUse", f"group {g.name} has {len(g.members)} active member(s): only they may commit "
                             "(stop them to reset the group's offsets)")
        return
    m = g.members.get(member_id)
    if m is None:
        raise GroupError("staleMember", f"member {member_id} is not in group {g.name} (removed or left): its "
                         "commit is refused")
    if member_epoch < 1:
        raise GroupError("invalidArgument", f"member {member_id} of group {g.name} committed with epoch "
                         f"{member_epoch}: a member commits with the epoch its last heartbeat answered (1 or more)")
    if member_epoch > m.epoch:
        raise GroupError("staleMember", f"member {member_id} of group {g.name} committed with epoch "
                         f"{member_epoch}, newer than its epoch {m.epoch}")
    for tp in tps:
        if tp not in m.owned:
            raise GroupError("staleMember", f"partition {tp} is not assigned to member {member_id} of group "
                             f"{g.name}: its commit is refused")


# ---------------------------------------------------------------- persistence


def snapshot(g: Group) -> dict[str, Any]:
    return {
        "epoch": g.epoch,
        "assignor": g.assignor,
        "members": [{
            "id": m.member_id, "instance": m.instance_id, "topics": sorted(m.topics),
            "session_timeout_ms": m.session_timeout_ms, "rebalance_timeout_ms": m.rebalance_timeout_ms,
            "epoch": m.epoch, "owned": sorted([tp.topic, tp.partition] for tp in m.owned),
            "target": sorted([tp.topic, tp.partition] for tp in g.target.get(m.member_id, frozenset())),
            "answered": sorted([tp.topic, tp.partition] for tp in m.answered or ()),
            "client": m.client,
        } for m in sorted(g.members.values(), key=lambda m: m.member_id)],
    }


def restore(name: str, snap: Mapping[str, Any], now_ms: int) -> Group:
    """A group from its snapshot, as a new coordinator takes over: every member gets a whole
    session from now to heartbeat to it."""
    g = Group(name, epoch=int(snap.get("epoch", 0)), assignor=str(snap.get("assignor", DEFAULT_ASSIGNOR)))
    for d in snap.get("members", []):
        m = Member(str(d["id"]), d.get("instance"), frozenset(d.get("topics", [])),
                   int(d["session_timeout_ms"]), int(d["rebalance_timeout_ms"]), str(d.get("client", "")),
                   int(d.get("epoch", 0)), frozenset(TopicPartition(t, int(p)) for t, p in d.get("owned", [])),
                   now_ms + int(d["session_timeout_ms"]))
        m.answered = frozenset(TopicPartition(t, int(p)) for t, p in d.get("answered", []))
        g.members[m.member_id] = m
        g.target[m.member_id] = frozenset(TopicPartition(t, int(p)) for t, p in d.get("target", []))
    return g


# ---------------------------------------------------------------- inside


def _join(g: Group, req: HeartbeatIn, now_ms: int, new_member_id: str) -> tuple[Member, bool]:
    if req.instance_id is not None:
        for old in list(g.members.values()):
            if old.instance_id == req.instance_id:
                # A static member back (a restart): it takes over its entry and its partitions,
                # under a new id, so the old process's calls are refused from now on.
                del g.members[old.member_id]
                m = Member(new_member_id, req.instance_id, req.topics, req.session_timeout_ms,
                           req.rebalance_timeout_ms, req.client, old.epoch, old.owned)
                g.members[new_member_id] = m
                g.target[new_member_id] = g.target.pop(old.member_id, frozenset())
                if m.topics != old.topics:
                    _retarget(g)
                return m, True
    if len(g.members) >= L.GROUP_MEMBERS_MAX:
        raise GroupError("limitExceeded", f"group {g.name} has {len(g.members)} members, the most a group may have")
    if not g.members:
        g.assignor = req.assignor  # the first member chooses; the rest follow it
    m = Member(new_member_id, req.instance_id, req.topics, req.session_timeout_ms, req.rebalance_timeout_ms,
               req.client)
    g.members[new_member_id] = m
    g.epoch += 1  # a member joined: a new generation, whether or not the target moves
    _retarget(g)
    m.epoch = g.epoch  # >= 1: epoch 0 means a join
    return m, True


def _remove(g: Group, member_id: str) -> None:
    del g.members[member_id]
    g.target.pop(member_id, None)
    g.epoch += 1  # a member left: a new generation
    _retarget(g)


def _retarget(g: Group) -> bool:
    """Recompute the target assignment; the epoch grows when it changed. Always True: the
    members or their subscriptions changed, which is persisted."""
    subs = [Subscription(m.member_id, m.topics, m.instance_id) for m in g.members.values()]
    counts = {t: g.partitions.get(t, 0) for t in g.subscribed_topics()}
    new = assign(g.assignor, subs, counts, g.target) if subs else {}
    if new != g.target:
        g.target = new
        g.epoch += 1
    return True


def _reconcile(g: Group, m: Member, reported: frozenset[TopicPartition], now_ms: int) -> bool:
    """Take what the member handed back, give it what its target has free; whether ``owned``
    changed."""
    before = m.owned
    m.owned = m.owned & reported  # what it no longer reports it handed back
    target = g.target.get(m.member_id, frozenset())
    taken = {tp for other in g.members.values() if other is not m for tp in other.owned}
    if g.unsafe_assign:
        taken = set()
    m.owned = m.owned | frozenset(tp for tp in target if tp not in taken)
    if m.owned - target:
        if m.revoke_deadline_ms is None:
            m.revoke_deadline_ms = now_ms + m.rebalance_timeout_ms
    else:
        m.revoke_deadline_ms = None
    return m.owned != before
