"""One clean pass over segment files, with no log object: what the worker process runs.

:func:`execute_plan` reads the planned (sealed) segments by path and writes each segment it
changes beside the original as ``<20-digit base>.cleaned``, fsynced; the swap is the log's
(cleaner.py). Memory is bounded by the key map's cap plus one read window (at most
``batch_bytes_max`` or 1 MiB, whichever is larger) and one decoded batch. Every batch read
is CRC-checked: a corrupt batch stops the pass (:class:`CleanError`), so the cleaner never
launders damage into a batch with a fresh CRC.

A batch that keeps some records is re-encoded with its original codec, attributes, producer
id, epoch and base sequence, leader epoch, base offset, last_offset_delta and first and max
timestamps (so its offset range, its producer's sequence range and the time index stay
what they were); only record_count, batch_length and the CRC change. A batch left with no
records goes. A segment left with no batches becomes an empty file that keeps its name.
"""

from __future__ import annotations

import os
import struct
import time
from typing import Iterator

import crc32c as _crc32c

from .batch import CRC_START, HEADER, HEADER_SIZE, LENGTH_PREFIX_SIZE, MAGIC, BatchHeader, validate_batch
from .clean_plan import CleanError, CleanPlan, CleanResult, PlannedSegment, RewrittenSegment
from .compaction import KeyMap, key_digest, keep_record, tombstone_due_ms
from .errors import InvalidBatchError, TruncatedBatchError
from .file_names import cleaned_file_name
from .records import compress, decode_records, encode_section

WINDOW_BYTES = 1 << 20


class _Throttle:
    """Sleeps so that reading stays at or below ``bytes_per_s`` (0: never sleeps)."""

    def __init__(self, bytes_per_s: int) -> None:
        self.rate = bytes_per_s
        self.start = time.monotonic()
        self.done = 0

    def account(self, n: int) -> None:
        self.done += n
        if self.rate > 0:
            ahead = self.done / self.rate - (time.monotonic() - self.start)
            if ahead > 0:
                time.sleep(min(ahead, 1.0))


def _batches(seg: PlannedSegment, fd: int, batch_bytes_max: int, throttle: _Throttle,
             result: CleanResult) -> Iterator[tuple[BatchHeader, memoryview]]:
    """Each batch of the segment file, CRC-checked, with its bytes (valid until the next)."""
    window = max(WINDOW_BYTES, batch_bytes_max)
    pos = 0
    size = seg.size
    while pos < size:
        buf = os.pread(fd, min(window, size - pos), pos)
        throttle.account(len(buf))
        result.bytes_read += len(buf)
        p = 0
        mv = memoryview(buf)
        while len(buf) - p >= HEADER_SIZE:
            try:
                h = validate_batch(mv, p, batch_bytes_max)
            except InvalidBatchError as e:
                if isinstance(e, TruncatedBatchError) and p > 0:
                    break  # the batch runs past this window: read again from its start
                raise CleanError(f"{seg.path} at byte {pos + p}: {e}") from None
            yield h, mv[p: p + h.size]
            p += h.size
        if p == 0:
            raise CleanError(f"{seg.path} at byte {pos}: a batch does not fit in the segment")
        pos += p


def _records(h: BatchHeader, data: memoryview) -> list:
    try:
        return decode_records(data)
    except InvalidBatchError as e:
        raise CleanError(f"batch at offset {h.base_offset}: {e}") from None


def _build_map(plan: CleanPlan, result: CleanResult, throttle: _Throttle) -> KeyMap:
    """Fill the key map from the dirty range; sets ``result.map_end``."""
    key_map = KeyMap(plan.policy.key_map_entries)
    start, end = plan.cleaned_offset, plan.cleanable_end
    result.map_end = max(start, min(end, plan.cleanable_end))
    for seg in plan.segments:
        if seg.next_offset <= start or seg.base_offset >= end:
            continue
        with _open(seg) as fd:
            for h, data in _batches(seg, fd, plan.batch_bytes_max, throttle, result):
                if h.next_offset <= start or h.is_control:
                    continue
                if h.base_offset >= end:
                    break
                for rec in _records(h, data):
                    o, key = rec.offset, rec.key
                    if key is None or o < start or o >= end:
                        continue
                    if not key_map.put(key_digest(key), o):
                        result.map_end = o  # full: the map covers [start, o)
                        result.keys_in_map = len(key_map)
                        return key_map
    result.map_end = end
    result.keys_in_map = len(key_map)
    return key_map


class _open:
    def __init__(self, seg: PlannedSegment) -> None:
        self.seg = seg

    def __enter__(self) -> int:
        try:
            self.fd = os.open(self.seg.path, os.O_RDONLY | os.O_CLOEXEC)
            st = os.fstat(self.fd)
        except OSError as e:
            raise CleanError(f"{self.seg.path}: {e.strerror}") from None
        if st.st_ino != self.seg.inode or st.st_size != self.seg.size:
            os.close(self.fd)
            raise CleanError(f"{self.seg.path} changed since the plan (deleted, truncated or rewritten)")
        return self.fd

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


