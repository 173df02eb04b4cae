"""Issue 19 under attack: requests a hostile or careless client can make against topic
settings, compaction and erasure, with real SC and SPU processes (lifecycle_cluster.py).

Each test is one attack of the attacker review of issue 19. Each found a hole (erasures done
while a replica held the key, a wrong SPU reporting, an offset past the log end, a stalled
loop, recompressed batches past the limit, producer state lost to compaction, the index's
open files), fixed since; they stay as the proof.

The tests on one SPU that neither stop nor restart it share one cluster (``shared``), each on
topics of its own; the ones that stop an SPU start their own.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import signal
from typing import Any, Iterator

import pytest

from dataplane_cluster import DataPlaneCluster, read_all, run_async, wait_until
from kolk.client.client import AsyncClient
from kolk.client.producer import partition_for_key
from kolk.protocol.errors import KolkError
from kolk.segments.batch import CODEC_GZIP, CODEC_ZSTD
from kolk.segments.records import build_batch
from lifecycle_cluster import (FAST_LIFECYCLE, HEARTBEAT_TIMEOUT_MS, SMALL_SEGMENTS, lifecycle_cluster, replica_records,
                               segment_files)
from test_replication import run_on, wait_in_sync

TOPIC = "events"
P0 = f"{TOPIC}-0"
ERASE_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def shared(tmp_path_factory: Any) -> Iterator[DataPlaneCluster]:
    """One SC and one SPU for every test here that neither stops, restarts nor reconfigures a
    process: each uses topics of its own (starting a cluster per test cost ~2-4 s each).
    Stopped by pid at the end."""
    c = lifecycle_cluster(tmp_path_factory.mktemp("attacks"), spus=1)
    try:
        c.start()
        yield c
    finally:
        c.close()


async def produce(client: AsyncClient, topic: str, records: list[tuple[bytes | None, bytes | None]]) -> list[int]:
    """Send ``records`` (key, value) with acks=all; their offsets."""
    producer = client.producer(topic, batch_bytes=2000, linger_ms=1, request_timeout_ms=5000, retries=50)
    futs = [await producer.send(v, k) for k, v in records]
    offsets = [(await f).offset for f in futs]
    await producer.close()
    return offsets


# ---------------------------------------------------------------- produce rules


def test_a_compressed_batch_that_expands_past_max_message_bytes_is_not_stored(shared: DataPlaneCluster) -> None:
    """max_message_bytes is checked on the batch as sent; compression=none then decompresses it.
    A 1 MiB record compressed to a few hundred bytes passes the check and is stored as a 1 MiB
    batch in a topic whose batches may be 4 KiB and whose segments are 4 KiB."""
    c = shared
    topic = "bomb-none"

    async def body() -> None:
        async with c.client() as client:
            await client.create_topic(topic, 1, 1, config={**SMALL_SEGMENTS, "compression": "none"})
            bomb = build_batch([(b"k", b"\0" * (1 << 20))], codec=CODEC_ZSTD)
            assert len(bomb) < 4096
            refused: KolkError | None = None
            try:
                await client.produce(topic, 0, bomb, retries=0)
            except KolkError as e:
                refused = e
            _start, _hw, leo = await client.offsets(topic, 0)
            biggest = max((os.path.getsize(p) for p in segment_files(c, 1, f"{topic}-0")), default=0)
            assert refused is not None and leo == 0, (
                f"a {len(bomb)}-byte zstd batch was stored as {biggest} bytes on disk in a topic with "
                f"max_message_bytes 4096 and segment_bytes 4096 (log end {leo})")
            assert "max_message_bytes" in str(refused)

    run_async(body)


def test_recompressing_incompressible_records_does_not_store_a_batch_over_max_message_bytes(
        shared: DataPlaneCluster) -> None:
    """compression=gzip recompresses what producers send; random bytes grow under gzip. A batch
    just under max_message_bytes as sent is stored over it (and over segment_bytes)."""
    c = shared
    topic = "regzipped"

    async def body() -> None:
        async with c.client() as client:
            await client.create_topic(topic, 1, 1, config={**SMALL_SEGMENTS, "compression": "gzip"})
            sent = build_batch([(b"k", os.urandom(3990))])
            assert len(sent) <= 4096
            stored_or_refused = "refused"
            try:
                await client.produce(topic, 0, sent, retries=0)
                stored_or_refused = "stored"
            except KolkError:
                pass
            biggest = max((os.path.getsize(p) for p in segment_files(c, 1, f"{topic}-0")), default=0)
            assert biggest <= 4096, (
                f"a {len(sent)}-byte batch was {stored_or_refused}; the SPU wrote a {biggest}-byte gzip batch into a "
                f"topic with max_message_bytes 4096 and segment_bytes 4096")

    run_async(body)


def test_a_keyless_record_behind_a_keyed_one_in_a_compressed_batch_is_refused(shared: DataPlaneCluster) -> None:
    c = shared
    topic = "smuggled"

    async def body() -> None:
        async with c.client() as client:
            await client.create_topic(topic, 1, 1, config={"cleanup_policy": "compact"})
            smuggled = build_batch([(b"k", b"v"), (b"k2", b"v2"), (None, b"no key")], codec=CODEC_GZIP)
            with pytest.raises(KolkError) as e:
                await client.produce(topic, 0, smuggled, retries=0)
            assert "record 2 of the batch at byte 0 has no key" in str(e.value)
            _start, _hw, leo = await client.offsets(topic, 0)
            assert leo == 0

    run_async(body)


# ---------------------------------------------------------------- erasure


def test_an_erasure_after_add_partitions_reaches_the_partition_that_holds_the_key(shared: DataPlaneCluster) -> None:
    """The key's records were written while the topic had 1 partition (all in partition 0).
    After add-partitions the key hashes elsewhere; `erase` writes the tombstone and erases only
    there, and reports done while partition 0 still holds every record of the key."""
    c = shared
    subject = next(b"subject-%d" % i for i in range(100) if partition_for_key(b"subject-%d" % i, 4) != 0)
    topic = "grown"

    async def body() -> None:
        async with c.client() as client:
            await client.create_topic(topic, 1, 1, config={**SMALL_SEGMENTS, "cleanup_policy": "compact"})
            await produce(client, topic, [(subject, b"secret %d" % i) for i in range(5)])
            await client.admin.add_partitions(topic, 4)
            erasures = await asyncio.wait_for(client.admin.erase_key(topic, subject, timeout_s=ERASE_TIMEOUT_S),
                                              ERASE_TIMEOUT_S + 30)
            assert len(erasures) == 4 and all(e.state == "done" for e in erasures)  # one per partition
            erasure = next(e for e in erasures if e.partition == 0)
            assert erasure.found
            holders = {f"{topic}-{p}": [o for o, k, _v in replica_records(c, 1, f"{topic}-{p}") if k == subject]
                       for p in range(4)}
            assert not any(holders.values()), (
                f"erasure {erasure.name} is done, but offsets of the key are still on disk: {holders}")

    run_async(body)


def test_an_erase_request_past_the_log_end_does_not_erase_records_written_after_it(shared: DataPlaneCluster) -> None:
    """eraseKey takes the tombstone's offset from the caller and the SC checks only that it is
    >= 0. An offset past the log end is accepted; the SPU waits until its high watermark passes
    it and then removes every record of the key up to there -- including records written after
    the request (a new consent, a new account under the same id)."""
    c = shared
    subject = b"subject-bogus-offset"
    digest = hashlib.sha256(subject).hexdigest()
    topic = "far-offset"

    async def body() -> None:
        async with c.client() as client:
            await client.create_topic(topic, 1, 1, config={**SMALL_SEGMENTS, "cleanup_policy": "compact"})
            await produce(client, topic, [(b"other-%d" % i, b"v") for i in range(5)])
            _s, _hw, leo = await client.offsets(topic, 0)
            try:
                r = await client.admin._request("eraseKey", write=True, topic=topic, partition=0, keySha256=digest,
                                                offset=leo + 50)
            except KolkError as e:  # refused: the fix; the message names the offset and the log end
                assert str(leo + 50) in str(e) and str(leo) in str(e)
                return
            name = r.erasure.name
            # Written after the request, never erased by anyone.
            later = await produce(client, topic, [(subject, b"written later %d" % i) for i in range(10)]
                                  + [(b"filler-%d" % i, b"f" * 300) for i in range(60)])
            await wait_until(lambda: client.admin.erasure_status(name), 10, "the erasure to be readable")

            async def settled() -> bool:
                return (await client.admin.erasure_status(name)).state == "done"
            await wait_until(settled, ERASE_TIMEOUT_S, f"erasure {name} to finish")
            kept = [r.offset for r in await read_all(client, topic, partition=0) if r.key == subject]
            assert kept == later[:10], (
                f"eraseKey at offset {leo + 50} (the log ended at {leo}) was accepted and removed records of the "
                f"key written after the request: offsets {later[:10]} written, {kept} left")

    run_async(body)


# ---------------------------------------------------------------- compaction and idempotent producers


def test_an_idempotent_producer_whose_batches_were_all_compacted_away_can_still_write_after_a_restart(
        tmp_path: Any) -> None:
    """Producer A writes ten keys; producer B overwrites them, so the cleaner removes every
    batch of A (a batch left with no records is removed). The SPU rebuilds its producer table
    from the batch headers on load, so after a restart it no longer knows A, and A's next batch
    (sequence 1, not 0) is refused as out of order: a live producer loses a write because of
    compaction, within seconds rather than after a retention period."""
    c = lifecycle_cluster(tmp_path, spus=1)
    keys = [b"hot-%d" % i for i in range(10)]

    async def body() -> None:
        async with c.client() as client:
            await client.create_topic(TOPIC, 1, 1, config={**SMALL_SEGMENTS, "cleanup_policy": "compact",
                                                           "delete_retention_ms": "0"})
            a = client.producer(TOPIC, acks="all", linger_ms=1, batch_bytes=4000, request_timeout_ms=5000, retries=5)
            try:
                assert a.idempotent
                first = [await a.send(b"from A " + k, k) for k in keys]
                a_offsets = {(await f).offset for f in first}
                await produce(client, TOPIC, [(k, b"from B " + k) for k in keys])
                for r in range(3):  # seal B's records too, so that A's are superseded in sealed segments
                    await produce(client, TOPIC, [(b"filler-%d-%d" % (r, i), b"f" * 200) for i in range(20)])
                await wait_until(lambda: not a_offsets & {o for o, _k, _v in replica_records(c, 1, P0)}, 30,
                                 "the cleaner to remove every record producer A wrote")
                c.kill_spu(1, signal.SIGTERM)
                c.launch_spu(1)
                await c.wait_spu_ready(1)
                try:
                    offset = (await (await a.send(b"A again", keys[0]))).offset
                except KolkError as e:
                    raise AssertionError(f"producer A's next record was refused after compaction removed its "
                                         f"batches and the SPU restarted: {e}") from None
                assert offset > max(a_offsets)
            finally:
                await a.close()

    run_on(c, body)


# ---------------------------------------------------------------- settings that pass the SC


SEGMENTS_WRITTEN = 1500


def open_file_kinds(pid: int) -> dict[str, int]:
    """How many of the process's open files end in each suffix (``.log``, ``.sst``, ``socket``...)."""
    kinds: dict[str, int] = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        kind = os.path.splitext(target)[1] or target.split(":")[0]
        kinds[kind] = kinds.get(kind, 0) + 1
    return dict(sorted(kinds.items(), key=lambda kv: -kv[1])[:6])


