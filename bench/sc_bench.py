"""SC benchmark (issue 3): topic-create latency and commands/s on 1 and 3 SCs, and leader
failover time (kill -9 of the leader until the next command commits), on real processes.

Run with ``make bench``. Medians over rounds; the machine is noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jepsen.cluster import SECRET, ScCluster, wait_for  # noqa: E402
from kolk.client.admin import AdminClient, run  # noqa: E402
from kolk.protocol.node_auth import NodeCredential  # noqa: E402
from kolk.protocol.errors import KolkError  # noqa: E402


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def wait_leader(c: ScCluster) -> str:
    def leader() -> str | None:
        live = [n.admin for n in c.nodes.values() if n.alive]
        s = run(lambda: AdminClient(live, timeout_s=2).cluster_status())
        return s["leader"] if s["leader"] in live else None
    return wait_for(leader, 30, "a leader")


def measure(size: int, topics: int, concurrency: int, seconds: float, failovers: int) -> dict:
    root = tempfile.mkdtemp(prefix="kolk-scbench-", dir=os.getcwd())
    c = ScCluster(root, size=size)
    try:
        c.start_all()
        wait_leader(c)

        async def body() -> dict:
            a = AdminClient(c.admin_addresses, credential=NodeCredential("spu-1", SECRET))  # registering is node-only
            for i in range(1, 4):
                await a.register_spu(i, f"127.0.0.1:{9100 + i}")
            lat = []
            for i in range(topics):
                t0 = time.perf_counter()
                await a.create_topic(f"bench-{i}", partitions=1, replication_factor=1)
                lat.append((time.perf_counter() - t0) * 1000)
            done = 0
            stop_at = time.perf_counter() + seconds

            async def worker(w: int) -> None:
                nonlocal done
                client = AdminClient(c.admin_addresses)
                n = 0
                while time.perf_counter() < stop_at:
                    await client.put_object("policy", f"p{w}", {"n": n})
                    n += 1
                    done += 1
            t0 = time.perf_counter()
            await asyncio.gather(*(worker(w) for w in range(concurrency)))
            rate = done / (time.perf_counter() - t0)
            return {"p50": statistics.median(lat), "p99": pct(lat, 99), "rate": rate}
        out = run(body)

        fo = []
        for _ in range(failovers):
            leader = c.node_by_admin(wait_leader(c))
            others = [n.admin for n in c.nodes.values() if n is not leader]
            t0 = time.perf_counter()
            c.kill(leader.node_id)

            async def until_commit() -> float:
                a = AdminClient(others, timeout_s=30)
                while True:
                    try:
                        await a.put_object("policy", "failover", {"t": time.time()})
                        return time.perf_counter() - t0
                    except KolkError:
                        await asyncio.sleep(0.01)  # retry interval
            fo.append(run(until_commit))
            c.start(leader.node_id)
        out["failover"] = fo
        return out
    finally:
        c.close()
        shutil.rmtree(root, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--topics", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--failovers", type=int, default=5)
    args = ap.parse_args()
    one = measure(1, args.topics, args.concurrency, args.seconds, 0)
    three = measure(3, args.topics, args.concurrency, args.seconds, args.failovers)
    print(f"kolk SC benchmark: {args.topics} sequential topic creates, {args.concurrency} concurrent writers "
          f"for {args.seconds:.0f} s, {args.failovers} leader kills; python {sys.version.split()[0]}, "
          f"{os.cpu_count()} cores")
    print()
    print("| SCs | topic create p50 | topic create p99 | commands/s (concurrent) | failover median | failover max |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for n, r in ((1, one), (3, three)):
        fo = r["failover"]
        print(f"| {n} | {r['p50']:.1f} ms | {r['p99']:.1f} ms | {r['rate']:,.0f} | "
              + (f"{statistics.median(fo):.2f} s | {max(fo):.2f} s |" if fo else "- | - |"))
    print()
    print("Goals: failover <= 2 s; topic create p99 <= 250 ms on 3 SCs.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
