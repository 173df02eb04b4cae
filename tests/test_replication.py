"""Replication end to end: real SC and SPU processes on loopback, faults by kill -9 and by
FaultProxy (jepsen/proxy.py) on the links we choose. Every case ends by stopping the SPUs and
reading each replica's log from its files: identical up to the high watermark on every
in-sync replica, and every record acknowledged with acks=all there exactly once, in order.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from typing import Any

import pytest

from dataplane_cluster import DataPlaneCluster, disk_log, raw_spu, run_async, wait_until
from kolk.client.client import AsyncClient
from kolk.protocol.errors import KolkError
from kolk.protocol.channel_client import ClientConnection
from kolk.segments import build_batch

FAST = ("--replica-lag-max-ms", "2000", "--heartbeat-interval-ms", "200", "--replica-fetch-wait-ms", "200")
HEARTBEAT_TIMEOUT_MS = 1500


def run_on(c: DataPlaneCluster, body: Any) -> None:
    """Start ``c``, run ``body`` on a fresh event loop, and stop every process by pid."""
    try:
        c.start()
        run_async(body)
    finally:
        c.close()


def cluster(tmp_path: Any, **kw: Any) -> DataPlaneCluster:
    return DataPlaneCluster(str(tmp_path), spus=3, heartbeat_timeout_ms=HEARTBEAT_TIMEOUT_MS, spu_args=FAST, **kw)


async def partition(client: AsyncClient, name: str) -> dict[str, Any]:
    return next(p for p in await client.admin.list_objects("partition") if p["name"] == name)


async def wait_in_sync(client: AsyncClient, name: str, members: int = 3, timeout_s: float = 30) -> dict[str, Any]:
    """Until ``name`` has ``members`` in-sync replicas, all at the leader's log end."""
    async def ready() -> dict[str, Any] | None:
        rows = [r for r in await client.partition_list() if r["name"] == name]
        r = rows[0] if rows else None
        if (r and r["error"] is None and len(r["isr"]) == members and r["lag"] == 0
                and r["high_watermark"] == r["log_end_offset"]):
            return r
        return None
    return await wait_until(ready, timeout_s, f"{name} to have {members} caught-up in-sync replicas")


def stopped_logs(c: DataPlaneCluster, name: str, ids: list[int]) -> dict[int, tuple[list, int, int]]:
    for i in ids:
        c.kill_spu(i, signal.SIGTERM)
    return {i: disk_log(c.spus[i].data_dir, name) for i in ids}


def check_same_and_complete(logs: dict[int, tuple[list, int, int]], acked: dict[bytes, int]) -> None:
    """Identical up to the leader's high watermark (the largest: a follower learns it on its
    next fetch); every acked value there once, at its acked offset."""
    hw = max(h for _, h, _ in logs.values())
    assert all(leo >= hw for _, _, leo in logs.values()), {i: (h, leo) for i, (_, h, leo) in logs.items()}
    first = next(iter(logs.values()))[0]
    committed = [rec for rec in first if rec[0] < hw]
    for i, (recs, _, _) in logs.items():
        assert [rec for rec in recs if rec[0] < hw] == committed, f"SPU {i} differs below the high watermark {hw}"
    values = [v for _, v in committed]
    assert len(values) == len(set(values)), "a record is stored twice"
    where = {v: off for off, v in committed}
    missing = [v for v in acked if v not in where]
    assert not missing, f"{len(missing)} acknowledged records lost, e.g. {missing[:3]}"
    assert all(where[v] == off for v, off in acked.items()), "an acknowledged record moved"


async def produce_until(client: AsyncClient, topic: str, acked: dict[bytes, int], stop: asyncio.Event,
                        prefix: bytes, errors: list[str], partitions: dict[bytes, int] | None = None) -> None:
    """Produce with acks=all (idempotent) until ``stop``; note each acknowledged record (and, in
    ``partitions`` when given, its partition)."""
    producer = client.producer(topic, retries=200, request_timeout_ms=5000, linger_ms=2)
    n = 0
    while not stop.is_set():
        futs = [(prefix + b"-%d" % (n + i), await producer.send(prefix + b"-%d" % (n + i))) for i in range(200)]
        n += 200
        for value, fut in futs:
            try:
                meta = await fut
            except KolkError as e:
                errors.append(str(e))
                continue
            acked[value] = meta.offset
            if partitions is not None:
                partitions[value] = meta.partition
    await producer.close()


