"""A disk that fails under a partition log (DESIGN.md §5, last rule; segments/fsync.py).

What these tests prove: a failed fsync, a segment file deleted under the log, a write error
or a read-only directory fences the log for good (LogFailedError; nothing past the old
durable offset is ever reported durable, not even by a later fsync that succeeds), a full
disk does not (StorageFullError, the log unchanged and usable once space is freed), the
replica is rebuilt by deleting the log and opening it again, and a log that recovered
shorter than its persisted high watermark says so. The disks are real: an EIO injected at
the fsync through segments/faults.py (the hook the SPU installs for the fault harness),
size-limited and read-only tmpfs mounts, and files removed from under the open log.
"""

from __future__ import annotations

import asyncio
import errno
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Callable, Iterator

import pytest

import kolk.segments.segment as segment_module
from kolk.segments import (
    GroupCommit,
    LogConfig,
    LogFailedError,
    LogStore,
    PartitionLog,
    StorageError,
    StorageFullError,
)
from kolk.segments.faults import install_fsync_fault_file

from crash_copy import copy_live_directory
from test_storage_errors import NAME, SMALL, make_batch, read_records

WHERE = {"on the loop": 1.0, "on a worker thread": 0.0}  # GroupCommit's inline_fsync_max_s


# --------------------------------------------------------------------------- helpers


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def store(data_dir: Path, mounts: "Mounts") -> Iterator[LogStore]:
    """The store; set up after ``mounts`` and so closed before anything is unmounted."""
    s = LogStore(str(data_dir))
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def fsync_fault(tmp_path: Path) -> Iterator[Path]:
    """The trigger file of the fsync fault hook: creating it fails the next segment fsync."""
    trigger = tmp_path / "fail-next-fsync"
    install_fsync_fault_file(str(trigger))
    try:
        yield trigger
    finally:
        install_fsync_fault_file(None)


def run(*command: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(command)}: {done.stderr.strip()}"


class Mounts:
    """tmpfs mounts made by one test; whatever is still mounted at teardown is unmounted,
    newest first, each by its own path."""

    def __init__(self) -> None:
        self.paths: list[Path] = []

    def tmpfs(self, path: Path, size: str, *options: str) -> None:
        path.mkdir(parents=True, exist_ok=True)
        run("mount", "-t", "tmpfs", "-o", ",".join([f"size={size}", *options]), "tmpfs", str(path))
        self.paths.append(path)

    def remount(self, path: Path, options: str) -> None:
        run("mount", "-o", f"remount,{options}", str(path))

    def unmount(self, path: Path) -> None:
        run("umount", str(path))
        del self.paths[len(self.paths) - 1 - self.paths[::-1].index(path)]


@pytest.fixture
def mounts() -> Iterator[Mounts]:
    m = Mounts()
    try:
        yield m
    finally:
        while m.paths:
            m.unmount(m.paths[-1])


def fill(directory: Path) -> Path:
    """Fill the file system of ``directory`` with a file until it refuses a byte more."""
    filler = directory / ".filler"
    with open(filler, "wb", buffering=0) as f:
        while True:
            try:
                f.write(b"\0" * 4096)
            except OSError as e:
                assert e.errno == errno.ENOSPC, e
                break
    return filler


def group_appends(group: GroupCommit, tags: list[str]) -> list:
    """Append one batch per tag at once through ``group``; each result or error."""
    async def main() -> list:
        tasks = [asyncio.ensure_future(group.append(make_batch(t))) for t in tags]
        return await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 20)
    return asyncio.run(main())


def assert_fenced(log: PartitionLog, durable: int) -> None:
    """Every operation the contract lists raises the log's own failure, and the durable
    offset stays where it was."""
    operations: dict[str, Callable[[], object]] = {
        "append": lambda: log.append(make_batch("after")),
        "append_replicated": lambda: log.append_replicated(make_batch("after")),
        "begin_sync": log.begin_sync,
        "sync": log.sync,
        "read": lambda: log.read(log.log_start_offset, 1 << 20),
        "batch_headers": lambda: list(log.batch_headers()),
        "truncate_to": lambda: log.truncate_to(log.log_start_offset),
        "reset_to": lambda: log.reset_to(0),
        "roll": log.roll,
        "set_high_watermark": lambda: log.set_high_watermark(log.log_start_offset),
    }
    for name, op in operations.items():
        with pytest.raises(LogFailedError) as e:
            op()
        assert e.value is log.failure, name
        assert log.durable_offset == durable, name


