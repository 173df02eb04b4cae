"""SmartModule isolation (issue 18): does a slow but legal module slow anyone else?

A local cluster (1 SC, 1 SPU). A plain consumer reads COUNT records of 100 B from the beginning
of topic `plain`, alone, then while four other streams on the same SPU each run a legal
filter that takes about 50 ms a batch (it fills 1 MiB of its memory over and over: cheap in
fuel, expensive in time) over topic `slow`; rounds alternate. Also measured: the longest gap
between produce acknowledgements of a small steady producer during each phase.

Usage: python bench/isolation_bench.py [--count N] [--rounds R] [--slow-ms MS]
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

import wasmtime  # noqa: E402

from kolk.cli import local_cluster  # noqa: E402
from kolk.client.admin import run  # noqa: E402
from kolk.client.client import AsyncClient  # noqa: E402
from kolk.client.consumer import Offset  # noqa: E402
from kolk.segments import build_batch  # noqa: E402
from kolk.smartmodule.chain import Chain, Stage  # noqa: E402
from kolk.smartmodule.engine import ModuleCache  # noqa: E402

SLOW_STREAMS = 4
SLOW_RECORDS = 200_000

# A filter that keeps the first record of each batch after ITER rounds of a dependent chain of 64-bit divisions
# (ITER is baked into the module): a division is slow for the one unit of fuel it costs, so a
# call can take tens of milliseconds within the default fuel limit.
SLOW_WAT = """(module
  (memory (export "memory") 20)
  (global $bump (mut i32) (i32.const 1114112))
  (func (export "kolk_abi_version") (result i32) (i32.const 1))
  (func (export "kolk_alloc") (param $n i32) (result i32)
    (local $p i32)
    (global.set $bump (i32.const 1114112))
    (local.set $p (global.get $bump))
    (block $ok
      (loop $grow
        (br_if $ok (i32.le_u (i32.add (local.get $p) (local.get $n)) (i32.shl (memory.size) (i32.const 16))))
        (br_if $grow (i32.ne (memory.grow (i32.const 16)) (i32.const -1))))
      (return (i32.const 0)))
    (local.get $p))
  (func (export "filter") (param $ptr i32) (param $len i32) (result i64)
    (local $i i32) (local $x i64) (local $d i64)
    (local.set $x (i64.const 0x7fffffffffff))
    (local.set $d (i64.add (i64.extend_i32_u (i32.and (local.get $len) (i32.const 1))) (i64.const 3)))
    (loop $spin
      (local.set $x (i64.add (i64.div_u (local.get $x) (local.get $d)) (i64.const 0x5fffffffffff)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $spin (i32.lt_u (local.get $i) (i32.const ITER))))
    (if (i64.eqz (local.get $x)) (then (unreachable)))
    ;; keep the batch's first record: count 1 where the call header's last 4 bytes were
    (i32.store (i32.add (local.get $ptr) (i32.const 20)) (i32.const 1))
    (i64.or (i64.shl (i64.extend_i32_u (i32.add (local.get $ptr) (i32.const 20))) (i64.const 32))
            (i64.extend_i32_u (i32.add (i32.load (i32.add (local.get $ptr) (i32.const 24))) (i32.const 8))))))"""


def value(i: int) -> bytes:
    return (b"%08d-" % i).ljust(100, b".")


def slow_module(target_ms: float) -> tuple[bytes, float]:
    """The slow filter, calibrated here to take about ``target_ms`` a call."""
    batch = build_batch([(None, value(i)) for i in range(100)])
    per_iter = 0.0
    for iters in (20_000, 200_000):
        wasm = wasmtime.wat2wasm(SLOW_WAT.replace("ITER", str(iters)))
        chain = Chain([Stage("slow@cal", ModuleCache().load(wasm).instantiate())])
        t0 = time.perf_counter()
        for _ in range(5):
            chain.apply(batch, 1 << 20, verified=True)
        per_iter = (time.perf_counter() - t0) / 5 / iters

    iters = max(1, round(target_ms / 1000 / per_iter))
    wasm = wasmtime.wat2wasm(SLOW_WAT.replace("ITER", str(iters)))
    chain = Chain([Stage("slow@cal", ModuleCache().load(wasm).instantiate())])
    t0 = time.perf_counter()
    chain.apply(batch, 1 << 20, verified=True)
    took = (time.perf_counter() - t0) * 1000

    return wasm, took


async def plain_consume(client: AsyncClient, count: int) -> float:
    consumer = client.consumer("plain", start=Offset.beginning(), stop_at_end=True, window_bytes=16 << 20)
    n = 0
    t0 = time.perf_counter()
    async for batch in consumer.batches():
        n += len(batch)
    elapsed = time.perf_counter() - t0
    await consumer.close()
    assert n == count, (n, count)
    return count / elapsed


class SlowStream:
    """Reads topic `slow` through the slow filter, over and over, until stopped; ``read()`` is
    how many records it has run through the filter so far."""

    def __init__(self, client: AsyncClient) -> None:
        self.client = client
        self.passes = 0
        self.consumer = None

    def read(self) -> int:
        at = sum(s.offset for s in self.consumer._streams) if self.consumer is not None else 0
        return self.passes * SLOW_RECORDS + at

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.consumer = self.client.consumer("slow", start=Offset.beginning(), stop_at_end=True,
                                                 window_bytes=1 << 20, smartmodules=[("slow", {})])
            async for _batch in self.consumer.batches():
                if stop.is_set():
                    break
            self.passes += 1
            await self.consumer.close()


async def ack_gaps(client: AsyncClient, stop: asyncio.Event, gaps: list[float]) -> None:
    """A small steady producer (acks leader): the longest gap between acknowledgements."""
    producer = client.producer("acks", linger_ms=0)
    last = time.perf_counter()
    worst = 0.0
    i = 0
    while not stop.is_set():
        await producer.send(value(i))
        await producer.flush()
        now = time.perf_counter()
        worst = max(worst, now - last)
        last = now
        i += 1
        await asyncio.sleep(0.01)  # ~100 produce requests a second
    gaps.append(worst * 1000)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=500_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--slow-ms", type=float, default=50.0)
    args = ap.parse_args()
    wasm, took_ms = slow_module(args.slow_ms)
    home = tempfile.mkdtemp(prefix="kolk-iso-bench-", dir=os.getcwd())
    os.environ["KOLK_HOME"] = home
    try:
        profile = local_cluster.start(1)

        async def body() -> dict[str, list[float]]:
            client = AsyncClient(profile["sc"])
            spec = {"wasm": base64.b64encode(wasm).decode(), "sha256": hashlib.sha256(wasm).hexdigest(),
                    "size": len(wasm)}
            await client.admin.put_object("smartmodule", "slow@1", spec, expected_version=-1)
            for topic in ("plain", "slow", "acks"):
                await client.create_topic(topic, 1, 1)
            for topic, n in (("plain", args.count), ("slow", SLOW_RECORDS)):
                producer = client.producer(topic, batch_bytes=64 << 10, linger_ms=5)
                for i in range(n):
                    await producer.send(value(i))
                await producer.flush()
            out: dict[str, list[float]] = {"alone": [], "beside": [], "gap_alone": [], "gap_beside": [],
                                           "slow_rps": []}
            for _ in range(args.rounds):
                stop = asyncio.Event()
                gaps: list[float] = []
                g = asyncio.create_task(ack_gaps(client, stop, gaps))
                out["alone"].append(await plain_consume(client, args.count))
                stop.set()
                await g
                out["gap_alone"] += gaps

                stop = asyncio.Event()
                gaps = []
                streams = [SlowStream(client) for _ in range(SLOW_STREAMS)]
                slow = [asyncio.create_task(s.run(stop)) for s in streams]
                await asyncio.sleep(1.0)  # let the slow streams fill the workers before measuring
                g = asyncio.create_task(ack_gaps(client, stop, gaps))
                before, t0 = sum(s.read() for s in streams), time.perf_counter()
                out["beside"].append(await plain_consume(client, args.count))
                out["slow_rps"].append((sum(s.read() for s in streams) - before) / (time.perf_counter() - t0))
                stop.set()
                await g
                for t in slow:
                    t.cancel()
                await asyncio.gather(*slow, return_exceptions=True)
                out["gap_beside"] += gaps
            return out
        res = run(body)
    finally:
        try:
            local_cluster.stop()
        finally:
            shutil.rmtree(home, ignore_errors=True)
    alone, beside = statistics.median(res["alone"]), statistics.median(res["beside"])
    print(f"SmartModule isolation bench: {SLOW_STREAMS} streams of a filter taking {took_ms:.0f} ms a batch "
          f"(calibrated; goal {args.slow_ms:g} ms) beside a plain consumer of {args.count:,} records of 100 B; "
          f"{args.rounds} rounds; {os.cpu_count()} cores")
    print()
    print("| plain consumer | records/s (median) | per round | longest ack gap, ms (max) | goal |")
    print("| --- | ---: | --- | ---: | --- |")
    print(f"| alone | {alone:,.0f} | " + ", ".join(f"{x:,.0f}" for x in res["alone"])
          + f" | {max(res['gap_alone']):.0f} | |")
    print(f"| beside {SLOW_STREAMS} slow streams | {beside:,.0f} | " + ", ".join(f"{x:,.0f}" for x in res["beside"])
          + f" | {max(res['gap_beside']):.0f} | >= 80% of alone |")
    print(f"| ratio | {beside / alone:.0%} | | | |")
    print()
    print(f"Meanwhile the {SLOW_STREAMS} slow streams ran "
          + ", ".join(f"{x:,.0f}" for x in res["slow_rps"]) + " records/s through their filter (per round), "
          "all of them together. The ack gap is that of a producer in the bench's own process, whose loop the "
          "plain consumer keeps busy.")
    return 0


if __name__ == "__main__":
    asyncio.set_event_loop_policy(None)
    sys.exit(main())
