"""The partition log: an ordered, durable sequence of record batches for one partition replica.

A partition log is a directory of segment files (authoritative) plus entries in the data
directory's RocksDB (rebuildable views; see index_db.py). Offsets are assigned here on append.

Invariants (checked by tests/test_log_model.py against a plain model):

* ``log_start_offset <= high_watermark <= log_end_offset``; offsets in
  ``[log_start_offset, log_end_offset)`` are readable unless fenced as corrupt.
* offsets increase: each batch's base offset is at least the previous batch's last offset + 1;
  more is a gap the cleaner left (cleaner.py) or a follower was fed by a compacted leader.
* ``durable_offset`` only grows except by truncation, and everything below it survived an
  fsync of its file; a sealed segment was fsynced whole before its successor was created.
* reads verify every batch's CRC and never return a batch that fails.
* a log whose disk failed (:attr:`PartitionLog.failure`) is fenced for good: every operation
  raises the :class:`LogFailedError` and ``durable_offset`` never moves again (fsync.py says
  why a failed fsync is never retried).

Threading: one thread (the event loop) calls every method; only :meth:`SyncTicket.run`
may run on another thread, and it touches nothing but duplicated file descriptors and the
log's :class:`FsyncGuard`.
"""

from __future__ import annotations

import os
import time
from typing import Callable, Iterator, NamedTuple

from .batch import BatchHeader, iter_batches, with_head
from .config import LogConfig
from .errors import (
    BatchTooLargeError,
    CorruptBatchError,
    InvalidBatchError,
    LogClosedError,
    LogFailedError,
    OffsetOutOfRangeError,
    SegmentDeletedError,
)
from .index_db import (
    HIGH_WATERMARK,
    LOG_START,
    RECOVERY_POINT,
    LEADER_EPOCHS,
    OFFSET_INDEX,
    PARTITION_STATE,
    TIME_INDEX,
    U64,
    FencedBatch,
    IndexDb,
    IndexEntry,
    Q,
    RecoveryPoint,
    decode_entry,
    encode_entry,
    encode_fence,
    encode_recovery_point,
    epoch_key,
    fence_key,
    offset_key,
    partition_key,
    prefix_end,
    state_key,
    time_key,
)
from . import cleaner
from .clean_plan import CleanPlan, CleanResult, CleanStats
from .compaction import CompactionPolicy, EraseSpec
from .fsync import FsyncGuard, SyncTicket
from .leader_epochs import EpochEnd, LeaderEpochHistory
from .loader import load_log
from .reader import ReadResult, batch_headers, offset_for_timestamp, read_batches
from .retention import SegmentSummary, segments_to_delete, should_roll
from .segment import Segment, fsync_directory
from .truncation import reset_log, skip_log, truncate_log

Clock = Callable[[], int]


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class AppendInfo(NamedTuple):
    base_offset: int
    last_offset: int
    max_timestamp: int

    @property
    def next_offset(self) -> int:
        return self.last_offset + 1


def validate_log_name(name: str) -> None:
    if not name or len(name) > 255 or name in (".", ".."):
        raise ValueError(f"log name {name!r} must be 1-255 characters and not '.' or '..'")
    bad = [c for c in name if not (c.isascii() and (c.isalnum() or c in "._-"))]
    if bad:
        raise ValueError(f"log name {name!r} has {bad[0]!r}; use letters, digits, '.', '_' and '-'")


