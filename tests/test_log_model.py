"""The partition log (segments/log.py) against a plain in-memory model, by random programs.

A hypothesis state machine drives a real ``LogStore`` / ``PartitionLog`` on a temporary
directory through appends, reads, rolls, truncations, new leaders, retention, fsyncs, clean
reopens and crashes, and after every step checks that the log and a model made of Python lists
agree. What it proves, rule of DESIGN.md §4 by rule:

* offsets: ``append`` assigns the next offsets (base offset == the previous log end offset)
  and rewrites only the head (base offset, leader epoch); the bytes read back are the bytes
  appended with that head, and every record decodes to what was appended. A bad batch anywhere
  in an append (CRC, truncated, too large, stale epoch) rejects the call and changes nothing;
* ``log_start_offset <= high_watermark <= log_end_offset``; segments roll before passing
  ``segment_bytes`` or at ``segment_ms``; the segment files on disk are exactly the model's;
* reads return whole, contiguous, CRC-valid batches starting with the one holding the offset,
  as many as fit in ``max_bytes`` (the first one even if it alone does not), none starting at
  or past ``upto``; offsets outside [log start, log end] are refused;
* ``offset_for_timestamp`` is the first offset at or after the log start whose record
  timestamp reaches the target; ``end_offset_for_epoch`` follows the leader-epoch history
  (leader_epochs.py): an epoch starts at its first batch, truncation drops epochs that start
  at or past the cut, retention moves the first epoch's start to the new log start;
* retention deletes whole segments, oldest first, by age and size, never the active segment
  and never one holding offsets at or past the high watermark; truncation removes whole
  batches;
* durability: every fsync the design promises is made (an FsyncTracker watches os.fsync and
  os.fdatasync, so durability is observed, not assumed), and ``durable_offset`` never claims
  a byte that was not fsynced;
* crashes: after ``close(sync=False)`` (kill -9: no final fsync), optionally a power loss (every
  segment file cut back to a length between its last fsynced length and its current length,
  garbage in the part never fsynced, an active segment that held nothing durable removed),
  and the RocksDB index as the kill left it (a copy of its directory taken while it was open:
  it has no WAL), lost, or complete, the reopened log holds exactly a prefix of the model's
  batches that contains every batch that was durable and every batch left intact on disk.

What the model expects to be fsynced, per segment file (read off log.py; the tracker checks
it): sync() makes every file durable at its current size; roll(), also the automatic roll
inside an append, fsyncs the sealed segment whole, so every sealed segment is durable whole
and its successor starts durable at length 0; truncate_to() syncs, then fsyncs the cut (and
does nothing at all when cutting at the log end); retention deletes sealed segments only and
fsyncs nothing else; opening a log fsyncs the recovered tail, so after a reopen everything
present is durable.

The fixed programs at the end replay, with the same model and checks, crash scenarios the
machine found or can reach only rarely; they run in a second.
"""

from __future__ import annotations

import collections
import gc
import hashlib
import os
import random
import shutil
import stat
import struct
import tempfile
from dataclasses import dataclass, field
from typing import Iterator

import pytest
from hypothesis import HealthCheck, Phase, currently_in_test_context, settings
from hypothesis import event as _hypothesis_event
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from kolk.segments.batch import parse_header
from kolk.segments.compaction import KEY_MAP_ENTRY_BYTES, CompactionPolicy, EraseSpec
from kolk.segments.records import encode_batch, encode_section
from kolk.segments import (
    BatchTooLargeError,
    InvalidBatchError,
    LogConfig,
    LogStore,
    OffsetOutOfRangeError,
    TruncatedBatchError,
    build_batch,
    decode_records,
    validate_batch,
)
from kolk.segments.index_db import COLUMN_FAMILIES, IndexDb

from crash_copy import copy_live_directory

LOG_NAME = "orders-0"
# Record timestamps follow a producer clock that starts at T0 and moves forward between
# appends; each record is stamped near it, a little behind or ahead (out of order).
T0 = 1_700_000_000_000
TS_JITTER = (-100, 300)
EPOCH_MAX = 2**31 - 1
APPEND_BYTES_MAX = 16 << 10
# The 16 bytes append rewrites at the start of each batch: base_offset i64, batch_length i32
# (kept), leader_epoch i32 (docs/format.md). They are outside the CRC.
HEAD = struct.Struct("<qii")
EPOCH_FIELD = (12, 16)  # byte range of leader_epoch inside a batch

Headers = tuple[tuple[str, bytes | None], ...]
ModelRecord = tuple[int, bytes | None, bytes | None, Headers]  # timestamp, key, value, headers


# How often each interesting situation came up, printed at the end (pytest -s) so that a
# reader can see the faults were really exercised.
COVERAGE: collections.Counter[str] = collections.Counter()


def event(what: str) -> None:
    COVERAGE[what] += 1
    if currently_in_test_context():
        _hypothesis_event(what)


# ------------------------------------------------------------------------------------ model


@dataclass
class MBatch:
    base: int
    epoch: int
    records: list[ModelRecord]
    raw: bytes  # the bytes the log must hold: as built, with the head rewritten
    # After compaction: the offsets of the records left, and the header fields a rewritten
    # batch keeps (its offset range and max timestamp).
    offsets: list[int] | None = None
    last_delta: int | None = None
    header_max_ts: int | None = None

    @property
    def size(self) -> int:
        return len(self.raw)

    @property
    def next_offset(self) -> int:
        return self.base + (len(self.records) - 1 if self.last_delta is None else self.last_delta) + 1

    @property
    def max_ts(self) -> int:
        return max(r[0] for r in self.records) if self.header_max_ts is None else self.header_max_ts

    def offset_records(self) -> list[tuple[int, ModelRecord]]:
        offsets = self.offsets if self.offsets is not None else range(self.base, self.base + len(self.records))
        return list(zip(offsets, self.records))


@dataclass
class MSegment:
    base: int
    created_ms: int
    batches: list[MBatch] = field(default_factory=list)
    durable: int = 0  # bytes of the file the design says were fsynced (the tracker checks)
    sealed_end: int | None = None  # a sealed segment ends where its successor begins (gaps)

    @property
    def size(self) -> int:
        return sum(b.size for b in self.batches)

    @property
    def next_offset(self) -> int:
        if self.sealed_end is not None:
            return self.sealed_end
        return self.batches[-1].next_offset if self.batches else self.base

    @property
    def max_ts(self) -> int:
        return max((b.max_ts for b in self.batches), default=-1)

    @property
    def name(self) -> str:
        return f"{self.base:020d}.log"

    def with_positions(self) -> Iterator[tuple[int, MBatch]]:
        pos = 0
        for b in self.batches:
            yield pos, b
            pos += b.size