def assert_rebuilt(store: LogStore) -> None:
    """delete_log then open_log gives a new, empty, working log."""
    store.delete_log(NAME)
    log = store.open_log(NAME)
    assert (log.log_start_offset, log.log_end_offset, log.durable_offset) == (0, 0, 0)
    assert log.failure is None and log.short_of_high_watermark is None
    (info,) = group_appends(GroupCommit(log), ["rebuilt"])
    assert info.next_offset == 3 == log.durable_offset
    assert [r[2] for r in read_records(log)] == [b"rebuilt/0", b"rebuilt/1", b"rebuilt/2"]


# --------------------------------------------------------------------------- a failed fsync


@pytest.mark.parametrize("where", WHERE)
def test_eio_on_a_group_commit_fsync_fences_the_log(store: LogStore, fsync_fault: Path, where: str) -> None:
    """An fsync that fails with EIO, on the event loop or on the worker thread, fails every
    waiter of that round with the log's LogFailedError, whose message names the log, the
    file and the error; the durable offset stays where it was. Later appends and waits fail
    at once, and so does every operation on the log, although the disk no longer fails: a
    failed fsync is never retried as if nothing happened. Deleting and opening the log gives
    a new empty log that works."""
    log = store.open_log(NAME)
    log.append(make_batch("durable"))
    assert log.sync() == 3
    group = GroupCommit(log, inline_fsync_max_s=WHERE[where])
    fsync_fault.touch()
    results = group_appends(group, [f"w{i}" for i in range(5)])
    assert not fsync_fault.exists(), "the hook consumes its trigger"
    failure = log.failure
    assert isinstance(failure, LogFailedError) and isinstance(failure, StorageError)
    assert all(r is failure for r in results), results
    assert (group.inline_fsyncs, group.fsyncs) == ((1, 0) if where == "on the loop" else (0, 0))
    path = log.segment_paths()[-1]
    expected = (rf"log {NAME} failed: fsync of {re.escape(path)}: \[Errno 5\] Input/output error "
                r"\(injected: .*\); it is fenced until rebuilt from the other replicas")
    assert re.fullmatch(expected, str(failure)), failure
    assert failure.log_name == NAME and failure.cause.startswith(f"fsync of {path}: [Errno 5]")
    assert log.durable_offset == 3 and log.log_end_offset == 18

    async def later() -> None:
        with pytest.raises(LogFailedError) as e:
            await group.append(make_batch("later"))
        assert e.value is failure
        with pytest.raises(LogFailedError):
            await group.wait_durable(1)  # even an offset that was durable before
    asyncio.run(later())
    assert log.log_end_offset == 18, "a fenced log takes no append"
    assert_fenced(log, durable=3)
    assert_rebuilt(store)


def test_eio_on_the_fsync_of_a_roll_fences_the_log(store: LogStore, fsync_fault: Path) -> None:
    """The fsync that seals a segment before its successor is created goes through the same
    check: when it fails, no successor is created and the log is fenced."""
    log = store.open_log(NAME, SMALL)
    while log.segments()[-1].size + len(make_batch("x")) <= SMALL.segment_bytes:
        log.append(make_batch("x"))
    durable = log.sync()
    fsync_fault.touch()
    with pytest.raises(LogFailedError, match=r"fsync of .*00000000000000000000\.log: \[Errno 5\]"):
        log.append(make_batch("rolls"))
    assert len(log.segments()) == 1 and log.log_end_offset == durable
    assert_fenced(log, durable)
    assert_rebuilt(store)


def test_a_success_that_follows_a_failed_fsync_is_never_believed(store: LogStore, fsync_fault: Path) -> None:
    """Two rounds cover the same file; the later one's fsync succeeds first, then the earlier
    one's fails (the kernel reports a write-back error to one fsync only). Completing the
    successful round raises the failure and claims nothing: its success may be the error
    the other fsync consumed."""
    log = store.open_log(NAME)
    log.append(make_batch("a"))
    first = log.begin_sync()
    log.append(make_batch("b"))
    second = log.begin_sync()
    second.run()
    fsync_fault.touch()
    with pytest.raises(LogFailedError):
        first.run()
    with pytest.raises(LogFailedError) as e:
        log.complete_sync(second)
    assert e.value is log.failure and log.durable_offset == 0
    with pytest.raises(LogFailedError):
        log.complete_sync(first)
    assert log.durable_offset == 0


