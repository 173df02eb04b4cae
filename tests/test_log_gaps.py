"""Offsets with gaps (compaction never renumbers): appends, reads, recovery and producer state.

A follower fed a compacted log by its leader sees batches whose base offsets jump; a cleaned
segment may start past its base offset, end before its successor, or hold nothing at all.
Every reader of the log must take that, and nothing may accept offsets going back.
"""

from __future__ import annotations

import hashlib
import os
import shutil

import pytest

from kolk.segments import InvalidBatchError, LogConfig, LogStore, OffsetOutOfRangeError, build_batch
from kolk.segments.batch import iter_batches
from kolk.segments.compaction import CompactionPolicy
from kolk.segments.producer_state import ProducerStateTable
from kolk.segments.records import decode_records

NOW = 1_700_000_000_000
CONFIG = LogConfig(segment_bytes=4096, batch_bytes_max=2048, append_bytes_max=8192, read_bytes_max=8192,
                   scan_window_bytes=2048)
POLICY = CompactionPolicy(delete_retention_ms=0, min_compaction_lag_ms=0, key_map_bytes=1 << 20)


def batch(base: int, keys: list[bytes], *, epoch: int = 0, ts: int = NOW, pid: int = -1, seq: int = -1,
          value: bytes = b"v") -> bytes:
    return build_batch([(k, value + k) for k in keys], base_offset=base, leader_epoch=epoch, first_timestamp=ts,
                       producer_id=pid, producer_epoch=0 if pid >= 0 else -1, base_sequence=seq)


def offsets(data: bytes) -> list[int]:
    return [r.offset for pos, _ in iter_batches(data, 1 << 20) for r in decode_records(data, pos)]


@pytest.fixture
def store(tmp_path):
    s = LogStore(str(tmp_path / "data"), clock=lambda: NOW)
    yield s
    s.close(sync=False)


def test_follower_accepts_a_batch_past_its_log_end_and_jumps(store):
    log = store.open_log("p-0", CONFIG)
    log.append_replicated(batch(0, [b"a", b"b"]))
    info = log.append_replicated(batch(7, [b"c"]) + batch(9, [b"d", b"e"]))
    assert (info.base_offset, log.log_end_offset) == (7, 11)
    assert offsets(log.read(0, 1 << 16).data) == [0, 1, 7, 9, 10]


def test_follower_refuses_a_batch_below_its_log_end(store):
    log = store.open_log("p-0", CONFIG)
    log.append_replicated(batch(0, [b"a", b"b", b"c"]))
    with pytest.raises(InvalidBatchError, match=r"starts at offset 2, below 3 where the log ends"):
        log.append_replicated(batch(2, [b"x"]))
    assert log.log_end_offset == 3


def test_follower_refuses_offsets_going_back_inside_one_append(store):
    log = store.open_log("p-0", CONFIG)
    with pytest.raises(InvalidBatchError, match=r"starts at offset 4, below 6"):
        log.append_replicated(batch(5, [b"a"]) + batch(4, [b"b"]))
    assert log.log_end_offset == 0


def test_a_read_in_a_gap_returns_the_next_batch(store):
    log = store.open_log("p-0", CONFIG)
    log.append_replicated(batch(0, [b"a"]) + batch(5, [b"b", b"c"]) + batch(20, [b"d"]))
    log.set_high_watermark(21)
    r = log.read(2, 1 << 16)
    assert offsets(r.data) == [5, 6, 20] and r.next_offset == 21
    assert offsets(log.read(8, 1 << 16).data) == [20]
    r = log.read(8, 1 << 16, upto=20)
    assert (r.data, r.next_offset) == (b"", 20)  # [8, 20) holds nothing: the next read starts at upto