def _rebuild(h: BatchHeader, kept: list) -> bytes:
    """The batch ``h`` holding only ``kept`` records (module doc: what is kept of the header)."""
    section = encode_section([(r.offset - h.base_offset, r.timestamp - h.first_timestamp, r.key, r.value,
                               r.headers) for r in kept])
    body = compress(h.codec, section)
    header = bytearray(HEADER.pack(h.base_offset, HEADER_SIZE - LENGTH_PREFIX_SIZE + len(body), h.leader_epoch,
                                   MAGIC, 0, h.attributes, h.last_offset_delta, h.first_timestamp,
                                   h.max_timestamp, h.producer_id, h.producer_epoch, h.base_sequence, len(kept)))
    crc = _crc32c.crc32c(body, _crc32c.crc32c(memoryview(header)[CRC_START:]))
    struct.pack_into("<I", header, 17, crc)
    return bytes(header) + body


def execute_plan(plan: CleanPlan) -> CleanResult:
    """Run one pass of ``plan`` over its files (module doc). Leaves no ``.cleaned`` file
    behind when it raises."""
    t0 = time.monotonic()
    result = CleanResult(map_end=plan.cleaned_offset)
    throttle = _Throttle(plan.policy.bytes_per_s)
    written: list[str] = []
    try:
        key_map = _build_map(plan, result, throttle)
        for seg in plan.segments:
            touched = seg.base_offset < result.map_end or (
                plan.erase is not None and seg.base_offset <= plan.erase.upto_offset)
            if not touched:
                continue
            result.bytes_scanned += seg.size
            path = os.path.join(plan.directory, cleaned_file_name(seg.base_offset))
            written.append(path)
            rewritten = _clean_segment(plan, seg, path, key_map, result, throttle)
            if rewritten is None:
                os.unlink(path)
                written.pop()
            else:
                result.rewritten.append(rewritten)
    except BaseException:
        for path in written:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        raise
    result.seconds = time.monotonic() - t0
    return result


def _clean_segment(plan: CleanPlan, seg: PlannedSegment, path: str, key_map: KeyMap, result: CleanResult,
                   throttle: _Throttle) -> RewrittenSegment | None:
    """Write the cleaned copy of ``seg`` to ``path``; None (the caller removes it) when no
    record of the segment goes."""
    policy, erase, map_end = plan.policy, plan.erase, result.map_end
    removed = 0
    out_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        with _open(seg) as fd:
            out: list[bytes | memoryview] = []
            pending = 0
            size = 0
            for h, data in _batches(seg, fd, plan.batch_bytes_max, throttle, result):
                if h.is_control or (h.base_offset >= map_end and (erase is None or h.base_offset > erase.upto_offset)):
                    kept_bytes: bytes | memoryview = data
                else:
                    records = _records(h, data)
                    kept = []
                    for r in records:
                        if erase is not None and erase.matches(r.offset, r.key):
                            result.records_erased += 1
                            continue
                        digest = None if r.key is None else key_digest(r.key)
                        if keep_record(offset=r.offset, digest=digest, tombstone=r.value is None,
                                       timestamp=r.timestamp, key_map=key_map, map_end=map_end,
                                       cleaned_offset=plan.cleaned_offset, now_ms=plan.now_ms,
                                       delete_retention_ms=policy.delete_retention_ms):
                            kept.append(r)
                            if r.value is None and digest is not None and r.offset < map_end:
                                due = tombstone_due_ms(r.timestamp, policy.delete_retention_ms)
                                if result.tombstone_due_ms < 0 or due < result.tombstone_due_ms:
                                    result.tombstone_due_ms = due
                    removed += len(records) - len(kept)
                    if len(kept) == len(records):
                        kept_bytes = data
                    elif kept:
                        kept_bytes = _rebuild(h, kept)
                    else:
                        result.batches_removed += 1
                        continue
                out.append(bytes(kept_bytes) if isinstance(kept_bytes, memoryview) else kept_bytes)
                pending += len(kept_bytes)
                if pending >= WINDOW_BYTES:
                    size += _write_all(out_fd, out)
                    out, pending = [], 0
            size += _write_all(out_fd, out)
        if removed == 0:
            return None
        os.fsync(out_fd)
    finally:
        os.close(out_fd)
    result.records_removed += removed
    result.bytes_written += size
    return RewrittenSegment(seg.base_offset, path, size, removed)


def _write_all(fd: int, parts: list) -> int:
    data = b"".join(parts)
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
    return len(data)
