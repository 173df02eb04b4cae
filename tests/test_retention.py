"""Roll and retention decisions (segments/retention.py) as pure functions, table-driven."""

from __future__ import annotations

import pytest

from kolk.segments.retention import SegmentSummary, segments_to_delete, should_roll

S = SegmentSummary


@pytest.mark.parametrize(
    "active, incoming, age, expected",
    [
        (0, 10_000, 10**9, False),  # an empty segment never rolls, whatever its age or the batch size
        (900, 100, 0, False),  # exactly full is still fine
        (900, 101, 0, True),  # one byte over rolls
        (1, 1, 999, False),
        (1, 1, 1000, True),  # age reached
    ],
)
def test_should_roll(active: int, incoming: int, age: int, expected: bool) -> None:
    """A non-empty active segment rolls before it would pass segment_bytes or at segment_ms."""
    assert should_roll(active, incoming, age, segment_bytes=1000, segment_ms=1000) is expected


SEGS = [S(0, 10, 100, 1_000), S(10, 20, 100, 2_000), S(20, 30, 100, 3_000), S(30, 35, 50, 4_000)]


@pytest.mark.parametrize(
    "now, retention_ms, retention_bytes, hw, expected",
    [
        (10_000, -1, -1, 35, 0),  # no limits: keep everything
        (2_500, 1_000, -1, 35, 1),  # only the first segment's newest record is older than 1 s
        (10_000, 1_000, -1, 35, 3),  # all old, but the active segment is never deleted
        (10_000, 1_000, -1, 15, 1),  # nothing at or past the high watermark is deleted
        (10_000, 1_000, -1, 20, 2),  # a segment ending exactly at the HW may go
        (0, -1, 250, 35, 1),  # 350 bytes, limit 250: dropping one leaves 250
        (0, -1, 100, 35, 2),  # dropping a third would leave 50 < 100 but Kafka's rule: size - seg >= limit
        (0, -1, 1, 35, 3),
        (0, -1, 10_000, 35, 0),
    ],
)
def test_segments_to_delete(now: int, retention_ms: int, retention_bytes: int, hw: int, expected: int) -> None:
    """Oldest first, whole segments, never the active one, never past the high watermark; a
    segment goes when it is too old or when the log stays at or above retention_bytes without it."""
    assert segments_to_delete(SEGS, now_ms=now, retention_ms=retention_ms, retention_bytes=retention_bytes,
                              high_watermark=hw) == expected


def test_empty_sealed_segment_goes_with_retention_by_age() -> None:
    """A sealed segment with no bytes (the cleaner emptied it) holds nothing to keep: it goes
    as soon as retention by age reaches it, and does not stop the old segments after it."""
    segs = [S(0, 10, 0, -1), S(10, 20, 100, 1_000), S(20, 25, 10, 9_000)]
    assert segments_to_delete(segs, now_ms=5_000, retention_ms=1_000, retention_bytes=-1, high_watermark=25) == 2
    assert segments_to_delete(segs, now_ms=1_500, retention_ms=1_000, retention_bytes=-1, high_watermark=25) == 1


def test_empty_sealed_segment_is_kept_without_time_retention() -> None:
    """With no age limit, an empty segment is judged by size alone, like any other."""
    segs = [S(0, 10, 0, -1), S(10, 15, 10, 100)]
    assert segments_to_delete(segs, now_ms=10**12, retention_ms=-1, retention_bytes=-1, high_watermark=15) == 0