class Model:
    """The log as lists: segments of batches of records, and the partition's counters."""

    def __init__(self, config: LogConfig, now: int) -> None:
        self.config = config
        self.segments = [MSegment(0, now)]
        self.log_start = 0
        self.hw = 0
        self.epochs: list[tuple[int, int]] = []  # (epoch, start offset), both increasing
        self.cut: list[MBatch] = []  # the batches the last truncate_to removed
        self.cleaned = 0  # the cleaner's persisted cleaned offset (compaction)
        self.due = -1  # ... and when a kept tombstone may next go
        self.compacted = False  # a pass removed records: epochs may start inside gaps

    # -------------------------------------------------------------- views

    @property
    def leo(self) -> int:
        return self.segments[-1].next_offset

    def batches(self) -> list[MBatch]:
        return [b for s in self.segments for b in s.batches]

    def visible(self) -> list[MBatch]:
        """The batches a read from the log start returns (the first may begin below it)."""
        return [b for b in self.batches() if b.next_offset > self.log_start]

    def records(self) -> Iterator[tuple[int, ModelRecord]]:
        for b in self.batches():
            for offset, r in b.offset_records():
                if offset >= self.log_start:
                    yield offset, r

    def batches_from(self, offset: int) -> list[MBatch]:
        """The batch holding ``offset`` (or the first after it, in a gap) and every later one."""
        bs = self.batches()
        for i, b in enumerate(bs):
            if offset < b.next_offset:
                return bs[i:]
        return []

    def durable_offset(self, lengths: list[int]) -> int:
        """Every offset below this lies in the first ``lengths[i]`` bytes of segment i."""
        d = self.log_start
        for seg, length in zip(self.segments, lengths):
            for pos, b in seg.with_positions():
                if pos + b.size > length:
                    return d
                d = max(d, b.next_offset)
            if seg.sealed_end is not None:
                d = max(d, seg.sealed_end)  # a gap the cleaner left at the end of a sealed segment
        return d

    def end_offset_for(self, epoch: int) -> tuple[int, int]:
        """leader_epochs.py: the largest epoch <= ``epoch`` and where it ended; the latest epoch
        ends at the log end; an epoch older than the history gives (-1, -1)."""
        older = [i for i, (e, _) in enumerate(self.epochs) if e <= epoch]
        if not older:
            return (-1, -1)
        i = older[-1]
        end = self.epochs[i + 1][1] if i + 1 < len(self.epochs) else self.leo
        return (self.epochs[i][0], end)

    def epochs_from_batches(self) -> list[tuple[int, int]]:
        """The history as the batch headers tell it: an epoch starts at its first batch."""
        out: list[tuple[int, int]] = []
        for b in self.batches():
            if b.epoch > (out[-1][0] if out else -1):
                out.append((b.epoch, b.base))
        return out

    # -------------------------------------------------------------- operations

    def append(self, built: list[bytes], records: list[list[ModelRecord]], epoch: int, now: int) -> None:
        nbytes = sum(len(b) for b in built)
        active = self.segments[-1]
        if active.size > 0 and (active.size + nbytes > self.config.segment_bytes
                                or now - active.created_ms >= self.config.segment_ms):
            event("append rolled a full segment" if active.size + nbytes > self.config.segment_bytes
                  else "append rolled an old segment")
            self.roll(now)
            active = self.segments[-1]
        for raw, recs in zip(built, records):
            base = self.leo
            stored = HEAD.pack(base, len(raw) - 12, epoch) + raw[HEAD.size:]
            active.batches.append(MBatch(base, epoch, recs, stored))
            if self.epochs and self.epochs[-1][0] == epoch:
                continue
            if self.epochs and self.epochs[-1][1] == base:
                self.epochs.pop()  # the previous epoch wrote nothing: replaced
            self.epochs.append((epoch, base))

    def roll(self, now: int) -> None:
        active = self.segments[-1]
        if active.size == 0:
            return
        active.durable = active.size
        active.sealed_end = active.next_offset
        self.segments.append(MSegment(active.next_offset, now))

    def sync(self) -> None:
        for seg in self.segments:
            seg.durable = seg.size

    def truncate_to(self, offset: int, now: int = 0) -> None:
        """Remove every batch holding an offset >= ``offset`` (whole batches only)."""
        if offset == self.leo:
            return  # nothing to cut, and nothing is synced either
        self.sync()
        found = None
        for si, seg in enumerate(self.segments):
            cut = [bi for bi, b in enumerate(seg.batches) if b.next_offset > offset]
            if cut:
                found = (si, cut[0])
                break
        if found is None:
            # ``offset`` lies in a gap that ends the log: it ends after the last batch.
            holders = [si for si, seg in enumerate(self.segments) if seg.batches]
            si = holders[-1] if holders else 0
            found = (si, len(self.segments[si].batches))
        si, bi = found
        seg = self.segments[si]
        self.cut = seg.batches[bi:] + [b for later in self.segments[si + 1:] for b in later.batches]
        del self.segments[si + 1:]
        del seg.batches[bi:]
        seg.sealed_end = None
        if bi == 0 and si > 0:
            del self.segments[si]  # the cut is at the start of a segment: that file goes
            self.segments[-1].sealed_end = None
        self.sync()
        self.epochs = [(e, s) for e, s in self.epochs if s < self.leo]
        self.hw = min(self.hw, self.leo)
        if self.leo < self.log_start:
            # The cut batch held the log start (moved inside it): the log is reset, empty,
            # at its log start (log.py truncate_to, reset_to).
            event("truncate_to reset a log whose start was inside the cut batch")
            self.segments = [MSegment(self.log_start, now)]
            self.hw = self.log_start
            self.epochs = []
            self.cleaned, self.due = 0, -1

    def advance_log_start(self, offset: int) -> list[int]:
        """log.py: the start moves up to min(offset, log end); segments wholly below it go
        (never the active one); epochs are cut at it as by retention."""
        new_start = min(offset, self.leo)
        if new_start <= self.log_start:
            return []
        count = 0
        while count < len(self.segments) - 1 and self.segments[count + 1].base <= new_start:
            count += 1
        deleted = [s.base for s in self.segments[:count]]
        del self.segments[:count]
        self.log_start = new_start
        self.hw = max(self.hw, new_start)
        self.trim_epochs()
        return deleted

    def compact(self, *, now: int, lag_ms: int, delete_retention_ms: int, capacity: int,
                erase: tuple[bytes, int] | None) -> None:
        """One cleaner pass (docs/format.md, Compaction), written out plainly: the map over
        the dirty range, then every record below its end kept or dropped, batches re-encoded
        with their header fields, emptied batches dropped, emptied segments left empty."""
        count = 0
        for seg in self.segments[:-1]:
            if seg.next_offset > self.hw or seg.max_ts > now - lag_ms:
                break
            count += 1
        planned = count
        if erase is not None:
            n = 0
            while (n < len(self.segments) - 1 and self.segments[n].next_offset <= self.hw
                   and self.segments[n].base <= erase[1]):
                n += 1
            planned = max(planned, n)
        cleaned = max(self.cleaned, self.log_start)
        end = max(self.segments[count - 1].next_offset if count else cleaned, cleaned)
        if planned == 0 or (erase is None and cleaned >= end and not 0 <= self.due <= now):
            return
        newest: dict[bytes, int] = {}
        map_end = end
        for o, r in (x for seg in self.segments[:count] for b in seg.batches for x in b.offset_records()):
            key = r[1]
            if key is None or not cleaned <= o < end:
                continue
            if key not in newest and len(newest) >= capacity:
                map_end = o
                break
            newest[key] = o
        due = -1
        for seg in self.segments[:planned]:
            if not (seg.base < map_end or (erase is not None and seg.base <= erase[1])):
                continue
            kept_batches = []
            for b in seg.batches:
                kept = []
                for o, (ts, key, value, headers) in b.offset_records():
                    if erase is not None and key is not None and o <= erase[1] and hashlib.sha256(key).digest() == erase[0]:
                        continue
                    if key is not None and o < map_end:
                        if o < newest.get(key, -1):
                            continue
                        if value is None and o < cleaned and ts + delete_retention_ms <= now:
                            continue
                        if value is None:
                            due = ts + delete_retention_ms if due < 0 else min(due, ts + delete_retention_ms)
                    kept.append((o, (ts, key, value, headers)))
                if len(kept) == len(b.records):
                    kept_batches.append(b)
                elif kept:
                    h = parse_header(b.raw)
                    section = encode_section([(o - b.base, r[0] - h.first_timestamp, r[1], r[2], r[3]) for o, r in kept])
                    raw = encode_batch(section, len(kept), first_timestamp=h.first_timestamp,
                                       max_timestamp=h.max_timestamp, base_offset=b.base, leader_epoch=b.epoch,
                                       last_offset_delta=h.last_offset_delta)
                    kept_batches.append(MBatch(b.base, b.epoch, [r for _, r in kept], raw, [o for o, _ in kept],
                                               h.last_offset_delta, h.max_timestamp))
                    event("compaction rewrote a batch")
                else:
                    event("compaction removed a batch")
            if len(kept_batches) != len(seg.batches) or any(x is not y for x, y in zip(kept_batches, seg.batches)):
                self.compacted = True
                seg.batches = kept_batches
                seg.durable = seg.size
                if not kept_batches:
                    event("compaction emptied a segment")
        self.cleaned = max(cleaned, map_end)
        self.due = due

    def trim_epochs(self) -> None:
        while len(self.epochs) > 1 and self.epochs[1][1] <= self.log_start:
            self.epochs.pop(0)
        if self.epochs and self.epochs[0][1] < self.log_start:
            self.epochs[0] = (self.epochs[0][0], self.log_start)

    def enforce_retention(self, now: int) -> list[int]:
        """config.py: delete the oldest segments while the log is larger than retention_bytes
        or their newest record is older than retention_ms; never the active one, never one
        holding offsets at or past the high watermark."""
        total = sum(s.size for s in self.segments)
        count = 0
        for seg in self.segments[:-1]:
            if seg.next_offset > self.hw:
                break
            too_old = self.config.retention_ms >= 0 and (seg.size == 0 or seg.max_ts >= 0
                                                         and now - seg.max_ts > self.config.retention_ms)
            too_big = self.config.retention_bytes >= 0 and total - seg.size >= self.config.retention_bytes
            if not (too_old or too_big):
                break
            total -= seg.size
            count += 1
        deleted = [s.base for s in self.segments[:count]]
        if count:
            del self.segments[:count]
            self.log_start = self.segments[0].base
            self.hw = max(self.hw, self.log_start)
            self.trim_epochs()
        return deleted

    def reopened(self, now: int) -> None:
        """Opening makes everything present durable and starts every segment's age anew; the
        high watermark checkpoint is capped by the log end, epochs past the end are dropped,
        and segments wholly below the log start (a start moved before a roll) are deleted."""
        while len(self.segments) > 1 and self.segments[1].base <= self.log_start:
            event("reopen deleted a segment below the log start")
            del self.segments[0]
        for seg in self.segments:
            seg.durable = seg.size
            seg.created_ms = now
        self.hw = max(self.log_start, min(self.hw, self.leo))
        self.epochs = [(e, s) for e, s in self.epochs if s < self.leo]


