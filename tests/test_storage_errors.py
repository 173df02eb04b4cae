"""Bad input and bad disks against the storage engine (DESIGN.md §4, segments/errors.py).

Each test feeds the engine one kind of bad input or damage and checks two things: the error
is the documented class from ``kolk.segments`` and its message names what was wrong; and
nothing that was stored before is lost: the log reads back every record appended before,
also after close and reopen.
"""

from __future__ import annotations

import asyncio
import errno
import os
import re
import shutil
import struct
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import crc32c
import pytest

import kolk.segments.log as log_module
import kolk.segments.segment as segment_module
from kolk.segments import (
    BatchTooLargeError,
    CorruptBatchError,
    CrcMismatchError,
    GroupCommit,
    InvalidBatchError,
    LogConfig,
    LogFailedError,
    LogStore,
    NotALogDirectoryError,
    OffsetOutOfRangeError,
    PartitionLog,
    SegmentDeletedError,
    StorageError,
    StorageFullError,
    TruncatedBatchError,
    TruncatedBeforeDurableError,
    build_batch,
    decode_records,
    parse_header,
)
from kolk.segments.batch import CRC_START, HEADER_SIZE

NAME = "orders-0"
TS0 = 1_700_000_000_000
# Small segments so that a few batches roll, and retention has whole segments to delete.
SMALL = LogConfig(segment_bytes=1024, batch_bytes_max=512, append_bytes_max=1024)

Rec = tuple[int, int, bytes | None, bytes | None]  # offset, timestamp, key, value


# --------------------------------------------------------------------------- helpers


def make_batch(tag: str, n: int = 3, ts: int = TS0, value_bytes: int = 20) -> bytes:
    """A batch of ``n`` records whose keys name ``tag``; timestamps ts, ts+1, ..."""
    return build_batch(
        [(f"{tag}/{j}".encode(), (f"{tag}:{j}:".encode() * value_bytes)[:value_bytes]) for j in range(n)],
        timestamps=[ts + j for j in range(n)],
    )


def recrc(buf: bytearray, pos: int = 0) -> bytes:
    """Give the batch at ``pos`` a correct CRC again after editing its header."""
    h = parse_header(buf, pos)
    struct.pack_into("<I", buf, pos + 17, crc32c.crc32c(bytes(buf[pos + CRC_START : pos + h.size])))
    return bytes(buf)


def batches_in(data: bytes) -> list[tuple[int, object]]:
    """(position, header) of each whole batch in ``data``."""
    out, pos = [], 0
    while len(data) - pos >= HEADER_SIZE:
        h = parse_header(data, pos)
        if pos + h.size > len(data):
            break
        out.append((pos, h))
        pos += h.size
    return out


def read_records(log: PartitionLog, start: int | None = None, end: int | None = None) -> list[Rec]:
    """Every record in ``[start, end)`` (default: the whole log), through log.read."""
    offset = log.log_start_offset if start is None else start
    end = log.log_end_offset if end is None else end
    out: list[Rec] = []
    while offset < end:
        r = log.read(offset, 1 << 20)
        assert r.data, f"read at {offset} returned nothing before the log end {end}"
        assert sum(reg.length for reg in r.regions) == len(r.data)
        for pos, _ in batches_in(r.data):
            out.extend((x.offset, x.timestamp, x.key, x.value) for x in decode_records(r.data, pos)
                       if offset <= x.offset < end)
        assert r.next_offset > offset
        offset = r.next_offset
    return out


@contextmanager
def opened(data_dir: Path, config: LogConfig | None = None, name: str = NAME) -> Iterator[PartitionLog]:
    store = LogStore(str(data_dir))
    try:
        yield store.open_log(name, config)
    finally:
        store.close()


def reopened_records(data_dir: Path, config: LogConfig | None = None) -> list[Rec]:
    with opened(data_dir, config) as log:
        return read_records(log)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


def filled(data_dir: Path, batches: int = 3, config: LogConfig | None = None) -> list[Rec]:
    """Create a log with ``batches`` synced batches; return its records."""
    with opened(data_dir, config) as log:
        for i in range(batches):
            log.append(make_batch(f"b{i}", ts=TS0 + 10 * i))
        log.sync()
        recs = read_records(log)
    assert len(recs) == 3 * batches
    return recs


# --------------------------------------------------------------------------- bad batches on append


def test_crc_mismatch_is_refused_and_stores_nothing(data_dir: Path) -> None:
    """A batch with one damaged byte behind its CRC raises CrcMismatchError naming the CRC
    and the batch position; the log, its file and its reads are unchanged, also after reopen."""
    before = filled(data_dir)
    bad = bytearray(make_batch("bad"))
    bad[HEADER_SIZE + 5] ^= 0x40
    with opened(data_dir) as log:
        leo, size = log.log_end_offset, log.size_bytes
        with pytest.raises(CrcMismatchError, match=r"batch at byte 0 has CRC 0x[0-9a-f]{8} but") as e:
            log.append(bytes(bad))
        assert e.value.position == 0
        assert (log.log_end_offset, log.size_bytes) == (leo, size)
        assert os.path.getsize(log.segment_paths()[-1]) == size
        assert read_records(log) == before
    assert reopened_records(data_dir) == before


