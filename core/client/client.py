"""``kolk.Client``: the one entry point for producing, consuming and administering.

:class:`AsyncClient` is the asyncio core: it asks an SC for metadata (partitions, leaders,
SPU addresses), keeps one connection per SPU, and talks straight to the leader of each
partition, refreshing metadata when an SPU says it does not lead. :class:`Client` is the
synchronous facade: it runs an AsyncClient on a background thread with its own event loop.
"""

from __future__ import annotations

import asyncio
import weakref
import json
import random
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable, Collection, Iterable, Iterator, TypeVar

from ..metadata.controllers import offline_reason
from ..metadata.specs import PartitionSpec, PartitionStatus, SpecError, SpuSpec, SpuStatus
from ..protocol.node_auth import NodeCredential
from ..protocol.channel import CallRejected, ConnectionLost
from ..protocol.channel_client import ClientConnection
from ..protocol.errors import (ClusterUnavailableError, InvalidRequestError, KolkError, NotFoundError,
                               PartitionOfflineError)
from ..protocol.limits import PARTITION_STATUS_MAX, PRODUCE_BYTES_MAX
from ..protocol.values import SmartModuleInvocation
from ..protocol.wire import error_from_struct, transport_error
from ..security.tls import TlsConfig
from ..transport import SPU, connect
from .admin import AdminClient
from .consumer import AsyncConsumer, ConsumerRecord, Offset, RecordBatch, normalize_chain
from .group_consumer import AsyncGroupConsumer
from .group_consumer_sync import GroupConsumer
from . import groups_admin
from .partition_status import PARTITION_STATUS_SPUS_IN_FLIGHT_MAX, PARTITION_STATUS_TIMEOUT_S, partition_row
from .producer import AsyncProducer, RecordMetadata
from .profile import profile_sc, profile_tls

T = TypeVar("T")
DEFAULT_SC = "127.0.0.1:9003"
CONNECT_TIMEOUT_S = 3.0
# What can go wrong on the way to an SPU besides an error answer: mapped by wire.transport_error.
TRANSPORT_ERRORS = (CallRejected, ConnectionLost, TimeoutError)


@dataclass(frozen=True)
class _Partition:
    """A partition as the SC listed it (``obj``, what :meth:`AsyncClient.refresh` returns)
    and as the client routes by it: where its replicas are and who leads."""

    obj: dict[str, Any]
    spec: PartitionSpec
    status: PartitionStatus

    @staticmethod
    def of(obj: dict[str, Any]) -> "_Partition":
        try:
            return _Partition(obj, PartitionSpec.from_dict(obj["spec"]), PartitionStatus.from_dict(obj["status"]))
        except (SpecError, KeyError) as e:
            raise KolkError(f"the SC sent a malformed partition {obj.get('name')!r}: {e}") from None


def _spus(objs: list[dict[str, Any]]) -> tuple[dict[int, str], set[int]]:
    """SPU id -> public address, and the ids of the live SPUs, from the SC's SPU objects."""
    addresses, alive = {}, set()
    for u in objs:
        try:
            spec, status = SpuSpec.from_dict(u["spec"]), SpuStatus.from_dict(u["status"])
        except (SpecError, KeyError) as e:
            raise KolkError(f"the SC sent a malformed SPU {u.get('name')!r}: {e}") from None
        addresses[spec.id] = spec.public_address
        if status.alive:
            alive.add(spec.id)
    return addresses, alive


def _local_defaults(sc: str | list[str] | None, tls: TlsConfig | None) -> tuple[str | list[str], TlsConfig | None]:
    """No SC given: the local cluster's (``kolk cluster start`` writes its profile), with its
    TLS settings when it was started with --tls; with no profile, 127.0.0.1:9003. A profile
    that says the local cluster is stopped raises LocalClusterStoppedError (profile.py)."""
    if sc is not None:
        return sc, tls
    return profile_sc() or DEFAULT_SC, tls if tls is not None else profile_tls()


