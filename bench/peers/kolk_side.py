"""Kolk's side of the peer benchmark, through the asyncio client as a user would drive it.

Produce: one producer, ``acks=all`` with the idempotent default, 1 MiB batches, linger 5 ms,
records handed over 1,000 at a time with ``send_all`` (the batching API, as Redis gets
pipelines of 1,000; ``kolk bench`` measures the one-record ``send``). Consume: one consumer
from the beginning, every record handed to a Python loop. Latency: linger 0, each record
sent with ``send`` as it is made; a record made while a request is in flight rides the next
request (the producer's linger-0 rule), so the produce requests are counted, not assumed.
"""

from __future__ import annotations

import asyncio
import time

from kolk.cli.bench import consume_from_beginning
from kolk.client.client import AsyncClient
from kolk.client.consumer import Offset

from . import latency, procs

LEADER_TIMEOUT_S = 30.0
CALL_RECORDS = 1000  # records per send_all call, as Redis gets 1,000 XADDs per pipeline


class KolkWorkload:
    system = "kolk"

    def __init__(self, address: str, replicas: int) -> None:
        self.address = address
        self.replicas = replicas
        self.client = AsyncClient(address)

    async def setup(self, topic: str) -> None:
        await self.client.create_topic(topic, 1, self.replicas)
        deadline = time.monotonic() + LEADER_TIMEOUT_S
        while time.monotonic() < deadline:
            parts = await self.client.refresh(topic)
            if all(p["status"]["leader"] is not None for p in parts):
                return
            await asyncio.sleep(0.02)  # polling for the topic's leader, with a deadline
        raise RuntimeError(f"topic {topic} has no leader after {LEADER_TIMEOUT_S:.0f} s")

    async def produce(self, topic: str, size: int, seconds: float) -> tuple[int, float]:
        """Records handed over :data:`CALL_RECORDS` at a time with ``send_all``."""
        values = [bytes(size)] * CALL_RECORDS
        producer = self.client.producer(topic, acks="all", batch_bytes=1 << 20, linger_ms=5)
        n = 0
        last = None
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            last = await producer.send_all(values)
            n += CALL_RECORDS
        await producer.flush()
        metas = await last
        return self._checked(n, metas[-1].offset, t0)

    async def produce_per_record(self, topic: str, size: int, seconds: float) -> tuple[int, float]:
        """The same with one ``send`` per record, the call a first-time user writes."""
        value = bytes(size)
        producer = self.client.producer(topic, acks="all", batch_bytes=1 << 20, linger_ms=5)
        send = producer.send
        n = 0
        last = None
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            for _ in range(CALL_RECORDS):
                last = await send(value)
            n += CALL_RECORDS
        await producer.flush()
        meta = await last
        return self._checked(n, meta.offset, t0)

    @staticmethod
    def _checked(n: int, last_offset: int, t0: float) -> tuple[int, float]:
        elapsed = time.perf_counter() - t0
        if last_offset != n - 1:
            raise RuntimeError(f"kolk: last offset {last_offset}, expected {n - 1}")
        return n, elapsed

    async def consume(self, topic: str, count: int) -> float:
        n, _nbytes, elapsed = await consume_from_beginning(self.client, topic)  # the loop `kolk bench` times
        if n != count:
            raise RuntimeError(f"kolk: consumed {n} records, expected {count}")
        return elapsed

    async def latency(self, topic: str, rate: int, seconds: float,
                      window: "procs.CpuWindow | None" = None) -> list[float]:
        producer = self.client.producer(topic, acks="all", linger_ms=0)

        async def send(value: bytes) -> None:
            await producer.send(value)

        # With linger 0 the producer sends a record at once unless a request is in flight, and
        # then the records made meanwhile ride the next request together: count the produce
        # requests themselves (one client.produce call per request) for the CPU window.
        requests = 0
        produce = self.client.produce

        async def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
            nonlocal requests
            requests += 1
            return await produce(*args, **kwargs)

        self.client.produce = counted  # type: ignore[method-assign]
        try:
            return await latency.measure(self.system, self.address, topic, rate, seconds, send, producer.flush,
                                         window, lambda: requests)
        finally:
            del self.client.produce  # the class's method again

    async def close(self) -> None:
        await self.client.close()


async def tail(address: str, topic: str, count: int, seen: "latency.Seen") -> None:
    client = AsyncClient(address)
    consumer = client.consumer(topic, start=Offset.beginning())
    try:
        async for batch in consumer.batches():
            now = time.time()
            for rec in batch:
                if seen(now, rec.value):
                    return
    finally:
        await consumer.close()
        await client.close()
