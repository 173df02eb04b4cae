"""Issue 19 end to end: topic settings that take effect, retention on every replica, deletion
that frees the disk, compaction that converges, erasure of one key.

Real SC and three real SPU processes (RF 3) on loopback, retention and cleaner every 200 ms.
Replicas are checked by reading each SPU's segment files directly (lifecycle_cluster.py).

The tests that neither stop nor restart a process share one cluster (``shared``), each on
topics of its own; the ones that stop an SPU start their own.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import time
from typing import Any, Iterator

import pytest

from dataplane_cluster import DataPlaneCluster, read_all, run_async, wait_until
from kolk.client.client import AsyncClient
from kolk.client.consumer import Offset
from kolk.protocol.errors import KolkError, OffsetOutOfRangeError
from kolk.segments import build_batch
from lifecycle_cluster import (SMALL_SEGMENTS, bytes_on_disk, kolk, lifecycle_cluster, newest_per_key, replica_dir,
                               replica_records, segment_files)
from test_replication import run_on, wait_in_sync

TOPIC = "events"
P0 = f"{TOPIC}-0"


@pytest.fixture(scope="module")
def shared(tmp_path_factory: Any) -> Iterator[DataPlaneCluster]:
    """One 3-SPU cluster for every test here that neither stops, restarts nor reconfigures a
    process: each uses topics of its own (starting a cluster per test cost ~5 s each). With TLS
    because the erasure test needs the audit log (a plaintext cluster without a policy keeps
    none, docs/security.md); retention, compaction and the produce checks do not depend on the
    transport. Stopped by pid at the end."""
    c = lifecycle_cluster(tmp_path_factory.mktemp("lifecycle"), tls=True)
    try:
        c.start()
        yield c
    finally:
        c.close()


def holder(c: DataPlaneCluster, name: str) -> int:
    """The SPU that holds the only replica of ``name`` (replication factor 1 on ``shared``)."""
    held = [i for i in c.spus if os.path.isdir(replica_dir(c, i, name))]
    assert len(held) == 1, f"{name} has replicas on SPUs {held}, expected one"
    return held[0]


def tls_args(c: DataPlaneCluster) -> tuple[str, ...]:
    """The CLI's TLS options for the admin client of ``c``."""
    a = c.pki["admin"]
    return ("--tls-ca", a["ca"], "--tls-cert", a["cert"], "--tls-key", a["key"])


async def produce(client: AsyncClient, topic: str, records: list[tuple[bytes | None, bytes | None]],
                  batch_bytes: int = 2000, timestamp: int | None = None) -> list[int]:
    """Send ``records`` (key, value) with acks=all; their offsets."""
    producer = client.producer(topic, batch_bytes=batch_bytes, linger_ms=1, request_timeout_ms=5000, retries=50)
    futs = [await producer.send(v, k, timestamp=timestamp) for k, v in records]
    offsets = [(await f).offset for f in futs]
    await producer.close()
    return offsets


def values(n: int, size: int = 100, prefix: bytes = b"v") -> list[tuple[bytes | None, bytes | None]]:
    return [(None, prefix + b"-%06d-" % i + b"x" * size) for i in range(n)]


async def replica_starts(client: AsyncClient, name: str) -> dict[int, int | None]:
    rows = await client.partition_list()
    out: dict[int, int | None] = {}
    for row in rows:
        if row["name"] != name:
            continue
        for r in row.get("replica_logs") or []:
            out[int(r["spu"])] = r.get("log_start_offset")
    return out


# ---------------------------------------------------------------- retention


