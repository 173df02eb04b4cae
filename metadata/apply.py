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
register_spu        id, rack, public_address, private_address, ts
unregister_spu      id, ts
set_spu_status      id, alive, ts
elect_leader        partition, leader (id or null), epoch (the current one), ts, [isr]
update_isr          partition, isr, epoch, leader (who asks), ts, [based_on]
reassign_partition  partition, replicas, epoch (the current one), ts
allocate_producer_ids  count, ts
put_object          kind (smartmodule|policy), name, spec, ts, [expected_version]
delete_object       kind, name, ts, [expected_version]
barrier             ts  (changes nothing; a linearizable read waits for it)
=================== =====================================================================

``expected_version`` makes an update compare-and-set: ``-1`` means "must not exist", any
other value must equal the object's version.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping

from .objects import PARTITION, POLICY, SMARTMODULE, SPU, TOPIC, MetaObject, State, partition_name, spu_name

# Limits on what a command may ask for (TIGER_STYLE: everything bounded).
NAME_CHARS_MAX = 200
PARTITIONS_MAX = 1000
REPLICATION_FACTOR_MAX = 7
CONFIG_ENTRIES_MAX = 64
CONFIG_VALUE_CHARS_MAX = 1024
OBJECT_SPEC_BYTES_MAX = 4 << 20
ADDRESS_CHARS_MAX = 255
PRODUCER_IDS_PER_CALL_MAX = 1000
SMARTMODULE_BYTES_MAX = 2 << 20
ACTIVE_POLICY = "active"  # the policy object every node enforces; other policy objects are stored drafts
PRODUCER_ID_MAX = 2**63 - 1

_NAME = re.compile(r"^[A-Za-z0-9._-]+$")

# Error codes, shared with the wire protocol.
INVALID_COMMAND = "invalid_command"
UNKNOWN_COMMAND = "unknown_command"
INVALID_ARGUMENT = "invalid_argument"
ALREADY_EXISTS = "already_exists"
NOT_FOUND = "not_found"
REPLICATION_FACTOR_TOO_HIGH = "replication_factor_too_high"
VERSION_CONFLICT = "version_conflict"
STALE_EPOCH = "stale_epoch"
NOT_PARTITION_LEADER = "not_partition_leader"
IN_USE = "in_use"


@dataclass(frozen=True)
class Outcome:
    ok: bool
    code: str = ""
    message: str = ""
    value: Any = None

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "code": self.code, "message": self.message, "value": self.value}


@dataclass(frozen=True)
class Event:
    """One object changed (``obj``) or was deleted (``obj`` is None) at ``version``."""

    version: int
    kind: str
    name: str
    obj: MetaObject | None

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "kind": self.kind, "name": self.name,
                "object": None if self.obj is None else self.obj.to_json()}


@dataclass(frozen=True)
class Applied:
    state: State
    outcome: Outcome
    events: tuple[Event, ...] = field(default_factory=tuple)