def test_without_a_trigger_file_the_hook_fails_nothing(store: LogStore, fsync_fault: Path) -> None:
    """An installed hook whose trigger file does not exist lets every fsync through."""
    log = store.open_log(NAME, SMALL)
    for i in range(30):
        log.append(make_batch(f"n{i}"))  # rolls several times
        log.sync()
    assert len(log.segments()) > 3 and log.durable_offset == 90 and log.failure is None


# --------------------------------------------------------------------------- files deleted under the log


@pytest.mark.parametrize("how", ["sync", *WHERE])
def test_a_partition_directory_removed_under_the_open_log_fences_it(store: LogStore, how: str) -> None:
    """Writes and fsyncs to a deleted file succeed, so a produce into a removed directory is
    caught by the link count after the fsync: the next sync fails, whether made directly or
    by the group commit on the loop or a worker thread, and nothing past the old durable
    offset is reported durable."""
    log = store.open_log(NAME)
    log.append(make_batch("durable"))
    assert log.sync() == 3
    shutil.rmtree(log.directory)
    if how == "sync":
        log.append(make_batch("lost"))
        with pytest.raises(LogFailedError, match="was deleted under the open log"):
            log.sync()
    else:
        results = group_appends(GroupCommit(log, inline_fsync_max_s=WHERE[how]), ["lost1", "lost2"])
        assert all(isinstance(r, LogFailedError) for r in results), results
    assert log.durable_offset == 3
    assert_fenced(log, durable=3)
    assert_rebuilt(store)


def test_segments_the_log_deleted_itself_do_not_fence_it(store: LogStore) -> None:
    """Retention deleting a sealed segment that a pending group-commit round still covers is
    the log's own doing: the round completes and the log stays healthy."""
    config = LogConfig(segment_bytes=1024, batch_bytes_max=512, append_bytes_max=1024, retention_bytes=1100)
    log = store.open_log(NAME, config)
    log.append(make_batch("a", value_bytes=100))
    ticket = log.begin_sync()  # covers segment 0
    while len(log.segments()) < 3:
        log.append(make_batch("b", value_bytes=100))
    log.set_high_watermark(log.log_end_offset)
    assert log.enforce_retention() and log.segments()[0].base_offset > 0
    ticket.run()
    assert log.complete_sync(ticket) >= 3 and log.failure is None


# --------------------------------------------------------------------------- write errors


