"""Cutting a partition log short, starting it again, and jumping its end across a gap:
the operations that remove offsets at the end (a follower diverged from its leader, a replica
rebuilt, a leader whose cleaner removed its last records). Functions of a
:class:`~kolk.segments.log.PartitionLog` (its methods call them), split from log.py to keep
each file to one concept; they use the log's internals as reader.py does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import OffsetOutOfRangeError
from .index_db import (LEADER_EPOCHS, OFFSET_INDEX, PARTITION_STATE, Q, RecoveryPoint, decode_entry, epoch_key,
                       offset_key, prefix_end, state_key)
from .leader_epochs import LeaderEpochHistory
from .loader import RESET_TO, finish_reset
from .segment import Segment, fsync_directory

if TYPE_CHECKING:
    from .log import PartitionLog


def skip_log(log: "PartitionLog", offset: int) -> None:
    """Move the log end to ``offset`` with no record in between (a follower whose leader's
    cleaner removed every record from this log's end to ``offset``): the active segment is
    sealed (fsynced) and an empty one starts at ``offset``; an empty active segment is
    replaced. No-op when ``offset`` is not past the log end."""
    log._check_open()
    active = log._segments[-1]
    if offset <= active.next_offset:
        return
    if active.size > 0:
        log._fsync_segment(active)
        log._dirty.discard(active)
    elif len(log._segments) == 1:
        log.reset_to(offset)  # nothing is held: start again, empty, at ``offset``
        return
    try:
        seg = Segment(log.directory, offset, log._clock(), create=True)
        seg.next_offset = offset
        if active.size == 0:
            log._segments.pop()
            log._drop_segment(active)
        log._segments.append(seg)
        fsync_directory(log.directory)
    except OSError as e:
        raise log._guard.fail(f"skip of {log.directory} to offset {offset}: {e}") from e
    log._index.flush()
    log._set_recovery_point(RecoveryPoint(seg.base_offset, 0, seg.base_offset))


def truncate_log(log: "PartitionLog", offset: int) -> int:
    """Remove every batch holding an offset >= ``offset``; returns the new log end.

    When ``offset`` falls inside a batch, the whole batch goes (batches are never split),
    so the log may end below ``offset``, as in Kafka. The cut is fsynced before returning.
    Should that batch also hold the log start, the log is reset, empty, to its log start.
    """
    log._check_open()
    leo = log.log_end_offset
    if not log._log_start <= offset <= leo:
        raise OffsetOutOfRangeError(offset, log._log_start, leo)
    if offset == leo:
        return leo
    # Appends not yet fsynced below the cut must be durable before the recovery point moves.
    log.sync()
    found = log._index.last_before(OFFSET_INDEX, offset_key(log._pkey, offset), log._pkey)
    entry = decode_entry(*found) if found else None
    if entry is not None and entry.next_offset <= offset:
        seg = log._segment(entry.segment_base)
        cut_seg, cut_pos, new_end = seg, entry.end_position, entry.next_offset
    elif entry is not None:
        cut_seg, cut_pos, new_end = log._segment(entry.segment_base), entry.position, entry.base_offset
        if cut_pos > 0:
            # The log ends where the batch before the cut ends: a gap between them goes too.
            before = log._last_entry(cut_seg, entry.base_offset)
            if before is not None:
                new_end = before.next_offset
    else:
        cut_seg, cut_pos, new_end = log._segments[0], 0, log._segments[0].base_offset
    if cut_pos == 0 and cut_seg is not log._segments[0]:
        # The whole cut segment goes: the log then ends after the previous segment's last
        # batch (a gap the cleaner left at its end goes with the cut), as a reopen finds it.
        prev = log._segments[log._segments.index(cut_seg) - 1]
        last = log._last_entry(prev, cut_seg.base_offset)
        new_end = last.next_offset if last is not None else prev.base_offset
    elif cut_pos == 0:
        new_end = cut_seg.base_offset  # the first segment is emptied (its first batch may lie past its base)
    if new_end < log._log_start:
        # The batch holding ``offset`` also holds the log start (moved inside it by
        # advance_log_start): every readable offset goes, and the log starts again, empty,
        # at its log start, which never moves back.
        log.reset_to(log._log_start)
        return log.log_end_offset
    if log._high_watermark > new_end:
        # Lowered and flushed before any file shrinks: a crash part way must not leave a
        # persisted high watermark above the log end, which the next open would take for
        # lost acknowledged records (short_of_high_watermark).
        log.set_high_watermark(max(new_end, log._log_start))
        log._index.flush()
    log._generation += 1
    try:
        # Segments after the cut go first (newest first), then the cut segment is shortened.
        while log._segments[-1] is not cut_seg and len(log._segments) > 1:
            log._drop_segment(log._segments.pop())
        if cut_pos == 0 and cut_seg is not log._segments[0]:
            log._drop_segment(log._segments.pop())
            cut_seg = log._segments[-1]
            cut_pos = cut_seg.size
        else:
            cut_seg.truncate(cut_pos)
            log._fsync_segment(cut_seg)
        cut_seg.next_offset = new_end if cut_pos > 0 else cut_seg.base_offset
        fsync_directory(log.directory)
    except OSError as e:
        raise log._guard.fail(f"truncation of {log.directory} to offset {offset}: {e}") from e
    log._index.delete_range(OFFSET_INDEX, offset_key(log._pkey, cut_seg.next_offset), prefix_end(log._pkey))
    log._trim_time_index(cut_seg)
    for fenced_pos in [p for p in log._fences.get(cut_seg.base_offset, {}) if p >= cut_pos]:
        log._remove_fence(cut_seg.base_offset, fenced_pos)
    for removed in log.leader_epochs.truncate_from_end(cut_seg.next_offset):
        log._index.delete(LEADER_EPOCHS, epoch_key(log._pkey, removed.epoch))
    if log._high_watermark > cut_seg.next_offset:
        log.set_high_watermark(cut_seg.next_offset)
    log._dirty.discard(cut_seg)
    log._set_recovery_point(RecoveryPoint(cut_seg.base_offset, cut_seg.size, cut_seg.next_offset))
    # The index has no WAL: persist the cut now, or after a crash a stale recovery point
    # and stale entries would describe bytes that new appends have since replaced.
    log._index.flush()
    return log.log_end_offset


def reset_log(log: "PartitionLog", start_offset: int) -> None:
    """Drop the whole log and start it again, empty, at ``start_offset`` (a follower whose
    leader's log starts past this log's end, or a new replica). Any offset >= 0 may be given.

    Crash-safe: the intent is flushed to the index before any file changes, and an open
    that finds it finishes the reset (loader.finish_reset), so a crash leaves either the old
    log or the empty one. If a step fails here the log is closed; reopening finishes it.
    """
    log._check_open()
    if start_offset < 0:
        raise ValueError(f"reset_to offset {start_offset} is negative")
    log._generation += 1  # in-flight sync tickets must not claim the old data
    try:
        log._index.put(PARTITION_STATE, state_key(log._pkey, RESET_TO), Q.pack(start_offset))
        log._index.flush()
        for seg in reversed(log._segments):
            seg.delete()  # newest first, as in finish_reset; regions handed out now refuse
        log._segments = []
        log._dirty.clear()
        log._fences.clear()
        finish_reset(log.directory, log._index, log._pkey, start_offset)
        seg = Segment(log.directory, start_offset, log._clock(), create=False)
    except OSError as e:
        failure = log._guard.fail(f"reset of {log.directory} to offset {start_offset}: {e}")
        log.close(sync=False)
        raise failure from e
    except BaseException:
        log.close(sync=False)
        raise
    log._segments = [seg]
    log._log_start = log._high_watermark = start_offset
    log._recovery_point = RecoveryPoint(start_offset, 0, start_offset)
    log.leader_epochs = LeaderEpochHistory()
