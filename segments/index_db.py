"""The one RocksDB of a data directory and the key layout of its column families.

Everything here is a *view* of the segment files except where noted: recovery can rebuild it
from the ``.log`` files (DESIGN.md §4). Keys start with the partition key (the log's name
and a NUL byte) so that one database serves every partition; integers in keys are big-endian
so that RocksDB's byte order is numeric order.

================= ======================================= ===========================================
column family     key                                      value
================= ======================================= ===========================================
offset_index      pkey, base_offset u64                    segment_base u64, position u64, size u32,
                                                           last_offset_delta i32, max_timestamp i64,
                                                           segment_max_timestamp i64 (running max)
time_index        pkey, segment_base u64, ts u64 (biased)  base_offset u64 of the first batch whose
                                                           max_timestamp raised the segment's max
partition_state   pkey, name                               per name (see PartitionState)
leader_epochs     pkey, epoch u32                          start_offset u64
================= ======================================= ===========================================

``partition_state`` holds the high watermark (a checkpoint, capped by the log end on load),
the log start offset (also implied by the first segment), the recovery point (how far the
files are known to be fsynced), the fenced batches and the cleaner's progress (cleaned offset,
next tombstone due, a swap in progress). The leader-epoch history can be rebuilt
from the batch headers, which carry the epoch.
"""

from __future__ import annotations

import errno

import gc
import struct
from typing import Iterator, NamedTuple

from rocksdict import Options, Rdict, WriteBatch, WriteOptions

OFFSET_INDEX = "offset_index"
TIME_INDEX = "time_index"
PARTITION_STATE = "partition_state"
LEADER_EPOCHS = "leader_epochs"
COLUMN_FAMILIES = (OFFSET_INDEX, TIME_INDEX, PARTITION_STATE, LEADER_EPOCHS)

# Names in partition_state (after the partition key).
LOG_START = b"log_start_offset"
HIGH_WATERMARK = b"high_watermark"
RECOVERY_POINT = b"recovery_point"
FENCE_PREFIX = b"fence/"
# The cleaner's state (cleaner.py): how far the log is cleaned, when a kept tombstone may next
# be removed, and a swap in progress (the bases of the segments being replaced, flushed
# before the first rename; an open that finds it re-indexes those segments from their files).
CLEANED_OFFSET = b"cleaned_offset"
CLEAN_DUE = b"clean_due_ms"
CLEAN_INTENT = b"clean_intent"

U64 = struct.Struct(">Q")
U32 = struct.Struct(">I")
Q = struct.Struct("<q")
TS_BIAS = 1 << 63
_ENTRY = struct.Struct("<QQIiqq")
_RECOVERY_POINT = struct.Struct("<qqq")
_FENCE = struct.Struct("<qq")


def partition_key(name: str) -> bytes:
    return name.encode("utf-8") + b"\x00"


class IndexEntry(NamedTuple):
    """Where one batch lives, and what the offset index knows of it."""

    base_offset: int
    segment_base: int
    position: int
    size: int
    last_offset_delta: int
    max_timestamp: int
    segment_max_timestamp: int

    @property
    def next_offset(self) -> int:
        return self.base_offset + self.last_offset_delta + 1

    @property
    def end_position(self) -> int:
        return self.position + self.size


def encode_entry(e: IndexEntry) -> bytes:
    return _ENTRY.pack(
        e.segment_base, e.position, e.size, e.last_offset_delta, e.max_timestamp, e.segment_max_timestamp
    )


def decode_entry(key: bytes, value: bytes) -> IndexEntry:
    (base,) = U64.unpack_from(key, len(key) - 8)
    return IndexEntry(base, *_ENTRY.unpack(value))


class RecoveryPoint(NamedTuple):
    """The log was fsynced up to ``offset``, which begins at ``position`` of ``segment_base``."""

    segment_base: int
    position: int
    offset: int


class FencedBatch(NamedTuple):
    """A stored region that failed verification; reads stop before it."""

    segment_base: int
    position: int
    size: int
    base_offset: int
    reason: str


def index_error(path: str, what: str, e: Exception) -> OSError:
    """A RocksDB failure (a full or failing disk: rocksdict raises a plain Exception) as the
    OSError it is, so that the log fences itself as for any other I/O error."""
    return OSError(errno.EIO, f"index {path}: {what} failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}")


INDEX_OPEN_FILES_MAX = 256  # SST files RocksDB keeps open at once (its table cache)
INDEX_INFO_LOG_BYTES_MAX = 4 << 20  # one RocksDB info log file, before it rolls
INDEX_INFO_LOGS_KEPT = 4