@pytest.mark.long  # rolls thousands of segments: ~45 s; `make test-long`
def test_the_index_keeps_a_bounded_number_of_files_open_however_many_segments_roll(tmp_path: Any) -> None:
    """segment_bytes=1024 (the table's minimum) with 1 KiB batches: one segment per batch, and
    every roll flushes the index. RocksDB kept each flushed SST file open (3,000 after 1,500
    rolls); its table cache is now bounded. (Each segment still keeps its own file open: an
    operator sizes the SPU's file limit for segments x partitions, docs/operations.md.)"""
    from kolk.segments.index_db import INDEX_OPEN_FILES_MAX

    c = lifecycle_cluster(tmp_path, spus=1)
    batch = build_batch([(None, b"x" * 900)])

    async def body() -> None:
        async with c.client() as client:
            await client.create_topic(TOPIC, 1, 1, config={"segment_bytes": "1024", "max_message_bytes": "1024"})
            await client.produce(TOPIC, 0, batch)
            sem = asyncio.Semaphore(16)

            async def one() -> None:
                async with sem:
                    await client.produce(TOPIC, 0, batch, acks=1)
            await asyncio.gather(*(one() for _ in range(SEGMENTS_WRITTEN)))
            segments = len(segment_files(c, 1, P0))
            kinds = open_file_kinds(c.spus[1].pid)
            assert segments > SEGMENTS_WRITTEN // 2
            assert kinds.get(".sst", 0) <= INDEX_OPEN_FILES_MAX + 16, (
                f"{segments} segments of {P0} rolled; the index holds {kinds.get('.sst')} SST files open ({kinds})")

    run_on(c, body)


