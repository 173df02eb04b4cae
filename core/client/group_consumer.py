"""The group consumer: partitions assigned by the group's coordinator, positions committed to
it (docs/consumers.md). The membership (heartbeats) is core/client/group_membership.py; the
partition streams and record decoding are the plain consumer's (core/client/consumer.py)."""

from __future__ import annotations

import asyncio
import collections
import inspect
import logging
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, Mapping

from ..groups.names import DEFAULT_ASSIGNOR, TopicPartition
from ..protocol import limits as L
from ..protocol.errors import InvalidRequestError, KolkError, StaleMemberError
from .consumer import ConsumerRecord, Offset, _PartitionStream, normalize_chain
from .coordinator import group_call
from .group_core import AssignmentChange, Positions, check_options, start_offset, to_commit
from .group_membership import Membership, wire_partitions

if TYPE_CHECKING:
    from .client import AsyncClient

log = logging.getLogger("kolk.groups")

CLOSE_DEADLINE_S = 5.0  # close() commits, leaves and stops within this, even with the cluster gone
COMMIT_DEADLINE_S = 10.0  # one commit, retries included
CHANGES_QUEUE_MAX = 1000  # assignment changes kept for assignment_changes(); the oldest go first
RECONCILE_RETRY_S = 0.5  # a partition that could not be started (no leader yet) is tried again after this


