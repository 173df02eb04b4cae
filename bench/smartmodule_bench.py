"""SmartModule throughput (issue 6): the engine alone, and the consume path with and without a
filter, side by side in one run.

* Engine alone: the `contains` example (C, clang wasm32) filtering batches of 10,000 records
  of 100 B (1 in 10 matches), one call per batch, through ``Chain.apply`` (header checks,
  copy in, call, output checks, output batch) -- what the SPU does per batch on consume.
  Beside it, its AssemblyScript twin (contains.ts, asc): same records, same needle, the two
  interleaved round by round; the goal is AS >= 50% of C's throughput (medians).
* Consume path: a local cluster (1 SC, 1 SPU); COUNT records of 100 B in one partition; a
  consumer reads them all from the beginning, once plainly and once with the filter on the
  SPU; records *in* per second = records the SPU read / elapsed. Rounds alternate.

Usage: python bench/smartmodule_bench.py [--count N] [--rounds R]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
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
from kolk.client.consumer import Offset  # noqa: E402
from kolk.segments import build_batch  # noqa: E402
from kolk.smartmodule.build import build_c, build_source  # noqa: E402
from kolk.smartmodule.chain import Chain, Stage  # noqa: E402
from kolk.smartmodule.engine import ModuleCache  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONTAINS = os.path.join(ROOT, "smartmodule", "examples", "contains.c")
CONTAINS_AS = os.path.join(ROOT, "smartmodule", "examples", "contains.ts")
AS_GOAL = 0.5  # AssemblyScript contains: at least half of C's throughput, engine alone


def value(i: int) -> bytes:
    tag = b"needle" if i % 10 == 0 else b"hay---"
    return (b"%08d-" % i + tag).ljust(100, b".")


def engine_alone(wasm: bytes, batches: int = 50, per_batch: int = 10_000) -> float:
    cache = ModuleCache()
    chain = Chain([Stage("contains@bench", cache.load(wasm).instantiate({"needle": "needle"}))])
    data = [build_batch([(None, value(b * per_batch + i)) for i in range(per_batch)]) for b in range(batches)]
    t0 = time.perf_counter()
    kept = 0
    for d in data:
        out = chain.apply(d, 64 << 20, verified=True)  # as on consume: the log reader checked the CRCs
        kept += len(out) > 0
    elapsed = time.perf_counter() - t0
    assert chain.records_out == batches * per_batch // 10, chain.records_out
    return batches * per_batch / elapsed


async def consume(client: AsyncClient, topic: str, count: int, chain: list) -> float:
    consumer = client.consumer(topic, start=Offset.beginning(), stop_at_end=True, window_bytes=16 << 20,
                               smartmodules=chain)
    n = 0
    t0 = time.perf_counter()
    async for batch in consumer.batches():
        for rec in batch:  # into a Python loop, as a user would
            n += len(rec.value) > 0
    elapsed = time.perf_counter() - t0
    await consumer.close()
    consumer._streams.clear()
    assert n == (count // 10 if chain else count), (n, count)
    return count / elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    wasm = build_c(CONTAINS)
    as_wasm = build_source(CONTAINS_AS)
    engine_rps: list[float] = []
    as_rps: list[float] = []
    for _ in range(args.rounds):  # interleaved, so load on the machine hits both alike
        engine_rps.append(engine_alone(wasm))
        as_rps.append(engine_alone(as_wasm))
    home = tempfile.mkdtemp(prefix="kolk-sm-bench-", dir=os.getcwd())
    os.environ["KOLK_HOME"] = home
    try:
        profile = local_cluster.start(1)

        async def body() -> dict[str, list[float]]:
            client = AsyncClient(profile["sc"])
            spec = {"wasm": base64.b64encode(wasm).decode(), "sha256": hashlib.sha256(wasm).hexdigest(),
                    "size": len(wasm)}
            await client.admin.put_object("smartmodule", "contains@1", spec, expected_version=-1)
            await client.create_topic("sm-bench", 1, 1)
            producer = client.producer("sm-bench", batch_bytes=1 << 20, linger_ms=5)
            for i in range(args.count):
                await producer.send(value(i))
            await producer.flush()
            out: dict[str, list[float]] = {"plain": [], "filter": []}
            for _ in range(args.rounds):
                out["plain"].append(await consume(client, "sm-bench", args.count, []))
                out["filter"].append(await consume(client, "sm-bench", args.count,
                                                   [("contains", {"needle": "needle"})]))
            return out
        res = run(body)
    finally:
        try:
            local_cluster.stop()
        finally:
            shutil.rmtree(home, ignore_errors=True)
    print(f"SmartModule bench: contains filter (C, clang wasm32), 100 B records, 1 in 10 kept; {args.rounds} rounds; "
          f"{os.cpu_count()} cores")
    print()
    print("| path | records in/s (median) | per round | goal |")
    print("| --- | ---: | --- | --- |")
    print(f"| engine alone (Chain.apply, 10k-record batches) | {statistics.median(engine_rps):,.0f} | "
          + ", ".join(f"{x:,.0f}" for x in engine_rps) + " | >= 5,000,000 |")
    ratio = statistics.median(as_rps) / statistics.median(engine_rps)
    print(f"| engine alone, AssemblyScript contains.ts (asc, stub runtime, -O3) | {statistics.median(as_rps):,.0f} | "
          + ", ".join(f"{x:,.0f}" for x in as_rps) + f" | >= {AS_GOAL:.0%} of C: {ratio:.0%} "
          + ("pass" if ratio >= AS_GOAL else "FAIL") + " |")
    for key, label, goal in (("plain", "consume, no module", ""), ("filter", "consume with the filter on the SPU",
                                                                     ">= 1,000,000")):
        print(f"| {label} | {statistics.median(res[key]):,.0f} | " + ", ".join(f"{x:,.0f}" for x in res[key])
              + f" | {goal} |")
    return 0


if __name__ == "__main__":
    asyncio.set_event_loop_policy(None)
    sys.exit(main())