BOMBS = 20
STALL_S_MAX = 0.25


def test_small_compressed_requests_that_expand_do_not_stall_the_spu_for_other_topics(shared: DataPlaneCluster) -> None:
    """prepare() runs on the event loop when the request is at most 64 KiB, whatever the batch
    decompresses to (up to SECTION_BYTES_MAX, 64 MiB). A 2 KB zstd batch of one 60 MiB record
    to a topic with compression=none is refused only after the SPU decompressed and
    re-encoded it on the loop (~70 ms each): twenty such requests (40 KB in all) stall a
    one-record produce to an unrelated topic for more than a second."""
    c = shared
    topic = "bombed"

    async def body() -> None:
        async with c.client() as client:
            await client.create_topic(topic, 1, 1, config={"compression": "none"})
            await client.create_topic("other", 1, 1)
            bomb = build_batch([(b"k", b"\0" * (60 << 20))], codec=CODEC_ZSTD)
            small = build_batch([(b"k", b"v")])
            waits: list[float] = []
            done = asyncio.Event()
            loop = asyncio.get_running_loop()

            async def bystander() -> None:
                while not done.is_set():
                    t = loop.time()
                    await client.produce("other", 0, small, acks=1)
                    waits.append(loop.time() - t)

            async def attacker() -> str:
                try:
                    await client.produce(topic, 0, bomb, retries=0)
                    return "stored"
                except KolkError as e:
                    return str(e)
            watcher = asyncio.ensure_future(bystander())
            try:
                await wait_until(lambda: len(waits) >= 3, 10, "the bystander's first produces")
                waits.clear()
                outcomes = await asyncio.gather(*(attacker() for _ in range(BOMBS)))
            finally:
                done.set()
                await watcher
            assert all("more than append_bytes_max" in o or "expands past the limit" in o for o in outcomes), \
                outcomes[:2]
            assert max(waits) < STALL_S_MAX, (
                f"{BOMBS} produce requests of {len(bomb)} bytes each (refused) held a one-record produce to another "
                f"topic for {max(waits):.2f} s")

    run_async(body)


