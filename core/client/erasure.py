"""Erasing one key's records from a compacted topic (docs/lifecycle.md): the client side of
``AdminClient.erase_key`` and ``erasure_status``.

The key never leaves this process except inside the tombstone written to the topic: the SC
sees only its sha256. Steps: check the topic is compacted (the same message the SC gives);
in each partition asked (by default every one: keys move when partitions are added, and a
producer may pick partitions itself) write the tombstone (the key with a null value) with
``acks=all`` and ask the SC for an erasure with the tombstone's offset; then (``wait``) poll
the ``erasure`` objects until every replica of each is done.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

from ..metadata.objects import partition_name
from ..metadata.specs import SpecError
from ..metadata.topic_config import DEFAULTS_NAME, resolve
from ..protocol.errors import InvalidRequestError, KolkError, NotFoundError
from ..protocol.wire import object_dict

if TYPE_CHECKING:
    from .admin import AdminClient

POLL_INTERVAL_S = 0.2  # how often a waiting erase reads the erasure object
KEY_BYTES_MAX = 1 << 20  # a record key larger than this is not one a producer could have sent


@dataclass(frozen=True)
class Erasure:
    """An ``erasure`` object, typed; ``replicas``: the partition's current replicas (empty when
    the partition is gone), so that progress reads "1 of 3 replicas done"."""

    name: str
    topic: str
    partition: int
    key_sha256: str
    offset: int
    requested_by: str
    state: str
    done: tuple[int, ...]
    created_ms: int
    completed_ms: int | None
    note: str | None
    replicas: tuple[int, ...] = ()
    version: int = 0
    found: bool = False  # a replica held a record of the key besides the tombstone

    @staticmethod
    def from_object(obj: dict[str, Any], replicas: tuple[int, ...] = ()) -> "Erasure":
        spec, status = obj["spec"], obj["status"]
        return Erasure(obj["name"], spec["topic"], int(spec["partition"]), spec["key_sha256"], int(spec["offset"]),
                       spec.get("requested_by", ""), status.get("state", "pending"),
                       tuple(int(s) for s in status.get("done", [])), int(status.get("created_ms", 0)),
                       status.get("completed_ms"), status.get("note"), replicas, int(obj.get("version", 0)),
                       bool(status.get("found", False)))

    @property
    def finished(self) -> bool:
        return self.state == "done"

    def progress_line(self) -> str:
        total = len(self.replicas) or len(self.done)
        return (f"erasing key (sha256 {self.key_sha256[:4]}…) from {partition_name(self.topic, self.partition)}: "
                f"{len([s for s in self.done if not self.replicas or s in self.replicas])} of {total} replicas done")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "topic": self.topic, "partition": self.partition, "key_sha256": self.key_sha256,
                "offset": self.offset, "requested_by": self.requested_by, "state": self.state,
                "done": list(self.done), "replicas": list(self.replicas), "created_ms": self.created_ms,
                "completed_ms": self.completed_ms, "note": self.note, "found": self.found}


async def _replicas(admin: "AdminClient", topic: str, partition: int) -> tuple[int, ...]:
    p = await admin.get_object("partition", partition_name(topic, partition), stale=True)
    return tuple(p["spec"]["replicas"]) if p is not None else ()


async def erasure_status(admin: "AdminClient", name: str) -> Erasure:
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,200}-\d{1,4}@\d{1,19}", name or ""):
        raise InvalidRequestError(f"{name[:100]!r} is not an erasure id: ids look like TOPIC-PARTITION@OFFSET "
                                  "(kolk topic erase prints them)")
    obj = await admin.get_object("erasure", name)
    if obj is None:
        raise NotFoundError(f"erasure {name} does not exist (a deleted topic's erasures go with it)")
    return Erasure.from_object(obj, await _replicas(admin, obj["spec"]["topic"], int(obj["spec"]["partition"])))


async def check_erasable(admin: "AdminClient", topic: str) -> int:
    """The topic's partition count, after checking it takes erasures (what the SC checks too)."""
    t = await admin.get_object("topic", topic)
    if t is None:
        raise NotFoundError(f"topic {topic} does not exist")
    defaults = await admin.get_object("config", DEFAULTS_NAME)
    try:
        config = resolve(t["spec"].get("config", {}), defaults["spec"] if defaults else {},
                         t["spec"]["replication_factor"])
    except SpecError as e:
        raise InvalidRequestError(f"topic {topic}: {e.message}") from None
    if not config.compacted:
        raise InvalidRequestError(f"topic {topic}: erase needs cleanup_policy compact or compact,delete; it has "
                                  f"{config.cleanup_policy}")
    return int(t["spec"]["partitions"])


