"""The consumer: start at the beginning, the end, an absolute offset, N from the end or a
timestamp; one partition or all; read up to the high watermark; follow leader changes.

Each partition is a stream from its leader SPU with flow control: the consumer grants a
window of bytes, the SPU pushes whole batches while the window has room, and the consumer
grants again as it hands records out, so neither side buffers more than the window. When the
stream breaks (the SPU died, or it no longer leads), the consumer asks the SC for the new
leader and resumes at the next offset it has not handed out.

An offset the partition does not hold (below its log start: deleted by retention; past its
log end) is never clamped: the consumer raises :class:`OffsetOutOfRangeError` at once, naming
the partition, the offset and the range it holds now (core/protocol/offset_range.py). Only a
start that named no offset (``beginning``, ``end``, ``from_end``, ``timestamp``) moves on to the
new log start, and only before it handed anything out: retention that ran between the
consumer's look at the offsets and its stream's open.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, AsyncIterator, NamedTuple

from ..protocol.channel import CallRejected, ConnectionLost, StreamEnded

from ..protocol.channel_client import ClientConnection, ClientStream
from ..protocol.errors import (InvalidRequestError, KolkError, OffsetOutOfRangeError, OverloadedError,
                               PartitionOfflineError, TooManyStreamsError)
from ..protocol.offset_range import out_of_range, readable
from ..protocol.values import SmartModuleInvocation
import struct
from typing import Iterator

from ..protocol.wire import error_from_struct, transport_error
from ..segments import CODEC_NONE, InvalidBatchError, decode_records
from ..segments.batch import HEADER_SIZE, iter_batches

if TYPE_CHECKING:
    from .client import AsyncClient

IDLE_PROBE_S = 1.0  # with no push for this long, check that the stream's SPU still answers
PROBE_TIMEOUT_S = 5.0
RETRY_BACKOFF_S = 0.1
TRANSPORT_ERRORS = (CallRejected, ConnectionLost, StreamEnded, TimeoutError)
_RECORD_HEAD = struct.Struct("<IBqIi")  # length, attributes, timestamp delta, offset delta, key length
_I32 = struct.Struct("<i")
BATCH_BYTES_MAX = 64 << 20
RESTARTS_AT_LOG_START_MAX = 3  # a start that named no offset follows a moving log start this often


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


class RecordBatch:
    """One stored batch as it arrived, for users who want throughput: nothing is decoded until
    asked. ``count`` and the offsets come from the batch header; ``values()`` yields each
    value as a memoryview into the batch (no copy, uncompressed batches); ``records()``
    decodes ConsumerRecords. Records before ``start`` (where the consumer stood) are left out."""

    __slots__ = ("partition", "data", "pos", "header", "start")

    def __init__(self, partition: int, data: bytes, pos: int, header: Any, start: int) -> None:
        self.partition = partition
        self.data = data
        self.pos = pos
        self.header = header
        self.start = start

    @property
    def base_offset(self) -> int:
        return self.header.base_offset

    @property
    def last_offset(self) -> int:
        return self.header.base_offset + self.header.last_offset_delta

    @property
    def count(self) -> int:
        """Records of the batch at or after ``start`` (from the header, when the batch is whole)."""
        if self.header.base_offset >= self.start:
            return self.header.record_count
        return sum(1 for r in self.records())

    def __len__(self) -> int:
        return self.count

    def records(self) -> list[ConsumerRecord]:
        out = decode_records(self.data, self.pos, record_type=ConsumerRecord, leading=(self.partition,))
        if self.header.base_offset < self.start:
            out = [r for r in out if r.offset >= self.start]
        return out

    def values(self) -> Iterator[memoryview | None]:
        """Each value (None for a null value), as a view into the batch."""
        h = self.header
        if h.codec != CODEC_NONE:
            for r in self.records():
                yield None if r.value is None else memoryview(r.value)
            return
        view = memoryview(self.data)
        p = self.pos + HEADER_SIZE
        end = self.pos + h.size
        base, start = h.base_offset, self.start
        for _ in range(h.record_count):
            length, _attrs, _ts, offset_delta, klen = _RECORD_HEAD.unpack_from(view, p)
            q = p + _RECORD_HEAD.size + max(klen, 0)
            (vlen,) = _I32.unpack_from(view, q)
            q += 4
            if base + offset_delta >= start:
                yield None if vlen < 0 else view[q:q + vlen]
            p += 4 + length
            if p > end:
                raise InvalidBatchError(f"the batch at offset {base} is malformed", self.pos)


class _PartitionStream:
    """One partition's stream from its leader: reopened at the next offset when it breaks."""

    def __init__(self, consumer: "AsyncConsumer", partition: int, offset: int) -> None:
        self.c = consumer
        self.partition = partition
        self.offset = offset  # next offset to hand out
        # Before anything was handed out, a start that named no offset may follow the log start.
        self.restarts_left = 0 if consumer.start.kind == "absolute" else RESTARTS_AT_LOG_START_MAX
        self.rechecks_left = RESTARTS_AT_LOG_START_MAX  # reopens when the range looks fine again
        self.high_watermark = -1
        self.accumulators: list[bytes] | None = None  # the chain's aggregate state after the last push
        self.stream: ClientStream | None = None
        self.spu: ClientConnection | None = None
        self.address: str | None = None

    async def open(self) -> None:
        client = self.c.client
        self.spu, self.address = await client.leader_spu(self.c.topic, self.partition)
        chain = []
        for i, stage in enumerate(self.c.smartmodules):
            if self.accumulators is not None and i < len(self.accumulators):
                stage = stage.with_accumulator(self.accumulators[i])  # an aggregate resumes where it was
            chain.append(stage.wire_fields())
        r, stream = await self.spu.open_stream(
            "stream", self.c.window_bytes, client.timeout_s, topic=self.c.topic, partition=self.partition,
            offset=self.offset, isolation=self.c.isolation, smartmodules=chain)
        client.check(r.result)
        self.stream = stream

    def close(self) -> None:
        if self.stream is not None:
            self.stream.close()
            self.stream = None

    async def next_push(self) -> tuple[bytes, int]:
        """The next push's batch bytes and the offset it starts to matter at (possibly no
        bytes), reopening the stream when it broke."""
        while True:
            try:
                try:
                    if self.stream is None:
                        await self.open()
                    assert self.stream is not None and self.spu is not None
                    try:
                        push = await self.stream.next(IDLE_PROBE_S)
                    except TimeoutError:
                        # Idle: make sure the SPU is still there and still leads.
                        r = await self.spu.call("offsets", PROBE_TIMEOUT_S, topic=self.c.topic,
                                                partition=self.partition)
                        self.c.client.check(r.result)
                        self.high_watermark = r.highWatermark
                        return b"", self.offset
                except TRANSPORT_ERRORS as e:
                    if isinstance(e, StreamEnded) and e.error is not None:
                        self.stream = None
                        raise error_from_struct(e.error) from None  # a SmartModule failed
                    raise transport_error(e, self.address or f"the leader of {self.c.topic}-{self.partition}") from e
                self.high_watermark = push.highWatermark
                if push.nextOffset > self.offset:
                    self.restarts_left = 0  # handed out (or skipped by a SmartModule): no moving on now
                if len(push.accumulators):
                    self.accumulators = [bytes(a) for a in push.accumulators]
                data = push.records
                next_offset = push.nextOffset
                start = self.offset
                # An empty push is a keepalive, or batches a SmartModule dropped whole: the SPU
                # has read (and this consumer has handed out) everything before next_offset.
                self.offset = max(self.offset, next_offset)
                return data, start
            except OffsetOutOfRangeError as e:
                self.close()
                raise_or_restart = await self._out_of_range(e)
                if raise_or_restart is not None:
                    raise raise_or_restart from None
            except KolkError as e:
                # A fair-use refusal (tooManyStreams) or a busy SmartModule pool or budget
                # (overloaded) is retriable only once other streams close or calm down, which a
                # reopen cannot bring about: it surfaces at once.
                if not e.retriable or isinstance(e, (TooManyStreamsError, OverloadedError)):
                    self.close()
                    raise
                self.close()
                if not isinstance(e, (PartitionOfflineError,)) and self.address is not None:
                    self.c.client.drop_connection(self.address)
                self.c.client.forget_leaders(self.c.topic)
                await asyncio.sleep(RETRY_BACKOFF_S)  # backoff before asking for the new leader

    async def _out_of_range(self, e: OffsetOutOfRangeError) -> OffsetOutOfRangeError | None:
        """The SPU says ``self.offset`` is not in the partition (retention moved the log start
        past it, or a truncation the end below it): the error naming the range it holds now,
        or None when this stream may move on to the new log start (and did)."""
        name = f"{self.c.topic}-{self.partition}"
        try:
            start, _hw, leo = await self.c.client.offsets(self.c.topic, self.partition)
        except KolkError:
            return e  # the SPU's own words, when the range cannot be learned now
        step = after_out_of_range(self.offset, start, leo, self.restarts_left > 0)
        if step == "reopen":
            # The leader changed between the two answers: ask the one that leads now, a few times.
            self.rechecks_left -= 1
            self.c.client.forget_leaders(self.c.topic)
            return e if self.rechecks_left < 0 else None
        if step == "restart":
            self.restarts_left -= 1
            self.offset = start
            return None
        return out_of_range(name, self.offset, start, leo)

    async def next_chunk(self) -> list[ConsumerRecord]:
        """Records of the next push (possibly none)."""
        data, start = await self.next_push()
        return self._decode(data, start) if data else []

    async def next_batches(self) -> list[RecordBatch]:
        """The batches of the next push (possibly none), undecoded."""
        data, start = await self.next_push()
        if not data:
            return []
        return [RecordBatch(self.partition, data, pos, h, start)
                for pos, h in iter_batches(data, BATCH_BYTES_MAX, shared_offsets=True) if h.next_offset > start]

    def _decode(self, data: bytes, start: int) -> list[ConsumerRecord]:
        leading = (self.partition,)
        out: list[ConsumerRecord] = []
        for pos, h in iter_batches(data, BATCH_BYTES_MAX, shared_offsets=True):
            if h.next_offset <= start:
                continue  # wholly before where this consumer stood
            records = decode_records(data, pos, record_type=ConsumerRecord, leading=leading)
            if h.base_offset < start:
                records = [r for r in records if r.offset >= start]
            out.extend(records)
        return out


