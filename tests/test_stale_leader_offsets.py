"""A deposed leader that clients still reach, against real processes (issue 20).

The 300 s group run (``make jepsen-groups``) once went invalid this way: the leader SPU of a
partition lost its links to the SC and to the other SPUs (``partition-one``) while clients
still reached it. The SC elected another in-sync replica and the group read on there. A new
owner of the partition, whose client still had the old leader cached, asked that SPU for the
partition's range. The SPU had not learned it was deposed and answered with its own log end,
below the group's committed offset. The owner restarted at ``start`` and committed backwards.

What these tests pin down:
- the deposed leader really answers ``offsets`` and ``fetch`` from its old log while it is cut
  off, and the SC's metadata names the new leader (docs/replication.md, "Known limitation");
- a group member whose client asks that SPU does not move the group's position back: it asks
  again (forgetting leaders) and starts at the committed offset (docs/consumers.md).

One SC and three SPUs, each on 127.0.0.1, a FaultProxy on each SPU's replication and SC links;
every process is stopped by its pid.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dataplane_cluster import DataPlaneCluster, raw_spu, run_async, wait_until, offsets_topic  # noqa: E402
from kolk.client.client import AsyncClient  # noqa: E402
from kolk.client.consumer import ConsumerRecord, Offset  # noqa: E402
from kolk.client.coordinator import group_call  # noqa: E402
from kolk.groups.names import OFFSETS_TOPIC  # noqa: E402

FAST = ("--replica-lag-max-ms", "2000", "--heartbeat-interval-ms", "200", "--replica-fetch-wait-ms", "200")
HEARTBEAT_TIMEOUT_MS = 1500
WAIT_S = 60.0  # every condition is awaited with this deadline
BEFORE, AFTER, COMMITTED = 100, 200, 250  # records before the cut, after it; the group's commit


async def leader_of(client: AsyncClient, name: str) -> int | None:
    parts = await client.admin.list_objects("partition")
    return next(p for p in parts if p["name"] == name)["status"].get("leader")


async def settled(c: DataPlaneCluster) -> int:
    """The topic ``t`` (1 partition, RF 3) holding BEFORE records on three caught-up replicas,
    and every ``_consumer_offsets`` partition led; the leader of t-0."""
    async with c.client() as client:
        async def offsets_led() -> bool:
            client.forget_leaders(OFFSETS_TOPIC)
            parts = await offsets_topic(client)
            return bool(parts) and all(p["status"].get("leader") is not None for p in parts)
        await wait_until(offsets_led, WAIT_S, f"{OFFSETS_TOPIC} to have a leader for every partition")
        await client.create_topic("t", 1, 3)
        producer = client.producer("t", acks="all")
        for i in range(BEFORE):
            await producer.send(b"before-%d" % i)
        await producer.close()

        async def caught_up() -> bool:
            rows = [r for r in await client.partition_list() if r["name"] == "t-0"]
            return bool(rows) and len(rows[0]["isr"]) == 3 and rows[0]["lag"] == 0
        await wait_until(caught_up, WAIT_S, "t-0 to have three caught-up in-sync replicas")
        leader = await leader_of(client, "t-0")
        assert leader is not None
        return leader


async def cut_off(c: DataPlaneCluster, client: AsyncClient, old: int) -> int:
    """Cut ``old``'s replication and SC links (clients still reach it); the new leader of t-0."""
    c.proxies["private"][old].cut("blackhole")
    c.proxies["sc"][old].cut("blackhole")

    async def moved() -> int | None:
        leader = await leader_of(client, "t-0")
        return leader if leader not in (None, old) else None
    return await wait_until(moved, WAIT_S, f"the SC to elect a leader of t-0 other than SPU {old}")


async def produce_after(client: AsyncClient) -> None:
    producer = client.producer("t", acks="all")
    for i in range(AFTER):
        await producer.send(b"after-%d" % i)
    await producer.close()


def cluster(tmp_path: Any) -> DataPlaneCluster:
    return DataPlaneCluster(str(tmp_path), spus=3, heartbeat_timeout_ms=HEARTBEAT_TIMEOUT_MS, spu_args=FAST,
                            proxied_private=True, proxied_sc=True)


def test_deposed_leader_cut_off_from_the_sc_still_answers_reads(tmp_path: Any) -> None:
    """The limitation itself (docs/replication.md): while the new leader holds BEFORE + AFTER
    committed records, the old one answers offsets and a committed fetch with its old high
    watermark, as the leader, because nothing has told it otherwise."""
    c = cluster(tmp_path)

    async def body() -> None:
        old = await settled(c)
        async with c.client() as sc_view:
            await cut_off(c, sc_view, old)
        async with c.client() as fresh:  # its leaders come from the SC after the election
            await produce_after(fresh)
            assert await fresh.offsets("t", 0) == (0, BEFORE + AFTER, BEFORE + AFTER)
        zombie = await raw_spu(c.spus[old].address)
        try:
            r = await zombie.call("offsets", 10, topic="t", partition=0)
            assert r.result.ok, r.result.message
            assert (r.highWatermark, r.logEndOffset) == (BEFORE, BEFORE), (r.highWatermark, r.logEndOffset)
            f = await zombie.call("fetch", 10, topic="t", partition=0, offset=0, maxBytes=1 << 20,
                                  isolation="committed")
            assert f.result.ok and f.highWatermark == BEFORE and f.nextOffset == BEFORE, f.result.message
        finally:
            zombie.close()
    try:
        c.start()
        run_async(body)
    finally:
        c.close()


def test_group_member_asking_a_deposed_leader_starts_at_the_commit(tmp_path: Any) -> None:
    """A group commits COMMITTED (read from the new leader). A new member whose client still has
    the cut-off old leader cached hears "log end BEFORE" from it: it must not restart at the
    beginning (committing backwards); it asks again and starts at COMMITTED."""
    c = cluster(tmp_path)

    async def body() -> None:
        old = await settled(c)
        stale = c.client()  # caches t-0's leader before the cut, and keeps it
        try:
            assert await stale.offsets("t", 0) == (0, BEFORE, BEFORE)
            async with c.client() as sc_view:
                await cut_off(c, sc_view, old)
            async with c.client() as fresh:
                await produce_after(fresh)
                first = fresh.consumer("t", group="g", auto_commit=False, start=Offset.beginning())
                await read(first, BEFORE + AFTER)
                await first.commit({0: COMMITTED})
                await first.close()
            # The stale client still reaches the deposed leader, which answers as the leader.
            assert await stale.offsets("t", 0) == (0, BEFORE, BEFORE)
            second = stale.consumer("t", group="g", auto_commit=False, start=Offset.beginning())
            got = await read(second, BEFORE + AFTER - COMMITTED)
            await second.commit()
            await second.close()
            assert [r.offset for r in got] == list(range(COMMITTED, BEFORE + AFTER))
            r = await group_call(stale, "g", "offsetFetch", {"group": "g", "topics": []})
            assert {o.partition: o.offset for o in r.offsets if o.topic == "t"} == {0: BEFORE + AFTER}
        finally:
            await stale.close()
    try:
        c.start()
        run_async(body)
    finally:
        c.close()


async def read(consumer: Any, n: int) -> list[ConsumerRecord]:
    """Poll ``consumer`` until it handed out ``n`` records; fail after WAIT_S."""
    out: list[ConsumerRecord] = []
    loop = asyncio.get_running_loop()
    end = loop.time() + WAIT_S
    while len(out) < n:
        assert loop.time() < end, f"not within {WAIT_S} s: {n} records; got {len(out)}"
        out.extend(await consumer.poll(0.2))
    return out