def test_retention_by_size_runs_on_every_replica_and_a_consumer_below_gets_the_range(
        shared: DataPlaneCluster) -> None:
    c = shared
    topic = "by-size"
    p0 = f"{topic}-0"

    async def body() -> None:
        async with c.client() as client:
            await client.create_topic(topic, 1, 3, config={**SMALL_SEGMENTS, "retention_bytes": "12288"})
            await wait_in_sync(client, p0)
            await produce(client, topic, values(600))  # ~70 KB: 17+ segments of 4 KiB
            # Every replica deletes its oldest segments down to ~12 KiB (+ the active segment).
            for i in c.spus:
                await wait_until(lambda i=i: 0 < bytes_on_disk(c, i, p0) <= 12288 + 2 * 4096, 30,
                                 lambda i=i: f"SPU {i} to keep ~12 KiB of {p0}, has {bytes_on_disk(c, i, p0)}")
            start, hw, leo = await client.offsets(topic, 0)
            assert start > 0 and hw == leo == 600
            with pytest.raises(OffsetOutOfRangeError) as e:
                await client.fetch(topic, 0, 0)
            assert str(e.value) == (f"offset 0 of {p0} is below the log start {start} (records {start}-599 are "
                                    "available; older ones were deleted by retention)")
            consumer = client.consumer(topic, partition=0, start=Offset.absolute(0), stop_at_end=True)
            with pytest.raises(OffsetOutOfRangeError) as e2:
                async with asyncio.timeout(20):
                    [r async for r in consumer]
            await consumer.close()
            assert str(start) in str(e2.value)
            # What is left is readable from the log start, in order, up to the end.
            records = await read_all(client, topic, partition=0, start=Offset.beginning())
            assert [r.offset for r in records] == list(range(records[0].offset, 600))
            assert records[0].offset >= start
            # Followers learnt the leader's log start and never serve below it.
            for i in c.spus:
                offsets = [r[0] for r in replica_records(c, i, p0)]
                assert offsets and offsets[-1] == 599 and offsets[0] >= start - 4096, (i, offsets[:3])

    run_async(body)


def test_retention_by_time_deletes_old_segments_on_every_replica(shared: DataPlaneCluster) -> None:
    c = shared
    topic = "by-time"
    p0 = f"{topic}-0"

    async def body() -> None:
        async with c.client() as client:
            await client.create_topic(topic, 1, 3, config={**SMALL_SEGMENTS, "retention_ms": "60000"})
            await wait_in_sync(client, p0)
            hour_ago = int(time.time() * 1000) - 3_600_000
            await produce(client, topic, values(200, prefix=b"old"), timestamp=hour_ago)
            now = await produce(client, topic, values(30, prefix=b"new"))
            # Every segment of only hour-old records goes, on every replica; the new ones stay.
            for i in c.spus:
                await wait_until(lambda i=i: min(o for o, _k, _v in replica_records(c, i, p0)) > 150, 30,
                                 lambda i=i: f"SPU {i} to delete the hour-old segments")
                assert {v for _o, _k, v in replica_records(c, i, p0) if v.startswith(b"new")} == {
                    v for _k, v in values(30, prefix=b"new")}
            start, _hw, leo = await client.offsets(topic, 0)
            assert 150 < start <= now[0] and leo == 230
            # An idle topic whose records are all past retention_ms: the active segment is sealed
            # and deleted too (no new record needed), on every replica.
            await client.create_topic("idle", 1, 3, config={**SMALL_SEGMENTS, "retention_ms": "60000"})
            await wait_in_sync(client, "idle-0")
            await produce(client, "idle", values(50, prefix=b"old"), timestamp=hour_ago)
            for i in c.spus:
                await wait_until(lambda i=i: not replica_records(c, i, "idle-0"), 30,
                                 lambda i=i: f"SPU {i} to delete every hour-old record of idle-0")
            assert (await client.offsets("idle", 0))[0] == 50

    run_async(body)


def test_alter_takes_effect_without_a_restart(shared: DataPlaneCluster) -> None:
    c = shared
    name = "altered"
    p0 = f"{name}-0"

    async def body() -> None:
        async with c.client() as client:
            await client.create_topic(name, 1, 3, config=dict(SMALL_SEGMENTS))
            await wait_in_sync(client, p0)
            pids = {i: c.spus[i].pid for i in c.spus}
            await produce(client, name, values(400))
            assert all(bytes_on_disk(c, i, p0) > 40_000 for i in c.spus)
            topic = await client.admin.alter_topic(name, set={"retention_bytes": "8192"})
            assert topic["spec"]["config"]["retention_bytes"] == "8192"
            for i in c.spus:
                await wait_until(lambda i=i: bytes_on_disk(c, i, p0) <= 8192 + 2 * 4096, 30,
                                 lambda i=i: f"SPU {i} to apply retention_bytes=8192: {bytes_on_disk(c, i, p0)}")
            # A new segment size from the next roll: 64 KiB segments hold what 4 KiB ones could not.
            await client.admin.alter_topic(name, set={"segment_bytes": "65536"}, delete=["retention_bytes"])
            count = len(segment_files(c, 1, p0))
            await produce(client, name, values(300, prefix=b"big"))
            assert len(segment_files(c, 1, p0)) <= count + 2
            assert {i: c.spus[i].pid for i in c.spus} == pids  # nobody restarted

    run_async(body)


# ---------------------------------------------------------------- deletion