def test_kill_leader_under_load_loses_no_acknowledged_record(tmp_path: Any) -> None:
    """RF 3, min_in_sync 2; kill -9 the leader while a producer writes with acks=all. A new
    leader takes over; every acknowledged record is on it and on every in-sync replica exactly
    once, in the order acknowledged; the old leader comes back, truncates and catches up."""
    c = cluster(tmp_path)

    async def body() -> None:
        client = c.client()
        await client.create_topic("t", 1, 3)
        acked: dict[bytes, int] = {}
        errors: list[str] = []
        stop = asyncio.Event()
        task = asyncio.ensure_future(produce_until(client, "t", acked, stop, b"a", errors))
        await wait_until(lambda: len(acked) >= 3000, 30, "3000 acknowledged records")
        old = (await partition(client, "t-0"))["status"]["leader"]
        c.kill_spu(old)
        before = len(acked)
        await wait_until(lambda: len(acked) >= before + 3000, 60, "3000 more acknowledged after the kill")
        stop.set()
        await asyncio.wait_for(task, 60)
        p = await partition(client, "t-0")
        assert p["status"]["leader"] != old and p["status"]["epoch"] >= 1 and old not in p["status"]["isr"]
        c.launch_spu(old)
        await c.wait_spu_ready(old)
        await wait_in_sync(client, "t-0")
        assert not errors, errors[:3]
        logs = stopped_logs(c, "t-0", [1, 2, 3])
        check_same_and_complete(logs, acked)
        assert len({leo for _, _, leo in logs.values()}) == 1
    run_on(c, body)


async def leader_of(client: AsyncClient, name: str) -> int:
    return (await partition(client, name))["status"]["leader"]


def one(value: bytes, **idem: int) -> bytes:
    return build_batch([(None, value)], **idem)


async def produce_raw(spu: ClientConnection, acks: str, records: bytes, timeout_ms: int) -> Any:
    """A produce to t-0 below the client library (no retries): the SPU's ProduceResponse."""
    return await spu.call("produce", timeout_ms / 1000 + 10, topic="t", partition=0, acks=acks, records=records,
                          timeoutMs=timeout_ms)


def test_leader_cut_off_from_followers_cannot_acknowledge(tmp_path: Any) -> None:
    """The followers cannot reach the leader (its replication port is blackholed) while clients
    still can: acks=all writes are not acknowledged; the leader shrinks the in-sync set through
    the SC and then refuses acks=all (min_in_sync 2) with notEnoughReplicas naming the set.
    After healing, the followers catch up, rejoin, and every log is identical."""
    c = cluster(tmp_path, proxied_private=True)

    async def body() -> None:
        client = c.client()
        await client.create_topic("t", 1, 3)
        producer = client.producer("t")
        acked = {b"before-%d" % i: (await producer.send(b"before-%d" % i)) for i in range(100)}
        await producer.flush()
        acked = {v: (await f).offset for v, f in acked.items()}
        leader = await leader_of(client, "t-0")
        c.proxies["private"][leader].cut("blackhole")
        spu = await raw_spu(c.spus[leader].address)
        r = await produce_raw(spu, "all", one(b"cut-1"), 800)
        assert not r.result.ok and r.result.error.code == "timeout", r.result
        await wait_until(
            lambda: _isr_is(client, "t-0", [leader]), 20, "the leader to shrink the in-sync set to itself")
        r = await produce_raw(spu, "all", one(b"cut-2"), 800)
        assert r.result.error.code == "notEnoughReplicas" and "min_in_sync 2" in r.result.error.message
        r = await produce_raw(spu, "leader", one(b"cut-3"), 800)
        assert r.result.ok  # acks=leader is the user's choice: durable on the leader only
        c.proxies["private"][leader].heal()
        await wait_in_sync(client, "t-0")
        r = await produce_raw(spu, "all", one(b"healed"), 5000)
        assert r.result.ok
        acked[b"healed"] = r.baseOffset
        spu.close()
        await wait_in_sync(client, "t-0")
        logs = stopped_logs(c, "t-0", [1, 2, 3])
        check_same_and_complete(logs, acked)
    run_on(c, body)


async def _isr_is(client: AsyncClient, name: str, isr: list[int]) -> bool:
    return (await partition(client, name))["status"]["isr"] == isr