# ---------------------------------------------------------------- erasure and a rebuilt replica


SLOW_CLEANER = ("--cleaner-bytes-per-s", "65536")  # the least allowed: ~10 s a pass over 600 KB


@pytest.mark.long  # a throttled cleaner and a rebuilt replica: ~40 s; `make test-long`
def test_a_replica_rebuilt_after_its_part_of_an_erasure_is_erased_again(tmp_path: Any) -> None:
    """Follower F finishes its part of an erasure (it is in ``done``) while the leader, whose
    cleaner is throttled, is still at it. F loses its disk and is rebuilt from the leader, which
    still holds the key: F copies the key back, and since it is already listed as done it never
    erases it again. The erasure then completes on the leader's word while F holds the key."""
    c = DataPlaneCluster(str(tmp_path), spus=3, heartbeat_timeout_ms=HEARTBEAT_TIMEOUT_MS,
                         spu_args=FAST_LIFECYCLE + SLOW_CLEANER)
    subject = b"subject-rebuilt-replica"

    async def body() -> None:
        async with c.client() as client:
            await client.create_topic(TOPIC, 1, 3, config={**SMALL_SEGMENTS, "cleanup_policy": "compact"})
            await wait_in_sync(client, P0)
            rows = [r for r in await client.partition_list() if r["name"] == P0]
            leader = rows[0]["leader"]
            followers = [i for i in c.spus if i != leader]
            c.spu_args = FAST_LIFECYCLE  # the followers' cleaners run at full speed, the leader's stays slow
            for f in followers:
                c.kill_spu(f, signal.SIGTERM)
                c.launch_spu(f)
                await c.wait_spu_ready(f)
            await wait_in_sync(client, P0)
            await produce(client, TOPIC, [(b"other-%d" % i, b"v" * 150) for i in range(3000)]
                          + [(subject, b"secret %d" % i + b"." * 100) for i in range(20)])
            [erasure] = await client.admin.erase_key(TOPIC, subject, wait=False)
            victim = followers[0]

            async def victim_done_leader_not() -> bool:
                done = set((await client.admin.erasure_status(erasure.name)).done)
                return victim in done and leader not in done
            await wait_until(victim_done_leader_not, 30, f"SPU {victim} (follower) to finish before SPU {leader}")
            c.kill_spu(victim, signal.SIGKILL)
            shutil.rmtree(c.spus[victim].data_dir)
            c.launch_spu(victim)
            await c.wait_spu_ready(victim)

            async def finished() -> bool:
                return (await client.admin.erasure_status(erasure.name)).state == "done"
            await wait_until(finished, 90, f"erasure {erasure.name} to finish")
            await wait_in_sync(client, P0)
            holders = {i: len([o for o, k, _v in replica_records(c, i, P0) if k == subject]) for i in c.spus}
            assert not any(holders.values()), (
                f"erasure {erasure.name} is done, but records of the key are on disk (SPU: count): {holders}; "
                f"SPU {victim} was rebuilt from the leader after it had reported its part done")

    run_on(c, body)


