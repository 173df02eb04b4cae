"""Kolk side by side with NATS JetStream and Redis Streams, in one run (issue 9).

Every system runs on loopback in its own temporary directory, is driven from this Python
process by its own client at that client's best practice (see bench/peers/*_side.py), and is
stopped by pid afterwards. Rounds alternate the systems so each sees the same machine noise.
Per round and system: produce 100 B records for --seconds (every write acknowledged), produce
1 KiB records for --seconds, consume the 100 B records from the beginning into a Python loop,
then end-to-end latency at --rate records/s with the consumer in its own process; and for a
3-node cluster with 3 replicas (Kolk: 1 SC + 3 SPUs, RF 3; JetStream: 3 servers, R3) the two
produce runs. During the latency run's timed records, the CPU time (utime + stime from
/proc/PID/stat) of the server processes that serve produce requests (Kolk: the SPU) is read
at both ends and divided by the produce requests sent in between. Prints the tables, writes
them to docs/benchmarks.md (--no-docs to skip) and, with --json PATH, the results as JSON.

Usage: python bench/peers_bench.py [--rounds N] [--seconds S] [--warmup-seconds S] [--rate R] [--latency-seconds S]
       [--systems kolk,nats,redis,redis-always,kolk-3,nats-3] [--no-docs] [--json PATH]
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from peers import procs, report, servers, steadiness  # noqa: E402

SYSTEMS = {
    "kolk": (report.KOLK, lambda d: servers.KolkServers(d, 1)),
    "nats": (report.NATS, lambda d: servers.NatsServers(d, 1)),
    "redis": (report.REDIS, lambda d: servers.RedisServer(d, fsync_always=False)),
    "redis-always": (report.REDIS_ALWAYS, lambda d: servers.RedisServer(d, fsync_always=True)),
    "kolk-3": (report.KOLK_3, lambda d: servers.KolkServers(d, 3)),
    "nats-3": (report.NATS_3, lambda d: servers.NatsServers(d, 3)),
}


def workload_for(srv: servers.Servers):
    if isinstance(srv, servers.KolkServers):
        from peers.kolk_side import KolkWorkload
        return KolkWorkload(srv.address, srv.replicas)
    if isinstance(srv, servers.NatsServers):
        from peers.nats_side import NatsWorkload
        return NatsWorkload(srv.urls, srv.replicas)
    from peers.redis_side import RedisWorkload
    return RedisWorkload(srv.port)


async def one(key: str, rnd: int, args: argparse.Namespace, out: dict) -> None:
    name, make = SYSTEMS[key]
    workdir = tempfile.mkdtemp(prefix=f"peer-{key}-", dir=args.workdir)
    srv = make(workdir)
    r = out.setdefault(name, {"durability": srv.durability})
    try:
        await srv.start()
        r.setdefault("start_ms", []).append(srv.start_ms)
        _rss(r, "rss_idle", srv)
        w = workload_for(srv)
        try:
            # Unmeasured warm-up, the same for every system: connections, producer ids, the
            # allocator's arenas and the server's first segment are in place before timing.
            await w.setup(f"warm{rnd}")
            await w.produce(f"warm{rnd}", 100, args.warmup_seconds)
            s100, s1k = f"p100r{rnd}", f"p1kr{rnd}"
            await w.setup(s100)
            n, t = await w.produce(s100, 100, args.seconds)
            r.setdefault("produce_100", []).append(n / t)
            await w.setup(s1k)
            n1k, t = await w.produce(s1k, 1024, args.seconds)
            r.setdefault("produce_1k", []).append(n1k / t)
            per_record = getattr(w, "produce_per_record", None)
            if per_record is not None and srv.replicas == 1:
                await w.setup(f"p100s{rnd}")
                ns, t = await per_record(f"p100s{rnd}", 100, args.seconds)
                out.setdefault(report.KOLK_SEND, {"durability": f"as {report.KOLK}"}).setdefault("produce_100", []).append(ns / t)
            if srv.replicas == 1:
                t = await w.consume(s100, n)
                r.setdefault("consume", []).append(n / t)
                lat = f"latr{rnd}"
                await w.setup(lat)
                window = procs.CpuWindow(srv.processes())
                r.setdefault("latency_ms", []).extend(await w.latency(lat, args.rate, args.latency_seconds, window))
                _cpu(r, window.result(), srv.serving())
            _rss(r, "rss_after", srv)
        finally:
            await w.close()
    finally:
        srv.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"  round {rnd + 1}: {name} done", flush=True)


def _rss(r: dict, key: str, srv: servers.Servers) -> None:
    """Every server process's RSS together under ``key``, and each on its own under ``key_by_process``."""
    by = srv.rss_by_process()
    r.setdefault(key, []).append(sum(by.values()))
    for proc, rss in by.items():
        r.setdefault(f"{key}_by_process", {}).setdefault(proc, []).append(rss)


