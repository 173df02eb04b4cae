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

from ..segments import LogConfig, LogStore, build_batch, decode_records
from ..segments.batch import iter_batches

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


def run_cluster_demo(events: int = 5000, spus: int = 3) -> int:
    """The main job on the embedded default: a local cluster, a topic, events in and out."""
    from . import local_cluster
    from ..client.client import Client
    from ..client.consumer import Offset

    home = tempfile.mkdtemp(prefix="kolk-demo-home-")
    os.environ["KOLK_HOME"] = home
    t0 = time.perf_counter()
    try:
        profile = local_cluster.start(spus)
        print(f"kolk demo: local cluster up in {time.perf_counter() - t0:.1f} s — SC at {profile['sc']}, "
              f"{spus} SPUs; logs in {profile['logs']}")
        with Client(profile["sc"]) as client:
            rf = min(3, spus)
            client.create_topic("events", partitions=2, replication_factor=rf)
            print(f"  created topic 'events' with 2 partitions, {rf} replicas each")
            producer = client.producer("events", acks="all", linger_ms=2)
            t1 = time.perf_counter()
            producer.send_many([_event(i) for i in range(events)])
            producer.flush()
            print(f"  produced {events:,} events (acks=all: fsynced on every in-sync replica, idempotent) in "
                  f"{time.perf_counter() - t1:.2f} s")
            for row in client.partition_list("events"):
                print(f"  events-{row['partition']}: leader SPU {row['leader']}, in-sync {row['isr']}, "
                      f"high watermark {row['high_watermark']}, log end {row['log_end_offset']}")
            t1 = time.perf_counter()
            seen: dict[int, list[int]] = {}
            users: dict[bytes, int] = {}
            total = 0.0
            consumer = client.consumer("events", start=Offset.beginning(), stop_at_end=True)
            count = 0
            for rec in consumer:
                seen.setdefault(rec.partition, []).append(rec.offset)
                users[rec.key] = users.get(rec.key, 0) + 1
                total += json.loads(rec.value)["amount"]
                count += 1
            print(f"  consumed {count:,} events in {time.perf_counter() - t1:.2f} s from partitions "
                  + ", ".join(f"{p}: {len(o):,} (offsets {o[0]}-{o[-1]})" for p, o in sorted(seen.items())))
            top = sorted(users.items(), key=lambda kv: -kv[1])[:3]
            print(f"  result: {len(users)} users, total amount {total:,.2f}; busiest users "
                  + ", ".join(f"{k.decode()} ({v})" for k, v in top))
            ordered = all(o == list(range(o[0], o[0] + len(o))) for o in seen.values())
            ok = count == events and ordered
        print(f"  {'OK' if ok else 'FAILED'}: every event read back once, in order per partition")
        return 0 if ok else 1
    finally:
        try:
            local_cluster.stop()
            print("  local cluster stopped")
        except Exception as e:  # noqa: BLE001 - report, the demo is over anyway
            print(f"  stopping the local cluster: {e}")
        shutil.rmtree(home, ignore_errors=True)
