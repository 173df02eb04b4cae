"""How the producer turns records into requests, against a stand-in for the network calls:
with linger 0 a record goes at once when nothing of its partition is in flight, and records
made while a request is out wait for it and then go together (a full batch does not wait);
with a linger the batch goes when it is due, as in Kafka."""

from __future__ import annotations

import asyncio
from typing import Any

from kolk.producer import AsyncProducer
from kolk.segments.batch import parse_header


class Gated:
    """AsyncClient's calls; each produce waits until the test opens its gate."""

    def __init__(self) -> None:
        self.admin = self
        self.sent: list[int] = []  # record count per request, in order
        self.gates: list[asyncio.Event] = []
        self.arrived = asyncio.Event()

    async def partitions(self, topic: str) -> list[dict[str, Any]]:
        return [{"spec": {"partition": 0}}]

    async def allocate_producer_ids(self, count: int) -> int:
        return 7

    async def produce(self, topic: str, partition: int, data: bytes, *args: Any) -> int:
        self.sent.append(parse_header(data).record_count)
        gate = asyncio.Event()
        self.gates.append(gate)
        self.arrived.set()
        await gate.wait()
        return sum(self.sent[:-1])

    async def next_request(self) -> None:
        self.arrived.clear()
        await asyncio.wait_for(self.arrived.wait(), 5)


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
