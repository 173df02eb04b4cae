"""Moves and controlled shutdown (issue 22): what a partition move costs the producers of the
partition being moved, how closely a move keeps to its throttle, and how long partitions go
without a leader when their leader SPU is stopped with SIGTERM (hand-over) or SIGKILL.

Moves: one SC and 3 SPUs (real processes, plaintext, 127.0.0.1), topic ``m`` of 1 partition with
replication factor 2, filled with FILL_MIB MiB (segments of 16 MiB, retention by size at
FILL_MIB + 16 MiB, so the load below does not grow it round after round). A move is started as
an operator would: drain the partition's follower SPU (``drain_spu``),
``rebalance(execute=True, throttle=T)`` (the plan moves
that replica onto the third SPU, which holds nothing), undo the drain at once. The leader stays
where it is; the new replica copies the log from it at ``T`` bytes/s. Between moves the bench
waits until no move is left, the in-sync set is the whole replica list and the SPU that lost its
replica has deleted it.

1. Throttle accuracy (no load): for each throttle, the new replica's log size on disk (its
   segment files) is sampled every 50 ms from the move's start until it finishes or for at most
   RATE_WINDOW_S; the achieved rate is the bytes copied over the time from the move's start (the
   rebalance call returning) to the last growth seen ("average"), and over the time after the
   first growth seen ("steady": the token bucket starts full, so the first second's worth comes at
   once); a move still running at the cap is cancelled.
2. Produce cost: an acks=all idempotent producer (records of 100 B, one connection, linger 5 ms,
   batches up to 64 KiB, at most 256 KiB buffered, so send waits for room rather than queueing
   seconds of records) sends to the partition for WINDOW_S seconds, with no move, or just after
   a move at 1 MiB/s, 10 MiB/s or unthrottled (2^40) was started (a move still running at the
   end is cancelled). Records/s acknowledged, and latency send -> acknowledgement of every 20th
   record (p50, p99). Modes are interleaved, their order rotating per round; medians of rounds.
3. Controlled shutdown: another cluster of 1 SC (heartbeat timeout 3 s, preferred-leader election
   every 500 ms) and 3 SPUs (heartbeats every 200 ms), topic ``s`` of 6 partitions, RF 3. Per
   trial, with every partition led by its preferred replica and fully in sync, the SPU leading
   the most partitions gets SIGTERM or SIGKILL; the SC's metadata is polled every 10 ms until
   every partition it led has another leader. The time from the signal to that, per partition,
   max over partitions = the trial's value (with SIGTERM the old leader keeps serving until its
   metadata shows the hand-over, so this is an upper bound of the unavailability; with SIGKILL
   nothing serves meanwhile). The SPU is restarted and the next trial waits for the leaders to
   come back. Kinds alternate.

Usage: python bench/rebalance_bench.py [--rounds R] [--trials N] [--fill-mib M]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, os.path.join(ROOT, "bench"))

from dataplane_cluster import DataPlaneCluster, wait_until  # noqa: E402
from replication_bench import pct  # noqa: E402
from kolk.client.admin import run  # noqa: E402
from kolk.client.client import AsyncClient  # noqa: E402

MIB = 1 << 20
UNTHROTTLED = 1 << 40
TOPIC = "m"
FILL_VALUE = 16 << 10
RATE_THROTTLES = (1 * MIB, 4 * MIB, 16 * MIB, UNTHROTTLED)
LOAD_MODES = (("no move", None), ("1 MiB/s", 1 * MIB), ("10 MiB/s", 10 * MIB), ("unthrottled", UNTHROTTLED))
RATE_WINDOW_S = 12.0
WINDOW_S = 4.0
LATENCY_EVERY = 20
BUFFER_BYTES = 256 << 10  # what the producer may hold unsent: latency is the service's, not a queue's
SETTLE_S = 120.0
SEGMENT_BYTES = 16 * MIB
SHUT_TOPIC = "s"
SHUT_PARTITIONS = 6
SPU_ARGS = ("--heartbeat-interval-ms", "200")


def progress(what: str) -> None:
    print(f"rebalance bench: {what}", file=sys.stderr, flush=True)


def throttle_name(t: int) -> str:
    return "unthrottled (2^40)" if t == UNTHROTTLED else f"{t // MIB} MiB/s"


def replica_bytes(c: DataPlaneCluster, spu_id: int, topic: str) -> int | None:
    """Bytes in the segment files of ``topic``'s partition 0 on SPU ``spu_id`` (None: no log)."""
    logs = os.path.join(c.spus[spu_id].data_dir, "logs")
    try:
        names = [n for n in os.listdir(logs) if n == f"{topic}-0" or n.startswith(f"{topic}-0.")]
    except FileNotFoundError:
        return None
    total, found = 0, False
    for n in names:
        d = os.path.join(logs, n)
        try:
            for f in os.listdir(d):
                if f.endswith(".log"):
                    total += os.stat(os.path.join(d, f)).st_size
            found = True
        except FileNotFoundError:
            continue
    return total if found else None


