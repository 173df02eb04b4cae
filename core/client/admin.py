"""The admin client: topics, SPUs, stored objects and cluster status, against any SC.

Asyncio first (:class:`AdminClient`); :func:`run` drives one coroutine for tools that are
not asynchronous (the CLI). A call goes to the SC it is connected to; when that SC cannot be
reached the client moves to the next address. Writes are retried only when they surely did
not happen (no leader yet, a request the SC refused unread, or a connection that failed before
the request was sent); reads are retried on every retriable error, with backoff, until the
deadline. When every address refuses connections for a moment, no cluster is running there,
and the client says so at once instead of retrying until the deadline.
"""

from __future__ import annotations

import asyncio
import errno
import inspect
import json
import logging
import random
import ssl
import weakref
from typing import Any, Awaitable, Callable, Mapping, Sequence, TypeVar

from ..protocol.node_auth import NodeCredential
from ..protocol.channel import CallRejected, ConnectionLost, StreamEnded
from ..protocol.channel_client import ClientConnection, ClientStream
from ..metadata.specs import PARTITIONS_MAX, SpecError, TopicSpec
from ..metadata.topic_config import check_value
from . import erasure as _erasure
from .erasure import Erasure
from ..protocol.errors import ClusterUnavailableError, InvalidRequestError, KolkError
from ..protocol.wire import error_from_struct, object_dict, transport_error
from ..security.tls import TlsConfig
from ..transport import SC, InvalidAddressError, connect, parse_address

T = TypeVar("T")
OnPush = Callable[[bool, int, list[dict[str, Any]]], Any]
Call = Callable[[ClientConnection, float], Awaitable[T]]

log = logging.getLogger("kolk.admin")

CONNECT_TIMEOUT_S = 3.0
RETRY_BACKOFF_MIN_S = 0.05
RETRY_BACKOFF_MAX_S = 1.0
# Every address refusing connections this long means no cluster runs there (an SC that is
# restarting listens again well within it); retries meanwhile are at most this far apart.
REFUSED_GIVE_UP_S = 1.5
REFUSED_BACKOFF_MAX_S = 0.25
# How long to wait for a TLS answer when finding out whether a server that dropped a plaintext
# connection speaks TLS (speaks_tls).
TLS_PROBE_TIMEOUT_S = 1.0
# Credit of a watch stream: pushes the SC may send before this client has taken them.
WATCH_WINDOW_BYTES = 4 << 20


VALUE_CHARS_SHOWN = 40  # a value quoted in an error is cut to this many characters


def _short(value: Any) -> str:
    text = repr(value) if not isinstance(value, (list, tuple)) else f"(a list of {len(value)})"
    return text if len(text) <= VALUE_CHARS_SHOWN else text[:VALUE_CHARS_SHOWN] + "..."


