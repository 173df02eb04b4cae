"""``kolk bench``: produce and consume throughput and end-to-end latency on a local cluster.

One producer (this process, asyncio client), records of 100 B and 1 KiB, acks=all (durable
on the leader; replication factor 1); then one consumer reading everything from the beginning
into a Python loop; then end-to-end latency: a producer at a fixed rate (2,000 records/s,
linger 0) and a consumer tailing the topic in the same process, latency = time the consumer
sees a record minus the time it was sent; the consumer runs in its own process.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import struct
import sys
import tempfile
import time

from .admin import run
from .client import AsyncClient
from .consumer import Offset


def _pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


async def _throughput(client: AsyncClient, topic: str, size: int, count: int) -> dict[str, float]:
    await client.create_topic(topic, partitions=1)
    value = os.urandom(size)
    producer = client.producer(topic, acks="all", batch_bytes=1 << 20, linger_ms=5)
    t0 = time.perf_counter()
    last = None
    send = producer.send
    for _ in range(count):
        last = await send(value)
    await producer.flush()
    meta = await last
    produce_s = time.perf_counter() - t0
    assert meta.offset == count - 1, meta
    n, nbytes, consume_s = await consume_from_beginning(client, topic)
    assert n == count, (n, count)
    return {"produce_rps": count / produce_s, "produce_mbs": count * size / produce_s / 1e6,
            "consume_rps": n / consume_s, "consume_mbs": nbytes / consume_s / 1e6}


async def consume_from_beginning(client: AsyncClient, topic: str) -> tuple[int, int, float]:
    """Read ``topic`` from the beginning to its end, every record into a Python loop as a user
    would; returns (records, value bytes, seconds). Shared with bench/peers_bench.py."""
    consumer = client.consumer(topic, start=Offset.beginning(), stop_at_end=True, window_bytes=16 << 20)
    n = 0
    nbytes = 0
    t0 = time.perf_counter()
    async for batch in consumer.batches():
        for rec in batch:
            nbytes += len(rec.value)
            n += 1
    elapsed = time.perf_counter() - t0
    await consumer.close()
    return n, nbytes, elapsed


async def consume_latencies(sc: str, topic: str, count: int) -> list[float]:
    """Tail ``topic`` until ``count`` records arrived; each carries its send time (time.time())."""
    client = AsyncClient(sc)
    consumer = client.consumer(topic, start=Offset.beginning())
    latencies: list[float] = []
    async for batch in consumer.batches():
        now = time.time()
        for rec in batch:
            (sent,) = struct.unpack_from("<d", rec.value)
            latencies.append((now - sent) * 1000)
        if len(latencies) >= count:
            break
    await consumer.close()
    return latencies


_CONSUMER = """
import json, sys
from kolk.admin import run
from kolk.bench import consume_latencies
lat = run(lambda: consume_latencies(sys.argv[1], sys.argv[2], int(sys.argv[3])))
print(json.dumps(lat))
"""


async def _latency(client: AsyncClient, sc: str, topic: str, rate: int, seconds: float) -> list[float]:
    """A producer here at ``rate`` records/s (linger 0, acks=all); a consumer in its own
    process, as an application would run it, tailing the topic."""
    import json
    import subprocess

    await client.create_topic(topic, partitions=1)
    total = int(rate * seconds)
    proc = subprocess.Popen([sys.executable, "-c", _CONSUMER, sc, topic, str(total)], stdout=subprocess.PIPE)
    try:
        producer = client.producer(topic, acks="all", linger_ms=0)
        # Warm-up record: the consumer is streaming once it has seen it.
        await (await producer.send(struct.pack("<d", time.time()) + b"w" * 92))
        await asyncio.sleep(1.0)  # give the consumer process time to start and open its stream
        interval = 1 / rate
        start = time.perf_counter()
        for i in range(total - 1):
            delay = start + i * interval - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)  # pacing the producer at the target rate
            await producer.send(struct.pack("<d", time.time()) + b"x" * 92)
        await producer.flush()
        out, _ = await asyncio.get_running_loop().run_in_executor(None, lambda: proc.communicate(timeout=60))
        return json.loads(out)[1:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def run_bench(count_100: int = 1_000_000, count_1k: int = 200_000, rate: int = 2000, seconds: float = 5.0) -> int:
    from . import local_cluster

    home = tempfile.mkdtemp(prefix="kolk-bench-home-", dir=os.getcwd())
    os.environ["KOLK_HOME"] = home
    try:
        profile = local_cluster.start(1)

        async def body() -> dict:
            client = AsyncClient(profile["sc"])
            small = await _throughput(client, "bench-100", 100, count_100)
            large = await _throughput(client, "bench-1k", 1024, count_1k)
            lat = await _latency(client, profile["sc"], "bench-latency", rate, seconds)
            return {"small": small, "large": large, "lat": lat}
        out = run(body)
    finally:
        try:
            local_cluster.stop()
        finally:
            shutil.rmtree(home, ignore_errors=True)
    s, l, lat = out["small"], out["large"], out["lat"]
    print(f"kolk bench: local cluster (1 SC, 1 SPU), 1 partition, acks=all, python {sys.version.split()[0]}, "
          f"{os.cpu_count()} cores")
    print()
    print("| measure | 100 B records | 1 KiB records | goal |")
    print("| --- | ---: | ---: | --- |")
    print(f"| produce records/s | {s['produce_rps']:,.0f} | {l['produce_rps']:,.0f} | >= 400,000 at 100 B |")
    print(f"| produce MB/s | {s['produce_mbs']:,.1f} | {l['produce_mbs']:,.1f} | |")
    print(f"| consume records/s (Python loop) | {s['consume_rps']:,.0f} | {l['consume_rps']:,.0f} | >= 1,000,000 |")
    print(f"| consume MB/s | {s['consume_mbs']:,.1f} | {l['consume_mbs']:,.1f} | |")
    print()
    print(f"end-to-end latency at {rate:,} records/s for {seconds:.0f} s ({len(lat):,} records, acks=all, linger 0): "
          f"p50 {statistics.median(lat):.2f} ms, p99 {_pct(lat, 99):.2f} ms, max {max(lat):.2f} ms (goal p99 <= 3 ms)")
    return 0
