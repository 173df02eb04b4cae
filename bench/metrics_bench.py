"""What the SPU's metrics cost (issue 21): produce throughput with metrics on vs off, and the
time of one /metrics scrape of an SPU leading 1,000 partitions.

One cluster of 1 SC and 1 SPU (real processes, plaintext, 127.0.0.1). Before each round the
SPU is restarted (SIGTERM, same data directory and port) with ``--metrics 127.0.0.1:0`` ("on"),
and then a thread here GETs its /metrics every second for the whole round, as Prometheus
would; or without ``--metrics`` ("off"). Only that flag differs between the rounds: same
processes' code, same SC, same disk. The load is ``kolk bench``'s and
bench/replication_bench.py's: one producer, records of 100 B, acks=all, idempotent, a new
1-partition topic (RF 1) per round, batches of up to 1 MiB with linger 5 ms. Rounds alternate
(on-off, then off-on, so drift favours neither); the table gives medians and the on/off ratio
(goal >= 97%).

The SPU's counters and histograms are kept whether or not the listener runs (they are plain
ints and fixed-bucket histograms touched once per request, batch or fsync), so "off" still
pays for them; the row "instrumentation per produce request" measures that part on its own
(the work one produce request adds: one histogram observation, two counter increments, one
fsync observation), timed in this process.

Then the SPU, restarted with metrics on, gets a topic of 1,000 partitions (RF 1) and /metrics
is fetched SCRAPES times, one a second (each a fresh render: closer scrapes of a render over
20 ms get the last render, core/observe/metrics_server.py; HTTP GET from this process: connect, collect and
render in the SPU's worker thread, transfer, as Prometheus sees it): median and max (goal <=
100 ms), and the SPU's CPU time per scrape (/proc), which machine load does not inflate.

Usage: python bench/metrics_bench.py [--count N] [--rounds R] [--scrapes N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
import timeit
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, os.path.join(ROOT, "bench"))

from dataplane_cluster import DataPlaneCluster, wait_until  # noqa: E402
from prometheus_client import CollectorRegistry  # noqa: E402
from replication_bench import throughput, wait_leader  # noqa: E402
from kolk.client.admin import run  # noqa: E402
from kolk.protocol.codes import Acks  # noqa: E402
from kolk.spu.metrics import SpuMetrics, Traffic  # noqa: E402

SCRAPE_INTERVAL_S = 1.0
WIDE_PARTITIONS = 1000


def metrics_url(c: DataPlaneCluster) -> str:
    with open(c.spus[1].ready_file) as f:
        return f"http://{json.load(f)['metrics']}/metrics"


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.read()


class Scraper(threading.Thread):
    """GET ``url`` every SCRAPE_INTERVAL_S until stopped (Prometheus's part in the "on" runs)."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.done = threading.Event()
        self.scrapes = 0
        self.failures = 0

    def run(self) -> None:
        while True:  # one scrape at once, then one a period until stopped
            try:
                get(self.url)
                self.scrapes += 1
            except OSError:
                self.failures += 1
            if self.done.wait(SCRAPE_INTERVAL_S):  # the scrape period
                return


def progress(what: str) -> None:
    print(f"metrics bench: {what}", file=sys.stderr, flush=True)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def instrumentation_us() -> float:
    """Microseconds of the metrics work one produce request adds on the SPU's loop."""
    m = SpuMetrics(CollectorRegistry())
    traffic = Traffic()

    def one() -> None:
        m.observe_produce(Acks.ALL, 0.0012)
        traffic.records_in += 100
        traffic.bytes_in += 12_000
        m.observe_fsync(0.0001, 100)
    n = 100_000
    return min(timeit.repeat(one, number=n, repeat=5)) / n * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=500_000, help="records per throughput round")
    ap.add_argument("--rounds", type=int, default=5, help="rounds with metrics on, and as many off")
    ap.add_argument("--scrapes", type=int, default=20)
    args = ap.parse_args()
    root = tempfile.mkdtemp(prefix="kolk-metrics-bench-", dir=os.getcwd())
    c = DataPlaneCluster(root, spus=1)
    rps: dict[str, list[float]] = {"on": [], "off": []}
    scrapes = failures = 0
    try:
        c.start()
        progress("cluster up")

        def restart(metrics: bool) -> None:
            """The SPU again (same data directory and port), with or without --metrics."""
            c.kill_spu(1, signal.SIGTERM)
            c.spu_args = ("--metrics", "127.0.0.1:0") if metrics else ()
            c.launch_spu(1)
            run(lambda: c.wait_spu_ready(1))

        async def produce(topic: str) -> float:
            client = c.client()
            await client.create_topic(topic, 1, 1)
            await wait_leader(client, topic)
            return await throughput(client, topic, args.count)

        for rnd in range(args.rounds):
            for mode in (("on", "off") if rnd % 2 == 0 else ("off", "on")):
                restart(mode == "on")
                scraper = Scraper(metrics_url(c)) if mode == "on" else None
                if scraper is not None:
                    scraper.start()
                try:
                    rps[mode].append(run(lambda mode=mode: produce(f"bench-{mode}-{rnd}")))
                finally:
                    if scraper is not None:
                        scraper.done.set()
                        scraper.join()
                        scrapes, failures = scrapes + scraper.scrapes, failures + scraper.failures
                progress(f"round {rnd + 1}, metrics {mode}: {rps[mode][-1]:,.0f} records/s")

        restart(True)

        async def wide() -> None:
            client = c.client()
            await client.create_topic("wide", WIDE_PARTITIONS, 1)

            def led() -> bool:  # every partition led here (its logs are opened first, its leader comes after)
                return sum(1 for line in get(metrics_url(c)).splitlines()
                           if line.startswith(b"kolk_partition_leader{") and b'topic="wide"' in line
                           and line.endswith(b" 1.0")) >= WIDE_PARTITIONS
            await wait_until(led, 300, f"the SPU to lead {WIDE_PARTITIONS} partitions", interval_s=1.0)
        run(wide)
        progress(f"{WIDE_PARTITIONS} partitions led")
        url = metrics_url(c)
        times_ms, size = [], 0
        cpu0 = cpu_seconds(c.spus[1].pid)
        t0 = time.perf_counter()
        for i in range(args.scrapes):
            # One a second, as a scraper would: a render over 20 ms is reused for 4x its length
            # (core/observe/metrics_server.py), so back-to-back GETs would time the reuse.
            if i:
                time.sleep(max(0.0, SCRAPE_INTERVAL_S - (time.perf_counter() - t0)))  # pacing
            t0 = time.perf_counter()
            body = get(url)
            times_ms.append((time.perf_counter() - t0) * 1000)
            size = len(body)
        spu_cpu_ms = (cpu_seconds(c.spus[1].pid) - cpu0) / args.scrapes * 1000
        lines = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
    finally:
        c.close()
        shutil.rmtree(root, ignore_errors=True)

    r_on, r_off = statistics.median(rps["on"]), statistics.median(rps["off"])
    cost_us = instrumentation_us()
    print(f"metrics bench: 1 SC + 1 SPU on this machine ({os.cpu_count()} cores), 1 partition, 100 B records, "
          f"acks=all, idempotent; {args.rounds} rounds of {args.count:,} records with metrics on and as many off, "
          f"alternating (the SPU restarted with or without --metrics before each); /metrics scraped every "
          f"{SCRAPE_INTERVAL_S:g} s while on ({scrapes} scrapes, {failures} failed)")
    print()
    print("| measure | value | per round | goal |")
    print("| --- | ---: | --- | --- |")
    for name, median in (("on", r_on), ("off", r_off)):
        rounds = ", ".join(f"{x:,.0f}" for x in rps[name])
        print(f"| produce records/s, metrics {name} (median) | {median:,.0f} | {rounds} | |")
    print(f"| metrics on / off | {r_on / r_off:.1%} | | >= 97% |")
    print(f"| instrumentation per produce request (in-process) | {cost_us:.2f} µs | | |")
    print(f"| /metrics of an SPU leading {WIDE_PARTITIONS:,} partitions, median of {args.scrapes} | "
          f"{statistics.median(times_ms):.1f} ms | {size / 1024:,.0f} KiB | <= 100 ms |")
    print(f"| same, max | {max(times_ms):.1f} ms | | <= 100 ms |")
    print(f"| SPU CPU per scrape of those {lines:,} samples | {spu_cpu_ms:.1f} ms | | |")
    print()
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