async def speaks_tls(address: str, timeout_s: float = TLS_PROBE_TIMEOUT_S) -> bool:
    """Whether ``address`` answers a TLS ClientHello with a TLS handshake record.

    Asked only after a plaintext connection closed before any answer: a TLS listener drops a
    plaintext client without sending anything, which looks like a server going away and
    would be retried until the deadline. No certificate is checked: nothing is sent after
    the hello, and the answer only decides which error to report."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    outgoing = ssl.MemoryBIO()
    hello = ctx.wrap_bio(ssl.MemoryBIO(), outgoing)
    try:
        hello.do_handshake()
    except ssl.SSLWantReadError:
        pass
    host, port = address.rsplit(":", 1)
    writer = None
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(host.strip("[]"), int(port))
            writer.write(outgoing.read())
            head = await reader.read(3)
    except (OSError, TimeoutError, ValueError):
        return False
    finally:
        if writer is not None:
            writer.close()
    # A TLS record header: content type 22 (handshake) or 21 (alert), then version 3.x.
    return len(head) >= 2 and head[0] in (21, 22) and head[1] == 3


def _raise_unless_ok(result: Any) -> None:
    if not result.ok:
        raise error_from_struct(result.error)


def _refused(e: ClusterUnavailableError) -> bool:
    """Whether connecting failed because nothing listens at the address (connection refused)."""
    cause = e.__cause__
    if isinstance(cause, ConnectionRefusedError):
        return True
    # A name with several addresses (localhost: ::1 and 127.0.0.1) fails as one OSError
    # listing each attempt's error.
    text = str(cause)
    return (isinstance(cause, OSError) and text.startswith("Multiple exceptions: ")
            and text.count(f"[Errno {errno.ECONNREFUSED}]") == text.count("[Errno "))


class _NothingListening(ClusterUnavailableError):
    """Every SC address refused the connection."""


class _Retry:
    """A failed try of a call that may be tried again: why it failed."""

    __slots__ = ("error",)

    def __init__(self, error: KolkError) -> None:
        self.error = error


LEARNED_ADDRESSES_MAX = 16  # SC addresses a client adds to its list from notLeader answers


def _sc_id(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value < 2**31:
        raise InvalidRequestError(f"SC id must be a positive whole number, got {value!r}")
    return value


class AdminClient:
    def __init__(self, addresses: list[str] | str, *, timeout_s: float = 15.0, tls: TlsConfig | None = None,
                 credential: NodeCredential | None = None) -> None:
        if isinstance(addresses, str):
            addresses = [a.strip() for a in addresses.split(",") if a.strip()]
        if not addresses:
            raise InvalidAddressError("at least one SC address (HOST:PORT) is needed")
        for address in addresses:
            parse_address(address)  # InvalidAddressError (one line) before any connection
        self.addresses = list(addresses)
        self.timeout_s = timeout_s
        self.tls = tls
        self.credential = credential  # a node's own client on a plaintext cluster (core/protocol/node_auth.py)
        self._index = 0
        self._conn: ClientConnection | None = None
        # Connections that have answered at least once: one of them closing is not a TLS refusal.
        self._answered: weakref.WeakSet[ClientConnection] = weakref.WeakSet()
        # Open watches per connection: a connection the client has moved away from stays open
        # until its last watch ends.
        self._watching: dict[ClientConnection, int] = {}

    # ---------------------------------------------------------------- connections

    async def _connect(self, budget_s: float) -> ClientConnection:
        """The connection calls go to: the current one, or the first address that answers."""
        if self._conn is not None and not self._conn.is_closed:
            return self._conn
        self._conn = None
        errors = []
        refused = 0
        for i in range(len(self.addresses)):
            index = (self._index + i) % len(self.addresses)
            try:
                conn = await connect(SC, self.addresses[index], self.tls, max(0.1, min(CONNECT_TIMEOUT_S, budget_s)),
                                     self.credential)
            except ClusterUnavailableError as e:
                if not e.retriable:
                    raise  # a TLS refusal: another SC would refuse the same way
                errors.append(str(e))
                refused += _refused(e)
                continue
            if self._conn is not None and not self._conn.is_closed:  # a concurrent call connected first
                conn.close()
                return self._conn
            self._index = index
            self._conn = conn
            return conn
        if refused == len(self.addresses):
            raise _NothingListening(f"no cluster is running at {', '.join(self.addresses)} (nothing is listening; "
                                    "start one with `kolk cluster start`)")
        raise ClusterUnavailableError("no SC could be reached: " + "; ".join(errors))

    def _drop(self, conn: ClientConnection, prefer: str | None = None) -> None:
        """Stop calling on ``conn``; the next call connects to ``prefer`` (the leader an SC
        named) or to the next address. Nothing to do when another call has moved on already."""
        if conn is not self._conn:
            return
        self._conn = None
        self._retire(conn)
        if prefer and prefer not in self.addresses and len(self.addresses) < LEARNED_ADDRESSES_MAX:
            self.addresses.append(prefer)  # a leader the bootstrap list lacks (an SC added since: docs/operations.md)
        if prefer and prefer in self.addresses:
            self._index = self.addresses.index(prefer)
        else:
            self._index = (self._index + 1) % len(self.addresses)

    def _retire(self, conn: ClientConnection) -> None:
        """Close a connection calls no longer use, unless a watch still streams on it."""
        if conn is not self._conn and not self._watching.get(conn):
            conn.close()

    def _watch_opened(self, conn: ClientConnection) -> None:
        self._watching[conn] = self._watching.get(conn, 0) + 1

    def _watch_ended(self, conn: ClientConnection) -> None:
        left = self._watching.get(conn, 1) - 1
        if left > 0:
            self._watching[conn] = left
        else:
            self._watching.pop(conn, None)
            self._retire(conn)

    # ---------------------------------------------------------------- calls

    async def _call(self, fn: Call[T], *, write: bool) -> T:
        """``fn(connection, seconds left)`` with reconnection, leader following and retries."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        backoff = RETRY_BACKOFF_MIN_S
        refused_since: float | None = None
        last: KolkError | None = None
        while (left := deadline - loop.time()) > 0:
            try:
                conn = await self._connect(left)
            except _NothingListening as e:
                refused_since = loop.time() if refused_since is None else refused_since
                if loop.time() - refused_since >= REFUSED_GIVE_UP_S:
                    raise
                last = e
            except ClusterUnavailableError as e:
                if not e.retriable:
                    raise  # a TLS refusal, a refused node credential: trying again cannot help
                refused_since, last = None, e
            else:
                refused_since = None
                outcome = await self._attempt(fn, conn, deadline, write)
                if not isinstance(outcome, _Retry):
                    return outcome
                last = outcome.error
            pause = backoff if refused_since is None else min(backoff, REFUSED_BACKOFF_MAX_S)
            await asyncio.sleep(min(pause * (0.5 + random.random()), max(0.0, deadline - loop.time())))
            backoff = min(backoff * 2, RETRY_BACKOFF_MAX_S)
        raise last if last is not None else ClusterUnavailableError("no answer in time")

    async def _attempt(self, fn: Call[T], conn: ClientConnection, deadline: float, write: bool) -> T | _Retry:
        """One try of ``fn`` on ``conn``: its value, a :class:`_Retry` with the error to retry
        on, or an exception raised when retrying cannot help or is not safe."""
        left = max(0.1, deadline - asyncio.get_running_loop().time())
        try:
            value = await fn(conn, left)
            self._answered.add(conn)
            return value
        except KolkError as e:
            self._answered.add(conn)
            if not e.retriable or (write and e.code not in ("noLeader", "notLeader")):
                raise
            if e.code == "notLeader":
                self._drop(conn, e.leader)
            return _Retry(e)
        except CallRejected as e:  # refused unread, so not applied: a write may be retried too
            err = transport_error(e, conn.address, write)
            if not err.retriable:
                raise err from None
            return _Retry(err)
        except ConnectionLost as e:
            self._drop(conn)
            if self.tls is None and conn not in self._answered and await speaks_tls(conn.address):
                # A TLS listener drops a plaintext client without a word; nothing was read.
                raise ClusterUnavailableError(
                    f"{conn.address} requires TLS and this client connected without it: give the CA and a client "
                    "certificate (kolk: --tls-ca, --tls-cert, --tls-key)", retriable=False) from None
            err = transport_error(e, conn.address, write)
            if write and e.sent:  # it may have been applied
                raise err from e
            return _Retry(err)
        except TimeoutError as e:
            self._drop(conn)
            raise transport_error(e, conn.address, write) from e

    async def _request(self, call_name: str, /, *, write: bool, **fields: Any) -> Any:
        """Call ``call_name`` (with retries); its response struct once ``result.ok``."""
        async def call(conn: ClientConnection, timeout_s: float) -> Any:
            # conn.call(name, ...) would take a request field called `name` for its own.
            env, member = conn.request(call_name)
            for field, value in fields.items():
                try:
                    setattr(member, field, value)
                except Exception as e:  # noqa: BLE001 - pycapnp raises KjException, OverflowError, TypeError
                    # Nothing was sent: a value the wire cannot carry is the caller's mistake.
                    raise InvalidRequestError(f"{call_name}: {field} {_short(value)} cannot be sent: "
                                              f"{str(e).splitlines()[-1][-120:] if str(e) else type(e).__name__}"
                                              ) from None
            r = await conn.send(env, timeout_s)
            _raise_unless_ok(r.result)
            return r
        return await self._call(call, write=write)

    async def close(self) -> None:
        """Close every connection of this client; its watches end."""
        conns = set(self._watching)
        if self._conn is not None:
            conns.add(self._conn)
        self._conn = None
        self._watching.clear()
        for conn in conns:
            conn.close()

    # ---------------------------------------------------------------- topics

    async def create_topic(self, name: str, partitions: int = 1, replication_factor: int = 1,
                           config: dict[str, str] | None = None) -> dict[str, Any]:
        """Create a topic. The spec is checked here first, against the limits the SC applies
        (metadata/specs.py): InvalidRequestError, and nothing sent, for a bad one."""
        try:
            TopicSpec(partitions, replication_factor, dict(config or {}))
        except SpecError as e:
            raise InvalidRequestError(f"topic {name}: {e.message}") from None
        r = await self._request("createTopic", write=True, name=name, partitions=partitions,
                                replicationFactor=replication_factor,
                                config=[{"key": k, "value": v} for k, v in (config or {}).items()])
        return object_dict(r.topic)

    async def delete_topic(self, name: str) -> None:
        await self._request("deleteTopic", write=True, name=name)

    async def alter_topic(self, name: str, set: Mapping[str, str] | None = None,  # noqa: A002 - the API's word
                          delete: list[str] | None = None, expected_version: int | None = None) -> dict[str, Any]:
        """Change a topic's config: ``set`` adds or replaces keys, ``delete`` removes them (back
        to the cluster default); compare-and-set on the topic's version when
        ``expected_version`` is given (VersionConflictError). Each key and value to set is
        checked here first, with the SC's message (InvalidRequestError, nothing sent); a key to
        delete is the SC's to judge (a topic stored before the config table may hold keys the
        table does not know, and deleting them repairs it). Returns the topic."""
        changes, removed = dict(set or {}), list(delete or [])
        try:
            for key in sorted(changes):
                check_value(key, changes[key])
        except SpecError as e:
            raise InvalidRequestError(f"topic {name}: {e.message}") from None
        r = await self._request("alterTopic", write=True, name=name,
                                set=[{"key": k, "value": v} for k, v in changes.items()], delete=removed,
                                hasExpected=expected_version is not None,
                                expectedVersion=expected_version if expected_version is not None else 0)
        return object_dict(r.topic)

    async def add_partitions(self, name: str, count: int, expected_version: int | None = None) -> dict[str, Any]:
        """Grow a topic to ``count`` partitions (never shrinks); the new ones are placed as a
        new topic's are. Keys hash to other partitions afterwards (docs/metadata.md)."""
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= PARTITIONS_MAX:
            raise InvalidRequestError(f"topic {name}: partitions must be 1-{PARTITIONS_MAX}, got {_short(count)}")
        r = await self._request("addPartitions", write=True, name=name, count=count,
                                hasExpected=expected_version is not None,
                                expectedVersion=expected_version if expected_version is not None else 0)
        return object_dict(r.topic)

    async def erase_key(self, topic: str, key: bytes, *, partitions: Sequence[int] | None = None, wait: bool = True,
                        timeout_s: float = 300.0, progress: Callable[[Erasure], Any] | None = None) -> list[Erasure]:
        """Erase every record of ``key`` from a compacted topic (docs/lifecycle.md), in each of
        ``partitions`` (default: every partition: keys move when partitions are added, and a
        producer may have chosen the partition itself). Per partition it writes the tombstone
        (acks=all) and asks the SC for an erasure (which sees only the key's sha256); with
        ``wait`` it polls until every replica of every one is done, calling ``progress`` on each
        change. Returns the erasures (their ``name`` to poll)."""
        return await _erasure.erase_key(self, topic, key, partitions=partitions, wait=wait, timeout_s=timeout_s,
                                        progress=progress)

    async def erasure_status(self, name: str) -> Erasure:
        """The erasure ``name`` (``TOPIC-PARTITION@OFFSET``); NotFoundError when unknown."""
        return await _erasure.erasure_status(self, name)

    async def list_objects(self, kind: str, *, stale: bool = False) -> list[dict[str, Any]]:
        r = await self._request("listObjects", write=False, kind=kind, stale=stale)
        return [object_dict(o) for o in r.objects]

    async def get_object(self, kind: str, name: str, *, stale: bool = False) -> dict[str, Any] | None:
        r = await self._request("getObject", write=False, kind=kind, name=name, stale=stale)
        return object_dict(r.object) if r.found else None

    async def list_topics(self, *, stale: bool = False) -> list[dict[str, Any]]:
        return await self.list_objects("topic", stale=stale)

    async def describe_topic(self, name: str) -> dict[str, Any]:
        from ..protocol.errors import NotFoundError

        topic = await self.get_object("topic", name)
        if topic is None:
            raise NotFoundError(f"topic {name} does not exist")
        parts = [p for p in await self.list_objects("partition", stale=True) if p["spec"]["topic"] == name]
        topic["partitions"] = sorted(parts, key=lambda p: p["spec"]["partition"])
        return topic

    # ---------------------------------------------------------------- objects and SPUs

    async def put_object(self, kind: str, name: str, spec: dict[str, Any],
                         expected_version: int | None = None, *, allow_lockout: bool = False) -> int:
        """Store an object; ``allow_lockout``: store a policy under which this identity loses
        admin on cluster (the SC refuses it otherwise; docs/policy.md)."""
        r = await self._request("putObject", write=True, kind=kind, name=name, specJson=json.dumps(spec),
                                hasExpected=expected_version is not None,
                                expectedVersion=expected_version if expected_version is not None else 0,
                                allowLockout=allow_lockout)
        return int(r.version)

    async def delete_object(self, kind: str, name: str, expected_version: int | None = None) -> None:
        await self._request("deleteObject", write=True, kind=kind, name=name,
                            hasExpected=expected_version is not None,
                            expectedVersion=expected_version if expected_version is not None else 0)

    async def register_spu(self, spu_id: int, public_address: str, private_address: str | None = None,
                           rack: str | None = None, storage_id: str = "",
                           lost: Mapping[str, str] | None = None) -> int:
        """Register an SPU with its data directory's storage id and the replicas it found short
        of their high watermark (``lost``: partition -> reason); returns the metadata version
        that holds the registration."""
        r = await self._request("registerSpu", write=True, id=spu_id, rack=rack or "", publicAddress=public_address,
                                privateAddress=private_address or public_address, storageId=storage_id,
                                lost=[{"partition": p, "reason": why} for p, why in sorted((lost or {}).items())])
        return int(r.version)

    async def report_replica_loss(self, partition: str, spu_id: int, reason: str, epoch: int | None = None,
                                  keep_last_in_sync: bool = False) -> None:
        """Node-only: ``spu_id``'s replica of ``partition`` lost data, or its disk failed; it
        leaves the in-sync set (``keep_last_in_sync``: unless it is the last member)."""
        await self._request("reportReplicaLoss", write=True, partition=partition, spuId=spu_id, reason=reason,
                            epoch=-1 if epoch is None else epoch, keepLastInSync=keep_last_in_sync)

    async def elect_leader(self, partition: str, leader: int | None = None, unclean: bool = False) -> tuple[int, int]:
        """Elect a leader of ``partition`` now; returns (leader, epoch). ``unclean`` gives up
        what only the in-sync replicas had (docs/replication.md)."""
        r = await self._request("electLeader", write=True, partition=partition,
                                leader=-1 if leader is None else leader, unclean=unclean)
        return int(r.leader), int(r.epoch)

    async def rebalance(self, execute: bool = False, throttle: int | None = None,
                        cancel: bool = False) -> dict[str, Any]:
        """The rebalance plan (docs/rebalance.md): {"moves": [{partition, from, to}], "started",
        "refused", "moving"}; ``execute`` starts its moves, each copying at ``throttle`` bytes/s
        (None: the SC's default, 10 MiB/s). ``cancel``: cancel every move in progress instead
        ("started" lists the cancelled partitions)."""
        if throttle is not None and (isinstance(throttle, bool) or not isinstance(throttle, int) or throttle <= 0):
            raise InvalidRequestError(f"rebalance: throttle must be a positive number of bytes/s, got {throttle!r}")
        r = await self._request("rebalance", write=True, execute=execute, throttleBytesPerSec=throttle or 0,
                                cancel=cancel)
        return json.loads(r.planJson)  # type: ignore[no-any-return]

    async def drain_spu(self, spu_id: int, undo: bool = False) -> dict[str, Any]:
        """Mark SPU ``spu_id`` draining (``undo``: no longer); returns the plan that empties
        it, as :meth:`rebalance` (not started: run ``rebalance(execute=True)``)."""
        r = await self._request("drainSpu", write=True, spu=spu_id, undo=undo)
        return json.loads(r.planJson)  # type: ignore[no-any-return]

    async def add_sc(self, sc_id: int, raft: str, admin: str) -> list[dict[str, Any]]:
        """Make SC ``sc_id`` (started with ``kolk sc --join``) a member of the SC group, at Raft
        address ``raft`` and admin address ``admin``; returns the members after it, [{id, raft,
        admin}] (docs/operations.md "Adding and removing SCs")."""
        r = await self._request("addSc", write=True, id=_sc_id(sc_id), raft=raft, admin=admin)
        return json.loads(r.membersJson)  # type: ignore[no-any-return]

    async def remove_sc(self, sc_id: int) -> list[dict[str, Any]]:
        """Remove SC ``sc_id`` from the SC group; returns the members after it."""
        r = await self._request("removeSc", write=True, id=_sc_id(sc_id))
        return json.loads(r.membersJson)  # type: ignore[no-any-return]

    async def unregister_spu(self, spu_id: int) -> None:
        await self._request("unregisterSpu", write=True, id=spu_id)

    async def erasure_done(self, name: str, spu_id: int, found: bool, note: str = "") -> None:
        """Node only: SPU ``spu_id`` holds no record of erasure ``name``'s key any more;
        ``found``: it held one besides the tombstone before; ``note`` (the leader): the
        erasure cannot be carried out as asked (it ends at once, nothing erased)."""
        await self._request("erasureDone", write=True, name=name, spuId=spu_id, found=found, note=note)

    async def heartbeat(self, spu_id: int, leaving: bool = False) -> None:
        """An SPU's liveness signal; follows the SC leader. ``leaving``: the SPU is stopping
        (controlled shutdown): the SC moves its leaderships away (docs/operations.md)."""
        await self._request("heartbeat", write=True, spuId=spu_id, leaving=leaving)

    async def update_isr(self, partition: str, isr: list[int], epoch: int, leader: int,
                         based_on: list[int] | None = None) -> None:
        """A partition leader asks to change the in-sync set (committed through Raft), from the
        set ``based_on`` (refused with VersionConflictError if that set has changed)."""
        await self._request("updateIsr", write=True, partition=partition, isr=list(isr), epoch=epoch, leader=leader,
                            basedOn=list(based_on or []))

    async def allocate_producer_ids(self, count: int = 1) -> int:
        """The first of ``count`` fresh producer ids, for idempotent producers."""
        r = await self._request("allocateProducerIds", write=True, count=count)
        return int(r.firstId)

    async def cluster_status(self) -> dict[str, Any]:
        """The answering SC's view of the cluster (any SC answers, leader or not)."""
        r = await self._request("clusterStatus", write=False)
        return json.loads(r.statusJson)  # type: ignore[no-any-return]


