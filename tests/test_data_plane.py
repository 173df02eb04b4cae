"""End-to-end tests of the data plane (DESIGN.md §2, §4, §6) on real processes: one SC started
with ``jepsen.cluster.ScCluster`` and SPUs started as ``python -m kolk spu``, all on 127.0.0.1
with OS-assigned ports, stopped by pid in fixture teardown.

Covered: produce with every acks mode and read back; consumer start positions; kill -9 of the
SPU under a producer (and under a consumer); bad input on the SPU port, each in its own test,
each checking that the SPU stays up and that nothing stored is lost; a consumer that never
reads; and the ``kolk`` CLI with a local cluster in a temporary ``KOLK_HOME``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from collections import Counter
from typing import Any

import crc32c
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dataplane_cluster import (  # noqa: E402
    DataPlaneCluster,
    by_partition,
    open_fds,
    pid_gone,
    raw_spu,
    read_all,
    release_consumer,
    rss_bytes,
    run_async,
    wait_committed,
    wait_until,
)
from jepsen.cluster import wait_for  # noqa: E402
from kolk.client.client import AsyncClient  # noqa: E402
from kolk.client.consumer import Offset  # noqa: E402
from kolk.protocol.errors import (  # noqa: E402
    InvalidRequestError,
    KolkError,
    NotFoundError,
)
from kolk.protocol.channel import CallRejected  # noqa: E402
from kolk.protocol.channel_client import ClientConnection, ClientStream  # noqa: E402
from kolk.protocol.framing import FrameDecoder, Kind, encode_frame  # noqa: E402
from kolk.protocol.limits import FRAME_BODY_BYTES_MAX  # noqa: E402
from kolk.protocol.messages import decode, encode, which  # noqa: E402
from kolk.segments import build_batch  # noqa: E402
from kolk.protocol.errors import OffsetOutOfRangeError  # noqa: E402
from kolk.protocol.wire import schema, transport_error  # noqa: E402

MIB = 1 << 20
PRODUCE_BYTES_MAX = 16 * MIB  # SpuConfig.produce_bytes_max
BATCH_BYTES_MAX = 4 * MIB  # LogConfig.batch_bytes_max


# -------------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    """One SC and one SPU shared by the tests that do not kill anything; each uses its own topic."""
    c = DataPlaneCluster(str(tmp_path_factory.mktemp("dataplane")), spus=1)
    try:
        c.start()
        yield c
    finally:
        c.close()


@pytest.fixture
def own_cluster(tmp_path):
    """A fresh SC and SPU for a test that kills the SPU."""
    c = DataPlaneCluster(str(tmp_path / "own"), spus=1)
    try:
        c.start()
        yield c
    finally:
        c.close()


SEED = [(f"seed-key-{i}".encode() if i % 3 else None, f"seed-value-{i}".encode()) for i in range(40)]


async def seed(c: AsyncClient, topic: str, partitions: int = 2) -> list[tuple[int, int, bytes | None, bytes | None]]:
    """Create ``topic`` and store SEED in it with acks=all; return (partition, offset, key, value)."""
    await c.create_topic(topic, partitions)
    p = c.producer(topic, acks="all", partitioner="round_robin")
    futures = [(k, v, await p.send(v, k)) for k, v in SEED]
    await p.flush()
    out = []
    for k, v, f in futures:
        md = await f
        out.append((md.partition, md.offset, k, v))
    return sorted(out, key=lambda r: (r[0], r[1]))


async def assert_intact(cluster: DataPlaneCluster, topic: str,
                        expected: list[tuple[int, int, bytes | None, bytes | None]]) -> None:
    """The SC and SPU processes still run; a new client reads back exactly ``expected`` and can
    still produce and read a new record."""
    assert all(s.alive for s in cluster.spus.values()), "an SPU died\n" + cluster.logs()
    assert all(n.alive for n in cluster.sc.nodes.values()), "the SC died\n" + cluster.logs()
    c = cluster.client()
    try:
        got = await read_all(c, topic)
        assert [(r.partition, r.offset, r.key, r.value) for r in sorted(got, key=lambda r: (r.partition, r.offset))] \
            == expected
        p = c.producer(topic, acks="all")
        md = await (await p.send(b"still-serving", b"after", partition=0))
        got = await read_all(c, topic, partition=0, start=Offset.absolute(md.offset))
        assert [(r.offset, r.key, r.value) for r in got] == [(md.offset, b"after", b"still-serving")]
    finally:
        await c.close()


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def open_raw_stream(spu: ClientConnection, topic: str, partition: int, offset: int,
                          window: int = 64 << 10) -> tuple[Any, ClientStream]:
    """A raw ``stream`` call on an SPU connection, committed isolation: (response, stream).
    Nothing grants the window back until the caller takes a push with ``stream.next()``."""
    return await spu.open_stream("stream", window, 5, topic=topic, partition=partition, offset=offset,
                                 isolation="committed")


def received(stream: ClientStream) -> int:
    """Push body bytes a stream has received and not granted back (its pushes not taken)."""
    return stream._outstanding


def largest_pending(stream: ClientStream) -> int:
    """The body size of the largest push waiting in ``stream`` (0 when none waits)."""
    return max((len(body) for body in stream._items), default=0)


# -------------------------------------------------------------------- 1. produce and consume


def make_record(label: str, i: int, base_ts: int) -> tuple[Any, ...]:
    """(key, value, headers, timestamp, partition) covering nulls, empties, binary and headers."""
    key = None if i % 5 == 0 else f"{label}-key-{i}".encode()
    if i % 17 == 3:
        value = None
    elif i % 17 == 4:
        value = b""
    else:
        value = f"{label}-{i}|".encode() + bytes((i * 7 + j) % 256 for j in range(i % 300))
    if i % 3 == 0:
        headers: list[tuple[str, bytes | None]] = []
    elif i % 3 == 1:
        headers = [("h", b"1"), ("h", b"2"), ("null", None), ("ünïcode", "välue".encode())]
    else:
        headers = [("bin", bytes([0, 255, i % 256])), ("empty", b"")]
    timestamp = base_ts + i if i % 2 == 0 else None
    partition = i % 2 if label == "leader" else None
    return key, value, headers, timestamp, partition


def test_produce_with_every_acks_mode_and_read_back_exactly_once(cluster: DataPlaneCluster) -> None:
    """Three async producers (acks=all with the key partitioner, acks=leader with explicit
    partitions and gzip, acks=none round robin) write one 2-partition topic with null keys and
    values, empty values, binary bytes, repeated, null and unicode headers, explicit and default
    timestamps. Reading from the beginning with stop_at_end returns every record exactly once,
    at the partition and offset its future reported, in send order per producer and partition,
    with key, value, headers and timestamp intact."""
    topic = "roundtrip"
    n = 120

    async def body() -> None:
        c = cluster.client()
        await c.create_topic(topic, 2)
        await c.offsets(topic, 0)  # connect to the SPU first: see test_fresh_producer_keeps_send_order
        base_ts = now_ms() - 60_000
        expected: dict[tuple[int, int], tuple[str, int, Any, Any, tuple, int | None, int, int]] = {}
        for label, options in (("all", {"acks": "all"}),
                               ("leader", {"acks": "leader", "compression": "gzip"}),
                               ("none", {"acks": "none", "partitioner": "round_robin"})):
            p = c.producer(topic, linger_ms=1, batch_bytes=8 << 10, **options)
            t0 = now_ms()
            sent = []
            for i in range(n):
                key, value, headers, ts, part = make_record(label, i, base_ts)
                sent.append((i, key, value, headers, ts, part, await p.send(value, key, headers=headers,
                                                                             partition=part, timestamp=ts)))
            await p.close()
            t1 = now_ms()
            for i, key, value, headers, ts, part, fut in sent:
                md = await fut
                assert md.topic == topic
                if part is not None:
                    assert md.partition == part
                elif label == "all" and key is not None:
                    assert md.partition == crc32c.crc32c(key) % 2, "the key partitioner is crc32c(key) % count"
                assert (md.partition, md.offset) not in expected, f"offset {md} reported twice"
                expected[(md.partition, md.offset)] = (label, i, key, value, tuple(headers), ts, t0, t1)

        got = await read_all(c, topic)
        offsets = [(r.partition, r.offset) for r in got]
        assert len(offsets) == len(set(offsets)) == 3 * n, "every record exactly once"
        assert set(offsets) == set(expected)
        for part, records in by_partition(got).items():
            assert [r.offset for r in records] == list(range(len(records))), f"partition {part} in offset order"
        for r in got:
            label, i, key, value, headers, ts, t0, t1 = expected[(r.partition, r.offset)]
            assert (r.key, r.value, r.headers) == (key, value, headers), f"{label} record {i}"
            if ts is not None:
                assert r.timestamp == ts, f"{label} record {i}: explicit timestamp kept"
            else:
                assert t0 <= r.timestamp <= t1, f"{label} record {i}: default timestamp is the send time"
        # In send order: per producer and partition, offsets grow with the sequence number.
        for label in ("all", "leader", "none"):
            for part in (0, 1):
                seqs = [expected[(r.partition, r.offset)][1] for r in got
                        if r.partition == part and expected[(r.partition, r.offset)][0] == label]
                assert seqs == sorted(seqs), f"acks={label} partition {part} out of send order"
        await c.close()

    run_async(body)


def test_fresh_producer_keeps_send_order(cluster: DataPlaneCluster) -> None:
    """core/client/producer.py: 'records of one partition are sent in order, up to in_flight_max
    requests at a time on one connection, which the SPU appends in arrival order' — with no
    fault and no retry, a producer on a new client stores records in the order they were sent,
    from its very first batches (twenty fresh clients, one batch per record)."""
    async def body() -> None:
        reordered = []
        for trial in range(20):
            c = cluster.client()
            topic = f"send-order-{trial}"
            await c.create_topic(topic, 1)
            p = c.producer(topic, acks="all", linger_ms=0)
            futures = [await p.send(b"%d" % i) for i in range(12)]
            await p.close()
            offsets = [(await f).offset for f in futures]
            if offsets != sorted(offsets):
                reordered.append(offsets)
            got = await read_all(c, topic)
            assert sorted(r.value for r in got) == sorted(b"%d" % i for i in range(12))
            await c.close()
        assert not reordered, f"{len(reordered)} of 20 fresh producers stored records out of send order, " \
                              f"e.g. offsets by send order {reordered[0]}"

    run_async(body)


def test_send_all_stores_every_record_in_order_with_its_acknowledged_offset(cluster: DataPlaneCluster) -> None:
    """AsyncProducer.send_all: 2,500 records in calls of 1,000 over batches of 16 KiB, keyed
    to one partition of three, acks=all and idempotent; every record is read back once, in
    call order, at the offset its metadata gave, with the call's key."""
    async def body() -> None:
        c = cluster.client()
        await c.create_topic("send-all", 3)
        p = c.producer("send-all", batch_bytes=16 << 10)
        values = [b"v%04d" % i for i in range(2500)]
        sent = [await p.send_all(values[i:i + 1000], key=b"k") for i in range(0, 2500, 1000)]
        await p.flush()
        metas = [m for s in sent for m in await s]
        assert [len(s) for s in sent] == [1000, 1000, 500] and len({m.partition for m in metas}) == 1
        part = metas[0].partition
        assert [m.offset for m in metas] == list(range(2500))
        got = await read_all(c, "send-all", partition=part)
        assert [(r.offset, r.key, r.value) for r in got] == [(i, b"k", v) for i, v in enumerate(values)]
        await p.close()
        await c.close()
    run_async(body)


