"""The SPU's side of the wire (``SpuRequest`` in core/protocol/kolk.capnp): one
:class:`SpuHandler` per connection, whose method of a call's name the channel
(core/protocol/channel_server.py) runs with the request's reader and the response to fill. This
module has the data plane (produce, fetch, offsets, consumer streams); the calls between
nodes are in core/spu/replication_api.py. The state they work on lives in core/spu/server.py and
core/spu/replica.py. Every list and text of a request was bounded before a handler runs
(core/protocol/bounds.py); the handlers check what the request means.

Produce appends whole batches (the SPU never decodes records) and answers by the acks asked
for: ``none`` at once, ``leader`` once fsynced here (group commit), ``all`` once the high
watermark, computed over the in-sync set, has passed the batch. ``acks=all`` is refused with
``notEnoughReplicas`` while the in-sync set is smaller than the topic's ``min_in_sync``.
Idempotent batches (producer id >= 0) are checked against the producer table first: a
duplicate is answered with the offsets of its first append and not written again. A write
that may or may not have happened is answered with ``outcomeUnknown``.

A stream pushes whole batches while the consumer's credit lasts (core/spu/stream.py).
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Coroutine, TypeVar

from ..groups.names import OFFSETS_TOPIC
from ..node.authz import Denied
from ..protocol.channel_server import ServerStream
from ..protocol.fair_use import owner_of
from ..protocol.codes import Acks, ErrorCode, Isolation
from ..protocol.errors import KolkError
from ..protocol.wire import set_error
from ..security.masking import MASK_BYTES_PER_RESPONSE_MAX
from ..security.masking import UnmaskableBatchError, mask_read
from ..security.tls import Peer
from ..segments.batch import (CONTROL_FLAG, HEADER_SIZE, LENGTH_PREFIX_SIZE, NO_PRODUCER_ID, BatchHeader, parse_header,
                              validate_batch)
from ..segments.errors import InvalidBatchError, StorageError
from ..segments.producer_state import ProducerStateError, sequence_count
from ..smartmodule.chain import Chain, ChainError
from .errors import producer_error, storage_error
from ..protocol.offset_range import out_of_range_message
from .produce_rules import inline, needs_work, prepare, size_refusal
from .group_api import GroupCalls
from .replication_api import ReplicationCalls
from .smartmodules import invocations_from_wire, run_chain
from .stream import StreamFeed

if TYPE_CHECKING:
    from .replica import Replica
    from .server import SpuServer

log = logging.getLogger("kolk.spu")

PRODUCE_CHAINS_MAX = 16  # produce-side chains kept per connection
PREPARE_INLINE_BYTES_MAX = 64 << 10  # topic rules on a small uncompressed request run on the loop, others in a thread

E = TypeVar("E", bound=enum.IntEnum)


def enum_field(kind: type[E], value: Any, result: Any) -> E | None:
    """An enum field as ``kind`` (the reader hands enums over as ``_DynamicEnum``). None, with
    ``result`` filled, for a number the schema does not have (a client from a newer schema)."""
    raw = _raw(value)
    try:
        return kind(raw)
    except ValueError:
        choices = ", ".join(m.name.lower() for m in kind)
        set_error(result, "invalidArgument", f"{kind.__name__.lower()} {raw} is not one of {choices}")
        return None


def _log_failure(task: "asyncio.Task[Any]") -> None:
    """Retrieve (and log) the failure of a task nobody awaits (an acks=none commit)."""
    if not task.cancelled() and task.exception() is not None:
        e = task.exception()
        # The producer is never told (acks=none): the log is where it shows. Rate-limited per
        # kind of error (core/observe/log_limits.py): a failing disk fails every one of them.
        log.warning("an acks=none append was not committed: %s", e,
                    extra={"repeat_key": ("acks=none", type(e).__name__)})


def control_batch_refusal(records: bytes) -> str | None:
    """Why ``records`` may not be produced because it holds a control batch (attributes bit 5),
    or None. Clients never write control batches (only the cluster may), and masking and
    SmartModules must never meet one a client crafted (docs/security.md "Masking fails
    closed"). Walks the headers only; the log validates the rest on append."""
    pos, n = 0, len(records)
    while n - pos >= HEADER_SIZE:
        h = parse_header(records, pos)
        if h.is_control:
            return (f"batch at byte {pos} is a control batch (attributes {h.attributes:#06x} has the control bit "
                    f"{CONTROL_FLAG:#04x}): clients may not produce control batches")
        if h.batch_length < HEADER_SIZE - LENGTH_PREFIX_SIZE:
            return None  # not a batch at all: the append names what is wrong with it
        pos += h.size
    return None


def _raw(value: Any) -> int:
    """An enum field's number (the reader hands enums over as ``_DynamicEnum``)."""
    return value if isinstance(value, int) else int(value.raw)


def _is_idempotent(records: bytes) -> bool:
    """Whether ``records`` starts with a batch of an idempotent producer (producer id >= 0)."""
    return len(records) >= HEADER_SIZE and parse_header(records, 0).producer_id != NO_PRODUCER_ID


@dataclass
class _ProduceChain:
    lock: asyncio.Lock
    chain: Chain | None = None


class SpuHandler(ReplicationCalls, GroupCalls):
    """The calls of one client or node connection to this SPU."""

    def __init__(self, server: "SpuServer", peer: Peer) -> None:
        self.s = server
        self.peer = peer
        # Produce-side chains of this connection: an aggregate carries on across its requests.
        # A chain runs one request at a time (its lock), in the order the requests came.
        self._chains: dict[str, _ProduceChain] = {}
        # Per partition, the last produce of this connection whose topic rules run off the loop:
        # done once it has appended, so the next one appends after it (the log keeps their order).
        self._in_order: dict[str, asyncio.Future[None]] = {}
        server.connections += 1  # the channel calls connection_closed once it goes

    def connection_closed(self) -> None:
        """The connection went away: its produce-side chains go with it, their memory at once."""
        self.s.connections -= 1
        for entry in self._chains.values():
            if entry.chain is not None:
                entry.chain.close()
        self._chains.clear()

    def _evict_produce_chains(self) -> None:
        """At most PRODUCE_CHAINS_MAX chains a connection, the least recently made going first;
        one in use now stays (its requests are bounded by the connection's in-flight limit)."""
        for key in list(self._chains):
            if len(self._chains) <= PRODUCE_CHAINS_MAX:
                return
            entry = self._chains[key]
            if not entry.lock.locked():
                del self._chains[key]
                if entry.chain is not None:
                    entry.chain.close()

    def _may(self, result: Any, action: str, topic: str, smartmodules: Any = ()) -> bool:
        """The policy check of a data call: the topic, then every SmartModule it would run."""
        try:
            self.s.authz.check(self.peer, action, f"topic:{topic}")
            for stage in smartmodules:
                self.s.authz.check(self.peer, "use", f"smartmodule:{stage.name.split('@')[0]}")
            return True
        except Denied as e:
            set_error(result, "denied", str(e))
            return False

    # ---------------------------------------------------------------- produce

    async def produce(self, req: Any, out: Any) -> None:
        started = time.perf_counter()
        try:
            await self._produce(req, out)
        finally:  # answered, refused or failed: every produce request is timed, by the acks it asked for
            self.s.metrics.observe_produce(_raw(req.acks), time.perf_counter() - started)

    async def _produce(self, req: Any, out: Any) -> None:
        result = out.result
        if not self._may(result, "produce", req.topic, req.smartmodules):
            return
        if self._audit_write_refused(result, req):  # _audit: records only as the writer itself
            return
        if req.topic == OFFSETS_TOPIC:
            why = (f"{OFFSETS_TOPIC} is internal: only the group coordinators write to it (commit offsets through a "
                   "consumer group)")
            self.s.authz.record(self.peer, "produce", f"topic:{OFFSETS_TOPIC}", "deny", None, why)
            set_error(result, "denied", why)
            return
        records = req.records
        if len(records) > self.s.config.produce_bytes_max:
            set_error(result, "tooLarge", f"produce request of {len(records)} bytes is more than "
                      f"{self.s.config.produce_bytes_max}")
            return
        refusal = control_batch_refusal(records)
        if refusal is not None:
            set_error(result, ErrorCode.INVALID_BATCH.value, refusal)
            return
        acks = enum_field(Acks, req.acks, result)
        if acks is None:
            return
        replica = await self.s.opened_replica(req.topic, req.partition, result)
        if replica is None:
            return
        minimum = self.s.min_in_sync(replica)
        if acks == Acks.ALL and len(replica.isr) < minimum:
            set_error(result, "notEnoughReplicas", f"{replica.name} has {len(replica.isr)} in-sync replicas "
                      f"{replica.isr}, fewer than its min_in_sync {minimum}; acks=all is refused", None, True)
            return
        timeout = min(max(int(req.timeoutMs), 1), self.s.config.produce_timeout_ms_max) / 1000
        epoch = replica.epoch
        if len(req.smartmodules):
            chained = await self._produce_chain(result, replica, records, invocations_from_wire(req.smartmodules))
            if chained is None:
                return
            if not chained:  # the chain dropped every record: nothing to store
                out.baseOffset = out.lastOffset = -1
                result.ok = True
                return
            records = chained
            # The chain ran off the loop: leadership may have moved meanwhile. Appending now, as
            # a follower or in an old epoch, would put a record where the new leader puts
            # another (replicas diverging): re-check, as before the chain.
            led = self.s.led_replica(replica.name, result, req.topic)
            if led is None:
                return  # the error says who leads now
            if led is not replica or replica.epoch != epoch:
                set_error(result, "notLeader", f"{replica.name}: leadership changed while the SmartModule chain ran "
                          f"(epoch {epoch} is over); nothing was written, retry at the leader", None, True)
                return
        tc = self.s.lifecycle.topic_config(replica)
        refusal = size_refusal(records, tc, req.topic)
        if refusal is not None:
            set_error(result, "tooLarge", refusal)
            return
        if not needs_work(records, tc):
            await self._append(out, replica, records, acks, epoch, timeout)
            return
        # The topic's rules (keys in a compacted topic, its codec) may decode or recompress.
        loop = asyncio.get_running_loop()
        before = self._in_order.get(replica.name)
        mine: asyncio.Future[None] = loop.create_future()
        self._in_order[replica.name] = mine
        try:
            try:
                if inline(records, tc, PREPARE_INLINE_BYTES_MAX):
                    records = prepare(records, tc, req.topic)
                else:
                    records = await asyncio.to_thread(prepare, records, tc, req.topic)
            except InvalidBatchError as e:
                set_error(result, ErrorCode.INVALID_BATCH.value, str(e))
                return
            refusal = size_refusal(records, tc, req.topic)  # recompressed batches may have grown
            if refusal is not None:
                set_error(result, "tooLarge", refusal)
                return
            if before is not None:
                await asyncio.shield(before)  # the previous request of this connection appends first
            led = self.s.led_replica(replica.name, result, req.topic)
            if led is None:
                return
            if led is not replica or replica.epoch != epoch:
                set_error(result, "notLeader", f"{replica.name}: leadership changed while the records were "
                          f"prepared (epoch {epoch} is over); nothing was written, retry at the leader", None, True)
                return
            await self._append(out, replica, records, acks, epoch, timeout, appended=mine)
        finally:
            if not mine.done():
                mine.set_result(None)
            if self._in_order.get(replica.name) is mine:
                del self._in_order[replica.name]

    async def _append(self, out: Any, replica: "Replica", records: bytes, acks: Acks, epoch: int,
                      timeout: float, appended: "asyncio.Future[None] | None" = None) -> None:
        """Append (or recognise a duplicate idempotent batch) and answer as ``acks`` asks;
        ``appended`` is resolved once the append (or its refusal) is done, before the wait."""
        try:
            await self._append_and_wait(out, replica, records, acks, epoch, timeout, appended)
        finally:
            if appended is not None and not appended.done():
                appended.set_result(None)

    async def _append_and_wait(self, out: Any, replica: "Replica", records: bytes, acks: Acks, epoch: int,
                               timeout: float, appended: "asyncio.Future[None] | None") -> None:
        idempotent: BatchHeader | None = None
        try:
            if _is_idempotent(records):
                h = validate_batch(records, 0, replica.log.config.batch_bytes_max)
                if h.size != len(records):
                    raise InvalidBatchError("an idempotent produce (producer id >= 0) carries exactly one batch, "
                                            f"this one has {len(records)} bytes for a batch of {h.size}")
                verdict = replica.producers.check(h.producer_id, h.producer_epoch, h.base_sequence, sequence_count(h))
                if verdict.kind == "duplicate":
                    if appended is not None:
                        appended.set_result(None)
                    if await self._await_acks(out.result, replica, acks, verdict.last_offset + 1, epoch, timeout):
                        out.baseOffset, out.lastOffset = verdict.base_offset, verdict.last_offset
                        out.duplicate = True
                        out.result.ok = True
                    return
                idempotent = h
            info = replica.log.append(records, leader_epoch=epoch)
        except StorageError as e:
            self.s.disk.on_error(replica, e)
            storage_error(out.result, e, write=True)
            return
        except ProducerStateError as e:
            producer_error(out.result, e)
            return
        traffic = replica.traffic
        traffic.records_in += info.last_offset - info.base_offset + 1
        traffic.bytes_in += len(records)
        if appended is not None:
            appended.set_result(None)
        self.s.lifecycle.after_append(replica)
        if idempotent is not None:
            replica.producers.record(idempotent.producer_id, idempotent.producer_epoch, idempotent.base_sequence,
                                     sequence_count(idempotent), info.base_offset, info.last_offset)
        replica.wake()
        if await self._await_acks(out.result, replica, acks, info.next_offset, epoch, timeout):
            out.baseOffset, out.lastOffset = info.base_offset, info.last_offset
            out.result.ok = True

    async def _produce_chain(self, result: Any, replica: "Replica", records: bytes,
                             invocations: list[dict[str, Any]]) -> bytes | None:
        """Run a produce request's chain (one instance per chain per connection, so an
        aggregate carries on across requests); None when it failed (``result`` says why)."""
        if _is_idempotent(records):
            set_error(result, "invalidArgument", "a produce-side SmartModule chain needs a producer that is not "
                      "idempotent (idempotent=False): the chain changes the batch the sequence numbers count")
            return None
        # Per topic: an aggregate's state is about the records of one topic.
        key = json.dumps([replica.name.rsplit("-", 1)[0], [[i["name"], sorted(i["params"].items())]
                                                          for i in invocations]])
        sm = self.s.smartmodules
        tenant = owner_of(self.peer)
        # The entry and its lock exist before the first await, so this connection's requests
        # with this chain take it in the order they came, and each appends (synchronously,
        # right after) before the next runs: the log keeps the requests' order.
        entry = self._chains.get(key)
        if entry is None:
            entry = self._chains[key] = _ProduceChain(asyncio.Lock())
            self._evict_produce_chains()
        try:
            async with entry.lock:
                if entry.chain is None:
                    entry.chain = await sm.chain(invocations, tenant)
                    assert entry.chain is not None  # the request has stages
                return await run_chain(sm, tenant, entry.chain, records, replica.log.config.batch_bytes_max,
                                       renumber=True)
        except KolkError as e:
            set_error(result, e.code, str(e), None, e.retriable)
        except ChainError as e:
            if self._chains.get(key) is entry:
                del self._chains[key]
            if entry.chain is not None:
                entry.chain.close()
            set_error(result, "smartModule", str(e))
        except StorageError as e:
            storage_error(result, e)
        return None

    async def _await_acks(self, result: Any, replica: "Replica", acks: Acks, next_offset: int, epoch: int,
                          timeout: float) -> bool:
        """Wait as ``acks`` asks for the records before ``next_offset``; on failure fill
        ``result`` (the records are appended: the outcome is unknown) and return False."""
        s = self.s
        if acks == Acks.ALL and s.config.unsafe_acks_for_tests:
            acks = Acks.LEADER  # the broken build of jepsen's self-test (SpuConfig.unsafe_acks_for_tests)
        if acks == Acks.NONE:
            task = asyncio.ensure_future(s.committed(replica, next_offset))
            task.add_done_callback(_log_failure)
            return True
        try:
            async with asyncio.timeout(timeout):
                await s.committed(replica, next_offset)
                if acks == Acks.LEADER:
                    return True
                while replica.log.high_watermark < next_offset:
                    if replica.failure is not None:
                        set_error(result, "notLeader", f"{replica.name}: the disk of SPU {s.config.spu_id} failed "
                                  f"before the write was committed ({replica.failure}); it may or may not survive",
                                  None, True, outcome_unknown=True)
                        return False
                    if replica.epoch != epoch or not replica.is_leader or replica.fenced \
                            or s.replicas.get(replica.name) is not replica:
                        set_error(result, "notLeader", f"{replica.name}: leadership moved from SPU "
                                  f"{s.config.spu_id} (epoch {epoch}) before the write was committed; it may or may "
                                  "not survive", s.spu_address(replica.leader), True, outcome_unknown=True)
                        return False
                    await replica.changed.wait()
        except TimeoutError:
            what = "durable" if acks == Acks.LEADER else f"committed by the in-sync set {replica.effective_isr()}"
            set_error(result, "timeout", f"{replica.name}: not {what} within {timeout} s", None, True,
                      outcome_unknown=True)
            return False
        except StorageError as e:
            s.disk.on_error(replica, e)
            storage_error(result, e, write=True)
            return False
        minimum = s.min_in_sync(replica)
        if len(replica.isr) < minimum:
            # Appended, but the set shrank below min_in_sync while the write waited (Kafka's
            # NOT_ENOUGH_REPLICAS_AFTER_APPEND): the records may yet be committed. The outcome is
            # unknown, not failed; an idempotent retry settles it (a duplicate is answered with
            # the first append's offsets).
            set_error(result, "notEnoughReplicasAfterAppend", f"{replica.name}: appended, but the in-sync set "
                      f"{replica.isr} shrank below min_in_sync {minimum} before it was acknowledged; the records "
                      "may or may not be committed (outcome unknown: retry with the idempotent producer)", None, True,
                      outcome_unknown=True)
            return False
        return True

    # ---------------------------------------------------------------- consumers

    async def fetch(self, req: Any, out: Any) -> None:
        started = time.perf_counter()
        try:
            await self._fetch(req, out)
        finally:
            self.s.metrics.fetch_seconds.observe(time.perf_counter() - started)

    async def _fetch(self, req: Any, out: Any) -> None:
        if not self._may(out.result, "consume", req.topic):
            return
        isolation = enum_field(Isolation, req.isolation, out.result)
        if isolation is None:
            return
        replica = await self.s.opened_replica(req.topic, req.partition, out.result)
        if replica is None:
            return
        lg = replica.log
        upto = lg.high_watermark if isolation == Isolation.COMMITTED else None
        # A masked reader's answer is bounded by the masking it costs (docs/security.md "Masking
        # fails closed"): it reads on from nextOffset.
        masks = self.s.authz.masks(self.peer, req.topic)
        max_bytes = max(1, min(int(req.maxBytes), self.s.config.fetch_bytes_max))
        if masks:
            max_bytes = min(max_bytes, MASK_BYTES_PER_RESPONSE_MAX)
        try:
            res = lg.read(int(req.offset), max_bytes, upto)
        except StorageError as e:
            self.s.disk.on_error(replica, e)
            storage_error(out.result, e, partition=replica.name)
            return
        next_offset = res.next_offset
        try:
            masked = await mask_read(res.data, masks)  # hands the loop back while it masks
            out.records = masked.data
            if masked.stopped_at is not None:
                next_offset = masked.stopped_at
        except UnmaskableBatchError as e:  # withheld, never sent unmasked: the read ends before it
            if not e.masked_before:
                set_error(out.result, ErrorCode.CORRUPT_BATCH.value, f"{replica.name}: {e}")
                return
            out.records, next_offset = e.masked_before, e.offset
        out.highWatermark = res.high_watermark
        out.logStartOffset = res.log_start_offset
        out.logEndOffset = res.log_end_offset
        out.nextOffset = next_offset
        out.result.ok = True
        traffic = replica.traffic
        traffic.records_out += max(0, next_offset - int(req.offset))
        traffic.bytes_out += len(out.records)

    async def offsets(self, req: Any, out: Any) -> None:
        if not self._may(out.result, "consume", req.topic):
            return
        replica = await self.s.opened_replica(req.topic, req.partition, out.result)
        if replica is None:
            return
        out.logStartOffset = replica.log.log_start_offset
        out.highWatermark = replica.log.high_watermark
        out.logEndOffset = replica.log.log_end_offset
        out.result.ok = True

    async def offsetForTimestamp(self, req: Any, out: Any) -> None:  # noqa: N802 - the wire name
        if not self._may(out.result, "consume", req.topic):
            return
        replica = await self.s.opened_replica(req.topic, req.partition, out.result)
        if replica is None:
            return
        try:
            found = replica.log.offset_for_timestamp(int(req.timestamp))
        except StorageError as e:
            storage_error(out.result, e)
            return
        out.found = found is not None
        out.offset = found if found is not None else replica.log.log_end_offset
        out.result.ok = True

    async def stream(self, req: Any, out: Any, stream: ServerStream) -> Coroutine[Any, Any, Any] | None:
        """Open a consumer's stream: answer, and return what feeds it (core/spu/stream.py)."""
        s = self.s
        if not self._may(out.result, "consume", req.topic, req.smartmodules):
            return None
        isolation = enum_field(Isolation, req.isolation, out.result)
        if isolation is None:
            return None
        replica = await s.opened_replica(req.topic, req.partition, out.result)
        if replica is None:
            return None
        lg = replica.log
        offset = int(req.offset)
        if not lg.log_start_offset <= offset <= lg.log_end_offset:
            set_error(out.result, "offsetOutOfRange",
                      out_of_range_message(replica.name, offset, lg.log_start_offset, lg.log_end_offset))
            return None
        if s.streams >= s.config.streams_max:
            set_error(out.result, "limitExceeded", f"SPU {s.config.spu_id} already serves {s.streams} streams",
                      None, True)
            return None
        try:
            chain = await s.smartmodules.chain(invocations_from_wire(req.smartmodules), owner_of(self.peer))
        except KolkError as e:
            set_error(out.result, e.code, str(e), None, e.retriable)
            return None
        stream.credit = min(stream.credit, s.config.stream_window_bytes_max)
        out.result.ok = True
        return StreamFeed(s, self.peer, stream, replica, req.topic, offset, isolation, chain).run()