# ---------------------------------------------------------------- moves


async def partition(client: AsyncClient, topic: str, index: int = 0) -> dict[str, Any]:
    return next(p for p in await client.admin.list_objects("partition") if p["name"] == f"{topic}-{index}")


async def settled(c: DataPlaneCluster, client: AsyncClient) -> dict[str, Any] | None:
    """The partition when no move is left, it is led, fully in sync, and the SPU outside it holds
    no log of it; else None."""
    if (await client.admin.cluster_status())["moving"]:
        return None
    p = await partition(client, TOPIC)
    reps = p["spec"]["replicas"]
    if p["status"]["leader"] is None or sorted(p["status"]["isr"]) != sorted(reps):
        return None
    free = [s for s in c.spus if s not in reps]
    if any(replica_bytes(c, s, TOPIC) is not None for s in free):
        return None
    return p


async def start_move(c: DataPlaneCluster, client: AsyncClient, throttle: int) -> tuple[int, int]:
    """Move the follower's replica onto the SPU that holds none; returns (from, to)."""
    p = await wait_until(lambda: settled(c, client), SETTLE_S, "the partition to settle")
    reps = p["spec"]["replicas"]
    follower = next(r for r in reps if r != p["status"]["leader"])
    target = next(s for s in c.spus if s not in reps)
    await client.admin.drain_spu(follower)
    try:
        plan = await client.admin.rebalance(execute=True, throttle=throttle)
    finally:
        await client.admin.drain_spu(follower, undo=True)
    assert plan["started"], f"no move started: {plan}"
    return follower, target


async def end_move(c: DataPlaneCluster, client: AsyncClient) -> bool:
    """Cancel the move if it still runs and wait until the partition settles; True if it had
    finished by itself."""
    finished = not (await client.admin.cluster_status())["moving"]
    if not finished:
        await client.admin.rebalance(cancel=True)
    await wait_until(lambda: settled(c, client), SETTLE_S, "the partition to settle after the move")
    return finished


@dataclass(frozen=True)
class CopyRate:
    """One move at a throttle: ``copied`` bytes on the new replica, ``seconds`` from the move's
    start to the last growth seen, ``first_s`` to the first; ``first_bytes`` seen at the first
    sample (the bucket's initial burst); ``finished`` by itself (else cancelled at the cap)."""

    copied: int
    seconds: float
    first_s: float
    first_bytes: int
    finished: bool

    @property
    def average(self) -> float:
        """Bytes/s from the move's start to its last byte."""
        return self.copied / self.seconds

    @property
    def steady(self) -> float:
        """Bytes/s after the first growth seen (the initial burst left out)."""
        span = self.seconds - self.first_s
        return (self.copied - self.first_bytes) / span if span > 0 and self.copied > self.first_bytes else float("nan")