def test_multi_batch_append_with_bad_second_batch_stores_nothing(data_dir: Path) -> None:
    """Three batches in one append where only the 2nd has a bad CRC: CrcMismatchError with the
    2nd batch's byte position, and neither the good 1st nor the 3rd is stored; the next good
    append gets the offsets the failed one would have had."""
    before = filled(data_dir)
    b1, b2, b3 = make_batch("x1"), bytearray(make_batch("x2")), make_batch("x3")
    b2[-1] ^= 0x01
    with opened(data_dir) as log:
        leo, size = log.log_end_offset, log.size_bytes
        with pytest.raises(CrcMismatchError, match=f"batch at byte {len(b1)} has CRC") as e:
            log.append(b1 + bytes(b2) + b3)
        assert e.value.position == len(b1)
        assert (log.log_end_offset, log.size_bytes) == (leo, size)
        assert os.path.getsize(log.segment_paths()[-1]) == size
        assert read_records(log) == before
    assert reopened_records(data_dir) == before
    with opened(data_dir) as log:
        assert log.append(b1 + b3).base_offset == leo
        assert [r[2] for r in read_records(log, leo)] == [f"x{k}/{j}".encode() for k in (1, 3) for j in range(3)]


@pytest.mark.parametrize("cut", ["inside the header", "inside the records", "second batch cut"])
def test_truncated_batch_is_refused_and_stores_nothing(data_dir: Path, cut: str) -> None:
    """Data that ends before the batch its header announces raises TruncatedBatchError saying
    'truncated' and where; nothing is stored."""
    before = filled(data_dir)
    good = make_batch("t")
    data = {"inside the header": good[:40], "inside the records": good[:-3],
            "second batch cut": good + good[:-1]}[cut]
    with opened(data_dir) as log:
        leo, size = log.log_end_offset, log.size_bytes
        with pytest.raises(TruncatedBatchError, match="truncated") as e:
            log.append(data)
        assert e.value.position == (len(good) if cut == "second batch cut" else 0)
        assert f"batch at byte {e.value.position}" in str(e.value)
        assert (log.log_end_offset, log.size_bytes) == (leo, size)
        assert read_records(log) == before
    assert reopened_records(data_dir) == before


def test_oversized_batch_is_refused(data_dir: Path) -> None:
    """A batch larger than LogConfig.batch_bytes_max raises BatchTooLargeError (an
    InvalidBatchError) naming batch_bytes_max and the sizes; nothing is stored."""
    config = LogConfig(segment_bytes=4096, batch_bytes_max=256, append_bytes_max=1024)
    before = filled(data_dir, config=config)
    big = make_batch("big", n=1, value_bytes=300)
    assert len(big) > 256
    with opened(data_dir, config) as log:
        leo = log.log_end_offset
        with pytest.raises(BatchTooLargeError, match=rf"is {len(big)} bytes, more than batch_bytes_max \(256\)") as e:
            log.append(big)
        assert isinstance(e.value, InvalidBatchError)
        assert log.log_end_offset == leo
        assert read_records(log) == before
    assert reopened_records(data_dir, config) == before


