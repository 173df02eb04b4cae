"""The group coordinator: the SPU leading a partition of ``_consumer_offsets`` coordinates the
groups that hash to it (docs/consumers.md).

Per led offsets partition, an :class:`OffsetsPartition` holds its groups (core/groups/state.py)
and their committed offsets, read back from the partition's log when the SPU takes over
(``coordinatorLoading`` until every record it read is committed), and written to it as records
(core/groups/records.py) appended to the local leader log and answered once the high watermark
passed them: a commit, or a partition changing hands, survives the coordinator's death exactly
as an acks=all produce does. Writes that arrive together share one batch (one append, one
fsync, one replication round). When the SPU stops leading the partition, its groups are
dropped here and their members are told ``notCoordinator``; the new leader reads them back.

Every change of a group's members or of who owns what is persisted before an answer relies on
it: a new coordinator knows who owns what, so a partition never has two owners, even across a
failover. Heartbeat renewals are not persisted: members get a whole session to reach the new
coordinator.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..groups import records as R
from ..groups.names import OFFSETS_TOPIC, TopicPartition, group_partition
from ..groups.records import Committed
from ..groups.state import Group, expire, set_partitions, snapshot, restore
from ..protocol import limits as L
from ..segments import build_batch, decode_records
from ..segments.batch import HEADER_SIZE, iter_batches
from ..segments.errors import StorageError

if TYPE_CHECKING:
    from .replica import Replica
    from .server import SpuServer

log = logging.getLogger("kolk.groups")

UNSAFE_ASSIGN_ENV = "KOLK_TEST_UNSAFE_ASSIGN"  # jepsen's broken build: assign before revoke
TICK_S = 0.1                   # how often members' deadlines and the led partitions are checked
STALL_GRACE_AFTER_MS = 1_000   # a tick this late means the SPU stalled: members get that time back
LOAD_CHUNK_BYTES = 64 << 10    # read and decoded per turn of the loop while loading (~4 ms of JSON records)
WRITE_RECORDS_MAX = 2_000      # records in one appended batch
RECORD_OVERHEAD_BYTES = 32     # a record's framing beside its key and value (varints, attributes), at most
WRITE_TIMEOUT_S = 10.0


def now_ms() -> int:
    return time.monotonic_ns() // 1_000_000


class CoordinatorError(Exception):
    def __init__(self, code: str, message: str, leader: str = "", retriable: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.leader = leader
        self.retriable = retriable


@dataclass
class GroupEntry:
    group: Group
    offsets: dict[TopicPartition, Committed] = field(default_factory=dict)
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    dirty: int = 0        # changes made
    persisted: int = 0    # changes written
    persisting: "asyncio.Future[None] | None" = None
    loaded_snapshot: dict[str, Any] | None = None  # while loading: the newest membership record read
    writing: int = 0      # commits and deletes of this group waiting for their write

    @property
    def idle(self) -> bool:
        """Nothing to remember and nothing on the way: the entry may go."""
        return self.empty and not self.writing and self.persisting is None and self.persisted >= self.dirty

    def notify(self) -> None:
        self.wakeup.set()
        self.wakeup = asyncio.Event()

    @property
    def empty(self) -> bool:
        return not self.group.members and not self.offsets


@dataclass
class _Write:
    records: list[tuple[bytes, bytes | None]]
    done: "asyncio.Future[None]"
    size: int = 0  # bytes in a batch, at most (_records_bytes)


def _records_bytes(records: list[tuple[bytes, bytes | None]]) -> int:
    """The most bytes ``records`` take in a batch (uncompressed)."""
    return sum(len(k) + len(v or b"") + RECORD_OVERHEAD_BYTES for k, v in records)


class OffsetsPartition:
    """The groups of one led partition of ``_consumer_offsets``."""

    def __init__(self, coordinator: "Coordinator", replica: "Replica") -> None:
        self.c = coordinator
        self.replica = replica
        self.epoch = replica.epoch
        self.groups: dict[str, GroupEntry] = {}
        self.ready = False
        self.closed = False
        self._pending: list[_Write] = []
        self._pending_records = 0
        self._writer: asyncio.Task[None] | None = None
        self.loader = asyncio.ensure_future(self._load())

    @property
    def leading(self) -> bool:
        r = self.replica
        return (not self.closed and r.is_leader and not r.fenced and r.failure is None and r.epoch == self.epoch
                and self.c.s.replicas.get(r.name) is r)

    def close(self) -> None:
        self.closed = True
        self.loader.cancel()
        if self._writer is not None:
            self._writer.cancel()
        for w in self._pending:
            if not w.done.done():
                w.done.set_exception(self.c.not_coordinator_error(self.replica.name))
        self._pending.clear()
        for entry in self.groups.values():
            entry.notify()

    # ---------------------------------------------------------------- loading

    async def _load(self) -> None:
        lg = self.replica.log
        offset = lg.log_start_offset
        end = lg.log_end_offset
        count = 0
        try:
            while offset < end and self.leading:
                res = lg.read(offset, LOAD_CHUNK_BYTES, end)
                if not res.data:
                    break
                for pos, _h in iter_batches(res.data, lg.config.batch_bytes_max):
                    for rec in decode_records(res.data, pos):
                        if rec.offset >= offset:
                            self._apply(rec.key, rec.value)
                            count += 1
                offset = max(offset + 1, res.next_offset)
                await asyncio.sleep(0)  # hand the loop back between chunks
            # Serve only what is committed: a record above the high watermark could vanish in
            # another failover, and an offset read from it would then go back.
            while self.leading and lg.high_watermark < end:
                await self.replica.changed.wait()
        except StorageError as e:
            log.error("%s: cannot read the committed offsets: %s", self.replica.name, e)
            self.c.s.disk.on_error(self.replica, e)
            return
        if not self.leading:
            return
        now = now_ms()
        for name, entry in self.groups.items():
            if entry.loaded_snapshot is not None:
                entry.group = restore(name, entry.loaded_snapshot, now)
                entry.group.unsafe_assign = self.c.unsafe_assign
                entry.loaded_snapshot = None
        self.groups = {n: e for n, e in self.groups.items() if not e.empty}
        self.ready = True
        log.info("%s: coordinating %d group(s) after reading %d record(s) to offset %d", self.replica.name,
                 len(self.groups), count, end)

    def _apply(self, key: bytes | None, value: bytes | None) -> None:
        try:
            rec = R.decode(key, value)
        except R.RecordError as e:
            log.warning("%s: skipping a record: %s", self.replica.name, e)
            return
        entry = self.groups.get(rec.group)
        if entry is None:
            entry = self.groups[rec.group] = GroupEntry(Group(rec.group))
        if isinstance(rec, R.OffsetRecord):
            if rec.committed is None:
                entry.offsets.pop(rec.tp, None)
            else:
                entry.offsets[rec.tp] = rec.committed
        else:
            if rec.snapshot is None:
                entry.offsets.clear()
                entry.group = Group(rec.group)
                entry.loaded_snapshot = None
            else:
                entry.loaded_snapshot = rec.snapshot

    # ---------------------------------------------------------------- groups

    def entry(self, name: str, create: bool) -> GroupEntry | None:
        self.check_serving()
        entry = self.groups.get(name)
        if entry is None and create:
            if self.c.group_count() >= L.GROUPS_PER_COORDINATOR_MAX:
                raise CoordinatorError("limitExceeded", f"SPU {self.c.s.config.spu_id} coordinates "
                                       f"{L.GROUPS_PER_COORDINATOR_MAX} groups, the most it may (delete unused "
                                       "groups with `kolk consumer delete`)", retriable=False)
            entry = self.groups[name] = GroupEntry(Group(name, unsafe_assign=self.c.unsafe_assign))
        return entry

    def check_serving(self) -> None:
        if not self.leading:
            raise self.c.not_coordinator_error(self.replica.name)
        if not self.ready:
            raise CoordinatorError("coordinatorLoading", f"SPU {self.c.s.config.spu_id} is reading the committed "
                                   f"offsets of {self.replica.name}; retry shortly", retriable=True)

    async def persist(self, name: str, entry: GroupEntry) -> None:
        """Write the group's membership (once every change so far is in what is written)."""
        while entry.persisted < entry.dirty:
            if entry.persisting is not None:
                if entry.persisting.done():
                    # Its writer has not resumed yet to record it; awaiting a done future does
                    # not yield, so without this the loop spun forever, the writer never ran
                    # again, and the SPU stopped serving (two members joining at once).
                    await asyncio.sleep(0)
                else:
                    await asyncio.shield(entry.persisting)
                continue
            target = entry.dirty
            value = R.group_value(snapshot(entry.group)) if entry.group.members or entry.offsets else None
            fut = asyncio.ensure_future(self.write([(R.group_key(name), value)], f": the membership record of group "
                                                   f"{name}; fewer members, or fewer and shorter topics"))
            entry.persisting = fut
            try:
                await asyncio.shield(fut)
                entry.persisted = max(entry.persisted, target)
            finally:
                entry.persisting = None

    def changed(self, entry: GroupEntry) -> None:
        entry.dirty += 1
        entry.notify()

    # ---------------------------------------------------------------- writing

    def batch_budget(self) -> int:
        """The most record bytes one appended batch of this partition may carry."""
        return self.replica.log.config.batch_bytes_max - HEADER_SIZE

    async def write(self, records: list[tuple[bytes, bytes | None]], hint: str = "") -> None:
        """Append ``records`` and return once the high watermark passed them (acks=all). Records
        that one batch cannot hold are refused (tooLarge, ``hint`` says what to do), never
        retried: they would fail again, and with them every write sharing their batch."""
        self.check_serving()
        size = _records_bytes(records)
        if size > self.batch_budget():
            raise CoordinatorError("tooLarge", f"{len(records)} record(s) of {size} bytes are more than one batch of "
                                   f"{self.replica.name} holds ({self.batch_budget()} bytes)" + hint)
        if self._pending_records + len(records) > L.COMMITS_PENDING_MAX:
            raise CoordinatorError("limitExceeded", f"{self.replica.name}: {self._pending_records} records wait "
                                   "for the coordinator's next write; retry shortly", retriable=True)
        w = _Write(records, asyncio.get_running_loop().create_future(), size)
        self._pending.append(w)
        self._pending_records += len(records)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.ensure_future(self._write_loop())
        await w.done

    async def _write_loop(self) -> None:
        while self._pending and not self.closed:
            await asyncio.sleep(0)  # let the writes of this turn of the loop join the batch
            take: list[_Write] = []
            n = size = 0
            budget = self.batch_budget()
            while self._pending and (not take or (n + len(self._pending[0].records) <= WRITE_RECORDS_MAX
                                                  and size + self._pending[0].size <= budget)):
                w = self._pending.pop(0)
                take.append(w)
                n += len(w.records)
                size += w.size
            self._pending_records -= n
            try:
                if not self.leading:
                    raise self.c.not_coordinator_error(self.replica.name)
                ts = int(time.time() * 1000)
                batch = build_batch([r for w in take for r in w.records], first_timestamp=ts)
                info = self.replica.log.append(batch, leader_epoch=self.epoch)
            except StorageError as e:
                self.c.s.disk.on_error(self.replica, e)
                self._fail(take, CoordinatorError("notCoordinator", f"{self.replica.name}: the write failed: {e}",
                                                  retriable=True))
                continue
            except CoordinatorError as e:
                self._fail(take, e)
                continue
            self.c.s.lifecycle.after_append(self.replica)
            self.replica.wake()
            asyncio.ensure_future(self._acknowledge(take, info.next_offset))

    def _fail(self, take: list[_Write], e: Exception) -> None:
        for w in take:
            if not w.done.done():
                w.done.set_exception(e)

    async def _acknowledge(self, take: list[_Write], next_offset: int) -> None:
        r = self.replica
        try:
            async with asyncio.timeout(WRITE_TIMEOUT_S):
                await self.c.s.committed(r, next_offset)
                while r.log.high_watermark < next_offset:
                    if not self.leading:
                        raise CoordinatorError("notCoordinator", f"{r.name}: leadership moved from SPU "
                                               f"{self.c.s.config.spu_id} before the write was committed; it may or "
                                               "may not survive", self.c.s.spu_address(r.leader), True)
                    await r.changed.wait()
        except TimeoutError:
            self._fail(take, CoordinatorError("timeout", f"{r.name}: not committed by the in-sync set "
                                              f"{r.effective_isr()} within {WRITE_TIMEOUT_S} s", retriable=True))
            return
        except StorageError as e:
            self.c.s.disk.on_error(r, e)
            self._fail(take, CoordinatorError("notCoordinator", f"{r.name}: {e}", retriable=True))
            return
        except CoordinatorError as e:
            self._fail(take, e)
            return
        for w in take:
            if not w.done.done():
                w.done.set_result(None)

    # ---------------------------------------------------------------- time

    def forgive(self, stalled_ms: int) -> None:
        """This SPU did not run for ``stalled_ms`` (frozen, swapped out, a long pause): the
        members' heartbeats of that time wait unread in the sockets. Their deadlines move on by
        the stall, so they are not removed for this SPU's silence."""
        for entry in self.groups.values():
            for m in entry.group.members.values():
                m.deadline_ms += stalled_ms
                if m.revoke_deadline_ms is not None:
                    m.revoke_deadline_ms += stalled_ms
        log.info("%s: this SPU stalled for %d ms; members' deadlines moved on as much", self.replica.name, stalled_ms)

    def tick(self, now: int) -> None:
        if not self.ready:
            return
        for name, entry in list(self.groups.items()):
            g = entry.group
            if not g.members:
                if entry.idle:
                    del self.groups[name]  # nothing left to remember (its tombstone is written)
                continue
            changed = set_partitions(g, self.c.partition_counts(g.subscribed_topics()))
            for member_id, why in expire(g, now):
                log.info("group %s: member %s removed: %s", name, member_id, why)
                changed = True
            if changed:
                self.changed(entry)
                task = asyncio.ensure_future(self.persist(name, entry))
                task.add_done_callback(_log_failure)


