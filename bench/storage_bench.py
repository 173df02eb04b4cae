"""Storage engine benchmark (issue 2): appends and reads beside the raw-file limit, in one run.

Append: batches of 1,000 records of 100 B and 1 KiB, one fsync per batch (a producer that
waits for each batch to be durable) and one fsync per 8 batches (group commit with 8 batches
in flight). The raw limit writes the same bytes to a plain file with the same fsync cadence.
Read: from offset 0 to the end in 1 MiB reads (CRC-checked, whole batches), beside plain
1 MiB preads of the same file, both from the page cache.

Rounds alternate raw and kolk so that both see the same machine weather; the table quotes
medians and the ratio of medians. Run with ``make bench``.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import time

from kolk.segments import LogConfig, LogStore, build_batch

BATCH_RECORDS = 1000
READ_BYTES = 1 << 20


def make_batches(record_bytes: int, total_bytes: int) -> list[bytes]:
    rng = random.Random(record_bytes)
    template = [(None, rng.randbytes(record_bytes)) for _ in range(BATCH_RECORDS)]
    one = build_batch(template)
    count = max(8, total_bytes // len(one))
    return [one] * count  # the same bytes each time: what is measured is the path, not the encoder


def raw_append(path: str, batches: list[bytes], sync_every: int) -> float:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        t0 = time.perf_counter()
        for i, b in enumerate(batches, 1):
            os.write(fd, b)
            if i % sync_every == 0:
                os.fdatasync(fd)
        os.fdatasync(fd)
        return time.perf_counter() - t0
    finally:
        os.close(fd)


def kolk_append(data_dir: str, batches: list[bytes], sync_every: int) -> tuple[float, LogStore]:
    store = LogStore(data_dir)
    log = store.open_log("bench-0", LogConfig())
    t0 = time.perf_counter()
    for i, b in enumerate(batches, 1):
        log.append(b)
        if i % sync_every == 0:
            log.sync()
    log.sync()
    elapsed = time.perf_counter() - t0
    return elapsed, store


def raw_read(path: str) -> tuple[float, int]:
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        t0 = time.perf_counter()
        pos = 0
        while pos < size:
            pos += len(os.pread(fd, READ_BYTES, pos))
        return time.perf_counter() - t0, pos
    finally:
        os.close(fd)


def kolk_read(store: LogStore) -> tuple[float, int]:
    log = store.open_log("bench-0")
    t0 = time.perf_counter()
    offset, total, end = 0, 0, log.log_end_offset
    while offset < end:
        r = log.read(offset, READ_BYTES)
        total += len(r.data)
        offset = r.next_offset
    return time.perf_counter() - t0, total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=96, help="MB appended per case and round (default 96)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--dir", default=None, help="where to write (default: a temporary directory on the disk of the cwd)")
    args = ap.parse_args()
    root = tempfile.mkdtemp(prefix="kolk-bench-", dir=args.dir or os.getcwd())
    rows = []
    try:
        for record_bytes in (100, 1024):
            batches = make_batches(record_bytes, args.mb << 20)
            nbytes = sum(len(b) for b in batches)
            nrecords = len(batches) * BATCH_RECORDS
            for sync_every in (1, 8):
                raw_t, kolk_t, raw_r, kolk_r = [], [], [], []
                for rnd in range(args.rounds):
                    raw_path = os.path.join(root, "raw.log")
                    data_dir = os.path.join(root, f"kolk-{rnd}")
                    # ABBA order inside a round cancels a drift in the machine's speed.
                    if rnd % 2 == 0:
                        raw_t.append(raw_append(raw_path, batches, sync_every))
                        t, store = kolk_append(data_dir, batches, sync_every)
                    else:
                        t, store = kolk_append(data_dir, batches, sync_every)
                        raw_t.append(raw_append(raw_path, batches, sync_every))
                    kolk_t.append(t)
                    if sync_every == 1:
                        # Reads come from the page cache: both files were just written.
                        raw_r.append(raw_read(raw_path)[0])
                        t, total = kolk_read(store)
                        assert total == nbytes, (total, nbytes)
                        kolk_r.append(t)
                    store.close()
                    shutil.rmtree(data_dir)
                    os.unlink(raw_path)
                raw_med, kolk_med = statistics.median(raw_t), statistics.median(kolk_t)
                rows.append((f"append {record_bytes} B, fsync/{sync_every} batch{'es' if sync_every > 1 else ''}",
                             nrecords / kolk_med, nbytes / kolk_med / 1e6, nbytes / raw_med / 1e6,
                             raw_med / kolk_med))
                if raw_r:
                    rm, km = statistics.median(raw_r), statistics.median(kolk_r)
                    rows.append((f"read {record_bytes} B from offset 0", nrecords / km, nbytes / km / 1e6,
                                 nbytes / rm / 1e6, rm / km))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"kolk storage benchmark: {args.rounds} rounds of {args.mb} MB per case, medians, "
          f"batches of {BATCH_RECORDS} records, python {sys.version.split()[0]}, {os.cpu_count()} cores")
    print()
    print("| case | kolk records/s | kolk MB/s | raw file MB/s | kolk / raw |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, rps, mbs, raw_mbs, ratio in rows:
        print(f"| {name} | {rps:,.0f} | {mbs:,.0f} | {raw_mbs:,.0f} | {ratio:.0%} |")
    print()
    print("Goals: appends >= 70% of the raw-file limit; reads >= 1,000 MB/s from the page cache.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
