"""The consumer: start at the beginning, the end, an absolute offset, N from the end or a
timestamp; one partition or all; read up to the high watermark; follow leader changes.

Each partition is a stream from its leader SPU with flow control: the consumer grants a
window of bytes, the SPU pushes whole batches while the window has room, and the consumer
grants again as it hands records out, so neither side buffers more than the window. When the
stream breaks (the SPU died, or it no longer leads), the consumer asks the SC for the new
leader and resumes at the next offset it has not handed out.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, AsyncIterator, NamedTuple

import capnp

from .errors import InvalidRequestError, KolkError, error_from_wire
from .segments import decode_records
from .segments.batch import iter_batches
from .wire import schema

if TYPE_CHECKING:
    from .client import AsyncClient

IDLE_PROBE_S = 1.0  # with no push for this long, check that the stream's SPU still answers
BATCH_BYTES_MAX = 64 << 20


@dataclass(frozen=True)
class Offset:
    """Where a consumer starts: ``Offset.beginning()``, ``end()``, ``absolute(n)``,
    ``from_end(n)`` or ``timestamp(ms)``."""

    kind: str
    value: int = 0

    @staticmethod
    def beginning() -> "Offset":
        return Offset("beginning")

    @staticmethod
    def end() -> "Offset":
        return Offset("end")

    @staticmethod
    def absolute(offset: int) -> "Offset":
        if offset < 0:
            raise InvalidRequestError(f"an absolute offset is >= 0, got {offset}")
        return Offset("absolute", offset)

    @staticmethod
    def from_end(n: int) -> "Offset":
        if n < 0:
            raise InvalidRequestError(f"from_end takes n >= 0, got {n}")
        return Offset("from_end", n)

    @staticmethod
    def timestamp(ms: int) -> "Offset":
        return Offset("timestamp", ms)


class ConsumerRecord(NamedTuple):
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...] = ()


class _Sink(schema.StreamConsumer.Server):
    def __init__(self, queue: asyncio.Queue[Any]) -> None:
        self.queue = queue

    async def push(self, records, highWatermark, nextOffset, accumulators, _context, **kwargs):  # noqa: N803, ANN001
        self.queue.put_nowait((bytes(records), int(highWatermark), int(nextOffset), [bytes(a) for a in accumulators]))

    async def fail(self, error, _context, **kwargs):  # noqa: ANN001
        self.queue.put_nowait(error_from_wire(error.code, error.message, None, error.retriable))


class _PartitionStream:
    def __init__(self, consumer: "AsyncConsumer", partition: int, offset: int) -> None:
        self.c = consumer
        self.partition = partition
        self.offset = offset  # next offset to hand out
        self.high_watermark = -1
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.accumulators: list[bytes] | None = None  # the chain's aggregate state after the last push
        self.control: Any = None
        self.spu: Any = None
        self.address: str | None = None
        self._grants: set[asyncio.Future[Any]] = set()

    def _grant_done(self, fut: asyncio.Future[Any]) -> None:
        self._grants.discard(fut)
        if not fut.cancelled() and fut.exception() is not None:
            self.control = None  # the stream broke; next_chunk reopens it

    async def open(self) -> None:
        client = self.c.client
        self.queue = asyncio.Queue()
        self.spu, self.address = await client.leader_spu(self.c.topic, self.partition)
        chain = []
        for i, (name, params) in enumerate(self.c.smartmodules):
            stage: dict[str, Any] = {"name": name, "params": [{"key": k, "value": v} for k, v in params.items()]}
            if self.accumulators is not None and i < len(self.accumulators):
                stage.update(accumulator=self.accumulators[i], hasAccumulator=True)
            chain.append(stage)
        r = await self.spu.stream(self.c.topic, self.partition, self.offset, self.c.isolation, self.c.window_bytes,
                                  _Sink(self.queue), chain)
        client.check(r.result)
        self.control = r.control

    async def next_chunk(self) -> list[ConsumerRecord]:
        """Records from the next push (possibly none), reopening the stream when it broke."""
        while True:
            try:
                if self.control is None:
                    await self.open()
                try:
                    item = await asyncio.wait_for(self.queue.get(), IDLE_PROBE_S)
                except asyncio.TimeoutError:
                    # Idle: make sure the SPU is still there and still leads.
                    r = await asyncio.wait_for(self.spu.offsets(self.c.topic, self.partition), 5)
                    self.c.client.check(r.result)
                    self.high_watermark = r.highWatermark
                    return []
                if isinstance(item, KolkError):
                    self.control = None
                    raise item  # the stream ended on an error (a SmartModule failed)
                data, hw, next_offset, accumulators = item
                self.high_watermark = hw
                if accumulators:
                    self.accumulators = accumulators
                if not data:
                    # A keepalive, or batches a SmartModule dropped whole: the SPU has read
                    # (and this consumer has handed out) everything before next_offset.
                    self.offset = max(self.offset, next_offset)
                    return []
                out = self._decode(data)
                self.offset = max(self.offset, next_offset)
                # Grant the window back without waiting for the answer: a lost grant shows up
                # as a broken stream on the next push or probe.
                self._grants.add(grant := asyncio.ensure_future(self.control.grant(len(data))))
                grant.add_done_callback(self._grant_done)
                return out
            except (KolkError, capnp.KjException, asyncio.TimeoutError, OSError) as e:
                if isinstance(e, KolkError) and not e.retriable:
                    raise
                self.control = None
                if not isinstance(e, KolkError):
                    self.c.client.drop_connection(self.address)
                self.c.client.forget_leaders(self.c.topic)
                await asyncio.sleep(0.1)  # backoff before asking for the new leader

    def _decode(self, data: bytes) -> list[ConsumerRecord]:
        leading = (self.partition,)
        out: list[ConsumerRecord] = []
        for pos, h in iter_batches(data, BATCH_BYTES_MAX, shared_offsets=True):
            if h.next_offset <= self.offset:
                continue  # wholly before where this consumer stands
            records = decode_records(data, pos, record_type=ConsumerRecord, leading=leading)
            if h.base_offset < self.offset:
                records = [r for r in records if r.offset >= self.offset]
            out.extend(records)
        if out:
            self.offset = out[-1].offset + 1
        return out


def normalize_chain(chain: Any) -> list[tuple[str, dict[str, str]]]:
    out = []
    for stage in chain or []:
        name, params = (stage, {}) if isinstance(stage, str) else (stage[0], dict(stage[1] or {}))
        if not isinstance(name, str) or not name:
            raise InvalidRequestError(f"a SmartModule chain stage is NAME[@VERSION] or (NAME, params), got {stage!r}")
        out.append((name, {str(k): str(v) for k, v in params.items()}))
    return out


class AsyncConsumer:
    def __init__(self, client: "AsyncClient", topic: str, *, partition: int | None = None,
                 start: Offset | None = None, isolation: str = "committed", window_bytes: int = 4 << 20,
                 stop_at_end: bool = False,
                 smartmodules: "list[tuple[str, dict[str, str]]] | list[str] | None" = None) -> None:
        """``smartmodules``: a chain run on the SPU before records reach this consumer, as
        ``[(NAME or NAME@VERSION, {param: value}), ...]`` (a bare name means no parameters)."""
        if isolation not in ("committed", "uncommitted"):
            raise InvalidRequestError("isolation must be 'committed' or 'uncommitted'")
        if not 64 << 10 <= window_bytes <= 64 << 20:
            raise InvalidRequestError("window_bytes must be 64 KiB to 64 MiB")
        self.client = client
        self.topic = topic
        self.partition = partition
        self.start = start or Offset.beginning()
        self.isolation = 0 if isolation == "committed" else 1
        self.window_bytes = window_bytes
        self.stop_at_end = stop_at_end
        self.smartmodules = normalize_chain(smartmodules)
        self._streams: list[_PartitionStream] = []

    async def _resolve(self) -> None:
        parts = await self.client.partitions(self.topic)
        indexes = range(len(parts)) if self.partition is None else [self.partition]
        if self.partition is not None and not 0 <= self.partition < len(parts):
            raise InvalidRequestError(f"topic {self.topic} has partitions 0-{len(parts) - 1}, not {self.partition}")
        for p in indexes:
            start, hw, leo = await self.client.offsets(self.topic, p)
            s = self.start
            if s.kind == "beginning":
                offset = start
            elif s.kind == "end":
                offset = hw
            elif s.kind == "absolute":
                offset = min(max(s.value, start), leo)
            elif s.kind == "from_end":
                offset = max(start, hw - s.value)
            else:
                offset = await self.client.offset_for_timestamp(self.topic, p, s.value)
            stream = _PartitionStream(self, p, offset)
            stream.high_watermark = hw
            self._streams.append(stream)

    async def batches(self) -> AsyncIterator[list[ConsumerRecord]]:
        """Records as lists, one per push: the fast way to read."""
        if not self._streams:
            await self._resolve()
        pending = {asyncio.ensure_future(s.next_chunk()): s for s in self._streams if not self._done(s)}
        try:
            while pending:
                done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for fut in done:
                    s = pending.pop(fut)
                    records = fut.result()
                    if records:
                        yield records
                    if not self._done(s):
                        pending[asyncio.ensure_future(s.next_chunk())] = s
        finally:
            for fut in pending:
                fut.cancel()

    def _done(self, s: _PartitionStream) -> bool:
        return self.stop_at_end and s.high_watermark >= 0 and s.offset >= s.high_watermark

    async def __aiter__(self) -> AsyncIterator[ConsumerRecord]:
        async for batch in self.batches():
            for rec in batch:
                yield rec

    async def close(self) -> None:
        for s in self._streams:
            if s.control is not None:
                try:
                    await s.control.close()
                except capnp.KjException:
                    pass  # the SPU is gone already
            # Break the stream <-> consumer cycle so capabilities are freed by reference
            # counting, not by the cycle collector at an arbitrary moment.
            s.control = s.spu = None
            s.c = None  # type: ignore[assignment]
        self._streams.clear()