class _Invalid(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _fail(code: str, message: str) -> _Invalid:
    return _Invalid(code, message)


# ---------------------------------------------------------------- field checks


def _field(cmd: Mapping[str, Any], name: str, kind: type | tuple[type, ...], *, optional: bool = False) -> Any:
    if name not in cmd:
        if optional:
            return None
        raise _fail(INVALID_COMMAND, f"{cmd.get('op')}: field {name!r} is missing")
    value = cmd[name]
    # bool is an int in Python; a count must not accept True.
    if isinstance(value, bool) and kind is not bool and (kind is int or (isinstance(kind, tuple) and int in kind)):
        raise _fail(INVALID_COMMAND, f"{cmd.get('op')}: field {name!r} must be {_type_name(kind)}, got a boolean")
    if not isinstance(value, kind):
        raise _fail(INVALID_COMMAND,
                    f"{cmd.get('op')}: field {name!r} must be {_type_name(kind)}, got {type(value).__name__}")
    return value


def _type_name(kind: type | tuple[type, ...]) -> str:
    if isinstance(kind, tuple):
        return " or ".join(k.__name__ for k in kind)
    return kind.__name__


def _name(cmd: Mapping[str, Any], what: str, field_name: str = "name") -> str:
    name = _field(cmd, field_name, str)
    if not name or len(name) > NAME_CHARS_MAX or name in (".", "..") or not _NAME.match(name):
        raise _fail(INVALID_ARGUMENT,
                    f"{what} name {name!r} is invalid: use 1-{NAME_CHARS_MAX} of A-Z a-z 0-9 . _ - "
                    "(and not '.' or '..')")
    return name


def _ts(cmd: Mapping[str, Any]) -> int:
    ts = _field(cmd, "ts", int)
    if ts < 0:
        raise _fail(INVALID_COMMAND, f"{cmd.get('op')}: ts {ts} is negative")
    return ts


def _check_version(obj: MetaObject | None, cmd: Mapping[str, Any], what: str) -> None:
    expected = _field(cmd, "expected_version", int, optional=True)
    if expected is None:
        return
    actual = -1 if obj is None else obj.version
    if expected != actual:
        now = "does not exist" if obj is None else f"is at version {actual}"
        raise _fail(VERSION_CONFLICT, f"{what} {now}; the update expected version {expected}")


# ---------------------------------------------------------------- state edits


class _Edit:
    """Collects object changes of one command, then builds the next State."""

    def __init__(self, state: State) -> None:
        self.state = state
        self.version = state.version + 1
        self.changes: dict[tuple[str, str], MetaObject | None] = {}

    def get(self, kind: str, name: str) -> MetaObject | None:
        if (kind, name) in self.changes:
            return self.changes[(kind, name)]
        return self.state.get(kind, name)

    def put(self, kind: str, name: str, spec: Mapping[str, Any], status: Mapping[str, Any]) -> MetaObject:
        obj = MetaObject(kind, name, MappingProxyType(dict(spec)), MappingProxyType(dict(status)), self.version)
        self.changes[(kind, name)] = obj
        return obj

    def delete(self, kind: str, name: str) -> None:
        self.changes[(kind, name)] = None

    def finish(self, ts: int, value: Any = None) -> Applied:
        if not self.changes:
            return Applied(dataclasses.replace(self.state, clock_ms=max(self.state.clock_ms, ts)),
                           Outcome(True, value=value))
        kinds = dict(self.state.objects)
        touched: dict[str, dict[str, MetaObject]] = {}
        events = []
        for (kind, name), obj in sorted(self.changes.items()):
            table = touched.get(kind)
            if table is None:
                table = touched[kind] = dict(kinds[kind])
            if obj is None:
                table.pop(name, None)
            else:
                table[name] = obj
            events.append(Event(self.version, kind, name, obj))
        for kind, table in touched.items():
            kinds[kind] = MappingProxyType(table)
        new = dataclasses.replace(self.state, version=self.version, objects=MappingProxyType(kinds),
                                  clock_ms=max(self.state.clock_ms, ts))
        return Applied(new, Outcome(True, value=value), tuple(events))


# ---------------------------------------------------------------- ops


def _create_topic(state: State, cmd: Mapping[str, Any]) -> Applied:
    name = _name(cmd, "topic")
    ts = _ts(cmd)
    partitions = _field(cmd, "partitions", int)
    rf = _field(cmd, "replication_factor", int)
    config = _field(cmd, "config", dict, optional=True) or {}
    assignment = _field(cmd, "assignment", list)
    if not 1 <= partitions <= PARTITIONS_MAX:
        raise _fail(INVALID_ARGUMENT, f"topic {name}: partitions must be 1-{PARTITIONS_MAX}, got {partitions}")
    if not 1 <= rf <= REPLICATION_FACTOR_MAX:
        raise _fail(INVALID_ARGUMENT,
                    f"topic {name}: replication factor must be 1-{REPLICATION_FACTOR_MAX}, got {rf}")
    spus = state.spu_ids()
    if rf > len(spus):
        raise _fail(REPLICATION_FACTOR_TOO_HIGH,
                    f"topic {name}: replication factor {rf} is more than the {len(spus)} registered SPUs")
    if len(config) > CONFIG_ENTRIES_MAX or not all(
            isinstance(k, str) and isinstance(v, str) and len(k) <= NAME_CHARS_MAX and len(v) <= CONFIG_VALUE_CHARS_MAX
            for k, v in config.items()):
        raise _fail(INVALID_ARGUMENT, f"topic {name}: config must be at most {CONFIG_ENTRIES_MAX} string pairs")
    _check_min_in_sync(name, config, rf)
    if state.get(TOPIC, name) is not None:
        raise _fail(ALREADY_EXISTS, f"topic {name} already exists")
    if len(assignment) != partitions:
        raise _fail(INVALID_COMMAND, f"topic {name}: assignment has {len(assignment)} entries for {partitions} partitions")
    known = set(spus)
    alive = {o.spec["id"] for o in state.all(SPU) if o.status.get("alive")}
    edit = _Edit(state)
    for i, replicas in enumerate(assignment):
        if (not isinstance(replicas, list) or len(replicas) != rf or len(set(replicas)) != rf
                or not all(isinstance(r, int) and not isinstance(r, bool) and r in known for r in replicas)):
            raise _fail(INVALID_COMMAND,
                        f"topic {name}: partition {i} needs {rf} distinct registered SPU ids, got {replicas!r}")
        leader = next((r for r in replicas if r in alive), None)
        edit.put(PARTITION, partition_name(name, i),
                 {"topic": name, "partition": i, "replicas": list(replicas)},
                 {"leader": leader, "epoch": 0, "isr": list(replicas)})
    edit.put(TOPIC, name, {"partitions": partitions, "replication_factor": rf, "config": dict(config)},
             {"state": "ready", "created_ms": ts})
    return edit.finish(ts, {"name": name})


def _check_min_in_sync(topic: str, config: Mapping[str, str], rf: int) -> None:
    raw = config.get("min_in_sync")
    if raw is None:
        return
    if not raw.isdigit() or not 1 <= int(raw) <= rf:
        raise _fail(INVALID_ARGUMENT,
                    f"topic {topic}: min_in_sync must be a whole number from 1 to the replication factor {rf}, "
                    f"got {raw!r}")


def min_in_sync(topic_config: Mapping[str, str], rf: int) -> int:
    """The topic's ``min_in_sync``: as configured, else a majority of its replicas."""
    raw = topic_config.get("min_in_sync")
    return int(raw) if raw is not None and raw.isdigit() else rf // 2 + 1


def _delete_topic(state: State, cmd: Mapping[str, Any]) -> Applied:
    name = _name(cmd, "topic")
    ts = _ts(cmd)
    topic = state.get(TOPIC, name)
    _check_version(topic, cmd, f"topic {name}")
    if topic is None:
        raise _fail(NOT_FOUND, f"topic {name} does not exist")
    edit = _Edit(state)
    for i in range(topic.spec["partitions"]):
        edit.delete(PARTITION, partition_name(name, i))
    edit.delete(TOPIC, name)
    return edit.finish(ts, {"name": name})


def _spu_id(cmd: Mapping[str, Any]) -> int:
    spu_id = _field(cmd, "id", int)
    if not 0 <= spu_id < 2**31:
        raise _fail(INVALID_ARGUMENT, f"SPU id {spu_id} must be 0 to 2^31-1")
    return spu_id


def _address(cmd: Mapping[str, Any], name: str) -> str:
    addr = _field(cmd, name, str)
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536 or len(addr) > ADDRESS_CHARS_MAX:
        raise _fail(INVALID_ARGUMENT, f"{name} {addr!r} must be host:port")
    return addr


def _register_spu(state: State, cmd: Mapping[str, Any]) -> Applied:
    spu_id = _spu_id(cmd)
    ts = _ts(cmd)
    rack = _field(cmd, "rack", (str, type(None)), optional=True)
    spec = {"id": spu_id, "rack": rack, "public_address": _address(cmd, "public_address"),
            "private_address": _address(cmd, "private_address")}
    current = state.get(SPU, spu_name(spu_id))
    edit = _Edit(state)
    if current is None:
        edit.put(SPU, spu_name(spu_id), spec, {"alive": True, "changed_ms": ts})
    else:
        if dict(current.spec) != spec:
            edit.put(SPU, spu_name(spu_id), spec, current.status)
        # An SPU registers as it starts: one that was already known has restarted, and may have
        # lost what it had not fsynced. The partitions it leads move to a new epoch, so that
        # its followers truncate against what it really has (as a Kafka broker epoch would).
        for p in sorted(state.all(PARTITION), key=lambda o: o.name):
            if p.status["leader"] == spu_id:
                status = dict(p.status)
                status["epoch"] = p.status["epoch"] + 1
                edit.put(PARTITION, p.name, p.spec, status)
    return edit.finish(ts, {"id": spu_id})


def _unregister_spu(state: State, cmd: Mapping[str, Any]) -> Applied:
    spu_id = _spu_id(cmd)
    ts = _ts(cmd)
    if state.get(SPU, spu_name(spu_id)) is None:
        raise _fail(NOT_FOUND, f"SPU {spu_id} is not registered")
    hosted = sorted(p.name for p in state.all(PARTITION) if spu_id in p.spec["replicas"])
    if hosted:
        raise _fail(IN_USE, f"SPU {spu_id} still holds replicas of {', '.join(hosted[:5])}"
                    + (f" and {len(hosted) - 5} more" if len(hosted) > 5 else "") + "; delete or move them first")
    edit = _Edit(state)
    edit.delete(SPU, spu_name(spu_id))
    return edit.finish(ts, {"id": spu_id})


def _set_spu_status(state: State, cmd: Mapping[str, Any]) -> Applied:
    spu_id = _spu_id(cmd)
    ts = _ts(cmd)
    alive = _field(cmd, "alive", bool)
    current = state.get(SPU, spu_name(spu_id))
    if current is None:
        raise _fail(NOT_FOUND, f"SPU {spu_id} is not registered")
    edit = _Edit(state)
    if current.status.get("alive") != alive:
        edit.put(SPU, current.name, current.spec, {"alive": alive, "changed_ms": ts})
    return edit.finish(ts, {"id": spu_id, "alive": alive})


def _partition(state: State, cmd: Mapping[str, Any]) -> MetaObject:
    name = _field(cmd, "partition", str)
    p = state.get(PARTITION, name)
    if p is None:
        raise _fail(NOT_FOUND, f"partition {name} does not exist")
    return p


def _elect_leader(state: State, cmd: Mapping[str, Any]) -> Applied:
    p = _partition(state, cmd)
    ts = _ts(cmd)
    epoch = _field(cmd, "epoch", int)
    leader = _field(cmd, "leader", (int, type(None)))
    if epoch != p.status["epoch"]:
        raise _fail(STALE_EPOCH, f"partition {p.name} is at epoch {p.status['epoch']}, the election assumed {epoch}")
    if leader is not None and leader not in p.status["isr"]:
        raise _fail(INVALID_ARGUMENT,
                    f"partition {p.name}: SPU {leader} is not in the in-sync set {p.status['isr']}")
    isr = _field(cmd, "isr", list, optional=True)
    if isr is not None:
        # The controller drops dead SPUs from the in-sync set as it elects (as Kafka's KIP-841
        # does): a shrink only, and the new leader stays in it.
        if (len(set(isr)) != len(isr) or not set(isr) <= set(p.status["isr"])
                or (leader is not None and leader not in isr) or not isr):
            raise _fail(INVALID_ARGUMENT,
                        f"partition {p.name}: the new in-sync set {isr!r} must be a non-empty part of "
                        f"{p.status['isr']} holding the new leader {leader}")
    edit = _Edit(state)
    status = dict(p.status)
    status.update(leader=leader, epoch=epoch + 1)
    if isr is not None:
        status["isr"] = [r for r in p.spec["replicas"] if r in isr]
    edit.put(PARTITION, p.name, p.spec, status)
    return edit.finish(ts, {"partition": p.name, "leader": leader, "epoch": epoch + 1})


def _reassign_partition(state: State, cmd: Mapping[str, Any]) -> Applied:
    """New replicas for a partition (self-healing): the in-sync set keeps the replicas that
    stay; new ones join it only after they have copied the log. The epoch bumps, so every
    replica (and a leader working from the old set) sees the change."""
    p = _partition(state, cmd)
    ts = _ts(cmd)
    epoch = _field(cmd, "epoch", int)
    replicas = _field(cmd, "replicas", list)
    if epoch != p.status["epoch"]:
        raise _fail(STALE_EPOCH, f"partition {p.name} is at epoch {p.status['epoch']}, the move assumed {epoch}")
    known = set(state.spu_ids())
    if (len(replicas) != len(p.spec["replicas"]) or len(set(replicas)) != len(replicas)
            or not all(isinstance(r, int) and not isinstance(r, bool) and r in known for r in replicas)):
        raise _fail(INVALID_ARGUMENT,
                    f"partition {p.name}: replicas {replicas!r} must be {len(p.spec['replicas'])} distinct "
                    "registered SPU ids")
    leader = p.status["leader"]
    if leader is None or leader not in replicas:
        raise _fail(INVALID_ARGUMENT,
                    f"partition {p.name}: a move keeps the live leader (now {leader}) among the replicas {replicas!r}")
    isr = [r for r in replicas if r in p.status["isr"]]
    edit = _Edit(state)
    spec = dict(p.spec)
    spec["replicas"] = list(replicas)
    status = dict(p.status)
    status.update(isr=isr, epoch=epoch + 1)
    edit.put(PARTITION, p.name, spec, status)
    return edit.finish(ts, {"partition": p.name, "replicas": list(replicas), "epoch": epoch + 1})


def _allocate_producer_ids(state: State, cmd: Mapping[str, Any]) -> Applied:
    ts = _ts(cmd)
    count = _field(cmd, "count", int)
    if not 1 <= count <= PRODUCER_IDS_PER_CALL_MAX:
        raise _fail(INVALID_ARGUMENT, f"allocate_producer_ids: count must be 1-{PRODUCER_IDS_PER_CALL_MAX}, got {count}")
    first = state.next_producer_id
    if first + count > PRODUCER_ID_MAX:
        raise _fail(INVALID_ARGUMENT, "allocate_producer_ids: producer ids are used up")
    new = dataclasses.replace(state, next_producer_id=first + count, clock_ms=max(state.clock_ms, ts))
    return Applied(new, Outcome(True, value={"first": first, "count": count}))


def _update_isr(state: State, cmd: Mapping[str, Any]) -> Applied:
    p = _partition(state, cmd)
    ts = _ts(cmd)
    epoch = _field(cmd, "epoch", int)
    requester = _field(cmd, "leader", int)
    isr = _field(cmd, "isr", list)
    if epoch != p.status["epoch"]:
        raise _fail(STALE_EPOCH, f"partition {p.name} is at epoch {p.status['epoch']}, the request has {epoch}")
    if requester != p.status["leader"]:
        raise _fail(NOT_PARTITION_LEADER,
                    f"SPU {requester} is not the leader of {p.name} (the leader is {p.status['leader']})")
    based_on = _field(cmd, "based_on", list, optional=True)
    if based_on is not None and sorted(based_on) != sorted(p.status["isr"]):
        # The leader computed the change from a set that has changed since (Kafka checks the
        # partition epoch of AlterPartition for the same reason).
        raise _fail(VERSION_CONFLICT, f"partition {p.name}: the in-sync set is {p.status['isr']}, the request was "
                                      f"based on {based_on}")
    if (not all(isinstance(r, int) and not isinstance(r, bool) for r in isr) or len(set(isr)) != len(isr)
            or not set(isr) <= set(p.spec["replicas"]) or requester not in isr):
        raise _fail(INVALID_ARGUMENT,
                    f"partition {p.name}: in-sync set {isr!r} must be distinct replicas {p.spec['replicas']} "
                    "including the leader")
    edit = _Edit(state)
    if sorted(isr) != sorted(p.status["isr"]):
        status = dict(p.status)
        status["isr"] = [r for r in p.spec["replicas"] if r in isr]
        edit.put(PARTITION, p.name, p.spec, status)
    return edit.finish(ts, {"partition": p.name, "isr": isr})


_BLOB_KINDS = (SMARTMODULE, POLICY)


def _blob_kind(cmd: Mapping[str, Any]) -> str:
    kind = _field(cmd, "kind", str)
    if kind not in _BLOB_KINDS:
        raise _fail(INVALID_ARGUMENT, f"kind {kind!r} cannot be stored this way (use one of {', '.join(_BLOB_KINDS)})")
    return kind


def _blob_name(cmd: Mapping[str, Any], kind: str) -> str:
    """SmartModules are stored as ``NAME@VERSION`` (each part a valid name); policies by name."""
    if kind != SMARTMODULE:
        return _name(cmd, kind)
    full = _field(cmd, "name", str)
    parts = full.split("@")
    if len(parts) != 2:
        raise _fail(INVALID_ARGUMENT, f"smartmodule name {full!r} must be NAME@VERSION")
    for part in parts:
        _name({"name": part}, "smartmodule")
    return full


def _check_smartmodule_spec(name: str, spec: Mapping[str, Any]) -> None:
    """The fields every SPU relies on: the module's bytes (base64) and their sha256 and size."""
    import base64
    import hashlib

    wasm_b64 = spec.get("wasm")
    if not isinstance(wasm_b64, str):
        raise _fail(INVALID_ARGUMENT, f"smartmodule {name}: spec.wasm (base64 of the module) is missing")
    try:
        wasm = base64.b64decode(wasm_b64, validate=True)
    except ValueError:
        raise _fail(INVALID_ARGUMENT, f"smartmodule {name}: spec.wasm is not base64") from None
    if len(wasm) > SMARTMODULE_BYTES_MAX:
        raise _fail(INVALID_ARGUMENT, f"smartmodule {name}: {len(wasm)} bytes is more than {SMARTMODULE_BYTES_MAX}")
    if not wasm.startswith(b"\0asm"):
        raise _fail(INVALID_ARGUMENT, f"smartmodule {name}: spec.wasm is not a WebAssembly binary")
    digest = hashlib.sha256(wasm).hexdigest()
    if spec.get("sha256") != digest or spec.get("size") != len(wasm):
        raise _fail(INVALID_ARGUMENT, f"smartmodule {name}: sha256/size must be {digest}/{len(wasm)}")


def _check_policy_version(name: str, spec: Mapping[str, Any], current: MetaObject | None) -> None:
    """A policy's version only goes forward, so a revoked (older) version can never be put back."""
    version = spec.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise _fail(INVALID_ARGUMENT, f"policy {name}: version must be a whole number >= 1, got {version!r}")
    if current is not None and version <= int(current.spec.get("version", 0)):
        raise _fail(VERSION_CONFLICT, f"policy {name}: version {version} is not newer than version "
                                      f"{current.spec.get('version')} in force; a policy's version only goes forward")


def _put_object(state: State, cmd: Mapping[str, Any]) -> Applied:
    kind = _blob_kind(cmd)
    name = _blob_name(cmd, kind)
    ts = _ts(cmd)
    spec = _field(cmd, "spec", dict)
    size = len(json.dumps(spec, separators=(",", ":")))
    if size > OBJECT_SPEC_BYTES_MAX:
        raise _fail(INVALID_ARGUMENT, f"{kind} {name}: spec is {size} bytes, more than {OBJECT_SPEC_BYTES_MAX}")
    if kind == SMARTMODULE:
        _check_smartmodule_spec(name, spec)
    current = state.get(kind, name)
    if kind == POLICY and name == ACTIVE_POLICY:
        _check_policy_version(name, spec, current)
    _check_version(current, cmd, f"{kind} {name}")
    edit = _Edit(state)
    edit.put(kind, name, spec, current.status if current else {"created_ms": ts})
    return edit.finish(ts, {"kind": kind, "name": name, "version": edit.version})


def _delete_object(state: State, cmd: Mapping[str, Any]) -> Applied:
    kind = _blob_kind(cmd)
    name = _blob_name(cmd, kind)
    ts = _ts(cmd)
    current = state.get(kind, name)
    _check_version(current, cmd, f"{kind} {name}")
    if current is None:
        raise _fail(NOT_FOUND, f"{kind} {name} does not exist")
    edit = _Edit(state)
    edit.delete(kind, name)
    return edit.finish(ts, {"kind": kind, "name": name})


def _barrier(state: State, cmd: Mapping[str, Any]) -> Applied:
    return _Edit(state).finish(_ts(cmd), {"version": state.version})


OPS: Mapping[str, Callable[[State, Mapping[str, Any]], Applied]] = {
    "create_topic": _create_topic,
    "delete_topic": _delete_topic,
    "register_spu": _register_spu,
    "unregister_spu": _unregister_spu,
    "set_spu_status": _set_spu_status,
    "elect_leader": _elect_leader,
    "update_isr": _update_isr,
    "reassign_partition": _reassign_partition,
    "allocate_producer_ids": _allocate_producer_ids,
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
    except _Invalid as e:
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
