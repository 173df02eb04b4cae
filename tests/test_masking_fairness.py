"""Masking does not hold the SPU (issue 17; docs/security.md "Masking fails closed"): while a
masked reader fetches or streams a large masked topic, another client's calls are answered
promptly; the masked reader gets shorter answers (bounded by MASK_BYTES_PER_RESPONSE_MAX and
MASK_RECORDS_PER_RESPONSE_MAX) and still every record, masked, in order; a value longer than
MASKED_VALUE_BYTES_MAX is redacted whole without being parsed.

Real SC and SPU processes with mutual TLS. The latency bound is on a time-weighted median
(a call stuck behind a masked fetch weighs what it waited), relative to the same client's
calls on the idle SPU with an absolute floor of 100 ms, so a noisy 2-core machine does not
fail it; before the fix it was the length of a whole masked fetch (0.7-0.8 s here)."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from typing import Any

import pytest

from dataplane_cluster import DataPlaneCluster, run_async, wait_committed
from kolk.client.consumer import Offset
from kolk.security.jsonmask import MASKED_VALUE_BYTES_MAX
from kolk.security.masking import MASK_BYTES_PER_RESPONSE_MAX, MASK_RECORDS_PER_RESPONSE_MAX
from kolk.security.jsonmask import mask_json
from kolk.security.masking import mask_batches, mask_read
from kolk.security.policy import parse_policy
from kolk.segments.batch import iter_batches
from kolk.segments.records import build_batch, decode_records

POLICY = """version = 1

[identities]
admin = ["admin"]
alice = ["analyst"]
bob = ["ops"]

[[rule]]
effect = "allow"
roles = ["admin"]
actions = ["*"]
resources = ["topic:*", "smartmodule:*", "cluster"]

[[rule]]
effect = "allow"
roles = ["analyst", "ops"]
actions = ["consume", "describe"]
resources = ["topic:masked-*"]

[[mask]]
roles = ["analyst"]
topics = ["masked-*"]
fields = ["$.card"]
"""

TOPIC = "masked-big"
BATCHES = 50
PER_BATCH = 1000
RECORDS = BATCHES * PER_BATCH
BATCH_BYTES_BOUND = 128 << 10  # one of our batches is ~95 KB: an answer may end one batch past a budget
IDLE_CALLS = 30
BUSY_FLOOR_S = 0.1  # the target: another client answered within ~100 ms (median) meanwhile
BUSY_FACTOR = 10    # ...or within 10x its idle median, whichever is larger (a slow machine)


def value(i: int) -> bytes:
    return json.dumps({"id": i, "card": "4111-1111-1111-%04d" % (i % 10_000), "name": "x" * 10}).encode()


def masked(i: int) -> bytes:
    return json.dumps({"id": i, "card": "***", "name": "x" * 10}, separators=(",", ":")).encode()


async def leader_conn(c: DataPlaneCluster, topic: str, as_: str) -> Any:
    admin = c.client(as_="admin")
    parts = await admin.partitions(topic)
    address = next(u["spec"]["public_address"] for u in await admin.admin.list_objects("spu")
                   if u["spec"]["id"] == parts[0]["status"]["leader"])
    return await c.client(as_=as_)._connect(address)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: Any) -> Any:
    c = DataPlaneCluster(str(tmp_path_factory.mktemp("maskfair")), spus=1, tls=True,
                         clients=("admin", "alice", "bob"))
    try:
        c.start()

        async def setup() -> None:
            admin = c.client(as_="admin")
            await admin.admin.put_object("policy", "active", {"version": 1, "source": POLICY,
                                                               "sha256": parse_policy(POLICY).sha256})
            await admin.create_topic(TOPIC, 1, 1)
            await admin.create_topic("masked-huge", 1, 1)
            spu = await leader_conn(c, TOPIC, "admin")
            for j in range(BATCHES):
                recs = [(None, value(j * PER_BATCH + i)) for i in range(PER_BATCH)]
                r = await spu.call("produce", 30, topic=TOPIC, partition=0, acks="all", records=build_batch(recs),
                                   timeoutMs=20000)
                assert r.result.ok, r.result.error.message
            await wait_committed(admin, TOPIC)
        run_async(setup)
        yield c
    finally:
        c.close()


async def idle_median(bob: Any) -> float:
    lat = []
    for _ in range(IDLE_CALLS):
        t = time.monotonic()
        r = await bob.call("offsets", 10, topic=TOPIC, partition=0)
        lat.append(time.monotonic() - t)
        assert r.result.ok, r.result.error.message
    return statistics.median(lat)


async def probe_while(bob: Any, busy: asyncio.Task) -> list[float]:
    """bob's offsets calls, back to back, for as long as ``busy`` runs."""
    lat = []
    while not busy.done():
        t = time.monotonic()
        r = await bob.call("offsets", 10, topic=TOPIC, partition=0)
        lat.append(time.monotonic() - t)
        assert r.result.ok, r.result.error.message
    await busy  # its failure is the test's
    return lat