# ------------------------------------------------------------------------------------ helpers


def split_batches(data: bytes, batch_bytes_max: int) -> list:
    """The headers of the whole, CRC-valid, offset-contiguous batches that ``data`` consists of."""
    headers = []
    pos = 0
    while pos < len(data):
        h = validate_batch(data, pos, batch_bytes_max)
        if headers:
            assert h.base_offset >= headers[-1].next_offset, "offsets in a read go back"
        headers.append(h)
        pos += h.size
    assert pos == len(data), "a read returned part of a batch"
    return headers


def decoded(data: bytes, batch_bytes_max: int) -> list[tuple]:
    out = []
    pos = 0
    for h in split_batches(data, batch_bytes_max):
        out.extend(tuple(r) for r in decode_records(data, pos))
        pos += h.size
    return out


class FsyncTracker:
    """Watches os.fsync / os.fdatasync: the size each file had when it was last fsynced.

    This is what a power loss cannot take away, observed rather than inferred: the crash rule
    cuts files back to these lengths, and the engine's ``durable_offset`` must not claim more.
    A file unlinked is forgotten, so that a segment created again under the same name starts
    from nothing.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.durable: dict[str, int] = {}
        real_fsync, real_fdatasync, real_unlink = os.fsync, os.fdatasync, os.unlink

        def note(fd: int) -> None:
            st_ = os.fstat(fd)
            if stat.S_ISREG(st_.st_mode):
                self.durable[os.readlink(f"/proc/self/fd/{fd}")] = st_.st_size

        def fsync(fd) -> None:  # type: ignore[no-untyped-def]
            fd = fd if isinstance(fd, int) else fd.fileno()
            real_fsync(fd)
            note(fd)

        def fdatasync(fd) -> None:  # type: ignore[no-untyped-def]
            fd = fd if isinstance(fd, int) else fd.fileno()
            real_fdatasync(fd)
            note(fd)

        def unlink(path, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
            self.durable.pop(os.path.realpath(path), None)
            real_unlink(path, *args, **kwargs)

        real_rename = os.rename

        def rename(src, dst, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
            # The cleaner renames a fsynced .cleaned file over a segment: its durable length
            # goes with it (and the old segment's goes).
            moved = self.durable.pop(os.path.realpath(src), None)
            real_rename(src, dst, *args, **kwargs)
            self.durable.pop(os.path.realpath(dst), None)
            if moved is not None:
                self.durable[os.path.realpath(dst)] = moved

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "fdatasync", fdatasync)
        monkeypatch.setattr(os, "unlink", unlink)
        monkeypatch.setattr(os, "rename", rename)

    def length(self, path: str) -> int:
        return self.durable.get(os.path.realpath(path), 0)




def filler(size: int, seed: int) -> bytes:
    """Bytes for large values, made from a seed: hypothesis stops a program early once it has
    drawn too many bytes, so big values are not drawn byte by byte."""
    return random.Random(seed).randbytes(size)


names = st.text(alphabet="abkz-é", max_size=6)
small_records = st.lists(
    st.tuples(
        st.none() | st.binary(max_size=16),
        st.none() | st.binary(max_size=40),
        st.lists(st.tuples(names, st.none() | st.binary(max_size=16)), max_size=2).map(tuple),
        st.integers(*TS_JITTER),
    ),
    min_size=1,
    max_size=5,
)
bulk_records = st.lists(
    st.tuples(st.none() | st.binary(max_size=8), st.builds(filler, st.integers(200, 600), st.integers(0, 2**32)),
              st.just(()), st.integers(*TS_JITTER)),
    min_size=1,
    max_size=3,
)
epoch_bumps = st.sampled_from([0, 0, 0, 0, 1, 2])
# Records of a compacted topic: a few keys written again and again, tombstones among them.
keyed_records = st.lists(
    st.tuples(st.sampled_from([b"a", b"b", b"c", b"d", b"e"]), st.none() | st.binary(max_size=8), st.just(()),
              st.integers(*TS_JITTER)),
    min_size=1,
    max_size=4,
)


# ------------------------------------------------------------------------------------ machine


class LogMachine(RuleBasedStateMachine):
    def __init__(self, base_dir: str, fsyncs: FsyncTracker) -> None:
        super().__init__()
        self.base_dir = base_dir
        self.fsyncs = fsyncs
        self.dir: str | None = None
        self.store: LogStore | None = None
        self.now = T0  # the store's clock (segment ages), moved by advance_clock
        self.producer_ms = T0  # the clock records are stamped by
        self.epoch = 0  # the leader epoch appends use; never goes down
        self.checks = 0
        self.most_segments = 0

    def clock(self) -> int:
        return self.now

    def _open(self) -> None:
        assert self.dir is not None
        self.store = LogStore(self.dir, clock=self.clock)
        self.log = self.store.open_log(LOG_NAME, self.config)

    def path(self, seg: MSegment) -> str:
        return os.path.join(self.dir, "logs", LOG_NAME, seg.name)

    def teardown(self) -> None:
        if self.dir is not None:
            n = self.most_segments
            event(f"most segments at once: {'1' if n == 1 else '2-3' if n < 4 else '4+'}")
        if self.store is not None:
            self.store.close(sync=False)
            self.store = None
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)

    @initialize(
        segment_bytes=st.sampled_from([4096, 4096, 6144, 16384]),
        batch_bytes_max=st.sampled_from([2048, 3000, 4096]),
        read_extra=st.integers(0, 4096),
        window_extra=st.integers(0, 2048),
        segment_ms=st.integers(2_000, 60_000),
        retention_bytes=st.sampled_from([-1, 6_000, 12_000, 30_000]),
        retention_ms=st.sampled_from([-1, 2_000, 5_000]),
    )
    def open_store(self, segment_bytes: int, batch_bytes_max: int, read_extra: int, window_extra: int,
                   segment_ms: int, retention_bytes: int, retention_ms: int) -> None:
        self.config = LogConfig(
            segment_bytes=segment_bytes,
            segment_ms=segment_ms,
            retention_bytes=retention_bytes,
            retention_ms=retention_ms,
            batch_bytes_max=batch_bytes_max,
            append_bytes_max=APPEND_BYTES_MAX,
            read_bytes_max=batch_bytes_max + read_extra,
            scan_window_bytes=batch_bytes_max + window_extra,
        )
        # IndexDb.close() runs gc.collect() (to let go of RocksDB's lock), which costs time in
        # proportion to every object alive, and hypothesis keeps many. Freezing what exists
        # now (no store is open) spares every restart from walking them again.
        gc.freeze()
        self.dir = tempfile.mkdtemp(prefix="log-", dir=self.base_dir)
        self.model = Model(self.config, self.now)
        self._open()

    # -------------------------------------------------------------- appends

    def _append(self, batches: list, bump: int, later_ms: int) -> None:
        self.epoch = min(self.epoch + bump, EPOCH_MAX)
        self.producer_ms += later_ms
        built, records = [], []
        for recs in batches:
            ts = [self.producer_ms + r[3] for r in recs]
            raw = build_batch([(k, v, h) for k, v, h, _ in recs], timestamps=ts)
            assert len(raw) <= self.config.batch_bytes_max
            built.append(raw)
            records.append([(t, k, v, h) for (k, v, h, _), t in zip(recs, ts)])
        leo = self.log.log_end_offset
        info = self.log.append(b"".join(built), leader_epoch=self.epoch)
        self.model.append(built, records, self.epoch, self.now)
        assert info.base_offset == leo, "append must assign offsets from the log end offset"
        assert (info.base_offset, info.last_offset, info.max_timestamp) == (
            leo, self.model.leo - 1, max(r[0] for recs in records for r in recs))

    @rule(batches=st.lists(small_records, min_size=1, max_size=4), bump=epoch_bumps, later_ms=st.integers(0, 500))
    def append(self, batches: list, bump: int, later_ms: int) -> None:
        self._append(batches, bump, later_ms)

    @rule(batches=st.lists(bulk_records, min_size=2, max_size=6), bump=epoch_bumps, later_ms=st.integers(0, 500))
    def append_bulk(self, batches: list, bump: int, later_ms: int) -> None:
        self._append(batches, bump, later_ms)

    @rule(batches=st.lists(keyed_records, min_size=1, max_size=3), bump=epoch_bumps, later_ms=st.integers(0, 500))
    def append_keyed(self, batches: list, bump: int, later_ms: int) -> None:
        self._append(batches, bump, later_ms)

    @rule(data=st.data(), kind=st.sampled_from(["corrupt", "truncated", "empty", "batch_too_large",
                                                 "append_too_large", "stale_epoch"]))
    def append_rejected(self, data: st.DataObject, kind: str) -> None:
        """A bad batch anywhere in an append rejects the whole call and changes nothing."""
        good = [build_batch([(b"k", b"v" * i)], timestamps=[T0 + i]) for i in range(data.draw(st.integers(1, 4)))]
        epoch = self.epoch
        error: type[Exception] = InvalidBatchError
        if kind == "corrupt":
            i = data.draw(st.integers(0, len(good) - 1))
            b = bytearray(good[i])
            b[data.draw(st.integers(21, len(b) - 1))] ^= data.draw(st.integers(1, 255))
            good[i] = bytes(b)
            payload = b"".join(good)
        elif kind == "truncated":
            error = TruncatedBatchError
            payload = b"".join(good)
            payload = payload[: len(payload) - data.draw(st.integers(1, len(good[-1]) - 1))]
        elif kind == "empty":
            payload = b""
        elif kind == "batch_too_large":
            error = BatchTooLargeError
            big = build_batch([(None, b"x" * self.config.batch_bytes_max)], timestamps=[T0])
            good.insert(data.draw(st.integers(0, len(good))), big)
            payload = b"".join(good)
        elif kind == "append_too_large":
            error = BatchTooLargeError
            one = build_batch([(None, b"y" * 1000)], timestamps=[T0])
            payload = one * (APPEND_BYTES_MAX // len(one) + 1)
        else:
            latest = self.model.epochs[-1][0] if self.model.epochs else -1
            if latest <= 0:
                return
            epoch = data.draw(st.integers(0, latest - 1))
            payload = b"".join(good)
        before = (self.log.segments(), [os.path.getsize(self.path(s)) for s in self.model.segments])
        with pytest.raises(error):
            self.log.append(payload, leader_epoch=epoch)
        after = (self.log.segments(), [os.path.getsize(self.path(s)) for s in self.model.segments])
        assert before == after, f"a rejected append ({kind}) changed the log"

    # -------------------------------------------------------------- reads

    @rule(data=st.data())
    def read(self, data: st.DataObject) -> None:
        """A read from a random offset returns whole batches from the one holding it."""
        m = self.model
        offset = data.draw(st.integers(m.log_start, m.leo), label="offset")
        max_bytes = data.draw(st.integers(1, 3 * self.config.batch_bytes_max), label="max_bytes")
        upto = data.draw(st.none() | st.integers(m.log_start, m.leo + 3), label="upto")
        self.check_read(offset, max_bytes, upto)

    def check_read(self, offset: int, max_bytes: int, upto: int | None) -> None:
        m = self.model
        r = self.log.read(offset, max_bytes, upto)
        assert (r.high_watermark, r.log_start_offset, r.log_end_offset) == (m.hw, m.log_start, m.leo)
        assert b"".join(region.read() for region in r.regions) == r.data, "file regions differ from data"
        end = m.leo if upto is None else min(upto, m.leo)
        if offset >= end:
            assert r.data == b"" and r.next_offset == offset
            return
        headers = split_batches(r.data, self.config.batch_bytes_max)
        later = m.batches_from(offset)
        if not later or later[0].base >= end:
            # [offset, end) is a gap (compaction): nothing, and the next read starts at end.
            assert r.data == b"" and r.next_offset == end, f"read({offset}) in a gap up to {end}"
            return
        assert headers, f"read({offset}) below the end {end} returned nothing"
        got = later[: len(headers)]
        assert offset < headers[0].next_offset, "first batch ends before offset"
        assert headers[0].base_offset <= offset or headers[0].base_offset == later[0].base, (
            "a read in a gap must start at the next batch")
        assert r.data == b"".join(b.raw for b in got), "read returned other bytes than were appended"
        assert all(b.base < end for b in got), "read returned a batch starting at or past upto"
        assert r.next_offset == got[-1].next_offset
        cap = min(max_bytes, self.config.read_bytes_max)
        if len(got) > 1:
            assert len(r.data) <= cap, "read passed max_bytes with more than one batch"
        if r.next_offset < end:
            assert len(r.data) + later[len(got)].size > cap, "read stopped before max_bytes was reached"
        recs = {rec.offset: rec for rec in decode_records(r.data, 0)}
        want = dict(m.records())
        first = min((o for o in want if o >= offset), default=None)
        if first is not None and first in recs:
            rec = recs[first]
            assert (rec.timestamp, rec.key, rec.value, rec.headers) == want[first]

    @rule(data=st.data())
    def out_of_range(self, data: st.DataObject) -> None:
        """Offsets outside [log start, log end] are refused, by reads and by the high watermark."""
        m = self.model
        below = [m.log_start - 1] if m.log_start > 0 else []
        offset = data.draw(st.sampled_from(below + [m.leo + 1, m.leo + 1000]))
        with pytest.raises(OffsetOutOfRangeError):
            self.log.read(offset, 1000)
        with pytest.raises(OffsetOutOfRangeError):
            self.log.set_high_watermark(offset)
        with pytest.raises(OffsetOutOfRangeError):
            self.log.truncate_to(offset)

    @rule(data=st.data())
    def offset_for_timestamp(self, data: st.DataObject) -> None:
        """The first offset >= the log start whose record timestamp is >= t (brute force)."""
        stamps = [r[0] for _, r in self.model.records()]
        near = st.sampled_from(stamps).flatmap(lambda t: st.integers(t - 1, t + 1)) if stamps else st.nothing()
        t = data.draw(near | st.integers(T0 - 200, self.producer_ms + 400), label="timestamp")
        expected = next((off for off, r in self.model.records() if r[0] >= t), None)
        assert self.log.offset_for_timestamp(t) == expected

    # -------------------------------------------------------------- segments and durability

    @rule()
    def roll(self) -> None:
        self.log.roll()
        self.model.roll(self.now)

    @rule()
    def sync(self) -> None:
        durable = self.log.sync()
        self.model.sync()
        assert durable == self.model.leo, "sync() must make everything appended durable"

    @rule(ms=st.integers(0, 20_000))
    def advance_clock(self, ms: int) -> None:
        self.now += ms

    @rule()
    def rocksdb_flushes_memtables(self) -> None:
        """RocksDB writes its memtables to SST files on its own whenever they fill up; then a
        kill -9 leaves the index as of this moment instead of an older one. (The compaction
        that may follow is run here, to the end, so that no background work is left.)"""
        assert self.store is not None
        for column_family in self.store.index.cf.values():
            column_family.flush()
            column_family.compact_range(None, None)

    @rule(data=st.data())
    def truncate_to(self, data: st.DataObject) -> None:
        self._truncate(data)

    def _truncate(self, data: st.DataObject) -> int:
        m = self.model
        # Mostly a few offsets back, as when a new leader cuts what the old one did not commit.
        offset = data.draw(st.integers(max(m.log_start, m.leo - 3), m.leo)
                           | st.integers(max(m.log_start, m.leo - 12), m.leo)
                           | st.integers(m.log_start, m.leo), label="truncate_to")
        event("truncate_to dropped a segment" if any(s.base >= offset and s.base > m.log_start
                                                      for s in m.segments) else "truncate_to within a segment")
        new_end = self.log.truncate_to(offset)
        m.truncate_to(offset, self.now)
        assert new_end == m.leo <= offset
        return offset

    @rule(data=st.data(), batches=st.lists(small_records, min_size=1, max_size=4), later_ms=st.integers(1, 5_000),
          same_sizes=st.booleans())
    def new_leader(self, data: st.DataObject, batches: list, later_ms: int, same_sizes: bool) -> None:
        """A new leader (next epoch) cuts what its predecessor did not commit and appends in
        its place: bytes of the active segment are overwritten with other batches. With
        ``same_sizes`` its batches are as large as the ones cut (producers of fixed-size
        records), only later and of the new epoch, so they sit at the very same positions."""
        leo = self.model.leo
        offset = self._truncate(data)
        if same_sizes and offset < leo and sum(b.size for b in self.model.cut) <= APPEND_BYTES_MAX:
            batches = [[(k, v, h, 0) for _, k, v, h in b.records] for b in self.model.cut]
        self._append(batches, 1, later_ms)

    @rule(data=st.data())
    def set_high_watermark(self, data: st.DataObject) -> None:
        m = self.model
        m.hw = data.draw(st.integers(m.log_start, m.leo), label="high_watermark")
        self.log.set_high_watermark(m.hw)

    @rule(data=st.data())
    def retention(self, data: st.DataObject) -> None:
        m = self.model
        m.hw = data.draw(st.just(m.leo) | st.integers(m.log_start, m.leo), label="high_watermark")
        self.log.set_high_watermark(m.hw)
        now = data.draw(st.integers(T0, self.producer_ms + 10_000), label="now_ms")
        deleted = self.log.enforce_retention(now_ms=now)
        assert deleted == m.enforce_retention(now)
        event(f"retention deleted {min(len(deleted), 2)}{'+' if len(deleted) >= 2 else ''} segments")

    @rule(data=st.data())
    def advance_log_start(self, data: st.DataObject) -> None:
        """A follower learns its leader's log start: anywhere, inside a batch too."""
        m = self.model
        offset = data.draw(st.integers(max(0, m.log_start - 2), m.leo + 3), label="advance_log_start")
        deleted = self.log.advance_log_start(offset)
        assert deleted == m.advance_log_start(offset)
        event("advance_log_start moved inside a segment" if m.log_start > m.segments[0].base
              else "advance_log_start moved" if deleted else "advance_log_start did nothing")

    @rule(data=st.data(), lag_ms=st.sampled_from([0, 0, 2_000, 10**9]),
          delete_retention_ms=st.sampled_from([0, 0, 1_000, 10**9]), capacity=st.sampled_from([1, 2, 3, 1_000]))
    def compact(self, data: st.DataObject, lag_ms: int, delete_retention_ms: int, capacity: int) -> None:
        """One cleaner pass (in process), maybe with an erasure of one key; the active
        segment is often rolled first, as the SPU does before an erasure."""
        m = self.model
        if data.draw(st.booleans(), label="roll first"):
            self.roll()
        m.hw = data.draw(st.just(m.leo) | st.integers(m.log_start, m.leo), label="high_watermark")
        self.log.set_high_watermark(m.hw)
        now = data.draw(st.integers(T0, self.producer_ms + 10_000), label="now_ms")
        keys = sorted({r[1] for _, r in m.records() if r[1] is not None})
        erase = None
        if keys and data.draw(st.booleans(), label="erase"):
            key = data.draw(st.sampled_from(keys), label="erase key")
            erase = (hashlib.sha256(key).digest(), data.draw(st.integers(m.log_start, m.leo), label="erase upto"))
        policy = CompactionPolicy(delete_retention_ms=delete_retention_ms, min_compaction_lag_ms=lag_ms,
                                  key_map_bytes=capacity * KEY_MAP_ENTRY_BYTES)
        stats = self.log.clean(policy, now, None if erase is None else EraseSpec(*erase))
        m.compact(now=now, lag_ms=lag_ms, delete_retention_ms=delete_retention_ms, capacity=capacity, erase=erase)
        assert self.log.cleaned_offset == max(m.cleaned, m.log_start)
        if erase is not None:
            # Erased in sealed segments below the high watermark; what is left is the model's.
            assert self.log.holds_key(*erase) == any(
                o <= erase[1] and r[1] is not None and hashlib.sha256(r[1]).digest() == erase[0]
                for b in m.visible() for o, r in b.offset_records())
        event(f"compaction swapped {min(stats.segments_swapped, 2)}{'+' if stats.segments_swapped >= 2 else ''} segments")

    @rule()
    def reopen(self) -> None:
        """A clean close (which fsyncs) and open: nothing changes but segment ages."""
        assert self.store is not None
        self.store.close()
        self._open()
        self.model.reopened(self.now)
        assert self.log.durable_offset == self.model.leo

    @rule(data=st.data())
    def crash(self, data: st.DataObject) -> None:
        """kill -9 (no final fsync), maybe a power loss, then open: a durable prefix survives."""
        assert self.store is not None
        m = self.model
        durable_before = self.log.durable_offset
        # The index runs without a write-ahead log (index_db.py): what a kill -9 leaves of it
        # is what RocksDB had written to its files by then, a copy of the directory now.
        index_dir = os.path.join(self.dir, "index")
        killed_index = os.path.join(self.dir, "index.after-kill")
        copy_live_directory(index_dir, killed_index)
        self.store.close(sync=False)
        self.store = None

        # A kill -9 alone leaves every byte written. A power loss too: then each file keeps a
        # length between its fsynced and its current length, and the part that was never
        # fsynced may hold garbage.
        power_loss = data.draw(st.booleans(), label="power loss")
        kept: dict[int, tuple[int, dict[int, int]]] = {}
        for seg in m.segments:
            path = self.path(seg)
            size = os.path.getsize(path)
            durable = min(self.fsyncs.length(path), size)
            assert size == seg.size and seg.durable <= durable
            length = size
            if power_loss and durable < size:
                length = data.draw(st.sampled_from([size, durable]) | st.integers(durable, size),
                                   label=f"length of {seg.name}")
                event("crash: a segment lost its unsynced tail" if length == durable else
                      "crash: a segment kept all its unsynced bytes" if length == size else
                      "crash: a segment was cut inside its unsynced part")
            flips: dict[int, int] = {}
            if power_loss and length > durable and data.draw(st.booleans(), label="garbage"):
                where = st.lists(st.integers(durable, length - 1), min_size=1, max_size=3, unique=True)
                for p in data.draw(where, label="garbage at"):
                    flips[p] = data.draw(st.integers(1, 255), label="xor")
                event("crash: garbage in unsynced bytes")
            os.truncate(path, length)
            if flips:
                with open(path, "r+b") as f:
                    for p, mask in flips.items():
                        f.seek(p)
                        b = f.read(1)[0]
                        f.seek(p)
                        f.write(bytes([b ^ mask]))
            kept[seg.base] = (length, flips)
        # An active segment created after the last fsync that reached into it holds nothing
        # durable; drop its file. (roll() fsyncs the directory, so a real power loss would keep
        # an empty file; this is stricter.) The first segment stays: it carries the log start.
        survivors = list(m.segments)
        if power_loss and len(survivors) > 1 and survivors[-1].durable == 0 and data.draw(st.booleans(), label="drop file"):
            os.unlink(self.path(survivors.pop()))
            event("crash: the active segment's file was lost")
            survivors[-1].sealed_end = None  # the last file is scanned to its last batch
        # The index: as the kill left it, lost entirely, or complete (RocksDB may flush its
        # memtables at any moment, just before the crash too).
        index_state = data.draw(st.sampled_from(["as killed", "as killed", "lost", "complete"]), label="index")
        event(f"crash: the index was {index_state}")
        if index_state != "complete":
            shutil.rmtree(index_dir)
        if index_state == "as killed":
            os.rename(killed_index, index_dir)
        else:
            shutil.rmtree(killed_index)

        # The batches the power loss left untouched must all survive, and batches whose only
        # damage is in the leader epoch (outside the CRC) may survive with that epoch.
        intact_end = m.segments[0].base  # (the log start may lie inside the first segment)
        intact = True
        epoch_damaged: set[int] = set()
        gap_cut = None  # where recovery cuts at a gap it cannot believe
        for seg in survivors:
            length, flips = kept[seg.base]
            expected = seg.base
            for pos, b in seg.with_positions():
                hit = [p for p in flips if pos <= p < pos + b.size]
                if pos + b.size > length or hit:
                    intact = False
                if index_state == "lost" and seg is survivors[-1] and b.base > expected and gap_cut is None:
                    # Without the index, a gap (compaction) in the last file cannot be told
                    # from garbage in a base offset: recovery cuts there (docs/format.md).
                    event("crash: a gap in the last segment was cut without the index")
                    gap_cut = expected
                expected = b.next_offset
                if intact:
                    intact_end = b.next_offset
                if hit and all(pos + EPOCH_FIELD[0] <= p < pos + EPOCH_FIELD[1] for p in hit) \
                        and pos + b.size <= length:
                    event("crash: garbage only in a batch's leader epoch")
                    epoch_damaged.add(id(b))
                    raw = bytearray(b.raw)
                    for p in hit:
                        raw[p - pos] ^= flips[p]
                    b.raw = bytes(raw)
                    b.epoch = HEAD.unpack_from(b.raw)[2]
            if intact and seg.sealed_end is not None and seg is not survivors[-1]:
                intact_end = max(intact_end, seg.sealed_end)  # a gap ending a sealed segment
        assert intact_end >= durable_before, (
            f"the log claimed offsets below {durable_before} durable, but only bytes up to offset "
            f"{intact_end} were fsynced by the model's account")

        self._open()
        recovered = self.log.log_end_offset
        assert recovered <= m.leo, (
            f"after the crash the log ends at {recovered}, but only offsets below {m.leo} were ever "
            f"written: recovery trusted something stale (report: {self.log.recovery_report})")
        if gap_cut is not None:
            intact_end = min(intact_end, gap_cut)
            durable_before = min(durable_before, gap_cut)
        assert recovered >= intact_end, (
            f"recovery lost offsets [{recovered}, {intact_end}) that were intact on disk "
            f"(durable before the crash: {durable_before})")
        assert recovered >= durable_before
        event(f"crash: recovery kept {'all' if recovered == m.leo else 'less than all'} of the log")
        if any(id(b) in epoch_damaged and b.next_offset <= recovered for b in m.batches()):
            event("crash: a batch with a garbled leader epoch passed recovery")
        m.segments = survivors
        for seg in m.segments:
            seg.batches = [b for b in seg.batches if b.next_offset <= recovered]
        assert m.leo == recovered, f"recovered log end {recovered} is not a batch boundary of the model"
        m.log_start = min(m.log_start, recovered)  # a start past what survived is capped (loader.py)
        if index_state == "lost":
            # Without the index the log start is the first segment's base: a start moved
            # inside that segment (advance_log_start) is learned again from the leader.
            m.log_start = m.segments[0].base
            m.hw = m.log_start
            m.cleaned, m.due = 0, -1  # the cleaner starts over
        elif index_state == "as killed":
            # An older checkpoint of the high watermark, capped by the log end: any value in
            # range is right (the invariant checks the range).
            m.hw = self.log.high_watermark
        m.reopened(self.now)
        before = m.epochs
        m.epochs = m.epochs_from_batches()
        m.trim_epochs()
        m.epochs = [(e, s) for e, s in m.epochs if s < m.leo]
        real = [tuple(e) for e in self.log.leader_epochs.entries]
        if m.compacted and real != m.epochs:
            # The cleaner leaves the epoch history alone, so an epoch's recorded start may lie
            # in a gap, where a history rebuilt from the headers would start it later; a
            # recovery that trusted the index kept the recorded start.
            event("crash: a compacted log kept its recorded epoch starts")
            assert all(e in before or e in m.epochs for e in real), (real, before, m.epochs)
            m.epochs = real
        latest = m.epochs[-1][0] if m.epochs else 0
        self.epoch = max(self.epoch, latest)
        assert self.log.durable_offset == m.leo

    # -------------------------------------------------------------- invariants

    @invariant()
    def agrees_with_model(self) -> None:
        if self.store is None:
            return
        log, m = self.log, self.model
        self.checks += 1
        self.most_segments = max(self.most_segments, len(m.segments))
        assert log.log_start_offset <= log.high_watermark <= log.log_end_offset
        assert (log.log_start_offset, log.high_watermark, log.log_end_offset) == (m.log_start, m.hw, m.leo)
        assert m.segments[0].base <= m.log_start <= max(m.segments[0].base, m.segments[0].next_offset)
        assert [tuple(s) for s in log.segments()] == [(s.base, s.next_offset, s.size, s.max_ts) for s in m.segments]
        log_dir = os.path.join(self.dir, "logs", LOG_NAME)
        assert sorted(os.listdir(log_dir)) == [s.name for s in m.segments]
        assert [os.path.getsize(self.path(s)) for s in m.segments] == [s.size for s in m.segments]
        assert not log.fenced_batches()
        # Sealed segments were fsynced whole when they were rolled, and every fsync the model
        # expects (module doc) was made; durable_offset claims no byte that was not fsynced.
        assert all(s.durable == s.size for s in m.segments[:-1])
        fsynced = [min(self.fsyncs.length(self.path(s)), s.size) for s in m.segments]
        assert all(f >= s.durable for f, s in zip(fsynced, m.segments)), (
            f"files fsynced to {fsynced}, the model expects at least {[s.durable for s in m.segments]}")
        # (A log start moved past the last fsync by advance_log_start may lie above it.)
        assert m.segments[0].base <= log.durable_offset <= m.durable_offset(fsynced), (
            f"durable_offset {log.durable_offset} claims more than was fsynced ({m.durable_offset(fsynced)})")

        assert [tuple(e) for e in log.leader_epochs.entries] == m.epochs
        probe = {0, self.epoch, self.epoch + 1} | {e + d for e, _ in m.epochs for d in (-1, 0, 1)}
        for e in sorted(p for p in probe if 0 <= p <= EPOCH_MAX):
            assert tuple(log.end_offset_for_epoch(e)) == m.end_offset_for(e), f"end_offset_for_epoch({e})"

        # The whole log, read in chunks of a size that changes from step to step.
        max_bytes = [1, 333, self.config.batch_bytes_max, 1 << 30][self.checks % 4]
        data = b""
        offset = log.log_start_offset
        while offset < log.log_end_offset:
            r = log.read(offset, max_bytes)
            assert r.next_offset > offset, f"read({offset}, {max_bytes}) made no progress"
            data += r.data
            offset = r.next_offset
        assert offset == m.leo
        assert data == b"".join(b.raw for b in m.visible()), "the log's bytes differ from the model's"
        want = [(off, *r) for off, r in m.records()]
        assert [r for r in decoded(data, self.config.batch_bytes_max) if r[0] >= m.log_start] == want


