"""The SPU's Cap'n Proto surface (``Spu`` in kolk.capnp): produce, fetch, streams, and the
SPU-to-SPU replication calls. The state it works on lives in core/spu.py and core/replica.py.

Produce appends whole batches (the SPU never decodes records) and answers by the acks asked
for: ``none`` at once, ``leader`` once fsynced here (group commit), ``all`` once the high
watermark, computed over the in-sync set, has passed the batch. ``acks=all`` is refused with
``notEnoughReplicas`` while the in-sync set is smaller than the topic's ``min_in_sync``.
Idempotent batches (producer id >= 0) are checked against the producer table first: a
duplicate is answered with the offsets of its first append and not written again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import capnp

from .segments.batch import HEADER_SIZE, NO_PRODUCER_ID, parse_header, validate_batch
from .segments.errors import (
    BatchTooLargeError,
    CorruptBatchError,
    InvalidBatchError,
    LogClosedError,
    LogFailedError,
    OffsetOutOfRangeError,
    StorageError,
    StorageFullError,
    TruncatedBeforeDurableError,
)
from .segments.producer_state import (
    DuplicateSequenceError,
    OutOfOrderSequenceError,
    ProducerFencedError,
    ProducerStateError,
    sequence_count,
)
from .errors import KolkError
from .smartmodule.chain import Chain, ChainError
from .smartmodules import invocations_from_wire
from .authz import NODE_ONLY, Denied
from .security.masking import mask_batches
from .security.tls import Peer
from .wire import schema, set_error

if TYPE_CHECKING:
    from .replica import Replica
    from .spu import SpuServer

log = logging.getLogger("kolk.spu")

ACKS_NONE, ACKS_LEADER, ACKS_ALL = 0, 1, 2
COMMITTED = 0
_ENUM = {"none": 0, "leader": 1, "all": 2, "committed": 0, "uncommitted": 1}
PARTITION_STATUS_MAX = 10_000
PRODUCE_CHAINS_MAX = 16  # produce-side chains kept per connection
# Pushes of one stream sent before the oldest is answered. Cap'n Proto delivers calls on one
# capability in order, so the consumer sees them in order; with more than one out, the SPU
# reads and sends the next chunk while the consumer decodes the last (the window still
# bounds the bytes). One at a time, the two took turns: 1.0M against 1.3M+ records/s.
PUSHES_IN_FLIGHT_MAX = 4


def enum_value(v: Any) -> int:
    """pycapnp hands enums to servers as _DynamicEnum; clients may send ints."""
    if isinstance(v, int):
        return v
    raw = getattr(v, "raw", None)
    if isinstance(raw, int):
        return raw
    return _ENUM[str(v)]


def _now_ms() -> int:
    return time.monotonic_ns() // 1_000_000


def _log_failure(task: "asyncio.Task[Any]") -> None:
    """Retrieve (and log) the failure of a task nobody awaits (an acks=none commit)."""
    if not task.cancelled() and task.exception() is not None:
        log.info("acks=none append not committed: %s", task.exception())


def producer_error(result: Any, e: ProducerStateError) -> None:
    if isinstance(e, ProducerFencedError):
        set_error(result, "producerFenced", str(e))
    elif isinstance(e, OutOfOrderSequenceError):
        set_error(result, "outOfOrderSequence", str(e), None, True)
    elif isinstance(e, DuplicateSequenceError):
        set_error(result, "duplicateSequence", str(e))
    else:
        set_error(result, "invalidBatch", str(e))


def storage_error(result: Any, e: StorageError) -> None:
    if isinstance(e, LogFailedError):
        # The disk failed under the replica: it is fenced and leadership moves (core/disk_faults.py).
        # An append may or may not have reached the disk: not acknowledged, outcome unknown.
        set_error(result, "notLeader", f"{e}; leadership is moving to an intact in-sync replica", None, True)
    elif isinstance(e, (TruncatedBeforeDurableError, LogClosedError)):
        # The replica was truncated or closed under the write: leadership moved. The write may
        # or may not survive; an idempotent retry at the new leader settles it.
        set_error(result, "notLeader", str(e), None, True)
    elif isinstance(e, BatchTooLargeError):
        set_error(result, "tooLarge", str(e))
    elif isinstance(e, InvalidBatchError):
        set_error(result, "invalidBatch", str(e))
    elif isinstance(e, OffsetOutOfRangeError):
        set_error(result, "offsetOutOfRange", str(e))
    elif isinstance(e, CorruptBatchError):
        set_error(result, "corruptBatch", str(e))
    elif isinstance(e, StorageFullError):
        set_error(result, "storageFull", str(e), None, True)
    else:
        set_error(result, "storage", str(e))


async def _wait(event: asyncio.Event, timeout_s: float) -> bool:
    """Wait for ``event`` at most ``timeout_s``; False on timeout."""
    try:
        async with asyncio.timeout(timeout_s):
            await event.wait()
        return True
    except TimeoutError:
        return False


class StreamControlImpl(schema.StreamControl.Server):
    def __init__(self) -> None:
        self.credit = 0
        self.granted = asyncio.Event()
        self.closed = False
        self.task: asyncio.Task[Any] | None = None

    async def grant(self, bytes, _context, **kwargs):  # noqa: A002, ANN001
        self.credit += int(bytes)
        self.granted.set()

    async def close(self, _context, **kwargs):  # noqa: ANN001
        self.closed = True
        self.granted.set()
        if self.task is not None:
            self.task.cancel()


class SpuImpl(schema.Spu.Server):
    def __init__(self, server: "SpuServer", peer: Peer) -> None:
        self.s = server
        self.peer = peer
        self._chains: dict[str, Chain] = {}  # produce-side chains of this connection

    async def produce(self, topic, partition, acks, records, timeoutMs, smartmodules, _context, **kwargs):  # noqa: N803, ANN001, E501
        r = _context.results
        if not self._may(r.result, "produce", topic, smartmodules):
            return
        if len(records) > self.s.config.produce_bytes_max:
            set_error(r.result, "tooLarge", f"produce request of {len(records)} bytes is more than "
                      f"{self.s.config.produce_bytes_max}")
            return
        replica = self.s.leader_replica(topic, partition, r.result)
        if replica is None:
            return
        acks = enum_value(acks)
        minimum = self.s.min_in_sync(replica)
        if acks == ACKS_ALL and len(replica.isr) < minimum:
            set_error(r.result, "notEnoughReplicas", f"{replica.name} has {len(replica.isr)} in-sync replicas "
                      f"{replica.isr}, fewer than its min_in_sync {minimum}; acks=all is refused", None, True)
            return
        timeout = min(max(int(timeoutMs), 1), self.s.config.produce_timeout_ms_max) / 1000
        epoch = replica.epoch
        idempotent = None
        if len(smartmodules):
            records = await self._produce_chain(r, replica, records, invocations_from_wire(smartmodules))
            if records is None:
                return
            if not records:  # the chain dropped every record: nothing to store
                r.baseOffset = r.lastOffset = -1
                r.result.ok = True
                return
        try:
            if len(records) >= HEADER_SIZE and parse_header(records, 0).producer_id != NO_PRODUCER_ID:
                h = validate_batch(records, 0, replica.log.config.batch_bytes_max)
                if h.size != len(records):
                    raise InvalidBatchError("an idempotent produce (producer id >= 0) carries exactly one batch, "
                                            f"this one has {len(records)} bytes for a batch of {h.size}")
                verdict = replica.producers.check(h.producer_id, h.producer_epoch, h.base_sequence, sequence_count(h))
                if verdict.kind == "duplicate":
                    await self._answer_duplicate(r, replica, acks, verdict, epoch, timeout)
                    return
                idempotent = h
            info = replica.log.append(records, leader_epoch=epoch)
        except StorageError as e:
            self.s.disk.on_error(replica, e)
            storage_error(r.result, e)
            return
        except ProducerStateError as e:
            producer_error(r.result, e)
            return
        if idempotent is not None:
            replica.producers.record(idempotent.producer_id, idempotent.producer_epoch, idempotent.base_sequence,
                                     sequence_count(idempotent), info.base_offset, info.last_offset)
        replica.wake()
        if not await self._await_acks(r, replica, acks, info.next_offset, epoch, timeout):
            return
        r.baseOffset = info.base_offset
        r.lastOffset = info.last_offset
        r.result.ok = True

    def _may(self, result: Any, action: str, topic: str, smartmodules: Any = ()) -> bool:
        """The policy check of a data call: the topic, then every SmartModule it would run."""
        try:
            self.s.authz.check(self.peer, action, f"topic:{topic}")
            for stage in smartmodules or ():
                self.s.authz.check(self.peer, "use", f"smartmodule:{str(stage.name).split('@')[0]}")
            return True
        except Denied as e:
            set_error(result, "denied", str(e))
            return False

    def _node_only(self, result: Any, call: str) -> bool:
        try:
            self.s.authz.check(self.peer, NODE_ONLY, call)
            return True
        except Denied as e:
            set_error(result, "denied", str(e))
            return False

    async def _produce_chain(self, r: Any, replica: "Replica", records: bytes,
                             invocations: list[dict[str, Any]]) -> bytes | None:
        """Run a produce request's chain (one instance per chain per connection, so an
        aggregate carries on across requests); None when it failed (``r`` says why)."""
        if len(records) >= HEADER_SIZE and parse_header(records, 0).producer_id != NO_PRODUCER_ID:
            set_error(r.result, "invalidArgument", "a produce-side SmartModule chain needs a producer that is not "
                      "idempotent (idempotent=False): the chain changes the batch the sequence numbers count")
            return None
        key = json.dumps([[i["name"], sorted(i["params"].items())] for i in invocations])
        chain = self._chains.get(key)
        try:
            if chain is None:
                chain = await self.s.smartmodules.chain(invocations)
                self._chains[key] = chain
                while len(self._chains) > PRODUCE_CHAINS_MAX:
                    self._chains.pop(next(iter(self._chains)))
            return chain.apply(records, replica.log.config.batch_bytes_max, renumber=True)
        except KolkError as e:
            set_error(r.result, e.code, str(e), None, e.retriable)
        except ChainError as e:
            self._chains.pop(key, None)
            set_error(r.result, "smartModule", str(e))
        except StorageError as e:
            storage_error(r.result, e)
        return None

    async def _answer_duplicate(self, r: Any, replica: "Replica", acks: int, verdict: Any, epoch: int,
                                timeout: float) -> None:
        if not await self._await_acks(r, replica, acks, verdict.last_offset + 1, epoch, timeout):
            return
        r.baseOffset = verdict.base_offset
        r.lastOffset = verdict.last_offset
        r.duplicate = True
        r.result.ok = True

    async def _await_acks(self, r: Any, replica: "Replica", acks: int, next_offset: int, epoch: int,
                          timeout: float) -> bool:
        """Wait as ``acks`` asks; on failure fill ``r.result`` and return False."""
        if acks == ACKS_ALL and self.s.config.unsafe_acks_for_tests:
            acks = ACKS_LEADER  # the broken build of jepsen's self-test (SpuConfig.unsafe_acks_for_tests)
        if acks == ACKS_NONE:
            task = asyncio.ensure_future(self.s.committed(replica, next_offset))
            task.add_done_callback(_log_failure)
            return True
        try:
            async with asyncio.timeout(timeout):
                await self.s.committed(replica, next_offset)
                if acks == ACKS_LEADER:
                    return True
                while replica.log.high_watermark < next_offset:
                    if replica.failure is not None:
                        set_error(r.result, "notLeader", f"{replica.name}: the disk of SPU {self.s.config.spu_id} "
                                  f"failed before the write was committed ({replica.failure}); it may or may not "
                                  "survive", None, True)
                        return False
                    if replica.epoch != epoch or not replica.is_leader or replica.fenced \
                            or self.s.replicas.get(replica.name) is not replica:
                        set_error(r.result, "notLeader", f"{replica.name}: leadership moved from SPU "
                                  f"{self.s.config.spu_id} (epoch {epoch}) before the write was committed; it "
                                  "may or may not survive", self.s.spu_address(replica.leader), True)
                        return False
                    await replica.changed.wait()
        except TimeoutError:
            what = "durable" if acks == ACKS_LEADER else f"committed by the in-sync set {replica.effective_isr()}"
            set_error(r.result, "timeout", f"{replica.name}: not {what} within {timeout} s", None, True)
            return False
        except StorageError as e:
            self.s.disk.on_error(replica, e)
            storage_error(r.result, e)
            return False
        minimum = self.s.min_in_sync(replica)
        if len(replica.isr) < minimum:
            # Appended, but the set shrank below min_in_sync while the write waited (Kafka's
            # NOT_ENOUGH_REPLICAS_AFTER_APPEND): the records may yet be committed. The outcome is
            # unknown, not failed; an idempotent retry settles it (a duplicate is answered with
            # the first append's offsets).
            set_error(r.result, "notEnoughReplicasAfterAppend", f"{replica.name}: appended, but the in-sync set "
                      f"{replica.isr} shrank below min_in_sync {minimum} before it was acknowledged; the records "
                      "may or may not be committed (outcome unknown: retry with the idempotent producer)", None, True)
            return False
        return True

    # ---------------------------------------------------------------- replication

    def _replica_call(self, r: Any, name: str, replica_id: int, epoch: int) -> "Replica | None":
        replica = self.s.led_replica(name, r.result)
        if replica is None:
            return None
        if replica_id not in replica.replicas or replica_id == self.s.config.spu_id:
            set_error(r.result, "notFound", f"SPU {replica_id} is not a follower of {name} (replicas "
                      f"{replica.replicas})", None, True)
            return None
        if epoch > replica.epoch:
            # The follower has heard of a newer epoch than ours: we are a deposed leader.
            replica.fenced_epoch = replica.epoch
            replica.wake()
            set_error(r.result, "notLeader", f"{name}: SPU {self.s.config.spu_id} is at epoch {replica.epoch}, "
                      f"the follower at {epoch}", None, True)
            return None
        if epoch < replica.epoch or replica.led_epoch != replica.epoch:
            set_error(r.result, "staleEpoch", f"{name}: the leader is at epoch {replica.epoch}, the follower asked "
                      f"at {epoch}", None, True)
            return None
        return replica

    async def replicaFetch(self, partition, replicaId, epoch, offset, maxBytes, maxWaitMs, _context, **kwargs):  # noqa: N802, N803, ANN001
        r = _context.results
        if not self._node_only(r.result, "replicaFetch"):
            return
        replica = self._replica_call(r, partition, int(replicaId), int(epoch))
        if replica is None:
            return
        lg = replica.log
        offset = int(offset)
        r.logStartOffset = lg.log_start_offset
        r.logEndOffset = lg.log_end_offset
        if not lg.log_start_offset <= offset <= lg.log_end_offset:
            set_error(r.result, "offsetOutOfRange", f"{partition}: follower SPU {replicaId} fetches from {offset}, "
                      f"outside [{lg.log_start_offset}, {lg.log_end_offset}]")
            return
        replica.progress[int(replicaId)].on_fetch(offset, lg.log_end_offset, _now_ms())
        if replica.advance_high_watermark():
            replica.wake()
        if offset == lg.log_end_offset and maxWaitMs:
            changed = replica.changed
            try:
                async with asyncio.timeout(min(int(maxWaitMs), 5_000) / 1000):
                    while offset == lg.log_end_offset and replica.is_leader and replica.epoch == epoch:
                        await changed.wait()
                        changed = replica.changed
            except TimeoutError:
                pass  # nothing new: answer empty, the follower asks again
        try:
            res = lg.read(offset, max(1, min(int(maxBytes), self.s.config.fetch_bytes_max)))
        except StorageError as e:
            self.s.disk.on_error(replica, e)
            storage_error(r.result, e)
            return
        r.records = res.data
        r.highWatermark = lg.high_watermark
        r.logEndOffset = lg.log_end_offset
        r.result.ok = True

    async def epochEndOffset(self, partition, replicaId, epoch, lastEpoch, _context, **kwargs):  # noqa: N802, N803, ANN001
        r = _context.results
        if not self._node_only(r.result, "epochEndOffset"):
            return
        replica = self._replica_call(r, partition, int(replicaId), int(epoch))
        if replica is None:
            return
        end = replica.log.end_offset_for_epoch(int(lastEpoch))
        r.leaderEpoch = end.epoch
        r.endOffset = end.end_offset
        r.result.ok = True

    async def partitionStatus(self, partitions, _context, **kwargs):  # noqa: N802, ANN001
        r = _context.results
        if not self.peer.node and not self.s.authz.allowed(self.peer, "describe", "cluster"):
            set_error(r.result, "denied", f"{self.peer.identity} may not describe cluster")
            return
        names = list(partitions)[:PARTITION_STATUS_MAX]
        now = _now_ms()
        out = [rep.status_json(now) for n in names if (rep := self.s.replicas.get(n)) is not None and rep.is_leader]
        r.statusJson = json.dumps(out)
        r.result.ok = True

    # ---------------------------------------------------------------- consumers

    async def fetch(self, topic, partition, offset, maxBytes, isolation, _context, **kwargs):  # noqa: N803, ANN001
        r = _context.results
        if not self._may(r.result, "consume", topic):
            return
        replica = self.s.leader_replica(topic, partition, r.result)
        if replica is None:
            return
        lg = replica.log
        upto = lg.high_watermark if enum_value(isolation) == COMMITTED else None
        try:
            res = lg.read(int(offset), max(1, min(int(maxBytes), self.s.config.fetch_bytes_max)), upto)
        except StorageError as e:
            self.s.disk.on_error(replica, e)
            storage_error(r.result, e)
            return
        r.records = mask_batches(res.data, self.s.authz.masks(self.peer, topic))
        r.highWatermark = res.high_watermark
        r.logStartOffset = res.log_start_offset
        r.logEndOffset = res.log_end_offset
        r.nextOffset = res.next_offset
        r.result.ok = True

    async def offsets(self, topic, partition, _context, **kwargs):  # noqa: ANN001
        r = _context.results
        if not self._may(r.result, "consume", topic):
            return
        replica = self.s.leader_replica(topic, partition, r.result)
        if replica is None:
            return
        r.logStartOffset = replica.log.log_start_offset
        r.highWatermark = replica.log.high_watermark
        r.logEndOffset = replica.log.log_end_offset
        r.result.ok = True

    async def offsetForTimestamp(self, topic, partition, timestamp, _context, **kwargs):  # noqa: N802, ANN001
        r = _context.results
        if not self._may(r.result, "consume", topic):
            return
        replica = self.s.leader_replica(topic, partition, r.result)
        if replica is None:
            return
        try:
            found = replica.log.offset_for_timestamp(int(timestamp))
        except StorageError as e:
            storage_error(r.result, e)
            return
        r.found = found is not None
        r.offset = found if found is not None else replica.log.log_end_offset
        r.result.ok = True

    async def stream(self, topic, partition, offset, isolation, windowBytes, consumer, smartmodules, _context, **kwargs):  # noqa: N803, ANN001, E501
        r = _context.results
        if not self._may(r.result, "consume", topic, smartmodules):
            return
        replica = self.s.leader_replica(topic, partition, r.result)
        if replica is None:
            return
        lg = replica.log
        if not lg.log_start_offset <= int(offset) <= lg.log_end_offset:
            set_error(r.result, "offsetOutOfRange",
                      f"offset {offset} is outside [{lg.log_start_offset}, {lg.log_end_offset}] of {replica.name}")
            return
        if self.s.streams >= self.s.config.streams_max:
            set_error(r.result, "tooLarge", f"SPU {self.s.config.spu_id} already serves {self.s.streams} streams",
                      None, True)
            return
        try:
            chain = await self.s.smartmodules.chain(invocations_from_wire(smartmodules))
        except KolkError as e:
            set_error(r.result, e.code, str(e), None, e.retriable)
            return
        control = StreamControlImpl()
        control.credit = min(int(windowBytes), self.s.config.stream_window_bytes_max)
        control.task = asyncio.ensure_future(
            self._stream_loop(replica, int(offset), enum_value(isolation), consumer, control, chain, str(topic)))
        r.control = control
        r.result.ok = True

    async def _stream_loop(self, replica: "Replica", offset: int, isolation: int, consumer: Any,
                           control: StreamControlImpl, chain: Chain | None, topic: str) -> None:
        self.s.streams += 1
        window = control.credit
        keepalive = self.s.config.stream_keepalive_ms / 1000
        accumulators: list[bytes] = []
        pushes: deque[Any] = deque()  # answers of data pushes not yet awaited, oldest first
        try:
            while not control.closed and replica.name in self.s.replicas:
                lg = replica.log
                changed = replica.changed
                upto = lg.high_watermark if isolation == COMMITTED else lg.log_end_offset
                if control.credit <= 0 or offset >= upto:
                    while pushes:  # caught up: every push answered before the stream idles
                        await pushes.popleft()
                    control.granted.clear()
                    waiting = control.granted if control.credit <= 0 else changed
                    if not await _wait(waiting, keepalive):
                        # Nothing to send for a while: an empty push finds a consumer that
                        # went away (the call fails), so the stream does not linger.
                        await consumer.push(b"", lg.high_watermark, offset, accumulators)
                    continue
                # Checked again on every read: a newer policy that revokes access ends the stream.
                self.s.authz.check(self.peer, "consume", f"topic:{topic}")
                res = lg.read(offset, min(control.credit, self.s.config.stream_push_bytes_max), upto)
                if not res.data:
                    await _wait(changed, keepalive)
                    continue
                if len(res.data) > control.credit and control.credit < window:
                    # The next batch does not fit what is left of the window: wait for grants.
                    # (A batch larger than the whole window goes once the window is empty.)
                    control.granted.clear()
                    if not await _wait(control.granted, keepalive):
                        await consumer.push(b"", lg.high_watermark, offset, accumulators)
                    continue
                # Masking before SmartModules: a module sees only what this reader may see. The
                # masks are read per push, so a new policy version applies to open streams too.
                data = mask_batches(res.data, self.s.authz.masks(self.peer, topic))
                if chain is not None:
                    data = chain.apply(data, lg.config.batch_bytes_max, verified=True)  # the reader checked CRCs
                    accumulators = chain.accumulators
                    if not data and res.next_offset < upto:
                        offset = res.next_offset  # all filtered out: read on before telling the consumer
                        continue
                control.credit -= len(data)
                pushes.append(consumer.push(data, res.high_watermark, res.next_offset, accumulators))
                while len(pushes) >= PUSHES_IN_FLIGHT_MAX:
                    await pushes.popleft()
                offset = res.next_offset
        except (asyncio.CancelledError, capnp.KjException):
            pass  # closed, or the consumer went away
        except (ChainError, Denied) as e:
            log.info("stream on %s ended: %s", replica.name, e)
            code = "denied" if isinstance(e, Denied) else "smartModule"
            try:
                await consumer.fail({"code": code, "message": str(e), "leader": "", "retriable": False})
            except capnp.KjException:
                pass  # the consumer went away as well
        except StorageError as e:
            self.s.disk.on_error(replica, e)
            log.warning("stream on %s ended: %s", replica.name, e)
        finally:
            self.s.streams -= 1

    async def identify(self, _context, **kwargs):  # noqa: ANN001
        """Which SPU process answers here (an SPU checks its own private address at start)."""
        r = _context.results
        if not self._node_only(r.result, "identify"):
            return
        r.spuId = self.s.config.spu_id
        r.instanceId = self.s.instance_id
        r.result.ok = True
