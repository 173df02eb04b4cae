"""The admin client: topics, SPUs, stored objects and cluster status, against any SC.

Asyncio first (:class:`AdminClient`); :func:`run` drives one coroutine for tools that are
not asynchronous (the CLI). A call goes to the SC it is connected to; when that SC cannot be
reached the client moves to the next address. Writes are retried only when they surely did
not happen (no leader yet, or the connection failed before the request was sent); reads are
retried on every retriable error, with backoff, until the deadline.
"""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any, Awaitable, Callable, Mapping, TypeVar

import capnp

from .errors import ClusterUnavailableError, KolkError, error_from_wire
from .security.tls import TlsConfig
from .transport import abort_tls, connect
from .wire import error_dict, object_dict, schema

T = TypeVar("T")

CONNECT_TIMEOUT_S = 3.0
RETRY_BACKOFF_MIN_S = 0.05
RETRY_BACKOFF_MAX_S = 1.0


def _raise_unless_ok(result: Any) -> None:
    if not result.ok:
        e = error_dict(result)
        raise error_from_wire(e["code"], e["message"], e["leader"], e["retriable"])


class AdminClient:
    def __init__(self, addresses: list[str] | str, *, timeout_s: float = 15.0, tls: TlsConfig | None = None) -> None:
        if isinstance(addresses, str):
            addresses = [a for a in addresses.split(",") if a]
        if not addresses:
            raise ValueError("at least one SC address (host:port) is needed")
        self.addresses = list(addresses)
        self.timeout_s = timeout_s
        self.tls = tls
        self._index = 0
        self._client: Any = None
        self._admin: Any = None

    async def _connect(self) -> Any:
        if self._admin is not None:
            return self._admin
        errors = []
        for i in range(len(self.addresses)):
            addr = self.addresses[(self._index + i) % len(self.addresses)]
            try:
                stream = await connect(addr, self.tls, CONNECT_TIMEOUT_S)
            except ClusterUnavailableError as e:
                if not e.retriable:
                    raise  # a TLS refusal: another SC would refuse the same way
                errors.append(str(e))
                continue
            self._index = (self._index + i) % len(self.addresses)
            self._client = capnp.TwoPartyClient(stream)
            self._admin = self._client.bootstrap().cast_as(schema.ScAdmin)
            return self._admin
        raise ClusterUnavailableError("no SC could be reached: " + "; ".join(errors))

    def _drop(self, prefer: str | None = None) -> None:
        self._admin = None
        self._client = None
        if prefer and prefer in self.addresses:
            self._index = self.addresses.index(prefer)
        else:
            self._index = (self._index + 1) % len(self.addresses)

    async def _call(self, fn: Callable[[Any], Awaitable[T]], *, write: bool) -> T:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        backoff = RETRY_BACKOFF_MIN_S
        last: Exception | None = None
        while loop.time() < deadline:
            try:
                admin = await self._connect()
            except ClusterUnavailableError as e:
                last = e
            else:
                try:
                    return await asyncio.wait_for(fn(admin), max(0.1, deadline - loop.time()))
                except KolkError as e:
                    last = e
                    if not e.retriable or (write and e.code not in ("noLeader", "notLeader")):
                        raise
                    if e.code == "notLeader":
                        self._drop(e.leader)
                except capnp.KjException as e:
                    last = ClusterUnavailableError(f"connection to {self.addresses[self._index]} failed: "
                                                   f"{str(e).splitlines()[0]}")
                    self._drop()
                    if write:
                        raise ClusterUnavailableError(
                            f"the connection failed during a write; it may or may not have been applied ({e})",
                            retriable=True) from e
                except asyncio.TimeoutError as e:
                    self._drop()
                    raise ClusterUnavailableError(f"no answer within {self.timeout_s} s", retriable=True) from e
            await asyncio.sleep(backoff * (0.5 + random.random()))  # backoff between retries
            backoff = min(backoff * 2, RETRY_BACKOFF_MAX_S)
        raise last if last is not None else ClusterUnavailableError("no answer in time")

    async def close(self) -> None:
        self._admin = None
        self._client = None

    # ---------------------------------------------------------------- topics

    async def create_topic(self, name: str, partitions: int = 1, replication_factor: int = 1,
                           config: dict[str, str] | None = None) -> dict[str, Any]:
        async def call(a: Any) -> dict[str, Any]:
            r = await a.createTopic(name, partitions, replication_factor,
                                    [{"key": k, "value": v} for k, v in (config or {}).items()])
            _raise_unless_ok(r.result)
            return object_dict(r.topic)
        return await self._call(call, write=True)

    async def delete_topic(self, name: str) -> None:
        async def call(a: Any) -> None:
            _raise_unless_ok((await a.deleteTopic(name)).result)
        await self._call(call, write=True)

    async def list_objects(self, kind: str, *, stale: bool = False) -> list[dict[str, Any]]:
        async def call(a: Any) -> list[dict[str, Any]]:
            r = await a.listObjects(kind, stale)
            _raise_unless_ok(r.result)
            return [object_dict(o) for o in r.objects]
        return await self._call(call, write=False)

    async def get_object(self, kind: str, name: str, *, stale: bool = False) -> dict[str, Any] | None:
        async def call(a: Any) -> dict[str, Any] | None:
            r = await a.getObject(kind, name, stale)
            _raise_unless_ok(r.result)
            return object_dict(r.object) if r.found else None
        return await self._call(call, write=False)

    async def list_topics(self, *, stale: bool = False) -> list[dict[str, Any]]:
        return await self.list_objects("topic", stale=stale)

    async def describe_topic(self, name: str) -> dict[str, Any]:
        from .errors import NotFoundError

        topic = await self.get_object("topic", name)
        if topic is None:
            raise NotFoundError(f"topic {name} does not exist")
        parts = [p for p in await self.list_objects("partition", stale=True) if p["spec"]["topic"] == name]
        topic["partitions"] = sorted(parts, key=lambda p: p["spec"]["partition"])
        return topic

    # ---------------------------------------------------------------- objects and SPUs

    async def put_object(self, kind: str, name: str, spec: dict[str, Any],
                         expected_version: int | None = None) -> int:
        async def call(a: Any) -> int:
            r = await a.putObject(kind, name, json.dumps(spec), expected_version is not None,
                                  expected_version if expected_version is not None else 0)
            _raise_unless_ok(r.result)
            return r.version
        return await self._call(call, write=True)

    async def delete_object(self, kind: str, name: str, expected_version: int | None = None) -> None:
        async def call(a: Any) -> None:
            r = await a.deleteObject(kind, name, expected_version is not None,
                                     expected_version if expected_version is not None else 0)
            _raise_unless_ok(r.result)
        await self._call(call, write=True)

    async def register_spu(self, spu_id: int, public_address: str, private_address: str | None = None,
                           rack: str | None = None, storage_id: str = "",
                           lost: Mapping[str, str] | None = None) -> int:
        """Register an SPU with its data directory's storage id and the replicas it found short
        of their high watermark (``lost``: partition -> reason); returns the metadata version
        that holds the registration."""
        entries = sorted((lost or {}).items())

        async def call(a: Any) -> int:
            req = a.registerSpu_request()
            req.id = spu_id
            req.rack = rack or ""
            req.publicAddress = public_address
            req.privateAddress = private_address or public_address
            req.storageId = storage_id
            out = req.init("lost", len(entries))
            for i, (name, reason) in enumerate(entries):
                out[i].partition = name
                out[i].reason = reason
            r = await req.send()
            _raise_unless_ok(r.result)
            return int(r.version)
        return await self._call(call, write=True)

    async def report_replica_loss(self, partition: str, spu_id: int, reason: str, epoch: int | None = None,
                                  keep_last_in_sync: bool = False) -> None:
        """Node-only: ``spu_id``'s replica of ``partition`` lost data, or its disk failed; it
        leaves the in-sync set (``keep_last_in_sync``: unless it is the last member)."""
        async def call(a: Any) -> None:
            _raise_unless_ok((await a.reportReplicaLoss(partition, spu_id, reason, -1 if epoch is None else epoch,
                                                        keep_last_in_sync)).result)
        await self._call(call, write=True)

    async def elect_leader(self, partition: str, leader: int | None = None, unclean: bool = False) -> tuple[int, int]:
        """Elect a leader of ``partition`` now; returns (leader, epoch). ``unclean`` gives up
        what only the in-sync replicas had (docs/replication.md)."""
        async def call(a: Any) -> tuple[int, int]:
            r = await a.electLeader(partition, -1 if leader is None else leader, unclean)
            _raise_unless_ok(r.result)
            return int(r.leader), int(r.epoch)
        return await self._call(call, write=True)

    async def unregister_spu(self, spu_id: int) -> None:
        async def call(a: Any) -> None:
            _raise_unless_ok((await a.unregisterSpu(spu_id)).result)
        await self._call(call, write=True)

    async def heartbeat(self, spu_id: int) -> None:
        """An SPU's liveness signal; follows the SC leader."""
        async def call(a: Any) -> None:
            _raise_unless_ok((await a.heartbeat(spu_id)).result)
        await self._call(call, write=True)

    async def update_isr(self, partition: str, isr: list[int], epoch: int, leader: int,
                         based_on: list[int] | None = None) -> None:
        """A partition leader asks to change the in-sync set (committed through Raft), from the
        set ``based_on`` (refused with VersionConflictError if that set has changed)."""
        async def call(a: Any) -> None:
            _raise_unless_ok((await a.updateIsr(partition, isr, epoch, leader, based_on or [])).result)
        await self._call(call, write=True)

    async def allocate_producer_ids(self, count: int = 1) -> int:
        """The first of ``count`` fresh producer ids, for idempotent producers."""
        async def call(a: Any) -> int:
            r = await a.allocateProducerIds(count)
            _raise_unless_ok(r.result)
            return int(r.firstId)
        return await self._call(call, write=True)

    async def cluster_status(self) -> dict[str, Any]:
        async def call(a: Any) -> dict[str, Any]:
            r = await a.clusterStatus()
            _raise_unless_ok(r.result)
            return json.loads(r.statusJson)
        return await self._call(call, write=False)


