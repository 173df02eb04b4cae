"""Masking and the SPU's event loop (issue 17; docs/security.md "Masking fails closed").

``cluster``: one SPU with mutual TLS, a topic of 50,000 records {"id","card","name"} and one
with a single 2.6 MB value; alice reads with a mask on $.card, bob calls ``offsets`` back to
back meanwhile. Prints alice's fetch times and bob's latency (time-weighted median: a call
stuck behind a masked fetch weighs what it waited) while alice fetches the topic, fetches the
huge value, and streams the topic. ``loop``: in-process, the event loop's lag while 50,000
records are masked cooperatively (security/masking.py ``mask_read``) or in a worker thread.

Usage: python bench/masking_bench.py [--only cluster|loop]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from typing import Any, Awaitable

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

import test_masking_fairness as T  # noqa: E402 - the test's policy, topic and records
from dataplane_cluster import DataPlaneCluster, run_async, wait_committed  # noqa: E402
from kolk.client.consumer import Offset  # noqa: E402
from kolk.security.masking import mask_batches, mask_read  # noqa: E402
from kolk.security.policy import parse_policy  # noqa: E402
from kolk.segments.records import build_batch  # noqa: E402

MASKS = [("$.card", "***")]
HUGE = b'{"card":"S3CR3T","a":[' + b",".join([b'{"b":1}'] * 330_000) + b']}'


def summary(lat: list[float]) -> str:
    lat = sorted(lat)
    return (f"time-weighted median {T.time_weighted_median(lat) * 1e3:.1f} ms, median "
            f"{statistics.median(lat) * 1e3:.1f} ms, max {lat[-1] * 1e3:.1f} ms (n={len(lat)})")


async def offsets_call(bob: Any) -> float:
    t = time.monotonic()
    await bob.call("offsets", 10, topic=T.TOPIC, partition=0)
    return time.monotonic() - t


async def probe(bob: Any, work: Awaitable[Any]) -> list[float]:
    task = asyncio.ensure_future(work)
    lat = []
    while not task.done():
        lat.append(await offsets_call(bob))
    await task
    return lat


async def read_topic(conn: Any) -> int:
    offset, fetches = 0, 0
    while offset < T.RECORDS:
        r = await conn.call("fetch", 60, topic=T.TOPIC, partition=0, offset=offset, maxBytes=8 << 20,
                            isolation="committed")
        offset, fetches = r.nextOffset, fetches + 1
    return fetches


async def cluster_main(c: DataPlaneCluster) -> None:
    admin = c.client(as_="admin")
    await admin.admin.put_object("policy", "active", {"version": 1, "source": T.POLICY,
                                                       "sha256": parse_policy(T.POLICY).sha256})
    await admin.create_topic(T.TOPIC, 1, 1)
    await admin.create_topic("masked-huge", 1, 1)
    spu = await T.leader_conn(c, T.TOPIC, "admin")
    for j in range(T.BATCHES):
        recs = [(None, T.value(j * T.PER_BATCH + i)) for i in range(T.PER_BATCH)]
        r = await spu.call("produce", 30, topic=T.TOPIC, partition=0, acks="all", records=build_batch(recs),
                           timeoutMs=20000)
        assert r.result.ok, r.result.error.message
    r = await spu.call("produce", 30, topic="masked-huge", partition=0, acks="all",
                       records=build_batch([(None, HUGE)]), timeoutMs=20000)
    assert r.result.ok, r.result.error.message
    await wait_committed(admin, T.TOPIC)
    await wait_committed(admin, "masked-huge")
    bob = await T.leader_conn(c, T.TOPIC, "bob")
    alice = await T.leader_conn(c, T.TOPIC, "alice")
    for who in ("admin", "alice"):
        conn = await T.leader_conn(c, T.TOPIC, who)
        t = time.monotonic()
        fetches = await read_topic(conn)
        print(f"{who}: the whole topic in {fetches} fetches of up to 8 MiB, {time.monotonic() - t:.3f} s")
    t = time.monotonic()
    r = await alice.call("fetch", 60, topic="masked-huge", partition=0, offset=0, maxBytes=8 << 20,
                         isolation="committed")
    print(f"alice: one {len(HUGE)}-byte value in {time.monotonic() - t:.3f} s ({len(bytes(r.records))} bytes out)")
    print("bob idle:", summary([await offsets_call(bob) for _ in range(50)]))

    async def twice() -> None:
        for _ in range(2):
            await read_topic(alice)
    print("bob while alice fetches the topic twice:", summary(await probe(bob, twice())))

    async def huge() -> None:
        for _ in range(4):
            await alice.call("fetch", 60, topic="masked-huge", partition=0, offset=0, maxBytes=8 << 20,
                             isolation="committed")
    print("bob while alice fetches the huge value 4 times:", summary(await probe(bob, huge())))
    consumer = c.client(as_="alice").consumer(T.TOPIC, partition=0, start=Offset.beginning(), window_bytes=64 << 20)

    async def stream() -> None:
        async for b in consumer.record_batches():
            if b.last_offset >= T.RECORDS - 1:
                return
    try:
        print("bob while alice streams the topic:", summary(await probe(bob, stream())))
    finally:
        await consumer.close()


def run_cluster() -> None:
    c = DataPlaneCluster(tempfile.mkdtemp(prefix="masking-bench-"), spus=1, tls=True,
                         clients=("admin", "alice", "bob"))
    try:
        c.start()
        run_async(lambda: cluster_main(c))
    finally:
        c.close()


async def loop_main() -> None:
    data = b"".join(build_batch([(None, T.value(j * 1000 + i)) for i in range(1000)], base_offset=j * 1000)
                    for j in range(50))
    for name, make in (("cooperative mask_read", lambda: mask_read(data, MASKS, records_max=1 << 30)),
                       ("worker thread", lambda: asyncio.to_thread(mask_batches, data, MASKS))):
        task = asyncio.ensure_future(make())
        t0 = time.monotonic()
        lags = []
        while not task.done():
            t = time.monotonic()
            await asyncio.sleep(0.001)
            lags.append(time.monotonic() - t - 0.001)
        await task
        lags.sort()
        print(f"{name}: masked 50,000 records in {time.monotonic() - t0:.3f} s; loop lag median "
              f"{statistics.median(lags) * 1e3:.2f} ms, max {lags[-1] * 1e3:.2f} ms")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=("cluster", "loop"))
    args = ap.parse_args()
    if args.only != "loop":
        run_cluster()
    if args.only != "cluster":
        asyncio.run(loop_main())
