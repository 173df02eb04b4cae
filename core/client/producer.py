"""The producer: partitioning, batching by size and linger time, compression, retries, and a
future per record that resolves to its partition and offset (asyncio core).

Order: records of one partition are sent in order, up to ``in_flight_max`` requests at a
time on one connection, which the SPU appends in arrival order.

Idempotence (the default with ``acks="all"``, as in Kafka 3): the producer takes a producer
id from the SC and numbers each partition's records; every batch carries the producer id,
epoch and base sequence, and is built once, so a retry sends the same bytes. The leader
appends a batch only if it continues the sequence: a retry of a batch already written (the
reply was lost, or the request timed out after the append) is answered with the first
append's offsets and not written again; a batch that arrives before an earlier one being
retried is refused as out of order and retried after it. Without idempotence a retry can
duplicate, and a retried request can land after a later one.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import crc32c as _crc32c

from ..protocol.errors import InvalidRequestError, KolkError, RequestTimeoutError
from ..segments import CODEC_GZIP, CODEC_NONE, CODEC_ZSTD, build_batch
from ..segments.producer_state import BATCHES_KEPT
from .consumer import normalize_chain

if TYPE_CHECKING:
    from .client import AsyncClient

CODECS = {"none": CODEC_NONE, "gzip": CODEC_GZIP, "zstd": CODEC_ZSTD}
ACKS = {"none": 0, "leader": 1, "all": 2}
RECORD_OVERHEAD_BYTES = 29
BATCH_HEADER_BYTES = 61
RECORD_BYTES_MAX = (4 << 20) - 61  # one record alone in a batch of the SPU's batch_bytes_max
SEQUENCE_WRAP = 2**31  # sequences are i32 and wrap to 0, as in Kafka
ID_ATTEMPTS_MAX = 30  # producer-id requests, one a second, before waiting batches fail


def partition_for_key(key: bytes, count: int) -> int:
    """The partition of a keyed record among ``count`` (the ``key`` partitioner): crc32c of the
    key modulo the count. Growing the topic moves keys (docs/metadata.md, "Adding partitions")."""
    return int(_crc32c.crc32c(key)) % count


@dataclass(frozen=True)
class RecordMetadata:
    topic: str
    partition: int
    offset: int


class _Batch:
    __slots__ = ("partition", "records", "timestamps", "nbytes", "future", "created", "due", "finished")

    def __init__(self, partition: int, loop: asyncio.AbstractEventLoop) -> None:
        self.partition = partition
        self.records: list[tuple[bytes | None, bytes | None, Sequence[tuple[str, bytes | None]]]] = []
        self.timestamps: list[int] = []
        self.nbytes = 61
        self.future: asyncio.Future[int] = loop.create_future()  # resolves to the base offset
        self.created = time.monotonic()
        self.due = False  # lingered long enough: send as soon as a slot is free
        self.finished = False


class RecordFuture:
    """Resolves to :class:`RecordMetadata`. Cheap: one per record, one asyncio future per batch.

    Each record's wait is its own: cancelling it (``asyncio.wait_for(future, t)`` timing out)
    never cancels the batch it shares with other records, so they still learn their offsets.
    """

    __slots__ = ("_batch_future", "_index", "_topic", "_partition")

    def __init__(self, batch_future: asyncio.Future[int], index: int, topic: str, partition: int) -> None:
        self._batch_future = batch_future
        self._index = index
        self._topic = topic
        self._partition = partition

    def done(self) -> bool:
        return self._batch_future.done()

    def result_now(self) -> RecordMetadata:
        return RecordMetadata(self._topic, self._partition, self._batch_future.result() + self._index)

    def exception(self) -> BaseException | None:
        return self._batch_future.exception()

    def __await__(self):  # noqa: ANN204
        base = yield from asyncio.shield(self._batch_future).__await__()
        return RecordMetadata(self._topic, self._partition, base + self._index)


class SentRecords:
    """What :meth:`AsyncProducer.send_all` queued: awaiting it gives each record's
    :class:`RecordMetadata`, in order (or raises the first failure of its batches)."""

    __slots__ = ("topic", "partition", "parts")

    def __init__(self, topic: str, partition: int) -> None:
        self.topic = topic
        self.partition = partition
        self.parts: list[list[Any]] = []  # [batch future, index of the first record in it, count]

    def __len__(self) -> int:
        return sum(n for _, _, n in self.parts)

    def __await__(self):  # noqa: ANN204
        out: list[RecordMetadata] = []
        for future, first, n in self.parts:
            base = yield from asyncio.shield(future).__await__()
            out.extend(RecordMetadata(self.topic, self.partition, base + first + i) for i in range(n))
        return out


class AsyncProducer:
    def __init__(self, client: "AsyncClient", topic: str, *, acks: str = "all", batch_bytes: int = 256 << 10,
                 linger_ms: float = 5.0, compression: str = "none", partitioner: str = "key",
                 retries: int = 20, request_timeout_ms: int = 30_000, in_flight_max: int = 4,
                 buffer_bytes_max: int = 64 << 20, idempotent: bool | None = None,
                 smartmodules: Any = None, delivery_timeout_ms: int = 120_000) -> None:
        """``request_timeout_ms``: how long one produce request may take (the SPU answers by
        then; the client gives up a second later). ``delivery_timeout_ms``: how long a record
        may take from ``send`` to its answer, retries included (Kafka's delivery.timeout.ms);
        past it the record fails with RequestTimeoutError (``outcome_unknown`` when a request
        carrying it had been sent)."""
        if acks not in ACKS:
            raise InvalidRequestError(f"acks must be one of {', '.join(ACKS)}, got {acks!r}")
        if compression not in CODECS:
            raise InvalidRequestError(f"compression must be one of {', '.join(CODECS)}, got {compression!r}")
        if partitioner not in ("key", "round_robin"):
            raise InvalidRequestError("partitioner must be 'key' or 'round_robin'")
        if delivery_timeout_ms < request_timeout_ms + linger_ms:
            raise InvalidRequestError(f"delivery_timeout_ms ({delivery_timeout_ms}) must be at least "
                                      f"request_timeout_ms + linger_ms ({request_timeout_ms + linger_ms:g})")
        if not 1 <= in_flight_max <= 64 or batch_bytes < 1024 or buffer_bytes_max < batch_bytes:
            raise InvalidRequestError("need 1 <= in_flight_max <= 64, batch_bytes >= 1 KiB, "
                                      "buffer_bytes_max >= batch_bytes")
        self.smartmodules = normalize_chain(smartmodules)
        if idempotent is None:
            idempotent = acks == "all" and not self.smartmodules
        if idempotent and self.smartmodules:
            raise InvalidRequestError("a produce-side SmartModule chain changes the batches the sequence numbers "
                                      "count: use idempotent=False with smartmodules")
        if idempotent and in_flight_max > BATCHES_KEPT:
            raise InvalidRequestError(f"an idempotent producer has at most {BATCHES_KEPT} batches in flight per "
                                      "partition: the leader remembers that many for retries")
        if idempotent and acks != "all":
            raise InvalidRequestError("an idempotent producer needs acks='all': with fewer acks a failover can lose "
                                      "a batch and leave a gap in the sequence (pass idempotent=False)")
        self.idempotent = idempotent
        self.producer_id = -1
        self.producer_epoch = 0
        self._id_future: asyncio.Future[int] | None = None
        self._next_sequence: dict[int, int] = {}
        # Idempotent: a partition whose batch failed for good has a gap in its sequence; it gets
        # a fresh producer id (starting again at sequence 0) once its older batches are done.
        self._partition_ids: dict[int, int] = {}
        self._needs_new_id: set[int] = set()
        self._spare_ids: list[int] = []
        self._id_arrived = asyncio.Event()
        self._id_failures = 0
        # Idempotent: the batches sent per partition, oldest first, until every older one has
        # finished. Its length bounds how far a retried batch can fall behind the newest one
        # sent, so the leader still remembers it (BATCHES_KEPT).
        self._window: dict[int, deque[_Batch]] = {}
        self.client = client
        self.topic = topic
        self.acks = ACKS[acks]
        self.batch_bytes = batch_bytes
        self.linger_s = linger_ms / 1000
        self.codec = CODECS[compression]
        self.partitioner = partitioner
        self.retries = retries
        self.request_timeout_ms = request_timeout_ms
        self.delivery_timeout_s = delivery_timeout_ms / 1000
        self.buffer_bytes_max = buffer_bytes_max
        self._loop = asyncio.get_running_loop()
        self._open: dict[int, _Batch] = {}
        self._ready: dict[int, deque[_Batch]] = {}
        self._in_flight: dict[int, int] = {}
        self._flushing = False
        self._in_flight_max = in_flight_max
        self._pending: set[asyncio.Task[Any]] = set()
        self._id_tasks: set[asyncio.Task[Any]] = set()  # fresh-id requests after a lost sequence
        self._buffered = 0
        self._room = asyncio.Event()
        self._room.set()
        self._rr = 0
        self._partitions: int | None = None
        self._cap: int | None = None  # the most record bytes one batch may hold (the topic's max_message_bytes)
        self._closed = False

    async def _partition_count(self) -> int:
        if self._partitions is None:
            count = len(await self.client.partitions(self.topic))
            limit = await self.client.max_message_bytes(self.topic)
            if limit is not None:
                # The topic's max_message_bytes bounds each batch: fill batches to it, never past
                # (known before the first record is placed: the count is set last).
                self._cap = max(RECORD_OVERHEAD_BYTES, limit - BATCH_HEADER_BYTES)
                self.batch_bytes = min(self.batch_bytes, self._cap)
            self._partitions = count
        return self._partitions

    def _pick(self, key: bytes | None, partition: int | None, count: int) -> int:
        """The partition a record goes to: the one asked for, else by key, else round robin."""
        if partition is None:
            if key is not None and self.partitioner == "key":
                return partition_for_key(key, count)
            self._rr += 1
            return (self._rr - 1) % count
        if not 0 <= partition < count:
            raise InvalidRequestError(f"topic {self.topic} has partitions 0-{count - 1}, not {partition}")
        return partition

    async def send(self, value: bytes | None, key: bytes | None = None,
                   headers: Sequence[tuple[str, bytes | None]] = (), partition: int | None = None,
                   timestamp: int | None = None) -> RecordFuture:
        """Queue one record; await the returned future for its offset."""
        if self._closed:
            raise InvalidRequestError("the producer is closed")
        while self._buffered >= self.buffer_bytes_max:
            self._room.clear()
            await self._room.wait()
        count = self._partitions or await self._partition_count()
        if self.idempotent and self.producer_id < 0:
            await self._first_id()
        partition = self._pick(key, partition, count)
        batch = self._open.get(partition) or self._new_batch(partition)
        size = RECORD_OVERHEAD_BYTES + (len(key) if key else 0) + (len(value) if value else 0)
        if headers:
            size += sum(8 + len(h) + (len(v) if v else 0) for h, v in headers)
        if size > RECORD_BYTES_MAX:
            if not batch.records:
                self._open.pop(partition, None)
            raise InvalidRequestError(f"a record of {size} bytes is more than the largest batch an SPU accepts "
                                      f"({RECORD_BYTES_MAX} bytes with its header)")
        if batch.records and self._cap is not None and batch.nbytes + size > self._cap:
            self._seal(partition)  # this record would take the batch past the topic's max_message_bytes
            batch = self._new_batch(partition)
        index = len(batch.records)
        batch.records.append((key, value, headers))
        batch.timestamps.append(timestamp if timestamp is not None else time.time_ns() // 1_000_000)
        batch.nbytes += size
        self._buffered += size
        fut = RecordFuture(batch.future, index, self.topic, partition)
        if batch.nbytes >= self.batch_bytes:
            self._seal(partition)
        elif self.linger_s <= 0 or batch.due:
            self._drain(partition)
        return fut

    async def send_all(self, values: Sequence[bytes | None], *, key: bytes | None = None,
                       partition: int | None = None) -> "SentRecords":
        """Queue many records for one partition, in order: the one ``key`` (or ``partition``,
        else the next partition round robin) chooses it, every record gets the same key and
        timestamp. Await the result for their metadata. Per record it costs a fraction of
        :meth:`send` (one call, one timestamp, no future per record): the batching API a
        Fluvio user knows as ``send_all``. A record too large for any batch refuses the whole
        call before anything is queued."""
        if self._closed:
            raise InvalidRequestError("the producer is closed")
        klen = len(key) if key else 0
        largest = max((len(v) for v in values if v), default=0)
        if RECORD_OVERHEAD_BYTES + klen + largest > RECORD_BYTES_MAX:
            raise InvalidRequestError(f"a record of {RECORD_OVERHEAD_BYTES + klen + largest} bytes is more than the "
                                      f"largest batch an SPU accepts ({RECORD_BYTES_MAX} bytes with its header)")
        count = self._partitions or await self._partition_count()
        if self.idempotent and self.producer_id < 0:
            await self._first_id()
        partition = self._pick(key, partition, count)
        out = SentRecords(self.topic, partition)
        now = time.time_ns() // 1_000_000
        overhead = RECORD_OVERHEAD_BYTES + klen
        batch: _Batch | None = None
        records = timestamps = None
        for value in values:
            if self._buffered >= self.buffer_bytes_max:
                batch = None  # the open batch may be sent while this call waits for room
                while self._buffered >= self.buffer_bytes_max:
                    self._room.clear()
                    await self._room.wait()
            size = overhead + (len(value) if value else 0)
            if batch is not None and batch.records and self._cap is not None and batch.nbytes + size > self._cap:
                self._seal(partition)  # the next record would take the batch past max_message_bytes
                batch = None
            if batch is None:
                batch = self._open.get(partition) or self._new_batch(partition)
                if batch.records and self._cap is not None and batch.nbytes + size > self._cap:
                    self._seal(partition)
                    batch = self._new_batch(partition)
                records, timestamps = batch.records, batch.timestamps
                out.parts.append([batch.future, len(records), 0])
            records.append((key, value, ()))
            timestamps.append(now)
            out.parts[-1][2] += 1
            batch.nbytes += size
            self._buffered += size
            if batch.nbytes >= self.batch_bytes:
                self._seal(partition)
                batch = None
        if batch is not None and (self.linger_s <= 0 or batch.due):
            self._drain(partition)
        return out

    def _new_batch(self, partition: int) -> _Batch:
        batch = self._open[partition] = _Batch(partition, self._loop)
        if self.linger_s > 0:
            self._loop.call_later(self.linger_s, self._linger_expired, batch)
        return batch

    def _linger_expired(self, batch: _Batch) -> None:
        batch.due = True
        if self._open.get(batch.partition) is batch:
            self._drain(batch.partition)

    def _seal(self, partition: int) -> None:
        """The open batch is full: queue it for sending."""
        batch = self._open.pop(partition, None)
        if batch is not None and batch.records:
            self._ready.setdefault(partition, deque()).append(batch)
        self._drain(partition)

    def _drain(self, partition: int) -> None:
        """Send what may go now: queued full batches first, then the open batch once it is due
        (lingered long enough, or linger is 0). While every in-flight slot of the partition is
        busy the open batch keeps growing, so load turns into bigger batches, not a queue.

        With linger 0 a partial batch goes only when nothing of its partition is in flight:
        records made during a round trip ride the next request together, so the SPU serves one
        request per round trip instead of one per record (full batches still use every slot)."""
        ready = self._ready.get(partition)
        while self._in_flight.get(partition, 0) < self._in_flight_max and self._window_has_room(partition):
            if ready:
                batch = ready.popleft()
            else:
                batch = self._open.get(partition)
                if batch is None or not batch.records or not (batch.due or self.linger_s <= 0 or self._flushing):
                    return
                if self.linger_s <= 0 and self._in_flight.get(partition, 0) and not self._flushing:
                    return  # linger 0: a partial batch waits for the request in flight (see below)
                del self._open[partition]
            self._in_flight[partition] = self._in_flight.get(partition, 0) + 1
            if self.idempotent:
                self._window.setdefault(partition, deque()).append(batch)
            task = asyncio.ensure_future(self._send_batch(batch))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _send_batch(self, batch: _Batch) -> None:
        try:
            data = self._build(batch)
            left = batch.created + self.delivery_timeout_s - time.monotonic()
            try:
                async with asyncio.timeout(max(left, 0.001)):
                    base = await self.client.produce(self.topic, batch.partition, data, self.acks,
                                                     self.request_timeout_ms, self.retries, self.smartmodules)
            except TimeoutError:
                raise RequestTimeoutError(
                    f"{len(batch.records)} record(s) for {self.topic}-{batch.partition} were not acknowledged within "
                    f"delivery_timeout_ms ({self.delivery_timeout_s * 1000:g}); they may or may not have been "
                    "written (outcome unknown)") from None
            if not batch.future.done():
                batch.future.set_result(base)
        except Exception as e:  # noqa: BLE001 - every record's future must learn of the failure
            if self.idempotent and batch.partition not in self._needs_new_id:
                self._lost_sequence(batch.partition)
            if not batch.future.done():
                batch.future.set_exception(e if isinstance(e, KolkError) else KolkError(str(e)))
            # Nobody may await a failed record's future; do not let asyncio complain.
            batch.future.exception()
        finally:
            batch.finished = True
            self._buffered -= batch.nbytes - 61
            if self._buffered < self.buffer_bytes_max:
                self._room.set()
            self._in_flight[batch.partition] -= 1
            self._drain(batch.partition)

    async def _first_id(self) -> None:
        """One producer id, however many sends race for it."""
        if self._id_future is None:
            self._id_future = asyncio.ensure_future(self.client.admin.allocate_producer_ids(1))
        try:
            self.producer_id = await asyncio.shield(self._id_future)
        except BaseException:
            if self._id_future.done():
                self._id_future = None  # failed: the next send tries again
            raise

    def _lost_sequence(self, partition: int) -> None:
        """A batch of ``partition`` failed for good: the leader may never get its sequences, so
        later batches need a fresh producer id (KIP-360 bumps the epoch for the same reason)."""
        self._needs_new_id.add(partition)
        if not self._spare_ids and not self._closed:
            task = asyncio.ensure_future(self._allocate_id())
            self._id_tasks.add(task)
            task.add_done_callback(lambda t: self._on_spare_id(t, partition))

    async def _allocate_id(self) -> int | Exception:
        """A fresh producer id, or the error (returned, not raised: a request still out when the
        program ends must not print a traceback at the event loop's shutdown)."""
        try:
            return await self.client.admin.allocate_producer_ids(1)
        except Exception as e:  # noqa: BLE001 - handed to _on_spare_id
            return e

    def _on_spare_id(self, task: "asyncio.Task[int | Exception]", partition: int) -> None:
        self._id_tasks.discard(task)
        result = None if task.cancelled() else task.result()
        if self._closed:
            return
        if not isinstance(result, int):
            self._id_failures += 1
            if self._id_failures < ID_ATTEMPTS_MAX:
                self._loop.call_later(1.0, self._lost_sequence, partition)  # try again later
                return
            # The SC stayed unreachable: fail what waits for an id rather than hold it forever.
            error = result if isinstance(result, Exception) else KolkError("producer id request cancelled")
            for p in list(self._needs_new_id):
                for batch in self._ready.pop(p, deque()):
                    if not batch.future.done():
                        batch.future.set_exception(error)
                        batch.future.exception()
                    self._buffered -= batch.nbytes - 61
            if self._buffered < self.buffer_bytes_max:
                self._room.set()
            self._id_failures = 0
            self._id_arrived.set()
            return
        self._id_failures = 0
        self._spare_ids.append(result)
        self._id_arrived.set()
        for p in list(self._needs_new_id):
            self._drain(p)

    def _window_has_room(self, partition: int) -> bool:
        if partition in self._needs_new_id:
            window = self._window.get(partition)
            while window and window[0].finished:
                window.popleft()
            if window or not self._spare_ids:
                return False  # wait until every older batch is done and an id is ready
            self._partition_ids[partition] = self._spare_ids.pop()
            self._next_sequence[partition] = 0
            self._needs_new_id.discard(partition)
            if not self._spare_ids and self._needs_new_id:
                self._lost_sequence(next(iter(self._needs_new_id)))
        window = self._window.get(partition)
        if not window:
            return True
        while window and window[0].finished:
            window.popleft()
        return len(window) < self._in_flight_max

    def _build(self, batch: _Batch) -> bytes:
        """The batch's bytes, numbered when idempotent. Runs before the send task's first await,
        so batches of a partition take their sequences in the order they are sent."""
        if not self.idempotent:
            return build_batch(batch.records, timestamps=batch.timestamps, codec=self.codec)
        seq = self._next_sequence.get(batch.partition, 0)
        self._next_sequence[batch.partition] = (seq + len(batch.records)) % SEQUENCE_WRAP
        return build_batch(batch.records, timestamps=batch.timestamps, codec=self.codec,
                           producer_id=self._partition_ids.get(batch.partition, self.producer_id),
                           producer_epoch=self.producer_epoch, base_sequence=seq)

    async def flush(self) -> None:
        """Send everything queued and wait until every request has been answered."""
        self._flushing = True
        try:
            while self._open or any(self._ready.values()) or self._pending:
                for partition in list(self._open):
                    self._seal(partition)
                for partition in list(self._ready):
                    self._drain(partition)
                if self._pending:
                    await asyncio.gather(*list(self._pending), return_exceptions=True)
                elif any(self._ready.values()):
                    # Nothing in flight, yet batches wait: a partition is waiting for a fresh
                    # producer id. Wait for it (or for a failure to get one) to arrive.
                    self._id_arrived.clear()
                    await self._id_arrived.wait()
        finally:
            self._flushing = False

    async def close(self) -> None:
        await self.flush()
        self._closed = True
        for task in list(self._id_tasks):  # nothing is left to send with a fresh id
            task.cancel()

