"""Recovery: check segment files batch by batch and say what is valid.

On open (DESIGN.md §4) the partition log asks this module to scan what it cannot trust:

* the tail of the last segment, from the recovery point (the end of the last fsync) or from
  its start when no usable recovery point is stored. Bytes written but never fsynced may be
  torn or garbage after a power loss, so the tail is *cut* at the first bad batch;
* a sealed segment whose index entries are missing or disagree with the file. A sealed
  segment was fsynced whole before its successor was created (rolling syncs), so a bad batch
  there is damage, not a torn write: it is *fenced* (reported with file and position, never
  served) and the scan goes on after it when the batch length can be trusted.

Checks per batch: enough bytes for the header and for the length it announces, the header's
fields (magic, counts, codec, timestamps), the CRC-32C, the base offset at or past the end of
the batch before (past it is a gap the cleaner left; in the unsynced tail only where the index
recorded that batch, since base_offset lies outside the CRC), and the leader epoch never
going down.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from .batch import HEADER_SIZE, BatchHeader, check_header, crc_of, parse_header
from .errors import InvalidBatchError
from .index_db import FencedBatch, IndexEntry
from .segment import Segment


@dataclass
class ScanResult:
    """What a scan found: the valid batches (as index entries), where validity ends, and the
    first failure (position and reason) if the scan stopped on one."""

    entries: list[IndexEntry] = field(default_factory=list)
    epochs: list[tuple[int, int]] = field(default_factory=list)  # (leader_epoch, base_offset)
    fences: list[FencedBatch] = field(default_factory=list)
    valid_end: int = 0
    next_offset: int = 0
    max_timestamp: int = -1
    failure: tuple[int, str] | None = None


_MORE = "more bytes needed"


GapCheck = Callable[[BatchHeader, int], bool]


def _check(buf: bytes, p: int, pos: int, file_size: int, expected: int, resync: bool,
           last_epoch: int, batch_bytes_max: int,
           gap_ok: GapCheck | None) -> tuple[BatchHeader | None, str | None]:
    """Check the batch whose header starts at ``buf[p]`` (file position ``pos``).

    Returns ``(header, None)`` when valid, ``(header, _MORE)`` when ``buf`` holds too little of
    it, and ``(header or None, reason)`` when it is bad.
    """
    if file_size - pos < HEADER_SIZE:
        return None, f"{file_size - pos} trailing bytes, fewer than a batch header"
    header = parse_header(buf, p)
    try:
        check_header(header, pos, batch_bytes_max)
    except InvalidBatchError as e:
        return header, str(e)
    if pos + header.size > file_size:
        return header, f"batch announces {header.size} bytes, the file has {file_size - pos} left"
    if p + header.size > len(buf):
        return header, _MORE
    if crc_of(buf, p, p + header.size) != header.crc:
        return header, "CRC-32C mismatch"
    # Above ``expected`` is a gap (compaction), where ``gap_ok`` allows it (None: anywhere);
    # below it, offsets would go back.
    if header.base_offset < expected or (header.base_offset > expected and gap_ok is not None
                                         and not gap_ok(header, pos)):
        return header, f"base offset {header.base_offset}, expected {expected}"
    if header.leader_epoch < last_epoch:
        return header, f"leader epoch {header.leader_epoch} after epoch {last_epoch}"
    return header, None


def scan_segment(
    seg: Segment,
    start_position: int,
    expected_offset: int,
    segment_max_timestamp: int,
    last_epoch: int,
    *,
    batch_bytes_max: int,
    window_bytes: int,
    sealed: bool,
    file_size: int,
    gap_ok: GapCheck | None = None,
) -> ScanResult:
    """Scan ``seg`` from ``start_position``; see the module doc for tail versus sealed mode."""
    out = ScanResult(valid_end=start_position, next_offset=expected_offset, max_timestamp=segment_max_timestamp)
    pos = start_position
    buf = b""
    buf_pos = pos
    resync = False  # just after a fenced batch: the next base offset tells where it ended
    while pos < file_size:
        p = pos - buf_pos
        if len(buf) - p < HEADER_SIZE:
            buf = seg.read(pos, min(window_bytes, file_size - pos))
            buf_pos, p = pos, 0
        header, problem = _check(buf, p, pos, file_size, out.next_offset, resync, last_epoch, batch_bytes_max, gap_ok)
        if problem is _MORE:
            assert header is not None
            buf = seg.read(pos, max(header.size, min(window_bytes, file_size - pos)))
            buf_pos, p = pos, 0
            header, problem = _check(buf, p, pos, file_size, out.next_offset, resync, last_epoch, batch_bytes_max, gap_ok)
        if problem is not None:
            if out.failure is None:
                out.failure = (pos, problem)
            if not sealed:
                return out
            # Sealed: fence this batch; carry on after it when its length is believable and
            # it is the first failure in a row, else fence to the end of the segment.
            believable = header is not None and pos + header.size <= file_size \
                and header.batch_length >= HEADER_SIZE - 12 and not resync
            size = header.size if believable and header is not None else file_size - pos
            out.fences.append(FencedBatch(seg.base_offset, pos, size, out.next_offset, problem))
            pos += size
            out.valid_end = pos
            resync = True
            continue
        assert header is not None
        resync = False
        if header.max_timestamp > out.max_timestamp:
            out.max_timestamp = header.max_timestamp
        out.entries.append(
            IndexEntry(
                header.base_offset,
                seg.base_offset,
                pos,
                header.size,
                header.last_offset_delta,
                header.max_timestamp,
                out.max_timestamp,
            )
        )
        if header.leader_epoch > last_epoch:
            out.epochs.append((header.leader_epoch, header.base_offset))
            last_epoch = header.leader_epoch
        pos += header.size
        out.valid_end = pos
        out.next_offset = header.next_offset
    return out
