"""Erasure of one key's records from a compacted topic's partition (docs/lifecycle.md, GDPR):
``erase_key`` records the request as an ``erasure`` object, ``erasure_done`` records that an
SPU's replica no longer holds the key; the erasure is done when every current replica is.
Pure command handlers (metadata/apply.py).

The object is named ``<topic>-<partition>@<offset>`` (the tombstone's offset); its spec is
``topic``, ``partition``, ``key_sha256``, ``offset``, ``requested_by``, its status ``state``
(``pending`` | ``done``), ``done`` (SPU ids), ``created_ms``, [``completed_ms``], [``note``]. The key
itself never reaches the metadata, only its sha256.

Bounds: at most ERASURES_PENDING_MAX pending erasures (more are refused, ``limit_exceeded``);
beyond ERASURES_DONE_KEPT done ones, the oldest done ones are dropped as another completes
(the ``_audit`` topic keeps every request and completion).
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from .command import (ALREADY_EXISTS, INVALID_ARGUMENT, LIMIT_EXCEEDED, NOT_FOUND, Applied, Edit, fail, get_field,
                      get_name, get_ts, invalid_spec)
from .objects import ERASURE, PARTITION, TOPIC, MetaObject, State, partition_name
from .specs import SpecError, check_spu_id
from .topic_config import resolve
from .topic_ops import defaults_of

__all__ = ["ERASURES_PENDING_MAX", "ERASURES_DONE_KEPT", "REQUESTED_BY_CHARS_MAX", "erase_key", "erasure_done",
           "erasure_name", "end_erasures_of_topic"]

ERASURES_PENDING_MAX = 10_000
ERASURES_DONE_KEPT = 1_000
REQUESTED_BY_CHARS_MAX = 300
OFFSET_MAX = 2**63 - 1
_SHA256 = re.compile(r"[0-9a-f]{64}")


def erasure_name(topic: str, partition: int, offset: int) -> str:
    return f"{partition_name(topic, partition)}@{offset}"


def erase_key(state: State, cmd: Mapping[str, Any]) -> Applied:
    ts = get_ts(cmd)
    topic_name = get_name(cmd, "topic", "topic")
    partition = get_field(cmd, "partition", int)
    key_sha256 = get_field(cmd, "key_sha256", str)
    offset = get_field(cmd, "offset", int)
    requested_by = get_field(cmd, "requested_by", str)
    topic = state.get(TOPIC, topic_name)
    if topic is None:
        raise fail(NOT_FOUND, f"topic {topic_name} does not exist")
    try:
        config = resolve(topic.spec.get("config", {}), defaults_of(state), topic.spec["replication_factor"])
    except SpecError as e:  # a topic stored before the table existed
        raise invalid_spec(e, f"topic {topic_name}") from None
    if not config.compacted:
        raise fail(INVALID_ARGUMENT, f"topic {topic_name}: erase needs cleanup_policy compact or compact,delete; it "
                                     f"has {config.cleanup_policy}")
    count = topic.spec["partitions"]
    if not 0 <= partition < count:
        raise fail(INVALID_ARGUMENT, f"topic {topic_name} has partitions 0-{count - 1}, not {partition}")
    if not _SHA256.fullmatch(key_sha256):
        raise fail(INVALID_ARGUMENT, f"erase: key_sha256 {key_sha256[:80]!r} must be 64 lowercase hex digits")
    if not 0 <= offset <= OFFSET_MAX:
        raise fail(INVALID_ARGUMENT, f"erase: offset {offset} must be 0 or more (the tombstone's offset)")
    if len(requested_by) > REQUESTED_BY_CHARS_MAX:
        raise fail(INVALID_ARGUMENT, f"erase: requested_by is more than {REQUESTED_BY_CHARS_MAX} characters")
    name = erasure_name(topic_name, partition, offset)
    current = state.get(ERASURE, name)
    if current is not None:
        if current.spec.get("key_sha256") != key_sha256:
            raise fail(ALREADY_EXISTS, f"erasure {name} exists for another key; an offset holds one tombstone")
        return Edit(state).finish(ts, {"name": name, "existing": True})
    pending = sum(1 for e in state.all(ERASURE) if e.status.get("state") == "pending")
    if pending >= ERASURES_PENDING_MAX:
        raise fail(LIMIT_EXCEEDED, f"{pending} erasures are pending, the most the cluster keeps; try again when "
                                   "some are done")
    edit = Edit(state)
    edit.put(ERASURE, name, {"topic": topic_name, "partition": partition, "key_sha256": key_sha256, "offset": offset,
                             "requested_by": requested_by},
             {"state": "pending", "done": [], "created_ms": ts})
    return edit.finish(ts, {"name": name, "existing": False})


def erasure_done(state: State, cmd: Mapping[str, Any]) -> Applied:
    ts = get_ts(cmd)
    name = get_field(cmd, "name", str)
    spu = get_field(cmd, "spu", int)
    found = get_field(cmd, "found", bool, optional=True) or False
    note = get_field(cmd, "note", str, optional=True)
    try:
        check_spu_id(spu, "spu")
    except SpecError as e:
        raise invalid_spec(e) from None
    erasure = state.get(ERASURE, name)
    if erasure is None:
        raise fail(NOT_FOUND, f"erasure {name[:250]} does not exist")
    if erasure.status.get("state") == "done":
        return Edit(state).finish(ts, {"name": name, "state": "done", "completed": False})
    p = state.get(PARTITION, partition_name(erasure.spec["topic"], erasure.spec["partition"]))
    replicas = list(p.spec["replicas"]) if p is not None else []
    if spu not in replicas:
        raise fail(INVALID_ARGUMENT, f"erasure {name}: SPU {spu} holds no replica of the partition "
                                     f"(replicas {replicas})")
    done = sorted(set(erasure.status.get("done", [])) | {spu})
    status: dict[str, Any] = {**erasure.status, "done": done,
                              "found": bool(erasure.status.get("found")) or found}
    completed = set(replicas) <= set(done)
    if note:
        # The leader found no tombstone of the key at the offset: nothing can be erased as asked.
        status["note"] = note[:500]
        completed = True
    if completed:
        status.update(state="done", completed_ms=ts)
    edit = Edit(state)
    edit.put(ERASURE, name, erasure.spec, status)
    if completed:
        _drop_oldest_done(edit, state, name)
    return edit.finish(ts, {"name": name, "state": status["state"], "completed": completed})


def _drop_oldest_done(edit: Edit, state: State, just_done: str) -> None:
    done = [e for e in state.all(ERASURE) if e.status.get("state") == "done" and e.name != just_done]
    extra = len(done) + 1 - ERASURES_DONE_KEPT
    if extra > 0:
        for e in sorted(done, key=lambda o: (o.status.get("completed_ms", 0), o.name))[:extra]:
            edit.delete(ERASURE, e.name)


def end_erasures_of_topic(edit: Edit, state: State, topic: str) -> list[MetaObject]:
    """A deleted topic's erasures go with it (its records are gone; a topic created again
    under the name must not find them, since names repeat offsets). Returns the pending ones,
    for the SC to audit as completed ("topic deleted")."""
    ended = []
    for e in state.all(ERASURE):
        if e.spec.get("topic") == topic:
            edit.delete(ERASURE, e.name)
            if e.status.get("state") == "pending":
                ended.append(e)
    return sorted(ended, key=lambda o: o.name)


def reopen_erasures(edit: Edit, state: State, lost: Mapping[str, set[int]]) -> None:
    """Replicas that lost their data (``lost``: partition name -> SPU ids) start again from a
    copy, which may predate an erasure: each pending erasure of their partition counts them as
    not done any more, so they erase their new copy too before it can complete."""
    if not lost:
        return
    for e in state.all(ERASURE):
        if e.status.get("state") == "done":
            continue
        gone = lost.get(partition_name(e.spec["topic"], e.spec["partition"]))
        done = list(e.status.get("done", []))
        if gone and any(s in gone for s in done):
            current = edit.get(ERASURE, e.name) or e
            edit.put(ERASURE, e.name, current.spec, {**current.status, "done": [s for s in done if s not in gone]})
