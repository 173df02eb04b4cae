"""``kolk demo``: the storage engine end to end, on a temporary directory.

Appends sample events in batches with group-commit cadence, appends a tail that is never
fsynced, simulates a power loss (the process stops without fsync and the unsynced tail of the
last segment is torn), reopens, and reads everything back to check that every durable record
is there, once, in order.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
import time

from .segments import LogConfig, LogStore, build_batch, decode_records
from .segments.batch import iter_batches

BATCH_RECORDS = 1000
SYNC_EVERY_BATCHES = 10
UNSYNCED_TAIL_BATCHES = 5  # the last batches are never fsynced: the power loss may tear them
CONFIG = LogConfig(segment_bytes=64 << 20)


def _event(i: int) -> tuple[bytes, bytes]:
    user = f"user-{i % 997}"
    value = json.dumps({"id": i, "user": user, "action": ("view", "cart", "buy")[i % 3],
                        "amount": (i * 7919) % 10000 / 100}, separators=(",", ":")).encode()
    return user.encode(), value


def run_storage_demo(records: int, data_dir: str | None = None) -> int:
    own_dir = data_dir is None
    root = tempfile.mkdtemp(prefix="kolk-demo-") if own_dir else data_dir
    path = os.path.join(root, "data")
    rng = random.Random(42)
    try:
        print(f"kolk demo: storage engine on {path}")
        store = LogStore(path)
        log = store.open_log("events-0", CONFIG)
        t0 = time.perf_counter()
        appended = 0
        payload = 0
        batches = 0
        while appended < records:
            n = min(BATCH_RECORDS, records - appended)
            batch = build_batch([_event(appended + j) for j in range(n)])
            log.append(batch)
            payload += len(batch)
            appended += n
            batches += 1
            if batches % SYNC_EVERY_BATCHES == 0 and appended <= records - UNSYNCED_TAIL_BATCHES * BATCH_RECORDS:
                log.sync()
        elapsed = time.perf_counter() - t0
        durable = log.durable_offset
        print(f"  appended {appended:,} records in {batches:,} batches, {payload / 1e6:.1f} MB, "
              f"{elapsed:.2f} s ({appended / elapsed:,.0f} records/s); one fsync per {SYNC_EVERY_BATCHES} batches")
        print(f"  durable up to offset {durable:,}; {appended - durable:,} records only in the page cache")

        # Power loss: no final fsync, and the unsynced tail of the last segment is torn.
        last = log.segment_paths()[-1]
        rp_size = log.recovery_point.position
        store.close(sync=False)
        size = os.path.getsize(last)
        if size > rp_size:
            cut = rng.randrange(rp_size, size)
            with open(last, "r+b") as f:
                f.truncate(cut)
            print(f"  simulated power loss: cut {os.path.basename(last)} from {size:,} to {cut:,} bytes")

        t0 = time.perf_counter()
        store = LogStore(path)
        log = store.open_log("events-0", CONFIG)
        reopen = time.perf_counter() - t0
        print(f"  reopened in {reopen * 1000:.0f} ms; recovery: " + ("; ".join(log.recovery_report) or "nothing to repair"))

        t0 = time.perf_counter()
        offset = log.log_start_offset
        count = 0
        read_bytes = 0
        ok = True
        while offset < log.log_end_offset:
            result = log.read(offset, 8 << 20)
            read_bytes += len(result.data)
            for pos, _ in iter_batches(result.data, CONFIG.batch_bytes_max):
                for rec in decode_records(result.data, pos):
                    if rec.offset != count or (rec.key, rec.value) != _event(rec.offset):
                        ok = False
                    count += 1
            offset = result.next_offset
        read_time = time.perf_counter() - t0
        store.close()
        print(f"  read back {count:,} records ({read_bytes / 1e6:.1f} MB) in {read_time:.2f} s, "
              f"{count / read_time:,.0f} records/s decoded")
        survived = count >= durable and ok
        print(f"  result: {'OK' if survived else 'FAILED'}: {count:,} records in order, each exactly once; "
              f"all {durable:,} durable records present; {count - durable:,} unsynced records also survived")
        return 0 if survived else 1
    finally:
        if own_dir:
            shutil.rmtree(root, ignore_errors=True)