class AsyncGroupConsumer:
    """Reads ``topic`` as a member of consumer group ``group``::

        c = client.consumer("orders", group="billing", start=Offset.beginning())
        async for rec in c:           # ConsumerRecord: .partition, .offset, .key, .value ...
            handle(rec)
        await c.close()               # commits (auto_commit), leaves the group

    Options: ``start`` (``Offset.beginning()``, the default, or ``Offset.end()``: where a
    partition with no committed offset, or a committed offset outside what the partition holds
    now, starts), ``auto_commit`` (True) and ``auto_commit_interval_ms`` (5000),
    ``session_timeout_ms`` (10000; 1000-600000), ``rebalance_timeout_ms`` (60000),
    ``group_instance_id`` (static membership: a restart within the session timeout gets the same
    partitions back), ``assignor`` ("sticky", "range", "roundrobin"), ``on_assigned``,
    ``on_revoked``, ``on_lost`` (callables ``(frozenset[TopicPartition], generation)``, plain or
    async, run on the consumer's event loop at a poll boundary), ``isolation``, ``window_bytes``,
    ``smartmodules`` (as the plain consumer), ``stop_at_end`` (end once every assigned partition
    is read to its high watermark as of its assignment).

    Semantics (at-least-once): a partition's *position* is the offset after the last record
    handed to the application (records of ``poll``'s list, of a ``batches()`` list, or yielded
    one by one). Commits - automatic every interval, on revocation, on close, and ``commit()`` -
    commit the positions that moved since the last successful commit. Assignment changes and
    automatic commits happen only at a poll boundary (inside ``poll``, or when the iterator is
    asked for more), so the application has finished what it was handed; a change that arrives
    while ``poll`` waits wakes it. The record iterator reaches a boundary between pushes (at
    most ``window_bytes`` of records). On revocation the consumer stops the partitions' streams,
    commits their positions (with ``auto_commit``; without it the application commits, in
    ``on_revoked`` at the latest), calls ``on_revoked`` and only then tells the coordinator, which gives
    them to another member after that. On assignment it reads the partitions' committed offsets,
    starts there, then calls ``on_assigned``. When the coordinator has removed the member (its
    session timed out), its partitions are dropped without a commit, ``on_lost`` is called and
    it joins again. ``close()`` commits (auto_commit), calls ``on_revoked`` and leaves, within
    5 s. ``assignment_changes()`` yields :class:`AssignmentChange` values from a queue of at
    most 1000 (when full the oldest is dropped and :attr:`changes_dropped` counts it).
    """

    def __init__(self, client: "AsyncClient", topic: str, *, group: str, start: Offset | None = None,
                 auto_commit: bool = True, auto_commit_interval_ms: int = 5000,
                 session_timeout_ms: int = L.SESSION_TIMEOUT_MS_DEFAULT,
                 rebalance_timeout_ms: int = L.REBALANCE_TIMEOUT_MS_DEFAULT, group_instance_id: str | None = None,
                 assignor: str = DEFAULT_ASSIGNOR, on_assigned: Callable[..., Any] | None = None,
                 on_revoked: Callable[..., Any] | None = None, on_lost: Callable[..., Any] | None = None,
                 isolation: str = "committed", window_bytes: int = 4 << 20, smartmodules: Any = None,
                 stop_at_end: bool = False, partition: int | None = None) -> None:
        self.group = check_options(group, start, assignor, session_timeout_ms, rebalance_timeout_ms,
                                   auto_commit_interval_ms, group_instance_id, partition, topic)
        if isolation not in ("committed", "uncommitted"):
            raise InvalidRequestError("isolation must be 'committed' or 'uncommitted'")
        if not 64 << 10 <= window_bytes <= 64 << 20:
            raise InvalidRequestError("window_bytes must be 64 KiB to 64 MiB")
        # What _PartitionStream reads from its consumer.
        self.client = client
        self.topic = topic
        self.start = start or Offset.beginning()
        self.isolation = 0 if isolation == "committed" else 1
        self.window_bytes = window_bytes
        self.smartmodules = normalize_chain(smartmodules)
        self.auto_commit = auto_commit
        self.auto_commit_interval_s = auto_commit_interval_ms / 1000
        self.stop_at_end = stop_at_end
        self._callbacks = {"assigned": on_assigned, "revoked": on_revoked, "lost": on_lost}
        self._m = Membership(client, self.group, [topic], instance_id=group_instance_id,
                             session_timeout_ms=session_timeout_ms, rebalance_timeout_ms=rebalance_timeout_ms,
                             assignor=assignor, wake=self._wake_up)
        self._streams: dict[int, _PartitionStream] = {}
        self._end_at: dict[int, int] = {}  # stop_at_end: the high watermark at assignment
        self._pending: dict[asyncio.Future[Any], int] = {}  # a read in flight -> its partition
        self.handout = Positions()  # what was handed to the application, per partition
        self._committed: dict[int, int] = {}  # the position last committed, or where the partition started
        self._wake: asyncio.Future[None] | None = None
        self._commit_lock = asyncio.Lock()
        self._auto_task: asyncio.Task[None] | None = None
        self._next_auto_commit = 0.0
        self._retry_at = 0.0
        self._past_end_since: dict[int, float] = {}  # partitions whose leader answered an end before the commit
        self._errors: list[BaseException] = []  # raised from the next poll (auto-commit, callbacks)
        self._changes: collections.deque[AssignmentChange] = collections.deque(maxlen=CHANGES_QUEUE_MAX)
        self._changed = asyncio.Event()
        self.changes_dropped = 0
        self._started = False
        self._closed = False

    # ---------------------------------------------------------------- public

    @property
    def member_id(self) -> str:
        return self._m.member_id

    @property
    def generation(self) -> int:
        """The member epoch the coordinator last answered."""
        return self._m.epoch

    def assignment(self) -> frozenset[TopicPartition]:
        """The partitions this consumer holds now."""
        return frozenset(TopicPartition(self.topic, p) for p in self._streams)

    def positions(self) -> dict[int, int]:
        """partition -> the offset after the last record handed out."""
        return self.handout.now()

    async def poll(self, timeout_s: float) -> list[ConsumerRecord]:
        """Records that arrive within ``timeout_s`` ([] if none, or once closed)."""
        chunks = await self._next(timeout_s)
        if not chunks:
            return []
        out: list[ConsumerRecord] = []
        for p, records, end in chunks:
            self.handout.done[p] = end
            out.extend(records)
        return out

    async def batches(self) -> AsyncIterator[list[ConsumerRecord]]:
        """Records as lists (the pushes that arrived together); a list is handed out when yielded."""
        while (chunks := await self._next(None)) is not None:
            out: list[ConsumerRecord] = []
            for p, records, end in chunks:
                self.handout.done[p] = end
                out.extend(records)
            yield out

    async def __aiter__(self) -> AsyncIterator[ConsumerRecord]:
        handout = self.handout
        while (chunks := await self._next(None)) is not None:
            for p, records, end in chunks:
                handout.hold(p, records)
                for rec in records:
                    handout.n += 1  # handed out: a commit() in the loop's body includes it
                    yield rec
                handout.finish(p, end)

    async def pushes(self) -> AsyncIterator[list[tuple[int, list[ConsumerRecord], int]]]:
        """For wrappers that hand records out themselves (the synchronous iterator): the pushes
        as (partition, records, offset after them), NOT counted as handed out until the wrapper
        records that in :attr:`handout` (``hold``, ``n``, ``finish``)."""
        while (chunks := await self._next(None)) is not None:
            yield chunks

    async def commit(self, offsets: Mapping[int | TopicPartition, int] | None = None) -> None:
        """Commit the positions handed out so far (those that moved since the last commit), or
        ``offsets`` (partition or TopicPartition -> the next offset to read). StaleMemberError
        when the coordinator does not count a partition as this member's."""
        if offsets is None:
            await self._commit(to_commit(self.positions(), self._committed))
            return
        plain: dict[int, int] = {}
        for k, v in offsets.items():
            tp = k if isinstance(k, TopicPartition) else TopicPartition(self.topic, k)
            if tp.topic != self.topic or not isinstance(tp.partition, int) or tp.partition < 0:
                raise InvalidRequestError(f"{tp} is not a partition of {self.topic}, which this consumer reads")
            if not isinstance(v, int) or v < 0:
                raise InvalidRequestError(f"the offset to commit for {tp} must be an int >= 0, not {v!r:.100}")
            plain[tp.partition] = v
        await self._commit(plain)

    async def assignment_changes(self) -> AsyncIterator[AssignmentChange]:
        """Assignment changes as they happen (at poll boundaries); ends when the consumer closes."""
        while True:
            while self._changes:
                yield self._changes.popleft()
            if self._closed:
                return
            self._changed.clear()
            await self._changed.wait()

    async def __aenter__(self) -> "AsyncGroupConsumer":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Commit (auto_commit), hand the partitions back (on_revoked), leave the group, stop the
        streams: within CLOSE_DEADLINE_S whatever state the cluster is in."""
        if self._closed:
            return
        self._closed = True
        self._wake_up()
        loop = asyncio.get_running_loop()
        end = loop.time() + CLOSE_DEADLINE_S
        try:
            async with asyncio.timeout(CLOSE_DEADLINE_S):
                await self._m.stop()
                self._cancel_pending()
                held = self.assignment()
                if self.auto_commit and self._m.joined and not self._m.lost:
                    await self._commit_quietly(to_commit(self.positions(), self._committed), end - loop.time())
                for s in self._streams.values():
                    s.close()
                self._streams.clear()
                if held:
                    self._m.owned = frozenset()
                    await self._report("revoked", held, self._m.epoch)
                await self._m.leave(max(0.1, end - loop.time()))
        except TimeoutError:
            log.warning("group %s: close took longer than %.0f s; the coordinator removes member %s after its "
                        "session timeout", self.group, CLOSE_DEADLINE_S, self._m.member_id or "-")
        finally:
            await self._m.stop()
            self._cancel_pending()
            for s in self._streams.values():
                s.close()
            self._streams.clear()
            if self._auto_task is not None:
                self._auto_task.cancel()
            self._changed.set()

    # ---------------------------------------------------------------- reading

    def _wake_up(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    async def _next(self, timeout_s: float | None) -> list[tuple[int, list[ConsumerRecord], int]] | None:
        """The next non-empty pushes as (partition, records, offset after them); [] when
        ``timeout_s`` passes first; None once closed (or, stop_at_end, read to the end)."""
        if self._closed:
            return None
        if not self._started:
            await self.client.partitions(self.topic)  # NotFoundError now for a topic that does not exist
            self._started = True
            self._m.start()
            self._next_auto_commit = asyncio.get_running_loop().time() + self.auto_commit_interval_s
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        while True:
            await self._boundary()
            if self._closed:
                return None
            for p, s in self._streams.items():
                if p not in self._pending.values() and not self._at_end(p, s):
                    self._pending[asyncio.ensure_future(s.next_chunk())] = p
            if self.stop_at_end and self._m.joined and self._m.target is None and not self._pending:
                return None
            if self._wake is None or self._wake.done():
                self._wake = loop.create_future()
            left = None if deadline is None else max(0.0, deadline - loop.time())
            if self._retry_at:  # a partition that could not start yet is tried again then
                left = min(left if left is not None else RECONCILE_RETRY_S, max(0.01, self._retry_at - loop.time()))
            done, _ = await asyncio.wait([*self._pending, self._wake], timeout=left,
                                         return_when=asyncio.FIRST_COMPLETED)
            out = []
            failed: BaseException | None = None
            for fut in done:
                p = self._pending.pop(fut, None)
                if p is None or fut.cancelled():
                    continue
                if fut.exception() is not None:  # a stream's error (out of range, denied ...)
                    failed = failed or fut.exception()
                    continue
                records = fut.result()
                if records:
                    out.append((p, records, self._streams[p].offset))
                elif p in self._streams:
                    self.handout.done[p] = max(self.handout.done.get(p, 0), self._streams[p].offset)
            if failed is not None:
                if not out:
                    raise failed
                self._errors.append(failed)  # the records other streams brought first: none is skipped
            if out:
                return out
            if deadline is not None and loop.time() >= deadline:
                return []

    def _at_end(self, p: int, s: _PartitionStream) -> bool:
        return self.stop_at_end and s.offset >= self._end_at.get(p, 0)

    def _cancel_pending(self, partitions: Any = None) -> None:
        for fut, p in list(self._pending.items()):
            if partitions is None or p in partitions:
                fut.cancel()
                del self._pending[fut]

    # ---------------------------------------------------------------- the poll boundary

    async def _boundary(self) -> None:
        """Everything that waits for a poll boundary: errors to raise, partitions lost, the
        coordinator's new assignment, the automatic commit."""
        m = self._m
        if self._closed:
            return
        if m.lost:  # first: a fenced member (fencedInstance) drops its partitions before it raises
            await self._drop_lost()
        if m.error is not None:
            raise m.error
        if self._errors:
            raise self._errors.pop(0)
        loop = asyncio.get_running_loop()
        if m.target is None:
            self._retry_at = 0.0
        for _ in range(4):  # each pass is one answer of the coordinator; the next waits for another poll
            if m.target is None or loop.time() < self._retry_at:
                break
            await self._reconcile(*m.target)
        if self.auto_commit and loop.time() >= self._next_auto_commit:
            self._next_auto_commit = loop.time() + self.auto_commit_interval_s
            moved = to_commit(self.handout.done, self._committed)
            if moved and (self._auto_task is None or self._auto_task.done()):
                self._auto_task = loop.create_task(self._auto_commit(moved))

    async def _drop_lost(self) -> None:
        lost, epoch = self._m.take_lost()
        mine = frozenset(tp for tp in lost if tp.partition in self._streams)
        for tp in mine:
            self._drop(tp.partition)
        log.info("group %s: lost %s (member removed); not committed", self.group, _names(mine))
        if mine:
            await self._report("lost", mine, epoch)

    def _drop(self, p: int) -> None:
        self._cancel_pending((p,))
        s = self._streams.pop(p, None)
        if s is not None:
            s.close()
        self.handout.done.pop(p, None)
        self._committed.pop(p, None)
        self._end_at.pop(p, None)

    async def _reconcile(self, target: frozenset[TopicPartition], epoch: int) -> None:
        m = self._m
        incarnation = m.incarnation
        held = m.owned
        revoked = held - target
        added = frozenset(tp for tp in target - held if tp.topic == self.topic)
        if revoked:
            self._cancel_pending({tp.partition for tp in revoked})
            for tp in revoked:
                s = self._streams.get(tp.partition)
                if s is not None:
                    s.close()
            if self._auto_task is not None and not self._auto_task.done():
                await asyncio.wait([self._auto_task])  # an older commit must not land after this one
            if self.auto_commit:  # without it the application commits, in on_revoked at the latest
                positions = self.positions()
                await self._commit_quietly(to_commit({tp.partition: positions[tp.partition] for tp in revoked
                                                      if tp.partition in positions}, self._committed),
                                           COMMIT_DEADLINE_S)
            for tp in revoked:
                self._drop(tp.partition)
            await self._report("revoked", revoked, epoch)
            held = held - revoked
            if not m.set_owned(held, incarnation):
                return
        if added:
            started = await self._start(added, incarnation)
            if started:
                held = held | started
                if not m.set_owned(held, incarnation):
                    for tp in started:
                        self._drop(tp.partition)  # given to a member that is gone: counted lost, no callback
                    return
                await self._report("assigned", started, epoch)
            if started != added:
                self._retry_at = asyncio.get_running_loop().time() + RECONCILE_RETRY_S
                return
        self._retry_at = 0.0
        if not revoked and not added:
            m.set_owned(held, incarnation)

    async def _start(self, added: frozenset[TopicPartition], incarnation: int) -> frozenset[TopicPartition]:
        """Open streams for ``added`` at their committed offsets; the partitions that started
        (one without a leader now is left for the next boundary)."""
        parts = sorted(tp.partition for tp in added)
        try:
            r = await group_call(self.client, self.group, "offsetFetch",
                                 {"group": self.group, "topics": wire_partitions(added)}, deadline_s=COMMIT_DEADLINE_S)
        except KolkError as e:
            if not e.retriable:
                raise
            log.warning("group %s: could not read the committed offsets of %s: %s; trying again", self.group,
                        _names(added), e)
            return frozenset()
        committed = {o.partition: o.offset for o in r.offsets if o.topic == self.topic}
        if parts[-1] >= len(await self.client.partitions(self.topic)):
            self.client.forget_leaders(self.topic)  # partitions were added since the client looked
            known = len(await self.client.partitions(self.topic))
            if parts[-1] >= known:
                log.info("group %s: %s-%d is not in the SC's metadata yet; trying again", self.group,
                         self.topic, parts[-1])
                parts = [p for p in parts if p < known]
        ranges = await asyncio.gather(*(self.client.offsets(self.topic, p) for p in parts), return_exceptions=True)
        started = set()
        for p, rng in zip(parts, ranges):
            if isinstance(rng, BaseException):
                if not isinstance(rng, KolkError) or not rng.retriable:
                    raise rng
                log.warning("group %s: %s-%d cannot be started now: %s", self.group, self.topic, p, rng)
                continue
            log_start, hw, leo = rng
            now = asyncio.get_running_loop().time()
            waited = now - self._past_end_since.get(p, now)
            offset, out_of_range = start_offset(committed.get(p), log_start, hw, leo, self.start.kind, waited)
            if offset is None:
                if p not in self._past_end_since:
                    self._past_end_since[p] = now
                    log.warning("group %s: %s-%d ends at %d, before the group's committed offset %d; asking its "
                                "leader again", self.group, self.topic, p, leo, committed[p])
                self.client.forget_leaders(self.topic)
                continue
            self._past_end_since.pop(p, None)
            if out_of_range:
                log.warning("group %s: the committed offset %d of %s-%d is outside the partition's range %d-%d; "
                            "starting at %d (%s)", self.group, committed[p], self.topic, p, log_start, leo, offset,
                            f"the {self.start.kind}" if committed[p] < log_start else "the high watermark: the "
                            "records past it were lost")
            s = _PartitionStream(self, p, offset)
            s.high_watermark = hw
            if p in committed and not out_of_range:
                s.restarts_left = 0  # a committed position is never moved on silently
            # A committed start needs no commit until the position moves. A start chosen by
            # `start` (no commit, or one out of range) is committed at the next commit, as Kafka
            # does: the group then resumes there, and records written meanwhile are not skipped
            # by a later start at the end.
            if p in committed and not out_of_range:
                self._committed[p] = offset
            else:
                self._committed.pop(p, None)
            self._streams[p] = s
            self.handout.done[p] = offset
            self._end_at[p] = hw
            started.add(TopicPartition(self.topic, p))
        return frozenset(started)

    async def _report(self, kind: str, parts: frozenset[TopicPartition], epoch: int) -> None:
        """The callback of ``kind``, then the change on the queue. A callback's error is raised
        from the next poll, after the boundary finished."""
        cb = self._callbacks[kind]
        if cb is not None:
            try:
                result = cb(parts, epoch)
                if inspect.isawaitable(result):
                    await result
            except Exception as e:  # the application's code: reported, the group goes on
                log.error("group %s: on_%s raised %r", self.group, kind, e)
                self._errors.append(e)
        if len(self._changes) == CHANGES_QUEUE_MAX:
            self.changes_dropped += 1
        self._changes.append(AssignmentChange(kind, parts, epoch))
        self._changed.set()

    # ---------------------------------------------------------------- commits

    async def _commit(self, offsets: Mapping[int, int], deadline_s: float = COMMIT_DEADLINE_S) -> None:
        if not offsets:
            return
        async with self._commit_lock:
            items = sorted(offsets.items())
            for i in range(0, len(items), L.COMMIT_OFFSETS_MAX):
                chunk = items[i:i + L.COMMIT_OFFSETS_MAX]
                await group_call(self.client, self.group, "offsetCommit",
                                 {"group": self.group, "memberId": self._m.member_id, "memberEpoch": self._m.epoch,
                                  "offsets": [{"topic": self.topic, "partition": p, "offset": o, "metadata": ""}
                                              for p, o in chunk]},
                                 deadline_s=deadline_s)
                self._committed.update(chunk)

    async def _commit_quietly(self, offsets: Mapping[int, int], deadline_s: float) -> None:
        """A commit on revocation or close: a refusal is logged, never raised (protocol.md)."""
        try:
            await self._commit(offsets, max(0.1, deadline_s))
        except StaleMemberError as e:
            log.info("group %s: commit of %s refused (%s)", self.group, _offsets(offsets), e)
        except KolkError as e:
            log.warning("group %s: commit of %s failed: %s", self.group, _offsets(offsets), e)

    async def _auto_commit(self, offsets: Mapping[int, int]) -> None:
        try:
            await self._commit(offsets)
        except StaleMemberError as e:
            log.info("group %s: automatic commit refused (%s)", self.group, e)
        except KolkError as e:
            if e.retriable:
                log.warning("group %s: automatic commit failed (%s); the next one retries", self.group, e)
            else:
                self._errors.append(e)
                self._wake_up()


def _names(parts: frozenset[TopicPartition]) -> str:
    return ", ".join(str(tp) for tp in sorted(parts)) or "nothing"


def _offsets(offsets: Mapping[int, int]) -> str:
    return ", ".join(f"{p}@{o}" for p, o in sorted(offsets.items())) or "nothing"