class _Watcher(schema.Watcher.Server):
    def __init__(self, on_push: Callable[[bool, int, list[dict[str, Any]]], Any]) -> None:
        self._on_push = on_push

    async def push(self, fullSync, version, events, _context, **kwargs):  # noqa: N803, ANN001
        items = [{"version": e.version, "kind": e.kind, "name": e.name, "deleted": e.deleted,
                  "object": None if e.deleted else object_dict(e.object)} for e in events]
        result = self._on_push(bool(fullSync), int(version), items)
        if asyncio.iscoroutine(result):
            await result


async def watch(client: AdminClient, from_version: int,
                on_push: Callable[[bool, int, list[dict[str, Any]]], Any]) -> Any:
    """Subscribe to metadata changes after ``from_version``. ``on_push(full_sync, version,
    events)`` runs for each push (a full sync lists every object). Returns a handle whose
    ``cancel()`` ends the stream."""
    admin = await client._connect()
    r = await admin.watch(from_version, _Watcher(on_push))
    _raise_unless_ok(r.result)
    return r.handle


def run(coro_fn: Callable[[], Awaitable[T]]) -> T:
    """Run one coroutine with pycapnp's event loop integration (for sync callers)."""
    async def main() -> T:
        try:
            return await coro_fn()
        finally:
            abort_tls()  # before pycapnp's teardown closes them (core/transport.py)
    return asyncio.run(capnp.run(main()))
