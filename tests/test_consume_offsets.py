"""A consumer that asks for an offset the partition does not hold (issue 19, item 3).

Below the log start the records were deleted by retention; past the log end they do not
exist yet. Either way the consumer raises OffsetOutOfRangeError at once, naming the partition,
the offset and the range it holds now (core/protocol/offset_range.py), and ``kolk consume``
prints that in one line and exits 1: never a silent clamp, never a retry loop. The log end
itself is a valid start: the consumer waits there for the next record.

The pure wording first; then real processes (one SC, three SPUs, replication factor 3) with
a topic whose small segments and retention_bytes make its log start move.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from typing import Any

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dataplane_cluster import DataPlaneCluster, read_all, run_async, wait_committed, wait_until  # noqa: E402
from lifecycle_cluster import kolk, lifecycle_cluster  # noqa: E402
from kolk.client.consumer import Offset, after_out_of_range  # noqa: E402
from kolk.protocol.errors import OffsetOutOfRangeError  # noqa: E402
from kolk.protocol.offset_range import out_of_range, out_of_range_message, readable  # noqa: E402

# Small segments and a small size limit: retention deletes the oldest segments as records arrive.
RETAINED = {"segment_bytes": "4096", "max_message_bytes": "4096", "retention_bytes": "16384"}
VALUE = b"v" * 200
CLI_TIMEOUT_S = 60


# -------------------------------------------------------------------- the wording (pure)

def test_below_the_log_start_names_the_range_and_retention() -> None:
    assert out_of_range_message("orders-0", 5, 1200, 5000) == (
        "offset 5 of orders-0 is below the log start 1200 (records 1200-4999 are available; older ones were "
        "deleted by retention)")


def test_past_the_end_names_the_range_and_the_next_offset() -> None:
    assert out_of_range_message("orders-0", 9000, 1200, 5000) == (
        "offset 9000 is past the end of orders-0 (records 1200-4999 are available; the next record written gets "
        "offset 5000)")


def test_an_empty_partition_says_no_records_are_available() -> None:
    assert out_of_range_message("orders-3", 0, 700, 700) == (
        "offset 0 of orders-3 is below the log start 700 (no records are available; older ones were deleted by "
        "retention)")
    assert out_of_range_message("orders-3", 1, 0, 0) == (
        "offset 1 is past the end of orders-3 (no records are available; the next record written gets offset 0)")


@pytest.mark.parametrize("offset, ok", [(99, False), (100, True), (150, True), (200, True), (201, False)])
def test_a_reader_may_start_from_the_log_start_to_the_log_end_included(offset: int, ok: bool) -> None:
    assert readable(offset, 100, 200) is ok


def test_the_error_carries_the_numbers() -> None:
    e = out_of_range("t-1", 3, 10, 20)
    assert isinstance(e, OffsetOutOfRangeError) and not e.retriable and e.code == "offsetOutOfRange"
    assert (e.offset, e.log_start_offset, e.log_end_offset) == (3, 10, 20)
    assert "\n" not in str(e)


@pytest.mark.parametrize("offset, may_restart, step", [
    (5, True, "restart"),    # below the start, a start that named no offset, nothing handed out
    (5, False, "raise"),     # below the start: an absolute start, or records were handed out
    (250, True, "raise"),    # past the end: never moved
    (250, False, "raise"),
    (150, True, "reopen"),   # in range after all: the leader changed between the answers
    (200, False, "reopen"),  # the log end is in range
])
def test_what_a_stream_does_after_an_out_of_range_refusal(offset: int, may_restart: bool, step: str) -> None:
    assert after_out_of_range(offset, 100, 200, may_restart) == step


# -------------------------------------------------------------------- real processes

@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    c = lifecycle_cluster(tmp_path_factory.mktemp("consume-offsets"))
    try:
        c.start()
        yield c
    finally:
        c.close()


async def produce(client: Any, topic: str, count: int) -> None:
    producer = client.producer(topic, acks="all", batch_bytes=2048, linger_ms=1)
    for _ in range(count):
        await producer.send(VALUE)
    await producer.close()


async def retained_topic(c: DataPlaneCluster, topic: str, records: int) -> tuple[Any, int, int]:
    """A replicated topic whose log start moved past 0: (client, log start, log end)."""
    client = c.client()
    await client.create_topic(topic, 1, 3, RETAINED)
    await produce(client, topic, records)
    await wait_committed(client, topic)

    async def moved() -> tuple[int, int] | None:
        start, _hw, leo = await client.offsets(topic, 0)
        return (start, leo) if start > 0 else None
    start, leo = await wait_until(moved, 30, f"retention to move the log start of {topic}-0")
    return client, start, leo


def test_consumer_below_the_log_start_gets_the_range_at_once(cluster: DataPlaneCluster) -> None:
    """Retention deleted the oldest segments: an absolute offset below the log start raises at
    once with the range, a consumer from the beginning reads exactly what is left, and one at
    the log start reads the same."""
    async def body() -> None:
        client, start, leo = await retained_topic(cluster, "below", 400)
        consumer = client.consumer("below", partition=0, start=Offset.absolute(0), stop_at_end=True)
        t0 = time.monotonic()
        with pytest.raises(OffsetOutOfRangeError) as e:
            await consumer.poll(10)
        assert time.monotonic() - t0 < 5, "raised at once, not retried"
        await consumer.close()
        now_start, _hw, now_leo = await client.offsets("below", 0)
        assert str(e.value) == out_of_range_message("below-0", 0, e.value.log_start_offset, e.value.log_end_offset)
        assert start <= e.value.log_start_offset <= now_start and e.value.log_end_offset == now_leo == leo
        assert "below the log start" in str(e.value) and "deleted by retention" in str(e.value)
        records = await read_all(client, "below", start=Offset.beginning())
        assert [r.offset for r in records] == list(range(now_start, leo)) and records[0].value == VALUE
        at_start = await read_all(client, "below", start=Offset.absolute(now_start))
        assert [r.offset for r in at_start] == list(range(now_start, leo))
        await client.close()
    run_async(body)


def test_consumer_overtaken_by_retention_gets_the_range(cluster: DataPlaneCluster) -> None:
    """A consumer that stops reading while retention deletes past its position: its stream
    ends with offsetOutOfRange, and the next poll raises naming the offset it stood at (the
    records it had already been sent come first)."""
    async def body() -> None:
        client = cluster.client()
        await client.create_topic("overtaken", 1, 3, RETAINED)
        await produce(client, "overtaken", 40)  # about 9 KiB: below retention_bytes, nothing deleted yet
        await wait_committed(client, "overtaken")
        consumer = client.consumer("overtaken", partition=0, start=Offset.beginning(), window_bytes=64 << 10)
        first = await consumer.poll(10)
        assert first and first[0].offset == 0
        # At most a window (64 KiB, about 250 records of 200 B) more is on its way to the consumer.
        await produce(client, "overtaken", 1200)

        async def passed() -> int | None:
            start, _hw, _leo = await client.offsets("overtaken", 0)
            return start if start > first[-1].offset + 400 else None
        await wait_until(passed, 30, "retention to delete past the consumer's position")
        seen = [r.offset for r in first]
        with pytest.raises(OffsetOutOfRangeError) as e:
            for _ in range(100):  # bounded: the window holds at most a few pushes
                seen.extend(r.offset for r in await consumer.poll(10))
        await consumer.close()
        assert seen == list(range(seen[-1] + 1)), "in order, without gaps, up to where retention overtook it"
        assert e.value.offset == seen[-1] + 1 and e.value.offset < e.value.log_start_offset
        assert str(e.value).startswith(f"offset {seen[-1] + 1} of overtaken-0 is below the log start "
                                       f"{e.value.log_start_offset} (records {e.value.log_start_offset}-")
        await client.close()
    run_async(body)


def test_cli_consume_below_the_log_start_is_one_line(cluster: DataPlaneCluster) -> None:
    async def body() -> None:
        client, _start, _leo = await retained_topic(cluster, "cli-below", 400)
        await client.close()
    run_async(body)
    r = kolk(cluster, "consume", "cli-below", "--offset", "0", "-d")
    assert r.returncode == 1 and r.stdout == ""
    assert len(r.stderr.splitlines()) == 1, r.stderr
    assert r.stderr.startswith("kolk consume: offset 0 of cli-below-0 is below the log start "), r.stderr
    assert r.stderr.rstrip().endswith("are available; older ones were deleted by retention)"), r.stderr


def test_cli_consume_past_the_end_is_refused_in_one_line(cluster: DataPlaneCluster) -> None:
    async def body() -> None:
        client = cluster.client()
        await client.create_topic("cli-end", 1, 3)
        await produce(client, "cli-end", 10)
        await wait_committed(client, "cli-end")
        await client.close()
    run_async(body)
    r = kolk(cluster, "consume", "cli-end", "--offset", "11", "-d")
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr == ("kolk consume: offset 11 is past the end of cli-end-0 (records 0-9 are available; the next "
                        "record written gets offset 10)\n"), r.stderr


def test_cli_consume_at_the_end_waits_for_the_next_record(cluster: DataPlaneCluster) -> None:
    """--offset equal to the log end is allowed: with -d it ends at once with nothing; without,
    it prints the next record produced."""
    async def body() -> None:
        client = cluster.client()
        await client.create_topic("cli-at-end", 1, 3)
        await produce(client, "cli-at-end", 10)
        await wait_committed(client, "cli-at-end")
        r = await asyncio.to_thread(kolk, cluster, "consume", "cli-at-end", "--offset", "10", "-d")
        assert r.returncode == 0 and r.stdout == "", r.stderr
        proc = subprocess.Popen([sys.executable, "-m", "kolk", "consume", "cli-at-end", "--offset", "10", "--max",
                                 "1", "--sc", ",".join(cluster.sc_addresses)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            producer = client.producer("cli-at-end", acks="all")
            await (await producer.send(b"the next one"))
            await producer.close()
            # The CLI may have subscribed before or after that record: both start at offset 10.
            out, err = await asyncio.to_thread(proc.communicate, timeout=CLI_TIMEOUT_S)
            assert proc.returncode == 0 and out == "the next one\n", err
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=CLI_TIMEOUT_S)
            await client.close()
    run_async(body)


def test_consumer_past_the_end_of_one_partition_names_it(cluster: DataPlaneCluster) -> None:
    """With every partition read from one absolute offset, the partition that does not reach
    it is named."""
    async def body() -> None:
        client = cluster.client()
        await client.create_topic("uneven", 2, 1)
        producer = client.producer("uneven", acks="all")
        for i in range(5):
            await producer.send(b"p0-%d" % i, partition=0)
        for i in range(2):
            await producer.send(b"p1-%d" % i, partition=1)
        await producer.close()
        await wait_committed(client, "uneven")
        consumer = client.consumer("uneven", start=Offset.absolute(4), stop_at_end=True)
        with pytest.raises(OffsetOutOfRangeError, match=r"^offset 4 is past the end of uneven-1 \(records 0-1 "):
            await asyncio.wait_for(consumer.poll(10), 20)
        await consumer.close()
        await client.close()
    run_async(body)