def after_out_of_range(offset: int, log_start_offset: int, log_end_offset: int, may_restart: bool) -> str:
    """What a partition stream does when the SPU refused ``offset`` as out of range and the
    partition's range is now ``[log_start_offset, log_end_offset]``: ``"reopen"`` (it is in
    range after all: the leader changed), ``"restart"`` at the log start (below it, and the
    start named no offset and nothing was handed out yet), or ``"raise"``. Pure."""
    if readable(offset, log_start_offset, log_end_offset):
        return "reopen"
    if offset < log_start_offset and may_restart:
        return "restart"
    return "raise"


def normalize_chain(chain: Any) -> list[SmartModuleInvocation]:
    """A chain as an application gives it: a list whose stages are each a SmartModuleInvocation,
    a NAME[@VERSION] (no parameters) or a (NAME, params) pair. Parameter values are text;
    numbers and booleans are written as text (``10``, ``true``); anything else is refused."""
    if chain is None:
        return []
    if isinstance(chain, (str, bytes)) or not isinstance(chain, (list, tuple)):
        raise InvalidRequestError(f"smartmodules is a list of stages, e.g. [{chain!r:.100}] or "
                                  f"[('name', {{'key': 'value'}})], not {type(chain).__name__} {chain!r:.100}")
    out = []
    for stage in chain:
        if isinstance(stage, SmartModuleInvocation):
            out.append(stage)
            continue
        if isinstance(stage, str):
            name, params = stage, {}
        elif isinstance(stage, (list, tuple)) and len(stage) == 2 and isinstance(stage[1], (dict, type(None))):
            name, params = stage[0], dict(stage[1] or {})
        else:
            raise InvalidRequestError(f"a SmartModule chain stage is NAME[@VERSION] or (NAME, params), got {stage!r:.200}")
        if not isinstance(name, str) or not name:
            raise InvalidRequestError(f"a SmartModule chain stage is NAME[@VERSION] or (NAME, params), got {stage!r:.200}")
        out.append(SmartModuleInvocation(name, {_param_text(name, k, v, True): _param_text(name, k, v, False)
                                                for k, v in params.items()}))
    return out