def test_oversized_append_is_refused(data_dir: Path) -> None:
    """Batches that are each small enough but together exceed append_bytes_max raise
    BatchTooLargeError naming append_bytes_max; none of them is stored."""
    config = LogConfig(segment_bytes=4096, batch_bytes_max=256, append_bytes_max=1024)
    before = filled(data_dir, config=config)
    one = make_batch("a")
    data = one * (1024 // len(one) + 1)
    assert len(one) <= 256 < 1024 < len(data)
    with opened(data_dir, config) as log:
        leo = log.log_end_offset
        with pytest.raises(BatchTooLargeError, match=rf"append of {len(data)} bytes is more than append_bytes_max \(1024\)"):
            log.append(data)
        assert log.log_end_offset == leo
        assert read_records(log) == before
    assert reopened_records(data_dir, config) == before


def _edit(field: str) -> bytes:
    b = bytearray(make_batch("h"))
    if field == "magic":
        b[16] = 2  # magic is outside the CRC, so the CRC still matches
        return bytes(b)
    if field == "record_count":
        struct.pack_into("<i", b, 57, 0)
    elif field == "codec":
        struct.pack_into("<h", b, 21, 2)  # snappy: reserved
    elif field == "max_timestamp":
        struct.pack_into("<q", b, 35, TS0 - 1)
    elif field == "batch_length":
        struct.pack_into("<i", b, 8, 20)
        return bytes(b)
    return recrc(b)


HEADER_PROBLEMS = {
    "magic": "has magic 2; this format is version 1",
    "record_count": "has record_count 0; a batch holds at least one record",
    "codec": "uses compression codec 2, which Kolk does not support",
    "max_timestamp": f"has max_timestamp {TS0 - 1} before first_timestamp {TS0}",
    "batch_length": "has batch_length 20, less than the 49 bytes",
}


@pytest.mark.parametrize("field", list(HEADER_PROBLEMS))
def test_bad_header_field_is_invalid_batch_error(data_dir: Path, field: str) -> None:
    """A batch with a correct CRC but a bad header field (magic, record_count 0, unknown
    codec 2, max_timestamp < first_timestamp, batch_length too small) raises
    InvalidBatchError whose message names the field; nothing is stored."""
    before = filled(data_dir)
    with opened(data_dir) as log:
        leo = log.log_end_offset
        with pytest.raises(InvalidBatchError, match=HEADER_PROBLEMS[field]) as e:
            log.append(make_batch("ok") + _edit(field))
        assert type(e.value) is InvalidBatchError
        assert e.value.position == len(make_batch("ok"))
        assert log.log_end_offset == leo
        assert read_records(log) == before
    assert reopened_records(data_dir) == before


def test_empty_append_is_invalid_batch_error(data_dir: Path) -> None:
    """Appending zero bytes raises InvalidBatchError saying the data is empty."""
    before = filled(data_dir)
    with opened(data_dir) as log:
        with pytest.raises(InvalidBatchError, match="empty"):
            log.append(b"")
        assert read_records(log) == before


# --------------------------------------------------------------------------- offsets


def _with_retention(data_dir: Path) -> tuple[list[Rec], int, int]:
    """A log of several small segments whose oldest ones retention has deleted. Returns the
    records still held, the log start and the log end."""
    config = LogConfig(segment_bytes=1024, batch_bytes_max=512, append_bytes_max=1024,
                       retention_bytes=1500, retention_ms=-1)
    with opened(data_dir, config) as log:
        for i in range(20):
            log.append(make_batch(f"r{i}", ts=TS0 + i))
        assert len(log.segments()) >= 4
        log.set_high_watermark(log.log_end_offset)
        assert log.enforce_retention(now_ms=TS0) != []
        start, end = log.log_start_offset, log.log_end_offset
        assert 0 < start < end
        recs = read_records(log)
    assert [r[0] for r in recs] == list(range(start, end))
    return recs, start, end


@pytest.mark.parametrize("where", ["below the log start", "negative", "above the log end"])
def test_read_out_of_range(data_dir: Path, where: str) -> None:
    """Reading below the log start (after retention moved it) or above the log end raises
    OffsetOutOfRangeError carrying offset, log_start_offset and log_end_offset, and naming
    them in its message; the log still reads back whole."""
    before, start, end = _with_retention(data_dir)
    offset = {"below the log start": start - 1, "negative": -1, "above the log end": end + 1}[where]
    with opened(data_dir) as log:
        with pytest.raises(OffsetOutOfRangeError, match=rf"offset {offset} is out of range: the log holds \[{start}, {end}\)") as e:
            log.read(offset, 1 << 20)
        assert (e.value.offset, e.value.log_start_offset, e.value.log_end_offset) == (offset, start, end)
        assert log.read(end, 1 << 20).data == b""  # the end itself is in range, and empty
        assert read_records(log) == before
    assert reopened_records(data_dir) == before


@pytest.mark.parametrize("where", ["below the log start", "above the log end"])
def test_truncate_to_out_of_range(data_dir: Path, where: str) -> None:
    """truncate_to below the log start or above the log end raises OffsetOutOfRangeError with
    its attributes set, and truncates nothing."""
    before, start, end = _with_retention(data_dir)
    offset = start - 1 if where == "below the log start" else end + 1
    with opened(data_dir) as log:
        with pytest.raises(OffsetOutOfRangeError, match=f"offset {offset} is out of range") as e:
            log.truncate_to(offset)
        assert (e.value.offset, e.value.log_start_offset, e.value.log_end_offset) == (offset, start, end)
        assert (log.log_start_offset, log.log_end_offset) == (start, end)
        assert read_records(log) == before
    assert reopened_records(data_dir) == before


def test_region_of_a_segment_deleted_by_retention(data_dir: Path) -> None:
    """A FileRegion taken before retention deleted its segment raises SegmentDeletedError on
    fileno() and read() (naming the file) instead of serving another file's bytes; reading the
    old offset raises OffsetOutOfRangeError; what retention kept still reads, also after
    reopen, and regions of kept segments still work."""
    config = LogConfig(segment_bytes=1024, batch_bytes_max=512, append_bytes_max=1024,
                       retention_bytes=1500, retention_ms=-1)
    with opened(data_dir, config) as log:
        for i in range(20):
            log.append(make_batch(f"d{i}", ts=TS0 + i))
        r = log.read(0, 1 << 20)
        first_path = r.regions[0].path
        assert r.regions[0].read() == r.data[: r.regions[0].length]
        assert os.pread(r.regions[0].fileno(), 10, r.regions[0].position) == r.data[:10]
        log.set_high_watermark(log.log_end_offset)
        deleted = log.enforce_retention(now_ms=TS0)
        assert deleted[0] == 0 and not os.path.exists(first_path)
        with pytest.raises(SegmentDeletedError, match=re_path(first_path)):
            r.regions[0].fileno()
        with pytest.raises(SegmentDeletedError, match=re_path(first_path)):
            r.regions[0].read()
        with pytest.raises(OffsetOutOfRangeError) as e:
            log.read(0, 1 << 20)
        assert e.value.log_start_offset == log.log_start_offset > 0
        kept = read_records(log)
        assert [x[0] for x in kept] == list(range(log.log_start_offset, log.log_end_offset))
        live = log.read(log.log_start_offset, 1 << 20)
        reg = live.regions[0]
        assert os.pread(reg.fileno(), reg.length, reg.position) == live.data[: reg.length]
    with opened(data_dir, config) as log:
        assert read_records(log) == kept
        with pytest.raises(OffsetOutOfRangeError):
            log.read(0, 1)


def _outcome(fn) -> tuple[str, object]:
    try:
        return "returned", fn()
    except Exception as e:  # noqa: BLE001 - the test inspects what came out
        return "raised", e


@pytest.mark.parametrize("how", ["delete_log", "store closed"])
def test_region_of_a_deleted_or_closed_log_never_serves_other_bytes(data_dir: Path, how: str) -> None:
    """A FileRegion handed out before its log was deleted (LogStore.delete_log) or closed
    must refuse (SegmentDeletedError, resp. a StorageError such as LogClosedError) rather than
    return a dead descriptor number: once the process opens another file under that number,
    sendfile(fileno()) or read() would serve that file's bytes to a consumer. The other logs
    of the store keep their data."""
    before = filled(data_dir)
    store = LogStore(str(data_dir))
    secret_fd = None
    try:
        victim = store.open_log("victim-0")
        victim.append(make_batch("v"))
        reg = victim.read(0, 1 << 20).regions[0]
        stale = reg.fileno()
        if how == "delete_log":
            store.delete_log("victim-0")
            assert not os.path.exists(reg.path)
        else:
            store.close()
        # Another file now takes the freed descriptor number, as the next open() would.
        secret = data_dir.parent / "unrelated.txt"
        secret.write_bytes(b"S" * 4096)
        try:
            os.fstat(stale)
        except OSError:
            secret_fd = os.open(secret, os.O_RDONLY)
            if secret_fd != stale:
                os.dup2(secret_fd, stale)
        expected = SegmentDeletedError if how == "delete_log" else StorageError
        outcomes = {"fileno()": _outcome(reg.fileno), "read()": _outcome(lambda: reg.read()[:16])}
        wrong = {call: got for call, (kind, got) in outcomes.items()
                 if not (kind == "raised" and isinstance(got, expected))}
        assert not wrong, f"a region of a log after {how} gave {wrong!r} instead of {expected.__name__}"
    finally:
        if secret_fd is not None:
            os.close(secret_fd)
            if secret_fd != stale:
                os.close(stale)
        store.close()
    assert reopened_records(data_dir) == before


def re_path(path: str) -> str:
    return re.escape(path)


# --------------------------------------------------------------------------- not a log directory


def _tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_non_empty_directory_without_marker_is_refused(tmp_path: Path) -> None:
    """A non-empty directory without kolk-data.json raises NotALogDirectoryError naming the
    directory and the missing marker; its files are left exactly as they were."""
    foreign = tmp_path / "home"
    (foreign / "sub").mkdir(parents=True)
    (foreign / "notes.txt").write_bytes(b"my notes")
    (foreign / "sub" / "x.bin").write_bytes(bytes(range(256)))
    before = _tree(foreign)
    with pytest.raises(NotALogDirectoryError, match="has no kolk-data.json and is not empty") as e:
        LogStore(str(foreign))
    assert e.value.path == str(foreign) and str(foreign) in str(e.value)
    assert _tree(foreign) == before
    assert sorted(os.listdir(foreign)) == ["notes.txt", "sub"]


def test_file_instead_of_directory_is_refused(tmp_path: Path) -> None:
    """A path that is a file raises NotALogDirectoryError saying so; the file is untouched."""
    f = tmp_path / "data"
    f.write_bytes(b"not a directory")
    with pytest.raises(NotALogDirectoryError, match="it is a file, not a directory") as e:
        LogStore(str(f))
    assert e.value.path == str(f)
    assert f.read_bytes() == b"not a directory"


def test_missing_directory_without_create_is_refused(tmp_path: Path) -> None:
    """LogStore(create=False) on a path that does not exist raises NotALogDirectoryError and
    creates nothing."""
    with pytest.raises(NotALogDirectoryError, match="does not exist"):
        LogStore(str(tmp_path / "nope"), create=False)
    assert not (tmp_path / "nope").exists()


@pytest.mark.parametrize("marker,words", [
    ('{"format": "something-else", "version": 1}', "does not say format 'kolk-data'"),
    ('{"format": "kolk-data", "version": 2}', "says version 2; this Kolk reads 1"),
    ('{"format": "kolk-data"}', "says version None"),
    ("[1, 2, 3]", "does not say format"),
    ("{not json", "unreadable"),
])
def test_marker_with_wrong_format_or_version_is_refused(data_dir: Path, marker: str, words: str) -> None:
    """A kolk-data.json with another format, another version or unreadable JSON raises
    NotALogDirectoryError naming the marker and the problem; no file of the directory is
    changed, and with the right marker back the log reads back whole."""
    before = filled(data_dir)
    good_marker = (data_dir / "kolk-data.json").read_bytes()
    (data_dir / "kolk-data.json").write_text(marker)
    segs = _tree(data_dir / "logs")
    with pytest.raises(NotALogDirectoryError, match="kolk-data.json") as e:
        LogStore(str(data_dir))
    assert words in str(e.value) and e.value.path == str(data_dir)
    assert (data_dir / "kolk-data.json").read_text() == marker
    assert _tree(data_dir / "logs") == segs
    (data_dir / "kolk-data.json").write_bytes(good_marker)
    assert reopened_records(data_dir) == before


def test_partition_directory_with_a_foreign_file_is_refused(data_dir: Path) -> None:
    """A partition directory (logs/<name>/) holding a file that is not a segment makes
    open_log raise NotALogDirectoryError naming the directory and the file; the file is left
    alone, and other logs of the store (and this one, once the file is gone) read back whole."""
    before = filled(data_dir)
    other = data_dir / "logs" / "other-0"
    other.mkdir()
    (other / "README").write_text("hands off")
    store = LogStore(str(data_dir))
    try:
        with pytest.raises(NotALogDirectoryError, match="it holds 'README', which is not a segment file") as e:
            store.open_log("other-0")
        assert e.value.path == str(other)
        assert read_records(store.open_log(NAME)) == before
    finally:
        store.close()
    assert (other / "README").read_text() == "hands off" and os.listdir(other) == ["README"]
    # The same for a log that holds data: the stray file blocks the open, the data survives.
    stray = data_dir / "logs" / NAME / "00000000000000000000.log.bak"
    stray.write_bytes(b"backup")
    store = LogStore(str(data_dir))
    try:
        with pytest.raises(NotALogDirectoryError, match="00000000000000000000.log.bak"):
            store.open_log(NAME)
    finally:
        store.close()
    assert stray.read_bytes() == b"backup"
    stray.unlink()
    assert reopened_records(data_dir) == before


# --------------------------------------------------------------------------- full disk


def _half_then_enospc(fd: int, buffers: list, offset: int) -> int:
    data = b"".join(bytes(b) for b in buffers)
    os.pwrite(fd, data[: len(data) // 2], offset)
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class _ShortThenFull:
    """First call writes a third and reports a short write; the retry hits ENOSPC/EIO."""

    def __init__(self, err: int) -> None:
        self.calls = 0
        self.err = err

    def __call__(self, fd: int, buffers: list, offset: int) -> int:
        self.calls += 1
        if self.calls == 1:
            data = b"".join(bytes(b) for b in buffers)
            return os.pwrite(fd, data[: len(data) // 3], offset)
        os.pwrite(fd, b"\xee" * 7, offset)
        raise OSError(self.err, os.strerror(self.err))


@pytest.mark.parametrize("mode", ["half then ENOSPC", "short write then ENOSPC",
                                  "short write then EDQUOT", "on a roll"])
def test_full_disk_keeps_nothing_partial(data_dir: Path, monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    """When the disk fills part way through an append (simulated at _pwritev), append raises
    StorageFullError naming the file, the segment file is cut back to its previous size, the
    log end is unchanged, a later append works and reads back, and after reopen nothing
    partial is there."""
    config = LogConfig(segment_bytes=1024, batch_bytes_max=512, append_bytes_max=1024) if mode == "on a roll" else None
    before = filled(data_dir, batches=3, config=config)
    fake = {"half then ENOSPC": _half_then_enospc,
            "short write then ENOSPC": _ShortThenFull(errno.ENOSPC),
            "short write then EDQUOT": _ShortThenFull(errno.EDQUOT),
            "on a roll": _half_then_enospc}[mode]
    big = make_batch("full", n=3, value_bytes=100)
    with opened(data_dir, config) as log:
        if mode == "on a roll":
            assert log.segments()[-1].size + len(big) > 1024  # this append rolls first
        leo, paths = log.log_end_offset, log.segment_paths()
        sizes = [os.path.getsize(p) for p in paths]
        monkeypatch.setattr(segment_module, "_pwritev", fake)
        with pytest.raises(StorageFullError, match="nothing was appended") as e:
            log.append(big)
        assert isinstance(e.value, StorageError)
        monkeypatch.undo()
        assert log.segment_paths()[-1] in str(e.value)
        assert len(log.segment_paths()) == len(paths) + (mode == "on a roll")
        assert [os.path.getsize(p) for p in paths] == sizes
        for p in log.segment_paths()[len(paths):]:
            assert os.path.getsize(p) == 0  # a segment rolled for the failed append stays empty
        assert log.log_end_offset == leo
        assert read_records(log) == before
        info = log.append(big)
        assert info.base_offset == leo and info.next_offset == leo + 3
        after = read_records(log)
        assert after[: len(before)] == before
        assert [r[2] for r in after[len(before):]] == [f"full/{j}".encode() for j in range(3)]
    with opened(data_dir, config) as log:
        assert not [m for m in log.recovery_report if "cut" in m], log.recovery_report
        assert read_records(log) == after
        assert log.size_bytes == sum(os.path.getsize(p) for p in log.segment_paths())


def test_short_writes_are_completed(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """When every pwritev call writes only a few bytes (a legal short write), append keeps
    writing the remainder at the right places: the stored bytes read back exactly."""
    before = filled(data_dir)
    calls = []

    def dribble(fd: int, buffers: list, offset: int) -> int:
        calls.append(len(buffers))
        data = b"".join(bytes(b) for b in buffers)
        return os.pwrite(fd, data[:37], offset)

    data = make_batch("s1") + make_batch("s2", n=5) + make_batch("s3", n=1)
    with opened(data_dir) as log:
        monkeypatch.setattr(segment_module, "_pwritev", dribble)
        info = log.append(data)
        monkeypatch.undo()
        assert len(calls) > len(data) // 37
        assert (info.base_offset, info.last_offset) == (9, 17)
        recs = read_records(log)
        assert recs[:9] == before
        assert [r[2] for r in recs[9:]] == [f"s1/{j}".encode() for j in range(3)] + \
            [f"s2/{j}".encode() for j in range(5)] + [b"s3/0"]
    assert reopened_records(data_dir) == recs


def test_other_write_error_fences_the_log(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write failing with EIO (not a full disk) is a disk fault: the log fails (LogFailedError,
    not StorageFullError) and serves nothing more; what was durable before is intact on disk."""
    before = filled(data_dir)
    with opened(data_dir) as log:
        monkeypatch.setattr(segment_module, "_pwritev", _ShortThenFull(errno.EIO))
        with pytest.raises(LogFailedError, match="write of") as e:
            log.append(make_batch("eio"))
        monkeypatch.undo()
        assert not isinstance(e.value, StorageFullError)
        with pytest.raises(LogFailedError):
            read_records(log)
    assert reopened_records(data_dir) == before


# --------------------------------------------------------------------------- corrupt sealed segment


def _sealed_log_with_damage(data_dir: Path) -> tuple[list[Rec], str, int, int, int]:
    """5 batches of 3 records in segment 0, roll, 3 more in segment 15; then one byte in the
    middle of the third batch (offsets 6..8) of the sealed segment is flipped on disk.
    Returns all records, the sealed segment path, the damaged batch's position and offsets."""
    with opened(data_dir) as log:
        for i in range(5):
            log.append(make_batch(f"s{i}", ts=TS0 + 10 * i))
        log.roll()
        for i in range(5, 8):
            log.append(make_batch(f"s{i}", ts=TS0 + 10 * i))
        recs = read_records(log)
        sealed = log.segment_paths()[0]
        assert len(log.segment_paths()) == 2
    raw = Path(sealed).read_bytes()
    pos, h = batches_in(raw)[2]
    assert (h.base_offset, h.last_offset) == (6, 8)
    with open(sealed, "r+b") as f:
        f.seek(pos + (HEADER_SIZE + h.size) // 2)
        b = f.read(1)
        f.seek(pos + (HEADER_SIZE + h.size) // 2)
        f.write(bytes([b[0] ^ 0x5A]))
    return recs, sealed, pos, 6, 8


def _check_fenced(log: PartitionLog, recs: list[Rec], path: str, pos: int, first: int, last: int) -> None:
    for off in range(first, last + 1):
        with pytest.raises(CorruptBatchError) as e:
            log.read(off, 1 << 20)
        assert (e.value.path, e.value.position, e.value.base_offset) == (path, pos, first)
        assert f"corrupt batch in {path} at byte {pos}" in str(e.value)
    # A read from before the damage stops at it; nothing from the bad batch is ever served.
    r = log.read(0, 1 << 20)
    assert r.next_offset == first
    got = [x.offset for p, _ in batches_in(r.data) for x in decode_records(r.data, p)]
    assert got == list(range(first))
    assert read_records(log, 0, first) == [x for x in recs if x[0] < first]
    assert read_records(log, last + 1) == [x for x in recs if x[0] > last]
    assert [(f.segment_base, f.position, f.base_offset) for f in log.fenced_batches()] == [(0, pos, first)]


@pytest.mark.parametrize("index", ["intact", "deleted"])
def test_corrupt_batch_in_sealed_segment_is_fenced(data_dir: Path, index: str) -> None:
    """A damaged batch inside a sealed segment is never served: reading any of its offsets
    raises CorruptBatchError whose path is the segment file and position the batch's byte
    position; earlier and later batches still read; the fence survives another reopen. With
    the index intact the damage is found by the read's CRC check; with index/ deleted, by the
    recovery scan, which reports it in recovery_report."""
    recs, sealed, pos, first, last = _sealed_log_with_damage(data_dir)
    if index == "deleted":
        shutil.rmtree(data_dir / "index")
    with opened(data_dir) as log:
        fenced_msgs = [m for m in log.recovery_report if "fenced" in m]
        if index == "deleted":
            assert fenced_msgs and f"{sealed} at byte {pos}" in fenced_msgs[0], log.recovery_report
            assert "CRC" in fenced_msgs[0]
        else:
            assert fenced_msgs == [], log.recovery_report
            assert log.fenced_batches() == []  # not yet known: the read finds it
        assert log.log_end_offset == len(recs)
        _check_fenced(log, recs, sealed, pos, first, last)
    with opened(data_dir) as log:
        # The fence is remembered, before any read could find the damage again.
        assert [(f.segment_base, f.position, f.base_offset) for f in log.fenced_batches()] == [(0, pos, first)]
        _check_fenced(log, recs, sealed, pos, first, last)
        assert log.append(make_batch("after")).base_offset == len(recs)


# --------------------------------------------------------------------------- torn tail


@pytest.mark.parametrize("tear", ["mid batch", "mid header", "zeros after"])
def test_torn_tail_is_cut_to_the_last_whole_batch(data_dir: Path, tear: str) -> None:
    """After a crash (close without sync) with the unsynced tail torn, reopening ends the log
    at the last whole batch, keeps everything synced, says in recovery_report what it cut
    (file, byte, reason), and the log appends and reopens cleanly afterwards."""
    store = LogStore(str(data_dir))
    log = store.open_log(NAME)
    for i in range(3):
        log.append(make_batch(f"t{i}", ts=TS0 + 10 * i))
    assert log.sync() == 9
    synced = read_records(log)
    log.append(make_batch("t3", ts=TS0 + 30))
    log.append(make_batch("t4", ts=TS0 + 40))
    everything = read_records(log)
    path = log.segment_paths()[-1]
    store.close(sync=False)  # crash: no final fsync
    raw = Path(path).read_bytes()
    last_pos, last = batches_in(raw)[-1]
    if tear == "mid batch":
        torn = raw[: last_pos + last.size // 2]
        valid_end, reason = last_pos, f"batch announces {last.size} bytes, the file has {last.size // 2} left"
    elif tear == "mid header":
        torn = raw[: last_pos + 30]
        valid_end, reason = last_pos, "30 trailing bytes, fewer than a batch header"
    else:
        torn = raw + bytes(200)
        valid_end, reason = len(raw), "has magic 0"
    Path(path).write_bytes(torn)
    with opened(data_dir) as log:
        cut = [m for m in log.recovery_report if m.startswith("cut")]
        assert len(cut) == 1, log.recovery_report
        assert f"cut {len(torn) - valid_end} bytes from the tail of {path} at byte {valid_end}" in cut[0]
        assert reason in cut[0]
        expect = everything if tear == "zeros after" else everything[:12]
        # The time index forgot the cut batch too.
        assert log.offset_for_timestamp(TS0 + 40) == (12 if tear == "zeros after" else None)
        assert log.log_end_offset == expect[-1][0] + 1
        assert read_records(log)[: len(synced)] == synced
        assert read_records(log) == expect
        assert os.path.getsize(path) == valid_end
        info = log.append(make_batch("t5", ts=TS0 + 50))
        assert info.base_offset == len(expect)
        assert log.offset_for_timestamp(TS0 + 40) == (12 if tear == "zeros after" else info.base_offset)
        final = read_records(log)
    with opened(data_dir) as log:
        assert not [m for m in log.recovery_report if m.startswith("cut")], log.recovery_report
        assert read_records(log) == final


# --------------------------------------------------------------------------- index rebuild


def test_deleted_index_is_rebuilt_from_the_segments(data_dir: Path) -> None:
    """With the whole index/ directory deleted, reopening rebuilds it: every read,
    offset_for_timestamp and the leader-epoch history (epochs 0, 3, 7) answer as before, and
    an append with an older epoch than 7 is still refused."""
    stamps: list[int] = []
    with opened(data_dir, SMALL) as log:
        n = 0
        for i, epoch in enumerate([0] * 4 + [3] * 5 + [7] * 4):
            # Timestamps mostly grow, with some going back, so the time index has work to do.
            ts = TS0 + 1000 * i - (700 if i % 4 == 3 else 0)
            log.append(make_batch(f"e{i}", ts=ts), leader_epoch=epoch)
            stamps += [ts, ts + 1, ts + 2]
            n += 3
        assert len(log.segments()) >= 3
        recs = read_records(log)
        probes = sorted({t + d for t in stamps for d in (-1, 0, 1)}) + [max(stamps) + 5]
        by_time = {t: log.offset_for_timestamp(t) for t in probes}
        epochs = log.leader_epochs.entries
        ends = {e: log.end_offset_for_epoch(e) for e in range(-1, 9)}
        segments = log.segments()
    assert [e.epoch for e in epochs] == [0, 3, 7]
    assert by_time[max(stamps) + 5] is None
    shutil.rmtree(data_dir / "index")
    with opened(data_dir, SMALL) as log:
        rebuilt = [m for m in log.recovery_report if m.startswith("rebuilt the index of sealed segment")]
        assert len(rebuilt) == len(segments) - 1, log.recovery_report
        assert read_records(log) == recs
        assert {t: log.offset_for_timestamp(t) for t in probes} == by_time
        assert log.leader_epochs.entries == epochs
        assert {e: log.end_offset_for_epoch(e) for e in range(-1, 9)} == ends
        assert log.segments() == segments
        with pytest.raises(InvalidBatchError, match="leader epoch 5 is older than this log's latest epoch 7"):
            log.append(make_batch("stale"), leader_epoch=5)
        assert log.append(make_batch("e-new"), leader_epoch=7).base_offset == n
    with opened(data_dir, SMALL) as log:  # and the rebuilt index is trusted next time
        assert read_records(log)[:n] == recs
        assert log.leader_epochs.entries == epochs


def test_overstated_max_timestamp_does_not_hide_later_records(data_dir: Path) -> None:
    """The server never decodes records, so append accepts a batch whose header max_timestamp
    (here 100) overstates its records (50, 60). offset_for_timestamp(100) must still find the
    record with timestamp 100 in the next batch of the same segment (Kafka scans on from the
    time-index hit), not answer None as if it were not stored."""
    liar = bytearray(build_batch([(b"a", b"1"), (b"b", b"2")], timestamps=[50, 60]))
    struct.pack_into("<q", liar, 35, 100)  # header max_timestamp
    liar = recrc(liar)
    with opened(data_dir) as log:
        log.append(liar)
        log.append(build_batch([(b"c", b"3")], timestamps=[100]))
        log.append(build_batch([(b"d", b"4")], timestamps=[200]))
        assert [r[1] for r in read_records(log)] == [50, 60, 100, 200]
        assert log.offset_for_timestamp(200) == 3
        assert log.offset_for_timestamp(100) == 2


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize("kwargs,field", [
    (dict(batch_bytes_max=32), "batch_bytes_max=32"),
    (dict(batch_bytes_max=2**31, append_bytes_max=2**32, segment_bytes=2**32,
          read_bytes_max=2**32, scan_window_bytes=2**32), "batch_bytes_max"),
    (dict(append_bytes_max=1024, batch_bytes_max=4096), "append_bytes_max=1024"),
    (dict(segment_bytes=1000, batch_bytes_max=4096, append_bytes_max=4096), "segment_bytes=1000"),
    (dict(segment_ms=0), "segment_ms=0"),
    (dict(retention_bytes=0), "retention_bytes"),
    (dict(retention_bytes=-5), "retention_bytes"),
    (dict(retention_ms=-2), "retention_ms"),
    (dict(read_bytes_max=100), "read_bytes_max=100"),
    (dict(scan_window_bytes=100), "scan_window_bytes=100"),
])
def test_inconsistent_config_is_value_error_naming_the_field(kwargs: dict, field: str) -> None:
    """LogConfig with a limit out of range or inconsistent with another raises ValueError
    whose message names the field."""
    with pytest.raises(ValueError, match="invalid LogConfig") as e:
        LogConfig(**kwargs)
    assert field in str(e.value)


# --------------------------------------------------------------------------- group commit


def test_group_commit_covers_concurrent_appends_with_few_fsyncs(data_dir: Path) -> None:
    """Many concurrent GroupCommit.append calls all resolve with distinct contiguous offsets,
    fewer fsync rounds run than appends, and durable_offset covers every one of them."""
    with opened(data_dir) as log:
        group = GroupCommit(log)
        count = 64

        async def main() -> list:
            async def one(i: int):
                return await group.append(make_batch(f"g{i}", n=2))
            return await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(count))), 30)

        infos = asyncio.run(main())
        assert sorted((x.base_offset, x.last_offset) for x in infos) == [(2 * i, 2 * i + 1) for i in range(count)]
        assert 1 <= group.fsyncs < count
        assert log.durable_offset == log.log_end_offset == 2 * count
        recs = read_records(log)
    assert reopened_records(data_dir) == recs


@pytest.mark.parametrize("cut", [2, 17])
def test_group_commit_waiters_fail_on_truncation_instead_of_hanging(
        data_dir: Path, monkeypatch: pytest.MonkeyPatch, cut: int) -> None:
    """Appends waiting for a group-commit fsync when the log is truncated (a new leader took
    over) get TruncatedBeforeDurableError (or, for a batch wholly below the cut, possibly
    success), never a hang and never a success for a batch the cut removed; the log keeps
    what was durable before, and a later group append resolves."""
    started, release = threading.Event(), threading.Event()
    real_run = log_module.SyncTicket.run

    def gated_run(self) -> None:  # the group's fsync (on a worker thread) waits for the test
        if threading.current_thread() is not threading.main_thread():
            started.set()
            assert release.wait(20)
        real_run(self)

    with opened(data_dir) as log:
        log.append(make_batch("base", n=2))
        assert log.sync() == 2
        before = read_records(log)
        group = GroupCommit(log, inline_fsync_max_s=0)  # fsyncs on the worker thread, which the test gates
        monkeypatch.setattr(log_module.SyncTicket, "run", gated_run)

        async def main() -> list:
            loop = asyncio.get_running_loop()
            waiting = loop.run_in_executor(None, started.wait, 20)
            tasks = [asyncio.ensure_future(group.append(make_batch(f"w{i}"))) for i in range(10)]
            try:
                assert await waiting, "the group never started an fsync"
                assert not any(t.done() for t in tasks)
                assert log.log_end_offset == 2 + 30
                assert log.truncate_to(cut) == cut
            finally:
                release.set()
            results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 20)
            later = await asyncio.wait_for(group.append(make_batch("later")), 20)
            return [results, later]

        try:
            results, later = asyncio.run(main())
        finally:
            release.set()
            monkeypatch.undo()
        for r in results:
            assert isinstance(r, TruncatedBeforeDurableError) or r.next_offset <= cut, r
        assert isinstance(results[-1], TruncatedBeforeDurableError), results
        assert "truncated before offset" in str(results[-1])
        assert later.base_offset == cut and log.durable_offset == cut + 3 == log.log_end_offset
        recs = read_records(log)
        assert recs[:2] == before
        assert [r[2] for r in recs[2:]] == [f"w{i}/{j}".encode() for i in range(5) for j in range(3)][: cut - 2] \
            + [b"later/0", b"later/1", b"later/2"]
    assert reopened_records(data_dir) == recs


@pytest.mark.parametrize("how", ["delete_log", "close(sync=False)"])
def test_group_commit_waiters_do_not_hang_when_the_log_goes_away(
        data_dir: Path, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    """Appends waiting for a group-commit fsync when their log is deleted or closed without
    a final fsync resolve within a deadline (with a StorageError, or, for a close whose data
    did reach the disk, their AppendInfo) instead of waiting forever."""
    started, release = threading.Event(), threading.Event()
    real_run = log_module.SyncTicket.run

    def gated_run(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            started.set()
            assert release.wait(20)
        real_run(self)

    store = LogStore(str(data_dir))
    try:
        log = store.open_log(NAME)
        group = GroupCommit(log, inline_fsync_max_s=0)  # fsyncs on the worker thread, which the test gates
        monkeypatch.setattr(log_module.SyncTicket, "run", gated_run)

        async def main() -> list:
            loop = asyncio.get_running_loop()
            waiting = loop.run_in_executor(None, started.wait, 20)
            tasks = [asyncio.ensure_future(group.append(make_batch(f"w{i}"))) for i in range(5)]
            try:
                assert await waiting, "the group never started an fsync"
                if how == "delete_log":
                    store.delete_log(NAME)
                else:
                    log.close(sync=False)
            finally:
                release.set()
            try:
                return await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 3)
            except asyncio.TimeoutError:
                flusher = group._flusher
                pytest.fail(f"group-commit waiters still pending 3 s after {how}; the flusher "
                            f"ended with {flusher.exception() if flusher and flusher.done() else flusher!r}")

        results = asyncio.run(main())
    finally:
        release.set()
        monkeypatch.undo()
        store.close()
    for r in results:
        if how == "delete_log":
            assert isinstance(r, StorageError), r
        else:
            assert isinstance(r, StorageError) or r.base_offset >= 0, r
