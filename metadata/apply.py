"""Commands and their pure, deterministic apply.

``apply(state, command) -> Applied(state, outcome, events)``. No I/O, no clock, no
randomness: time (``ts``, ms) and every choice (replica placement, the new leader) travel in
the command, computed by the SC leader at the edge (controllers.py). A command that fails
validation changes nothing and yields an :class:`Outcome` with an error code and a message
naming what was wrong; every node computes the same outcome.

Commands are JSON objects with an ``op`` (``docs/metadata.md`` lists them):

=================== =====================================================================
op                  fields
=================== =====================================================================
create_topic        name, partitions, replication_factor, config, assignment, ts
delete_topic        name, ts, [expected_version]
register_spu        id, rack, public_address, private_address, ts, [storage_id], [lost: [{partition, reason}]]
unregister_spu      id, ts
set_spu_status      id, alive, ts
elect_leader        partition, leader (id or null), epoch (the current one), ts, [isr], [unclean]
fence_replica       partition, id (the SPU whose replica lost data), reason, ts, [epoch]
update_isr          partition, isr, epoch, leader (who asks), ts, [based_on]
reassign_partition  partition, replicas, epoch (the current one), ts
allocate_producer_ids  count, ts
alter_topic         name, [set: {key: value}], [delete: [key]], ts, [expected_version]
add_partitions      name, count, assignment, ts, [expected_version]
erase_key           topic, partition, key_sha256, offset, requested_by, ts
erasure_done        name, spu, ts
put_object          kind (smartmodule|policy|config), name, spec, ts, [expected_version]
delete_object       kind, name, ts, [expected_version]
barrier             ts  (changes nothing; a linearizable read waits for it)
set_sc_members      members: [{id, raft, admin}], ts, [based_on]  (metadata/sc_ops.py)
=================== =====================================================================

``expected_version`` makes an update compare-and-set: ``-1`` means "must not exist", any
other value must equal the object's version.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable, Mapping

from .command import (ALREADY_EXISTS, IN_USE, INVALID_ARGUMENT, INVALID_COMMAND, NOT_FOUND,
                      UNKNOWN_COMMAND, VERSION_CONFLICT, Applied, Edit, Event, Invalid,
                      Outcome, check_version, fail, get_field, get_name, get_spu_id, get_ts, invalid_spec)
from .erasure_ops import end_erasures_of_topic, erase_key, erasure_done
from .objects import CONFIG, PARTITION, POLICY, SMARTMODULE, SPU, TOPIC, MetaObject, State, partition_name, spu_name
from .topic_config import DEFAULTS_NAME
from .topic_ops import (add_partitions, alter_topic, check_new_defaults, check_placeable, check_topic_config,
                        put_partitions)
from .move_ops import MOVE_OPS
from .sc_ops import SC_OPS
from .partition_ops import (elect_leader, fence_replica, get_lost, get_storage_id, reassign_partition,
                            register_effects, update_isr)
# The limits of what a spec may hold live with the specs; named here too for those who look.
from .specs import (ADDRESS_CHARS_MAX, CONFIG_ENTRIES_MAX, CONFIG_VALUE_CHARS_MAX, PARTITIONS_MAX,  # noqa: F401
                    REPLICATION_FACTOR_MAX, SMARTMODULE_BYTES_MAX, PartitionSpec, PartitionStatus, PolicySpec,
                    SmartModuleSpec, SpecError, SpuSpec, SpuStatus, TopicSpec, check_address, min_in_sync)

__all__ = ["Applied", "Event", "Outcome", "OPS", "apply", "apply_bytes", "encode_command", "min_in_sync"]

# Limits on what a command may ask for (TIGER_STYLE: everything bounded); a spec's own limits
# are in specs.py.
OBJECT_SPEC_BYTES_MAX = 4 << 20
PRODUCER_IDS_PER_CALL_MAX = 1000
ACTIVE_POLICY = "active"  # the policy object every node enforces; other policy objects are stored drafts
PRODUCER_ID_MAX = 2**63 - 1




# ---------------------------------------------------------------- ops


def _create_topic(state: State, cmd: Mapping[str, Any]) -> Applied:
    name = get_name(cmd, "topic")
    ts = get_ts(cmd)
    partitions = get_field(cmd, "partitions", int)
    rf = get_field(cmd, "replication_factor", int)
    config = get_field(cmd, "config", dict, optional=True) or {}
    assignment = get_field(cmd, "assignment", list)
    try:
        spec = TopicSpec(partitions, rf, config)
    except SpecError as e:
        raise invalid_spec(e, f"topic {name}") from None
    check_placeable(state, name, rf)
    if state.get(TOPIC, name) is not None:
        raise fail(ALREADY_EXISTS, f"topic {name} already exists")
    check_topic_config(state, name, spec)  # consistent with the cluster defaults in force
    if len(assignment) != partitions:
        raise fail(INVALID_COMMAND, f"topic {name}: assignment has {len(assignment)} entries for {partitions} partitions")
    edit = Edit(state)
    put_partitions(edit, state, name, 0, assignment, rf)  # each partition's incarnation: this version
    edit.put(TOPIC, name, spec.to_dict(), {"state": "ready", "created_ms": ts})
    return edit.finish(ts, {"name": name})


def _delete_topic(state: State, cmd: Mapping[str, Any]) -> Applied:
    name = get_name(cmd, "topic")
    ts = get_ts(cmd)
    topic = state.get(TOPIC, name)
    check_version(topic, cmd, f"topic {name}")
    if topic is None:
        raise fail(NOT_FOUND, f"topic {name} does not exist")
    edit = Edit(state)
    for i in range(topic.spec["partitions"]):
        edit.delete(PARTITION, partition_name(name, i))
    edit.delete(TOPIC, name)
    # Its erasures go too; the pending ones are named for the SC's audit ("topic deleted").
    ended = end_erasures_of_topic(edit, state, name)
    return edit.finish(ts, {"name": name, "erasures_ended": [
        {"name": e.name, "key_sha256": e.spec.get("key_sha256"), "requested_by": e.spec.get("requested_by")}
        for e in ended]})



def _register_spu(state: State, cmd: Mapping[str, Any]) -> Applied:
    """An SPU registers as it starts, with the storage id of its data directory (DESIGN.md §5,
    storage identity) and the replicas it found short of their high watermark."""
    spu_id = get_spu_id(cmd)
    ts = get_ts(cmd)
    rack = get_field(cmd, "rack", (str, type(None)), optional=True)
    storage_id = get_storage_id(cmd)
    lost = get_lost(cmd)
    public_address = get_field(cmd, "public_address", str)
    private_address = get_field(cmd, "private_address", str)
    current = state.get(SPU, spu_name(spu_id))
    was = current.spec.get("storage_id") if current is not None else None
    try:
        # A registration without a storage id never erases the one recorded.
        spec = SpuSpec(spu_id, rack, public_address, private_address,
                       storage_id if storage_id is not None else was,
                       bool(current.spec.get("draining")) if current is not None else False).to_dict()
    except SpecError as e:
        raise invalid_spec(e) from None
    edit = Edit(state)
    if current is None:
        edit.put(SPU, spu_name(spu_id), spec, SpuStatus(True, ts).to_dict())
        return _registered(edit.finish(ts), spu_id)
    if dict(current.spec) != spec:
        edit.put(SPU, spu_name(spu_id), spec, current.status)
    storage_lost = None
    if storage_id is not None and was is not None and storage_id != was:
        storage_lost = f"SPU {spu_id} came back with storage {storage_id[:8]}, not {was[:8]}: its data is gone"
    register_effects(edit, state, spu_id, storage_lost, lost, ts)
    return _registered(edit.finish(ts), spu_id)


def _registered(applied: Applied, spu_id: int) -> Applied:
    """The outcome names the state version that holds the registration: the SPU acts on
    metadata only from that version on, so a lagging SC cannot hand it a role it has lost."""
    value = {"id": spu_id, "version": applied.state.version}
    return dataclasses.replace(applied, outcome=dataclasses.replace(applied.outcome, value=value))


def _unregister_spu(state: State, cmd: Mapping[str, Any]) -> Applied:
    spu_id = get_spu_id(cmd)
    ts = get_ts(cmd)
    if state.get(SPU, spu_name(spu_id)) is None:
        raise fail(NOT_FOUND, f"SPU {spu_id} is not registered")
    hosted = sorted(p.name for p in state.all(PARTITION) if spu_id in p.spec["replicas"])
    if hosted:
        raise fail(IN_USE, f"SPU {spu_id} still holds replicas of {', '.join(hosted[:5])}"
                    + (f" and {len(hosted) - 5} more" if len(hosted) > 5 else "") + "; delete or move them first")
    edit = Edit(state)
    edit.delete(SPU, spu_name(spu_id))
    return edit.finish(ts, {"id": spu_id})


def _set_spu_status(state: State, cmd: Mapping[str, Any]) -> Applied:
    spu_id = get_spu_id(cmd)
    ts = get_ts(cmd)
    alive = get_field(cmd, "alive", bool)
    current = state.get(SPU, spu_name(spu_id))
    if current is None:
        raise fail(NOT_FOUND, f"SPU {spu_id} is not registered")
    edit = Edit(state)
    if current.status.get("alive") != alive:
        edit.put(SPU, current.name, current.spec, SpuStatus(alive, ts).to_dict())
    return edit.finish(ts, {"id": spu_id, "alive": alive})





def _allocate_producer_ids(state: State, cmd: Mapping[str, Any]) -> Applied:
    ts = get_ts(cmd)
    count = get_field(cmd, "count", int)
    if not 1 <= count <= PRODUCER_IDS_PER_CALL_MAX:
        raise fail(INVALID_ARGUMENT, f"allocate_producer_ids: count must be 1-{PRODUCER_IDS_PER_CALL_MAX}, got {count}")
    first = state.next_producer_id
    if first + count > PRODUCER_ID_MAX:
        raise fail(INVALID_ARGUMENT, "allocate_producer_ids: producer ids are used up")
    new = dataclasses.replace(state, next_producer_id=first + count, clock_ms=max(state.clock_ms, ts))
    return Applied(new, Outcome(True, value={"first": first, "count": count}))



_BLOB_KINDS = (SMARTMODULE, POLICY, CONFIG)


def _blob_kind(cmd: Mapping[str, Any]) -> str:
    kind = get_field(cmd, "kind", str)
    if kind not in _BLOB_KINDS:
        raise fail(INVALID_ARGUMENT, f"kind {kind!r} cannot be stored this way (use one of {', '.join(_BLOB_KINDS)})")
    return kind


def _blob_name(cmd: Mapping[str, Any], kind: str) -> str:
    """SmartModules are stored as ``NAME@VERSION`` (each part a valid name); policies by name;
    the one config object is ``topic-defaults``."""
    if kind == CONFIG:
        name = get_name(cmd, kind)
        if name != DEFAULTS_NAME:
            raise fail(INVALID_ARGUMENT, f"config {name}: the only config object is {DEFAULTS_NAME}")
        return name
    if kind != SMARTMODULE:
        return get_name(cmd, kind)
    full = get_field(cmd, "name", str)
    parts = full.split("@")
    if len(parts) != 2:
        raise fail(INVALID_ARGUMENT, f"smartmodule name {full!r} must be NAME@VERSION")
    for part in parts:
        get_name({"name": part}, "smartmodule")
    return full


def _check_policy_version(name: str, spec: Mapping[str, Any], current: MetaObject | None) -> None:
    """A policy's version only goes forward, so a revoked (older) version can never be put back."""
    try:
        version = PolicySpec.from_dict(spec).version
    except SpecError as e:
        raise invalid_spec(e, f"policy {name}") from None
    if current is not None and version <= int(current.spec.get("version", 0)):
        raise fail(VERSION_CONFLICT, f"policy {name}: version {version} is not newer than version "
                                      f"{current.spec.get('version')} in force; a policy's version only goes forward")


