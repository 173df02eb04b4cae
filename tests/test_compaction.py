"""The compaction decision (segments/compaction.py) as pure functions, and its bad input.

A pass is simulated here with the module's own pieces, in the order clean_exec.py uses them
(cleanable range, key map over the dirty range, keep_record per record), over a log made of
plain tuples; hypothesis then checks what a compacted topic promises for any sequence of
keyed records and tombstones.
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kolk.segments.compaction import (
    KEY_MAP_BYTES_MIN,
    KEY_MAP_ENTRY_BYTES,
    CompactionPolicy,
    EraseSpec,
    KeyMap,
    cleanable_count,
    keep_record,
    key_digest,
)
from kolk.segments.retention import SegmentSummary


class Rec(NamedTuple):
    offset: int
    key: bytes
    value: bytes | None  # None: a tombstone
    timestamp: int


def summaries(segments: list[list[Rec]], bases: list[int]) -> list[SegmentSummary]:
    out = []
    for i, seg in enumerate(segments):
        nxt = bases[i + 1] if i + 1 < len(bases) else (seg[-1].offset + 1 if seg else bases[i])
        out.append(SegmentSummary(bases[i], nxt, len(seg), max((r.timestamp for r in seg), default=-1)))
    return out


def one_pass(segments: list[list[Rec]], bases: list[int], cleaned: int, capacity: int, now: int, hw: int,
             lag_ms: int, delete_retention_ms: int) -> tuple[list[list[Rec]], int]:
    """One cleaner pass as clean_exec.py runs it; returns the segments and the new cleaned offset."""
    count = cleanable_count(summaries(segments, bases), high_watermark=hw, now_ms=now, min_compaction_lag_ms=lag_ms)
    if count == 0:
        return segments, cleaned
    end = max(bases[count], cleaned)
    key_map = KeyMap(capacity)
    map_end = end
    for r in (r for seg in segments[:count] for r in seg):
        if cleaned <= r.offset < end and not key_map.put(key_digest(r.key), r.offset):
            map_end = r.offset
            break
    out = []
    for i, seg in enumerate(segments):
        if i >= count:
            out.append(seg)
            continue
        out.append([r for r in seg if keep_record(
            offset=r.offset, digest=key_digest(r.key), tombstone=r.value is None, timestamp=r.timestamp,
            key_map=key_map, map_end=map_end, cleaned_offset=cleaned, now_ms=now,
            delete_retention_ms=delete_retention_ms)])
    return out, max(cleaned, map_end)


def until_stable(segments, bases, capacity, now, hw, lag_ms, delete_retention_ms, passes_max=500):
    cleaned = 0
    for _ in range(passes_max):
        new, new_cleaned = one_pass(segments, bases, cleaned, capacity, now, hw, lag_ms, delete_retention_ms)
        if new == segments and new_cleaned == cleaned:
            return segments, cleaned
        segments, cleaned = new, new_cleaned
    raise AssertionError("the cleaner did not converge")


def latest_view(records: list[Rec]) -> dict[bytes, bytes]:
    """Newest value per key, a tombstone deleting its key."""
    view: dict[bytes, bytes] = {}
    for r in records:
        if r.value is None:
            view.pop(r.key, None)
        else:
            view[r.key] = r.value
    return view


@st.composite
def logs(draw):
    n = draw(st.integers(1, 60))
    keys = draw(st.lists(st.binary(min_size=1, max_size=3), min_size=1, max_size=8, unique=True))
    ts = 1_000
    records = []
    for offset in range(n):
        ts += draw(st.integers(0, 50))
        key = draw(st.sampled_from(keys))
        value = draw(st.none() | st.binary(max_size=2))
        records.append(Rec(offset, key, value, ts))
    cuts = sorted(set(draw(st.lists(st.integers(1, n), max_size=6))))
    bounds = [0, *[c for c in cuts if c < n], n]
    segments = [records[a:b] for a, b in zip(bounds, bounds[1:])]
    segments.append([])  # the active segment, empty
    bases = bounds[:-1] + [n]
    return segments, bases, ts


@settings(max_examples=300, deadline=None)
@given(logs(), st.integers(1, 10), st.integers(0, 3000), st.integers(0, 400), st.integers(0, 2000),
       st.integers(0, 60))
def test_cleaning_keeps_the_newest_value_per_key(log, capacity, later_ms, lag_ms, delete_retention_ms, hw_cut):
    segments, bases, last_ts = log
    now = last_ts + later_ms
    records = [r for seg in segments for r in seg]
    hw = max(0, len(records) - hw_cut)
    cleaned_segs, cleaned = until_stable(segments, bases, capacity, now, hw, lag_ms, delete_retention_ms)
    kept = [r for seg in cleaned_segs for r in seg]
    # Offsets strictly increase and every kept record is an original, unchanged.
    assert [r.offset for r in kept] == sorted({r.offset for r in kept})
    assert set(kept) <= set(records)
    # The newest-value-per-key view is the model's.
    assert latest_view(kept) == latest_view(records)
    # Nothing in a segment that is active, at or past the high watermark, or younger than
    # the lag was touched; nor anything after such a segment.
    count = cleanable_count(summaries(segments, bases), high_watermark=hw, now_ms=now, min_compaction_lag_ms=lag_ms)
    assert cleaned_segs[count:] == segments[count:]
    # Within the cleaned segments, only superseded records and old tombstones went.
    for r in set(records) - set(kept):
        newest = max(x.offset for x in records if x.key == r.key)
        assert r.offset < newest or (r.value is None and r.timestamp + delete_retention_ms <= now)


@settings(max_examples=200, deadline=None)
@given(logs(), st.integers(1, 4), st.integers(0, 3000), st.integers(0, 2000))
def test_small_key_map_converges_to_one_big_pass(log, capacity, later_ms, delete_retention_ms):
    """Passes with a key map too small for the dirty range end where passes with a map that
    holds every key do."""
    segments, bases, last_ts = log
    now = last_ts + later_ms
    hw = bases[-1]
    small, _ = until_stable(segments, bases, capacity, now, hw, 0, delete_retention_ms)
    big, _ = until_stable(segments, bases, 10_000, now, hw, 0, delete_retention_ms)
    assert small == big


def test_one_pass_with_a_full_map_stops_inside_a_segment():
    """Three keys, room for two: the map ends at the third key's first record, inside the
    one segment, and the records at or past it are untouched by that pass."""
    recs = [Rec(0, b"a", b"1", 1), Rec(1, b"b", b"1", 1), Rec(2, b"a", b"2", 1), Rec(3, b"c", b"1", 1),
            Rec(4, b"a", b"3", 1)]
    segs, cleaned = one_pass([recs, []], [0, 5], 0, 2, 10**6, 5, 0, 0)
    assert cleaned == 3
    assert [r.offset for r in segs[0]] == [1, 2, 3, 4]  # 0 superseded by 2 inside the map; 4 untouched
    segs, cleaned = one_pass(segs, [0, 5], cleaned, 2, 10**6, 5, 0, 0)
    assert cleaned == 5 and [r.offset for r in segs[0]] == [1, 3, 4]


def test_tombstone_stays_one_pass_and_until_delete_retention():
    recs = [Rec(0, b"k", b"v", 100), Rec(1, b"k", None, 100)]
    segs, cleaned = one_pass([recs, []], [0, 2], 0, 10, 10_000, 2, 0, 500)
    assert segs[0] == [recs[1]]  # the value goes, the tombstone stays (not below a cleaned point yet)
    segs2, _ = one_pass(segs, [0, 2], cleaned, 10, 599, 2, 0, 500)
    assert segs2[0] == [recs[1]]  # below the cleaned point, but 100 + 500 > 599
    segs3, _ = one_pass(segs, [0, 2], cleaned, 10, 600, 2, 0, 500)
    assert segs3[0] == []


def test_keyless_records_always_stay():
    km = KeyMap(4)
    assert keep_record(offset=0, digest=None, tombstone=True, timestamp=0, key_map=km, map_end=10,
                       cleaned_offset=10, now_ms=10**9, delete_retention_ms=0)


def test_cleanable_count_stops_at_lag_watermark_and_active():
    segs = [SegmentSummary(0, 10, 1, 100), SegmentSummary(10, 20, 1, 900), SegmentSummary(20, 30, 1, 100),
            SegmentSummary(30, 30, 0, -1)]
    assert cleanable_count(segs, high_watermark=30, now_ms=1000, min_compaction_lag_ms=0) == 3
    assert cleanable_count(segs, high_watermark=30, now_ms=1000, min_compaction_lag_ms=200) == 1
    assert cleanable_count(segs, high_watermark=19, now_ms=1000, min_compaction_lag_ms=0) == 1


def test_key_map_cap():
    km = KeyMap(2)
    assert km.put(b"a", 1) and km.put(b"b", 2) and km.put(b"a", 3)
    assert not km.put(b"c", 4)
    assert len(km) == 2 and km.get(b"a") == 3 and km.get(b"c") is None


def test_policy_key_map_entries_from_bytes():
    p = CompactionPolicy(delete_retention_ms=0, min_compaction_lag_ms=0, key_map_bytes=1000 * KEY_MAP_ENTRY_BYTES)
    assert p.key_map_entries == 1000


def test_erase_matches_by_sha256_up_to_the_offset():
    spec = EraseSpec(hashlib.sha256(b"alice").digest(), 10)
    assert spec.matches(10, b"alice") and not spec.matches(11, b"alice")
    assert not spec.matches(3, b"bob") and not spec.matches(3, None)


@pytest.mark.parametrize("kwargs, message", [
    (dict(delete_retention_ms=-1, min_compaction_lag_ms=0, key_map_bytes=KEY_MAP_BYTES_MIN), "delete_retention_ms=-1"),
    (dict(delete_retention_ms=0, min_compaction_lag_ms=-5, key_map_bytes=KEY_MAP_BYTES_MIN), "min_compaction_lag_ms=-5"),
    (dict(delete_retention_ms=0, min_compaction_lag_ms=0, key_map_bytes=100), "key_map_bytes=100 is below 136"),
    (dict(delete_retention_ms=0, min_compaction_lag_ms=0, key_map_bytes=KEY_MAP_BYTES_MIN, bytes_per_s=-1),
     "bytes_per_s=-1"),
])
def test_bad_policy_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CompactionPolicy(**kwargs)


def test_erase_spec_needs_a_sha256():
    with pytest.raises(ValueError, match="32 bytes"):
        EraseSpec(b"short", 1)


def test_erase_spec_needs_a_nonnegative_offset():
    with pytest.raises(ValueError, match="upto_offset=-1"):
        EraseSpec(bytes(32), -1)


def test_key_map_needs_room():
    with pytest.raises(ValueError, match="at least one key"):
        KeyMap(0)
