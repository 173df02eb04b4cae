"""Retention pass benchmark (issue 19): "retention passes cost < 1% of the SPU's CPU at 10k
partitions idle".

One LogStore in a temporary directory holds N partition logs with a few small records each,
committed (high watermark = log end): one row with only the active segment per log, one with
a sealed segment before it (the sealed one is what retention looks at). One retention pass is
:meth:`PartitionLog.enforce_retention` on every log, as the SPU's retention loop runs it every
``--retention-interval-ms`` (default 5 min): idle partitions with young records, so nothing
is deleted and the pass is pure overhead. The pass's CPU time (``time.process_time``, this
process only) is measured 5 times; the table quotes the median, the cost per partition, and
the share of one core it takes at 10,000 partitions when run every 300 s.

What limits the set-up, and is worth knowing about an SPU with many partitions: every segment
keeps its file open, and every roll flushes the index, which leaves one RocksDB file per roll
that RocksDB also keeps open. N logs of S segments need N*S descriptors and more; when the
process may not open that many (``ulimit -n``), or writing passes two minutes, the benchmark
says so, measures the logs it has, and extrapolates to 10,000 linearly from the per-partition
cost (a pass is a loop over logs with no shared state, so linear is the honest model).

Run: ``python bench/retention_bench.py [--partitions 10000] [--segments 1,2] [--passes 5]``.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time

from kolk.segments import LogConfig, LogStore, build_batch
from kolk.segments.errors import StorageError

PERIOD_S = 300.0  # the SPU's default retention period (issue 19: "default 5 min")
TARGET_PARTITIONS = 10_000
FDS_RESERVED = 2_000  # descriptors kept free for RocksDB's files, the interpreter and the rest
RECORDS_PER_SEGMENT = 3
SETUP_S_MAX = 120.0  # the brief's bound on set-up; past it the run stops opening logs


def _fd_budget() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:  # raise the soft limit as far as allowed: an SPU's unit file does the same
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return max(0, soft - FDS_RESERVED)


def build(data_dir: str, count: int, segments: int) -> tuple[int, float, str | None]:
    """Write ``count`` logs of ``segments`` segments each, closing each when written (every
    roll flushes the index, and RocksDB keeps the files of those flushes open until it has
    compacted them, so the store is closed and opened again before the passes); how many were
    written, the seconds it took, and why it stopped early (None when it did not)."""
    store = LogStore(data_dir)
    written = 0
    t0 = time.monotonic()
    now_ms = int(time.time() * 1000)
    config = LogConfig()
    for i in range(count):
        try:
            lg = store.open_log(f"bench-{i}", config)
            for s in range(segments):
                if s:
                    lg.roll()
                lg.append(build_batch([(b"k%d" % r, b"value-%d" % r) for r in range(RECORDS_PER_SEGMENT)],
                                      first_timestamp=now_ms))
            lg.set_high_watermark(lg.log_end_offset)
            store.close_log(f"bench-{i}")
        except (OSError, StorageError) as e:  # EMFILE: RocksDB took more descriptors than reserved
            store.close(sync=False)
            return written, time.monotonic() - t0, f"writing log {i + 1} failed ({e})"
        written += 1
        if time.monotonic() - t0 > SETUP_S_MAX:
            store.close()
            return written, time.monotonic() - t0, f"set-up passed {SETUP_S_MAX:g} s after {written} logs"
    store.close()
    return written, time.monotonic() - t0, None


def reopen(store: LogStore, count: int) -> tuple[list, str | None]:
    """Open the ``count`` logs written (recovery checks each); and why it stopped early."""
    logs = []
    for i in range(count):
        try:
            logs.append(store.open_log(f"bench-{i}", LogConfig()))
        except (OSError, StorageError) as e:
            return logs, f"opening log {i + 1} again failed ({e})"
    return logs, None


def one_pass(logs: list) -> tuple[float, float, int]:
    """CPU and wall seconds of one retention pass over ``logs``, and the segments it deleted."""
    deleted = 0
    c0, w0 = time.process_time(), time.perf_counter()
    for lg in logs:
        deleted += len(lg.enforce_retention())
    return time.process_time() - c0, time.perf_counter() - w0, deleted


def measure(partitions: int, segments: int, passes: int, notes: list[str]) -> tuple[list, int]:
    """One table row for logs of ``segments`` segments, and the segments its passes deleted."""
    budget = _fd_budget()
    count = min(partitions, budget // segments)
    if count < partitions:
        notes.append(f"{partitions} logs of {segments} segments need {partitions * segments} open files besides "
                     f"RocksDB's; this process may open {budget + FDS_RESERVED} (ulimit -n), so at most {count} "
                     f"could be measured")
    root = tempfile.mkdtemp(prefix="kolk-retention-bench-")
    try:
        data_dir = os.path.join(root, "data")
        written, write_s, stopped = build(data_dir, count, segments)
        t0 = time.monotonic()
        store = LogStore(data_dir)
        try:
            logs, stopped_open = reopen(store, written)
            open_s = time.monotonic() - t0
            for why in (stopped, stopped_open):
                if why:
                    notes.append(why)
            runs = [one_pass(logs) for _ in range(passes)]
        finally:
            store.close(sync=False)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    n = len(logs)
    if n < TARGET_PARTITIONS:
        notes.append(f"{segments} segments: {n} logs measured, the pass cost extrapolated linearly to "
                     f"{TARGET_PARTITIONS}")
    cpu = statistics.median(r[0] for r in runs)
    wall = statistics.median(r[1] for r in runs)
    per_us = cpu / n * 1e6
    at_target = per_us * TARGET_PARTITIONS / 1e6
    share = at_target / PERIOD_S * 100
    row = [n, segments, f"{write_s:.1f}", f"{open_s:.1f}", f"{cpu:.4f}", f"{wall:.4f}", f"{per_us:.1f}",
           f"{at_target:.4f}", f"{share:.4f}%", "met" if share < 1 else "NOT met"]
    return row, sum(r[2] for r in runs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--partitions", type=int, default=TARGET_PARTITIONS)
    ap.add_argument("--segments", default="1,2",
                    help="segments per log, comma-separated, one row each (the last segment is active; default 1,2)")
    ap.add_argument("--passes", type=int, default=5)
    args = ap.parse_args()
    notes: list[str] = []
    rows = []
    deleted = 0
    for segments in (int(x) for x in args.segments.split(",")):
        row, gone = measure(args.partitions, segments, args.passes, notes)
        rows.append(row)
        deleted += gone
    print(f"## Retention pass over idle partitions, median of {args.passes} passes\n")
    print("| partitions measured | segments each | write s | open s | pass CPU s (median) | pass wall s (median) "
          "| CPU per partition µs | pass CPU s at 10k | CPU share at 10k, every 300 s | < 1% |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |")
    if deleted:
        notes.append(f"{deleted} segments were deleted: the partitions were not idle, the set-up is wrong")
    for note in notes:
        print(f"\nNote: {note}.")
    print(f"\n(python {sys.version.split()[0]}, {os.cpu_count()} CPUs; CPU is this process's, time.process_time)")
    return 1 if deleted else 0


if __name__ == "__main__":
    sys.exit(main())