def test_a_write_error_other_than_a_full_disk_fences_the_log(store: LogStore,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that fails with EIO after writing part of the batch (at the pwritev seam of
    segment.py) fences the log; the partial write was cut away, so the records kept before
    are what a reopen finds."""
    log = store.open_log(NAME)
    log.append(make_batch("kept"))
    log.sync()
    before = read_records(log)
    size = os.path.getsize(log.segment_paths()[-1])

    def half_then_eio(fd: int, buffers: list, offset: int) -> int:
        data = b"".join(bytes(b) for b in buffers)
        os.pwrite(fd, data[: len(data) // 2], offset)
        raise OSError(errno.EIO, os.strerror(errno.EIO))
    monkeypatch.setattr(segment_module, "_pwritev", half_then_eio)
    with pytest.raises(LogFailedError, match=r"write of .*\.log: \[Errno 5\] Input/output error") as e:
        log.append(make_batch("eio"))
    monkeypatch.undo()
    assert not isinstance(e.value, StorageFullError)
    assert os.path.getsize(log.segment_paths()[-1]) == size
    assert_fenced(log, durable=3)
    store.close()
    reopened = LogStore(str(store.data_dir))
    try:
        assert read_records(reopened.open_log(NAME)) == before
    finally:
        reopened.close()


def test_enospc_on_a_real_full_disk_keeps_the_log_usable(store: LogStore, mounts: Mounts) -> None:
    """On a tmpfs that is full, an append gets StorageFullError: the part that fitted is cut
    away, the log end, the file and the reads are as before, the log is not failed and still
    syncs. Once space is freed, the same append works, and a reopen finds exactly what was
    appended."""
    logs = Path(store.logs_dir)
    mounts.tmpfs(logs, "64k")
    log = store.open_log(NAME)
    for i in range(2):
        log.append(make_batch(f"k{i}"))
    assert log.sync() == 6
    before, size = read_records(log), log.size_bytes
    filler = fill(logs)
    big = make_batch("big", n=3, value_bytes=3000)  # more than the page the segment has left
    with pytest.raises(StorageFullError, match="nothing was appended") as e:
        log.append(big)
    assert not isinstance(e.value, LogFailedError)
    assert (log.log_end_offset, log.size_bytes, log.failure) == (6, size, None)
    assert os.path.getsize(log.segment_paths()[-1]) == size
    assert read_records(log) == before and log.sync() == 6
    filler.unlink()
    assert log.append(big).next_offset == 9 and log.sync() == 9
    after = read_records(log)
    assert after[:6] == before and [r[2] for r in after[6:]] == [b"big/0", b"big/1", b"big/2"]
    store.close()
    reopened = LogStore(str(store.data_dir))
    try:
        log = reopened.open_log(NAME)
        assert not [m for m in log.recovery_report if "cut" in m], log.recovery_report
        assert read_records(log) == after
    finally:
        reopened.close()


def test_enospc_whose_partial_write_cannot_be_cut_fences_the_log(store: LogStore, mounts: Mounts,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """When the disk fills part way through an append and the part written cannot be cut
    away (ftruncate fails too), whole batches of the failed append may sit past the log end
    for the next open to find: the log is fenced rather than kept."""
    logs = Path(store.logs_dir)
    mounts.tmpfs(logs, "64k")
    log = store.open_log(NAME)
    log.append(make_batch("k"))
    assert log.sync() == 3
    filler = fill(logs)

    def refuse(fd: int, length: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))
    monkeypatch.setattr(os, "ftruncate", refuse)
    with pytest.raises(LogFailedError, match=r"cutting a partial write back to \d+ bytes after \[Errno 28\]"):
        log.append(make_batch("big", n=3, value_bytes=3000))
    monkeypatch.undo()
    filler.unlink()
    assert_fenced(log, durable=3)
    assert_rebuilt(store)


# --------------------------------------------------------------------------- read-only


def test_a_directory_turned_read_only_under_the_open_log_fences_it(store: LogStore, mounts: Mounts) -> None:
    """Linux refuses ``mount -o remount,ro`` while a file on the file system is open for
    writing (EBUSY), and an open log holds its segments so; what an open log meets instead is
    a directory that refuses new files, here a read-only tmpfs mounted over the partition
    directory. The next roll fails (EROFS creating the new segment) and fences the log. While
    the directory refuses, delete_log fails too; once it is writable again the replica is
    rebuilt."""
    log = store.open_log(NAME, SMALL)
    log.append(make_batch("kept"))
    durable = log.sync()
    directory = Path(log.directory)
    mounts.tmpfs(directory, "64k", "ro")
    with pytest.raises(LogFailedError, match=r"roll of .*: \[Errno 30\] Read-only file system"):
        log.roll()
    assert len(log.segments()) == 1
    assert_fenced(log, durable)
    with pytest.raises(LogFailedError, match=f"log {NAME} failed: deletion of {re.escape(str(directory))}"):
        store.delete_log(NAME)
    mounts.unmount(directory)
    assert_rebuilt(store)


def test_a_log_on_a_file_system_remounted_read_only_cannot_be_opened(store: LogStore, mounts: Mounts) -> None:
    """``mount -o remount,ro`` of the file system under a closed log: opening the log fails
    with LogFailedError naming the directory and EROFS, and nothing is lost: remounted
    writable, the log opens with every record."""
    logs = Path(store.logs_dir)
    mounts.tmpfs(logs, "1m")
    log = store.open_log(NAME)
    log.append(make_batch("kept"))
    log.sync()
    before = read_records(log)
    store.close()
    mounts.remount(logs, "ro")
    reopened = LogStore(str(store.data_dir))
    try:
        with pytest.raises(LogFailedError, match=r"open of .*: \[Errno 30\] Read-only file system"):
            reopened.open_log(NAME)
        mounts.remount(logs, "rw")
        assert read_records(reopened.open_log(NAME)) == before
    finally:
        reopened.close()


# --------------------------------------------------------------------------- short of the high watermark


def _committed_log(data_dir: Path, batches: int = 3, config: LogConfig | None = None) -> list[str]:
    """A log of ``batches`` batches of 3 records, all committed (high watermark at the end),
    closed cleanly so that the index is flushed; its segment paths."""
    store = LogStore(str(data_dir))
    try:
        log = store.open_log(NAME, config)
        for i in range(batches):
            log.append(make_batch(f"c{i}"))
        log.sync()
        log.set_high_watermark(log.log_end_offset)
        return log.segment_paths()
    finally:
        store.close()


def _reopen(data_dir: Path, config: LogConfig | None = None) -> tuple[int, int, int | None]:
    """(log end offset, high watermark, short_of_high_watermark) after an open; the log
    still takes appends."""
    store = LogStore(str(data_dir))
    try:
        log = store.open_log(NAME, config)
        found = (log.log_end_offset, log.high_watermark, log.short_of_high_watermark)
        log.append(make_batch("next"))
        assert log.sync() == log.log_end_offset
        return found
    finally:
        store.close()


def test_a_log_that_kept_everything_is_not_short(data_dir: Path) -> None:
    _committed_log(data_dir)
    assert _reopen(data_dir) == (9, 9, None)
    assert _reopen(data_dir) == (12, 9, None)  # the append after the first reopen is not committed


def test_segment_files_cut_below_the_high_watermark_make_the_log_short(data_dir: Path) -> None:
    """A segment file that lost its last batch while the index survived: the log opens
    ending below the high watermark it had persisted, and says by how much."""
    (path,) = _committed_log(data_dir)
    os.truncate(path, os.path.getsize(path) - len(make_batch("c2")))
    assert _reopen(data_dir) == (6, 6, 9)


def test_a_deleted_last_segment_makes_the_log_short(data_dir: Path) -> None:
    paths = _committed_log(data_dir, batches=12, config=SMALL)
    assert len(paths) > 2
    os.unlink(paths[-1])
    end, hw, short = _reopen(data_dir, SMALL)
    assert short == 36 and end == hw < 36


@pytest.mark.parametrize("when", ["closed", "open"])
def test_a_removed_partition_directory_makes_the_log_short(data_dir: Path, when: str) -> None:
    """The partition directory removed (with the log closed, or under the open log, which
    then fails) while the index keeps its state: the log opens empty, at its old log start,
    flagged short of the high watermark it had persisted."""
    _committed_log(data_dir)
    directory = data_dir / "logs" / NAME
    if when == "closed":
        shutil.rmtree(directory)
    else:
        store = LogStore(str(data_dir))
        try:
            log = store.open_log(NAME)
            shutil.rmtree(directory)
            log.append(make_batch("lost"))
        finally:
            store.close()  # the final sync finds the files gone; close does not raise
        assert log.failure is not None
    assert _reopen(data_dir) == (0, 0, 9)


def test_a_stale_high_watermark_misses_but_never_accuses(tmp_path: Path) -> None:
    """The index has no WAL, so a crash can lose the newest high watermark: the copy of a
    live directory (what kill -9 leaves) opens with the log whole and an older, lower high
    watermark, and is not flagged short."""
    data_dir = tmp_path / "data"
    store = LogStore(str(data_dir))
    try:
        log = store.open_log(NAME)
        log.append(make_batch("a"))
        log.sync()
        log.set_high_watermark(3)
        store.index.flush()
        log.append(make_batch("b"))
        log.sync()
        log.set_high_watermark(6)  # in the memtable only
        copy_live_directory(str(data_dir), str(tmp_path / "crashed"))
    finally:
        store.close()
    assert _reopen(tmp_path / "crashed") == (6, 3, None)


def test_truncation_below_the_high_watermark_is_not_taken_for_loss(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A follower truncating below its high watermark lowers and flushes the high watermark
    before any file shrinks, so what a kill -9 right after the file is cut leaves (the copy
    of the live directory taken then) is not flagged short."""
    data_dir, crashed = tmp_path / "data", tmp_path / "crashed"
    _committed_log(data_dir)
    real_ftruncate = os.ftruncate

    def ftruncate_then_crash(fd: int, length: int) -> None:
        real_ftruncate(fd, length)
        if not crashed.exists():
            copy_live_directory(str(data_dir), str(crashed))

    store = LogStore(str(data_dir))
    try:
        log = store.open_log(NAME)
        monkeypatch.setattr(os, "ftruncate", ftruncate_then_crash)
        assert log.truncate_to(3) == 3 and log.high_watermark == 3
        monkeypatch.undo()
    finally:
        store.close()
    assert crashed.exists()
    assert _reopen(crashed) == (3, 3, None)
