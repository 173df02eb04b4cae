"""One place that bounds every request before it is used (DESIGN.md §6).

A Cap'n Proto message can be small and still claim a lot: a 200-byte body can carry a list of
a million zero-size structs, and a handler that iterates it stalls the server. ``check``
walks a decoded struct and compares every list, text and data field with its named limit from
``limits`` before any handler runs; lists are measured before their elements are visited.
Every list field of the schema must have a limit here (a test walks the schema to make sure).
"""

from __future__ import annotations

from typing import Any

import capnp

from . import limits as L
from .messages import MalformedMessage

ERASURE_NOTE_CHARS_MAX = 500  # why an erasure could not be carried out (ErasureDoneRequest.note)

# (struct, field) -> the most elements a list field may have.
LIST_LIMITS: dict[tuple[str, str], int] = {
    ("CreateTopicRequest", "config"): L.TOPIC_CONFIG_ENTRIES_MAX,
    ("AlterTopicRequest", "set"): L.TOPIC_CONFIG_ENTRIES_MAX,
    ("AlterTopicRequest", "delete"): L.TOPIC_CONFIG_ENTRIES_MAX,
    ("RegisterSpuRequest", "lost"): L.LOST_REPLICAS_MAX,
    ("UpdateIsrRequest", "isr"): L.REPLICAS_MAX,
    ("UpdateIsrRequest", "basedOn"): L.REPLICAS_MAX,
    ("ProduceRequest", "smartmodules"): L.CHAIN_STAGES_MAX,
    ("StreamRequest", "smartmodules"): L.CHAIN_STAGES_MAX,
    ("SmartModuleInvocation", "params"): L.SMARTMODULE_PARAMS_MAX,
    ("PartitionStatusRequest", "partitions"): L.PARTITION_STATUS_MAX,
    ("TopicPartitions", "partitions"): L.GROUP_PARTITIONS_MAX,
    ("GroupHeartbeatRequest", "topics"): L.GROUP_TOPICS_MAX,
    ("GroupHeartbeatRequest", "owned"): L.GROUP_TOPICS_MAX,
    ("OffsetCommitRequest", "offsets"): L.COMMIT_OFFSETS_MAX,
    ("OffsetFetchRequest", "topics"): L.GROUP_TOPICS_MAX,
    # answers and pushes, checked by clients
    ("GroupHeartbeatResponse", "assignment"): L.GROUP_TOPICS_MAX,
    ("OffsetFetchResponse", "offsets"): L.OBJECTS_PER_ANSWER_MAX,
    ("ListObjectsResponse", "objects"): L.OBJECTS_PER_ANSWER_MAX,
    ("WatchPush", "events"): L.OBJECTS_PER_ANSWER_MAX,
    ("StreamPush", "accumulators"): L.CHAIN_STAGES_MAX,
}