def _put_object(state: State, cmd: Mapping[str, Any]) -> Applied:
    kind = _blob_kind(cmd)
    name = _blob_name(cmd, kind)
    ts = get_ts(cmd)
    spec = get_field(cmd, "spec", dict)
    size = len(json.dumps(spec, separators=(",", ":")))
    if size > OBJECT_SPEC_BYTES_MAX:
        raise fail(INVALID_ARGUMENT, f"{kind} {name}: spec is {size} bytes, more than {OBJECT_SPEC_BYTES_MAX}")
    if kind == SMARTMODULE:
        try:
            SmartModuleSpec.from_dict(spec)  # the bytes every SPU relies on, their sha256 and size
        except SpecError as e:
            raise invalid_spec(e, f"smartmodule {name}") from None
    current = state.get(kind, name)
    if kind == POLICY and name == ACTIVE_POLICY:
        _check_policy_version(name, spec, current)
    if kind == CONFIG:
        check_new_defaults(state, spec)  # every value allowed; no existing topic made inconsistent
    check_version(current, cmd, f"{kind} {name}")
    edit = Edit(state)
    edit.put(kind, name, spec, current.status if current else {"created_ms": ts})
    return edit.finish(ts, {"kind": kind, "name": name, "version": edit.version})


def _delete_object(state: State, cmd: Mapping[str, Any]) -> Applied:
    kind = _blob_kind(cmd)
    name = _blob_name(cmd, kind)
    ts = get_ts(cmd)
    current = state.get(kind, name)
    check_version(current, cmd, f"{kind} {name}")
    if current is None:
        raise fail(NOT_FOUND, f"{kind} {name} does not exist")
    if kind == CONFIG:
        check_new_defaults(state, None)  # back to the table's defaults: still consistent with every topic
    edit = Edit(state)
    edit.delete(kind, name)
    return edit.finish(ts, {"kind": kind, "name": name})


