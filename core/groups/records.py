"""The records of ``_consumer_offsets``: what a group's coordinator writes, and reads back when it
takes over (docs/consumers.md "Storage").

Two kinds, both JSON with a JSON-array key so that compaction keeps the newest per key:

- a committed offset: key ``["o", group, topic, partition]``, value
  ``{"offset": N, "metadata": "...", "ts": ms}``;
- a group's membership: key ``["g", group]``, value ``{"epoch": ..., "assignor": ..., "members": [...]}``
  (state.py ``snapshot``), written whenever a partition changes hands, before the answer that
  gives it, so a new coordinator knows who owns what.

A null value (a tombstone) removes the key: a deleted group, a committed offset removed by a delete.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, NamedTuple

from .names import TopicPartition

_DUMP = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


class Committed(NamedTuple):
    offset: int
    metadata: str
    ts: int  # wall-clock ms of the commit, for describe


@dataclass(frozen=True)
class OffsetRecord:
    group: str
    tp: TopicPartition
    committed: Committed | None  # None: a tombstone


@dataclass(frozen=True)
class GroupRecord:
    group: str
    snapshot: dict[str, Any] | None  # None: a tombstone


class RecordError(ValueError):
    """A record of _consumer_offsets this version cannot read; the message names it."""


def offset_key(group: str, tp: TopicPartition) -> bytes:
    return _DUMP(["o", group, tp.topic, tp.partition]).encode()


def offset_value(c: Committed) -> bytes:
    return _DUMP({"offset": c.offset, "metadata": c.metadata, "ts": c.ts}).encode()


def group_key(group: str) -> bytes:
    return _DUMP(["g", group]).encode()


def group_value(snapshot: dict[str, Any]) -> bytes:
    return _DUMP(snapshot).encode()


def decode(key: bytes | None, value: bytes | None) -> OffsetRecord | GroupRecord:
    """One record of the offsets topic; RecordError for anything else."""
    if key is None:
        raise RecordError("a record without a key")
    try:
        k = json.loads(key)
    except ValueError as e:
        raise RecordError(f"key {bytes(key[:60])!r} is not JSON: {e}") from None
    if isinstance(k, list) and len(k) == 4 and k[0] == "o" and isinstance(k[1], str) and isinstance(k[2], str) \
            and isinstance(k[3], int) and not isinstance(k[3], bool):
        tp = TopicPartition(k[2], k[3])
        if value is None:
            return OffsetRecord(k[1], tp, None)
        try:
            v = json.loads(value)
            committed = Committed(int(v["offset"]), str(v.get("metadata", "")), int(v.get("ts", 0)))
        except (ValueError, KeyError, TypeError) as e:
            raise RecordError(f"the value of {k} is not a committed offset: {e}") from None
        return OffsetRecord(k[1], tp, committed)
    if isinstance(k, list) and len(k) == 2 and k[0] == "g" and isinstance(k[1], str):
        if value is None:
            return GroupRecord(k[1], None)
        try:
            snap = json.loads(value)
        except ValueError as e:
            raise RecordError(f"the value of {k} is not JSON: {e}") from None
        if not isinstance(snap, dict):
            raise RecordError(f"the value of {k} is not a group snapshot")
        return GroupRecord(k[1], snap)
    raise RecordError(f"key {k!r} is neither an offset nor a group")