async def copy_rate(c: DataPlaneCluster, client: AsyncClient, throttle: int) -> CopyRate:
    """Start a move at ``throttle`` and follow the new replica's log size."""
    _src, target = await start_move(c, client, throttle)
    t0 = time.perf_counter()
    copied, t_last, t_first, first_bytes = 0, t0, None, 0
    finished = False
    while time.perf_counter() - t0 < RATE_WINDOW_S and not finished:
        finished = not (await client.admin.cluster_status())["moving"]
        b = replica_bytes(c, target, TOPIC) or 0
        if b > copied:
            copied, t_last = b, time.perf_counter()
            if t_first is None:
                t_first, first_bytes = t_last, b
        if not finished:
            await asyncio.sleep(0.05)  # sampling period of the follower's log size
    await end_move(c, client)
    assert copied and t_first is not None, f"the new replica on SPU {target} copied nothing in {RATE_WINDOW_S:g} s"
    return CopyRate(copied, t_last - t0, t_first - t0, first_bytes, finished)


async def produce_window(client: AsyncClient, seconds: float) -> tuple[float, list[float]]:
    """Records/s acknowledged and sampled latencies (ms) of one producer for ``seconds``."""
    producer = client.producer(TOPIC, acks="all", batch_bytes=64 << 10, linger_ms=5, buffer_bytes_max=BUFFER_BYTES)
    value = os.urandom(100)
    lat: list[float] = []
    waits: list[asyncio.Task] = []

    async def timed(fut: Any, t0: float) -> None:
        await fut
        lat.append((time.perf_counter() - t0) * 1000)
    n = 0
    t0 = time.perf_counter()
    last = None
    while time.perf_counter() - t0 < seconds:
        t = time.perf_counter()
        last = await producer.send(value)
        if n % LATENCY_EVERY == 0:
            waits.append(asyncio.ensure_future(timed(last, t)))
        n += 1
    await producer.flush()
    if last is not None:
        await last
    elapsed = time.perf_counter() - t0
    await asyncio.gather(*waits)
    await producer.close()
    return n / elapsed, lat