def test_deleting_a_topic_frees_the_disk_on_every_spu_even_one_that_was_down(tmp_path: Any) -> None:
    c = lifecycle_cluster(tmp_path)

    async def body() -> None:
        async with c.client() as client:
            await client.create_topic(TOPIC, 2, 3, config=dict(SMALL_SEGMENTS))
            await client.create_topic("kept", 1, 3)
            await wait_in_sync(client, P0)
            await produce(client, TOPIC, values(200, prefix=b"old"))
            await produce(client, "kept", values(5))
            c.kill_spu(3, signal.SIGTERM)
            await client.delete_topic(TOPIC)
            for i in (1, 2):
                for p in (0, 1):
                    await wait_until(lambda i=i, p=p: not os.path.exists(replica_dir(c, i, f"{TOPIC}-{p}")), 20,
                                     f"SPU {i} to delete its replica of {TOPIC}-{p}")
            assert os.path.isdir(replica_dir(c, 3, P0))  # down during the delete
            # Created again while SPU 3 is still down: a new topic, which must start empty there too.
            await client.create_topic(TOPIC, 2, 3, config=dict(SMALL_SEGMENTS))
            await produce(client, TOPIC, [(None, b"new-%d" % i) for i in range(3)])
            c.launch_spu(3)
            await c.wait_spu_ready(3)
            await wait_in_sync(client, P0)
            def only_new() -> bool:
                vals = [v for p in (0, 1) for _o, _k, v in replica_records(c, 3, f"{TOPIC}-{p}")]
                return len(vals) == 3 and all(v.startswith(b"new-") for v in vals if v)
            await wait_until(only_new, 30, lambda: f"SPU 3 to hold only the new topic's records: "
                             f"{[v for p in (0, 1) for _o, _k, v in replica_records(c, 3, f'{TOPIC}-{p}')][:5]}")
            records = await read_all(client, TOPIC)
            assert sorted(r.value for r in records) == [b"new-0", b"new-1", b"new-2"]
            assert len(await read_all(client, "kept")) == 5

    run_on(c, body)


# ---------------------------------------------------------------- compaction


async def write_and_seal(client: AsyncClient, topic: str, records: list[tuple[bytes | None, bytes | None]]) -> None:
    """Write ``records``, then enough filler (unique keys), in separate acknowledged rounds, that
    every replica has rolled past them: only sealed segments are cleaned."""
    await produce(client, topic, records)
    for r in range(3):
        await produce(client, topic, [(b"filler-%d-%d" % (r, i), b"f" * 200) for i in range(20)])


def test_compaction_converges_on_every_replica_and_a_consumer_reads_the_newest_per_key(
        shared: DataPlaneCluster) -> None:
    c = shared
    keys = [b"key-%02d" % k for k in range(12)]
    topic = "compacted"
    p0 = f"{topic}-0"

    async def body() -> None:
        async with c.client() as client:
            await client.create_topic(topic, 1, 3, config={**SMALL_SEGMENTS, "cleanup_policy": "compact",
                                                           "delete_retention_ms": "0"})
            await wait_in_sync(client, p0)
            records: list[tuple[bytes | None, bytes | None]] = []
            for round_ in range(15):
                records += [(k, b"%s=v%d" % (k, round_) + b"." * 60) for k in keys]
            records.append((keys[0], None))  # a tombstone: key-00 is deleted
            await write_and_seal(client, topic, records)
            model = {k: v for k, v in records}
            expected = {k: v for k, v in model.items() if v is not None}

            def converged(i: int) -> bool:
                seen = [(o, k, v) for o, k, v in replica_records(c, i, p0) if k in model]
                return sorted(k for _o, k, _v in seen) == sorted(expected) and newest_per_key(seen) == expected
            for i in c.spus:
                await wait_until(lambda i=i: converged(i), 60,
                                 lambda i=i: f"SPU {i}'s replica to hold exactly the newest value per key")
            got = await read_all(client, topic, partition=0)
            mine = [r for r in got if r.key in model]
            assert {r.key: r.value for r in mine} == expected and len(mine) == len(expected)
            offsets = [r.offset for r in got]
            assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)  # gaps, never renumbered
            rows = [r for r in await client.partition_list() if r["name"] == p0]
            assert rows and all((s.get("cleaned_offset") or 0) > 0 for s in rows[0]["replica_logs"])

    run_async(body)


