"""Produce and consume with TLS and a 50-rule policy beside plaintext with no policy (issue 7).

Two local clusters (1 SC, 1 SPU each) run side by side in this run: one plaintext without a
policy, one with mutual TLS everywhere and a policy of 50 rules (48 that match nothing this
client does, then the allow that does, and a deny for another topic). Each round produces
COUNT records of 100 B with acks=all and consumes them back, on both clusters, alternating;
the table gives medians and the ratio.

Usage: python bench/security_bench.py [--count N] [--rounds R]
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

from kolk.cli import local_cluster  # noqa: E402
from kolk.client.admin import run  # noqa: E402
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
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