def test_isolated_leader_is_replaced_and_its_divergent_tail_truncated(tmp_path: Any) -> None:
    """The leader loses the SC and its followers, but clients still reach it. The SC elects a
    follower (epoch + 1); the old leader takes acks=leader writes nobody else has (a divergent
    tail) and acknowledges no acks=all write. Healed, it learns the new epoch, truncates its
    tail at the point the new leader's log diverges (KIP-279) and catches up."""
    c = cluster(tmp_path, proxied_private=True, proxied_sc=True)

    async def body() -> None:
        client = c.client()
        await client.create_topic("t", 1, 3)
        acked: dict[bytes, int] = {}
        first = client.producer("t")
        for i in range(50):
            acked[b"a-%d" % i] = (await (await first.send(b"a-%d" % i))).offset
        await first.close()
        await wait_in_sync(client, "t-0")
        old = await leader_of(client, "t-0")
        c.proxies["private"][old].cut("blackhole")
        c.proxies["sc"][old].cut("blackhole")
        spu = await raw_spu(c.spus[old].address)
        divergent = []
        for i in range(20):
            r = await produce_raw(spu, "leader", one(b"divergent-%d" % i), 2000)
            assert r.result.ok, r.result
            divergent.append(b"divergent-%d" % i)
        r = await produce_raw(spu, "all", one(b"never"), 500)
        assert not r.result.ok
        await wait_until(lambda: _leader_moved(client, old), 20, "a new leader to be elected")
        # The client still has the isolated leader cached, so the first request goes there and
        # cannot be acknowledged: it waits out its request timeout, then is retried on the new
        # leader. 3 s instead of the default 30 s: still 15x the followers' fetch wait (200 ms)
        # that commits a request on the new leader, and a slow one there is retried (idempotent).
        producer = client.producer("t", retries=50, request_timeout_ms=3000)
        futs = {b"b-%d" % i: await producer.send(b"b-%d" % i) for i in range(500)}
        await producer.flush()
        acked.update({v: (await f).offset for v, f in futs.items()})
        r = await produce_raw(spu, "all", one(b"never-2"), 500)
        assert not r.result.ok
        spu.close()
        c.proxies["private"][old].heal()
        c.proxies["sc"][old].heal()
        await wait_in_sync(client, "t-0")
        assert ": truncated " in c.spu_log(old)
        logs = stopped_logs(c, "t-0", [1, 2, 3])
        check_same_and_complete(logs, acked)
        stored = {v for _, v in logs[old][0]}
        assert not stored & set(divergent) and b"never" not in stored and b"never-2" not in stored
    run_on(c, body)


async def _leader_moved(client: AsyncClient, old: int) -> bool:
    p = await partition(client, "t-0")
    return p["status"]["leader"] not in (None, old)


def test_restart_old_leader_with_divergent_tail_then_all_spus_at_once(tmp_path: Any) -> None:
    """kill -9 a leader that holds a tail its followers never got; a follower takes over and
    takes new writes; the old leader restarts, truncates, catches up. Then every SPU is killed
    at once and restarted: the partition comes back with the same committed log everywhere."""
    c = cluster(tmp_path, proxied_private=True, proxied_sc=True)

    async def body() -> None:
        client = c.client()
        await client.create_topic("t", 1, 3)
        producer = client.producer("t", retries=100)
        acked: dict[bytes, int] = {}
        futs = {b"a-%d" % i: await producer.send(b"a-%d" % i) for i in range(1000)}
        await producer.flush()
        acked.update({v: (await f).offset for v, f in futs.items()})
        await wait_in_sync(client, "t-0")
        old = await leader_of(client, "t-0")
        c.proxies["private"][old].cut("blackhole")
        c.proxies["sc"][old].cut("blackhole")
        spu = await raw_spu(c.spus[old].address)
        for i in range(10):
            assert (await produce_raw(spu, "leader", one(b"tail-%d" % i), 2000)).result.ok
        spu.close()
        c.kill_spu(old)
        c.proxies["private"][old].heal()
        c.proxies["sc"][old].heal()
        await wait_until(lambda: _leader_moved(client, old), 20, "a new leader to be elected")
        futs = {b"b-%d" % i: await producer.send(b"b-%d" % i) for i in range(1000)}
        await producer.flush()
        acked.update({v: (await f).offset for v, f in futs.items()})
        c.launch_spu(old)
        await c.wait_spu_ready(old)
        await wait_in_sync(client, "t-0")
        for i in (1, 2, 3):
            c.kill_spu(i)
        for i in (1, 2, 3):
            c.launch_spu(i)
        for i in (1, 2, 3):
            await c.wait_spu_ready(i)
        await wait_in_sync(client, "t-0", timeout_s=40)
        futs = {b"c-%d" % i: await producer.send(b"c-%d" % i) for i in range(100)}
        await producer.flush()
        acked.update({v: (await f).offset for v, f in futs.items()})
        await wait_in_sync(client, "t-0")
        logs = stopped_logs(c, "t-0", [1, 2, 3])
        check_same_and_complete(logs, acked)
        assert not any(v.startswith(b"tail-") for _, v in logs[old][0])
    run_on(c, body)