def test_keyless_records_are_refused_in_a_compacted_topic(shared: DataPlaneCluster) -> None:
    c = shared
    topic = "keys-only"

    async def body() -> None:
        async with c.client() as client:
            await client.create_topic(topic, 1, 1, config={"cleanup_policy": "compact"})
            with pytest.raises(KolkError) as e:
                await produce(client, topic, [(b"k", b"v"), (None, b"no key")])
            assert "no key" in str(e.value) and "compact" in str(e.value)
            start, hw, leo = await client.offsets(topic, 0)
            assert leo == 0  # nothing of the refused request was stored

    run_async(body)


def test_max_message_bytes_and_compression_take_effect(shared: DataPlaneCluster) -> None:
    c = shared
    topic = "zstd-2k"
    p0 = f"{topic}-0"

    async def body() -> None:
        from kolk.segments.batch import CODEC_ZSTD, parse_header

        async with c.client() as client:
            await client.create_topic(topic, 1, 1, config={"max_message_bytes": "2048", "compression": "zstd"})
            with pytest.raises(KolkError) as e:
                await produce(client, topic, [(None, b"x" * 3000)], batch_bytes=4096)
            assert "max_message_bytes" in str(e.value) and "2048" in str(e.value)
            await produce(client, topic, [(None, b"small %d" % i) for i in range(5)], batch_bytes=1024)
            data = open(segment_files(c, holder(c, p0), p0)[0], "rb").read()
            assert parse_header(data, 0).codec == CODEC_ZSTD
            assert [r.value for r in await read_all(client, topic)] == [b"small %d" % i for i in range(5)]

    run_async(body)


# ---------------------------------------------------------------- erasure


def test_erase_removes_every_record_of_the_key_from_every_replica_and_is_audited(
        shared: DataPlaneCluster) -> None:
    # With TLS (``shared`` has it): a plaintext cluster without a policy keeps no audit log
    # (docs/security.md).
    c = shared
    subject = b"subject-4711-alice@example.org"
    topic = "erased"
    p0 = f"{topic}-0"

    async def body() -> None:
        async with c.client() as client:
            await client.create_topic(topic, 1, 3, config={**SMALL_SEGMENTS, "cleanup_policy": "compact"})
            await wait_in_sync(client, p0)
            records = [(subject if i % 7 == 0 else b"other-%d" % (i % 5), b"value %d" % i + b"." * 80)
                       for i in range(120)]
            await produce(client, topic, records)
            assert any(k == subject for i in c.spus for _o, k, _v in replica_records(c, i, p0))
            [erasure] = await asyncio.wait_for(client.admin.erase_key(topic, subject, timeout_s=60), 90)
            assert erasure.state == "done" and sorted(erasure.done) == [1, 2, 3]
            assert erasure.found  # the replicas held records of the key besides the tombstone
            [nobody] = await asyncio.wait_for(client.admin.erase_key(topic, b"never-written", timeout_s=60), 90)
            assert nobody.state == "done" and not nobody.found  # completes, and says there was nothing
            for i in c.spus:
                for path in segment_files(c, i, p0):
                    assert subject not in open(path, "rb").read(), f"SPU {i}: {path} still holds the key"
            # Everything else is still there.
            got = await read_all(client, topic, partition=0)
            assert not [r for r in got if r.key == subject]
            assert {r.key for r in got} >= {b"other-%d" % i for i in range(5)}
            digest = hashlib.sha256(subject).hexdigest()

            async def audited() -> tuple[list[str], list[str]] | None:
                audit = [r.value.decode(errors="replace") for r in await read_all(client, "_audit", timeout_s=10)]
                texts = [t for t in audit if digest in t]
                return (audit, texts) if any("request" in t for t in texts) and any(
                    "complet" in t for t in texts) else None
            audit, texts = await wait_until(audited, 60, "_audit to record the erasure's request and completion")
            assert not [t for t in audit if subject.decode() in t]  # the key itself is never written there

    run_async(body)


def test_an_spu_killed_mid_compaction_restarts_with_an_intact_log(tmp_path: Any) -> None:
    c = DataPlaneCluster(str(tmp_path), spus=1, spu_args=(
        "--heartbeat-interval-ms", "200", "--cleaner-interval-ms", "200", "--cleaner-bytes-per-s", "65536"))

    async def body() -> None:
        async with c.client() as client:
            await client.create_topic(TOPIC, 1, 1, config={"segment_bytes": "65536", "max_message_bytes": "4096",
                                                           "cleanup_policy": "compact"})
            keys = [b"k%03d" % (i % 300) for i in range(6000)]
            records = [(k, b"%s-%05d" % (k, i) + b"." * 40) for i, k in enumerate(keys)]
            await write_and_seal(client, TOPIC, records)
            expected = {k: v for k, v in records}
            d = replica_dir(c, 1, P0)
            await wait_until(lambda: any(f.endswith(".cleaned") for f in os.listdir(d)), 60,
                             "the cleaner to be writing a cleaned segment")
            c.kill_spu(1, signal.SIGKILL)
            c.launch_spu(1)
            await c.wait_spu_ready(1)
            got = await read_all(client, TOPIC, partition=0)
            assert newest_per_key([(r.offset, r.key, r.value) for r in got if r.key in expected]) == expected
            offsets = [r.offset for r in got]
            assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)
            assert "fenced corrupt" not in c.spu_log(1)

    run_on(c, body)