def _log_failure(task: "asyncio.Task[Any]") -> None:
    if not task.cancelled() and task.exception() is not None:
        log.info("a group's membership was not persisted: %s", task.exception())


class Coordinator:
    """Every offsets partition this SPU leads."""

    def __init__(self, server: "SpuServer") -> None:
        self.s = server
        self.parts: dict[str, OffsetsPartition] = {}
        self.unsafe_assign = os.environ.get(UNSAFE_ASSIGN_ENV) == "1"
        if self.unsafe_assign:
            log.warning("%s=1: partitions are assigned before they are revoked (a broken build for tests)",
                        UNSAFE_ASSIGN_ENV)

    def start(self) -> "asyncio.Task[None]":
        return asyncio.ensure_future(self._loop())

    def stop(self) -> None:
        for part in self.parts.values():
            part.close()
        self.parts.clear()

    async def _loop(self) -> None:
        last = now_ms()
        while True:
            await asyncio.sleep(TICK_S)  # a period: deadlines and leadership are checked this often
            try:
                self._follow_leadership()
                now = now_ms()
                stalled = now - last - int(TICK_S * 1000)
                last = now
                for part in list(self.parts.values()):
                    if stalled > STALL_GRACE_AFTER_MS:
                        part.forgive(stalled)
                    part.tick(now)
            except Exception:  # noqa: BLE001 - a bug here must not stop the coordinator for good
                log.exception("group coordinator tick failed")

    def _follow_leadership(self) -> None:
        for name, part in list(self.parts.items()):
            if not part.leading:
                part.close()
                del self.parts[name]
                log.info("%s: no longer coordinating its groups here", name)
        prefix = OFFSETS_TOPIC + "-"
        for name, r in self.s.replicas.items():
            if name.startswith(prefix) and name not in self.parts and r.is_leader and not r.fenced \
                    and r.failure is None:
                self.parts[name] = OffsetsPartition(self, r)

    # ---------------------------------------------------------------- lookups

    def offsets_partitions(self) -> int:
        topic = self.s.topics.get(OFFSETS_TOPIC)
        return int(topic["spec"]["partitions"]) if topic else 0

    def partition_of(self, group: str) -> OffsetsPartition:
        """The led offsets partition coordinating ``group``, or CoordinatorError."""
        count = self.offsets_partitions()
        if not count:
            raise CoordinatorError("notCoordinator", f"{OFFSETS_TOPIC} does not exist yet (the SC creates it when a "
                                   "client first needs a coordinator); retry shortly", retriable=True)
        name = f"{OFFSETS_TOPIC}-{group_partition(group, count)}"
        part = self.parts.get(name)
        if part is None:
            self._follow_leadership()
            part = self.parts.get(name)
        if part is None:
            raise self.not_coordinator_error(name, group)
        part.check_serving()
        return part

    def not_coordinator_error(self, partition: str, group: str | None = None) -> CoordinatorError:
        meta = self.s.partitions.get(partition)
        leader = meta["status"].get("leader") if meta else None
        whose = f"group {group}" if group else f"the groups of {partition}"
        return CoordinatorError("notCoordinator", f"SPU {self.s.config.spu_id} does not coordinate {whose}: SPU "
                                f"{leader} leads {partition}", self.s.spu_address(leader), True)

    def partition_counts(self, topics: set[str]) -> dict[str, int]:
        out = {}
        for t in topics:
            obj = self.s.topics.get(t)
            out[t] = int(obj["spec"]["partitions"]) if obj else 0
        return out

    def group_count(self) -> int:
        return sum(len(p.groups) for p in self.parts.values())

    def groups(self) -> list[tuple[OffsetsPartition, str, GroupEntry]]:
        return [(p, n, e) for p in self.parts.values() if p.ready and p.leading for n, e in p.groups.items()]