def test_idempotent_retries_after_ambiguous_failures_leave_no_duplicates(tmp_path: Any) -> None:
    """An idempotent batch whose reply is lost (connection reset after the append), or whose
    acks=all wait timed out (followers cut off), is sent again unchanged: the leader answers
    with the first append's offsets, marked duplicate, and stores it once. A gap, an older
    producer epoch and a two-batch idempotent request are refused, each with its own error."""
    c = cluster(tmp_path, proxied_private=True, proxied_public=True)

    async def body() -> None:
        client = c.client()
        await client.create_topic("t", 1, 3)
        pid = await client.admin.allocate_producer_ids(1)
        assert await client.admin.allocate_producer_ids(1) == pid + 1  # ids are never handed out twice
        await wait_in_sync(client, "t-0")
        leader = await leader_of(client, "t-0")
        front = c.proxies["public"][leader]
        batch0 = build_batch([(None, b"x-%d" % i) for i in range(10)], producer_id=pid, producer_epoch=0,
                             base_sequence=0)
        # 1. The reply is lost after the append.
        spu = await raw_spu(front.address)
        # Connected: the next request surely goes out.
        assert (await spu.call("offsets", 5, topic="t", partition=0)).result.ok
        front.set_drop_replies(True)
        with pytest.raises(Exception):
            await asyncio.wait_for(produce_raw(spu, "all", batch0, 5000), 10)
        front.set_drop_replies(False)
        spu.close()
        spu = await raw_spu(c.spus[leader].address)
        r = await produce_raw(spu, "all", batch0, 5000)
        assert r.result.ok and r.duplicate and (r.baseOffset, r.lastOffset) == (0, 9)
        # 2. acks=all times out (followers cut off), then the same batch again once healed.
        batch1 = build_batch([(None, b"y")], producer_id=pid, producer_epoch=0, base_sequence=10)
        c.proxies["private"][leader].cut("blackhole")
        r = await produce_raw(spu, "all", batch1, 300)
        assert r.result.error.code == "timeout"
        c.proxies["private"][leader].heal()
        r = await produce_raw(spu, "all", batch1, 10_000)
        assert r.result.ok and r.duplicate and r.baseOffset == 10, r.result
        # 3. Bad input, one error each; nothing is stored.
        gap = build_batch([(None, b"z")], producer_id=pid, producer_epoch=0, base_sequence=20)
        r = await produce_raw(spu, "all", gap, 5000)
        assert r.result.error.code == "outOfOrderSequence" and "11" in r.result.error.message
        newer = build_batch([(None, b"e1")], producer_id=pid, producer_epoch=1, base_sequence=0)
        assert (await produce_raw(spu, "all", newer, 5000)).result.ok
        zombie = build_batch([(None, b"e0")], producer_id=pid, producer_epoch=0, base_sequence=11)
        r = await produce_raw(spu, "all", zombie, 5000)
        assert r.result.error.code == "producerFenced" and str(pid) in r.result.error.message
        two = (build_batch([(None, b"p")], producer_id=pid, producer_epoch=1, base_sequence=1)
               + build_batch([(None, b"q")], producer_id=pid, producer_epoch=1, base_sequence=2))
        r = await produce_raw(spu, "all", two, 5000)
        assert r.result.error.code == "invalidBatch" and "exactly one batch" in r.result.error.message
        spu.close()
        await wait_in_sync(client, "t-0")
        logs = stopped_logs(c, "t-0", [1, 2, 3])
        values = [v for _, v in logs[leader][0]]
        assert values == [b"x-%d" % i for i in range(10)] + [b"y", b"e1"]
        check_same_and_complete(logs, {b"y": 10, b"e1": 11})
    run_on(c, body)


