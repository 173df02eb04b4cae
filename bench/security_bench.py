"""Produce and consume with TLS and a 50-rule policy beside plaintext with no policy (issue 7).

Two local clusters (1 SC, 1 SPU each) run side by side in this run: one plaintext without a
policy, one with mutual TLS everywhere and a policy of 50 rules (48 that match nothing this
client does, then the allow that does, and a deny for another topic). Each round produces
COUNT records of 100 B with acks=all and consumes them back, on both clusters, alternating;
the table gives medians and the ratio.

Raft commit latency (issue 17): two 3-SC clusters side by side, one plaintext and one with
mutual TLS (so Raft runs over mutual TLS between the SCs too); TOPICS sequential topic creates
through one client on each, alternating in blocks of 20; the table gives p50 and p99 of each.

Usage: python bench/security_bench.py [--count N] [--rounds R] [--topics T] [--only data|raft]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jepsen.cluster import SECRET, ScCluster, wait_for  # noqa: E402
from kolk.cli import local_cluster  # noqa: E402
from kolk.client.admin import AdminClient, run  # noqa: E402
from kolk.protocol.node_auth import NodeCredential  # noqa: E402
from kolk.client.client import AsyncClient  # noqa: E402
from kolk.client.consumer import Offset  # noqa: E402
from kolk.security.policy import parse_policy  # noqa: E402
from replication_bench import throughput  # noqa: E402

POLICY_HEAD = """version = 1

[regions]
local = ["127.0.0.0/8", "::1/128"]