# ---------------------------------------------------------------- erasureDone from the wrong node


def test_an_spu_cannot_report_another_spus_part_of_an_erasure(tmp_path: Any) -> None:
    """erasureDone takes the SPU id from the request, not from the caller's node identity: SPU 1
    (authenticated as spu-1 with the cluster secret) reports SPU 3's part while SPU 3 is down
    with the key on its disk, and the erasure is done."""
    from jepsen.cluster import SECRET
    from kolk.client.admin import AdminClient
    from kolk.protocol.node_auth import NodeCredential

    c = lifecycle_cluster(tmp_path)
    subject = b"subject-forged-done"

    async def body() -> None:
        async with c.client() as client:
            await client.create_topic(TOPIC, 1, 3, config={**SMALL_SEGMENTS, "cleanup_policy": "compact"})
            await wait_in_sync(client, P0)
            await produce(client, TOPIC, [(subject, b"secret %d" % i) for i in range(5)])
            await wait_until(lambda: any(k == subject for _o, k, _v in replica_records(c, 3, P0)), 20,
                             "SPU 3 to hold the key")
            c.kill_spu(3, signal.SIGTERM)
            [erasure] = await client.admin.erase_key(TOPIC, subject, wait=False)

            async def others_done() -> bool:
                return {1, 2} <= set((await client.admin.erasure_status(erasure.name)).done)
            await wait_until(others_done, 30, "SPUs 1 and 2 to finish their part")
            spu1 = AdminClient(c.sc_addresses, timeout_s=5, credential=NodeCredential("spu-1", SECRET))
            forged: str = "accepted"
            try:
                await spu1.erasure_done(erasure.name, 3, found=False)
            except KolkError as e:
                forged = f"refused: {e}"
            finally:
                await spu1.close()
            state = (await client.admin.erasure_status(erasure.name)).state
            held = len([o for o, k, _v in replica_records(c, 3, P0) if k == subject])
            assert state == "pending" and forged.startswith("refused"), (
                f"spu-1's erasureDone for SPU 3 was {forged}; the erasure is {state} while SPU 3 (down) holds {held} "
                "record(s) of the key")

    run_on(c, body)