def _cpu(r: dict, window: dict, serving: list[str]) -> None:
    """The latency run's CPU window: µs per produce request of the processes serving produce
    requests together (None if a pid was unknown or unreadable), each process on its own,
    records per request, and µs per record."""
    per = window["us_per_request"]
    known = [per.get(p) for p in serving]
    ok = bool(known) and all(x is not None for x in known)
    r.setdefault("cpu_us_per_request", []).append(sum(known) if ok else None)  # type: ignore[arg-type]
    used = sum(window["cpu_us"][p] for p in serving) if ok else None
    r.setdefault("cpu_us_per_record", []).append(
        used / window["records"] if used is not None and window["records"] > 0 else None)
    for proc, x in per.items():
        r.setdefault("cpu_us_per_request_by_process", {}).setdefault(proc, []).append(x)
    r.setdefault("records_per_request", []).append(
        window["records"] / window["requests"] if window["requests"] > 0 else None)
    r.setdefault("cpu_window", []).append(window)


SETUP = """Each system runs on loopback in a temporary directory on this machine, started by the
benchmark and stopped by its process id; clients run in the benchmark's Python process, each
at its client's best practice: Kolk's asyncio producer (`acks=all`, idempotent, 1 MiB
batches, linger 5 ms, records handed over 1,000 at a time with `send_all`) and consumer;
nats-py `publish_async` with at most 4,000 acknowledgements in flight, a pull consumer
fetching 1,000 messages per request (ack policy none); redis-py with hiredis, `XADD` in
pipelines of 1,000, `XREAD COUNT 10000`. Each system first writes for {warmup:g} s unmeasured;
produce runs then write for {seconds:g} s and wait for every acknowledgement; consume reads
the 100 B records back from the beginning into a Python loop; latency is send time to the
moment a consumer in its own process sees the record, at {rate:,} records/s for {lat:g} s per
round (Kolk `send` with linger 0; JetStream `publish_async` and an ordered push consumer;
Redis one `XADD` per record and `XREAD BLOCK`). Server CPU per request: utime + stime of the
processes serving produce requests (Kolk: the SPU; JetStream: nats-server; Redis:
redis-server; read from /proc/PID/stat, threads included, children not) right before the
first timed record and right after the last one is acknowledged, divided by the produce
requests sent in between; it includes serving the latency consumer. JetStream and Redis send
one request per record; Kolk's linger-0 producer sends a record at once unless a request is in
flight, and then the records made meanwhile go in the next request, so its requests are
counted and the CPU per record is shown as well. RSS is the resident memory of every server
process together, and for Kolk also of the SC and the SPU each, idle after start and again
after the run. The row "{kolk_send}" is Kolk's produce with one `send` call per record instead
of `send_all`. Start to serving is from spawning the first server process to the first
answered client round trip; for Kolk the benchmark calls `kolk.cli.local_cluster.start(1)`, what
`kolk cluster start --spus 1` runs, in its own process (so without the CLI's interpreter
start). {rounds} rounds, systems alternating within each round."""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=3.0, help="produce duration per run")
    ap.add_argument("--warmup-seconds", type=float, default=0.5, help="unmeasured produce before each system's runs")
    ap.add_argument("--rate", type=int, default=2000)
    ap.add_argument("--latency-seconds", type=float, default=5.0)
    ap.add_argument("--systems", default=",".join(SYSTEMS))
    ap.add_argument("--no-docs", action="store_true", help="print the table only")
    ap.add_argument("--steadiness-seconds", type=float, default=6.0,
                    help="how long to measure the machine's CPU steadiness before the run (0 to skip)")
    ap.add_argument("--workdir", default=None, help="where the temporary directories go (default: $TMPDIR)")
    ap.add_argument("--json", default=None, metavar="PATH",
                    help="also write the results (every round's values and the medians) to PATH as JSON")
    args = ap.parse_args()
    keys = [k.strip() for k in args.systems.split(",") if k.strip()]
    unknown = [k for k in keys if k not in SYSTEMS]
    if unknown:
        ap.error(f"unknown systems {unknown}: choose from {', '.join(SYSTEMS)}")
    for tool, key in (("nats-server", "nats"), ("redis-server", "redis")):
        if any(k.startswith(key) for k in keys) and shutil.which(tool) is None:
            ap.error(f"{tool} is not installed: run 'make bench-peers', which installs it")
    steady = None
    if args.steadiness_seconds > 0:
        steady = steadiness.summarize(steadiness.sample(args.steadiness_seconds))
        print(f"machine steadiness: {steady.text()}", flush=True)
    results: dict = {}

    async def body() -> None:
        for rnd in range(args.rounds):
            for key in keys:
                await one(key, rnd, args, results)
                gc.collect()

    from kolk.client.admin import run

    run(body)  # one event loop for every system's client
    setup = SETUP.format(kolk_send=report.KOLK_SEND, warmup=args.warmup_seconds, seconds=args.seconds,
                         rate=args.rate, lat=args.latency_seconds, rounds=args.rounds)
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = report.section(results, args.rate, when, procs.machine(), servers.versions(), setup,
                          steady.text() if steady else None)
    print()
    print(text)
    if args.json:
        doc = {"when": when, "machine": procs.machine(), "versions": servers.versions(), "args": vars(args),
               "steadiness": steady.text() if steady else None, "clock_ticks_per_s": procs.CLK_TCK,
               "summary": report.summary(results), "results": results}
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
        print(f"wrote the results to {args.json}")
    if not args.no_docs:
        path = os.path.join(os.path.dirname(HERE), "docs", "benchmarks.md")
        with open(path, encoding="utf-8") as f:
            doc = f.read()
        with open(path, "w", encoding="utf-8") as f:
            f.write(report.replace_section(doc, text))
        print(f"wrote the table to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
