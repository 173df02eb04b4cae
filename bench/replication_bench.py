"""Produce with replication factor 3 beside replication factor 1, in one run (issue 5).

A local cluster of 1 SC and 3 SPUs (all on this machine, one process each). For each round,
one topic of 1 partition per replication factor; a producer writes COUNT records of 100 B
with acks=all (RF 1: fsynced on the leader; RF 3: fsynced on every in-sync replica) and the
idempotent default; then a paced producer (linger 0, one record in flight at a time at RATE
records/s) measures the produce round-trip latency. Rounds alternate RF 1 and RF 3 so both
see the same machine noise; the table gives medians over rounds and the RF3/RF1 ratio.

Usage: python bench/replication_bench.py [--count N] [--rounds R] [--rate R] [--seconds S]
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

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kolk.cli import local_cluster  # noqa: E402
from kolk.client.admin import run  # noqa: E402
from kolk.client.client import AsyncClient  # noqa: E402


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


async def wait_leader(client: AsyncClient, topic: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        parts = await client.refresh(topic)
        if all(p["status"]["leader"] is not None for p in parts):
            return
        await asyncio.sleep(0.05)  # polling for the topic's leader, with a deadline
    raise SystemExit(f"{topic} has no leader after 30 s")


async def throughput(client: AsyncClient, topic: str, count: int) -> float:
    value = os.urandom(100)
    producer = client.producer(topic, acks="all", batch_bytes=1 << 20, linger_ms=5)
    t0 = time.perf_counter()
    last = None
    for _ in range(count):
        last = await producer.send(value)
    await producer.flush()
    meta = await last
    elapsed = time.perf_counter() - t0
    assert meta.offset == count - 1, meta
    return count / elapsed


async def latency(client: AsyncClient, topic: str, rate: int, seconds: float) -> list[float]:
    producer = client.producer(topic, acks="all", linger_ms=0)
    value = b"x" * 100
    out = []
    interval = 1 / rate
    start = time.perf_counter()
    for i in range(int(rate * seconds)):
        delay = start + i * interval - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)  # pacing at the target rate
        t0 = time.perf_counter()
        await (await producer.send(value))
        out.append((time.perf_counter() - t0) * 1000)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=300_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rate", type=int, default=500)
    ap.add_argument("--seconds", type=float, default=4.0)
    args = ap.parse_args()
    home = tempfile.mkdtemp(prefix="kolk-repl-bench-", dir=os.getcwd())
    os.environ["KOLK_HOME"] = home
    try:
        profile = local_cluster.start(3)

        async def body() -> dict[int, dict[str, list[float]]]:
            client = AsyncClient(profile["sc"])
            results: dict[int, dict[str, list[float]]] = {1: {"rps": [], "lat": []}, 3: {"rps": [], "lat": []}}
            for rnd in range(args.rounds):
                for rf in (1, 3):
                    topic = f"rf{rf}-r{rnd}"
                    await client.create_topic(topic, 1, rf)
                    await wait_leader(client, topic)
                    results[rf]["rps"].append(await throughput(client, topic, args.count))
                    lat_topic = f"{topic}-lat"
                    await client.create_topic(lat_topic, 1, rf)
                    await wait_leader(client, lat_topic)
                    results[rf]["lat"].extend(await latency(client, lat_topic, args.rate, args.seconds))
            return results
        res = run(body)
    finally:
        try:
            local_cluster.stop()
        finally:
            shutil.rmtree(home, ignore_errors=True)
    r1, r3 = statistics.median(res[1]["rps"]), statistics.median(res[3]["rps"])
    print(f"replication bench: 1 SC + 3 SPUs on this machine ({os.cpu_count()} cores), 1 partition, 100 B records, "
          f"acks=all, idempotent; {args.rounds} rounds of {args.count:,} records; latency at {args.rate}/s, "
          "one record in flight")
    print()
    print("| replication | produce records/s (median) | per round | produce p50 ms | produce p99 ms |")
    print("| --- | ---: | --- | ---: | ---: |")
    for rf in (1, 3):
        rounds = ", ".join(f"{x:,.0f}" for x in res[rf]["rps"])
        lat = res[rf]["lat"]
        print(f"| RF {rf} | {statistics.median(res[rf]['rps']):,.0f} | {rounds} | {statistics.median(lat):.2f} | "
              f"{pct(lat, 99):.2f} |")
    print()
    print(f"RF 3 / RF 1 throughput: {r3 / r1:.0%} (goal >= 50%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
