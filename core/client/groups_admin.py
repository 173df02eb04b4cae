"""Consumer groups for operators: list, describe with lag, reset offsets, delete
(``kolk consumer``; docs/consumers.md "Operations").

The admin client (core/client/admin.py) talks to SCs only; groups live on SPUs (each group's
coordinator is the leader of its partition of ``_consumer_offsets``), so these calls take an
:class:`~kolk.client.client.AsyncClient` and reach coordinators through
core/client/coordinator.py. The client exposes them as ``group_list``, ``group_describe``,
``group_reset`` and ``group_delete``.

The arithmetic is pure and separate from the calls: :func:`lag_rows` (what ``describe`` shows
per partition) and :func:`plan_rows` (what a reset would commit). Decisions:

- Lag = the partition's high watermark (the end a consumer can read) - the committed offset,
  never below 0. A partition of a topic the group subscribes to or has committed for, without a
  commit, shows committed ``None`` ("-") and lag = high watermark - log start: everything
  readable is unread.
- A reset names one topic, all its partitions or one (``partition``). It never clamps: an
  offset below the log start or past the high watermark is refused with the partition, the
  offset and the range. Except ``shift``, which moves each committed offset by N and clamps the
  result into [log start, high watermark] like Kafka's ``--shift-by``; the plan says so per
  partition. A partition without a commit cannot be shifted (there is nothing to shift from).
- ``timestamp``: the first offset whose record's timestamp is at or after the time, at most the
  high watermark; when no record is that recent, the high watermark.
- A reset commits as "no member" (member id ""), which the coordinator accepts only while the
  group has no members (``inUse`` otherwise). The plan is checked against the group's members
  first so the refusal is one line before any offset is read; a dry run shows the plan even
  while members are active, and says the reset itself would be refused.
- Deleting a group with members is refused (``inUse``); its committed offsets go with it.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from ..groups.names import OFFSETS_TOPIC, GroupNameError, TopicPartition, check_group
from ..protocol import limits as L
from ..protocol.errors import (InUseError, InvalidRequestError, KolkError, NotFoundError, OffsetOutOfRangeError)
from ..protocol.offset_range import out_of_range_message
from . import coordinator

if TYPE_CHECKING:
    from .client import AsyncClient

RESET_KINDS = ("earliest", "latest", "offset", "timestamp", "shift")
# The CLI flag of each reset kind: errors and plans name what the user typed.
RESET_FLAGS = {"earliest": "--to-earliest", "latest": "--to-latest", "offset": "--to-offset",
               "timestamp": "--to-timestamp", "shift": "--shift"}
OFFSET_MAX = 2**63 - 1
OFFSETS_IN_FLIGHT_MAX = 32  # partitions whose offsets one describe or reset asks their leaders for at once
GROUP_CALL_DEADLINE_S = coordinator.GROUP_CALL_DEADLINE_S


def checked_group(group: Any) -> str:
    """The group name, or InvalidRequestError naming what is wrong with it (nothing sent)."""
    try:
        return check_group(group)
    except GroupNameError as e:
        raise InvalidRequestError(str(e)) from None


# ---------------------------------------------------------------- pure: lag


@dataclass(frozen=True)
class PartitionRange:
    """What a partition holds now, as its leader answered."""

    log_start: int
    high_watermark: int


@dataclass(frozen=True)
class PartitionLag:
    """One partition in ``describe``: who is assigned it, its committed offset (None: no commit),
    its high watermark (``log_end``; None when its leader could not say) and the lag."""

    topic: str
    partition: int
    member_id: str | None
    client: str | None
    committed: int | None
    log_start: int | None
    log_end: int | None
    lag: int | None
    error: str | None = None


@dataclass(frozen=True)
class GroupDescription:
    group: str
    state: str
    epoch: int
    assignor: str
    coordinator: int | None
    members: tuple[dict[str, Any], ...]
    partitions: tuple[PartitionLag, ...]

    @property
    def total_lag(self) -> int:
        """The lag summed over the partitions whose lag is known."""
        return sum(p.lag for p in self.partitions if p.lag is not None)

    @property
    def lag_unknown(self) -> int:
        """Partitions left out of :attr:`total_lag` (their leader could not be asked)."""
        return sum(1 for p in self.partitions if p.lag is None)

    def to_dict(self) -> dict[str, Any]:
        return {"group": self.group, "state": self.state, "epoch": self.epoch, "assignor": self.assignor,
                "coordinator": self.coordinator, "members": list(self.members),
                "partitions": [asdict(p) for p in self.partitions], "total_lag": self.total_lag,
                "lag_unknown": self.lag_unknown}


def group_topics(described: Mapping[str, Any]) -> list[str]:
    """The topics ``describe`` covers: every member's subscription and assignment, and every
    topic with a committed offset."""
    topics: set[str] = set()
    for m in described.get("members", []):
        topics.update(m.get("topics", []))
        topics.update(t for t, _p in m.get("assignment", []))
    topics.update(o["topic"] for o in described.get("offsets", []))
    return sorted(topics)


def lag_rows(described: Mapping[str, Any], partitions: Mapping[str, int | str],
             ranges: Mapping[TopicPartition, PartitionRange | str]) -> list[PartitionLag]:
    """Per partition of the group's topics: owner, committed offset, high watermark and lag.

    ``described`` is the coordinator's describeGroup answer; ``partitions`` the partition count
    of each topic (or why it is not known: a deleted topic); ``ranges`` each partition's range
    (or why its leader did not answer)."""
    owner: dict[TopicPartition, tuple[str, str]] = {}
    for m in described.get("members", []):
        for t, p in m.get("assignment", []):
            owner[TopicPartition(t, int(p))] = (m.get("member_id", ""), m.get("client", ""))
    committed = {TopicPartition(o["topic"], int(o["partition"])): int(o["offset"])
                 for o in described.get("offsets", [])}
    tps: set[TopicPartition] = set(committed) | set(owner)
    for topic, count in partitions.items():
        if isinstance(count, int):
            tps.update(TopicPartition(topic, p) for p in range(count))
    rows = []
    for tp in sorted(tps):
        member, client = owner.get(tp, (None, None))
        done = committed.get(tp)
        known = ranges.get(tp)
        count = partitions.get(tp.topic)
        if isinstance(count, str):
            known = count
        if not isinstance(known, PartitionRange):
            rows.append(PartitionLag(tp.topic, tp.partition, member, client, done, None, None, None,
                                     known or "not asked"))
            continue
        lag = known.high_watermark - (known.log_start if done is None else done)
        rows.append(PartitionLag(tp.topic, tp.partition, member, client, done, known.log_start,
                                 known.high_watermark, max(0, lag)))
    return rows


# ---------------------------------------------------------------- pure: reset plans


@dataclass(frozen=True)
class ResetTarget:
    """Where a reset moves each partition: ``earliest`` (its log start), ``latest`` (its high
    watermark), ``offset`` N, ``timestamp`` MS (milliseconds since the epoch) or ``shift`` N
    (the committed offset plus N, N may be negative)."""

    kind: str
    value: int = 0

    def __post_init__(self) -> None:
        if self.kind not in RESET_KINDS:
            raise InvalidRequestError(f"reset: {self.kind!r} is not a reset kind (one of {', '.join(RESET_KINDS)})")
        if isinstance(self.value, bool) or not isinstance(self.value, int):
            raise InvalidRequestError(f"reset: {RESET_FLAGS[self.kind]} takes a whole number, got "
                                      f"{type(self.value).__name__}")
        if self.kind in ("offset", "timestamp") and not 0 <= self.value <= OFFSET_MAX:
            what = "an offset" if self.kind == "offset" else "milliseconds since the epoch"
            raise InvalidRequestError(f"reset: {RESET_FLAGS[self.kind]} {self.value} is out of range: {what}, "
                                      f"0 to {OFFSET_MAX}")
        if self.kind == "shift" and not -OFFSET_MAX <= self.value <= OFFSET_MAX:
            raise InvalidRequestError(f"reset: --shift {self.value} is out of range: {-OFFSET_MAX} to {OFFSET_MAX}")

    def flag(self) -> str:
        return RESET_FLAGS[self.kind] + ("" if self.kind in ("earliest", "latest") else f" {self.value}")


@dataclass(frozen=True)
class PlannedReset:
    """One partition of a reset plan: its committed offset now (None: none), the new one, the
    range it was checked against, and a note (a --shift that was clamped)."""

    topic: str
    partition: int
    current: int | None
    new: int
    log_start: int
    high_watermark: int
    note: str = ""


@dataclass(frozen=True)
class ResetPlan:
    group: str
    topic: str
    target: ResetTarget
    rows: tuple[PlannedReset, ...]
    active_members: int  # members of the group when planned (a reset is refused unless 0)
    applied: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"group": self.group, "topic": self.topic, "target": self.target.flag(),
                "partitions": [asdict(r) for r in self.rows], "active_members": self.active_members,
                "applied": self.applied}


def plan_rows(target: ResetTarget, topic: str, ranges: Mapping[int, PartitionRange],
              committed: Mapping[int, int], found: Mapping[int, int] | None = None) -> list[PlannedReset]:
    """The new committed offset of each partition in ``ranges``. ``found``: for ``timestamp``,
    the offset the partition's leader found for the time. Raises OffsetOutOfRangeError (an
    offset the partition does not hold) or InvalidRequestError (a shift without a commit), one
    line naming the partition."""
    rows = []
    for p in sorted(ranges):
        r = ranges[p]
        name = f"{topic}-{p}"
        current = committed.get(p)
        note = ""
        if target.kind == "earliest":
            new = r.log_start
        elif target.kind == "latest":
            new = r.high_watermark
        elif target.kind == "offset":
            new = target.value
        elif target.kind == "timestamp":
            new = min((found or {}).get(p, r.high_watermark), r.high_watermark)
        else:
            if current is None:
                raise InvalidRequestError(f"partition {name} has no committed offset to shift from; reset it with "
                                          "--to-earliest, --to-latest or --to-offset first")
            wanted = current + target.value
            new = min(max(wanted, r.log_start), r.high_watermark)
            if new != wanted:
                note = f"clamped: {current}{target.value:+d} = {wanted} is outside {r.log_start}-{r.high_watermark}"
        if not r.log_start <= new <= r.high_watermark:
            e = OffsetOutOfRangeError(f"reset {target.flag()}: {out_of_range_message(name, new, r.log_start, r.high_watermark)}")
            e.offset, e.log_start_offset, e.log_end_offset = new, r.log_start, r.high_watermark
            raise e
        rows.append(PlannedReset(topic, p, current, new, r.log_start, r.high_watermark, note))
    return rows


# ---------------------------------------------------------------- calls


async def list_groups(client: "AsyncClient", *, deadline_s: float = GROUP_CALL_DEADLINE_S) -> list[dict[str, Any]]:
    """Every group: {"group", "state", "members", "coordinator"}, sorted by name, merged from
    every SPU leading a partition of ``_consumer_offsets``. No groups when the offsets topic
    does not exist (no SPU has registered yet)."""
    if await client.admin.get_object("topic", OFFSETS_TOPIC, stale=True) is None:
        return []
    return await coordinator.list_groups(client, deadline_s=deadline_s)


async def _describe_raw(client: "AsyncClient", group: str, deadline_s: float) -> dict[str, Any]:
    r = await coordinator.group_call(client, group, "describeGroup", {"group": group}, deadline_s=deadline_s)
    try:
        described = json.loads(r.groupJson)
    except ValueError as e:
        raise KolkError(f"group {group}: the coordinator's description is not JSON: {e}") from None
    if not isinstance(described, dict):
        raise KolkError(f"group {group}: the coordinator described it as {type(described).__name__}, not an object")
    return described


async def _partition_count(client: "AsyncClient", topic: str) -> int | str:
    try:
        return len(await client.partitions(topic))
    except NotFoundError as e:
        return str(e)


async def _ranges(client: "AsyncClient", tps: Sequence[TopicPartition]) -> dict[TopicPartition, PartitionRange | str]:
    """Each partition's log start and high watermark from its leader, at most
    OFFSETS_IN_FLIGHT_MAX at a time; why, for a partition whose leader did not answer."""
    gate = asyncio.Semaphore(OFFSETS_IN_FLIGHT_MAX)

    async def one(tp: TopicPartition) -> PartitionRange | str:
        async with gate:
            try:
                start, hw, _leo = await client.offsets(tp.topic, tp.partition)
            except KolkError as e:
                return str(e).splitlines()[0] if str(e) else type(e).__name__
            return PartitionRange(start, hw)
    answers = await asyncio.gather(*(one(tp) for tp in tps))
    return dict(zip(tps, answers))


async def describe_group(client: "AsyncClient", group: str, *,
                         deadline_s: float = GROUP_CALL_DEADLINE_S) -> GroupDescription:
    """The group's state, members and, per partition of its topics, the committed offset, the
    high watermark and the lag. NotFoundError for a group with no members and no commits."""
    group = checked_group(group)
    d = await _describe_raw(client, group, deadline_s)
    topics = group_topics(d)
    counts = dict(zip(topics, await asyncio.gather(*(_partition_count(client, t) for t in topics))))
    tps = sorted({TopicPartition(t, p) for t, n in counts.items() if isinstance(n, int) for p in range(n)}
                 | {TopicPartition(o["topic"], int(o["partition"])) for o in d.get("offsets", [])
                    if isinstance(counts.get(o["topic"]), int) and int(o["partition"]) < counts[o["topic"]]})
    rows = lag_rows(d, counts, await _ranges(client, tps))
    coord = d.get("coordinator")
    return GroupDescription(group, str(d.get("state", "?")), int(d.get("epoch", 0)), str(d.get("assignor", "")),
                            coord if isinstance(coord, int) else None, tuple(d.get("members", [])), tuple(rows))


async def _members(client: "AsyncClient", group: str, deadline_s: float) -> int:
    """How many members the group has now (0 for a group the coordinator does not know)."""
    try:
        d = await _describe_raw(client, group, deadline_s)
    except NotFoundError:
        return 0
    return len(d.get("members", []))


def _in_use(group: str, n: int, what: str) -> InUseError:
    return InUseError(f"group {group} has {n} active member(s): {what} only while it has none (stop its consumers "
                      "first)")


async def plan_reset(client: "AsyncClient", group: str, topic: str, target: ResetTarget,
                     partition: int | None = None, *, deadline_s: float = GROUP_CALL_DEADLINE_S) -> ResetPlan:
    """What :func:`reset_offsets` would commit, without committing. Refused, one line: a bad
    group name, an unknown topic or partition, an offset the partition does not hold."""
    group = checked_group(group)
    if not isinstance(target, ResetTarget):
        raise InvalidRequestError(f"reset: the target must be a ResetTarget, got {type(target).__name__}")
    count = len(await client.partitions(topic))  # NotFoundError: "topic T does not exist"
    if partition is not None and (isinstance(partition, bool) or not isinstance(partition, int)
                                  or not 0 <= partition < count):
        raise InvalidRequestError(f"topic {topic} has partitions 0-{count - 1}, not {partition}")
    chosen = list(range(count)) if partition is None else [partition]
    active = await _members(client, group, deadline_s)
    # The whole topic (an empty partition list): a topic may have more partitions than one
    # request may name.
    r = await coordinator.group_call(client, group, "offsetFetch",
                                     {"group": group, "topics": [{"topic": topic, "partitions": []}]},
                                     deadline_s=deadline_s)
    wanted = set(chosen)
    committed = {int(o.partition): int(o.offset) for o in r.offsets if o.topic == topic and o.partition in wanted}
    got = await _ranges(client, [TopicPartition(topic, p) for p in chosen])
    ranges: dict[int, PartitionRange] = {}
    for tp, known in got.items():
        if not isinstance(known, PartitionRange):
            raise KolkError(f"reset: the range of partition {tp} is not known: {known}")
        ranges[tp.partition] = known
    found: dict[int, int] = {}
    if target.kind == "timestamp":
        gate = asyncio.Semaphore(OFFSETS_IN_FLIGHT_MAX)

        async def lookup(p: int) -> int:
            async with gate:
                return await client.offset_for_timestamp(topic, p, target.value)
        found = dict(zip(chosen, await asyncio.gather(*(lookup(p) for p in chosen))))
    return ResetPlan(group, topic, target, tuple(plan_rows(target, topic, ranges, committed, found)), active)


async def reset_offsets(client: "AsyncClient", group: str, topic: str, target: ResetTarget,
                        partition: int | None = None, *, dry_run: bool = False,
                        deadline_s: float = GROUP_CALL_DEADLINE_S) -> ResetPlan:
    """Commit the plan of :func:`plan_reset` (``dry_run``: only return it). Only while the group
    has no members: InUseError otherwise, before and (should a consumer join meanwhile) from the
    coordinator."""
    plan = await plan_reset(client, group, topic, target, partition, deadline_s=deadline_s)
    if dry_run:
        return plan
    if plan.active_members:
        raise _in_use(plan.group, plan.active_members, "its offsets can be reset")
    offsets = [{"topic": row.topic, "partition": row.partition, "offset": row.new, "metadata": "reset"}
               for row in plan.rows]
    for i in range(0, len(offsets), L.COMMIT_OFFSETS_MAX):
        await coordinator.group_call(client, plan.group, "offsetCommit",
                                     {"group": plan.group, "memberId": "", "memberEpoch": 0,
                                      "offsets": offsets[i:i + L.COMMIT_OFFSETS_MAX]}, deadline_s=deadline_s)
    return ResetPlan(plan.group, plan.topic, plan.target, plan.rows, 0, applied=True)


async def delete_group(client: "AsyncClient", group: str, *, deadline_s: float = GROUP_CALL_DEADLINE_S) -> None:
    """Delete a group and its committed offsets. NotFoundError for an unknown group; InUseError
    while it has members."""
    group = checked_group(group)
    active = await _members(client, group, deadline_s)
    if active:
        raise _in_use(group, active, "it can be deleted")
    await coordinator.group_call(client, group, "deleteGroup", {"group": group}, deadline_s=deadline_s)