class AsyncClient:
    def __init__(self, sc: str | list[str] | None = None, *, timeout_s: float = 30.0,
                 tls: TlsConfig | None = None, credential: NodeCredential | None = None) -> None:
        """``sc``: one SC address or several (None: the local cluster's, see ``kolk cluster
        start``). ``tls``: the CA to trust and this client's certificate (mutual TLS); None:
        plaintext. ``timeout_s``: the deadline of every call to the cluster."""
        sc, tls = _local_defaults(sc, tls)
        self.tls = tls
        self.credential = credential  # a node's own client on a plaintext cluster (core/protocol/node_auth.py)
        self.admin = AdminClient(sc, timeout_s=timeout_s, tls=tls, credential=credential)
        self.timeout_s = timeout_s
        self._partitions: dict[str, list[_Partition]] = {}  # topic -> its partitions, by index
        # Group consumers made here and not closed: close() closes them first (commit, leave).
        self._members: "weakref.WeakSet[AsyncGroupConsumer]" = weakref.WeakSet()
        self._spus: dict[int, str] = {}
        self._alive_spus: set[int] = set()
        self._conns: dict[str, ClientConnection] = {}  # one connection per SPU address
        self._connecting: dict[str, asyncio.Future[ClientConnection]] = {}

    # ---------------------------------------------------------------- metadata

    async def refresh(self, topic: str) -> list[dict[str, Any]]:
        """The topic's partition objects from the SC, by index; they are what the client routes
        by until :meth:`forget_leaders`."""
        return [p.obj for p in await self._refresh(topic)]

    async def _refresh(self, topic: str) -> list[_Partition]:
        parts = sorted(_of_topic(await self.admin.list_objects("partition", stale=True), topic),
                       key=lambda p: p.spec.partition)
        if not parts:
            if await self.admin.get_object("topic", topic) is None:
                raise NotFoundError(f"topic {topic} does not exist")
            raise ClusterUnavailableError(f"topic {topic} has no partitions yet")
        self._spus, self._alive_spus = _spus(await self.admin.list_objects("spu", stale=True))
        self._partitions[topic] = parts
        return parts

    async def _placed(self, topic: str) -> list[_Partition]:
        return self._partitions.get(topic) or await self._refresh(topic)

    async def max_message_bytes(self, topic: str) -> int | None:
        """The topic's effective max_message_bytes (its own, the cluster default, else the
        built-in), or None when it cannot be read now (the SPU still enforces it)."""
        from ..metadata.topic_config import DEFAULTS_NAME, resolve

        try:
            t = await self.admin.get_object("topic", topic, stale=True)
            if t is None:
                return None
            defaults = await self.admin.get_object("config", DEFAULTS_NAME, stale=True)
            return resolve(t["spec"].get("config", {}), defaults["spec"] if defaults else {},
                           int(t["spec"]["replication_factor"])).max_message_bytes
        except (KolkError, ValueError, KeyError, TypeError):
            return None

    async def partitions(self, topic: str) -> list[dict[str, Any]]:
        return [p.obj for p in await self._placed(topic)]

    def forget_leaders(self, topic: str) -> None:
        self._partitions.pop(topic, None)

    async def _connect(self, address: str) -> ClientConnection:
        """One connection per SPU. Concurrent callers share one connect: requests sent on one
        connection arrive in order, which the producer's ordering relies on."""
        conn = self._conns.get(address)
        if conn is not None and not conn.is_closed:
            return conn
        pending = self._connecting.get(address)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[ClientConnection] = asyncio.get_running_loop().create_future()
        self._connecting[address] = fut
        try:
            conn = await connect(SPU, address, self.tls, min(CONNECT_TIMEOUT_S, self.timeout_s), self.credential)
            self._conns[address] = conn
            fut.set_result(conn)
            return conn
        except BaseException as e:
            fut.set_exception(e)
            fut.exception()  # retrieved: other waiters re-raise it
            raise
        finally:
            self._connecting.pop(address, None)

    def drop_connection(self, address: str | None) -> None:
        """Forget a broken connection so the next call reconnects."""
        conn = self._conns.pop(address, None) if address else None
        if conn is not None:
            conn.close()

    async def leader_spu(self, topic: str, partition: int) -> tuple[Any, str]:
        parts = await self._placed(topic)
        if not 0 <= partition < len(parts):
            raise InvalidRequestError(f"topic {topic} has partitions 0-{len(parts) - 1}, not {partition}")
        p = parts[partition]
        leader = p.status.leader
        if leader is None:
            self.forget_leaders(topic)
            why = offline_reason(p.status, list(p.spec.replicas), self._alive_spus)
            raise PartitionOfflineError(f"partition {topic}-{partition} is {why}")
        if leader not in self._spus:
            self.forget_leaders(topic)
            raise ClusterUnavailableError(f"partition {topic}-{partition}: its leader SPU {leader} is not known yet")
        address = self._spus[leader]
        return await self._connect(address), address

    @staticmethod
    def check(result: Any) -> None:
        if not result.ok:
            raise error_from_struct(result.error)

    async def _with_leader(self, topic: str, partition: int, call: Callable[[Any], Awaitable[T]],
                           retries: int, *, write: bool = False) -> T:
        """``call`` on the partition's leader, retrying what is safe to retry. For a write the
        error raised at the end says whether any attempt may have been written
        (``outcome_unknown``): a retry that is refused does not make an earlier lost answer
        definite."""
        backoff = 0.05
        maybe_written = False
        for attempt in range(retries + 1):
            address = None
            try:
                try:
                    spu, address = await self.leader_spu(topic, partition)
                    return await call(spu)
                except TRANSPORT_ERRORS as e:
                    if not isinstance(e, CallRejected):
                        self.drop_connection(address)
                    raise transport_error(e, address or f"the leader of {topic}-{partition}", write) from e
            except KolkError as e:
                maybe_written = maybe_written or (write and e.outcome_unknown)
                if not e.retriable or attempt == retries:
                    if maybe_written and not e.outcome_unknown:
                        e.outcome_unknown = True
                        e.args = (f"{e}; an earlier attempt may have been written (outcome unknown)",)
                    elif write and not e.outcome_unknown:
                        e.args = (f"{e}; nothing was written",)
                    raise
                self.forget_leaders(topic)
                await asyncio.sleep(backoff * (0.5 + random.random()))  # retry backoff
                backoff = min(backoff * 2, 1.0)
        raise AssertionError("unreachable")

    # ---------------------------------------------------------------- data plane

    async def produce(self, topic: str, partition: int, data: bytes, acks: int = 2, timeout_ms: int = 30_000,
                      retries: int = 5,
                      smartmodules: "Iterable[SmartModuleInvocation | tuple[str, dict[str, str]]] | None" = None) -> int:
        """``smartmodules``: a chain the SPU runs on the records before it stores them."""
        if len(data) > PRODUCE_BYTES_MAX:
            raise InvalidRequestError(f"a produce request of {len(data)} bytes is more than the SPU accepts "
                                      f"({PRODUCE_BYTES_MAX})")
        chain = [stage.wire_fields() for stage in normalize_chain(smartmodules)]

        # The SPU answers by timeout_ms; the client waits a little longer for that answer.
        deadline_s = timeout_ms / 1000 + 1.0

        async def call(spu: ClientConnection) -> int:
            r = await spu.call("produce", deadline_s, topic=topic, partition=partition, acks=acks, records=data,
                               timeoutMs=timeout_ms, smartmodules=chain)
            self.check(r.result)
            return r.baseOffset
        return await self._with_leader(topic, partition, call, retries, write=True)

    async def offsets(self, topic: str, partition: int) -> tuple[int, int, int]:
        async def call(spu: ClientConnection) -> tuple[int, int, int]:
            r = await spu.call("offsets", self.timeout_s, topic=topic, partition=partition)
            self.check(r.result)
            return r.logStartOffset, r.highWatermark, r.logEndOffset
        return await self._with_leader(topic, partition, call, 10)

    async def offset_for_timestamp(self, topic: str, partition: int, timestamp: int) -> int:
        async def call(spu: ClientConnection) -> int:
            r = await spu.call("offsetForTimestamp", self.timeout_s, topic=topic, partition=partition,
                               timestamp=timestamp)
            self.check(r.result)
            return r.offset
        return await self._with_leader(topic, partition, call, 10)

    async def fetch(self, topic: str, partition: int, offset: int, max_bytes: int = 1 << 20,
                    committed: bool = True) -> Any:
        async def call(spu: ClientConnection) -> Any:
            r = await spu.call("fetch", self.timeout_s, topic=topic, partition=partition, offset=offset,
                               maxBytes=max_bytes, isolation=0 if committed else 1)
            self.check(r.result)
            return r
        return await self._with_leader(topic, partition, call, 5)

    async def partition_list(self, topic: str | None = None, *, limit: int | None = None,
                             topics: Collection[str] | None = None) -> list[dict[str, Any]]:
        """Every partition (of ``topic``): leader, replicas, in-sync set and epoch from the SC;
        high watermark, log start and end offsets and each follower's lag from its leader; and
        in ``replica_logs`` every replica's own log (start, end, bytes on disk, segments, how
        far the cleaner got) from the SPU that holds it. Every live SPU holding a replica is
        asked at once, each within :data:`PARTITION_STATUS_TIMEOUT_S`: one that does not answer
        leaves its replicas unknown (None) with the reason in their ``error``, never hangs the
        call. A leader that cannot be reached leaves the partition's offsets None and says why
        in ``error``. ``topics``: only partitions of these topics; ``limit``: only the first that
        many, in (topic, partition) order."""
        objs = await self.admin.list_objects("partition")
        # Parsing thousands of partition objects and building their rows is pure CPU (~30 ms
        # each per 2,000 partitions): in a worker thread, so that a node collecting a view for
        # its web console (the SC) never holds its event loop with it.
        parts = await asyncio.to_thread(_of_topic, objs, topic)
        if topics is not None:
            parts = [p for p in parts if p.spec.topic in topics]
        if limit is not None:
            parts = sorted(parts, key=lambda o: (o.spec.topic, o.spec.partition))[:limit]
        spus, alive = _spus(await self.admin.list_objects("spu"))
        held: dict[int, list[str]] = {}
        for p in parts:
            for r in p.spec.replicas:
                # The live SPUs, and a leader the SC has not yet seen die.
                if r in alive or r == p.status.leader:
                    held.setdefault(r, []).append(p.spec.name)
        gate = asyncio.Semaphore(PARTITION_STATUS_SPUS_IN_FLIGHT_MAX)
        answers = await asyncio.gather(*(self._replica_status(gate, s, spus.get(s), n) for s, n in held.items()))
        reports = dict(zip(held, answers))
        return await asyncio.to_thread(_partition_rows, parts, reports, alive)

    async def _replica_status(self, gate: asyncio.Semaphore, spu_id: int, address: str | None,
                              names: list[str]) -> dict[str, dict[str, Any]] | str:
        """SPU ``spu_id``'s ``partitionStatus`` of ``names`` (partition name -> its entry), or
        why it could not be had, within PARTITION_STATUS_TIMEOUT_S once ``gate`` lets it ask."""
        try:
            if address is None:
                raise ClusterUnavailableError(f"SPU {spu_id} is not registered")
            out: dict[str, dict[str, Any]] = {}
            async with gate, asyncio.timeout(min(PARTITION_STATUS_TIMEOUT_S, self.timeout_s)):
                conn = await self._connect(address)
                for i in range(0, len(names), PARTITION_STATUS_MAX):
                    r = await conn.call("partitionStatus", self.timeout_s,
                                        partitions=names[i:i + PARTITION_STATUS_MAX])
                    self.check(r.result)
                    text = r.statusJson
                    entries = await asyncio.to_thread(json.loads, text) if len(text) > 64 << 10 else json.loads(text)
                    if not isinstance(entries, list):
                        raise ValueError(f"partitionStatus answered {type(entries).__name__}, not a list")
                    out.update({d["partition"]: d for d in entries if isinstance(d, dict) and "partition" in d})
            return out
        except TimeoutError:
            self.drop_connection(address)
            return f"SPU {spu_id} did not answer within {min(PARTITION_STATUS_TIMEOUT_S, self.timeout_s):g} s"
        except (KolkError, *TRANSPORT_ERRORS, ValueError) as e:  # ValueError: an answer that is not JSON
            self.drop_connection(address)
            text = str(e).splitlines()[0] if str(e) else type(e).__name__
            return f"SPU {spu_id}: {text}"

    def producer(self, topic: str, **options: Any) -> AsyncProducer:
        return AsyncProducer(self, topic, **options)

    def consumer(self, topic: str, group: str | None = None, **options: Any) -> "AsyncConsumer | AsyncGroupConsumer":
        """A plain consumer; with ``group``, a member of that consumer group (group_consumer.py)."""
        if group is not None:
            member = AsyncGroupConsumer(self, topic, group=group, **options)
            self._members.add(member)
            return member
        return AsyncConsumer(self, topic, **options)

    # ---------------------------------------------------------------- admin

    async def create_topic(self, name: str, partitions: int = 1, replication_factor: int = 1,
                           config: dict[str, str] | None = None) -> dict[str, Any]:
        return await self.admin.create_topic(name, partitions, replication_factor, config)

    async def delete_topic(self, name: str) -> None:
        await self.admin.delete_topic(name)
        self.forget_leaders(name)

    async def list_topics(self) -> list[dict[str, Any]]:
        return await self.admin.list_topics()

    async def cluster_status(self) -> dict[str, Any]:
        return await self.admin.cluster_status()

    # Consumer groups for operators (core/client/groups_admin.py; docs/consumers.md "Operations").
    async def group_list(self) -> list[dict[str, Any]]:
        return await groups_admin.list_groups(self)

    async def group_describe(self, group: str) -> "groups_admin.GroupDescription":
        return await groups_admin.describe_group(self, group)

    async def group_reset(self, group: str, topic: str, target: "groups_admin.ResetTarget", partition: int | None = None,
                          *, dry_run: bool = False) -> "groups_admin.ResetPlan":
        return await groups_admin.reset_offsets(self, group, topic, target, partition, dry_run=dry_run)

    async def group_delete(self, group: str) -> None:
        await groups_admin.delete_group(self, group)

    async def close(self) -> None:
        """Close the group consumers still open (each commits and leaves the group, within its
        own deadline), then every connection."""
        members = list(self._members)
        if members:
            await asyncio.gather(*(m.close() for m in members), return_exceptions=True)
        for address in list(self._conns):
            self.drop_connection(address)
        await self.admin.close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class _LoopThread:
    """An event loop on a daemon thread (the synchronous facade's)."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="kolk-client", daemon=True)
        self._thread.start()
        self._ready.wait()

    def _run(self) -> None:
        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            self._ready.set()
            await self._stop.wait()
        asyncio.run(main())

    def call(self, coro: Awaitable[T], timeout: float | None = None) -> T:
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]

    def submit(self, coro: Awaitable[T]) -> Future[T]:
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop)  # type: ignore[arg-type]

    def stop(self) -> None:
        if self.loop is not None and self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(timeout=10)


class Producer:
    """Synchronous producer: ``send`` returns a ``concurrent.futures.Future`` of RecordMetadata."""

    def __init__(self, thread: _LoopThread, inner: AsyncProducer) -> None:
        self._t = thread
        self._p = inner

    def send(self, value: bytes | None, key: bytes | None = None, **kw: Any) -> Future[RecordMetadata]:
        async def go() -> Any:
            return await self._p.send(value, key, **kw)
        inner = self._t.call(go())
        out: Future[RecordMetadata] = Future()

        def done(f: asyncio.Future[int]) -> None:
            if f.exception() is not None:
                out.set_exception(f.exception())
            else:
                out.set_result(inner.result_now())
        assert self._t.loop is not None
        self._t.loop.call_soon_threadsafe(lambda: inner._batch_future.add_done_callback(done))
        return out

    def send_many(self, records: list[tuple[bytes | None, bytes | None]]) -> None:
        """Queue many ``(key, value)`` records in one hop to the client's thread."""
        async def go() -> None:
            for key, value in records:
                await self._p.send(value, key)
        self._t.call(go())

    def flush(self) -> None:
        self._t.call(self._p.flush())

    def close(self) -> None:
        self._t.call(self._p.close())