[identities]
"kolk-admin" = ["admin", "writer"]
"""


def fifty_rules() -> str:
    rules = []
    for i in range(48):
        rules.append(f'[[rule]]\neffect = "allow"\nroles = ["team-{i}"]\nactions = ["produce", "consume"]\n'
                     f'resources = ["topic:team-{i}-*"]\n')
    rules.append('[[rule]]\neffect = "deny"\nroles = ["writer"]\nactions = ["*"]\nresources = ["topic:secret-*"]\n')
    rules.append('[[rule]]\neffect = "allow"\nroles = ["admin"]\nactions = ["*"]\nresources = ["topic:*", "cluster", '
                 '"smartmodule:*"]\nregions = ["local"]\n')
    teams = "".join(f'"team-{i}-app" = ["team-{i}"]\n' for i in range(48))
    text = POLICY_HEAD + teams + "\n" + "\n".join(rules)
    assert len(parse_policy(text).rules) == 50
    return text


async def round_trip(client: AsyncClient, topic: str, count: int) -> tuple[float, float]:
    produce = await throughput(client, topic, count)  # the same producer loop as the replication bench
    consumer = client.consumer(topic, start=Offset.beginning(), stop_at_end=True, window_bytes=16 << 20)
    n = 0
    t0 = time.perf_counter()
    async for batch in consumer.batches():
        n += len(batch)
    consume = n / (time.perf_counter() - t0)
    await consumer.close()
    consumer._streams.clear()
    assert n == count
    return produce, consume


def start(home: str, tls: bool) -> dict:
    os.environ["KOLK_HOME"] = home
    return local_cluster.start(1, tls=tls)


def stop(home: str) -> None:
    os.environ["KOLK_HOME"] = home
    local_cluster.stop()


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


RAFT_BLOCK = 20  # topic creates on one cluster before switching to the other


def raft_latency(topics: int) -> dict[str, list[float]]:
    """Topic-create latency (ms) on a plaintext and a mutual-TLS 3-SC cluster, side by side."""
    from kolk.security.certs import dev_pki
    from kolk.security.tls import TlsConfig

    root = tempfile.mkdtemp(prefix="kolk-sec-bench-raft-", dir=os.getcwd())
    pki = dev_pki(os.path.join(root, "pki"), nodes=["node"], clients=["admin"])
    n = pki["node"]
    tls_args = ("--tls-ca", n["ca"], "--tls-cert", n["cert"], "--tls-key", n["key"])
    clusters = {"plain": (ScCluster(os.path.join(root, "plain"), size=3), None),
                # The node certificate: registering SPUs is node-only (the SCs run no policy).
                "tls": (ScCluster(os.path.join(root, "tls"), size=3, extra_args=tls_args),
                        TlsConfig(n["ca"], n["cert"], n["key"]))}
    try:
        for c, _ in clusters.values():
            c.start_all()
        clients = {}
        for k, (c, tls) in clusters.items():
            def leader(c: ScCluster = c, tls: TlsConfig | None = tls) -> str | None:
                s = run(lambda: AdminClient(c.admin_addresses, timeout_s=2, tls=tls).cluster_status())
                return s["leader"] if s["leader"] in c.admin_addresses else None
            wait_for(leader, 30, f"a leader on the {k} cluster")
            # Registering SPUs is node-only: without TLS the client proves the cluster secret.
            clients[k] = AdminClient(c.admin_addresses, tls=tls,
                                     credential=NodeCredential("spu-1", SECRET) if tls is None else None)

        async def body() -> dict[str, list[float]]:
            for client in clients.values():
                for i in range(1, 4):
                    await client.register_spu(i, f"127.0.0.1:{9100 + i}")
            lat: dict[str, list[float]] = {k: [] for k in clients}
            for block in range(0, topics, RAFT_BLOCK):
                for k, client in clients.items():
                    for i in range(block, min(topics, block + RAFT_BLOCK)):
                        t0 = time.perf_counter()
                        await client.create_topic(f"raft-bench-{i}", 1, 1)
                        lat[k].append((time.perf_counter() - t0) * 1000)
            return lat
        return run(body)
    finally:
        for c, _ in clusters.values():
            c.close()
        shutil.rmtree(root, ignore_errors=True)


def print_raft(topics: int, lat: dict[str, list[float]]) -> None:
    print(f"raft commit latency: 2 clusters of 3 SCs on loopback, {topics} sequential topic creates each "
          f"(blocks of {RAFT_BLOCK}, alternating); {os.cpu_count()} cores")
    print()
    print("| Raft between SCs | topic create p50 | topic create p99 | goal (p99) |")
    print("| --- | ---: | ---: | --- |")
    for k, label in (("plain", "plaintext cluster"), ("tls", "mutual-TLS cluster")):
        print(f"| {label} | {statistics.median(lat[k]):.1f} ms | {pct(lat[k], 99):.1f} ms | <= 16 ms |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--topics", type=int, default=400, help="topic creates per cluster for the Raft latency")
    ap.add_argument("--only", choices=("data", "raft"), help="run one part only")
    args = ap.parse_args()
    if args.only != "data":
        print_raft(args.topics, raft_latency(args.topics))
        if args.only == "raft":
            return 0
        print()
    homes = {k: tempfile.mkdtemp(prefix=f"kolk-sec-bench-{k}-", dir=os.getcwd()) for k in ("plain", "secure")}
    started = []
    try:
        profiles = {}
        for k in homes:
            profiles[k] = start(homes[k], tls=(k == "secure"))
            started.append(k)

        async def body() -> dict[str, dict[str, list[float]]]:
            from kolk.security.tls import TlsConfig

            plain = AsyncClient(profiles["plain"]["sc"])
            t = profiles["secure"]["tls"]
            secure = AsyncClient(profiles["secure"]["sc"], tls=TlsConfig(t["ca"], t["cert"], t["key"]))
            source = fifty_rules()
            await secure.admin.put_object("policy", "active", {"version": 1, "source": source,
                                                               "sha256": parse_policy(source).sha256})
            out = {k: {"produce": [], "consume": []} for k in homes}
            for rnd in range(args.rounds):
                for k, client in (("plain", plain), ("secure", secure)):
                    topic = f"bench-{rnd}"
                    await client.create_topic(topic, 1, 1)
                    p, c = await round_trip(client, topic, args.count)
                    out[k]["produce"].append(p)
                    out[k]["consume"].append(c)
            return out
        res = run(body)
    finally:
        for k in started:
            stop(homes[k])
        for h in homes.values():
            shutil.rmtree(h, ignore_errors=True)
    print(f"security bench: 2 local clusters (1 SC + 1 SPU each), 100 B records, acks=all, {args.rounds} rounds of "
          f"{args.count:,}; {os.cpu_count()} cores")
    print()
    print("| path | plaintext, no policy (records/s) | mutual TLS + 50-rule policy | ratio | goal |")
    print("| --- | ---: | ---: | ---: | --- |")
    for what in ("produce", "consume"):
        a, b = statistics.median(res["plain"][what]), statistics.median(res["secure"][what])
        print(f"| {what} | {a:,.0f} | {b:,.0f} | {b / a:.0%} | >= 60% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