def _param_text(module: str, key: Any, value: Any, is_key: bool) -> str:
    """A parameter's key or value as text: str as is, numbers and booleans written out."""
    x = key if is_key else value
    if isinstance(x, str):
        return x
    if isinstance(x, bool):
        return "true" if x else "false"
    if isinstance(x, (int, float)) and not is_key:
        return str(x)
    what = "keys must be text" if is_key else f"{key!r:.100} must be text (or a number or boolean)"
    raise InvalidRequestError(f"SmartModule {module}: parameter {what}, not {type(x).__name__} {x!r:.100}")


class AsyncConsumer:
    def __init__(self, client: "AsyncClient", topic: str, *, partition: int | None = None,
                 start: Offset | None = None, isolation: str = "committed", window_bytes: int = 4 << 20,
                 stop_at_end: bool = False,
                 smartmodules: "list[tuple[str, dict[str, str]]] | list[str] | list[SmartModuleInvocation] | None"
                 = None) -> None:
        """``smartmodules``: a chain run on the SPU before records reach this consumer, as
        ``[(NAME or NAME@VERSION, {param: value}), ...]`` (a bare name means no parameters) or
        as ``SmartModuleInvocation`` values."""
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
        self._pending: dict[asyncio.Future[Any], _PartitionStream] = {}
        self._closed = False

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
                # Never clamped: below the log start the records are gone, past the end they
                # do not exist yet. At the log end the consumer waits for the next record.
                if not readable(s.value, start, leo):
                    raise out_of_range(f"{self.topic}-{p}", s.value, start, leo)
                offset = s.value
            elif s.kind == "from_end":
                offset = max(start, hw - s.value)
            else:
                offset = await self.client.offset_for_timestamp(self.topic, p, s.value)
            stream = _PartitionStream(self, p, offset)
            stream.high_watermark = hw
            self._streams.append(stream)

    async def _next(self, timeout_s: float | None, raw: bool) -> list[Any] | None:
        """The next non-empty push of any partition (records, or RecordBatches when ``raw``);
        [] when ``timeout_s`` passes first; None when there is nothing more (stop_at_end, or
        closed)."""
        if self._closed:
            return None
        if not self._streams:
            await self._resolve()
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        while True:
            for s in self._streams:
                if s not in self._pending.values() and not self._done(s):
                    self._pending[asyncio.ensure_future(s.next_batches() if raw else s.next_chunk())] = s
            if not self._pending or self._closed:
                return None
            left = None if deadline is None else max(0.0, deadline - loop.time())
            done, _ = await asyncio.wait(self._pending, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            if self._closed:
                return None
            if not done:
                return []
            out: list[Any] = []
            for fut in done:
                self._pending.pop(fut, None)
                out.extend(fut.result())
            if out:
                return out

    async def poll(self, timeout_s: float) -> list[ConsumerRecord]:
        """Records that arrive within ``timeout_s`` (at most one push per partition); [] if
        none did, or once the consumer is closed or (stop_at_end) has read everything."""
        return await self._next(timeout_s, raw=False) or []

    async def batches(self) -> AsyncIterator[list[ConsumerRecord]]:
        """Records as lists, one per push: the fast way to read records."""
        try:
            while (records := await self._next(None, raw=False)) is not None:
                yield records
        finally:
            self._cancel_pending()

    async def record_batches(self) -> AsyncIterator[RecordBatch]:
        """Stored batches, undecoded (:class:`RecordBatch`): the fastest way to read."""
        try:
            while (batches := await self._next(None, raw=True)) is not None:
                for batch in batches:
                    yield batch
        finally:
            self._cancel_pending()

    def _cancel_pending(self) -> None:
        for fut in self._pending:
            fut.cancel()
        self._pending.clear()

    def _done(self, s: _PartitionStream) -> bool:
        return self.stop_at_end and s.high_watermark >= 0 and s.offset >= s.high_watermark

    async def __aiter__(self) -> AsyncIterator[ConsumerRecord]:
        async for batch in self.batches():
            for rec in batch:
                yield rec

    async def close(self) -> None:
        """Stop every partition's stream. Sends one CANCEL frame per stream and waits for
        nothing, so it returns at once even when an SPU is frozen; a read waiting elsewhere
        ends (``batches`` stops, ``poll`` returns [])."""
        self._closed = True
        self._cancel_pending()
        for stream in self._streams:
            stream.close()
        self._streams.clear()
