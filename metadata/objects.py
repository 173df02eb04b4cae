"""Cluster objects and the state they form. Plain, immutable values; JSON on the wire.

Every object has a kind, a name, a ``spec`` (what the user wants), a ``status`` (what the
cluster observed) and a ``version``: the state version of the command that last changed it.
The state version grows by one for every command that changes something, so "everything
after version V" is a well-defined delta for watchers.

Kinds and their fields (``docs/metadata.md`` is the reference; ``specs.py`` has them as typed
values, with every field check):

* ``topic``: spec ``partitions``, ``replication_factor``, ``config`` (string map);
  status ``state`` (``ready``).
* ``partition`` (named ``<topic>-<n>``): spec ``topic``, ``partition``, ``replicas`` (SPU ids,
  the first is the preferred leader); status ``leader`` (SPU id or None), ``epoch``, ``isr``.
* ``spu`` (named by its decimal id): spec ``id``, ``rack``, ``public_address``,
  ``private_address``; status ``alive``, ``changed_ms``.
* topic ``config`` keys the cluster reads: ``min_in_sync`` (1..replication factor; default a
  majority of the replicas), ``retention_ms``/``retention_bytes``/``segment_bytes`` as in
  docs/metadata.md.
* ``smartmodule``: spec ``wasm`` (base64), its ``sha256`` and ``size``, what ``kolk smartmodule
  create`` says of it, and any other keys. ``policy``: the object ``active`` is the policy in
  force (``version``, ``source``, ``sha256``); other policy objects are opaque drafts.
* ``config``: ``topic-defaults`` holds the cluster's topic config defaults ({key: text}).
* ``erasure`` (named ``<topic>-<partition>@<offset>``): spec ``topic``, ``partition``,
  ``key_sha256``, ``offset``, ``requested_by``; status ``state`` (pending|done), ``done`` (SPU
  ids), ``created_ms``, [``completed_ms``], [``note``].
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Iterator, Mapping

TOPIC = "topic"
PARTITION = "partition"
SPU = "spu"
SMARTMODULE = "smartmodule"
POLICY = "policy"
CONFIG = "config"  # cluster-wide settings; ``topic-defaults``: the topic config defaults (topic_config.py)
ERASURE = "erasure"  # one key's erasure from a partition (metadata/erasure_ops.py)
KINDS = (TOPIC, PARTITION, SPU, SMARTMODULE, POLICY, CONFIG, ERASURE)


@dataclass(frozen=True)
class MetaObject:
    kind: str
    name: str
    spec: Mapping[str, Any]
    status: Mapping[str, Any]
    version: int

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "spec": dict(self.spec), "status": dict(self.status),
                "version": self.version}

    @staticmethod
    def from_json(d: Mapping[str, Any]) -> "MetaObject":
        return MetaObject(d["kind"], d["name"], d["spec"], d["status"], d["version"])


def _empty_kinds() -> Mapping[str, Mapping[str, MetaObject]]:
    return MappingProxyType({k: MappingProxyType({}) for k in KINDS})


@dataclass(frozen=True)
class State:
    """The fold of every applied command. Never mutated: apply returns a new State."""

    version: int = 0
    objects: Mapping[str, Mapping[str, MetaObject]] = field(default_factory=_empty_kinds)
    # Time travels in commands (DESIGN.md §3); this is the largest ``ts`` applied so far.
    clock_ms: int = 0
    # The next idempotent-producer id to hand out (allocate_producer_ids); not an object, so
    # allocating changes no version and wakes no watcher.
    next_producer_id: int = 0

    def get(self, kind: str, name: str) -> MetaObject | None:
        return self.objects[kind].get(name)

    def all(self, kind: str) -> Iterator[MetaObject]:
        return iter(self.objects[kind].values())

    def spu_ids(self) -> list[int]:
        return sorted(o.spec["id"] for o in self.all(SPU))

    def partitions_of(self, topic: str) -> list[MetaObject]:
        t = self.get(TOPIC, topic)
        if t is None:
            return []
        return [p for i in range(t.spec["partitions"]) if (p := self.get(PARTITION, partition_name(topic, i)))]

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "clock_ms": self.clock_ms, "next_producer_id": self.next_producer_id,
                "objects": [o.to_json() for k in KINDS for o in self.objects[k].values()]}

    @staticmethod
    def from_json(d: Mapping[str, Any]) -> "State":
        kinds: dict[str, dict[str, MetaObject]] = {k: {} for k in KINDS}
        for raw in d["objects"]:
            o = MetaObject.from_json(raw)
            kinds[o.kind][o.name] = o
        return State(d["version"], MappingProxyType({k: MappingProxyType(v) for k, v in kinds.items()}),
                     d.get("clock_ms", 0), d.get("next_producer_id", 0))

    def encode(self) -> bytes:
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":")).encode()

    @staticmethod
    def decode(data: bytes) -> "State":
        return State.from_json(json.loads(data))


def partition_name(topic: str, index: int) -> str:
    return f"{topic}-{index}"


def spu_name(spu_id: int) -> str:
    return str(spu_id)
