"""Produce throughput while the cleaner runs flat out on the same SPU (issue 19).

One SC and one SPU, real processes. Topic `dirty` holds many versions of many keys in 1 MiB
segments; the SPU's cleaner runs every 100 ms, unthrottled, with a 1 MiB key map (so a pass
covers a slice of the keys and the next pass goes on). Rounds alternate:

* **idle**: `dirty` has cleanup_policy=delete (the cleaner has nothing to do); a producer sends
  COUNT records of 100 B to topic `load` (acks=leader) and the rate is measured;
* **cleaning**: `dirty` is altered to cleanup_policy=compact, the bench waits until a clean
  worker process is running, and measures the same producer; the round counts only if a worker
  was running for at least half of it (sampled every 20 ms; the cleaner pauses between passes).
  Before each cleaning round `dirty` gets fresh versions of every key, so there is work.

Usage: python bench/lifecycle_bench.py [--count N] [--rounds R] [--dirty-records N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from dataplane_cluster import DataPlaneCluster, wait_until  # noqa: E402
from kolk.client.admin import run  # noqa: E402
from kolk.client.client import AsyncClient  # noqa: E402

SPU_ARGS = ("--heartbeat-interval-ms", "200", "--cleaner-interval-ms", "100", "--cleaner-bytes-per-s",
            str(1 << 40), "--cleaner-key-map-mib", "1")
KEYS = 40_000


def clean_workers(spu_pid: int) -> int:
    """How many clean worker processes the SPU runs now."""
    n = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            if ppid != spu_pid:
                continue
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"clean_worker" in f.read():
                    n += 1
        except (OSError, ValueError, IndexError):
            continue
    return n


async def fill_dirty(client: AsyncClient, n: int, round_: int) -> None:
    producer = client.producer("dirty", batch_bytes=256 << 10, linger_ms=5, acks="leader")
    for i in range(n):
        await producer.send(b"version %d of %d " % (round_, i) + b"." * 60, b"key-%06d" % (i % KEYS))
    await producer.flush()
    await producer.close()


async def busy_share(spu_pid: int, stop: asyncio.Event, samples: list[int]) -> None:
    """Sample whether a clean worker runs, every 20 ms, until ``stop``."""
    while not stop.is_set():
        samples.append(1 if clean_workers(spu_pid) else 0)
        try:
            await asyncio.wait_for(stop.wait(), 0.02)  # the sampling period
        except TimeoutError:
            pass


async def produce_rate(client: AsyncClient, count: int) -> float:
    producer = client.producer("load", batch_bytes=256 << 10, linger_ms=5, acks="leader")
    value = b"x" * 100
    t0 = time.perf_counter()
    for _ in range(count):
        await producer.send(value)
    await producer.flush()
    took = time.perf_counter() - t0
    await producer.close()
    return count / took


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=300_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dirty-records", type=int, default=400_000)
    args = ap.parse_args()
    root = tempfile.mkdtemp(prefix="kolk-lifecycle-bench-", dir=os.getcwd())
    c = DataPlaneCluster(root, spus=1, spu_args=SPU_ARGS)
    idle: list[float] = []
    cleaning: list[float] = []
    busy: list[float] = []
    dropped = 0
    try:
        c.start()
        spu_pid = c.spus[1].pid

        async def body() -> None:
            nonlocal dropped
            async with c.client(timeout_s=60) as client:
                await client.create_topic("load", 1, 1)
                await client.create_topic("dirty", 1, 1, config={
                    "segment_bytes": str(1 << 20), "max_message_bytes": str(512 << 10), "cleanup_policy": "delete"})
                await produce_rate(client, 20_000)  # warm up
                for r in range(args.rounds):
                    await client.admin.alter_topic("dirty", set={"cleanup_policy": "delete"})
                    await fill_dirty(client, args.dirty_records, r)
                    await wait_until(lambda: clean_workers(spu_pid) == 0, 120, "the cleaner to stop")
                    idle.append(await produce_rate(client, args.count))
                    await client.admin.alter_topic("dirty", set={"cleanup_policy": "compact"})
                    await wait_until(lambda: clean_workers(spu_pid) > 0, 60, "a clean worker to start")
                    stop, samples = asyncio.Event(), []
                    sampler = asyncio.create_task(busy_share(spu_pid, stop, samples))
                    rate = await produce_rate(client, args.count)
                    stop.set()
                    await sampler
                    share = sum(samples) / max(1, len(samples))
                    if share >= 0.5:
                        cleaning.append(rate)
                        busy.append(share)
                    else:
                        dropped += 1
        run(body)
    finally:
        c.close()
        shutil.rmtree(root, ignore_errors=True)
    a, b = statistics.median(idle), statistics.median(cleaning) if cleaning else float("nan")
    print(f"Produce beside the cleaner: {args.count:,} records of 100 B to one partition (acks=leader), "
          f"{args.rounds} rounds; the cleaner compacts {args.dirty_records:,} records over {KEYS:,} keys per round "
          f"with a 1 MiB key map, unthrottled, at nice 10; {os.cpu_count()} cores")
    print()
    print("| cleaner | produce records/s (median) | per round | ratio | goal |")
    print("| --- | ---: | --- | ---: | --- |")
    print(f"| idle | {a:,.0f} | " + ", ".join(f"{x:,.0f}" for x in idle) + " | 100% | |")
    print(f"| running flat out | {b:,.0f} | " + ", ".join(f"{x:,.0f}" for x in cleaning)
          + f" | {b / a:.0%} | >= 80% |")
    print(f"\nA clean worker ran {statistics.median(busy) if busy else 0:.0%} of the measured time (median of rounds)")
    if dropped:
        print(f"{dropped} round(s) dropped: a clean worker ran less than half of the time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