@pytest.mark.long  # 100 random programs, 1-5 minutes on 2 cores: `make test-long`
def test_log_agrees_with_model(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Random programs of appends, reads, rolls, truncations, retention, syncs, reopens and
    crashes with power loss leave the partition log equal to the in-memory model (module doc).
    The fixed programs below replay what it found, in `make test`."""
    _run_log_model(tmp_path_factory, monkeypatch, examples=100)


def _run_log_model(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch, examples: int) -> None:
    base = str(tmp_path_factory.mktemp("log-model"))
    fsyncs = FsyncTracker(monkeypatch)
    try:
        run_state_machine_as_test(
            lambda: LogMachine(base, fsyncs),
            settings=settings(
                max_examples=examples,
                stateful_step_count=50,
                deadline=None,
                # The explain phase traces every line of a failing program again and again:
                # minutes here, for little.
                phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
            ),
        )
    finally:
        gc.unfreeze()
    print("\nsituations exercised:")
    for what, n in sorted(COVERAGE.items()):
        print(f"  {n:6d}  {what}")


# ------------------------------------------------------------------------------------ fixed programs
#
# Programs the machine above found (or can find, rarely), replayed step by step with the same
# model and checks, so that they run on every test run in milliseconds.


class Scripted:
    """Stands in for hypothesis' ``data`` in a fixed program: each draw takes the next value."""

    def __init__(self, *values: object) -> None:
        self.values = list(values)

    def draw(self, strategy: object, label: str | None = None) -> object:
        return self.values.pop(0)


def run_program(machine: LogMachine, config: dict, steps: list) -> None:
    try:
        machine.open_store(**config)
        machine.agrees_with_model()
        for step in steps:
            step()
            machine.agrees_with_model()
    finally:
        machine.teardown()
        gc.unfreeze()


SMALL = (b"k", b"v" * 10, (), 0)  # one record: key, value, headers, timestamp jitter
LARGE = (b"k", b"w" * 300, (), 0)
CONFIG = dict(segment_bytes=16384, batch_bytes_max=4096, read_extra=0, window_extra=0, segment_ms=60_000,
              retention_bytes=-1, retention_ms=2_000)


def test_kill_after_truncation_keeps_fsynced_appends(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A kill -9 after truncate_to and new fsynced appends loses none of them.

    The index has no WAL, so after the kill it is as of the last clean close: its recovery
    point lies inside the segment that truncate_to cut and the new appends rewrote. Recovery
    must not trust it (nor the stale offset index that agrees with it) against the file."""
    m = LogMachine(str(tmp_path), FsyncTracker(monkeypatch))
    run_program(m, CONFIG, [
        lambda: m.append([[SMALL] * 5] * 3, 0, 0),  # offsets 0-14, three batches of five
        m.reopen,  # a clean restart: the index reaches its files
        lambda: m.truncate_to(Scripted(10)),  # a new leader cuts back to 10 ...
        lambda: m.append([[LARGE] * 2], 1, 0),  # ... and appends 10-11, past the old byte end
        lambda: m.sync(),  # durable now: 10 and 11 may be acknowledged
        lambda: m.crash(Scripted(False, "as killed")),  # kill -9; files intact, index as killed
    ])


def test_kill_after_retention_keeps_epochs_from_the_log_start(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A kill -9 after retention leaves no leader epoch that lies wholly below the log start.

    The index as the kill left it predates the retention; the epoch history it holds must be
    cut at the log start again on open, or end_offset_for_epoch answers for deleted epochs."""
    m = LogMachine(str(tmp_path), FsyncTracker(monkeypatch))
    run_program(m, CONFIG, [
        lambda: m.append([[SMALL] * 5], 0, 0),  # epoch 0: offsets 0-4
        lambda: m.append([[SMALL] * 5], 1, 0),  # epoch 1: offsets 5-9
        m.roll,
        lambda: m.append([[SMALL] * 5], 0, 5_000),  # epoch 1: offsets 10-14, 5 s later
        m.sync,
        m.reopen,
        lambda: m.retention(Scripted(15, T0 + 3_000)),  # the first segment is too old: deleted
        lambda: m.crash(Scripted(False, "as killed")),
    ])


def test_kill_after_new_leader_rewrote_same_sizes_keeps_its_epoch_and_timestamps(
        tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A kill -9 after a new leader replaced batches with batches of the very same sizes leaves
    the new leader's epoch in the history and its timestamps in the time index.

    The index as the kill left it predates the truncation; its recovery point and the batch
    before it match the file in position, size and base offset, but not in epoch or time."""
    m = LogMachine(str(tmp_path), FsyncTracker(monkeypatch))
    run_program(m, CONFIG, [
        lambda: m.append([[SMALL] * 5] * 2, 0, 0),  # epoch 0: offsets 0-4 and 5-9
        m.reopen,  # a clean restart: the index reaches its files
        lambda: m.new_leader(Scripted(5), [], 4_000, True),  # epoch 1 rewrites 5-9, same sizes, 4 s later
        m.sync,
        lambda: m.crash(Scripted(False, "as killed")),
    ])


def test_index_flush_reaches_the_files(tmp_path) -> None:
    """IndexDb.flush() persists every column family: a kill -9 right after it keeps the writes.

    Recovery with the WAL-less index counts on this (index_db.py): log.py flushes after each
    roll, truncation and retention so that a crash finds an index no older than that."""
    db = IndexDb(str(tmp_path / "index"))
    try:
        for cf in COLUMN_FAMILIES:
            db.put(cf, b"key", b"value")
        db.flush()
        copy_live_directory(str(tmp_path / "index"), str(tmp_path / "index.after-kill"))
    finally:
        db.close()
    killed = IndexDb(str(tmp_path / "index.after-kill"))
    try:
        assert {cf: killed.get(cf, b"key") for cf in COLUMN_FAMILIES} == {cf: b"value" for cf in COLUMN_FAMILIES}
    finally:
        killed.close()