class Consumer:
    """Synchronous consumer: iterate for records, or ``poll(timeout)``; stops at the end when
    ``stop_at_end``. ``close()`` may be called from any thread: a read blocked elsewhere ends."""

    def __init__(self, thread: _LoopThread, inner: AsyncConsumer) -> None:
        self._t = thread
        self._c = inner
        self._it: Any = None

    def poll(self, timeout_s: float) -> list[ConsumerRecord]:
        """Records that arrived within ``timeout_s`` ([] if none)."""
        return self._t.call(self._c.poll(timeout_s), timeout_s + self._c.client.timeout_s)

    def batches(self) -> Iterator[list[ConsumerRecord]]:
        """Records as lists, one per push (AsyncConsumer.batches)."""
        return self._iterate(self._c.batches())

    def record_batches(self) -> Iterator[RecordBatch]:
        """Stored batches, undecoded (AsyncConsumer.record_batches): the fastest way to read."""
        return self._iterate(self._c.record_batches())

    def _iterate(self, gen: AsyncIterator[Any]) -> Iterator[Any]:
        while True:
            try:
                yield self._t.call(gen.__anext__())
            except StopAsyncIteration:
                return

    def __iter__(self) -> Iterator[ConsumerRecord]:
        for batch in self.batches():
            yield from batch

    def close(self) -> None:
        self._t.call(self._c.close(), CLOSE_TIMEOUT_S)


