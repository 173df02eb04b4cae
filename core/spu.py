"""The SPU (stream processing unit): serves produce, fetch and streams for the partitions it leads.

One asyncio loop per process (DESIGN.md §2, §10). On start the SPU opens its data directory,
serves Cap'n Proto (``Spu`` in kolk.capnp), registers with the SC, sends heartbeats to the SC
leader, and follows the metadata by watch: it opens a log for every partition it holds a
replica of and serves those it leads. Produce appends whole batches (the SPU never decodes
records), answering by the acks asked for; group commit makes one fsync cover every append
since the last. Fetch and streams read whole batches up to the high watermark (or the log
end) and send their bytes as they are on disk. Replication (RF > 1) is issue 5; until then
``acks=all`` on a partition with other replicas is refused rather than answered falsely.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from dataclasses import dataclass
from typing import Any

import capnp

from .admin import AdminClient, watch
from .errors import KolkError
from .segments import GroupCommit, LogConfig, LogStore, PartitionLog
from .segments.errors import (
    BatchTooLargeError,
    CorruptBatchError,
    InvalidBatchError,
    OffsetOutOfRangeError,
    StorageError,
    StorageFullError,
)
from .wire import schema, set_error

log = logging.getLogger("kolk.spu")

ACKS_NONE, ACKS_LEADER, ACKS_ALL = 0, 1, 2
COMMITTED = 0
_ENUM = {"none": 0, "leader": 1, "all": 2, "committed": 0, "uncommitted": 1}


def enum_value(v: Any) -> int:
    """pycapnp hands enums to servers as _DynamicEnum; clients may send ints."""
    if isinstance(v, int):
        return v
    raw = getattr(v, "raw", None)
    if isinstance(raw, int):
        return raw
    return _ENUM[str(v)]


@dataclass
class SpuConfig:
    spu_id: int
    data_dir: str
    sc_addresses: list[str]
    public_address: str
    private_address: str | None = None
    bind_address: str | None = None  # default: the public address
    rack: str | None = None
    heartbeat_interval_ms: int = 1_000
    produce_bytes_max: int = 16 << 20
    fetch_bytes_max: int = 8 << 20
    stream_window_bytes_max: int = 64 << 20
    stream_push_bytes_max: int = 1 << 20
    streams_max: int = 1_000
    produce_timeout_ms_max: int = 60_000
    stream_keepalive_ms: int = 5_000  # an idle stream checks its consumer is still there
    ready_file: str | None = None

    def __post_init__(self) -> None:
        if self.heartbeat_interval_ms < 50:
            raise ValueError("heartbeat_interval_ms must be at least 50")
        if self.stream_push_bytes_max > self.stream_window_bytes_max:
            raise ValueError("stream_push_bytes_max must not exceed stream_window_bytes_max")


class Replica:
    """One partition replica on this SPU and what the metadata says about it."""

    def __init__(self, name: str, log_: PartitionLog) -> None:
        self.name = name
        self.log = log_
        self.group = GroupCommit(log_)
        self.meta: dict[str, Any] = {}
        self.changed = asyncio.Event()

    def wake(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    @property
    def leader(self) -> int | None:
        return self.meta.get("status", {}).get("leader")

    @property
    def epoch(self) -> int:
        return int(self.meta.get("status", {}).get("epoch", 0))

    @property
    def replicas(self) -> list[int]:
        return list(self.meta.get("spec", {}).get("replicas", []))


class SpuServer:
    def __init__(self, config: SpuConfig) -> None:
        self.config = config
        self.store = LogStore(config.data_dir)
        self.admin = AdminClient(config.sc_addresses, timeout_s=30)
        self.replicas: dict[str, Replica] = {}
        self.partitions: dict[str, dict[str, Any]] = {}  # every partition of the cluster, by name
        self.spus: dict[int, dict[str, Any]] = {}
        self.metadata_version = 0
        self.streams = 0
        self._server: Any = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._watch_handle: Any = None
        self.address = config.public_address
        self.metadata_ready = asyncio.Event()

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        host, port = (self.config.bind_address or self.config.public_address).rsplit(":", 1)

        async def on_connection(stream: Any) -> None:
            try:
                await capnp.TwoPartyServer(stream, bootstrap=SpuImpl(self)).on_disconnect()
            except Exception as e:  # one broken client ends only its own connection
                log.info("client connection ended: %s", e)

        self._server = await capnp.AsyncIoStream.create_server(on_connection, host, int(port))
        bound = self._server.sockets[0].getsockname()
        self.address = f"{bound[0]}:{bound[1]}"
        await self.admin.register_spu(self.config.spu_id, self.config.public_address,
                                      self.config.private_address or self.config.public_address, self.config.rack)
        self._watch_handle = await watch(self.admin, 0, self._on_metadata)
        self._tasks.append(asyncio.ensure_future(self._heartbeat_loop()))
        await asyncio.wait_for(self.metadata_ready.wait(), 30)
        if self.config.ready_file:
            tmp = self.config.ready_file + ".tmp"
            with open(tmp, "w") as f:
                json.dump({"address": self.address, "pid": os.getpid()}, f)
            os.replace(tmp, self.config.ready_file)
        log.info("SPU %d serving on %s", self.config.spu_id, self.address)

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        if self._server is not None:
            self._server.close()
        self.store.close()

    async def _heartbeat_loop(self) -> None:
        interval = self.config.heartbeat_interval_ms / 1000
        while True:
            try:
                await self.admin.heartbeat(self.config.spu_id)
            except KolkError as e:
                log.warning("heartbeat failed: %s", e)
            await asyncio.sleep(interval)  # heartbeat period

    # ---------------------------------------------------------------- metadata

    def _on_metadata(self, full_sync: bool, version: int, events: list[dict[str, Any]]) -> None:
        if full_sync:
            seen = {e["name"] for e in events if e["kind"] == "partition"}
            for name in list(self.replicas):
                if name not in seen:
                    self._drop_replica(name)
            self.spus.clear()
            self.partitions.clear()
        for e in events:
            if e["kind"] == "spu":
                if e["deleted"]:
                    self.spus.pop(int(e["name"]), None)
                else:
                    self.spus[int(e["name"])] = e["object"]
            elif e["kind"] == "partition":
                if e["deleted"]:
                    self.partitions.pop(e["name"], None)
                    self._drop_replica(e["name"])
                else:
                    self.partitions[e["name"]] = e["object"]
                    self._update_replica(e["name"], e["object"])
        self.metadata_version = version
        self.metadata_ready.set()

    def _update_replica(self, name: str, obj: dict[str, Any]) -> None:
        if self.config.spu_id not in obj["spec"]["replicas"]:
            self._drop_replica(name)
            return
        replica = self.replicas.get(name)
        if replica is None:
            replica = Replica(name, self.store.open_log(name, LogConfig()))
            self.replicas[name] = replica
        replica.meta = obj
        if replica.leader == self.config.spu_id and len(replica.replicas) == 1:
            # The only replica: everything durable is committed.
            replica.log.set_high_watermark(replica.log.durable_offset)
        replica.wake()

    def _drop_replica(self, name: str) -> None:
        replica = self.replicas.pop(name, None)
        if replica is not None:
            replica.wake()
            self.store.delete_log(name)

    def spu_address(self, spu_id: int | None) -> str:
        if spu_id is None:
            return ""
        spu = self.spus.get(spu_id)
        return spu["spec"]["public_address"] if spu else ""

    def leader_replica(self, topic: str, partition: int, result: Any) -> Replica | None:
        """The replica if this SPU leads it; else fill ``result`` with the error and return None."""
        name = f"{topic}-{partition}"
        replica = self.replicas.get(name)
        if replica is None:
            meta = self.partitions.get(name)
            if meta is not None:
                leader = meta["status"].get("leader")
                set_error(result, "notLeader", f"partition {name} is not on SPU {self.config.spu_id}; SPU {leader} "
                          "leads it", self.spu_address(leader), True)
                return None
            count = sum(1 for p in self.partitions.values() if p["spec"]["topic"] == topic)
            if count:
                set_error(result, "notFound", f"partition {name} does not exist: topic {topic} has partitions "
                          f"0-{count - 1}")
            else:
                # Unknown here; the SPU's metadata may lag a topic just created, so a retry may help.
                set_error(result, "notFound", f"partition {name}: topic {topic} is unknown to SPU "
                          f"{self.config.spu_id} (metadata version {self.metadata_version})", None, True)
            return None
        if replica.leader != self.config.spu_id:
            set_error(result, "notLeader", f"SPU {self.config.spu_id} does not lead {name}; SPU {replica.leader} does",
                      self.spu_address(replica.leader), True)
            return None
        return replica

    async def committed(self, replica: Replica, next_offset: int) -> None:
        """Wait until ``next_offset`` is durable, then move the high watermark (RF 1)."""
        await replica.group.wait_durable(next_offset)
        log_ = replica.log
        if len(replica.replicas) == 1 and log_.high_watermark < log_.durable_offset:
            log_.set_high_watermark(min(log_.durable_offset, log_.log_end_offset))
        replica.wake()


def storage_error(result: Any, e: StorageError) -> None:
    if isinstance(e, BatchTooLargeError):
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
    def __init__(self, server: SpuServer) -> None:
        self.s = server

    async def produce(self, topic, partition, acks, records, timeoutMs, _context, **kwargs):  # noqa: N803, ANN001
        r = _context.results
        if len(records) > self.s.config.produce_bytes_max:
            set_error(r.result, "tooLarge", f"produce request of {len(records)} bytes is more than "
                      f"{self.s.config.produce_bytes_max}")
            return
        replica = self.s.leader_replica(topic, partition, r.result)
        if replica is None:
            return
        acks = enum_value(acks)
        if acks == ACKS_ALL and len(replica.replicas) > 1:
            set_error(r.result, "notEnoughReplicas", f"{replica.name} has {len(replica.replicas)} replicas; "
                      "acks=all with replication arrives with issue 5 — use acks=leader")
            return
        try:
            info = replica.log.append(records, leader_epoch=replica.epoch)
        except StorageError as e:
            storage_error(r.result, e)
            return
        replica.wake()
        if acks != ACKS_NONE:
            timeout = min(max(int(timeoutMs), 1), self.s.config.produce_timeout_ms_max) / 1000
            try:
                async with asyncio.timeout(timeout):
                    await self.s.committed(replica, info.next_offset)
            except TimeoutError:
                set_error(r.result, "timeout", f"not durable within {timeout} s", None, True)
                return
            except StorageError as e:
                storage_error(r.result, e)
                return
        else:
            asyncio.ensure_future(self.s.committed(replica, info.next_offset))
        r.baseOffset = info.base_offset
        r.lastOffset = info.last_offset
        r.result.ok = True

    async def fetch(self, topic, partition, offset, maxBytes, isolation, _context, **kwargs):  # noqa: N803, ANN001
        r = _context.results
        replica = self.s.leader_replica(topic, partition, r.result)
        if replica is None:
            return
        lg = replica.log
        upto = lg.high_watermark if enum_value(isolation) == COMMITTED else None
        try:
            res = lg.read(int(offset), max(1, min(int(maxBytes), self.s.config.fetch_bytes_max)), upto)
        except StorageError as e:
            storage_error(r.result, e)
            return
        r.records = res.data
        r.highWatermark = res.high_watermark
        r.logStartOffset = res.log_start_offset
        r.logEndOffset = res.log_end_offset
        r.nextOffset = res.next_offset
        r.result.ok = True

    async def offsets(self, topic, partition, _context, **kwargs):  # noqa: ANN001
        r = _context.results
        replica = self.s.leader_replica(topic, partition, r.result)
        if replica is None:
            return
        r.logStartOffset = replica.log.log_start_offset
        r.highWatermark = replica.log.high_watermark
        r.logEndOffset = replica.log.log_end_offset
        r.result.ok = True

    async def offsetForTimestamp(self, topic, partition, timestamp, _context, **kwargs):  # noqa: N802, ANN001
        r = _context.results
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

    async def stream(self, topic, partition, offset, isolation, windowBytes, consumer, _context, **kwargs):  # noqa: N803, ANN001
        r = _context.results
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
        control = StreamControlImpl()
        control.credit = min(int(windowBytes), self.s.config.stream_window_bytes_max)
        control.task = asyncio.ensure_future(self._stream_loop(replica, int(offset), enum_value(isolation), consumer, control))
        r.control = control
        r.result.ok = True

    async def _stream_loop(self, replica: Replica, offset: int, isolation: int, consumer: Any,
                           control: StreamControlImpl) -> None:
        self.s.streams += 1
        window = control.credit
        keepalive = self.s.config.stream_keepalive_ms / 1000
        try:
            while not control.closed and replica.name in self.s.replicas:
                lg = replica.log
                changed = replica.changed
                upto = lg.high_watermark if isolation == COMMITTED else lg.log_end_offset
                if control.credit <= 0 or offset >= upto:
                    control.granted.clear()
                    waiting = control.granted if control.credit <= 0 else changed
                    if not await _wait(waiting, keepalive):
                        # Nothing to send for a while: an empty push finds a consumer that
                        # went away (the call fails), so the stream does not linger.
                        await consumer.push(b"", lg.high_watermark, offset)
                    continue
                res = lg.read(offset, min(control.credit, self.s.config.stream_push_bytes_max), upto)
                if not res.data:
                    await _wait(changed, keepalive)
                    continue
                if len(res.data) > control.credit and control.credit < window:
                    # The next batch does not fit what is left of the window: wait for grants.
                    # (A batch larger than the whole window goes once the window is empty.)
                    control.granted.clear()
                    if not await _wait(control.granted, keepalive):
                        await consumer.push(b"", lg.high_watermark, offset)
                    continue
                control.credit -= len(res.data)
                await consumer.push(res.data, res.high_watermark, res.next_offset)
                offset = res.next_offset
        except (asyncio.CancelledError, capnp.KjException):
            pass  # closed, or the consumer went away
        except StorageError as e:
            log.warning("stream on %s ended: %s", replica.name, e)
        finally:
            self.s.streams -= 1