def _check_request(key: Any, timeout_s: float) -> None:
    if not isinstance(key, (bytes, bytearray)) or not key:
        raise InvalidRequestError("the key to erase must be non-empty")
    if len(key) > KEY_BYTES_MAX:
        raise InvalidRequestError(f"the key to erase has {len(key)} bytes, more than {KEY_BYTES_MAX}")
    if not timeout_s > 0:
        raise InvalidRequestError(f"the erase timeout must be positive, got {timeout_s}")


async def _start(admin: "AdminClient", data: Any, topic: str, key: bytes, partition: int) -> Erasure:
    """Write the tombstone to ``partition`` (acks=all) and ask the SC for the erasure."""
    producer = data.producer(topic, acks="all", linger_ms=0)
    try:
        offset = (await (await producer.send(None, key=key, partition=partition))).offset
    finally:
        await producer.close()
    r = await admin._request("eraseKey", write=True, topic=topic, partition=partition,
                             keySha256=hashlib.sha256(key).hexdigest(), offset=offset)
    return Erasure.from_object(object_dict(r.erasure), await _replicas(admin, topic, partition))


async def _wait(admin: "AdminClient", erasure: Erasure, deadline: float, timeout_s: float,
                progress: Callable[[Erasure], Any] | None) -> Erasure:
    """Poll ``erasure`` until it is done (or the deadline: a timeout error naming how far it got)."""
    loop = asyncio.get_running_loop()
    while not erasure.finished:
        if loop.time() >= deadline:
            raise KolkError(f"erasure {erasure.name} is not done after {timeout_s:g} s: "
                            f"{erasure.progress_line()}; follow it with `kolk topic erase-status "
                            f"{erasure.name}`", code="timeout")
        await asyncio.sleep(min(POLL_INTERVAL_S, max(0.0, deadline - loop.time())))  # polling period
        try:
            latest = await erasure_status(admin, erasure.name)
        except NotFoundError:
            raise NotFoundError(f"erasure {erasure.name} ended: topic {erasure.topic} was deleted, with every "
                                "record of the key") from None
        if (latest.done, latest.state, latest.replicas) != (erasure.done, erasure.state, erasure.replicas):
            if progress is not None:
                progress(latest)
        erasure = latest
    return erasure


async def erase_key(admin: "AdminClient", topic: str, key: bytes, *, partitions: Sequence[int] | None, wait: bool,
                    timeout_s: float, progress: Callable[[Erasure], Any] | None) -> list[Erasure]:
    """Erase ``key`` from each of ``partitions`` (None: every partition of the topic), one
    erasure per partition; with ``wait``, until every one is done."""
    _check_request(key, timeout_s)
    key = bytes(key)
    count = await check_erasable(admin, topic)
    wanted = list(range(count)) if partitions is None else list(dict.fromkeys(partitions))
    for p in wanted:
        if isinstance(p, bool) or not isinstance(p, int) or not 0 <= p < count:
            raise InvalidRequestError(f"topic {topic} has partitions 0-{count - 1}, not {p!r}")
    if not wanted:
        raise InvalidRequestError("no partition to erase the key from was given")
    from .client import AsyncClient  # the data client imports this module's package

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    data = AsyncClient(admin.addresses, timeout_s=admin.timeout_s, tls=admin.tls, credential=admin.credential)
    erasures = []
    try:
        for p in wanted:
            erasure = await _start(admin, data, topic, key, p)
            if progress is not None:
                progress(erasure)
            erasures.append(erasure)
    finally:
        await data.close()
    if not wait:
        return erasures
    return [await _wait(admin, e, deadline, timeout_s, progress) for e in erasures]
