"""Opening a partition log: make the segment files and the index agree (DESIGN.md §4).

What is trusted and what is scanned, and how damage is handled, is described in
recovery.py; this module walks the segments of one log on open and applies it: segments
left below the log start are deleted, an interrupted :meth:`PartitionLog.reset_to` is finished
(see :func:`finish_reset`), sealed segments whose index disagrees with the file are
rescanned (damage fenced), the last segment is scanned from the recovery point and cut at the
first bad batch, index entries outside the valid log are dropped, the leader-epoch history is
trimmed or rebuilt, and the high watermark is capped at the log end. A log that ends below
its persisted high watermark lost records it had acknowledged; the cap keeps the log
consistent and ``PartitionLog.short_of_high_watermark`` says so, for the server to act on.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .batch import HEADER_SIZE, parse_header, validate_batch
from .errors import InvalidBatchError
from .errors import NotALogDirectoryError
from .file_names import parse_cleaned_file_name, parse_segment_file_name
from .index_db import (
    CLEAN_DUE,
    CLEAN_INTENT,
    CLEANED_OFFSET,
    FENCE_PREFIX,
    HIGH_WATERMARK,
    LOG_START,
    RECOVERY_POINT,
    LEADER_EPOCHS,
    OFFSET_INDEX,
    PARTITION_STATE,
    TIME_INDEX,
    U64,
    IndexDb,
    IndexEntry,
    Q,
    RecoveryPoint,
    decode_entry,
    decode_fence,
    decode_recovery_point,
    encode_entry,
    encode_recovery_point,
    epoch_key,
    offset_key,
    prefix_end,
    state_key,
    time_key,
)
from .leader_epochs import EpochEntry, LeaderEpochHistory
from .recovery import GapCheck, ScanResult, scan_segment
from .segment import Segment, fsync_directory

if TYPE_CHECKING:
    from .log import PartitionLog

# partition_state name: a reset_to(offset) in progress, recorded (and flushed) before any file
# changes; an open that finds it finishes the reset, so a crash leaves the old log or the empty one.
RESET_TO = b"reset_to"


def finish_reset(directory: str, index: IndexDb, pkey: bytes, start: int) -> None:
    """Make ``directory`` hold one empty segment at ``start`` and the index say so, then clear
    the RESET_TO marker. Every step may be repeated, so a crash part way is finished on open."""
    # Newest first: should the index be lost as well, what is left is a prefix of the old log.
    for entry in sorted(os.listdir(directory), reverse=True):
        if parse_segment_file_name(entry) is not None:
            os.unlink(os.path.join(directory, entry))
    fsync_directory(directory)
    Segment(directory, start, 0, create=True).close()
    fsync_directory(directory)
    for cf in (OFFSET_INDEX, TIME_INDEX, LEADER_EPOCHS):
        index.delete_range(cf, pkey, prefix_end(pkey))
    fence_prefix = state_key(pkey, FENCE_PREFIX)
    index.delete_range(PARTITION_STATE, fence_prefix, prefix_end(fence_prefix))
    index.put(PARTITION_STATE, state_key(pkey, LOG_START), Q.pack(start))
    index.put(PARTITION_STATE, state_key(pkey, HIGH_WATERMARK), Q.pack(start))
    index.put(PARTITION_STATE, state_key(pkey, RECOVERY_POINT),
              encode_recovery_point(RecoveryPoint(start, 0, start)))
    for name in (CLEANED_OFFSET, CLEAN_DUE, CLEAN_INTENT):
        index.delete(PARTITION_STATE, state_key(pkey, name))
    # The index has no WAL: all of the above must be durable before the marker goes, and the
    # marker's removal before anything is appended (or a later open would reset again).
    index.flush()
    index.delete(PARTITION_STATE, state_key(pkey, RESET_TO))
    index.flush()



def load_log(log: "PartitionLog") -> None:
    """Open the segments and make files and index agree (module doc of recovery.py)."""
    directory = log.directory
    if not os.path.isdir(directory):
        raise NotALogDirectoryError(directory, "it does not exist or is not a directory")
    bases = []
    leftovers = 0
    for entry in sorted(os.listdir(directory)):
        base = parse_segment_file_name(entry)
        if base is None and parse_cleaned_file_name(entry) is not None:
            # A rewritten segment the cleaner did not swap in (crash or refusal): the original
            # is still in place, or was already replaced by a rename.
            os.unlink(os.path.join(directory, entry))
            leftovers += 1
            continue
        if base is None:
            raise NotALogDirectoryError(
                directory, f"it holds {entry!r}, which is not a segment file (NNNNNNNNNNNNNNNNNNNN.log)")
        bases.append(base)
    if leftovers:
        fsync_directory(directory)
        log.recovery_report.append(f"deleted {leftovers} unfinished cleaned segment file(s)")
    get_state = lambda name: log._index.get(PARTITION_STATE, state_key(log._pkey, name))  # noqa: E731
    raw = get_state(RESET_TO)
    if raw is not None:
        reset = Q.unpack(raw)[0]
        finish_reset(directory, log._index, log._pkey, reset)
        bases = [reset]
        log.recovery_report.append(f"finished an interrupted reset of the log to offset {reset}")
    raw = get_state(LOG_START)
    stored_start = Q.unpack(raw)[0] if raw else None
    raw = get_state(HIGH_WATERMARK)
    stored_hw = Q.unpack(raw)[0] if raw else None
    raw = get_state(RECOVERY_POINT)
    stored_rp = decode_recovery_point(raw) if raw else None
    now = log._clock()

    if not bases:
        start = stored_start or 0
        seg = Segment(directory, start, now, create=True)
        seg.next_offset = start
        log._segments = [seg]
        fsync_directory(directory)
        log._index.delete_range(OFFSET_INDEX, log._pkey, prefix_end(log._pkey))
        log._index.delete_range(TIME_INDEX, log._pkey, prefix_end(log._pkey))
        log._index.delete_range(LEADER_EPOCHS, log._pkey, prefix_end(log._pkey))
    else:
        log._segments = [Segment(directory, b, now, create=False) for b in bases]
    # Segments wholly below a recorded log start are left over from retention.
    if stored_start is not None:
        while len(log._segments) > 1 and log._segments[1].base_offset <= stored_start:
            log._segments.pop(0).delete()
            log.recovery_report.append("deleted a segment below the log start offset")

    # Fences recorded earlier.
    fence_prefix = state_key(log._pkey, FENCE_PREFIX)
    for k, v in log._index.items_from(PARTITION_STATE, fence_prefix, prefix_end(fence_prefix)):
        f = decode_fence(k, v)
        if log._segment_or_none(f.segment_base) is not None:
            log._fences.setdefault(f.segment_base, {})[f.position] = f
        else:
            log._index.delete(PARTITION_STATE, k)

    # A cleaner's swap was interrupted: each named segment holds its old bytes or its new
    # ones (a rename is atomic), and the index may describe either; rebuild theirs from the files.
    raw = get_state(CLEAN_INTENT)
    swapped = set(decode_bases(raw)) if raw else set()
    for i, seg in enumerate(log._segments[:-1]):
        if seg.base_offset in swapped:
            seg.size = os.fstat(seg.fd).st_size
            reindex_sealed(log, seg, log._segments[i + 1].base_offset)

    # Index entries and time entries below the first segment belong to deleted segments.
    first = log._segments[0].base_offset
    log._index.delete_range(OFFSET_INDEX, log._pkey, offset_key(log._pkey, first))
    log._index.delete_range(TIME_INDEX, log._pkey, log._pkey + U64.pack(first))

    epochs = [EpochEntry(int.from_bytes(k[-4:], "big"), Q.unpack(v)[0]) for k, v in
              log._index.items_from(LEADER_EPOCHS, log._pkey, prefix_end(log._pkey))]
    log.leader_epochs = LeaderEpochHistory(epochs)
    rebuilt_epochs: list[tuple[int, int]] = []
    epochs_trusted = True

    for i, seg in enumerate(log._segments):
        file_size = os.fstat(seg.fd).st_size
        is_last = i == len(log._segments) - 1
        if not is_last:
            nxt = log._segments[i + 1].base_offset
            if _sealed_index_agrees(log, seg, nxt, file_size):
                last = log._last_entry(seg, nxt)
                seg.size = file_size
                seg.next_offset = nxt
                seg.max_timestamp = last.segment_max_timestamp if last else -1
                continue
            epochs_trusted = False
            log.recovery_report.append(f"rebuilt the index of sealed segment {seg.path}")
            _clear_index_from(log, seg, seg.base_offset, nxt)
            result = _scan(log, seg, 0, seg.base_offset, -1, -1, sealed=True, file_size=file_size)
            _store_scan(log, seg, result, -1)
            for fence in result.fences:
                log._add_fence(fence)
            rebuilt_epochs.extend(result.epochs)
            seg.size = file_size
            # A file that ends before its successor begins is a gap the cleaner left (offsets
            # are never renumbered), not damage: a torn sealed segment fails its CRC instead.
            seg.next_offset = nxt
            continue
        # The last segment: trust up to the recovery point, scan the rest, cut what is bad.
        start_pos, expected, seg_max = 0, seg.base_offset, -1
        if stored_rp is not None and stored_rp.segment_base == seg.base_offset and stored_rp.position <= file_size:
            if stored_rp.position == 0:
                start_pos, expected = 0, seg.base_offset
            else:
                e = log._last_entry(seg, stored_rp.offset)
                if (e is not None and e.end_position == stored_rp.position and e.next_offset == stored_rp.offset
                        and _entry_matches_file(seg, e, file_size, log.config.batch_bytes_max, log.leader_epochs)):
                    start_pos, expected, seg_max = stored_rp.position, stored_rp.offset, e.segment_max_timestamp
        if start_pos == 0:
            epochs_trusted = epochs_trusted and stored_rp is not None
        # Epochs recorded for appends the crash lost would wrongly reject older-epoch
        # batches that did reach the file.
        for removed in log.leader_epochs.truncate_from_end(expected):
            log._index.delete(LEADER_EPOCHS, epoch_key(log._pkey, removed.epoch))
        # A gap in the tail is believed where the file is known to have been fsynced whole
        # (the recovery point lies in a later segment: this one was sealed, and its successor
        # is gone) or where the index wrote that very batch (base offset, position, size):
        # base_offset lies outside the CRC, and garbage there must not pass for a gap. Else
        # the tail is cut at the gap; a follower fetches those batches again.
        sealed_before = stored_rp is not None and stored_rp.segment_base > seg.base_offset
        indexed = {(e.position, e.base_offset, e.size) for e in
                   (decode_entry(k, v) for k, v in log._index.items_from(
                       OFFSET_INDEX, offset_key(log._pkey, expected), prefix_end(log._pkey)))
                   if e.segment_base == seg.base_offset}
        _clear_index_from(log, seg, expected, None)
        result = _scan(log, seg, start_pos, expected, seg_max,
                            log.leader_epochs.latest_epoch if start_pos else -1,
                            sealed=False, file_size=file_size,
                            gap_ok=None if sealed_before else lambda h, pos: (pos, h.base_offset, h.size) in indexed)
        _store_scan(log, seg, result, seg_max)
        rebuilt_epochs.extend(result.epochs)
        if result.valid_end < file_size:
            reason = result.failure[1] if result.failure else "unknown"
            log.recovery_report.append(
                f"cut {file_size - result.valid_end} bytes from the tail of {seg.path} at byte "
                f"{result.valid_end}: {reason}")
            os.ftruncate(seg.fd, result.valid_end)
        seg.size = result.valid_end
        seg.next_offset = result.next_offset
        seg.max_timestamp = result.max_timestamp
        # The scanned tail may sit only in the page cache (after kill -9): make it durable
        # now, so the recovery point below is true.
        os.fdatasync(seg.fd)
        for fenced_pos in [p for p in log._fences.get(seg.base_offset, {}) if p >= seg.size]:
            log._remove_fence(seg.base_offset, fenced_pos)

    leo = log.log_end_offset
    log._log_start = max(stored_start if stored_start is not None else first, log._segments[0].base_offset)
    log._log_start = min(log._log_start, leo)
    log._index.put(PARTITION_STATE, state_key(log._pkey, LOG_START), Q.pack(log._log_start))
    if not epochs_trusted:
        log._index.delete_range(LEADER_EPOCHS, log._pkey, prefix_end(log._pkey))
        log.leader_epochs = LeaderEpochHistory()
        # rebuilt_epochs covers only scanned segments; read the others' headers.
        _rebuild_epochs(log)
    else:
        for epoch, base in rebuilt_epochs:
            if epoch > log.leader_epochs.latest_epoch and log.leader_epochs.assign(epoch, base):
                log._index.put(LEADER_EPOCHS, epoch_key(log._pkey, epoch), Q.pack(base))
    # The index may predate the retention that moved the log start (it has no WAL); then
    # epochs that start at or past the log end wrote nothing that survived.
    removed, moved = log.leader_epochs.truncate_from_start(log._log_start)
    if moved is not None:
        log._index.put(LEADER_EPOCHS, epoch_key(log._pkey, moved.epoch), Q.pack(moved.start_offset))
    removed += log.leader_epochs.truncate_from_end(leo)
    for e in removed:
        if all(x.epoch != e.epoch for x in log.leader_epochs.entries):
            log._index.delete(LEADER_EPOCHS, epoch_key(log._pkey, e.epoch))
    hw = stored_hw if stored_hw is not None else log._log_start
    if hw > leo:
        log._short_of_high_watermark = hw
    log._high_watermark = max(log._log_start, min(hw, leo))
    log._index.put(PARTITION_STATE, state_key(log._pkey, HIGH_WATERMARK), Q.pack(log._high_watermark))
    last = log._segments[-1]
    log._set_recovery_point(RecoveryPoint(last.base_offset, last.size, last.next_offset))
    if swapped:
        # The rebuilt entries must be durable before the intent goes (finish_reset's reasoning).
        log._index.flush()
        log._index.delete(PARTITION_STATE, state_key(log._pkey, CLEAN_INTENT))
        log._index.flush()
        log.recovery_report.append(f"re-indexed {len(swapped)} segment(s) of an interrupted cleaner swap")


def reindex_sealed(log: "PartitionLog", seg: Segment, next_base: int) -> None:
    """Rebuild the offset and time index of sealed ``seg`` (size set) from its file: after
    the cleaner replaced it. Fences in it are dropped first and whatever the scan finds bad
    is fenced again."""
    for fenced_pos in list(log._fences.get(seg.base_offset, {})):
        log._remove_fence(seg.base_offset, fenced_pos)
    _clear_index_from(log, seg, seg.base_offset, next_base)
    result = _scan(log, seg, 0, seg.base_offset, -1, -1, sealed=True, file_size=seg.size)
    _store_scan(log, seg, result, -1)
    for fence in result.fences:
        log._add_fence(fence)
    seg.next_offset = next_base


def encode_bases(bases: list[int]) -> bytes:
    return b"".join(U64.pack(b) for b in bases)


def decode_bases(raw: bytes) -> list[int]:
    return [U64.unpack_from(raw, i)[0] for i in range(0, len(raw) - len(raw) % 8, 8)]


def _entry_matches_file(seg: Segment, e: IndexEntry, file_size: int, batch_bytes_max: int,
                        epochs: LeaderEpochHistory) -> bool:
    """Does the batch the index entry names sit in the file, whole, with a good CRC, the same
    max timestamp and the epoch the history gives its offset? An index from before a crash
    may describe bytes that were since cut and rewritten, even with batches of the same size."""
    if e.end_position > file_size:
        return False
    try:
        h = validate_batch(seg.read(e.position, e.size), 0, batch_bytes_max)
    except InvalidBatchError:
        return False
    expected_epoch = None
    for entry in epochs.entries:
        if entry.start_offset <= e.base_offset:
            expected_epoch = entry.epoch
    return (h.base_offset == e.base_offset and h.size == e.size and h.max_timestamp == e.max_timestamp
            and (expected_epoch is None or h.leader_epoch == expected_epoch))


def _sealed_index_agrees(log: "PartitionLog", seg: Segment, next_base: int, file_size: int) -> bool:
    first = log._index.first_from(OFFSET_INDEX, offset_key(log._pkey, seg.base_offset),
                                   offset_key(log._pkey, next_base))
    fences = log._fences.get(seg.base_offset, {})
    fe = decode_entry(*first) if first is not None else None
    last = log._last_entry(seg, next_base)
    if file_size == 0:  # the cleaner emptied it: no batch, no entry
        return fe is None and not fences
    # A fence stands for the batches it covers: at the start, at the end, or both. After
    # compaction the first batch may start past the segment's base and the last may end
    # before the next segment's base (gaps).
    starts_ok = fe is not None and fe.position == 0 or 0 in fences
    ends_ok = (last is not None and last.end_position == file_size and last.next_offset <= next_base) \
        or any(f.position + f.size == file_size for f in fences.values())
    return starts_ok and ends_ok

def _clear_index_from(log: "PartitionLog", seg: Segment, from_offset: int, to_offset: int | None) -> None:
    hi = offset_key(log._pkey, to_offset) if to_offset is not None else prefix_end(log._pkey)
    log._index.delete_range(OFFSET_INDEX, offset_key(log._pkey, from_offset), hi)
    seg_prefix = log._pkey + U64.pack(seg.base_offset)
    if from_offset == seg.base_offset:
        log._index.delete_range(TIME_INDEX, seg_prefix, prefix_end(log._pkey) if to_offset is None
                                 else log._pkey + U64.pack(to_offset))
    else:
        for k, v in list(log._index.items_from(TIME_INDEX, seg_prefix, prefix_end(seg_prefix))):
            if U64.unpack(v)[0] >= from_offset:
                log._index.delete(TIME_INDEX, k)
        log._index.delete_range(TIME_INDEX, prefix_end(seg_prefix), prefix_end(log._pkey))

def _scan(log: "PartitionLog", seg: Segment, start: int, expected: int, seg_max: int, last_epoch: int, *,
          sealed: bool, file_size: int, gap_ok: GapCheck | None = None) -> ScanResult:
    return scan_segment(seg, start, expected, seg_max, last_epoch,
                        batch_bytes_max=log.config.batch_bytes_max,
                        window_bytes=log.config.scan_window_bytes, sealed=sealed, file_size=file_size,
                        gap_ok=gap_ok)

def _store_scan(log: "PartitionLog", seg: Segment, result: ScanResult, start_max: int) -> None:
    """Write the index entries a scan found; ``start_max`` is the segment's running max
    timestamp before the scanned part."""
    wb = log._index.batch()
    h_off = log._index.handle[OFFSET_INDEX]
    h_time = log._index.handle[TIME_INDEX]
    prev_max = start_max
    for e in result.entries:
        wb.put(offset_key(log._pkey, e.base_offset), encode_entry(e), h_off)
        if e.segment_max_timestamp > prev_max:
            wb.put(time_key(log._pkey, seg.base_offset, e.segment_max_timestamp), U64.pack(e.base_offset), h_time)
            prev_max = e.segment_max_timestamp
    log._index.write(wb)
    seg.max_timestamp = result.max_timestamp

def _rebuild_epochs(log: "PartitionLog") -> None:
    wb_entries = []
    for seg in log._segments:
        pos = 0
        while pos < seg.size:
            if any(f.position == pos for f in log._fences.get(seg.base_offset, {}).values()):
                f = log._fences[seg.base_offset][pos]
                if f.size == 0:
                    break
                pos += f.size
                continue
            head = seg.read(pos, HEADER_SIZE)
            if len(head) < HEADER_SIZE:
                break
            h = parse_header(head, 0)
            if h.batch_length <= 0:
                break
            if log.leader_epochs.latest_epoch < h.leader_epoch:
                log.leader_epochs.assign(h.leader_epoch, h.base_offset)
                wb_entries.append((h.leader_epoch, h.base_offset))
            pos += h.size
    for epoch, base in wb_entries:
        log._index.put(LEADER_EPOCHS, epoch_key(log._pkey, epoch), Q.pack(base))
