"""Cleaner benchmark (issue 19): compaction speed beside a plain read of the same segments.

A log of keyed records (24-byte keys, values of ``--value-bytes``, 100 records a batch,
sealed 16 MiB segments) with more distinct keys than the key map holds: the map is at its
cap in every pass, so the log is cleaned over several passes. Each round copies the freshly
written log, then:

* plain read: ``read_batches`` from the log start to the end in 1 MiB reads (CRC-checked,
  whole batches, from the page cache), MB/s of segment bytes;
* cleaner: passes through the worker process (``run_plan_in_process``: plan on this thread,
  execute in ``python -m kolk.segments.clean_worker``, finish here) until nothing is left to
  do. Two rates: *log MB/s* = the log's size before cleaning / the time of all passes
  together (what an operator waits for), and *read MB/s* = segment bytes the passes read
  (each pass reads the dirty part for the map and rewrites every segment below the map's
  end) / that time (the work rate).

Median of 3 rounds; the ratio is cleaner log MB/s over plain read MB/s (goal: >= 50%).
Prints a markdown table. Run with ``python bench/cleaner_bench.py``.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import tempfile
import time

from kolk.segments import LogConfig, LogStore, build_batch
from kolk.segments.cleaner import run_plan_in_process
from kolk.segments.compaction import KEY_MAP_ENTRY_BYTES, CompactionPolicy

NOW = 1_700_000_000_000
RECORDS_PER_BATCH = 100
READ_BYTES = 1 << 20
CONFIG = LogConfig(segment_bytes=16 << 20)


def build_log(data_dir: str, total_bytes: int, keys: int, value_bytes: int) -> int:
    rng = random.Random(19)
    store = LogStore(data_dir, clock=lambda: NOW)
    log = store.open_log("bench-0", CONFIG)
    written = 0
    while written < total_bytes:
        recs = [(b"user-%019d" % rng.randrange(keys), rng.randbytes(value_bytes)) for _ in range(RECORDS_PER_BATCH)]
        b = build_batch(recs, first_timestamp=NOW - 3_600_000)
        log.append(b)
        written += len(b)
    log.roll()
    log.set_high_watermark(log.log_end_offset)
    size = log.size_bytes
    store.close()
    return size


def plain_read(data_dir: str) -> float:
    store = LogStore(data_dir, clock=lambda: NOW)
    try:
        log = store.open_log("bench-0", CONFIG)
        t0 = time.perf_counter()
        offset, n = log.log_start_offset, 0
        while offset < log.log_end_offset:
            r = log.read(offset, READ_BYTES)
            if not r.data:
                break
            n += len(r.data)
            offset = r.next_offset
        return n / (time.perf_counter() - t0) / 1e6
    finally:
        store.close()


def clean(data_dir: str, policy: CompactionPolicy) -> tuple[float, float, int]:
    """(seconds, bytes read, passes) of cleaning the log until nothing is left to do."""
    store = LogStore(data_dir, clock=lambda: NOW)
    try:
        log = store.open_log("bench-0", CONFIG)
        log.set_high_watermark(log.log_end_offset)
        t0 = time.perf_counter()
        read = passes = 0
        while (plan := log.plan_clean(policy, NOW)) is not None:
            result = run_plan_in_process(plan, timeout_s=600)
            log.finish_clean(plan, result)
            read += result.bytes_read
            passes += 1
        return time.perf_counter() - t0, read, passes
    finally:
        store.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=64, help="log size before cleaning")
    ap.add_argument("--value-bytes", type=int, nargs="+", default=[200, 1000])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    rows = []
    for value_bytes in args.value_bytes:
        records = args.mib * (1 << 20) // (value_bytes + 60)
        keys = records // 4  # each key written about four times
        map_keys = keys // 3  # the map holds a third of the keys: at its cap in every pass
        policy = CompactionPolicy(delete_retention_ms=0, min_compaction_lag_ms=0,
                                  key_map_bytes=map_keys * KEY_MAP_ENTRY_BYTES)
        base = tempfile.mkdtemp(prefix="cleaner-bench-")
        try:
            pristine = os.path.join(base, "pristine")
            size = build_log(pristine, args.mib << 20, keys, value_bytes)
            reads, log_rates, work_rates, passes = [], [], [], []
            for i in range(args.rounds):
                work = os.path.join(base, f"round-{i}")
                shutil.copytree(pristine, work)
                reads.append(plain_read(work))
                seconds, read, n = clean(work, policy)
                log_rates.append(size / seconds / 1e6)
                work_rates.append(read / seconds / 1e6)
                passes.append(n)
                shutil.rmtree(work)
        finally:
            shutil.rmtree(base, ignore_errors=True)
        r, c, w = statistics.median(reads), statistics.median(log_rates), statistics.median(work_rates)
        rows.append((value_bytes, size, keys, map_keys, statistics.median(passes), r, c, w, c / r))
    print("| value bytes | log MiB | distinct keys | key map cap | passes | plain read MB/s | "
          "cleaner log MB/s | cleaner read MB/s | ratio (goal >= 50%) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for v, size, keys, cap, n, r, c, w, ratio in rows:
        print(f"| {v} | {size / (1 << 20):.0f} | {keys} | {cap} | {n:.0f} | {r:.0f} | {c:.1f} | {w:.1f} | "
              f"{ratio:.1%} |")


if __name__ == "__main__":
    main()