def time_weighted_median(latencies: list[float]) -> float:
    """The latency a call made at a random moment meets, at the median: calls made back to
    back are weighted by the time they took (one call stuck for a second behind a masked
    fetch counts for that second, not as one sample among many quick ones)."""
    ordered = sorted(latencies)
    half, covered = sum(ordered) / 2, 0.0
    for latency in ordered:
        covered += latency
        if covered >= half:
            return latency
    return ordered[-1]


def check_latency(idle: float, busy: list[float]) -> None:
    bound = max(BUSY_FLOOR_S, BUSY_FACTOR * idle)
    assert len(busy) >= 10, f"only {len(busy)} calls while the masked reader ran (max {max(busy) * 1e3:.0f} ms)"
    weighted = time_weighted_median(busy)
    assert weighted <= bound, (f"another client's time-weighted median latency {weighted * 1e3:.0f} ms while a "
                               f"masked reader ran (median {statistics.median(busy) * 1e3:.1f} ms, idle "
                               f"{idle * 1e3:.1f} ms, max {max(busy) * 1e3:.0f} ms, {len(busy)} calls) is over "
                               f"{bound * 1e3:.0f} ms")


def test_other_clients_are_answered_while_a_masked_reader_fetches(cluster: DataPlaneCluster) -> None:
    """alice fetches the whole 50,000-record topic twice, following nextOffset, asking for
    8 MiB each time; every answer is within the masking budget, bob's offsets calls are
    answered meanwhile, and alice got every record, masked, in order."""
    async def body() -> None:
        bob = await leader_conn(cluster, TOPIC, "bob")
        alice = await leader_conn(cluster, TOPIC, "alice")
        idle = await idle_median(bob)
        passes: list[list[bytes]] = []

        async def fetch_loop() -> None:
            for _ in range(2):
                answers: list[bytes] = []
                offset = 0
                while offset < RECORDS:
                    r = await alice.call("fetch", 60, topic=TOPIC, partition=0, offset=offset, maxBytes=8 << 20,
                                         isolation="committed")
                    assert r.result.ok, r.result.error.message
                    answers.append(bytes(r.records))
                    assert r.nextOffset > offset
                    offset = r.nextOffset
                passes.append(answers)
        busy = await probe_while(bob, asyncio.create_task(fetch_loop()))
        check_latency(idle, busy)
        for answers in passes:
            assert all(len(a) <= MASK_BYTES_PER_RESPONSE_MAX + BATCH_BYTES_BOUND for a in answers), \
                max(len(a) for a in answers)
            got = [(rec.offset, rec.value) for a in answers for pos, _h in iter_batches(a, 1 << 24)
                   for rec in decode_records(a, pos)]
            assert len(got) <= RECORDS + len(answers) * PER_BATCH  # whole batches: no more than that
            assert all(len(list(iter_batches(a, 1 << 24))) * PER_BATCH <= MASK_RECORDS_PER_RESPONSE_MAX + PER_BATCH
                       for a in answers)
            assert got == [(i, masked(i)) for i in range(RECORDS)]
    run_async(body)