def test_a_gap_that_ends_the_log_reads_as_empty_up_to_the_end(store):
    """A value and its tombstone, cleaned over two passes: the sealed segment ends empty and
    a read anywhere in it says where the next read starts."""
    log = store.open_log("p-0", CONFIG)
    log.append(batch(0, [b"x"]) + build_batch([(b"x", None)], first_timestamp=NOW))
    log.roll()
    log.set_high_watermark(2)
    log.clean(POLICY, NOW)
    assert offsets(log.read(0, 1 << 16).data) == [1]  # the tombstone stays one pass
    log.clean(POLICY, NOW)
    assert [(s.base_offset, s.next_offset, s.size) for s in log.segments()] == [(0, 2, 0), (2, 2, 0)]
    r = log.read(0, 1 << 16)
    assert (r.data, r.next_offset) == (b"", 2)


def test_a_gap_across_segments(store):
    log = store.open_log("p-0", CONFIG)
    log.append_replicated(batch(0, [b"a"]))
    log.roll()
    log.append_replicated(batch(100, [b"b"]))
    assert [s.base_offset for s in log.segments()] == [0, 1]
    assert offsets(log.read(1, 1 << 16).data) == [100]
    assert offsets(log.read(0, 1 << 16).data) == [0, 100]
    assert [h.base_offset for h in log.batch_headers()] == [0, 100]


def test_offset_for_timestamp_steps_over_gaps(store):
    log = store.open_log("p-0", CONFIG)
    log.append_replicated(batch(0, [b"a"], ts=NOW) + batch(10, [b"b"], ts=NOW + 50))
    assert log.offset_for_timestamp(NOW + 1) == 10
    assert log.offset_for_timestamp(NOW + 51) is None


def test_reading_below_the_log_start_still_fails(store):
    log = store.open_log("p-0", CONFIG)
    log.append_replicated(batch(0, [b"a"]) + batch(10, [b"b"]))
    log.set_high_watermark(11)
    log.advance_log_start(5)
    with pytest.raises(OffsetOutOfRangeError, match=r"offset 4 is out of range: the log holds \[5, 11\)"):
        log.read(4, 100)
    assert offsets(log.read(5, 1 << 16).data) == [10]


@pytest.mark.parametrize("index", ["kept", "lost"])
def test_gaps_survive_a_reopen_and_a_lost_index(tmp_path, index):
    data = str(tmp_path / "data")
    s = LogStore(data, clock=lambda: NOW)
    log = s.open_log("p-0", CONFIG)
    log.append_replicated(batch(3, [b"a"]) + batch(8, [b"b"]))
    log.roll()
    log.append_replicated(batch(30, [b"c"]))
    log.sync()
    s.close(sync=False)
    if index == "lost":
        shutil.rmtree(os.path.join(data, "index"))
    s = LogStore(data, clock=lambda: NOW)
    try:
        log = s.open_log("p-0", CONFIG)
        assert log.fenced_batches() == []
        if index == "kept":
            assert log.log_end_offset == 31
            assert offsets(log.read(0, 1 << 16).data) == [3, 8, 30]
        else:
            # Without the index, a gap in the active segment cannot be told from garbage in
            # a base offset (outside the CRC): the tail is cut there, as an unsynced tail would
            # be, and a follower fetches it again. Sealed segments keep their gaps.
            assert log.log_end_offset == 9
            assert offsets(log.read(0, 1 << 16).data) == [3, 8]
            assert any("cut" in line for line in log.recovery_report)
        log.append_replicated(batch(40, [b"d"]))
        assert offsets(log.read(9, 1 << 16).data)[-1] == 40
    finally:
        s.close(sync=False)


def test_producer_state_rebuilds_across_gaps(store):
    log = store.open_log("p-0", CONFIG)
    log.append_replicated(batch(0, [b"a", b"b"], pid=7, seq=0) + batch(9, [b"c"], pid=7, seq=2))
    table = ProducerStateTable.rebuild(log.batch_headers())
    assert table.snapshot()["producers"][0]["batches"][-1] == [2, 2, 9, 9]