# (struct, field) -> the most characters (text) or bytes (data); other text fields get
# TEXT_CHARS_MAX, other data fields are bounded by the frame.
SIZE_LIMITS: dict[tuple[str, str], int] = {
    ("CreateTopicRequest", "name"): L.NAME_CHARS_MAX,
    ("DeleteTopicRequest", "name"): L.NAME_CHARS_MAX,
    ("AlterTopicRequest", "name"): L.NAME_CHARS_MAX,
    ("AlterTopicRequest", "delete"): L.NAME_CHARS_MAX,  # each element
    ("AddPartitionsRequest", "name"): L.NAME_CHARS_MAX,
    ("EraseKeyRequest", "topic"): L.NAME_CHARS_MAX,
    ("EraseKeyRequest", "keySha256"): 64,
    ("ErasureDoneRequest", "name"): L.NAME_CHARS_MAX,
    ("ErasureDoneRequest", "note"): ERASURE_NOTE_CHARS_MAX,
    ("GetObjectRequest", "name"): L.NAME_CHARS_MAX,
    ("PutObjectRequest", "name"): L.NAME_CHARS_MAX,
    ("PutObjectRequest", "specJson"): L.SPEC_JSON_BYTES_MAX,
    ("DeleteObjectRequest", "name"): L.NAME_CHARS_MAX,
    ("UpdateIsrRequest", "partition"): L.NAME_CHARS_MAX,
    ("ReportReplicaLossRequest", "partition"): L.NAME_CHARS_MAX,
    ("ElectLeaderRequest", "partition"): L.NAME_CHARS_MAX,
    ("LostReplica", "partition"): L.NAME_CHARS_MAX,
    ("ProduceRequest", "topic"): L.NAME_CHARS_MAX,
    ("TopicPartitions", "topic"): L.NAME_CHARS_MAX,
    ("GroupHeartbeatRequest", "group"): L.GROUP_NAME_CHARS_MAX,
    ("GroupHeartbeatRequest", "memberId"): L.MEMBER_ID_CHARS_MAX,
    ("GroupHeartbeatRequest", "instanceId"): L.INSTANCE_ID_CHARS_MAX,
    ("GroupHeartbeatRequest", "topics"): L.NAME_CHARS_MAX,  # each element
    ("GroupHeartbeatRequest", "assignor"): 32,
    ("CommittedOffset", "topic"): L.NAME_CHARS_MAX,
    ("CommittedOffset", "metadata"): L.COMMIT_METADATA_CHARS_MAX,
    ("OffsetCommitRequest", "group"): L.GROUP_NAME_CHARS_MAX,
    ("OffsetCommitRequest", "memberId"): L.MEMBER_ID_CHARS_MAX,
    ("OffsetFetchRequest", "group"): L.GROUP_NAME_CHARS_MAX,
    ("DescribeGroupRequest", "group"): L.GROUP_NAME_CHARS_MAX,
    ("DeleteGroupRequest", "group"): L.GROUP_NAME_CHARS_MAX,
    ("DescribeGroupResponse", "groupJson"): L.FRAME_BODY_BYTES_MAX,
    ("ListGroupsResponse", "groupsJson"): L.FRAME_BODY_BYTES_MAX,
    ("ProduceRequest", "records"): L.PRODUCE_BYTES_MAX,
    ("FetchRequest", "topic"): L.NAME_CHARS_MAX,
    ("StreamRequest", "topic"): L.NAME_CHARS_MAX,
    ("OffsetsRequest", "topic"): L.NAME_CHARS_MAX,
    ("OffsetForTimestampRequest", "topic"): L.NAME_CHARS_MAX,
    ("ReplicaFetchRequest", "partition"): L.NAME_CHARS_MAX,
    ("EpochEndOffsetRequest", "partition"): L.NAME_CHARS_MAX,
    ("PartitionStatusRequest", "partitions"): L.NAME_CHARS_MAX,  # each element
    ("SmartModuleInvocation", "name"): L.NAME_CHARS_MAX,
    ("AuthenticateRequest", "node"): L.NODE_NAME_CHARS_MAX,
    ("AuthenticateRequest", "token"): L.AUTH_TOKEN_BYTES,
    ("ChallengeResponse", "nonce"): L.AUTH_NONCE_BYTES,
    ("SmartModuleInvocation", "accumulator"): L.ACCUMULATOR_BYTES_MAX,
    ("StreamPush", "accumulators"): L.ACCUMULATOR_BYTES_MAX,  # each element
    # answers carry what the cluster stores
    ("Object", "specJson"): L.SPEC_JSON_BYTES_MAX,
    ("Object", "statusJson"): L.SPEC_JSON_BYTES_MAX,
    ("ClusterStatusResponse", "statusJson"): L.SPEC_JSON_BYTES_MAX,
    ("PartitionStatusResponse", "statusJson"): L.SPEC_JSON_BYTES_MAX,
    ("NodeDiagnosticsResponse", "diagnosticsJson"): L.DIAGNOSTICS_BYTES_MAX,
    ("RebalanceResponse", "planJson"): L.SPEC_JSON_BYTES_MAX,
    ("DrainSpuResponse", "planJson"): L.SPEC_JSON_BYTES_MAX,
    ("FetchResponse", "records"): L.FRAME_BODY_BYTES_MAX,
    ("ReplicaFetchResponse", "records"): L.FRAME_BODY_BYTES_MAX,
    ("StreamPush", "records"): L.FRAME_BODY_BYTES_MAX,
}


class BoundsError(ValueError):
    """A field over its limit; the message names the field, its size and the limit."""