def test_idempotent_producer_survives_dropped_replies_and_failover(tmp_path: Any) -> None:
    """The Python producer (idempotent by default with acks=all) writes while the clients'
    link to the leader drops replies now and then, and the leader is killed: every record is
    stored exactly once, in the order sent, and the table survives failover (rebuilt from the
    log on the new leader)."""
    c = cluster(tmp_path, proxied_public=True)

    async def body() -> None:
        client = c.client()
        await client.create_topic("t", 1, 3)
        await wait_in_sync(client, "t-0")
        leader = await leader_of(client, "t-0")
        producer = client.producer("t", retries=200, request_timeout_ms=3000, linger_ms=1)
        sent: list[bytes] = []
        futs = []

        async def send(n: int) -> None:
            for _ in range(n):
                v = b"v-%d" % len(sent)
                sent.append(v)
                futs.append(await producer.send(v))
            await asyncio.sleep(0)  # let the batch go
        await send(2000)
        front = c.proxies["public"][leader]
        for _ in range(5):
            dropped = front.replies_dropped
            front.set_drop_replies(True)
            await send(300)
            await wait_until(lambda: front.replies_dropped > dropped, 10, "a reply to be dropped")
            front.set_drop_replies(False)
            await send(300)
        c.kill_spu(leader)
        await send(2000)
        await producer.flush()
        offsets = [(await f).offset for f in futs]
        assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)
        alive = [i for i in (1, 2, 3) if i != leader]
        logs = stopped_logs(c, "t-0", alive)
        for i in alive:
            assert [v for _, v in logs[i][0]] == sent, f"SPU {i}: duplicates, gaps or reordering"
    run_on(c, body)


def test_dead_spu_replicas_move_and_partition_list_shows_it(tmp_path: Any) -> None:
    """With four SPUs, an SPU dead longer than --replica-move-after-ms has its replicas moved:
    the new replica copies the log from the leader and joins the in-sync set. When the dead
    SPU returns, its stale replica is removed. `kolk partition list` shows the partition's
    leader, replicas, in-sync set, high watermark, log end offset and lag."""
    c = DataPlaneCluster(str(tmp_path), spus=4, heartbeat_timeout_ms=HEARTBEAT_TIMEOUT_MS, spu_args=FAST,
                         sc_args=("--replica-move-after-ms", "2000"))

    async def body() -> None:
        client = c.client()
        await client.create_topic("t", 1, 3)
        producer = client.producer("t")
        futs = [await producer.send(b"r-%d" % i) for i in range(3000)]
        await producer.flush()
        acked = {b"r-%d" % i: (await f).offset for i, f in enumerate(futs)}
        p = await partition(client, "t-0")
        victim = next(r for r in p["spec"]["replicas"] if r != p["status"]["leader"])
        spare = next(i for i in (1, 2, 3, 4) if i not in p["spec"]["replicas"])
        c.kill_spu(victim)

        async def moved() -> bool:
            return victim not in (await partition(client, "t-0"))["spec"]["replicas"]
        await wait_until(moved, 30, f"the replica on dead SPU {victim} to move")
        row = await wait_in_sync(client, "t-0", timeout_s=30)
        assert victim not in row["replicas"] and spare in row["replicas"] and spare in row["isr"]
        assert row["high_watermark"] == row["log_end_offset"] == 3000
        out = subprocess.run([sys.executable, "-m", "kolk", "partition", "list", "--sc", ",".join(c.sc_addresses)],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        header, line = out.stdout.splitlines()[:2]
        assert header.split()[:8] == ["PARTITION", "LEADER", "REPLICAS", "IN-SYNC", "EPOCH", "HW", "LEO", "LAG"]
        assert line.split()[0] == "t-0" and line.split()[5:8] == ["3000", "3000", "0"]
        c.launch_spu(victim)
        await c.wait_spu_ready(victim)
        stale = os.path.join(c.spus[victim].data_dir, "logs", "t-0")
        await wait_until(lambda: not os.path.exists(stale), 20, "the stale replica to be removed")
        logs = stopped_logs(c, "t-0", row["replicas"])
        check_same_and_complete(logs, acked)
    run_on(c, body)
