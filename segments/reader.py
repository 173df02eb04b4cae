"""Reading a partition log: whole batches, CRC-checked, with the file regions for sendfile.

``read_batches`` starts at the batch that holds the offset (found in the offset index), reads
whole batches up to the byte limit and the upper offset, and verifies each batch's header,
continuity and CRC-32C; a batch that fails is fenced (recorded with file and position) and
never returned. ``offset_for_timestamp`` uses the time index and decodes records only of the
candidate batches. ``batch_headers`` walks the offset index and reads only each batch's
61-byte header (producer state is rebuilt from them).

Offsets may have gaps (compaction never renumbers, see cleaner.py): a batch may start past
the end of the one before it, never before it, and a read at an offset in a gap returns
the batches from the next one after it; when no batch starts below the read's upper bound,
the read is empty and its ``next_offset`` is that bound.
"""

from __future__ import annotations

from contextlib import closing
from typing import TYPE_CHECKING, Iterator, NamedTuple

from .batch import HEADER_SIZE, BatchHeader, check_header, crc_of, iter_batches, parse_header
from .errors import CorruptBatchError, InvalidBatchError, OffsetOutOfRangeError
from .index_db import OFFSET_INDEX, TIME_INDEX, U64, FencedBatch, decode_entry, offset_key, prefix_end, time_key
from .records import decode_records
from .segment import Segment

if TYPE_CHECKING:
    from .log import PartitionLog


class FileRegion:
    """Bytes of one segment file, for a server that sends them with ``os.sendfile``."""

    __slots__ = ("segment", "position", "length")

    def __init__(self, segment: Segment, position: int, length: int) -> None:
        self.segment = segment
        self.position = position
        self.length = length

    @property
    def path(self) -> str:
        return self.segment.path

    def fileno(self) -> int:
        self.segment.check_readable()
        return self.segment.fd

    def read(self) -> bytes:
        return self.segment.read(self.position, self.length)

    def __repr__(self) -> str:
        return f"FileRegion({self.path!r}, {self.position}, {self.length})"


class ReadResult(NamedTuple):
    data: bytes
    regions: tuple[FileRegion, ...]
    next_offset: int  # where the next read should start
    high_watermark: int
    log_start_offset: int
    log_end_offset: int


def read_batches(log: "PartitionLog", offset: int, max_bytes: int, upto: int | None = None) -> ReadResult:
    """Whole batches from the one holding ``offset``, up to ``max_bytes``.

    ``upto`` (exclusive) bounds the offsets returned: a server passes the high watermark
    for consumers; None means the log end. The first batch is returned whole even if it is
    larger than ``max_bytes``, so a reader always makes progress. A batch may start before
    ``offset``: the reader skips the records it did not ask for, as Kafka clients do.
    """
    if max_bytes <= 0:
        raise ValueError(f"max_bytes must be positive, got {max_bytes}")
    max_bytes = min(max_bytes, log.config.read_bytes_max)
    leo = log.log_end_offset
    end = leo if upto is None else min(upto, leo)
    if offset < log._log_start or offset > leo:
        raise OffsetOutOfRangeError(offset, log._log_start, leo)
    if offset >= end:
        return _empty_read(log, offset)
    found = log._index.last_before(OFFSET_INDEX, offset_key(log._pkey, offset), log._pkey)
    entry = decode_entry(*found) if found else None
    if entry is None or entry.next_offset <= offset:
        fence = log._fence_covering(offset)
        if fence is not None:
            raise log._corrupt(fence)
        # A gap (the cleaner removed the records there, or a follower was fed a compacted
        # log): the read starts at the next batch after it.
        found = log._index.first_from(OFFSET_INDEX, offset_key(log._pkey, offset), prefix_end(log._pkey))
        entry = decode_entry(*found) if found else None
        if entry is None or entry.base_offset >= end:
            # [offset, end) holds no record at all: the next read may start at ``end``.
            return ReadResult(b"", (), end, log._high_watermark, log._log_start, leo)
    seg = log._segment(entry.segment_base)
    pos = entry.position
    expected = entry.base_offset
    chunks: list[bytes] = []
    regions: list[FileRegion] = []
    total = 0
    stop = False
    while not stop and total < max_bytes:
        if pos >= seg.size:
            nxt = log._next_segment(seg)
            if nxt is None or expected >= end:
                break
            seg, pos = nxt, 0
            continue
        want = min(seg.size - pos, max_bytes - total)
        if total == 0:
            want = max(want, min(entry.size, seg.size - pos))
        buf = seg.read(pos, want)
        p = 0
        fences = log._fences.get(seg.base_offset)
        while len(buf) - p >= HEADER_SIZE:
            h = parse_header(buf, p)
            if h.base_offset >= end and h.base_offset >= expected:
                stop = True
                break
            if fences and pos + p in fences:
                if total == 0 and p == 0:
                    raise log._corrupt(fences[pos + p])
                stop = True
                break
            if p + h.size > len(buf) and h.batch_length > 0 and pos + p + h.size <= seg.size:
                break  # cut by max_bytes: the next read starts here
            problem = _verify(log, buf, p, h, expected)
            if problem is not None:
                fence = log._add_fence(FencedBatch(seg.base_offset, pos + p,
                                                    max(0, min(h.size, seg.size - pos - p)), expected, problem))
                if total == 0 and p == 0:
                    raise log._corrupt(fence)
                stop = True
                break
            p += h.size
            expected = h.next_offset
        if p == 0:
            break
        chunks.append(buf[:p] if p < len(buf) else buf)
        regions.append(FileRegion(seg, pos, p))
        total += p
        pos += p
        if p < len(buf):
            break
    return ReadResult(b"".join(chunks) if len(chunks) != 1 else chunks[0], tuple(regions), expected,
                      log._high_watermark, log._log_start, leo)