class _Plan:
    """The checks one struct type needs: (field, kind, limit, element kind, element limit,
    nested plan) for its list, text, data and struct fields."""

    __slots__ = ("name", "checks")

    def __init__(self, name: str) -> None:
        self.name = name
        self.checks: list[tuple[str, str, int, str, int, "_Plan | None"]] = []


_plans: dict[str, _Plan] = {}


def _short(struct_schema: Any) -> str:
    return struct_schema.node.displayName.rsplit(":", 1)[-1].rsplit(".", 1)[-1]


def plan_for(struct_schema: Any) -> _Plan:
    """The plan of a struct schema (built once per struct type, with its nested ones)."""
    name = _short(struct_schema)
    plan = _plans.get(name)
    if plan is not None:
        return plan
    plan = _plans[name] = _Plan(name)
    for field in struct_schema.fields_list:
        proto = field.proto
        if proto.which() != "slot":
            continue
        fname = proto.name
        kind = str(proto.slot.type.which())
        if kind == "list":
            element = str(proto.slot.type.list.elementType.which())
            if (name, fname) not in LIST_LIMITS:
                raise AssertionError(f"{name}.{fname} is a list without a limit in kolk.protocol.bounds")
            nested = plan_for(field.schema.elementType) if element == "struct" else None
            each = SIZE_LIMITS.get((name, fname), L.TEXT_CHARS_MAX if element == "text" else L.FRAME_BODY_BYTES_MAX)
            plan.checks.append((fname, kind, LIST_LIMITS[(name, fname)], element, each, nested))
        elif kind in ("text", "data"):
            limit = SIZE_LIMITS.get((name, fname), L.TEXT_CHARS_MAX if kind == "text" else L.FRAME_BODY_BYTES_MAX)
            plan.checks.append((fname, kind, limit, "", 0, None))
        elif kind == "struct":
            plan.checks.append((fname, kind, 0, "", 0, plan_for(field.schema)))
    return plan


_UNITS = {"list": "entries", "text": "characters", "data": "bytes"}


def check(reader: Any, plan: _Plan | None = None, path: str = "") -> None:
    """Raise BoundsError unless every list, text and data field of ``reader`` is in bounds."""
    if plan is None:
        plan = plan_for(reader.schema)
    for fname, kind, limit, element, each, nested in plan.checks:
        try:
            _check_field(reader, plan, path, fname, kind, limit, element, each, nested)
        except (capnp.KjException, UnicodeDecodeError) as e:  # pycapnp decodes Text as UTF-8
            raise _unreadable(f"{path or plan.name}.{fname}", e, kind, limit) from None


def _unreadable(where: str, e: Exception, kind: str = "struct", limit: int = 0) -> Exception:
    """A field the reader refused to open. A list of zero-size structs claiming millions of
    entries in a few bytes trips the reader's traversal limit before its length can be read:
    that is a field over its limit (BoundsError, naming it); anything else is malformed."""
    first = str(e).splitlines()[0]
    if "traversal limit" in first:
        bound = f"; the limit is {limit} {_UNITS[kind]}" if kind in _UNITS else ""
        return BoundsError(f"{where} claims more than a message of this size can hold (over the reader's "
                           f"traversal limit){bound}")
    return MalformedMessage(f"{where} cannot be read: {first}")


def _check_field(reader: Any, plan: _Plan, path: str, fname: str, kind: str, limit: int, element: str, each: int,
                 nested: _Plan | None) -> None:
    where = f"{path or plan.name}.{fname}"
    if kind == "struct":
        if nested is not None and nested.checks and reader._has(fname):
            check(getattr(reader, fname), nested, where)
        return
    value = getattr(reader, fname)
    n = len(value)
    if n > limit:
        raise BoundsError(f"{where} has {n} {_UNITS[kind]}, more than the limit of {limit}")
    if kind != "list" or not n:
        return
    if nested is not None:
        if nested.checks:
            for i in range(n):
                check(value[i], nested, f"{where}[{i}]")
    elif element in ("text", "data"):
        for i in range(n):
            if len(value[i]) > each:
                raise BoundsError(f"{where}[{i}] has {len(value[i])} {_UNITS[element]}, more than the limit of {each}")