def test_consumer_start_positions(cluster: DataPlaneCluster) -> None:
    """A consumer starts where asked: the beginning, the end (nothing old, then what arrives
    later), an absolute offset (past the log end: an error), N from the end, and the first record at
    or after a timestamp — for one partition or for all."""
    topic = "positions"
    per_partition = 20

    async def body() -> None:
        c = cluster.client()
        await c.create_topic(topic, 2)
        t0 = now_ms() - 100_000
        p = c.producer(topic, acks="all")
        for i in range(per_partition):
            for part in (0, 1):
                await p.send(f"p{part}-{i}".encode(), partition=part, timestamp=t0 + 100 * i)
        await p.close()

        async def values(**kw: Any) -> list[tuple[int, int, bytes]]:
            return [(r.partition, r.offset, r.value) for r in await read_all(c, topic, **kw)]

        def expect(parts: tuple[int, ...], first: int) -> list[tuple[int, int, bytes]]:
            return [(q, i, f"p{q}-{i}".encode()) for q in parts for i in range(first, per_partition)]

        assert sorted(await values(start=Offset.beginning())) == expect((0, 1), 0)
        assert await values(start=Offset.end()) == []
        assert sorted(await values(start=Offset.absolute(5))) == expect((0, 1), 5)
        assert await values(partition=1, start=Offset.absolute(13)) == expect((1,), 13)
        with pytest.raises(OffsetOutOfRangeError, match="offset 10000 is past the end of positions-0"):
            await values(partition=0, start=Offset.absolute(10_000))
        assert await values(partition=1, start=Offset.from_end(3)) == expect((1,), per_partition - 3)
        assert sorted(await values(start=Offset.from_end(1000))) == expect((0, 1), 0)
        assert await values(partition=0, start=Offset.from_end(0)) == []
        assert sorted(await values(start=Offset.timestamp(t0 + 100 * 7 + 50))) == expect((0, 1), 8)
        assert await values(partition=0, start=Offset.timestamp(t0 + 100 * 4)) == expect((0,), 4)
        assert sorted(await values(start=Offset.timestamp(t0 - 1))) == expect((0, 1), 0)
        assert await values(start=Offset.timestamp(now_ms() + 3_600_000)) == []
        with pytest.raises(InvalidRequestError, match="absolute offset"):
            Offset.absolute(-1)
        with pytest.raises(InvalidRequestError, match="from_end"):
            Offset.from_end(-1)

        # From the end, following: only records produced after the consumer started.
        consumer = c.consumer(topic, start=Offset.end())
        got: list[Any] = []

        async def follow() -> None:
            async for r in consumer:
                got.append(r)
        task = asyncio.ensure_future(follow())
        markers: list[bytes] = []

        async def produce_marker() -> bool:
            v = f"marker-{len(markers)}".encode()
            markers.append(v)
            await (await p2.send(v, partition=len(markers) % 2))
            return bool(got)
        p2 = c.producer(topic, acks="all", linger_ms=0)
        try:
            await wait_until(produce_marker, 20, "the end consumer to see a new record")
            last = [f"last-{q}".encode() for q in (0, 1)]
            for q in (0, 1):
                await (await p2.send(last[q], partition=q))
            await wait_until(lambda: {r.value for r in got} >= set(last), 20, "the last markers")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await release_consumer(consumer)
        values_seen = [r.value for r in got]
        assert all(v in markers or v in last for v in values_seen), "nothing from before the consumer started"
        assert len(values_seen) == len(set(values_seen)), "exactly once"
        for q, records in by_partition(got).items():
            offs = [r.offset for r in records]
            assert offs == list(range(offs[0], offs[0] + len(offs))), f"partition {q}: no gaps"
            assert offs[0] >= per_partition
            assert records[-1].value == last[q]
        await c.close()

    run_async(body)


