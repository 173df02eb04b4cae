"""When to roll the active segment and which old segments retention deletes. Pure functions.

Retention deletes whole segments from the oldest, never the active one and never one that
holds offsets at or beyond the high watermark (a consumer may not have been allowed to read
them yet, and a follower may still need them), as in Kafka.

A sealed segment with no bytes (the cleaner removed every record of it, see cleaner.py) holds
nothing to keep: retention by age deletes it whenever it reaches it, so an emptied segment
never stops the segments after it from expiring on a topic that both compacts and deletes.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence


class SegmentSummary(NamedTuple):
    base_offset: int
    next_offset: int
    size: int
    max_timestamp: int  # -1 when the segment is empty


def should_roll(
    active_size: int, incoming_bytes: int, age_ms: int, segment_bytes: int, segment_ms: int
) -> bool:
    """Roll before an append when the active segment is non-empty and would pass its size
    limit, or has lived ``segment_ms``."""
    if active_size == 0:
        return False
    return active_size + incoming_bytes > segment_bytes or age_ms >= segment_ms


def segments_to_delete(
    segments: Sequence[SegmentSummary],
    *,
    now_ms: int,
    retention_ms: int,
    retention_bytes: int,
    high_watermark: int,
) -> int:
    """How many of the oldest ``segments`` retention deletes now (the last is active)."""
    total = sum(s.size for s in segments)
    count = 0
    for seg in segments[:-1]:
        if seg.next_offset > high_watermark:
            break
        too_old = retention_ms >= 0 and (seg.size == 0 or seg.max_timestamp >= 0
                                         and now_ms - seg.max_timestamp > retention_ms)
        too_big = retention_bytes >= 0 and total - seg.size >= retention_bytes
        if not (too_old or too_big):
            break
        total -= seg.size
        count += 1
    return count
