"""Consumer groups (issue 20): commits, rebalances, and consuming through a group, in one run.

One SC and 3 SPUs (real processes, plaintext, 127.0.0.1); ``_consumer_offsets`` has its
default 8 partitions at RF 3 (the bench waits for all of them to have a leader).

1. **Commits.** PROCS client processes, each with GROUPS groups (named so that they spread
   over all 8 offsets partitions, so over all 3 coordinators), one commit loop per group (so
   GROUPS commits in flight per process), each commit one raw ``offsetCommit`` request on a
   connection to the group's coordinator (found by the client library; no retries inside the
   window), with ``memberId ""`` (``--commit-as reset``, the default) or as the group's only
   member (``--commit-as member``). Every process starts on the same signal and counts the
   commits answered within the window. Rows: 1 offset per commit; 10 offsets per commit (a
   member committing its 10 partitions; offsets/s); one commit in flight at a time (latency).
   Each commit is acks=all on its offsets partition (RF 3). CPU of the SPUs (their idle use
   subtracted) and of the clients is read from /proc and divided by the commits.
2. **Rebalance** (bench/group_rebalance.py): 4 member processes on 12 partitions,
   session_timeout_ms=3000; time until every partition is read again after a member's kill -9,
   and after its clean ``close()``.
3. **Consume through a group vs without.** RECORDS records of 100 B in 6 partitions (RF 1);
   rounds alternate a plain consumer of all partitions from the beginning (``stop_at_end``)
   and a member of a fresh group (``start=beginning``, ``stop_at_end``); records/s from the
   consumer's creation to its last record (the member's join and offset fetch included), and
   from its first record on.

``--profile``: the SPUs run under cProfile during the 1-offset commit row (a ``sitecustomize``
on their PYTHONPATH; SIGUSR1 starts and stops it) and the top functions are printed.

Usage: python bench/group_bench.py [--only commits,rebalance,consume] [--seconds S] [--procs N]
       [--groups N] [--rounds R] [--records N] [--commit-as reset|member] [--spu-log-level L] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import pstats
import queue
import shutil
import signal
import statistics
import sys
import tempfile
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, os.path.join(ROOT, "bench"))

from dataplane_cluster import DataPlaneCluster, wait_committed, wait_until, offsets_topic  # noqa: E402
from group_rebalance import bench_rebalance  # noqa: E402
from kolk.client.admin import run  # noqa: E402
from kolk.client.client import AsyncClient  # noqa: E402
from kolk.client.consumer import Offset  # noqa: E402
from kolk.client.coordinator import coordinator_of  # noqa: E402
from kolk.groups.names import OFFSETS_TOPIC, group_partition  # noqa: E402

COMMIT_TOPIC = "bench-commits"   # the topic the commits name (10 partitions)
CONSUME_TOPIC = "bench-consume"
CALL_TIMEOUT_S = 10.0
IDLE_SAMPLE_S = 2.0              # how long the SPUs' idle CPU use is sampled before the commit rows

# Loaded by the SPUs (PYTHONPATH) with --profile: SIGUSR1 starts cProfile, the next one dumps it.
PROFILE_HOOK = '''
import cProfile, os, signal, time
_dir = os.environ.get("KOLK_BENCH_PROFILE_DIR")
if _dir:
    _state = {"p": None}
    def _toggle(signum, frame):
        if _state["p"] is None:
            _state["p"] = cProfile.Profile(time.process_time)  # CPU, not wall time: the machine is shared
            _state["p"].enable()
        else:
            _state["p"].disable()
            _state["p"].dump_stats(os.path.join(_dir, "spu-%d.prof" % os.getpid()))
            _state["p"] = None
    signal.signal(signal.SIGUSR1, _toggle)
'''


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))] if s else float("nan")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ====================================================================== 1. commits

def spread_groups(n: int, partitions: int, prefix: str) -> list[str]:
    """``n`` group names whose offsets partitions take turns through all ``partitions``."""
    per = -(-n // partitions)
    by_part: dict[int, list[str]] = {p: [] for p in range(partitions)}
    i = 0
    while any(len(v) < per for v in by_part.values()):
        name = f"{prefix}{i}"
        by_part[group_partition(name, partitions)].append(name)
        i += 1
    return [by_part[p][k] for k in range(per) for p in range(partitions)][:n]


async def join_member(conn: Any, group: str) -> tuple[str, int]:
    """Join ``group`` as its only member subscribed to COMMIT_TOPIC and take all its partitions
    (a second heartbeat reports them owned); (member id, member epoch). The session timeout is
    the longest allowed, so the member needs no heartbeat during the window."""
    hb: dict[str, Any] = {"group": group, "memberId": "", "instanceId": "", "memberEpoch": 0,
                          "topics": [COMMIT_TOPIC], "owned": [], "sessionTimeoutMs": 600_000,
                          "rebalanceTimeoutMs": 0, "assignor": "", "waitMs": 0}
    for _ in range(2):
        r = await conn.call("groupHeartbeat", CALL_TIMEOUT_S, **hb)
        if not r.result.ok:
            raise SystemExit(f"joining group {group}: {r.result.error.message}")
        hb.update(memberId=r.memberId, memberEpoch=r.memberEpoch,
                  owned=[{"topic": t.topic, "partitions": list(t.partitions)} for t in r.assignment])
    return hb["memberId"], hb["memberEpoch"]


def commit_worker(scs: list[str], groups: list[str], width: int, seconds: float, as_member: bool, ready: Any,
                  go: Any, results: Any) -> None:
    """One client process: a commit loop per group, ``width`` offsets per commit, with memberId
    "" or (``as_member``) as the group's only member."""
    async def body() -> None:
        client = AsyncClient(scs, timeout_s=CALL_TIMEOUT_S)
        conns = {g: (await coordinator_of(client, g))[0] for g in groups}
        members = {g: await join_member(conns[g], g) if as_member else ("", 0) for g in groups}

        def request(g: str, i: int) -> dict[str, Any]:
            return {"group": g, "memberId": members[g][0], "memberEpoch": members[g][1],
                    "offsets": [{"topic": COMMIT_TOPIC, "partition": p, "offset": i, "metadata": ""}
                                for p in range(width)]}
        for g in groups:  # the group exists and the connection is warm before the window
            r = await conns[g].call("offsetCommit", CALL_TIMEOUT_S, **request(g, 0))
            if not r.result.ok:
                ready.put(f"the warm-up commit of group {g} failed: {r.result.error.message}")
                return
        ready.put(None)
        await asyncio.get_running_loop().run_in_executor(None, go.wait, 120)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        end = t0 + seconds
        lat: list[float] = []
        errors: dict[str, int] = {}

        async def one(g: str) -> None:
            i = 1
            while loop.time() < end:
                t = loop.time()
                r = await conns[g].call("offsetCommit", CALL_TIMEOUT_S, **request(g, i))
                done = loop.time()
                if done > end:
                    return  # answered after the window: not counted
                if r.result.ok:
                    lat.append(done - t)
                    i += 1
                else:
                    code = str(r.result.error.code)
                    errors[code] = errors.get(code, 0) + 1
        await asyncio.gather(*(one(g) for g in groups))
        results.put({"n": len(lat), "lat": lat, "errors": errors, "seconds": seconds})  # answers inside the window
        if as_member:  # leave, so the coordinators do not keep 600 s sessions of finished rows
            await asyncio.gather(*(conns[g].call("groupHeartbeat", CALL_TIMEOUT_S, group=g, memberId=members[g][0],
                                                 memberEpoch=-1) for g in groups))
        await client.close()
    asyncio.run(body())


