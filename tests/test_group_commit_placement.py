"""Where GroupCommit runs its fsyncs: on the event loop while the device's recent fsyncs are
fast, on a worker thread once their moving average reaches ``inline_fsync_max_s``, and back
on the loop when the device is fast again. Every append is durable in every mode."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path

import pytest

import kolk.segments.log as log_module
from kolk.segments import GroupCommit

from test_storage_errors import make_batch, opened


class Device:
    """Stands in for the disk under fdatasync: a chosen duration, and which thread called.

    The real fdatasync is not called: its duration is the machine's, and on a loaded CI
    machine it passed the 0.5 ms threshold and moved the "fast device" onto a thread. These
    tests are about where the fsync runs for a given duration; that every append is durable
    after a real fdatasync is test_storage_errors' and test_storage_disk_faults'."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.seconds = 0.0
        self.threads: list[int] = []

        def fdatasync(fd: int) -> None:
            os.fstat(fd)  # still refuses a closed descriptor, as the real call would
            self.threads.append(threading.get_ident())
            if self.seconds:
                time.sleep(self.seconds)  # a slow device, not synchronisation
        monkeypatch.setattr(log_module.os, "fdatasync", fdatasync)


def appends(group: GroupCommit, n: int) -> None:
    async def main() -> None:
        for i in range(n):
            await asyncio.wait_for(group.append(make_batch(f"a{i}", n=1)), 30)
    asyncio.run(main())


@pytest.fixture()
def log(tmp_path: Path):
    with opened(tmp_path / "data") as lg:
        yield lg


def test_fast_fsyncs_run_on_the_event_loop(log, monkeypatch: pytest.MonkeyPatch) -> None:
    device = Device(monkeypatch)
    # A wide threshold: a fast device here is one this loaded machine cannot push past it by
    # preempting the loop in the middle of a timed fsync.
    group = GroupCommit(log, inline_fsync_max_s=0.05)
    appends(group, 20)
    assert group.fsyncs == group.inline_fsyncs == 20
    assert set(device.threads) == {threading.get_ident()}
    assert log.durable_offset == log.log_end_offset == 20


def test_slow_fsyncs_move_to_a_worker_thread_and_back(log, monkeypatch: pytest.MonkeyPatch) -> None:
    device = Device(monkeypatch)
    group = GroupCommit(log, inline_fsync_max_s=0.015)
    device.seconds = 0.05
    appends(group, 10)
    # The first one or two run on the loop (the average starts at 0), the rest on a thread.
    assert group.inline_fsyncs <= 2 and group.fsyncs == 10
    assert threading.get_ident() in device.threads[:1]
    assert all(t != threading.get_ident() for t in device.threads[2:])
    assert log.durable_offset == log.log_end_offset == 10
    device.seconds = 0.0
    before = group.inline_fsyncs
    appends(group, 30)
    assert group.inline_fsyncs > before, "a fast device again brings the fsyncs back onto the loop"
    assert device.threads[-1] == threading.get_ident()
    assert log.durable_offset == log.log_end_offset == 40


def test_zero_threshold_keeps_every_fsync_on_a_worker_thread(log, monkeypatch: pytest.MonkeyPatch) -> None:
    device = Device(monkeypatch)
    group = GroupCommit(log, inline_fsync_max_s=0)
    appends(group, 5)
    assert group.inline_fsyncs == 0 and group.fsyncs == 5
    assert threading.get_ident() not in device.threads


def test_negative_threshold_is_refused(log) -> None:
    with pytest.raises(ValueError, match="inline_fsync_max_s"):
        GroupCommit(log, inline_fsync_max_s=-1)