class IndexDb:
    """One RocksDB per data directory, with a column family per purpose."""

    def __init__(self, path: str) -> None:
        opts = Options(raw_mode=True)
        opts.create_if_missing(True)
        opts.create_missing_column_families(True)
        # Every roll flushes (below), leaving SST files; RocksDB would keep each one open.
        # Its table cache is bounded instead, so the index's open files do not grow with them.
        opts.set_max_open_files(INDEX_OPEN_FILES_MAX)
        # RocksDB's own info log (index/LOG) grows with every flush: a few files of bounded size.
        opts.set_max_log_file_size(INDEX_INFO_LOG_BYTES_MAX)
        opts.set_keep_log_file_num(INDEX_INFO_LOGS_KEPT)
        self.path = path
        self._db = Rdict(path, opts, column_families={cf: Options(raw_mode=True) for cf in COLUMN_FAMILIES})
        # No write-ahead log: the index is a view of the segment files. A crash loses the
        # memtable, and recovery rebuilds what is missing from the segments, starting at the
        # last recovery point that reached an SST file. flush() after each segment roll and on
        # close bounds that work to about one segment. With a WAL, every segment fsync would
        # also force RocksDB's WAL blocks out through the ext4 journal (measured: appends at
        # ~55% of the raw-file rate instead of ~80-90%).
        self.cf = {cf: self._db.get_column_family(cf) for cf in COLUMN_FAMILIES}
        self.handle = {cf: self._db.get_column_family_handle(cf) for cf in COLUMN_FAMILIES}
        wo = WriteOptions()
        wo.disable_wal = True
        self._db.set_write_options(wo)
        for handle in self.cf.values():
            handle.set_write_options(wo)

    def write(self, wb: WriteBatch) -> None:
        try:
            self._db.write(wb)
        except Exception as e:  # rocksdict raises plain Exception for I/O errors
            raise index_error(self.path, "write", e) from e

    @staticmethod
    def batch() -> WriteBatch:
        return WriteBatch(raw_mode=True)

    def get(self, cf: str, key: bytes) -> bytes | None:
        return self.cf[cf].get(key)

    def put(self, cf: str, key: bytes, value: bytes) -> None:
        try:
            self.cf[cf].put(key, value)
        except Exception as e:  # rocksdict raises plain Exception for I/O errors
            raise index_error(self.path, "put", e) from e

    def delete(self, cf: str, key: bytes) -> None:
        try:
            self.cf[cf].delete(key)
        except Exception as e:  # rocksdict raises plain Exception for I/O errors
            raise index_error(self.path, "delete", e) from e

    def delete_range(self, cf: str, begin: bytes, end: bytes) -> None:
        wb = self.batch()
        wb.delete_range(begin, end, self.handle[cf])
        self.write(wb)

    def items_from(self, cf: str, start: bytes, stop: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Keys in ``[start, stop)`` in order. The iterator is dropped before this returns."""
        it = self.cf[cf].iter()
        try:
            it.seek(start)
            while it.valid():
                k = it.key()
                if k >= stop:
                    break
                yield k, it.value()
                it.next()
        finally:
            del it

    def last_before(self, cf: str, key: bytes, floor: bytes) -> tuple[bytes, bytes] | None:
        """The greatest key ``<= key`` and ``>= floor``, or None."""
        it = self.cf[cf].iter()
        try:
            it.seek_for_prev(key)
            if it.valid() and it.key() >= floor:
                return it.key(), it.value()
            return None
        finally:
            del it

    def first_from(self, cf: str, key: bytes, stop: bytes) -> tuple[bytes, bytes] | None:
        it = self.cf[cf].iter()
        try:
            it.seek(key)
            if it.valid() and it.key() < stop:
                return it.key(), it.value()
            return None
        finally:
            del it

    def flush(self) -> None:
        """Persist every column family's memtable (rocksdict's flush() covers only the one it
        is called on)."""
        try:
            for handle in self.cf.values():
                handle.flush()
            self._db.flush()
        except Exception as e:  # rocksdict raises plain Exception for I/O errors
            raise index_error(self.path, "flush", e) from e

    def close(self) -> None:
        """Flush and close. The handles are released even when the flush or close fails (a
        data directory deleted under the process); the failure is then raised as OSError."""
        error: Exception | None = None
        try:
            self._db.flush()
        except Exception as e:  # rocksdict raises plain Exception for I/O errors
            error = e
        # rocksdict keeps the LOCK while any handle or iterator lives (DEPENDENCIES.md).
        self.cf.clear()
        self.handle.clear()
        try:
            self._db.close()
        except Exception as e:  # noqa: BLE001 - reported below, after the handles are gone
            error = error or e
        del self._db
        gc.collect()
        if error is not None:
            raise index_error(self.path, "close", error) from error


def offset_key(pkey: bytes, offset: int) -> bytes:
    return pkey + U64.pack(offset)


def time_key(pkey: bytes, segment_base: int, timestamp: int) -> bytes:
    return pkey + U64.pack(segment_base) + U64.pack(max(0, min(timestamp + TS_BIAS, 2**64 - 1)))


def epoch_key(pkey: bytes, epoch: int) -> bytes:
    return pkey + U32.pack(epoch)


def state_key(pkey: bytes, name: bytes) -> bytes:
    return pkey + name


def fence_key(pkey: bytes, segment_base: int, position: int) -> bytes:
    return pkey + FENCE_PREFIX + U64.pack(segment_base) + U64.pack(position)


def encode_fence(f: FencedBatch) -> bytes:
    return _FENCE.pack(f.size, f.base_offset) + f.reason.encode("utf-8")


def decode_fence(key: bytes, value: bytes) -> FencedBatch:
    seg, pos = struct.unpack(">QQ", key[-16:])
    size, base = _FENCE.unpack_from(value)
    return FencedBatch(seg, pos, size, base, value[_FENCE.size :].decode("utf-8", "replace"))


def encode_recovery_point(rp: RecoveryPoint) -> bytes:
    return _RECOVERY_POINT.pack(*rp)


def decode_recovery_point(value: bytes) -> RecoveryPoint:
    return RecoveryPoint(*_RECOVERY_POINT.unpack(value))


def prefix_end(prefix: bytes) -> bytes:
    """The smallest key greater than every key that starts with ``prefix``."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        raise ValueError("a prefix of only 0xff bytes has no end key")
    return stripped[:-1] + bytes([stripped[-1] + 1])