def test_an_erasure_waits_for_a_replica_that_was_down_which_then_catches_up_past_the_gap(tmp_path: Any) -> None:
    """SPU 3 is down while the key is written and erased: the erasure stays pending (2 of 3);
    back, SPU 3 copies the cleaned leader, whose log now ends in a gap where the key's records
    and the tombstone were (it must jump its log end there to catch up), erases its own copy
    and the erasure completes."""
    c = lifecycle_cluster(tmp_path)
    subject = b"subject-0042-bob"

    async def body() -> None:
        async with c.client() as client:
            await client.create_topic(TOPIC, 1, 3, config={**SMALL_SEGMENTS, "cleanup_policy": "compact"})
            await wait_in_sync(client, P0)
            await produce(client, TOPIC, [(b"other-%d" % i, b"v" * 50) for i in range(40)])
            c.kill_spu(3, signal.SIGTERM)
            await wait_until(lambda: wait_isr_without(client, 3), 30, "SPU 3 to leave the in-sync set")
            await produce(client, TOPIC, [(subject, b"secret %d" % i + b"." * 50) for i in range(30)])
            [erasure] = await client.admin.erase_key(TOPIC, subject, wait=False)
            await wait_until(lambda: status_done(client, erasure.name, {1, 2}), 60,
                             "SPUs 1 and 2 to finish their part")
            assert (await client.admin.erasure_status(erasure.name)).state == "pending"
            c.launch_spu(3)
            await c.wait_spu_ready(3)
            await wait_until(lambda: status_done(client, erasure.name, {1, 2, 3}), 60, "SPU 3 to finish its part")
            assert (await client.admin.erasure_status(erasure.name)).state == "done"
            await wait_in_sync(client, P0)
            for i in c.spus:
                assert not [r for r in replica_records(c, i, P0) if r[1] == subject], f"SPU {i} holds the key"
            start, hw, leo = await client.offsets(TOPIC, 0)
            assert hw == leo == 71

    run_on(c, body)


async def wait_isr_without(client: AsyncClient, spu: int) -> bool:
    rows = [r for r in await client.partition_list() if r["name"] == P0]
    return bool(rows) and spu not in rows[0]["isr"]


async def status_done(client: AsyncClient, name: str, spus: set[int]) -> bool:
    return set((await client.admin.erasure_status(name)).done) >= spus


def test_kolk_produce_writes_tombstones_and_kolk_topic_erase_reaches_every_partition(
        shared: DataPlaneCluster) -> None:
    c = shared
    topic = "cli-erased"
    tls = tls_args(c)  # ``shared`` has TLS

    async def body() -> None:
        async with c.client() as client:
            await client.create_topic(topic, 3, 1, config={"cleanup_policy": "compact"})
            # The producer chose partitions itself: the key is in 0 and 2, whatever it hashes to.
            for p in (0, 2):
                await client.produce(topic, p, build_batch([(b"carol", b"secret in %d" % p)]))
        out = await asyncio.to_thread(kolk, c, "produce", topic, "--tombstones", "--partition", "1", *tls,
                                      input="gone-key\n")
        assert out.returncode == 0, out.stderr
        async with c.client() as client:
            got = await read_all(client, topic, partition=1)
            assert [(r.key, r.value) for r in got] == [(b"gone-key", None)]
        out = await asyncio.to_thread(kolk, c, "topic", "erase", topic, "--key", "carol", "--timeout", "60", *tls)
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert len(lines) == 3 and all(line.startswith(f"erasure {topic}-") for line in lines), lines
        assert sum("every record of the key" in line for line in lines) == 2  # partitions 0 and 2 held it
        for p in range(3):
            name = f"{topic}-{p}"
            assert not [r for r in replica_records(c, holder(c, name), name) if r[1] == b"carol"]

    run_async(body)