def _barrier(state: State, cmd: Mapping[str, Any]) -> Applied:
    return Edit(state).finish(get_ts(cmd), {"version": state.version})


OPS: Mapping[str, Callable[[State, Mapping[str, Any]], Applied]] = {
    "create_topic": _create_topic,
    "delete_topic": _delete_topic,
    "register_spu": _register_spu,
    "unregister_spu": _unregister_spu,
    "set_spu_status": _set_spu_status,
    "elect_leader": elect_leader,
    "update_isr": update_isr,
    "reassign_partition": reassign_partition,
    **SC_OPS,  # set_sc_members (metadata/sc_ops.py)
    **MOVE_OPS,  # move_partition, finish_move, cancel_move, set_draining (metadata/move_ops.py)
    "fence_replica": fence_replica,
    "allocate_producer_ids": _allocate_producer_ids,
    "alter_topic": alter_topic,
    "add_partitions": add_partitions,
    "erase_key": erase_key,
    "erasure_done": erasure_done,
    "put_object": _put_object,
    "delete_object": _delete_object,
    "barrier": _barrier,
}


def apply(state: State, cmd: Any) -> Applied:
    """Apply one decoded command. Never raises for bad input: the outcome says what was wrong."""
    if not isinstance(cmd, Mapping):
        return Applied(state, Outcome(False, INVALID_COMMAND, f"a command is a JSON object, got {type(cmd).__name__}"))
    op = cmd.get("op")
    handler = OPS.get(op) if isinstance(op, str) else None
    if handler is None:
        return Applied(state, Outcome(False, UNKNOWN_COMMAND,
                                      f"unknown command op {op!r}; known: {', '.join(sorted(OPS))}"))
    try:
        return handler(state, cmd)
    except Invalid as e:
        return Applied(state, Outcome(False, e.code, e.message))


def encode_command(cmd: Mapping[str, Any]) -> bytes:
    return json.dumps(cmd, sort_keys=True, separators=(",", ":")).encode()


def apply_bytes(state: State, data: bytes) -> Applied:
    """Decode and apply; malformed bytes are an ``invalid_command`` outcome, state unchanged."""
    try:
        cmd = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        return Applied(state, Outcome(False, INVALID_COMMAND, f"command is not valid JSON: {e}"))
    return apply(state, cmd)