# ---------------------------------------------------------------- watch


def _event_dict(e: Any) -> dict[str, Any]:
    return {"version": e.version, "kind": e.kind, "name": e.name, "deleted": e.deleted,
            "object": None if e.deleted else object_dict(e.object)}


class WatchHandle:
    """One metadata watch: a task hands its pushes to ``on_push`` one at a time, in order,
    until :meth:`cancel`, the SC ends the stream, or the connection is lost (then ``error``
    says why, and :meth:`wait` returns)."""

    def __init__(self, client: AdminClient, conn: ClientConnection, stream: ClientStream, on_push: OnPush) -> None:
        self._client = client
        self._conn = conn
        self._stream = stream
        self._cancelled = False
        self.error: KolkError | None = None
        client._watch_opened(conn)
        self._task = asyncio.get_running_loop().create_task(self._deliver(on_push))
        # A callback, not a finally: it runs even when the task is cancelled before it starts.
        self._task.add_done_callback(self._ended)

    async def _deliver(self, on_push: OnPush) -> None:
        try:
            while True:
                push = await self._stream.next()
                result = on_push(bool(push.fullSync), int(push.version), [_event_dict(e) for e in push.events])
                if inspect.isawaitable(result):
                    await result
        except (StreamEnded, ConnectionLost) as e:
            if not self._cancelled:
                self.error = transport_error(e, self._conn.address)
        except Exception as e:  # noqa: BLE001 - a bad push or a failing on_push ends this watch, and says so
            log.exception("a metadata watch from %s failed; it ends", self._conn.address)
            self.error = KolkError(f"the watch from {self._conn.address} ended: {e}")

    def _ended(self, task: asyncio.Task[None]) -> None:
        self._stream.close()
        self._client._watch_ended(self._conn)

    def done(self) -> bool:
        """Whether the watch has ended (cancelled, ended by the SC, or its connection lost)."""
        return self._task.done()

    async def wait(self) -> KolkError | None:
        """Wait until the watch ends; why it did (None when cancelled)."""
        await asyncio.wait({self._task})
        return self.error

    def cancel(self) -> asyncio.Future[KolkError | None]:
        """Stop the stream (the SC frees the watcher's slot) and its pushes; no ``on_push``
        starts after this. Safe to call more than once; await the result to wait until a
        running ``on_push`` has finished."""
        self._cancelled = True
        self._stream.close()
        self._task.cancel()
        return asyncio.ensure_future(self.wait())


async def watch(client: AdminClient, from_version: int, on_push: OnPush) -> WatchHandle:
    """Subscribe to metadata changes after ``from_version``. ``on_push(full_sync, version,
    events)`` runs for each push (a full sync lists every object), and is awaited when it
    returns an awaitable. Returns a handle whose ``cancel()`` ends the stream."""
    async def open_watch(conn: ClientConnection, timeout_s: float) -> WatchHandle:
        resp, stream = await conn.open_stream("watch", WATCH_WINDOW_BYTES, timeout_s, fromVersion=from_version)
        _raise_unless_ok(resp.result)
        return WatchHandle(client, conn, stream, on_push)
    return await client._call(open_watch, write=False)


def run(coro_fn: Callable[[], Awaitable[T]]) -> T:
    """Run one coroutine on a fresh event loop (for callers that are not asynchronous)."""
    async def main() -> T:
        return await coro_fn()
    return asyncio.run(main())