CLOSE_TIMEOUT_S = 10.0


class Client:
    """Synchronous entry point. ``with kolk.Client() as c: ...`` (the local cluster), or
    ``kolk.Client("host:9003", tls=TlsConfig(ca, cert, key))``; the options are AsyncClient's."""

    def __init__(self, sc: str | list[str] | None = None, *, timeout_s: float = 30.0,
                 tls: TlsConfig | None = None) -> None:
        sc, tls = _local_defaults(sc, tls)  # before the loop thread: a stopped local cluster leaks no thread
        self._t = _LoopThread()

        async def make() -> AsyncClient:
            return AsyncClient(sc, timeout_s=timeout_s, tls=tls)
        self._c = self._t.call(make())

    def producer(self, topic: str, **options: Any) -> Producer:
        async def make() -> AsyncProducer:
            return AsyncProducer(self._c, topic, **options)
        return Producer(self._t, self._t.call(make()))

    def consumer(self, topic: str, group: str | None = None, **options: Any) -> "Consumer | GroupConsumer":
        async def make() -> Any:
            return self._c.consumer(topic, group, **options)
        inner = self._t.call(make())
        return GroupConsumer(self._t, inner) if group is not None else Consumer(self._t, inner)

    def create_topic(self, name: str, partitions: int = 1, replication_factor: int = 1,
                     config: dict[str, str] | None = None) -> dict[str, Any]:
        return self._t.call(self._c.create_topic(name, partitions, replication_factor, config))

    def delete_topic(self, name: str) -> None:
        self._t.call(self._c.delete_topic(name))

    def list_topics(self) -> list[dict[str, Any]]:
        return self._t.call(self._c.list_topics())

    def cluster_status(self) -> dict[str, Any]:
        return self._t.call(self._c.cluster_status())

    def partition_list(self, topic: str | None = None) -> list[dict[str, Any]]:
        return self._t.call(self._c.partition_list(topic))

    def group_list(self) -> list[dict[str, Any]]:
        return self._t.call(self._c.group_list())

    def group_describe(self, group: str) -> "groups_admin.GroupDescription":
        return self._t.call(self._c.group_describe(group))

    def group_reset(self, group: str, topic: str, target: "groups_admin.ResetTarget", partition: int | None = None,
                    *, dry_run: bool = False) -> "groups_admin.ResetPlan":
        return self._t.call(self._c.group_reset(group, topic, target, partition, dry_run=dry_run))

    def group_delete(self, group: str) -> None:
        self._t.call(self._c.group_delete(group))

    def close(self) -> None:
        try:
            self._t.call(self._c.close(), timeout=10)
        finally:
            self._t.stop()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["AsyncClient", "Client", "Consumer", "ConsumerRecord", "Offset", "Producer", "RecordMetadata"]


def _partition_rows(parts: list[_Partition], reports: Any, alive: set[int]) -> list[dict[str, Any]]:
    """partition_list's rows, in (topic, partition) order (pure; run in a worker thread)."""
    return [partition_row(p.spec, p.status, reports, alive)
            for p in sorted(parts, key=lambda o: (o.spec.topic, o.spec.partition))]


def _of_topic(objs: list[dict[str, Any]], topic: str | None) -> list[_Partition]:
    """The partitions of ``topic`` (of every topic for None) among the SC's partition objects."""
    return [_Partition.of(o) for o in objs if topic is None or o.get("spec", {}).get("topic") == topic]