def _verify(log: "PartitionLog", buf: bytes, p: int, h, expected: int) -> str | None:
    try:
        check_header(h, p, log.config.batch_bytes_max)
    except InvalidBatchError as e:
        return str(e)
    if p + h.size > len(buf):
        return f"batch announces {h.size} bytes past the end of the segment"
    if h.base_offset < expected:  # above is a gap left by compaction
        return f"base offset {h.base_offset}, expected at least {expected}"
    if crc_of(buf, p, p + h.size) != h.crc:
        return "CRC-32C mismatch"
    return None

def _empty_read(log: "PartitionLog", offset: int) -> ReadResult:
    return ReadResult(b"", (), offset, log._high_watermark, log._log_start, log.log_end_offset)

def offset_for_timestamp(log: "PartitionLog", timestamp: int) -> int | None:
    """The first offset whose record timestamp is >= ``timestamp``, or None if no record is.

    Segments are tried in offset order; inside one, the time index finds the first batch
    whose timestamps reach ``timestamp``, and that batch's records are decoded to find the
    exact record.
    """
    for seg in log._segments:
        if seg.max_timestamp < timestamp:
            continue
        seg_prefix = log._pkey + U64.pack(seg.base_offset)
        found = log._index.first_from(TIME_INDEX, time_key(log._pkey, seg.base_offset, timestamp),
                                       prefix_end(seg_prefix))
        if found is None:
            continue
        (batch_base,) = U64.unpack(found[1])
        return _scan_for_timestamp(log, max(batch_base, log._log_start), timestamp)
    return None

def _scan_for_timestamp(log: "PartitionLog", offset: int, timestamp: int) -> int | None:
    """Decode batches from ``offset`` on until a record reaches ``timestamp``. A producer may
    overstate a batch's max_timestamp (the server does not decode records), so the first
    candidate batch need not hold the answer; fenced batches are stepped over."""
    end = log.log_end_offset
    while offset < end:
        try:
            result = log.read(offset, 1 << 20)
        except CorruptBatchError as e:
            fence = log._fence_covering(offset) or (
                log._fences.get(_segment_base_of(log, e), {}).get(e.position))
            if fence is None:
                raise
            offset = max(offset + 1, log._next_offset_after_fence(fence))
            continue
        for pos, _ in iter_batches(result.data, log.config.batch_bytes_max):
            for rec in decode_records(result.data, pos):
                if rec.timestamp >= timestamp and rec.offset >= offset:
                    return rec.offset
        if result.next_offset <= offset:
            break
        offset = result.next_offset
    return None

_HEADERS_CHUNK = 512


def batch_headers(log: "PartitionLog", start_offset: int | None = None) -> Iterator[BatchHeader]:
    """The header of every batch from the one holding ``start_offset`` (default: the log
    start) to the log end, in offset order, fenced batches skipped.

    Only the headers are read (one pread of 61 bytes per batch, located by the offset
    index); the CRC is not checked. The range is checked now; the headers come lazily, and
    the index is read in chunks, so no RocksDB iterator lives between two headers.
    """
    leo = log.log_end_offset
    start = log._log_start if start_offset is None else start_offset
    if not log._log_start <= start <= leo:
        raise OffsetOutOfRangeError(start, log._log_start, leo)
    found = log._index.last_before(OFFSET_INDEX, offset_key(log._pkey, start), log._pkey)
    if found is not None and decode_entry(*found).next_offset > start:
        start = decode_entry(*found).base_offset
    return _headers_from(log, start)

def _headers_from(log: "PartitionLog", offset: int) -> Iterator[BatchHeader]:
    stop = prefix_end(log._pkey)
    while True:
        entries = []
        with closing(log._index.items_from(OFFSET_INDEX, offset_key(log._pkey, offset), stop)) as items:
            for k, v in items:
                entries.append(decode_entry(k, v))
                if len(entries) == _HEADERS_CHUNK:
                    break
        for e in entries:
            if e.base_offset >= log.log_end_offset:
                return
            if e.position in log._fences.get(e.segment_base, ()):
                continue
            seg = log._segment(e.segment_base)
            head = seg.read(e.position, HEADER_SIZE)
            h = parse_header(head, 0) if len(head) == HEADER_SIZE else None
            if h is None or h.base_offset != e.base_offset or h.size != e.size:
                raise CorruptBatchError(seg.path, e.position, "the batch header does not match the "
                                        "offset index; reopen the log to rebuild the index", e.base_offset)
            yield h
        if len(entries) < _HEADERS_CHUNK:
            return
        offset = entries[-1].base_offset + 1

def _segment_base_of(log: "PartitionLog", e: CorruptBatchError) -> int:
    for seg in log._segments:
        if seg.path == e.path:
            return seg.base_offset
    return -1
