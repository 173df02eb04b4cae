"""The Node client (clients/node) beside the Python client, in one run (issue 23).

A local cluster of 1 SC and 1 SPU (real processes on this machine). Records of 100 B, one
partition. Each round, interleaved so both clients see the same machine noise:

* produce: the Python client writes COUNT records (acks=all, batching producer: batch_bytes
  1 MiB, linger 5 ms, sends not awaited one by one, the idempotent default) to a fresh topic,
  then the Node client does the same (tests/node/bench_client.mjs, its batching producer with
  the same settings), each over one connection to the SPU;
* consume: both read the Python-written topic from the beginning to its end, every record into
  a loop of the client's language (Python: ``consumer.batches()`` with a 16 MiB window, as
  ``kolk bench`` reads; Node: ``consumer.batches()`` with a 16 MiB window).

The Node side is timed inside its process (Node's start and the route lookup are not counted;
the Python side looks its routes up before its clock starts too). The table gives the medians
over rounds and the Node/Python ratios; the goals are Node produce >= 50% of Python's and Node
consume >= 100% of Python's.

Usage: python bench/node_client_bench.py [--count N] [--rounds R]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from kolk.cli import local_cluster  # noqa: E402
from kolk.client.admin import run  # noqa: E402
from kolk.client.client import AsyncClient  # noqa: E402
from kolk.client.consumer import Offset  # noqa: E402

NODE_DIR = os.path.join(ROOT, "clients", "node")
NODE_SCRIPT = os.path.join(ROOT, "tests", "node", "bench_client.mjs")
SIZE = 100
NODE_TIMEOUT_S = 300
PRODUCE_GOAL, CONSUME_GOAL = 0.5, 1.0


def build_node() -> str:
    """`make node-setup` (npm ci once per change of the lock file), npm run build; the Node version."""
    subprocess.run(["make", "-s", "node-setup"], cwd=ROOT, check=True, timeout=600)
    subprocess.run(["npm", "run", "--silent", "build"], cwd=NODE_DIR, check=True, timeout=600)
    return subprocess.run(["node", "--version"], capture_output=True, text=True, check=True).stdout.strip()


def node(*args: str) -> dict:
    r = subprocess.run(["node", NODE_SCRIPT, *args], capture_output=True, text=True, timeout=NODE_TIMEOUT_S, cwd=ROOT)
    if r.returncode != 0:
        raise SystemExit(f"node bench_client.mjs {' '.join(args)} failed: {r.stderr.strip()}")
    return json.loads(r.stdout)


async def wait_leader(client: AsyncClient, topic: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        parts = await client.refresh(topic)
        if all(p["status"]["leader"] is not None for p in parts):
            return
        await asyncio.sleep(0.05)  # polling for the topic's leader, with a deadline
    raise SystemExit(f"{topic} has no leader after 30 s")


async def py_produce(client: AsyncClient, topic: str, count: int) -> float:
    value = os.urandom(SIZE)
    await client.partitions(topic)
    producer = client.producer(topic, acks="all", batch_bytes=1 << 20, linger_ms=5)
    t0 = time.perf_counter()
    last = None
    for _ in range(count):
        last = await producer.send(value)
    await producer.flush()
    meta = await last
    elapsed = time.perf_counter() - t0
    await producer.close()
    assert meta.offset == count - 1, meta
    return count / elapsed


async def py_consume(client: AsyncClient, topic: str, count: int) -> float:
    await client.partitions(topic)
    t0 = time.perf_counter()
    consumer = client.consumer(topic, start=Offset.beginning(), stop_at_end=True, window_bytes=16 << 20)
    n = 0
    nbytes = 0
    async for batch in consumer.batches():
        for rec in batch:
            nbytes += len(rec.value)
            n += 1
    elapsed = time.perf_counter() - t0
    await consumer.close()
    assert n == count and nbytes == count * SIZE, (n, nbytes)
    return n / elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    node_version = build_node()
    home = tempfile.mkdtemp(prefix="kolk-node-bench-", dir=os.getcwd())
    os.environ["KOLK_HOME"] = home
    res: dict[str, list[float]] = {"py_produce": [], "node_produce": [], "py_consume": [], "node_consume": []}
    try:
        profile = local_cluster.start(1)
        sc = profile["sc"][0] if isinstance(profile["sc"], list) else profile["sc"]

        async def create(topic: str) -> None:
            client = AsyncClient(profile["sc"])
            try:
                await client.create_topic(topic, 1)
                await wait_leader(client, topic)
            finally:
                await client.close()

        async def py(fn, topic: str) -> float:  # noqa: ANN001
            client = AsyncClient(profile["sc"])
            try:
                return await fn(client, topic, args.count)
            finally:
                await client.close()

        for rnd in range(args.rounds):
            py_topic, node_topic = f"py-r{rnd}", f"node-r{rnd}"
            run(lambda: create(py_topic))
            run(lambda: create(node_topic))
            res["py_produce"].append(run(lambda: py(py_produce, py_topic)))
            res["node_produce"].append(args.count / node("produce", sc, node_topic, str(args.count), str(SIZE))["seconds"])
            res["py_consume"].append(run(lambda: py(py_consume, py_topic)))
            got = node("consume", sc, py_topic, str(args.count))
            assert got["records"] == args.count and got["bytes"] == args.count * SIZE, got
            res["node_consume"].append(args.count / got["seconds"])
    finally:
        try:
            local_cluster.stop()
        finally:
            shutil.rmtree(home, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in res.items()}
    print(f"node client bench, {datetime.date.today()}: 1 SC + 1 SPU on this machine ({os.cpu_count()} cores), "
          f"1 partition, {SIZE} B records, {args.rounds} interleaved rounds of {args.count:,} records; "
          f"Python {platform.python_version()}, Node {node_version}")
    print()
    print("| measure | Python records/s (median) | Node records/s (median) | Node / Python | goal | per round (Python; Node) |")
    print("| --- | ---: | ---: | ---: | --- | --- |")
    ok = True
    for what, goal in (("produce", PRODUCE_GOAL), ("consume", CONSUME_GOAL)):
        p, n = med[f"py_{what}"], med[f"node_{what}"]
        passed = n / p >= goal
        ok &= passed
        rounds = ", ".join(f"{x:,.0f}" for x in res[f"py_{what}"]) + "; " + \
            ", ".join(f"{x:,.0f}" for x in res[f"node_{what}"])
        label = "produce acks=all" if what == "produce" else "consume (full topic read)"
        print(f"| {label} | {p:,.0f} | {n:,.0f} | {n / p:.0%} | >= {goal:.0%}: {'pass' if passed else 'FAIL'} | {rounds} |")
    print()
    print("goals: " + ("pass" if ok else "FAIL"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
