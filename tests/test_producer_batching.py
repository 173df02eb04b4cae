"""How the producer turns records into requests, against a stand-in for the network calls:
with linger 0 a record goes at once when nothing of its partition is in flight, and records
made while a request is out wait for it and then go together (a full batch does not wait);
with a linger the batch goes when it is due, as in Kafka."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from kolk.protocol.errors import InvalidRequestError
from kolk.client.producer import RECORD_BYTES_MAX, AsyncProducer
from kolk.segments.batch import parse_header


class Gated:
    """AsyncClient's calls; each produce waits until the test opens its gate."""

    def __init__(self) -> None:
        self.admin = self
        self.sent: list[int] = []  # record count per request, in order
        self.sizes: list[int] = []  # bytes per request
        self.cap: int | None = None  # the topic's max_message_bytes, as the SC would say
        self.gates: list[asyncio.Event] = []
        self.arrived = asyncio.Event()

    async def partitions(self, topic: str) -> list[dict[str, Any]]:
        return [{"spec": {"partition": 0}}]

    async def allocate_producer_ids(self, count: int) -> int:
        return 7

    async def max_message_bytes(self, topic: str) -> int | None:
        return self.cap

    async def produce(self, topic: str, partition: int, data: bytes, *args: Any) -> int:
        base = sum(self.sent)  # the SPU appends in arrival order
        self.sent.append(parse_header(data).record_count)
        self.sizes.append(len(data))
        gate = asyncio.Event()
        self.gates.append(gate)
        self.arrived.set()
        await gate.wait()
        return base

    async def next_request(self) -> None:
        self.arrived.clear()
        await asyncio.wait_for(self.arrived.wait(), 5)

    async def answer_all(self, producer: AsyncProducer) -> None:
        """Open every gate, including those of requests the flush still sends, until it ends."""
        flush = asyncio.ensure_future(producer.flush())
        for _ in range(500):
            for g in self.gates:
                g.set()
            done, _ = await asyncio.wait([flush], timeout=0.01)
            if done:
                return await flush
        raise AssertionError("the producer did not flush")


def test_linger_zero_sends_at_once_then_batches_behind_the_request_in_flight() -> None:
    async def body() -> None:
        calls = Gated()
        p = AsyncProducer(calls, "t", linger_ms=0)  # type: ignore[arg-type]
        first = await p.send(b"r0")
        await calls.next_request()
        assert calls.sent == [1]
        later = [await p.send(b"r%d" % i) for i in range(1, 10)]
        for _ in range(3):
            await asyncio.sleep(0)  # let any wrongly scheduled send run
        assert calls.sent == [1], "records made while a request is out wait for it"
        calls.gates[0].set()
        await calls.next_request()
        assert calls.sent == [1, 9]
        calls.gates[1].set()
        await p.flush()
        assert (await first).offset == 0
        assert [(await f).offset for f in later] == list(range(1, 10))
    asyncio.run(body())


def test_linger_zero_sends_full_batches_beside_the_request_in_flight() -> None:
    async def body() -> None:
        calls = Gated()
        p = AsyncProducer(calls, "t", linger_ms=0, batch_bytes=1024)  # type: ignore[arg-type]
        await p.send(b"first")
        await calls.next_request()
        for _ in range(10):
            await p.send(bytes(200))  # 229 B each with overhead: a 1 KiB batch fills at 5
        while len(calls.sent) < 3:
            await calls.next_request()
        assert calls.sent == [1, 5, 5] and not calls.gates[0].is_set()
        for g in calls.gates:
            g.set()
        await asyncio.wait_for(p.flush(), 5)
    asyncio.run(body())


def test_linger_sends_a_due_batch_beside_the_request_in_flight() -> None:
    async def body() -> None:
        calls = Gated()
        p = AsyncProducer(calls, "t", linger_ms=1)  # type: ignore[arg-type]
        await p.send(b"a")
        await calls.next_request()
        await p.send(b"b")
        await calls.next_request()  # due after 1 ms; a slot is free, so it goes
        assert calls.sent == [1, 1]
        for g in calls.gates:
            g.set()
        await asyncio.wait_for(p.flush(), 5)
    asyncio.run(body())


def test_send_all_queues_in_order_and_resolves_each_record() -> None:
    async def body() -> None:
        calls = Gated()
        p = AsyncProducer(calls, "t", linger_ms=0, batch_bytes=1024)  # type: ignore[arg-type]
        first = await p.send_all([b"a", b"b", b"c"])
        await calls.next_request()
        assert calls.sent == [3] and len(first) == 3
        big = await p.send_all([bytes(200)] * 12)  # 229 B each: full batches of 5 go at once
        while len(calls.sent) < 3:
            await calls.next_request()
        assert calls.sent == [3, 5, 5], "full batches go beside the request in flight; the rest waits"
        await calls.answer_all(p)
        assert [m.offset for m in await first] == [0, 1, 2]
        assert [m.offset for m in await big] == list(range(3, 15))
        assert sum(calls.sent) == 15
        nothing = await p.send_all([])
        assert len(nothing) == 0 and await nothing == [], "an empty call queues nothing and resolves at once"
        assert sum(calls.sent) == 15
    asyncio.run(body())


def test_send_all_waits_for_buffer_room_and_loses_nothing() -> None:
    async def body() -> None:
        calls = Gated()
        p = AsyncProducer(calls, "t", linger_ms=0, batch_bytes=1024, buffer_bytes_max=2048)  # type: ignore[arg-type]
        task = asyncio.ensure_future(p.send_all([bytes(100)] * 50))
        while not task.done():
            await calls.next_request()
            for g in calls.gates:
                g.set()
        sent = await task
        await calls.answer_all(p)
        assert sum(calls.sent) == 50 and [m.offset for m in await sent] == list(range(50))
    asyncio.run(body())


def test_send_all_refuses_a_record_too_large_before_queueing_anything() -> None:
    async def body() -> None:
        calls = Gated()
        p = AsyncProducer(calls, "t", linger_ms=0)  # type: ignore[arg-type]
        with pytest.raises(InvalidRequestError, match="more than the largest batch"):
            await p.send_all([b"ok", bytes(RECORD_BYTES_MAX)])
        with pytest.raises(InvalidRequestError, match="partitions 0-0, not 3"):
            await p.send_all([b"ok"], partition=3)
        await asyncio.wait_for(p.flush(), 5)
        assert calls.sent == []
    asyncio.run(body())


def test_batches_stay_within_the_topic_max_message_bytes() -> None:
    """The producer learns the topic's max_message_bytes and never fills a batch past it,
    with send and with send_all, whatever its own batch_bytes says."""
    async def body() -> None:
        fake = Gated()
        fake.cap = 2048
        producer = AsyncProducer(fake, "t", batch_bytes=256 << 10, linger_ms=0)  # type: ignore[arg-type]
        futures = [await producer.send(b"v" * 150, b"key-%d" % i) for i in range(40)]
        sent = await producer.send_all([b"w" * 90] * 60, key=b"k")
        await fake.answer_all(producer)
        await asyncio.gather(*futures)
        await sent
        assert sum(fake.sent) == 100 and len(fake.sent) > 4
        assert max(fake.sizes) <= 2048, fake.sizes
    asyncio.run(body())
