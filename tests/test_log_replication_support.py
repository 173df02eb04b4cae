"""What replication needs of the partition log besides appends: ``reset_to`` (a follower starts
its log again at the leader's log start) and ``batch_headers`` (producer state is rebuilt from
the batch headers after a failover or a truncation).

reset_to must be crash-safe: whatever step a crash interrupts, the reopened log is either the
old log, whole, or an empty log at the new start; never old data at offsets it no longer has.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

import kolk.segments.loader as loader_module
from kolk.segments import (
    CorruptBatchError,
    LogClosedError,
    LogConfig,
    LogStore,
    OffsetOutOfRangeError,
    PartitionLog,
    SegmentDeletedError,
    build_batch,
    decode_records,
    parse_header,
)
from kolk.segments.batch import HEADER_SIZE

from crash_copy import copy_live_directory
from kolk.segments.index_db import (
    LEADER_EPOCHS,
    OFFSET_INDEX,
    PARTITION_STATE,
    TIME_INDEX,
    IndexDb,
    prefix_end,
)
from kolk.segments.retention import SegmentSummary

NAME = "orders-0"
TS0 = 1_700_000_000_000
SMALL = LogConfig(segment_bytes=1024, batch_bytes_max=512, append_bytes_max=1024)


# --------------------------------------------------------------------------- helpers


def make_batch(tag: str, n: int = 3, ts: int = TS0, pid: int = -1, pepoch: int = -1, seq: int = -1) -> bytes:
    return build_batch([(f"{tag}/{j}".encode(), f"{tag}:{j}".encode() * 4) for j in range(n)],
                       timestamps=[ts + j for j in range(n)],
                       producer_id=pid, producer_epoch=pepoch, base_sequence=seq)


@contextmanager
def opened(data_dir: Path, config: LogConfig | None = SMALL) -> Iterator[PartitionLog]:
    store = LogStore(str(data_dir))
    try:
        yield store.open_log(NAME, config)
    finally:
        store.close()


def records(log: PartitionLog) -> list[tuple[int, bytes | None]]:
    out, offset = [], log.log_start_offset
    while offset < log.log_end_offset:
        r = log.read(offset, 1 << 20)
        pos = 0
        while pos < len(r.data):
            h = parse_header(r.data, pos)
            out.extend((x.offset, x.key) for x in decode_records(r.data, pos) if x.offset >= offset)
            pos += h.size
        assert r.next_offset > offset
        offset = r.next_offset
    return out


def state(log: PartitionLog) -> dict:
    """Everything a test compares between the old log and the log after a crash."""
    return dict(start=log.log_start_offset, end=log.log_end_offset, hw=log.high_watermark,
                epochs=log.leader_epochs.entries, segments=log.segments(), records=records(log),
                headers=list(log.batch_headers()))


def index_keys(log: PartitionLog, cf: str) -> list[bytes]:
    return [k for k, _ in log._index.items_from(cf, log._pkey, prefix_end(log._pkey))]


def assert_empty_at(log: PartitionLog, start: int) -> None:
    assert (log.log_start_offset, log.log_end_offset, log.high_watermark, log.durable_offset) == (start,) * 4
    assert log.segments() == [SegmentSummary(start, start, 0, -1)]
    assert os.listdir(log.directory) == [f"{start:020d}.log"]
    assert log.leader_epochs.entries == [] and log.fenced_batches() == []
    assert index_keys(log, OFFSET_INDEX) == [] and index_keys(log, TIME_INDEX) == []
    assert index_keys(log, LEADER_EPOCHS) == []
    assert [k[len(log._pkey):] for k in index_keys(log, PARTITION_STATE)] == \
        [b"high_watermark", b"log_start_offset", b"recovery_point"]
    assert list(log.batch_headers()) == []
    assert log.read(start, 1 << 20).data == b""
    assert log.offset_for_timestamp(0) is None


def fill(log: PartitionLog, batches: int = 12, epochs: tuple[int, ...] = (0, 2)) -> list:
    """Appends with producer ids over several segments; returns the headers the appends made."""
    made = []
    for i in range(batches):
        epoch = epochs[i * len(epochs) // batches]
        data = make_batch(f"b{i}", n=1 + i % 3, ts=TS0 + 10 * i, pid=100 + i % 4, pepoch=i % 2, seq=i)
        info = log.append(data, leader_epoch=epoch)
        made.append(parse_header(data)._replace(base_offset=info.base_offset, leader_epoch=epoch))
    log.sync()
    return made




@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


# --------------------------------------------------------------------------- reset_to


@pytest.mark.parametrize("start", [0, 7])
def test_reset_of_an_empty_log(data_dir: Path, start: int) -> None:
    with opened(data_dir) as log:
        gen = log.generation
        log.reset_to(start)
        assert log.generation > gen
        assert_empty_at(log, start)
        with pytest.raises(OffsetOutOfRangeError):
            log.read(start + 1, 100)
        assert log.append(make_batch("x")).base_offset == start
    with opened(data_dir) as log:
        assert not log.recovery_report
        assert records(log) == [(start + j, f"x/{j}".encode()) for j in range(3)]


@pytest.mark.parametrize("where", ["past the end", "at the end", "inside the log", "active segment base",
                                   "zero", "below the log start"])
def test_reset_of_a_log_with_several_segments(data_dir: Path, where: str) -> None:
    """Every segment goes, the new empty one starts at the given offset, the indexes and the
    leader-epoch history are empty (an epoch older than the old log's latest is accepted),
    appends and reads work from there, and a reopen gives the same log."""
    config = LogConfig(segment_bytes=1024, batch_bytes_max=512, append_bytes_max=1024,
                       retention_bytes=1500, retention_ms=-1)
    with opened(data_dir, config) as log:
        fill(log, 20)
        log.set_high_watermark(log.log_end_offset)
        if where == "below the log start":
            assert log.enforce_retention(now_ms=TS0)
        assert len(log.segments()) >= 3
        leo, segs = log.log_end_offset, log.segments()
        start = {"past the end": leo + 1000, "at the end": leo, "inside the log": leo // 2,
                 "active segment base": segs[-1].base_offset, "zero": 0,
                 "below the log start": log.log_start_offset - 1}[where]
        old_paths = log.segment_paths()
        region = log.read(log.log_start_offset, 100).regions[0]
        log.reset_to(start)
        assert_empty_at(log, start)
        assert not any(os.path.exists(p) for p in old_paths if not p.endswith(f"{start:020d}.log"))
        with pytest.raises(SegmentDeletedError):
            region.read()
        if start > 0:
            with pytest.raises(OffsetOutOfRangeError) as e:
                log.read(start - 1, 1 << 20)
            assert (e.value.log_start_offset, e.value.log_end_offset) == (start, start)
        with pytest.raises(OffsetOutOfRangeError):
            log.read(start + 1, 1 << 20)
        with pytest.raises(OffsetOutOfRangeError):
            log.truncate_to(start - 1) if start > 0 else log.truncate_to(start + 1)
        with pytest.raises(ValueError):
            log.reset_to(-1)
        made = [log.append(make_batch(f"n{i}", ts=TS0 + i), leader_epoch=1) for i in range(8)]
        assert [m.base_offset for m in made] == [start + 3 * i for i in range(8)]
        assert len(log.segments()) >= 2
        assert log.leader_epochs.entries == [(1, start)]
        assert log.offset_for_timestamp(TS0 + 5) == start + 11  # batch 3 holds TS0+3..TS0+5
        log.sync()
        after = state(log)
        assert [r[0] for r in after["records"]] == list(range(start, start + 24))
        assert after["records"][0][1] == b"n0/0"
    with opened(data_dir, config) as log:
        assert not log.recovery_report, log.recovery_report
        assert state(log) == after
        with pytest.raises(OffsetOutOfRangeError):
            log.read(max(start - 1, 0) if start else -1, 1)


def test_reset_bumps_the_generation_so_an_inflight_sync_claims_nothing(data_dir: Path) -> None:
    with opened(data_dir) as log:
        fill(log, 4)
        log.append(make_batch("unsynced"), leader_epoch=2)
        ticket = log.begin_sync()
        log.reset_to(500)
        ticket.run()
        assert log.complete_sync(ticket) == 500 == log.durable_offset


# A crash before operation k of reset_to: these are the operations counted.
def _hook_operations(monkeypatch: pytest.MonkeyPatch, crash_at: int, on_crash) -> list[str]:
    done: list[str] = []
    armed = [True]

    def wrap(name: str, fn):
        def hooked(*a, **kw):
            if armed[0] and len(done) + 1 == crash_at:
                armed[0] = False  # on_crash itself may unlink
                on_crash()
                raise _Crash(name)
            if armed[0]:
                done.append(name)
            return fn(*a, **kw)
        return hooked

    for meth in ("put", "delete", "delete_range", "flush"):
        monkeypatch.setattr(IndexDb, meth, wrap(f"index.{meth}", getattr(IndexDb, meth)))
    monkeypatch.setattr(os, "unlink", wrap("unlink", os.unlink))
    monkeypatch.setattr(loader_module, "fsync_directory", wrap("fsync_directory", loader_module.fsync_directory))
    monkeypatch.setattr(loader_module, "Segment", wrap("create segment", loader_module.Segment))
    return done


class _Crash(BaseException):
    pass


# `make test-long`: each case crashes at every one of hundreds of steps (10-40 s each);
# the other tests of this file and the log model (tests/test_log_model.py) cover reset_to in `make test`.
@pytest.mark.long
@pytest.mark.parametrize("start_kind,index_state", [
    ("past the end", "as killed"), ("past the end", "complete"),
    ("inside the log", "as killed"), ("zero", "as killed"), ("zero", "complete")])
def test_crash_at_every_step_of_reset_leaves_old_or_empty_log(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, start_kind: str, index_state: str) -> None:
    """A crash before each file or index operation of reset_to in turn (and right after it
    returns): on reopen the log is the old one, whole, or empty at the new start; once the
    reset's intent was flushed, always the empty one. The index is taken as a kill -9 leaves it
    (a copy of its directory at the crash: it has no WAL) or complete (flushed on close). The
    reopened log appends, and what it appends survives another reopen."""
    k = 0
    outcomes = []
    while True:
        k += 1
        data_dir = tmp_path / f"k{k}"
        with opened(data_dir) as log:
            fill(log, 20)
            log.set_high_watermark(log.log_end_offset - 5)
            old = state(log)
        assert len(old["segments"]) >= 3
        start = {"past the end": old["end"] + 100, "inside the log": old["end"] // 2, "zero": 0}[start_kind]
        index_dir = data_dir / "index"
        killed = tmp_path / f"k{k}-index-killed"
        store = LogStore(str(data_dir))
        log = store.open_log(NAME, SMALL)
        done = _hook_operations(monkeypatch, k, lambda: copy_live_directory(str(index_dir), str(killed)))
        crashed = True
        try:
            log.reset_to(start)
            crashed = False
        except _Crash:
            pass
        finally:
            monkeypatch.undo()
        if crashed:
            assert log.closed
            with pytest.raises(LogClosedError):
                log.append(make_batch("late"))
        else:
            copy_live_directory(str(index_dir), str(killed))
        store.close(sync=False)
        if index_state == "as killed":
            shutil.rmtree(index_dir)
            os.rename(killed, index_dir)
        with opened(data_dir) as log:
            now = state(log)
            if now == old:
                outcome = "old"
            else:
                assert_empty_at(log, start)
                outcome = "empty"
            outcomes.append(outcome)
            if "index.flush" in done:  # the intent is durable: the reset must happen
                assert outcome == "empty", (k, done, log.recovery_report)
            log.append(make_batch("after", ts=TS0 + 999), leader_epoch=2)
            log.sync()
            final = state(log)
        with opened(data_dir) as log:
            assert not log.recovery_report, log.recovery_report
            assert state(log) == final
        if not crashed:
            break
    assert outcomes[0] == "old" and outcomes[-1] == "empty"
    assert k >= 10  # the counted operations ran, one crash each
    assert outcomes == sorted(outcomes, key=lambda o: o == "empty")  # old ... old, empty ... empty


# --------------------------------------------------------------------------- batch_headers


def _fields(headers) -> list[tuple]:
    return [(h.base_offset, h.last_offset_delta, h.record_count, h.leader_epoch, h.producer_id,
             h.producer_epoch, h.base_sequence, h.max_timestamp, h.crc) for h in headers]


def test_batch_headers_equal_the_appended_ones_across_rolls(data_dir: Path) -> None:
    with opened(data_dir) as log:
        made = fill(log, 30, epochs=(0, 1, 4))
        # Several batches in one append too.
        data = make_batch("m1", pid=7, pepoch=0, seq=40) + make_batch("m2", n=2, pid=7, pepoch=0, seq=43)
        info = log.append(data, leader_epoch=4)
        h1 = parse_header(data)
        h2 = parse_header(data, h1.size)
        made += [h1._replace(base_offset=info.base_offset, leader_epoch=4),
                 h2._replace(base_offset=info.base_offset + 3, leader_epoch=4)]
        assert len(log.segments()) >= 4
        got = list(log.batch_headers())
        assert _fields(got) == _fields(made)
        # From the batch holding an offset; at the end nothing; outside the log an error.
        mid = made[10]
        assert _fields(log.batch_headers(mid.base_offset + mid.last_offset_delta)) == _fields(made[10:])
        assert _fields(log.batch_headers(mid.base_offset)) == _fields(made[10:])
        assert list(log.batch_headers(log.log_end_offset)) == []
        for bad in (-1, log.log_end_offset + 1):
            with pytest.raises(OffsetOutOfRangeError):
                log.batch_headers(bad)
    shutil.rmtree(data_dir / "index")
    with opened(data_dir) as log:  # rebuilt from the segments: the same
        assert _fields(log.batch_headers()) == _fields(made)


def test_batch_headers_in_chunks_and_appends_meanwhile(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import kolk.segments.reader as reader_module
    monkeypatch.setattr(reader_module, "_HEADERS_CHUNK", 3)
    with opened(data_dir) as log:
        made = fill(log, 11)
        it = log.batch_headers()
        first = [next(it) for _ in range(4)]
        log.append(make_batch("late", pid=9), leader_epoch=2)
        rest = list(it)
        assert _fields(first + rest[:7]) == _fields(made)
        assert [h.producer_id for h in rest[7:]] == [9]


@pytest.mark.parametrize("cut", ["batch boundary", "inside a batch", "segment base", "log start"])
def test_batch_headers_after_truncate_to(data_dir: Path, cut: str) -> None:
    with opened(data_dir) as log:
        made = fill(log, 20)
        segs = log.segments()
        assert len(segs) >= 3
        offset = {"batch boundary": made[9].base_offset, "inside a batch": made[9].base_offset + 1,
                  "segment base": segs[1].base_offset, "log start": 0}[cut]
        end = log.truncate_to(offset)
        kept = [h for h in made if h.base_offset + h.last_offset_delta < end]
        assert _fields(log.batch_headers()) == _fields(kept)
        data = make_batch("new", pid=55, pepoch=3, seq=0)
        info = log.append(data, leader_epoch=5)
        kept.append(parse_header(data)._replace(base_offset=info.base_offset, leader_epoch=5))
        assert _fields(log.batch_headers()) == _fields(kept)
    with opened(data_dir) as log:
        assert _fields(log.batch_headers()) == _fields(kept)


def test_batch_headers_after_retention_and_reset(data_dir: Path) -> None:
    config = LogConfig(segment_bytes=1024, batch_bytes_max=512, append_bytes_max=1024,
                       retention_bytes=1500, retention_ms=-1)
    with opened(data_dir, config) as log:
        made = fill(log, 20)
        log.set_high_watermark(log.log_end_offset)
        assert log.enforce_retention(now_ms=TS0)
        kept = [h for h in made if h.base_offset >= log.log_start_offset]
        assert kept[0].base_offset == log.log_start_offset
        assert _fields(log.batch_headers()) == _fields(kept)
        log.reset_to(1000)
        assert list(log.batch_headers()) == []


def test_follower_reset_then_replicated_batches_keep_their_headers(tmp_path: Path) -> None:
    """A follower behind the leader's log start resets to it and copies what the leader has:
    its batch headers are the leader's."""
    config = LogConfig(segment_bytes=1024, batch_bytes_max=512, append_bytes_max=1024,
                       retention_bytes=1500, retention_ms=-1)
    with opened(tmp_path / "leader", config) as leader, opened(tmp_path / "follower", config) as follower:
        fill(leader, 20, epochs=(0, 3))
        leader.set_high_watermark(leader.log_end_offset)
        assert leader.enforce_retention(now_ms=TS0)
        fill(follower, 2)
        assert follower.log_end_offset < leader.log_start_offset
        follower.reset_to(leader.log_start_offset)
        offset = leader.log_start_offset
        while offset < leader.log_end_offset:
            r = leader.read(offset, 700)
            follower.append_replicated(r.data)
            offset = r.next_offset
        assert _fields(follower.batch_headers()) == _fields(leader.batch_headers())
        assert follower.leader_epochs.entries == leader.leader_epochs.entries


def test_batch_headers_skip_fenced_batches(data_dir: Path) -> None:
    """A damaged batch of a sealed segment, fenced by a read (index intact) or by the recovery
    scan (index deleted), is left out; the headers before and after it are there."""
    with opened(data_dir) as log:
        made = fill(log, 4)
        log.roll()
        made += fill(log, 2, epochs=(2,))
        sealed = log.segment_paths()[0]
    pos = sum(h.size for h in made[:2])
    with open(sealed, "r+b") as f:  # a byte of the third batch's records
        f.seek(pos + HEADER_SIZE + 3)
        b = f.read(1)
        f.seek(pos + HEADER_SIZE + 3)
        f.write(bytes([b[0] ^ 0x5A]))
    expected = made[:2] + made[3:]
    with opened(data_dir) as log:
        assert len(list(log.batch_headers())) == len(made)  # not yet known: headers are not CRC-checked
        with pytest.raises(CorruptBatchError):
            log.read(made[2].base_offset, 1 << 20)
        assert _fields(log.batch_headers()) == _fields(expected)
        assert _fields(log.batch_headers(made[2].base_offset)) == _fields(made[3:])
    shutil.rmtree(data_dir / "index")
    with opened(data_dir) as log:
        assert log.fenced_batches()
        assert _fields(log.batch_headers()) == _fields(expected)
        assert _fields(log.batch_headers(made[2].base_offset + 1)) == _fields(made[3:])
