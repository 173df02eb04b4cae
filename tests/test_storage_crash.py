"""A real process appending with group commit is killed with SIGKILL at a random moment;
reopening the data directory finds every record that was reported durable, in order, once
(DESIGN.md §4). This is the crash the in-process tests cannot make: the index memtable and
everything not yet fsynced is lost with the process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from kolk.segments import LogConfig, LogStore, decode_records
from kolk.segments.batch import iter_batches

CHILD = r"""
import sys
from kolk.segments import LogConfig, LogStore, build_batch
store = LogStore(sys.argv[1])
log = store.open_log("p-0", LogConfig(segment_bytes=256 << 10, batch_bytes_max=64 << 10, scan_window_bytes=64 << 10))
n = 0
while True:
    log.append(build_batch([(str(n + i).encode(), b"v" * 50) for i in range(100)]))
    n += 100
    if n % 300 == 0:
        durable = log.sync()
        print(durable, flush=True)
"""


def _read_all(path: str) -> list[int]:
    store = LogStore(path)
    try:
        log = store.open_log("p-0", LogConfig(segment_bytes=256 << 10, batch_bytes_max=64 << 10, scan_window_bytes=64 << 10))
        keys = []
        offset = log.log_start_offset
        while offset < log.log_end_offset:
            r = log.read(offset, 1 << 20)
            for pos, _ in iter_batches(r.data, 1 << 22):
                for rec in decode_records(r.data, pos):
                    assert int(rec.key) == rec.offset
                    keys.append(rec.offset)
            offset = r.next_offset
        return keys
    finally:
        store.close()


@pytest.mark.parametrize("kill_after_syncs", [3, 17, 40])
def test_sigkill_loses_nothing_durable(tmp_path, kill_after_syncs: int) -> None:
    """Kill -9 after N reported syncs (plus whatever was appended since): on reopen the log
    holds offsets 0..k-1 exactly once, in order, with k >= the last reported durable offset."""
    path = str(tmp_path / "data")
    proc = subprocess.Popen([sys.executable, "-c", CHILD, path], stdout=subprocess.PIPE, text=True)
    durable = 0
    try:
        deadline = time.monotonic() + 60
        for _ in range(kill_after_syncs):
            line = proc.stdout.readline()
            assert line, "the appender died before it was killed"
            durable = int(line)
            assert time.monotonic() < deadline
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
    keys = _read_all(path)
    assert keys == list(range(len(keys)))
    assert len(keys) >= durable > 0
    # A second open (after recovery fsynced the repaired tail) sees the same log.
    assert _read_all(path) == keys
