"""Redis Streams' side, through redis-py with hiredis at its documented best practice.

Produce: ``XADD`` in pipelines of ``PIPELINE`` commands (no MULTI), every reply checked.
Consume: ``XREAD COUNT READ_COUNT`` from id 0 onwards. Latency: ``XADD`` per record as it
is made; the consumer tails with ``XREAD BLOCK``.
"""

from __future__ import annotations

import time

import redis
import redis.asyncio as aredis

from . import latency, procs

PIPELINE = 1000
READ_COUNT = 10_000
FIELD = b"v"


class RedisWorkload:
    system = "redis"

    def __init__(self, port: int) -> None:
        self.port = port
        self.r = redis.Redis(host="127.0.0.1", port=port)

    async def setup(self, key: str) -> None:
        self.r.delete(key)

    async def produce(self, key: str, size: int, seconds: float) -> tuple[int, float]:
        value = bytes(size)
        n = 0
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            pipe = self.r.pipeline(transaction=False)
            for _ in range(PIPELINE):
                pipe.xadd(key, {FIELD: value})
            replies = pipe.execute()
            if len(replies) != PIPELINE or not all(isinstance(x, bytes) for x in replies):
                raise RuntimeError(f"redis: XADD replies were not all ids: {replies[:3]!r}")
            n += PIPELINE
        elapsed = time.perf_counter() - t0
        if self.r.xlen(key) != n:
            raise RuntimeError(f"redis: stream holds {self.r.xlen(key)} entries, expected {n}")
        return n, elapsed

    async def consume(self, key: str, count: int) -> float:
        last = b"0"
        n = 0
        nbytes = 0
        t0 = time.perf_counter()
        while n < count:
            reply = self.r.xread({key: last}, count=READ_COUNT)
            entries = reply[0][1]
            for entry_id, fields in entries:
                nbytes += len(fields[FIELD])
                n += 1
            last = entries[-1][0]
        elapsed = time.perf_counter() - t0
        if n != count:
            raise RuntimeError(f"redis: read {n} entries, expected {count}")
        return elapsed

    async def latency(self, key: str, rate: int, seconds: float,
                      window: "procs.CpuWindow | None" = None) -> list[float]:
        r = aredis.Redis(host="127.0.0.1", port=self.port)

        async def send(value: bytes) -> None:
            await r.xadd(key, {FIELD: value})  # one XADD, one request, per record

        async def finish() -> None:
            return None  # every XADD above was already acknowledged

        try:
            return await latency.measure(self.system, str(self.port), key, rate, seconds, send, finish, window)
        finally:
            await r.aclose()

    async def close(self) -> None:
        self.r.close()


async def tail(address: str, key: str, count: int, seen: "latency.Seen") -> None:
    r = aredis.Redis(host="127.0.0.1", port=int(address))
    last = b"0"
    try:
        while True:
            reply = await r.xread({key: last}, count=READ_COUNT, block=1000)
            if not reply:
                continue
            now = time.time()
            for entry_id, fields in reply[0][1]:
                last = entry_id
                if seen(now, fields[FIELD]):
                    return
    finally:
        await r.aclose()