async def fill(client: AsyncClient, mib: int) -> None:
    producer = client.producer(TOPIC, acks="all", batch_bytes=1 << 20, linger_ms=5)
    value = os.urandom(FILL_VALUE)
    last = None
    for _ in range(mib * MIB // FILL_VALUE):
        last = await producer.send(value)
    await producer.flush()
    await last
    await producer.close()


def moves_bench(args: argparse.Namespace, root: str) -> dict[str, Any]:
    c = DataPlaneCluster(os.path.join(root, "moves"), spus=3, spu_args=SPU_ARGS)
    out: dict[str, Any] = {"rates": {}, "load": {name: [] for name, _ in LOAD_MODES}}
    try:
        c.start()
        progress("move cluster up")

        async def body() -> None:
            async with c.client(timeout_s=60) as client:
                # Segments of 16 MiB and retention by size keep the partition near its fill
                # although every window adds to it: each round's moves copy about as much.
                await client.create_topic(TOPIC, 1, 2, {"segment_bytes": str(SEGMENT_BYTES),
                                                        "retention_bytes": str((args.fill_mib << 20) + SEGMENT_BYTES)})
                await wait_until(lambda: settled(c, client), SETTLE_S, "the topic to be led")
                await fill(client, args.fill_mib)
                out["size"] = replica_bytes(c, (await partition(client, TOPIC))["status"]["leader"], TOPIC)
                progress(f"filled {out['size'] / MIB:.1f} MiB")
                for t in RATE_THROTTLES:
                    out["rates"][t] = await copy_rate(c, client, t)
                    r = out["rates"][t]
                    progress(f"copy at {throttle_name(t)}: {r.average / MIB:.2f} MiB/s over {r.seconds:.1f} s, "
                             f"{r.steady / MIB:.2f} MiB/s after the first {r.first_bytes / MIB:.1f} MiB")
                for rnd in range(args.rounds):
                    k = rnd % len(LOAD_MODES)
                    for name, throttle in LOAD_MODES[k:] + LOAD_MODES[:k]:
                        if throttle is not None:
                            await start_move(c, client, throttle)
                        rate, lat = await produce_window(client, WINDOW_S)
                        finished = await end_move(c, client) if throttle is not None else False
                        out["load"][name].append((rate, pct(lat, 50), pct(lat, 99), finished))
                        progress(f"round {rnd + 1}, {name}: {rate:,.0f} records/s, p50 {pct(lat, 50):.1f} ms, "
                                 f"p99 {pct(lat, 99):.1f} ms{' (move finished in the window)' if finished else ''}")
        run(body)
    finally:
        c.close()
    return out


# ---------------------------------------------------------------- controlled shutdown


async def shut_settled(client: AsyncClient) -> list[dict[str, Any]] | None:
    parts = [p for p in await client.admin.list_objects("partition") if p["name"].startswith(f"{SHUT_TOPIC}-")]
    if len(parts) != SHUT_PARTITIONS:
        return None
    for p in parts:
        if p["status"]["leader"] != p["spec"]["replicas"][0] or len(p["status"]["isr"]) != 3:
            return None
    return parts


async def leaderless_ms(c: DataPlaneCluster, client: AsyncClient, sig: int) -> tuple[float, int]:
    """Signal the SPU leading the most partitions; (max ms until each has another leader, how many)."""
    parts = await wait_until(lambda: shut_settled(client), SETTLE_S, "leaders back and in sync")
    led: dict[int, list[str]] = {}
    for p in parts:
        led.setdefault(p["status"]["leader"], []).append(p["name"])
    victim = max(led, key=lambda s: (len(led[s]), -s))
    names = set(led[victim])
    t0 = time.perf_counter()
    os.kill(c.spus[victim].pid, sig)
    moved: dict[str, float] = {}
    deadline = t0 + 60
    while len(moved) < len(names) and time.perf_counter() < deadline:
        for p in await client.admin.list_objects("partition"):
            leader = p["status"]["leader"]
            if p["name"] in names and p["name"] not in moved and leader is not None and leader != victim:
                moved[p["name"]] = (time.perf_counter() - t0) * 1000
        await asyncio.sleep(0.01)  # polling period of the SC's metadata
    assert len(moved) == len(names), f"not every partition of SPU {victim} got a leader: {moved}"
    await asyncio.get_running_loop().run_in_executor(None, lambda: c.spus[victim].proc.wait(timeout=60))
    c.launch_spu(victim)
    await c.wait_spu_ready(victim)
    return max(moved.values()), len(names)


def shutdown_bench(args: argparse.Namespace, root: str) -> dict[str, list[tuple[float, int]]]:
    c = DataPlaneCluster(os.path.join(root, "shutdown"), spus=3, heartbeat_timeout_ms=3000,
                         sc_args=("--leader-rebalance-interval-ms", "500"), spu_args=SPU_ARGS)
    out: dict[str, list[tuple[float, int]]] = {"SIGTERM": [], "SIGKILL": []}
    try:
        c.start()
        progress("shutdown cluster up")

        async def body() -> None:
            async with c.client(timeout_s=60) as client:
                await client.create_topic(SHUT_TOPIC, SHUT_PARTITIONS, 3)
                for i in range(args.trials):
                    for name, sig in ((("SIGTERM", signal.SIGTERM), ("SIGKILL", signal.SIGKILL)) if i % 2 == 0
                                      else (("SIGKILL", signal.SIGKILL), ("SIGTERM", signal.SIGTERM))):
                        out[name].append(await leaderless_ms(c, client, sig))
                        progress(f"trial {i + 1}, {name}: {out[name][-1][0]:.0f} ms without a leader "
                                 f"(max of {out[name][-1][1]} partitions)")
        run(body)
    finally:
        c.close()
    return out


# ---------------------------------------------------------------- report


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5, help="rounds of the produce-cost modes")
    ap.add_argument("--trials", type=int, default=5, help="SIGTERM and as many SIGKILL trials")
    ap.add_argument("--fill-mib", type=int, default=64, help="MiB in the moved partition")
    args = ap.parse_args()
    root = tempfile.mkdtemp(prefix="kolk-rebalance-bench-", dir=os.getcwd())
    t_start = time.perf_counter()
    try:
        moves = moves_bench(args, root)
        shut = shutdown_bench(args, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print(f"rebalance bench: 1 SC + 3 SPUs on this machine ({os.cpu_count()} cores), real processes on 127.0.0.1; "
          f"{time.perf_counter() - t_start:.0f} s in all")
    print()
    print(f"Throttle accuracy: a move of a {moves['size'] / MIB:.1f} MiB partition (RF 2) onto an empty SPU, "
          f"no other load; measured until it finished or for {RATE_WINDOW_S:g} s")
    print()
    print("| throttle | average from the move's start | / throttle | steady, after the first growth | / throttle "
          "| first growth | copied | seconds | finished |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for t, r in moves["rates"].items():
        known = r.steady == r.steady  # NaN: all of it came in the first growth
        avg = f"{r.average / t:.0%}" if t != UNTHROTTLED else "-"
        steady = f"{r.steady / t:.0%}" if t != UNTHROTTLED and known else "-"
        rate = f"{r.steady / MIB:.2f} MiB/s" if known else "-"
        print(f"| {throttle_name(t)} | {r.average / MIB:.2f} MiB/s | {avg} | {rate} | {steady} | "
              f"{r.first_bytes / MIB:.1f} MiB after {r.first_s:.2f} s | {r.copied / MIB:.1f} MiB | {r.seconds:.1f} | "
              f"{'yes' if r.finished else 'no (cancelled)'} |")
    print()
    print(f"Produce cost of a move: one acks=all idempotent producer, 100 B records, {WINDOW_S:g} s windows on the "
          f"partition being moved, {args.rounds} rounds interleaved (medians)")
    print()
    print("| during the window | records/s | / no move | p50 ms | p99 ms | per round records/s "
          "| move finished in window |")
    print("| --- | ---: | ---: | ---: | ---: | --- | --- |")
    base = statistics.median(r[0] for r in moves["load"]["no move"])
    for name, _t in LOAD_MODES:
        rows = moves["load"][name]
        rate = statistics.median(r[0] for r in rows)
        done = sum(1 for r in rows if r[3])
        print(f"| {name} | {rate:,.0f} | {rate / base:.0%} | {statistics.median(r[1] for r in rows):.1f} | "
              f"{statistics.median(r[2] for r in rows):.1f} | {', '.join(f'{r[0]:,.0f}' for r in rows)} | "
              f"{'-' if name == 'no move' else f'{done} of {len(rows)}'} |")
    print()
    print(f"Controlled shutdown: the longest time any partition led by the stopped SPU had no other leader "
          f"(6 partitions RF 3 on 3 SPUs; SC heartbeat timeout 3000 ms, SPU heartbeats every 200 ms), "
          f"{args.trials} trials each")
    print()
    print("| signal | median ms | min ms | max ms | per trial ms |")
    print("| --- | ---: | ---: | ---: | --- |")
    for name in ("SIGTERM", "SIGKILL"):
        ms = [v for v, _n in shut[name]]
        print(f"| {name} | {statistics.median(ms):.0f} | {min(ms):.0f} | {max(ms):.0f} | "
              f"{', '.join(f'{v:.0f}' for v in ms)} |")
    term, kill = statistics.median(v for v, _ in shut["SIGTERM"]), statistics.median(v for v, _ in shut["SIGKILL"])
    print(f"\nSIGTERM / SIGKILL: {term / kill:.1%}")
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