class PartitionLog:
    """One partition replica's log. Open it through :class:`kolk.segments.LogStore`."""

    def __init__(self, name: str, directory: str, index: IndexDb, config: LogConfig,
                 clock: Clock = wall_clock_ms) -> None:
        validate_log_name(name)
        self.name = name
        self.directory = directory
        self.config = config
        self._index = index
        self._clock = clock
        self._pkey = partition_key(name)
        self._segments: list[Segment] = []
        self._fences: dict[int, dict[int, FencedBatch]] = {}
        self._dirty: set[Segment] = set()
        self._generation = 0  # bumps on truncation, so an in-flight sync cannot claim cut data
        self._closed = False
        self._guard = FsyncGuard(name)
        self._short_of_high_watermark: int | None = None  # set by load_log
        self.leader_epochs = LeaderEpochHistory()
        self.recovery_report: list[str] = []
        load_log(self)

    # ----------------------------------------------------------------- properties

    @property
    def log_start_offset(self) -> int:
        return self._log_start

    @property
    def log_end_offset(self) -> int:
        return self._segments[-1].next_offset

    @property
    def high_watermark(self) -> int:
        return self._high_watermark

    @property
    def durable_offset(self) -> int:
        """Every offset below this survived an fsync."""
        return self._recovery_point.offset

    @property
    def recovery_point(self) -> RecoveryPoint:
        """Where the last fsync ended: segment, byte position and offset."""
        return self._recovery_point

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def failure(self) -> LogFailedError | None:
        """Why the log failed (its disk did; see :class:`LogFailedError`), or None.

        Once set it stays: every operation raises it and the replica must be rebuilt from its
        peers (:meth:`LogStore.delete_log`, then :meth:`LogStore.open_log`)."""
        return self._guard.failure

    @property
    def short_of_high_watermark(self) -> int | None:
        """The persisted high watermark, when the open found the log ending below it; else None.

        Offsets below the high watermark were committed, so a log that ends below its own
        persisted high watermark lost records it had acknowledged: segment files cut or
        deleted while the index survived, or the partition directory removed while the index
        still held its state. The loaded high watermark is capped at the log end as always;
        this says by how much it was cut, for the server to report and to treat the replica
        as a new empty one (DESIGN.md §5, storage identity). Set by the open, never changed
        afterwards; nothing is logged here.

        The index has no write-ahead log (index_db.py), so after a crash the persisted high
        watermark may be older, lower, than the one the log last had: then this check can miss
        a loss, but it never accuses a log that kept everything, because the high watermark is
        lowered and flushed before any truncation shortens the files.
        """
        return self._short_of_high_watermark

    @property
    def generation(self) -> int:
        """Bumps on every truncation."""
        return self._generation

    @property
    def size_bytes(self) -> int:
        return sum(s.size for s in self._segments)

    @property
    def segment_count(self) -> int:
        """How many segment files the log has (the active one included)."""
        return len(self._segments)

    def segments(self) -> list[SegmentSummary]:
        return [SegmentSummary(s.base_offset, s.next_offset, s.size, s.max_timestamp) for s in self._segments]

    def segment_paths(self) -> list[str]:
        return [s.path for s in self._segments]

    def fenced_batches(self) -> list[FencedBatch]:
        return [f for seg in self._fences.values() for f in seg.values()]

    # ----------------------------------------------------------------- append

    def append(self, data: bytes | bytearray | memoryview, leader_epoch: int = 0) -> AppendInfo:
        """Append one or more batches as the leader: offsets and the epoch are assigned here.

        Every batch is validated before anything is written, so a bad batch anywhere rejects
        the whole call and the log is unchanged. The data is written to the page cache; it is
        durable once :meth:`sync` (or a group commit) covers ``next_offset``.
        """
        self._check_open()
        if len(data) > self.config.append_bytes_max:
            raise BatchTooLargeError(
                f"append of {len(data)} bytes is more than append_bytes_max ({self.config.append_bytes_max})"
            )
        batches = list(iter_batches(data, self.config.batch_bytes_max))
        if leader_epoch < self.leader_epochs.latest_epoch:
            raise InvalidBatchError(
                f"leader epoch {leader_epoch} is older than this log's latest epoch "
                f"{self.leader_epochs.latest_epoch}; a newer leader has written"
            )
        if leader_epoch < 0 or leader_epoch >= 2**31:
            raise InvalidBatchError(f"leader epoch {leader_epoch} does not fit the i32 field")
        mv = memoryview(data)
        next_offset = self.log_end_offset
        parts: list[bytes | memoryview] = []
        headers = []
        for pos, h in batches:
            parts.append(with_head(h, next_offset, leader_epoch))
            parts.append(mv[pos + 16 : pos + h.size])
            headers.append(h._replace(base_offset=next_offset, leader_epoch=leader_epoch))
            next_offset += h.last_offset_delta + 1
        return self._write(parts, len(data), headers)

    def append_replicated(self, data: bytes | bytearray | memoryview) -> AppendInfo:
        """Append batches as a follower: offsets and epochs are kept as the leader wrote them.

        Each batch must start at or past the end of the one before it (the first: at or past
        the log end offset; past it is a gap left by the leader's cleaner, and the log end
        jumps over it) and epochs must not go down.
        """
        self._check_open()
        if len(data) > self.config.append_bytes_max:
            raise BatchTooLargeError(
                f"append of {len(data)} bytes is more than append_bytes_max ({self.config.append_bytes_max})"
            )
        expected = self.log_end_offset
        epoch = self.leader_epochs.latest_epoch
        headers = []
        for pos, h in iter_batches(data, self.config.batch_bytes_max):
            if h.base_offset < expected:  # above: a gap the leader's cleaner left
                raise InvalidBatchError(
                    f"replicated batch at byte {pos} starts at offset {h.base_offset}, "
                    f"below {expected} where the log ends", pos)
            if h.leader_epoch < epoch:
                raise InvalidBatchError(
                    f"replicated batch at byte {pos} has leader epoch {h.leader_epoch}, "
                    f"older than {epoch}", pos)
            epoch = h.leader_epoch
            expected = h.next_offset
            headers.append(h)
        return self._write([memoryview(data)], len(data), headers)

    def _write(self, parts: list[bytes | memoryview], nbytes: int, headers: list) -> AppendInfo:
        active = self._segments[-1]
        now = self._clock()
        if should_roll(active.size, nbytes, now - active.created_ms, self.config.segment_bytes,
                       self.config.segment_ms):
            self.roll()
            active = self._segments[-1]
        try:
            position = active.write(parts, nbytes)  # a full disk: StorageFullError, log unchanged
        except OSError as e:
            raise self._guard.fail(f"write of {active.path}: {e}") from e
        # The bytes are in the file; now the views. None of this can fail on bad input.
        wb = self._index.batch()
        h_off = self._index.handle[OFFSET_INDEX]
        h_time = self._index.handle[TIME_INDEX]
        seg_max = active.max_timestamp
        for h in headers:
            if h.max_timestamp > seg_max:
                seg_max = h.max_timestamp
                wb.put(time_key(self._pkey, active.base_offset, seg_max), U64.pack(h.base_offset), h_time)
            entry = IndexEntry(h.base_offset, active.base_offset, position, h.size, h.last_offset_delta,
                               h.max_timestamp, seg_max)
            wb.put(offset_key(self._pkey, h.base_offset), encode_entry(entry), h_off)
            position += h.size
            if self.leader_epochs.assign(h.leader_epoch, h.base_offset):
                wb.put(epoch_key(self._pkey, h.leader_epoch), Q.pack(h.base_offset),
                       self._index.handle[LEADER_EPOCHS])
        try:
            self._index.write(wb)
        except OSError as e:
            raise self._guard.fail(f"indexing {active.path}: {e}") from e
        active.max_timestamp = seg_max
        active.next_offset = headers[-1].next_offset
        self._dirty.add(active)
        return AppendInfo(headers[0].base_offset, headers[-1].last_offset,
                          max(h.max_timestamp for h in headers))

    def roll(self) -> None:
        """Seal the active segment (fsynced whole) and start a new one at the log end."""
        self._check_open()
        active = self._segments[-1]
        if active.size == 0:
            return
        self._fsync_segment(active)
        self._dirty.discard(active)
        try:
            seg = Segment(self.directory, active.next_offset, self._clock(), create=True)
            seg.next_offset = active.next_offset
            self._segments.append(seg)
            fsync_directory(self.directory)
        except OSError as e:
            raise self._guard.fail(f"roll of {self.directory} at offset {active.next_offset}: {e}") from e
        # The index has no WAL: persist it now so that recovery after a crash scans at most
        # the segments rolled since (see index_db.py).
        self._index.flush()
        # Everything before the new segment is durable now: the sealed segments each were
        # fsynced when they were rolled.
        self._set_recovery_point(RecoveryPoint(seg.base_offset, 0, seg.base_offset))

    def skip_to(self, offset: int) -> None:
        """Move the log end to ``offset``, past a gap that ends the leader's log (truncation.py)."""
        skip_log(self, offset)

    # ----------------------------------------------------------------- durability

    def begin_sync(self) -> SyncTicket:
        """Capture what the next fsync must cover. Call :meth:`complete_sync` after run().

        The dirty set is cleared here, before the fsync ran: that is safe only because a
        ticket whose fsync fails fails the log for good (fsync.py), so no later ticket can
        claim the bytes this one did not make durable."""
        self._check_open()
        active = self._segments[-1]
        segments = list(self._dirty)
        fds = [os.dup(s.fd) for s in segments]
        self._dirty.clear()
        end = RecoveryPoint(active.base_offset, active.size, active.next_offset)
        # Segment creations are made durable by roll() itself, so no directory fsync here.
        return SyncTicket(fds, segments, end, self._generation, self._guard)

    def complete_sync(self, ticket: SyncTicket) -> int:
        """Record what ``ticket`` made durable; returns :attr:`durable_offset`.

        Raises the log's :class:`LogFailedError` if this or any other fsync of the log failed."""
        self._guard.check()
        if (ticket.done and not self._closed and ticket.generation == self._generation
                and ticket.end.offset > self._recovery_point.offset):
            self._set_recovery_point(ticket.end)
        return self.durable_offset

    def sync(self) -> int:
        """fsync everything appended so far (one fsync per dirty file); returns durable_offset."""
        ticket = self.begin_sync()
        ticket.run()
        return self.complete_sync(ticket)

    def _fsync_segment(self, seg: Segment) -> None:
        """fdatasync one segment on this thread, under the log's fsync guard (fsync.py)."""
        with self._guard.lock:
            self._guard.check()
            self._guard.fdatasync(seg.fd, seg)

    def _set_recovery_point(self, rp: RecoveryPoint) -> None:
        self._recovery_point = rp
        try:
            self._index.put(PARTITION_STATE, state_key(self._pkey, RECOVERY_POINT), encode_recovery_point(rp))
        except OSError as e:
            raise self._guard.fail(str(e)) from e

    # ----------------------------------------------------------------- read

    def read(self, offset: int, max_bytes: int, upto: int | None = None) -> ReadResult:
        """Whole batches from the one holding ``offset``, up to ``max_bytes`` (see reader.py)."""
        self._check_open()
        return read_batches(self, offset, max_bytes, upto)

    def batch_headers(self, start_offset: int | None = None) -> Iterator[BatchHeader]:
        """Headers of the batches from the one holding ``start_offset`` (default: the log
        start) to the log end, fenced ones skipped; only the headers are read (see reader.py)."""
        self._check_open()
        return batch_headers(self, start_offset)

    def offset_for_timestamp(self, timestamp: int) -> int | None:
        """The first offset whose record timestamp is >= ``timestamp``, or None (see reader.py)."""
        self._check_open()
        return offset_for_timestamp(self, timestamp)

    # ----------------------------------------------------------------- high watermark

    def set_high_watermark(self, offset: int) -> None:
        self._guard.check()
        if not self._log_start <= offset <= self.log_end_offset:
            raise OffsetOutOfRangeError(offset, self._log_start, self.log_end_offset)
        if offset != self._high_watermark:
            self._high_watermark = offset
            try:
                self._index.put(PARTITION_STATE, state_key(self._pkey, HIGH_WATERMARK), Q.pack(offset))
            except OSError as e:
                raise self._guard.fail(str(e)) from e

    # ----------------------------------------------------------------- leader epochs

    def end_offset_for_epoch(self, epoch: int) -> EpochEnd:
        """Where ``epoch`` ended in this log (see LeaderEpochHistory.end_offset_for)."""
        return self.leader_epochs.end_offset_for(epoch, self.log_end_offset)

    # ----------------------------------------------------------------- truncation

    def truncate_to(self, offset: int) -> int:
        """Remove every batch holding an offset >= ``offset``; the new log end (truncation.py)."""
        return truncate_log(self, offset)

    def reset_to(self, start_offset: int) -> None:
        """Drop the whole log and start it again, empty, at ``start_offset`` (truncation.py)."""
        reset_log(self, start_offset)

    def _trim_time_index(self, seg: Segment) -> None:
        """Drop time-index entries of ``seg`` that point at or past its (new) end, and reset its
        max timestamp from the offset index."""
        seg_prefix = self._pkey + U64.pack(seg.base_offset)
        for k, v in list(self._index.items_from(TIME_INDEX, seg_prefix, prefix_end(seg_prefix))):
            if U64.unpack(v)[0] >= seg.next_offset:
                self._index.delete(TIME_INDEX, k)
        last = self._last_entry(seg)
        seg.max_timestamp = last.segment_max_timestamp if last else -1

    def _drop_segment(self, seg: Segment) -> None:
        seg_prefix = self._pkey + U64.pack(seg.base_offset)
        self._index.delete_range(TIME_INDEX, seg_prefix, prefix_end(seg_prefix))
        for fenced_pos in list(self._fences.get(seg.base_offset, {})):
            self._remove_fence(seg.base_offset, fenced_pos)
        self._dirty.discard(seg)
        seg.delete()

    # ----------------------------------------------------------------- retention

    def reconfigure(self, config: LogConfig) -> None:
        """Use ``config`` from now on: the next roll sees the new segment size and age, the
        next retention pass the new limits. Nothing on disk changes here."""
        self._check_open()
        self.config = config

    def enforce_retention(self, now_ms: int | None = None) -> list[int]:
        """Delete the oldest segments that retention allows; returns their base offsets.

        Works on a compacted log too (cleanup_policy compact,delete): emptied segments go as
        soon as retention by age reaches them (retention.py); the caller decides whether a
        topic's policy calls for retention at all."""
        self._check_open()
        now = self._clock() if now_ms is None else now_ms
        count = segments_to_delete(
            self.segments(), now_ms=now, retention_ms=self.config.retention_ms,
            retention_bytes=self.config.retention_bytes, high_watermark=self._high_watermark)
        if count == 0:
            return []
        return self._delete_oldest(count, self._segments[count].base_offset)

    def advance_log_start(self, offset: int) -> list[int]:
        """Move the log start up to ``offset`` (capped at the log end): a follower whose
        leader's log start moved. Returns the base offsets of the segments deleted, those
        wholly below the new start (never the active one). A no-op unless the new start is
        above the current one. Reads below it then raise :class:`OffsetOutOfRangeError`.

        Crash-safe as retention is: the new start is recorded first and a crash part way
        leaves segments below it, which the next open deletes."""
        self._check_open()
        new_start = min(offset, self.log_end_offset)
        if new_start <= self._log_start:
            return []
        count = 0
        while count < len(self._segments) - 1 and self._segments[count + 1].base_offset <= new_start:
            count += 1
        return self._delete_oldest(count, new_start)

    def _delete_oldest(self, count: int, new_start: int) -> list[int]:
        """Record ``new_start`` as the log start, then delete the ``count`` oldest segments
        (all wholly below it) and the leader epochs that ended before it."""
        doomed = self._segments[:count]
        # The new log start is recorded first: a crash part way leaves segments below it, and
        # the next open deletes them.
        self._set_log_start(new_start)
        self._segments = self._segments[count:]
        try:
            for seg in doomed:
                self._index.delete_range(OFFSET_INDEX, offset_key(self._pkey, seg.base_offset),
                                         offset_key(self._pkey, seg.next_offset))
                self._drop_segment(seg)
            if doomed:
                fsync_directory(self.directory)
        except OSError as e:
            raise self._guard.fail(f"retention in {self.directory}: {e}") from e
        removed, moved = self.leader_epochs.truncate_from_start(new_start)
        for e in removed:
            self._index.delete(LEADER_EPOCHS, epoch_key(self._pkey, e.epoch))
        if moved is not None:
            self._index.put(LEADER_EPOCHS, epoch_key(self._pkey, moved.epoch), Q.pack(moved.start_offset))
        self._index.flush()
        return [s.base_offset for s in doomed]

    # ----------------------------------------------------------------- compaction (cleaner.py)

    @property
    def cleaned_offset(self) -> int:
        """Where the next clean pass's dirty range starts (persisted; the log start when the
        log was never cleaned)."""
        return cleaner.cleaned_offset(self)

    def plan_clean(self, policy: CompactionPolicy, now_ms: int, erase: EraseSpec | None = None) -> CleanPlan | None:
        """The next clean pass, as plain data for :func:`execute_plan` in a worker process;
        None when there is nothing to do. Cheap: reads no segment file."""
        return cleaner.plan_clean(self, policy, now_ms, erase)

    def finish_clean(self, plan: CleanPlan, result: CleanResult) -> CleanStats:
        """Swap the worker's cleaned segments in, crash-safely; raises StaleCleanError (and
        removes the cleaned files) if the log changed since the plan."""
        self._check_open()
        return cleaner.finish_clean(self, plan, result)

    def clean(self, policy: CompactionPolicy, now_ms: int, erase: EraseSpec | None = None) -> CleanStats:
        """One whole clean pass in this process (tests and tools; a server uses the worker)."""
        return cleaner.clean(self, policy, now_ms, erase)

    def holds_key(self, key_sha256: bytes, upto_offset: int) -> bool:
        """Does any record at or below ``upto_offset`` have a key with this SHA-256?"""
        return cleaner.holds_key(self, key_sha256, upto_offset)

    def _set_log_start(self, offset: int) -> None:
        self._log_start = offset
        self._index.put(PARTITION_STATE, state_key(self._pkey, LOG_START), Q.pack(offset))
        if self._high_watermark < offset:
            self.set_high_watermark(offset)

    # ----------------------------------------------------------------- fences

    def _fence_covering(self, offset: int) -> FencedBatch | None:
        for fences in self._fences.values():
            for f in fences.values():
                if f.base_offset <= offset:
                    nxt = self._next_offset_after_fence(f)
                    if offset < nxt:
                        return f
        return None

    def _next_offset_after_fence(self, f: FencedBatch) -> int:
        found = self._index.first_from(OFFSET_INDEX, offset_key(self._pkey, f.base_offset + 1),
                                       prefix_end(self._pkey))
        return decode_entry(*found).base_offset if found else self.log_end_offset

    def _add_fence(self, fence: FencedBatch) -> FencedBatch:
        self._fences.setdefault(fence.segment_base, {})[fence.position] = fence
        self._index.put(PARTITION_STATE, fence_key(self._pkey, fence.segment_base, fence.position),
                        encode_fence(fence))
        self.recovery_report.append(
            f"fenced corrupt batch in {self._segment(fence.segment_base).path} at byte {fence.position}: "
            f"{fence.reason}")
        return fence

    def _remove_fence(self, segment_base: int, position: int) -> None:
        self._fences.get(segment_base, {}).pop(position, None)
        self._index.delete(PARTITION_STATE, fence_key(self._pkey, segment_base, position))

    def _corrupt(self, f: FencedBatch) -> CorruptBatchError:
        seg = self._segment_or_none(f.segment_base)
        path = seg.path if seg else os.path.join(self.directory, f"{f.segment_base:020d}.log")
        return CorruptBatchError(path, f.position, f.reason, f.base_offset)

    # ----------------------------------------------------------------- lookup helpers

    def _segment_or_none(self, base: int) -> Segment | None:
        lo, hi = 0, len(self._segments) - 1
        while lo <= hi:
            mid = (lo + hi) // 2
            b = self._segments[mid].base_offset
            if b == base:
                return self._segments[mid]
            if b < base:
                lo = mid + 1
            else:
                hi = mid - 1
        return None

    def _segment(self, base: int) -> Segment:
        seg = self._segment_or_none(base)
        if seg is None:
            raise SegmentDeletedError(
                f"log {self.name}: segment {base} is gone (deleted by retention or truncation)")
        return seg

    def _next_segment(self, seg: Segment) -> Segment | None:
        i = self._segments.index(seg)
        return self._segments[i + 1] if i + 1 < len(self._segments) else None

    def _last_entry(self, seg: Segment, end_offset: int | None = None) -> IndexEntry | None:
        """The last index entry of ``seg`` for a batch starting below ``end_offset`` (default:
        anywhere in the partition's index), or None."""
        key = offset_key(self._pkey, end_offset - 1) if end_offset is not None else prefix_end(self._pkey)
        found = self._index.last_before(OFFSET_INDEX, key, offset_key(self._pkey, seg.base_offset))
        if found is None:
            return None
        e = decode_entry(*found)
        return e if e.segment_base == seg.base_offset else None

    def _check_open(self) -> None:
        self._guard.check()
        if self._closed:
            raise LogClosedError(f"log {self.name} is closed")

    # ----------------------------------------------------------------- open / close

    def mark_deleted(self) -> None:
        """The log's files are being removed: regions handed out must not be served."""
        for seg in self._segments:
            seg.deleted = True

    def close(self, sync: bool = True) -> None:
        """Close the files. ``sync=False`` skips the final fsync (tests use it to crash).

        A failed log is closed without an fsync and without raising. A failure that the final
        fsync finds is recorded in :attr:`failure`, not raised: the files must be released
        either way, and nothing that failed was ever acknowledged."""
        if self._closed:
            return
        if sync and self.failure is None:
            try:
                self.sync()
            except LogFailedError:
                pass
        self._closed = True
        for seg in self._segments:
            try:
                seg.close()
            except OSError:
                pass  # the descriptor is released even when close reports a write-back error
