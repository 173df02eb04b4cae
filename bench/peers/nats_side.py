"""NATS JetStream's side, through nats-py at its documented best practice.

Produce: ``publish_async`` with at most ``MAX_PENDING`` acknowledgements in flight (nats-py's
own bound), then ``publish_async_completed``; every ack is checked. Consume: a pull consumer
(ack policy none, deliver all) fetching ``FETCH`` messages per request. Latency: an ordered
push consumer, the lowest-latency way to tail a stream in nats-py.
"""

from __future__ import annotations

import asyncio
import time

import nats
from nats.js import api

from . import latency, procs

MAX_PENDING = 4000
FETCH = 1000
SETUP_TIMEOUT_S = 30.0


class NatsWorkload:
    system = "nats"

    def __init__(self, urls: list[str], replicas: int) -> None:
        self.urls = urls
        self.replicas = replicas
        self.nc = None
        self.js = None

    async def connect(self) -> None:
        self.nc = await nats.connect(self.urls, pending_size=64 << 20)
        self.js = self.nc.jetstream(publish_async_max_pending=MAX_PENDING, timeout=10)

    async def setup(self, stream: str) -> None:
        if self.nc is None:
            await self.connect()
        deadline = time.monotonic() + SETUP_TIMEOUT_S
        while True:
            try:
                await self.js.add_stream(name=stream, subjects=[stream], storage=api.StorageType.FILE,
                                         num_replicas=self.replicas)
                return
            except nats.js.errors.Error:
                # a fresh cluster answers "insufficient resources" until every peer has joined
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)  # retrying stream creation on a forming cluster, with a deadline

    async def produce(self, stream: str, size: int, seconds: float) -> tuple[int, float]:
        value = bytes(size)
        failures: list[BaseException] = []

        def check(fut: asyncio.Future) -> None:
            if not fut.cancelled() and fut.exception() is not None:
                failures.append(fut.exception())

        publish = self.js.publish_async
        n = 0
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            for _ in range(1000):
                (await publish(stream, value)).add_done_callback(check)
            n += 1000
        await self.js.publish_async_completed()
        elapsed = time.perf_counter() - t0
        if failures:
            raise RuntimeError(f"nats: {len(failures)} publishes failed, first: {failures[0]!r}")
        info = await self.js.stream_info(stream)
        if info.state.messages != n:
            raise RuntimeError(f"nats: stream holds {info.state.messages} messages, expected {n}")
        return n, elapsed

    async def consume(self, stream: str, count: int) -> float:
        config = api.ConsumerConfig(ack_policy=api.AckPolicy.NONE, deliver_policy=api.DeliverPolicy.ALL)
        psub = await self.js.pull_subscribe(stream, durable=None, stream=stream, config=config,
                                            pending_msgs_limit=4 * FETCH)
        n = 0
        nbytes = 0
        t0 = time.perf_counter()
        while n < count:
            for msg in await psub.fetch(batch=min(FETCH, count - n), timeout=10):
                nbytes += len(msg.data)
                n += 1
        elapsed = time.perf_counter() - t0
        await psub.unsubscribe()
        return elapsed

    async def latency(self, stream: str, rate: int, seconds: float,
                      window: "procs.CpuWindow | None" = None) -> list[float]:
        async def send(value: bytes) -> None:
            await self.js.publish_async(stream, value)  # one PUB, one request, per record

        return await latency.measure(self.system, ",".join(self.urls), stream, rate, seconds, send,
                                     self.js.publish_async_completed, window)

    async def close(self) -> None:
        if self.nc is not None:
            await self.nc.close()


async def tail(address: str, stream: str, count: int, seen: "latency.Seen") -> None:
    nc = await nats.connect(address.split(","))
    try:
        js = nc.jetstream()
        sub = await js.subscribe(stream, ordered_consumer=True, deliver_policy=api.DeliverPolicy.ALL)
        async for msg in sub.messages:
            if seen(time.time(), msg.data):
                return
    finally:
        await nc.close()
