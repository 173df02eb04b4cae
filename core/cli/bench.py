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
import subprocess
import sys
import tempfile
import time
from typing import Awaitable, Callable

from ..client.admin import run
from ..client.client import AsyncClient
from ..client.consumer import Offset


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


WARMUP, TIMED = b"w", b"x"  # byte 8 of a latency record, after its send time
READY_TIMEOUT_S = 30.0


def latency_record(kind: bytes, size: int = 100) -> bytes:
    """A record carrying its send time (``time.time()``), then ``kind`` repeated."""
    return struct.pack("<d", time.time()) + kind * (size - 8)


def read_latency_record(value: bytes) -> tuple[float, bool]:
    """(send time, is a timed record) of a value made by :func:`latency_record`."""
    (sent,) = struct.unpack_from("<d", value)
    return sent, value[8:9] == TIMED


async def consume_latencies(sc: str, topic: str, count: int) -> list[float]:
    """Tail ``topic`` until ``count`` timed records arrived; says "ready" on stdout at the
    first record of any kind, so the producer knows this consumer is streaming."""
    client = AsyncClient(sc)
    consumer = client.consumer(topic, start=Offset.beginning())
    latencies: list[float] = []
    ready = False
    async for batch in consumer.batches():
        now = time.time()
        if not ready:
            ready = True
            sys.stdout.write("ready\n")
            sys.stdout.flush()
        for rec in batch:
            sent, timed = read_latency_record(rec.value)
            if timed:
                latencies.append((now - sent) * 1000)
        if len(latencies) >= count:
            break
    await consumer.close()
    return latencies


async def until_streaming(proc: "subprocess.Popen[bytes]", send_warmup: Callable[[], Awaitable[object]],
                          what: str, timeout_s: float = READY_TIMEOUT_S) -> None:
    """Send a warm-up record every 10 ms until the consumer process ``proc`` says "ready" on
    its stdout (it has seen one), so a timed run starts with the consumer streaming. Raises
    naming ``what`` if it exits or stays silent for ``timeout_s``. Shared with bench/peers."""
    loop = asyncio.get_running_loop()
    ready = loop.run_in_executor(None, proc.stdout.readline)
    deadline = time.monotonic() + timeout_s
    while not ready.done():
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError(f"{what}: the latency consumer did not start streaming")
        await send_warmup()
        await asyncio.wait([ready], timeout=0.01)  # the next warm-up record unless the consumer answered
    if (await ready).strip() != b"ready":
        raise RuntimeError(f"{what}: the latency consumer failed to start")


async def paced(count: int, rate: int, send_timed: Callable[[], Awaitable[object]]) -> None:
    """Call ``send_timed`` ``count`` times at ``rate`` calls/s, on a schedule fixed at the start
    (a late call is not made up for by bunching: it just goes as soon as it can)."""
    interval = 1 / rate
    start = time.perf_counter()
    for i in range(count):
        delay = start + i * interval - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)  # pacing the producer at the target rate
        await send_timed()


_CONSUMER = """
import json, sys
from kolk.client.admin import run
from kolk.cli.bench import consume_latencies
lat = run(lambda: consume_latencies(sys.argv[1], sys.argv[2], int(sys.argv[3])))
print(json.dumps(lat))
"""


async def _latency(client: AsyncClient, sc: str, topic: str, rate: int, seconds: float) -> list[float]:
    """A producer here at ``rate`` records/s (linger 0, acks=all); a consumer in its own
    process, as an application would run it, tailing the topic."""
    import json

    await client.create_topic(topic, partitions=1)
    total = int(rate * seconds)
    proc = subprocess.Popen([sys.executable, "-c", _CONSUMER, sc, topic, str(total)], stdout=subprocess.PIPE)
    try:
        producer = client.producer(topic, acks="all", linger_ms=0)
        await until_streaming(proc, lambda: producer.send(latency_record(WARMUP)), "kolk bench")
        await paced(total, rate, lambda: producer.send(latency_record(TIMED)))
        await producer.flush()
        out, _ = await asyncio.get_running_loop().run_in_executor(None, lambda: proc.communicate(timeout=60))
        latencies = json.loads(out)
        if len(latencies) != total:
            raise RuntimeError(f"kolk bench: the consumer saw {len(latencies)} of {total} timed records")
        return latencies
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