def from_workers(q: Any, workers: list[Any], timeout_s: float, what: str) -> Any:
    """The next item on ``q``; SystemExit naming the worker when one died first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            return q.get(timeout=0.2)
        except queue.Empty:
            dead = [w for w in workers if w.exitcode not in (None, 0)]
            if dead:
                raise SystemExit(f"commit worker {dead[0].pid} exited with status {dead[0].exitcode} "
                                 f"before sending its {what}") from None
    raise SystemExit(f"no {what} from the commit workers within {timeout_s:.0f} s")


def commit_row(c: DataPlaneCluster, procs: int, groups_per_proc: int, width: int, seconds: float,
               prefix: str, as_member: bool, profile_dir: str | None = None) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    names = spread_groups(procs * groups_per_proc, 8, prefix)
    # Each process a run of consecutive names: every run of 8 covers all 8 offsets partitions.
    chunks = [names[i * groups_per_proc:(i + 1) * groups_per_proc] for i in range(procs)]
    workers = [ctx.Process(target=commit_worker, args=(c.sc_addresses, chunk, width, seconds, as_member, ready, go,
                                                       results)) for chunk in chunks]
    spu_pids = [s.pid for s in c.spus.values()]
    try:
        for w in workers:
            w.start()
        for _ in workers:
            problem = from_workers(ready, workers, 120, "ready")
            if problem:
                raise SystemExit(problem)
        if profile_dir:
            for pid in spu_pids:
                os.kill(pid, signal.SIGUSR1)
        cpu0 = {pid: cpu_s(pid) for pid in spu_pids + [w.pid for w in workers]}
        go.set()
        out = [from_workers(results, workers, seconds + 120, "results") for _ in workers]
        cpu1 = {pid: cpu_s(pid) for pid in cpu0}
        if profile_dir:
            for pid in spu_pids:
                os.kill(pid, signal.SIGUSR1)
        for w in workers:
            w.join(30)
    finally:
        for w in workers:
            if w.is_alive():
                w.kill()
                w.join(10)
    window = max(r["seconds"] for r in out)
    lat = [x * 1000 for r in out for x in r["lat"]]
    errors: dict[str, int] = {}
    for r in out:
        for k, v in r["errors"].items():
            errors[k] = errors.get(k, 0) + v
    return {"commits_s": len(lat) / window, "p50": statistics.median(lat) if lat else float("nan"),
            "p99": pct(lat, 99), "errors": errors,
            "spu_cpu": [(cpu1[p] - cpu0[p]) / window for p in spu_pids],
            "client_cpu": sum(cpu1[w.pid] - cpu0[w.pid] for w in workers) / window}


def print_profile(profile_dir: str, top: int = 25) -> None:
    files = [os.path.join(profile_dir, f) for f in sorted(os.listdir(profile_dir)) if f.endswith(".prof")]
    if not files:
        print("(no profile written)")
        return
    print(f"\ncProfile of the SPUs during the 1-offset rows (all {len(files)} SPUs merged), top {top} by own time:\n")
    print("```")
    stats = pstats.Stats(*files, stream=sys.stdout)
    stats.sort_stats("tottime").print_stats(top)
    print("```")
    print("\nThe same, Kolk's own functions by cumulative time (time inside them and what they call):\n")
    print("```")
    stats.sort_stats("cumulative").print_stats(r"/(core|segments|security)/", top)
    print("```")


def bench_commits(c: DataPlaneCluster, args: argparse.Namespace, profile_dir: str | None) -> None:
    async def setup() -> None:
        async with c.client(timeout_s=30) as client:
            await client.create_topic(COMMIT_TOPIC, 10, 1)
    run(setup)
    spu_pids = [s.pid for s in c.spus.values()]
    cpu0 = {pid: cpu_s(pid) for pid in spu_pids}
    time.sleep(IDLE_SAMPLE_S)  # a measurement window: the SPUs' CPU use with no commits
    idle = [(cpu_s(pid) - cpu0[pid]) / IDLE_SAMPLE_S for pid in spu_pids]
    rows: dict[str, list[dict[str, Any]]] = {"1": [], "10": [], "lat": []}
    member = args.commit_as == "member"
    for rnd in range(args.rounds):
        rows["1"].append(commit_row(c, args.procs, args.groups, 1, args.seconds, f"c1r{rnd}-", member,
                                    profile_dir if rnd == 0 else None))
        rows["10"].append(commit_row(c, args.procs, args.groups, 10, args.seconds, f"c10r{rnd}-", member))
        rows["lat"].append(commit_row(c, 1, 1, 1, args.seconds, f"cl{rnd}-", member))
    who = "as each group's only member" if member else 'memberId ""'
    print(f"Commits: 1 SC + 3 SPUs, {OFFSETS_TOPIC} 8 partitions RF 3 (acks=all); {args.procs} client processes x "
          f"{args.groups} groups, one commit in flight per group ({args.procs * args.groups} in flight); "
          f"{who}; {args.rounds} rounds of {args.seconds:g} s; SPU log level {args.spu_log_level}; "
          f"{os.cpu_count()} cores\n")
    print("| row | commits/s (median) | offsets/s | per round | p50 ms | p99 ms | goal | errors | CPU of SPU 1/2/3 "
          "(cores) | SPUs' CPU µs per commit (idle use subtracted) | clients' CPU µs per commit |")
    print("| --- | ---: | ---: | --- | ---: | ---: | --- | --- | --- | ---: | ---: |")
    for key, label, width, goal in (("1", "1 offset per commit", 1, ">= 20,000/s, p99 <= 10 ms"),
                                    ("10", "10 offsets per commit", 10, ""),
                                    ("lat", "1 in flight (latency)", 1, "p99 <= 10 ms")):
        rs = rows[key]
        rate = statistics.median(r["commits_s"] for r in rs)
        errs: dict[str, int] = {}
        for r in rs:
            for k, v in r["errors"].items():
                errs[k] = errs.get(k, 0) + v
        cpu = " / ".join(f"{statistics.median(r['spu_cpu'][i] for r in rs):.2f}" for i in range(len(rs[0]["spu_cpu"])))
        spu_us = statistics.median(max(0.0, sum(r["spu_cpu"]) - sum(idle)) / r["commits_s"] * 1e6 for r in rs)
        client_us = statistics.median(r["client_cpu"] / r["commits_s"] * 1e6 for r in rs)
        print(f"| {label} | {rate:,.0f} | {rate * width:,.0f} | " + ", ".join(f"{r['commits_s']:,.0f}" for r in rs)
              + f" | {statistics.median(r['p50'] for r in rs):.2f} | {statistics.median(r['p99'] for r in rs):.2f} "
              f"| {goal} | {errs or 0} | {cpu} | {spu_us:,.0f} | {client_us:,.0f} |")
    print(f"\nIdle SPUs (no commits, {IDLE_SAMPLE_S:g} s before the rows): "
          + " / ".join(f"{x:.3f}" for x in idle) + " cores")
    if profile_dir:
        print_profile(profile_dir)


# ====================================================================== 3. consume

async def consume_rate(client: AsyncClient, group: str | None, expect: int) -> tuple[float, float, float]:
    """(records/s from the consumer's creation to its last record, the same from its first
    record on, ms from its creation to its first record)."""
    t0 = time.perf_counter()
    if group is None:
        c = client.consumer(CONSUME_TOPIC, start=Offset.beginning(), stop_at_end=True)
    else:
        c = client.consumer(CONSUME_TOPIC, group=group, start=Offset.beginning(), stop_at_end=True)
    n = 0
    first = 0.0
    try:
        async for batch in c.batches():
            if not n:
                first = time.perf_counter() - t0
            n += len(batch)
    finally:
        took = time.perf_counter() - t0
        await c.close()
    if n != expect:
        raise SystemExit(f"{'group ' + group if group else 'plain consumer'} read {n:,} records, not {expect:,}")
    return n / took, n / max(1e-9, took - first), first * 1000


def bench_consume(c: DataPlaneCluster, args: argparse.Namespace) -> None:
    plain: list[tuple[float, float, float]] = []
    grouped: list[tuple[float, float, float]] = []

    async def body() -> None:
        async with c.client(timeout_s=60) as client:
            await client.create_topic(CONSUME_TOPIC, 6, 1)
            producer = client.producer(CONSUME_TOPIC, acks="leader", batch_bytes=256 << 10, linger_ms=5)
            value = b"v" * 100
            for i in range(args.records):
                await producer.send(value, partition=i % 6)
            await producer.flush()
            await producer.close()
            await wait_committed(client, CONSUME_TOPIC)
            await consume_rate(client, None, args.records)  # warm the page cache and the connections
            for rnd in range(args.rounds):
                plain.append(await consume_rate(client, None, args.records))
                grouped.append(await consume_rate(client, f"bench-consume-{rnd}", args.records))
    run(body)
    a = statistics.median(r[0] for r in plain)
    a_steady = statistics.median(r[1] for r in plain)
    print(f"\nConsume: {args.records:,} records of 100 B in 6 partitions (RF 1, 2 per SPU), one consumer in the bench "
          f"process from the beginning to the end; {args.rounds} rounds, alternating\n")
    print("| consumer | records/s (median) | per round | ratio | goal | first record after ms | records/s from the "
          "first record | ratio |")
    print("| --- | ---: | --- | ---: | --- | ---: | ---: | ---: |")
    for label, rows, goal in (("plain (all partitions)", plain, ""), ("group member (fresh group)", grouped, ">= 90%")):
        rate, steady = statistics.median(r[0] for r in rows), statistics.median(r[1] for r in rows)
        print(f"| {label} | {rate:,.0f} | " + ", ".join(f"{r[0]:,.0f}" for r in rows)
              + f" | {rate / a:.0%} | {goal} | {statistics.median(r[2] for r in rows):,.0f} | {steady:,.0f} "
              f"| {steady / a_steady:.0%} |")


# ====================================================================== main

async def wait_offsets_topic(c: DataPlaneCluster) -> None:
    async with c.client(timeout_s=10) as client:
        async def ready() -> bool:
            await offsets_topic(client)  # the first group call would create it; the bench asks first
            parts = await client.refresh(OFFSETS_TOPIC)
            return len(parts) == 8 and all(p["status"]["leader"] is not None for p in parts)
        await wait_until(ready, 60, f"{OFFSETS_TOPIC} to have 8 partitions with leaders")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="commits,rebalance,consume")
    ap.add_argument("--seconds", type=float, default=5.0, help="length of one commit round")
    ap.add_argument("--procs", type=int, default=2, help="client processes committing")
    ap.add_argument("--groups", type=int, default=32, help="groups (commits in flight) per process")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--records", type=int, default=1_000_000, help="records consumed in part 3")
    ap.add_argument("--profile", action="store_true", help="cProfile the SPUs during the first commit round")
    ap.add_argument("--commit-as", choices=("reset", "member"), default="member",
                    help="commit as each group's only member (the default, as consumers do) or with memberId \"\" "
                         "(a reset)")
    ap.add_argument("--spu-log-level", default="INFO", help="the SPUs' --log-level (INFO, as deployed)")
    args = ap.parse_args()
    parts = set(args.only.split(","))
    unknown = parts - {"commits", "rebalance", "consume"}
    if unknown:
        ap.error(f"--only: unknown part(s) {', '.join(sorted(unknown))} (commits, rebalance, consume)")
    root = tempfile.mkdtemp(prefix="kolk-group-bench-", dir=os.getcwd())
    profile_dir = None
    spu_env: dict[int, dict[str, str]] = {}
    if args.profile:
        profile_dir = os.path.join(root, "profile")
        os.makedirs(profile_dir)
        with open(os.path.join(profile_dir, "sitecustomize.py"), "w") as f:
            f.write(PROFILE_HOOK)
        path = os.pathsep.join(x for x in (profile_dir, os.environ.get("PYTHONPATH", "")) if x)
        spu_env = {i: {"PYTHONPATH": path, "KOLK_BENCH_PROFILE_DIR": profile_dir} for i in (1, 2, 3)}
    c = DataPlaneCluster(root, spus=3, spu_args=("--log-level", args.spu_log_level), spu_env=spu_env)
    try:
        c.start()
        run(lambda: wait_offsets_topic(c))
        if "commits" in parts:
            bench_commits(c, args, profile_dir)
        if "rebalance" in parts:
            bench_rebalance(c, args)
        if "consume" in parts:
            bench_consume(c, args)
    finally:
        c.close()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