CLOSE_SCRIPT = r"""
import gc, sys
from kolk.client.admin import run
from kolk.client.client import AsyncClient

sc, topic, expected = sys.argv[1], sys.argv[2], int(sys.argv[3])

async def main():
    for i in range(40):
        ballast = [{} for _ in range(53 * i)]  # moves where the collector's automatic passes fall
        client = AsyncClient(sc)
        consumer = client.consumer(topic, stop_at_end=True)
        got = [r async for r in consumer]
        assert len(got) == expected, len(got)
        await consumer.close()
        await client.close()
        del consumer, client, ballast
        gc.collect()  # what the collector does on its own, sooner or later, in a long-running program
    print("consumed and closed 40 times")

run(main)
"""


def test_closed_consumers_do_not_crash_the_client(cluster: DataPlaneCluster, tmp_path) -> None:
    """A client process that reads a topic to the end forty times, each time with a new
    AsyncClient and consumer that it closes and drops, exits normally: releasing a closed
    consumer through Python's garbage collector (a full gc.collect() after each round, so the
    consumer, its partition streams and its SPU connections are freed during a collector pass)
    must not crash the process or make it hang. The SPU stays up and data is intact."""
    topic = "closed-consumers"
    script = tmp_path / "consume_and_close.py"
    script.write_text(CLOSE_SCRIPT)

    async def body() -> list[tuple[int, int, bytes | None, bytes | None]]:
        c = cluster.client()
        expected = await seed(c, topic, partitions=1)
        await c.close()
        return expected
    expected = run_async(body)
    proc = subprocess.run([sys.executable, str(script), ",".join(cluster.sc_addresses), topic, str(len(expected))],
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, (f"the client process exited with status {proc.returncode} "
                                  f"({'SIGSEGV' if proc.returncode == -signal.SIGSEGV else 'error'})\n"
                                  + proc.stderr[-2000:])
    assert "consumed and closed 40 times" in proc.stdout

    async def check() -> None:
        await assert_intact(cluster, topic, expected)
    run_async(check)


# -------------------------------------------------------------------- 2. kill -9 under load


def test_spu_kill_9_under_acks_all_producer_loses_no_acknowledged_record(own_cluster: DataPlaneCluster) -> None:
    """A producer writes continuously with acks=all to a 2-partition topic; the SPU is killed
    with SIGKILL mid-stream and restarted on the same data dir and port while the producer's
    retries go on. Every record acknowledged (before or after the kill) is read back at the
    partition and offset it was acknowledged with; offsets have no gaps; no send fails; only a
    record whose produce was in flight at the kill may appear twice (core/client/producer.py: a retry
    can duplicate); records acknowledged before the kill and records sent after the restart
    appear exactly once, and those acknowledged before the kill in send order per partition."""
    cluster = own_cluster
    topic = "kill9"
    window = 200

    async def body() -> None:
        c = cluster.client()
        await c.create_topic(topic, 2)
        await c.offsets(topic, 0)  # connect to the SPU first: see test_fresh_producer_keeps_send_order
        producer = c.producer(topic, acks="all", linger_ms=2, retries=20)
        acked: dict[bytes, tuple[int, int]] = {}
        failed: dict[bytes, str] = {}
        sent: list[bytes] = []
        outstanding: set[bytes] = set()
        progress = asyncio.Event()
        stop = asyncio.Event()
        trackers: set[asyncio.Task[Any]] = set()

        async def track(v: bytes, fut: Any) -> None:
            try:
                md = await fut
                acked[v] = (md.partition, md.offset)
            except KolkError as e:
                failed[v] = repr(e)
            finally:
                outstanding.discard(v)
                progress.set()

        async def produce_loop() -> None:
            i = 0
            while not stop.is_set():
                while len(outstanding) >= window and not stop.is_set():
                    progress.clear()
                    await progress.wait()
                v = b"v%07d" % i
                fut = await producer.send(v, partition=i % 2)
                sent.append(v)
                outstanding.add(v)
                t = asyncio.ensure_future(track(v, fut))
                trackers.add(t)
                t.add_done_callback(trackers.discard)
                i += 1
                if i % 20 == 0:
                    await asyncio.sleep(0)  # let the producer's tasks run between bursts

        loop_task = asyncio.ensure_future(produce_loop())
        await wait_until(lambda: len(acked) >= 1500 or loop_task.done(), 60, "1500 acknowledged records")
        # Nothing runs on this loop between the snapshot and the kill.
        sent_before_kill = set(sent)
        acked_before_kill = dict(acked)
        cluster.kill_spu(1)
        cluster.launch_spu(1)
        await cluster.wait_spu_ready(1)
        sent_before_restart = len(sent)
        target = len(acked) + 1500
        await wait_until(lambda: len(acked) >= target or loop_task.done(), 60, "1500 more acknowledged records")
        stop.set()
        progress.set()
        await loop_task
        await producer.close()
        await wait_until(lambda: not outstanding, 60, "every send to be answered")
        sent_after_restart = sent[sent_before_restart:]

        assert failed == {}, f"sends failed although the SPU came back: {list(failed.items())[:3]}"
        assert len(acked) == len(sent)
        got = await read_all(c, topic)
        at = {(r.partition, r.offset): r.value for r in got}
        assert len(at) == len(got)
        for q, records in by_partition(got).items():
            assert [r.offset for r in records] == list(range(len(records))), f"partition {q}: gaps or repeats"
        lost = [(v, po) for v, po in acked.items() if at.get(po) != v]
        assert not lost, f"acknowledged records not at their offsets: {lost[:5]}"
        counts = Counter(r.value for r in got)
        in_flight_at_kill = sent_before_kill - set(acked_before_kill)
        assert in_flight_at_kill, "the kill came while sends were in flight"
        bad_dups = [v for v, k in counts.items() if k > 1 and v not in in_flight_at_kill]
        assert not bad_dups, f"duplicated although not in flight at the kill: {bad_dups[:5]}"
        assert set(counts) == set(sent), "every stored record is one the producer sent"
        for group, name in (([v for v in sent if v in acked_before_kill], "acknowledged before the kill"),
                            (sent_after_restart, "sent after the restart")):
            assert all(counts[v] == 1 for v in group), f"records {name} appear exactly once"
        # Send order holds for what was acknowledged before the kill (one connection, no retry).
        # After the restart, concurrent reconnects open several connections (the race that
        # test_fresh_producer_keeps_send_order shows), so order is not checked there.
        for q in (0, 1):
            offs = [acked[v][1] for v in sent if v in acked_before_kill and acked[v][0] == q]
            assert offs == sorted(offs), f"records acknowledged before the kill are in send order in partition {q}"
        assert len(sent_after_restart) > 0 and len(acked_before_kill) >= 1500
        await c.close()

    run_async(body)


def test_live_consumer_follows_spu_restart(own_cluster: DataPlaneCluster) -> None:
    """A consumer following a partition on its own client keeps going when the SPU is killed
    with SIGKILL and restarted on the same address (core/client/consumer.py: 'When the stream breaks
    ... the consumer asks the SC for the new leader and resumes at the next offset'): it gets
    every record produced after the restart, exactly once and in order."""
    cluster = own_cluster
    topic = "follow"

    async def body() -> None:
        producer_client = cluster.client()
        consumer_client = cluster.client()
        await producer_client.create_topic(topic, 1)
        p = producer_client.producer(topic, acks="all")
        before = [f"before-{i}".encode() for i in range(50)]
        after = [f"after-{i}".encode() for i in range(50)]
        for v in before:
            await p.send(v)
        await p.flush()
        consumer = consumer_client.consumer(topic)
        got: list[Any] = []

        async def follow() -> None:
            async for r in consumer:
                got.append(r)
        task = asyncio.ensure_future(follow())
        try:
            await wait_until(lambda: len(got) >= len(before), 20, "the consumer to read the first records")
            cluster.kill_spu(1)
            cluster.launch_spu(1)
            await cluster.wait_spu_ready(1)
            for v in after:
                await p.send(v)
            await p.flush()
            await wait_until(lambda: len(got) >= len(before) + len(after) or task.done(), 8,
                             lambda: f"the consumer to resume after the SPU restart (has {len(got)} of "
                                     f"{len(before) + len(after)} records)")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await release_consumer(consumer)
        assert [r.value for r in got] == before + after
        assert [r.offset for r in got] == list(range(len(got)))
        await producer_client.close()
        await consumer_client.close()

    run_async(body)


# -------------------------------------------------------------------- 3. bad input


def test_unknown_topic_producer(cluster: DataPlaneCluster) -> None:
    """Producing to a topic that does not exist fails with NotFoundError naming the topic, from
    the producer and from AsyncClient.produce; the SPU stays up and stored data is intact."""
    async def body() -> None:
        c = cluster.client()
        expected = await seed(c, "unknown-topic-producer")
        p = c.producer("no-such-topic")
        with pytest.raises(NotFoundError, match="topic no-such-topic does not exist"):
            await p.send(b"x")
        with pytest.raises(NotFoundError, match="topic no-such-topic does not exist"):
            await c.produce("no-such-topic", 0, build_batch([(None, b"x")]))
        await assert_intact(cluster, "unknown-topic-producer", expected)
        await c.close()

    run_async(body)


def test_unknown_topic_consumer(cluster: DataPlaneCluster) -> None:
    """Consuming a topic that does not exist fails with NotFoundError naming the topic; the SPU
    answers a raw stream request for it with notFound; the SPU stays up and data is intact."""
    async def body() -> None:
        c = cluster.client()
        expected = await seed(c, "unknown-topic-consumer")
        consumer = c.consumer("no-such-topic", stop_at_end=True)
        with pytest.raises(NotFoundError, match="topic no-such-topic does not exist"):
            [r async for r in consumer]
        spu = await raw_spu(cluster.spus[1].address)
        r, stream = await open_raw_stream(spu, "no-such-topic", 0, 0, 1 << 16)
        assert not r.result.ok and r.result.error.code == "notFound"
        assert "no-such-topic-0" in r.result.error.message
        stream.close()
        spu.close()
        await assert_intact(cluster, "unknown-topic-consumer", expected)
        await c.close()

    run_async(body)


def test_unknown_partition_producer(cluster: DataPlaneCluster) -> None:
    """An explicit partition outside 0..count-1 is refused before anything is sent: the producer
    and AsyncClient.produce raise InvalidRequestError, both saying which
    partitions exist; a raw produce to the SPU is refused and names the partition. Nothing is
    appended; the SPU stays up and data is intact."""
    topic = "unknown-partition-producer"

    async def body() -> None:
        c = cluster.client()
        expected = await seed(c, topic)
        p = c.producer(topic)
        for bad in (2, 99, -1):
            with pytest.raises(InvalidRequestError, match=f"has partitions 0-1, not {bad}"):
                await p.send(b"x", partition=bad)
        with pytest.raises(InvalidRequestError, match="has partitions 0-1, not 2"):
            await c.produce(topic, 2, build_batch([(None, b"x")]))
        spu = await raw_spu(cluster.spus[1].address)
        r = await spu.call("produce", 10, topic=topic, partition=7, acks="all", records=build_batch([(None, b"x")]),
                           timeoutMs=5000)
        assert not r.result.ok
        assert f"{topic}-7" in r.result.error.message
        spu.close()
        await p.close()
        await assert_intact(cluster, topic, expected)
        await c.close()

    run_async(body)


def test_unknown_partition_consumer(cluster: DataPlaneCluster) -> None:
    """A consumer of a partition outside 0..count-1 fails with InvalidRequestError saying which
    partitions exist; a raw stream request for it is refused; the SPU stays up, data intact."""
    topic = "unknown-partition-consumer"

    async def body() -> None:
        c = cluster.client()
        expected = await seed(c, topic)
        consumer = c.consumer(topic, partition=5, stop_at_end=True)
        with pytest.raises(InvalidRequestError, match="has partitions 0-1, not 5"):
            [r async for r in consumer]
        with pytest.raises(InvalidRequestError, match="has partitions 0-1, not 5"):
            await c.fetch(topic, 5, 0)
        spu = await raw_spu(cluster.spus[1].address)
        r, stream = await open_raw_stream(spu, topic, 5, 0, 1 << 16)
        assert not r.result.ok and f"{topic}-5" in r.result.error.message
        stream.close()
        spu.close()
        await assert_intact(cluster, topic, expected)
        await c.close()

    run_async(body)


def test_oversized_produce_request_is_refused_as_too_large(cluster: DataPlaneCluster) -> None:
    """A raw produce whose records (valid batches) add up to more than produce_bytes_max
    (16 MiB) is refused with code tooLarge, not retriable, naming both sizes — whether its frame
    fits the transport's frame limit (the request is bounded before any handler sees it) or not
    (the frame is skipped unread); the client maps it to InvalidRequestError. The connection goes
    on serving, nothing is appended; the SPU stays up and data is intact."""
    topic = "oversized"

    async def body() -> None:
        c = cluster.client()
        expected = await seed(c, topic)
        one = build_batch([(None, b"x" * (3 * MIB + MIB // 2))])
        # Just over 16 MiB, in a frame under the frame limit; and 17.5 MiB, over it.
        just_over = one * 4 + build_batch([(None, b"y" * (PRODUCE_BYTES_MAX - 4 * len(one)))])
        assert PRODUCE_BYTES_MAX < len(just_over) < FRAME_BODY_BYTES_MAX - (16 << 10)
        over_frame = one * 5
        assert len(over_frame) > FRAME_BODY_BYTES_MAX
        spu = await raw_spu(cluster.spus[1].address)
        address = cluster.spus[1].address
        before = await c.offsets(topic, 0)
        for records, limit in ((just_over, PRODUCE_BYTES_MAX), (over_frame, FRAME_BODY_BYTES_MAX)):
            with pytest.raises(CallRejected) as info:
                await spu.call("produce", 30, topic=topic, partition=0, acks="all", records=records,
                               timeoutMs=10_000)
            error = info.value.error
            assert error.code == "tooLarge", error
            assert not error.retriable
            # Both sizes: the request's (its records, or the whole frame body around them) and the limit.
            size = re.search(r"(\d+) bytes", error.message)
            assert size and len(records) <= int(size.group(1)) < len(records) + 1024, error.message
            assert f"more than the limit of {limit}" in error.message, error.message
            mapped = transport_error(info.value, address, write=True)
            assert isinstance(mapped, InvalidRequestError) and not mapped.retriable and not mapped.outcome_unknown
            assert f"more than the limit of {limit}" in str(mapped)
            r = await spu.call("offsets", 10, topic=topic, partition=0)
            assert r.result.ok, "the connection still serves after the refusal"
        spu.close()
        assert await c.offsets(topic, 0) == before, "nothing appended"
        await assert_intact(cluster, topic, expected)
        await c.close()

    run_async(body)


def test_oversized_records_through_the_producer(cluster: DataPlaneCluster) -> None:
    """Through the producer, a record bigger than one batch may be (4 MiB) and a record bigger
    than one request may be (16 MiB) are refused by send() at once with InvalidRequestError
    naming the limit; nothing is queued; the SPU stays up and data is intact."""
    topic = "oversized-producer"

    async def body() -> None:
        c = cluster.client()
        expected = await seed(c, topic)
        p = c.producer(topic, retries=0)
        with pytest.raises(InvalidRequestError, match=r"more than the largest batch an SPU accepts"):
            await p.send(b"b" * (BATCH_BYTES_MAX + 1), partition=0)
        with pytest.raises(InvalidRequestError, match="more than the largest batch an SPU accepts"):
            await p.send(b"r" * (PRODUCE_BYTES_MAX + 1), partition=0)
        with pytest.raises(InvalidRequestError, match="more than the SPU accepts"):
            await c.produce(topic, 0, b"x" * (PRODUCE_BYTES_MAX + 1))
        await p.close()
        await assert_intact(cluster, topic, expected)
        await c.close()

    run_async(body)


def test_record_beyond_the_rpc_message_limit_is_refused_as_too_large(cluster: DataPlaneCluster) -> None:
    """A record of 70 MiB, more than one frame of the transport may carry (16 MiB + 64 KiB), fails
    its future at once with InvalidRequestError saying it is too large — not, after retries, with a
    retriable ClusterUnavailableError about a failed connection. The SPU stays up, data intact."""
    topic = "oversized-rpc"

    async def body() -> None:
        c = cluster.client()
        expected = await seed(c, topic)
        p = c.producer(topic, retries=3)
        with pytest.raises(KolkError) as info:
            await (await p.send(b"z" * (70 * MIB), partition=0))
        assert isinstance(info.value, InvalidRequestError) and not info.value.retriable, \
            f"got {type(info.value).__name__} (retriable={info.value.retriable}): {str(info.value)[:300]}"
        assert "large" in str(info.value)
        await p.close()
        await assert_intact(cluster, topic, expected)
        await c.close()

    run_async(body)


def corrupt(batch: bytes, at: int) -> bytes:
    b = bytearray(batch)
    b[at] ^= 0x5A
    return bytes(b)


def test_batch_with_bad_crc_is_refused(cluster: DataPlaneCluster) -> None:
    """A raw produce of a build_batch output with one byte flipped (in a record, in the
    producer id, in the base sequence) is answered with code invalidBatch whose message mentions the
    CRC; a request whose second batch is bad appends neither. The SPU stays up, data intact."""
    topic = "bad-crc"

    async def body() -> None:
        c = cluster.client()
        expected = await seed(c, topic)
        good = build_batch([(b"k", b"v" * 100), (None, b"w" * 50)], first_timestamp=now_ms())
        spu = await raw_spu(cluster.spus[1].address)
        before = await c.offsets(topic, 0)
        # A record's value, the producer id, the base sequence: bytes only the CRC protects.
        # (A flip in a field the header checks look at, such as first_timestamp, is refused
        # for that field first: segments/batch.py validates header fields, length, then CRC.)
        for at in (len(good) - 10, 44, 55):
            r = await spu.call("produce", 10, topic=topic, partition=0, acks="all", records=corrupt(good, at),
                               timeoutMs=5000)
            assert not r.result.ok
            assert r.result.error.code == "invalidBatch", r.result.error.message
            assert "CRC" in r.result.error.message
            assert not r.result.error.retriable
        r = await spu.call("produce", 10, topic=topic, partition=0, acks="all",
                           records=good + corrupt(good, len(good) - 1), timeoutMs=5000)
        assert not r.result.ok and r.result.error.code == "invalidBatch"
        assert "CRC" in r.result.error.message and f"batch at byte {len(good)}" in r.result.error.message
        with pytest.raises(KolkError, match="CRC") as info:
            await c.produce(topic, 0, corrupt(good, len(good) - 10))
        assert info.value.code == "invalidBatch" and not info.value.retriable
        spu.close()
        assert await c.offsets(topic, 0) == before, "nothing appended"
        await assert_intact(cluster, topic, expected)
        await c.close()

    run_async(body)


def test_invalid_batch_is_an_invalid_request_error(cluster: DataPlaneCluster) -> None:
    """The client raises InvalidRequestError ('the request is malformed ...; fix it before
    retrying', kolk.protocol.errors) for an invalidBatch answer, as it does for tooLarge: a caller that
    catches InvalidRequestError must not miss a corrupt batch. The SPU stays up, data intact."""
    topic = "invalid-batch-class"

    async def body() -> None:
        c = cluster.client()
        expected = await seed(c, topic)
        bad = corrupt(build_batch([(b"k", b"v" * 100)]), 70)
        with pytest.raises(KolkError, match="CRC") as info:
            await c.produce(topic, 0, bad)
        assert isinstance(info.value, InvalidRequestError), \
            f"invalidBatch raised {type(info.value).__name__}, not InvalidRequestError"
        await assert_intact(cluster, topic, expected)
        await c.close()

    run_async(body)


def read_until_closed(sock: socket.socket, timeout_s: float = 10.0) -> bytes:
    """Everything the server sends until it closes the connection (fails after the deadline)."""
    sock.settimeout(timeout_s)
    out = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return out
        except socket.timeout:
            raise AssertionError(f"the SPU kept the connection open for {timeout_s} s after garbage") from None
        if not chunk:
            return out
        out += chunk


def test_garbage_bytes_on_the_spu_port(cluster: DataPlaneCluster) -> None:
    """Bytes that are not Kolk's framing on the SPU port (an HTTP request, random bytes, a bare
    Cap'n Proto segment table announcing a 1 GiB segment, which as a frame header has an unknown
    kind) make the SPU close that connection at once; the SPU stays up, a client connected before
    keeps working, and data is intact."""
    topic = "garbage"
    rng = random.Random(20240521)
    payloads = [b"GET / HTTP/1.1\r\nHost: kolk\r\n\r\n",
                bytes(rng.getrandbits(8) for _ in range(4096)),
                b"\x00\x00\x00\x00" + (1 << 27).to_bytes(4, "little") + b"\x00" * 64]

    async def body() -> None:
        c = cluster.client()
        expected = await seed(c, topic)
        spu = await raw_spu(cluster.spus[1].address)
        for payload in payloads:
            with socket.create_connection(("127.0.0.1", cluster.spus[1].port), timeout=5) as sock:
                sock.sendall(payload)
                read_until_closed(sock)
            assert cluster.spus[1].alive
        r = await spu.call("offsets", 10, topic=topic, partition=0)
        assert r.result.ok, "a connection opened before the garbage still works"
        spu.close()
        await assert_intact(cluster, topic, expected)
        await c.close()

    run_async(body)


class FramedSocket:
    """A bare TCP connection that speaks Kolk's framing by hand (framing.encode_frame and
    FrameDecoder), so a test can send request bodies no ClientConnection would build."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = FrameDecoder()
        self.frames: list[Any] = []
        self.next_id = 1

    @classmethod
    async def open(cls, port: int) -> "FramedSocket":
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def request(self, body: bytes, timeout_s: float = 10.0) -> tuple[str, Any]:
        """Send one REQUEST frame; its answer as (union member, member struct) of SpuResponse."""
        rid = self.next_id
        self.next_id += 1
        self.writer.write(encode_frame(Kind.REQUEST, rid, body))
        await self.writer.drain()
        async with asyncio.timeout(timeout_s):
            while True:
                for i, f in enumerate(self.frames):
                    if f.kind == Kind.RESPONSE and f.id == rid:
                        del self.frames[i]
                        answer = decode(schema.SpuResponse, f.body)
                        member = which(answer)
                        return member, getattr(answer, member)
                data = await self.reader.read(65536)
                assert data, "the SPU closed the connection instead of answering"
                self.frames.extend(self.decoder.feed(data))

    async def call(self, name: str, **fields: Any) -> Any:
        """A well-formed request ``name``; its response struct (fails on a rejected answer)."""
        env = schema.SpuRequest.new_message()
        member = env.init(name)
        for k, v in fields.items():
            setattr(member, k, v)
        got, out = await self.request(encode(env))
        assert got == name, f"a well-formed {name} was answered with {got}: {out}"
        return out

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


def with_discriminant(body: bytes, union: Any, value: int) -> bytes:
    """``body`` (a one-segment message whose root is a ``union`` struct) with the union's
    discriminant set to ``value``, which may be one the schema does not have."""
    b = bytearray(body)
    assert struct.unpack_from("<I", b, 0)[0] == 0, "one segment"
    root = struct.unpack_from("<Q", b, 8)[0]  # the root pointer, first word of the segment
    assert root & 3 == 0, "a struct pointer"
    offset = (root & 0xFFFFFFFF) >> 2
    if offset & (1 << 29):
        offset -= 1 << 30
    data = 8 + 8 + 8 * offset  # segment table, root pointer, then the struct's data section
    struct.pack_into("<H", b, data + 2 * union.schema.node.struct.discriminantOffset, value)
    return bytes(b)


def test_message_that_does_not_fit_the_schema(cluster: DataPlaneCluster) -> None:
    """Well-framed requests the SPU's schema does not describe: an SpuRequest whose union member
    is past the last one the SPU knows, an ScRequest meant for an SC (a member the SpuRequest
    union lacks), a body that is not a Cap'n Proto message, and a produce whose fields have the
    wrong types (an ScRequest.createTopic, whose list of KeyValue structs lands where a produce
    has its Data records). Each is answered with a ``rejected`` answer (unknownCall or
    malformed; the wrongly typed one malformed, naming the schema mismatch, which the client
    maps to InvalidRequestError), and the same connection then still serves a correct call
    each time; nothing is appended, the SPU stays up and data is intact."""
    topic = "schema-mismatch"

    async def body() -> None:
        c = cluster.client()
        expected = await seed(c, topic)
        stored = sum(1 for e in expected if e[0] == 0)
        sock = await FramedSocket.open(cluster.spus[1].port)

        async def still_serves() -> None:
            r = await sock.call("offsets", topic=topic, partition=0)
            assert r.result.ok and r.highWatermark == r.logEndOffset == stored

        members = len(schema.SpuRequest.schema.union_fields)
        assert members == 18, "nodeDiagnostics @17 is the last SpuRequest member"
        known = schema.SpuRequest.new_message()
        known.init("offsets").topic = topic
        known_body = known.to_bytes()
        beyond_last = with_discriminant(known_body, schema.SpuRequest, members)
        far_beyond = with_discriminant(known_body, schema.SpuRequest, 0xFFFF)
        for_an_sc = schema.ScRequest.new_message()
        for_an_sc.init("addPartitions").name = topic  # @18: past the SPU's last member (nodeDiagnostics @17)
        status = schema.ScRequest.new_message()
        status.init("erasureDone")  # @20: past the SPU's last member
        for bad in (beyond_last, far_beyond, for_an_sc.to_bytes(), status.to_bytes()):
            member, error = await sock.request(bad)
            assert member == "rejected", f"an unknown call was answered with {member}: {error}"
            assert error.code in ("unknownCall", "malformed"), error
            assert not error.retriable
            await still_serves()

        member, error = await sock.request(b"this is not a Cap'n Proto message")
        assert member == "rejected" and error.code == "malformed", (member, error)
        await still_serves()

        mistyped = schema.ScRequest.new_message()
        ct = mistyped.init("createTopic")  # @0, as produce is: name -> topic, config -> records
        ct.name = topic
        ct.partitions = 0
        ct.replicationFactor = 2  # acks = all
        ct.config = [{"key": "not", "value": "bytes"}, {"key": "a list of", "value": "structs"}]
        member, error = await sock.request(mistyped.to_bytes())
        assert member == "rejected", f"a produce with wrongly typed fields was answered with {member}: {error}"
        assert error.code == "malformed", f"a wrongly typed request is refused as {error.code}, not malformed: " \
                                          f"{error.message[:300]}"
        assert "Schema mismatch" in error.message and not error.retriable
        assert isinstance(transport_error(CallRejected(error), cluster.spus[1].address, write=True),
                          InvalidRequestError)
        await still_serves()
        await sock.close()
        await assert_intact(cluster, topic, expected)
        await c.close()

    run_async(body)


def test_client_disconnects_mid_stream(cluster: DataPlaneCluster) -> None:
    """Clients that open streams and drop the connection — one waiting for window (its window
    full), one caught up at the end — twenty times over: the SPU stays up, its open file
    descriptors come back to where they were, a consumer connected all along keeps receiving
    new records exactly once, and data is intact."""
    topic = "disconnect"

    async def body() -> None:
        c = cluster.client()
        expected = await seed(c, topic, partitions=1)
        filler = build_batch([(None, b"f" * 1000)] * 30)
        for _ in range(20):
            await c.produce(topic, 0, filler, acks=1)
        stored = (await wait_committed(c, topic))[0]
        snapshot = await current(c, topic)
        assert snapshot[:len(expected)] == expected and len(snapshot) == stored
        follower_client = cluster.client()
        follower = follower_client.consumer(topic, start=Offset.beginning(), window_bytes=64 << 10)
        got: list[Any] = []

        async def follow() -> None:
            async for r in follower:
                got.append(r)
        task = asyncio.ensure_future(follow())
        try:
            await wait_until(lambda: len(got) >= stored, 20, "the follower to read what is stored")
            pid = cluster.spus[1].pid
            fds_before = open_fds(pid)
            for _ in range(20):
                spu = await raw_spu(cluster.spus[1].address)
                r1, full = await open_raw_stream(spu, topic, 0, 0, 64 << 10)
                r2, caught_up = await open_raw_stream(spu, topic, 0, stored, 64 << 10)
                assert r1.result.ok and r2.result.ok
                # Never taken: the window fills and the SPU waits for credit on this stream.
                await wait_until(lambda: full.pending(), 10, "the first push")
                spu.close()  # the connection drops with both streams open
                del spu, r1, r2, full, caught_up
            new = [f"new-{i}".encode() for i in range(10)]
            p = c.producer(topic, acks="all")
            for v in new:
                await p.send(v)
            await p.close()
            await wait_until(lambda: len(got) >= stored + len(new), 20, "the follower to see new records")
            assert [r.value for r in got[stored:]] == new
            assert [r.offset for r in got] == list(range(len(got)))
            await wait_until(lambda: open_fds(pid) <= fds_before, 20,
                             lambda: f"the SPU's fds to return to {fds_before} (now {open_fds(pid)})")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await release_consumer(follower)
        await assert_intact(cluster, topic, snapshot + [(0, stored + i, None, v) for i, v in enumerate(new)])
        await follower_client.close()
        await c.close()

    run_async(body)


async def current(c: AsyncClient, topic: str) -> list[tuple[int, int, bytes | None, bytes | None]]:
    return [(r.partition, r.offset, r.key, r.value) for r in await read_all(c, topic)]


def test_consumer_that_never_reads_keeps_spu_memory_bounded(cluster: DataPlaneCluster) -> None:
    """A stream opened with a 64 KiB window that is never granted more, while ~50 MB are
    produced into its partition: the SPU's resident memory grows by less than 40 MB, the stalled
    stream got at most its window plus one batch, and another consumer reads all 50 MB."""
    topic = "stalled"
    batch = build_batch([(None, bytes(range(250)) * 4)] * 60)  # ~60 KiB, below the window
    request = batch * 16  # ~1 MiB per produce request
    requests = 52

    async def body() -> None:
        c = cluster.client()
        expected = await seed(c, topic, partitions=1)
        pid = cluster.spus[1].pid
        spu = await raw_spu(cluster.spus[1].address)
        window = 64 << 10
        r, stalled = await open_raw_stream(spu, topic, 0, 0, window)  # never takes a push: no credit back
        assert r.result.ok
        await c.produce(topic, 0, request, acks=1)  # warm up the produce path
        baseline = rss_bytes(pid)
        for _ in range(requests):
            await c.produce(topic, 0, request, acks=1)
        assert (requests + 1) * len(request) > 50 * 10**6
        grown = rss_bytes(pid) - baseline
        assert grown < 40 * MIB, f"SPU RSS grew by {grown / MIB:.1f} MiB"
        # At most the window plus one push: the window bound itself is
        # test_stream_never_pushes_more_than_the_window.
        assert stalled.pending() >= 1, "the stalled stream got its first push"
        assert received(stalled) <= window + largest_pending(stalled), \
            f"stalled stream got {received(stalled)} bytes in {stalled.pending()} pushes into a {window}-byte window"
        records = 0
        hw = (await wait_committed(c, topic))[0]
        consumer = c.consumer(topic, start=Offset.beginning(), stop_at_end=True)
        async for chunk in consumer.batches():
            records += len(chunk)
        await release_consumer(consumer)
        assert records == hw == len(SEED) + (requests + 1) * 16 * 60
        grown = rss_bytes(pid) - baseline
        assert grown < 40 * MIB, f"SPU RSS grew by {grown / MIB:.1f} MiB"
        assert received(stalled) <= window + largest_pending(stalled), "still within its window"
        stalled.close()
        spu.close()
        assert cluster.spus[1].alive
        got = await read_all(c, topic, partition=0, start=Offset.absolute(0))
        assert [(r.partition, r.offset, r.key, r.value) for r in got[:len(expected)]] == expected
        await c.close()

    run_async(body)


def test_stream_never_pushes_more_than_the_window(cluster: DataPlaneCluster) -> None:
    """kolk.capnp: 'the SPU pushes StreamPushes of whole batches while the consumer's credit
    (windowBytes, then CREDIT frames) has room', and the transport sends a push only while
    credit is positive, each push using up its size, so a consumer holds at most its window and
    one push. With 40 KiB batches, a 64 KiB window and a consumer that takes no
    push (so grants nothing back), the bytes received stay within the window and one push — not
    the five batches stored; once it takes pushes (each next() grants its bytes back) the SPU
    goes on, in whole batches, to the end of the log."""
    topic = "window"
    batch = build_batch([(None, b"w" * 1000)] * 40)
    assert 32 << 10 < len(batch) < 64 << 10
    window = 64 << 10
    stored = 5

    async def body() -> None:
        c = cluster.client()
        await c.create_topic(topic, 1)
        for _ in range(stored):
            await c.produce(topic, 0, batch, acks=1)
        await c.create_topic(topic + "-probe", 1)
        await c.produce(topic + "-probe", 0, build_batch([(None, b"probe")]), acks=1)
        spu = await raw_spu(cluster.spus[1].address)
        r, stream = await open_raw_stream(spu, topic, 0, 0, window)
        assert r.result.ok
        await wait_until(lambda: stream.pending(), 10, "the first push")
        # A probe stream on the same connection, opened after the first push arrived: the SPU
        # writes one connection's frames in order, so once the probe's push is here, a push the
        # stalled stream had credit for would be here too.
        r, probe = await open_raw_stream(spu, topic + "-probe", 0, 0, window)
        assert r.result.ok
        assert len((await probe.next(10)).records) > 0, "the probe stream's push"
        probe.close()
        assert received(stream) <= window + largest_pending(stream), \
            f"pushed {received(stream)} bytes in {stream.pending()} pushes into a {window}-byte window"
        assert received(stream) < stored * len(batch), "the SPU waits for credit"

        # Taking pushes grants their bytes back: the SPU goes on, whole batches at a time.
        next_offset = 0
        while next_offset < stored * 40:
            push = await stream.next(10)
            assert len(push.records) % len(batch) == 0, f"a push of {len(push.records)} bytes is not whole batches"
            assert push.nextOffset == next_offset + 40 * (len(push.records) // len(batch))
            next_offset = push.nextOffset
            assert received(stream) <= window + largest_pending(stream)
        assert next_offset == stored * 40
        stream.close()
        spu.close()
        await c.close()

    run_async(body)


# -------------------------------------------------------------------- 4. the CLI


def kolk_cli(home: str, *args: str, timeout_s: float = 60) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "KOLK_SC"}
    env["KOLK_HOME"] = home
    return subprocess.run([sys.executable, "-m", "kolk", *args], env=env, capture_output=True, text=True,
                          timeout=timeout_s, stdin=subprocess.DEVNULL)


def profile_pids(home: str) -> dict[str, int]:
    try:
        with open(os.path.join(home, "profile.json")) as f:
            return dict(json.load(f).get("pids", {}))
    except (OSError, ValueError):
        return {}


def stop_leftovers(home: str) -> None:
    """Teardown: kill, by pid, whatever a local cluster in ``home`` left running."""
    pids = profile_pids(home)
    for pid in pids.values():
        if not pid_gone(pid):
            os.kill(pid, signal.SIGKILL)
    wait_for(lambda: all(pid_gone(p) for p in pids.values()), 30, "leftover cluster processes to exit")


def test_second_cluster_start_is_refused(tmp_path) -> None:
    """'kolk cluster start' while a local cluster runs in the same KOLK_HOME exits with status 1
    and says a cluster is already running (and how to stop it); the running cluster is
    untouched: same pids, still serving, data intact. 'kolk cluster stop' then stops it."""
    home = str(tmp_path / "home")
    try:
        first = kolk_cli(home, "cluster", "start", "--spus", "1")
        assert first.returncode == 0, first.stderr
        pids = profile_pids(home)
        assert set(pids) == {"sc", "spu-1"}
        assert kolk_cli(home, "topic", "create", "kept", "-p", "1").returncode == 0
        src = tmp_path / "in.txt"
        src.write_text("one\ntwo\n")
        out = kolk_cli(home, "produce", "kept", "--file", str(src))
        assert out.returncode == 0, out.stderr

        second = kolk_cli(home, "cluster", "start", "--spus", "1")
        assert second.returncode == 1
        assert "already running" in second.stderr and "kolk cluster stop" in second.stderr, second.stderr
        assert profile_pids(home) == pids
        assert all(not pid_gone(p) for p in pids.values()), "the running cluster was disturbed"
        out = kolk_cli(home, "consume", "kept", "-B", "-d", "--output", "raw")
        assert out.returncode == 0, out.stderr
        assert out.stdout.splitlines() == ["one", "two"]

        stopped = kolk_cli(home, "cluster", "stop")
        assert stopped.returncode == 0, stopped.stderr
        wait_for(lambda: all(pid_gone(p) for p in pids.values()), 20, "the cluster's processes to exit")
    finally:
        stop_leftovers(home)


def test_cli_round_trip(tmp_path) -> None:
    """With a temporary KOLK_HOME: 'kolk cluster start --spus 2', 'kolk topic create',
    'kolk produce TOPIC --file F --key-separator :' and 'kolk consume TOPIC -B -d --output json'
    give every line back (key before the first ':', the rest as value, keys kept in order per
    partition); 'kolk cluster stop' stops every pid listed in $KOLK_HOME/profile.json."""
    home = str(tmp_path / "home")
    lines = [f"key-{i % 7}:value {i}" for i in range(300)]
    lines += ["a:b:c", "empty-value:", ":empty-key", "ünïcode:välue ✓", "spaces : both sides "]
    src = tmp_path / "records.txt"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    try:
        started = kolk_cli(home, "cluster", "start", "--spus", "2")
        assert started.returncode == 0, started.stderr
        assert "local cluster started" in started.stdout
        pids = profile_pids(home)
        assert set(pids) == {"sc", "spu-1", "spu-2"}
        assert all(not pid_gone(p) for p in pids.values())

        created = kolk_cli(home, "topic", "create", "cli-topic", "--partitions", "2")
        assert created.returncode == 0, created.stderr
        produced = kolk_cli(home, "produce", "cli-topic", "--file", str(src), "--key-separator", ":")
        assert produced.returncode == 0, produced.stderr
        assert f"produced {len(lines)} record(s) to cli-topic" in produced.stderr

        consumed = kolk_cli(home, "consume", "cli-topic", "-B", "-d", "--output", "json")
        assert consumed.returncode == 0, consumed.stderr
        records = [json.loads(line) for line in consumed.stdout.splitlines()]
        assert sorted((r["key"], r["value"]) for r in records) == sorted(tuple(line.split(":", 1)) for line in lines)
        assert {r["partition"] for r in records} == {0, 1}
        for q in (0, 1):
            mine = [r for r in records if r["partition"] == q]
            assert [r["offset"] for r in mine] == list(range(len(mine)))
            order = [f"{r['key']}:{r['value']}" for r in mine]
            assert order == [line for line in lines if line in set(order)], f"partition {q} in file order"

        stopped = kolk_cli(home, "cluster", "stop")
        assert stopped.returncode == 0, stopped.stderr
        assert "local cluster stopped" in stopped.stdout
        wait_for(lambda: all(pid_gone(p) for p in pids.values()), 20, "every pid in profile.json to exit")
        with open(os.path.join(home, "profile.json")) as f:
            assert json.load(f)["running"] is False
    finally:
        stop_leftovers(home)


def test_the_sync_client_reads_undecoded_batches_and_the_async_client_is_a_context_manager(
        cluster: DataPlaneCluster) -> None:
    """What the README says of both clients: ``consumer.record_batches()`` on the synchronous
    consumer too, and ``async with kolk.AsyncClient(...)``."""
    from kolk import Client

    topic = "record-batches-sync"
    sc = ",".join(cluster.sc_addresses)

    async def create() -> None:
        async with AsyncClient(sc) as c:
            await seed(c, topic)
    run_async(create)
    with Client(sc) as client:
        consumer = client.consumer(topic, start=Offset.beginning(), stop_at_end=True)
        values = [bytes(v) for batch in consumer.record_batches() for v in batch.values()]
        consumer.close()
    assert sorted(values) == sorted(v for _, v in SEED)