def _compacted_log(store):
    """Three sealed segments cleaned into: one starting past its base, one emptied, one
    ending before its successor."""
    log = store.open_log("p-0", CONFIG)
    log.append(batch(0, [b"x"]) + batch(0, [b"a"]))  # 0: x (superseded), 1: a (kept)
    log.roll()
    log.append(batch(0, [b"x", b"y"]))  # 2, 3 (both superseded)
    log.roll()
    log.append(batch(0, [b"x"]) + batch(0, [b"y"]) + batch(0, [b"z"]))  # 4, 5 kept; 6: z superseded
    log.roll()
    log.append(batch(0, [b"z"]))  # 7, the active segment
    log.roll()
    log.append(batch(0, [b"w"]))  # 8
    log.set_high_watermark(log.log_end_offset)
    stats = log.clean(POLICY, NOW + 10)
    assert stats.records_removed == 4
    return log


def test_cleaned_segments_with_gaps_and_an_empty_one(store):
    log = _compacted_log(store)
    assert [(s.base_offset, s.size > 0) for s in log.segments()] == [(0, True), (2, False), (4, True), (7, True),
                                                                      (8, True)]
    assert offsets(log.read(0, 1 << 16).data) == [1, 4, 5, 7, 8]
    assert offsets(log.read(2, 1 << 16).data) == [4, 5, 7, 8]
    assert offsets(log.read(6, 1 << 16).data) == [7, 8]
    assert [h.base_offset for h in log.batch_headers()] == [1, 4, 5, 7, 8]


@pytest.mark.parametrize("index", ["kept", "lost"])
def test_cleaned_segments_reopen_without_fences(tmp_path, index):
    data = str(tmp_path / "data")
    s = LogStore(data, clock=lambda: NOW)
    _compacted_log(s)
    s.close(sync=False)
    if index == "lost":
        shutil.rmtree(os.path.join(data, "index"))
    s = LogStore(data, clock=lambda: NOW)
    try:
        log = s.open_log("p-0", CONFIG)
        assert log.fenced_batches() == []
        assert offsets(log.read(0, 1 << 16).data) == [1, 4, 5, 7, 8]
        assert log.log_end_offset == 9
        assert not any("rebuilt" in line for line in log.recovery_report) or index == "lost"
    finally:
        s.close(sync=False)


def test_holds_key_sees_through_gaps(store):
    log = _compacted_log(store)
    assert log.holds_key(hashlib.sha256(b"z").digest(), 10)
    assert not log.holds_key(hashlib.sha256(b"z").digest(), 6)  # 6 was cleaned, 7 is past upto
    assert not log.holds_key(hashlib.sha256(b"nobody").digest(), 10)


def test_skip_to_moves_the_log_end_across_a_trailing_gap_and_survives_a_reopen(store, tmp_path):
    """A follower whose leader's log ends in a gap (the cleaner removed its last records):
    skip_to seals what it has and starts an empty segment at the leader's end."""
    log = store.open_log("p-0", CONFIG)
    log.append_replicated(batch(0, [b"a", b"b"]))
    log.skip_to(1)  # not past the end: nothing changes
    assert log.log_end_offset == 2
    log.skip_to(9)
    assert (log.log_end_offset, log.segment_count, log.durable_offset) == (9, 2, 9)
    read = log.read(2, 1 << 16)
    assert (read.data, read.next_offset) == (b"", 9)  # the gap reads as empty, going on at 9
    log.append_replicated(batch(9, [b"c"]))
    log.skip_to(15)  # an empty active segment after a sealed one is replaced
    log.skip_to(20)
    assert (log.log_end_offset, log.segment_count) == (20, 3)
    store.close()
    with LogStore(str(tmp_path / "data"), create=False, clock=lambda: NOW) as again:
        lg = again.open_log("p-0", CONFIG)
        assert lg.log_end_offset == 20 and offsets(lg.read(0, 1 << 16).data) == [0, 1, 9]


def test_skip_to_on_an_empty_log_starts_it_again_there(store):
    log = store.open_log("p-0", CONFIG)
    log.skip_to(12)
    assert (log.log_start_offset, log.log_end_offset) == (12, 12)
    log.append_replicated(batch(12, [b"a"]))
    assert offsets(log.read(12, 1 << 16).data) == [12]