def test_other_clients_are_answered_while_a_masked_reader_streams(cluster: DataPlaneCluster) -> None:
    """alice streams the whole topic from the beginning with a 64 MiB window; bob's calls are
    answered meanwhile, and the stream delivers every record, masked, in order."""
    async def body() -> None:
        bob = await leader_conn(cluster, TOPIC, "bob")
        idle = await idle_median(bob)
        consumer = cluster.client(as_="alice").consumer(TOPIC, partition=0, start=Offset.beginning(),
                                                        window_bytes=64 << 20)
        batches: list[Any] = []

        async def stream() -> None:
            async for batch in consumer.record_batches():  # decoded after: the test loop stays free
                batches.append(batch)
                if batch.last_offset >= RECORDS - 1:
                    return
        try:
            busy = await probe_while(bob, asyncio.create_task(asyncio.wait_for(stream(), 120)))
        finally:
            await consumer.close()
        check_latency(idle, busy)
        got = [(r.offset, bytes(r.value)) for b in batches for r in b.records()]
        assert got == [(i, masked(i)) for i in range(RECORDS)]
    run_async(body)


def test_a_value_over_the_limit_is_redacted_whole(cluster: DataPlaneCluster) -> None:
    """A strict JSON object one byte over MASKED_VALUE_BYTES_MAX reaches alice as the
    redaction (unparsed), one at the limit is masked field by field; admin gets both as stored."""
    at = b'{"card":"4111","pad":"' + b"x" * (MASKED_VALUE_BYTES_MAX - 22 - 2) + b'"}'
    over = at[:-2] + b'x"}'
    assert (len(at), len(over)) == (MASKED_VALUE_BYTES_MAX, MASKED_VALUE_BYTES_MAX + 1)

    async def body() -> None:
        spu = await leader_conn(cluster, "masked-huge", "admin")
        r = await spu.call("produce", 30, topic="masked-huge", partition=0, acks="all",
                           records=build_batch([(None, at), (None, over)]), timeoutMs=20000)
        assert r.result.ok, r.result.error.message
        for who, want in (("alice", [at.replace(b'"4111"', b'"***"'), b'"***"']), ("admin", [at, over])):
            conn = await leader_conn(cluster, "masked-huge", who)
            r = await conn.call("fetch", 10, topic="masked-huge", partition=0, offset=0, maxBytes=1 << 20,
                                isolation="committed")
            assert r.result.ok, r.result.error.message
            data = bytes(r.records)
            assert [rec.value for pos, _h in iter_batches(data, 1 << 24) for rec in decode_records(data, pos)] == want
    run_async(body)


# ---------------------------------------------------------------- the pure core

def test_mask_json_redacts_a_long_value_without_parsing_it() -> None:
    masks = [("$.card", "***")]
    long_array = b"[" + b"1," * (MASKED_VALUE_BYTES_MAX // 2) + b"1]"  # strict, not an object: still redacted
    assert mask_json(long_array, masks) == b'"***"'
    short_array = b"[1,2]"
    assert mask_json(short_array, masks) is short_array


def test_mask_read_stops_at_the_record_budget_and_matches_mask_batches() -> None:
    masks = [("$.card", "***")]
    data = b"".join(build_batch([(None, value(j * 10 + i)) for i in range(10)], base_offset=j * 10) for j in range(7))

    async def body() -> None:
        part = await mask_read(data, masks, records_max=25, slice_s=0.0)  # hands the loop back after every record
        assert part.stopped_at == 30  # three whole batches: the one reaching 25 records is finished
        assert part.data == mask_batches(data, masks)[:len(part.data)]
        whole = await mask_read(data, masks, records_max=1000)
        assert whole.stopped_at is None and whole.data == mask_batches(data, masks)
        one = await mask_read(data, masks, records_max=0)
        assert one.stopped_at == 10  # at least one batch, whatever the budget
    asyncio.run(body())
