"""What every command handler shares: outcomes and events, the error codes, the field checks
that name what was wrong, and :class:`Edit`, which collects one command's object changes and
builds the next :class:`State`. Pure: no I/O, no clock, no randomness (metadata/apply.py)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from .objects import PARTITION, MetaObject, State
from .specs import SpecError, check_name, check_spu_id

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
LIMIT_EXCEEDED = "limit_exceeded"



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


class Invalid(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def fail(code: str, message: str) -> Invalid:
    return Invalid(code, message)


def invalid_spec(e: SpecError, about: str = "") -> Invalid:
    """A spec's bad field as an ``invalid_argument`` outcome, prefixed with what it is about
    (``topic orders``)."""
    return Invalid(INVALID_ARGUMENT, f"{about}: {e.message}" if about else e.message)


# ---------------------------------------------------------------- field checks


def get_field(cmd: Mapping[str, Any], name: str, kind: type | tuple[type, ...], *, optional: bool = False) -> Any:
    if name not in cmd:
        if optional:
            return None
        raise fail(INVALID_COMMAND, f"{cmd.get('op')}: field {name!r} is missing")
    value = cmd[name]
    # bool is an int in Python; a count must not accept True.
    if isinstance(value, bool) and kind is not bool and (kind is int or (isinstance(kind, tuple) and int in kind)):
        raise fail(INVALID_COMMAND, f"{cmd.get('op')}: field {name!r} must be {type_name(kind)}, got a boolean")
    if not isinstance(value, kind):
        raise fail(INVALID_COMMAND,
                    f"{cmd.get('op')}: field {name!r} must be {type_name(kind)}, got {type(value).__name__}")
    return value


def type_name(kind: type | tuple[type, ...]) -> str:
    if isinstance(kind, tuple):
        return " or ".join(k.__name__ for k in kind)
    return kind.__name__


def get_name(cmd: Mapping[str, Any], what: str, field_name: str = "name") -> str:
    name = get_field(cmd, field_name, str)
    try:
        return check_name(name, what, field_name)
    except SpecError as e:
        raise fail(INVALID_ARGUMENT, e.message) from None


def get_ts(cmd: Mapping[str, Any]) -> int:
    ts = get_field(cmd, "ts", int)
    if ts < 0:
        raise fail(INVALID_COMMAND, f"{cmd.get('op')}: ts {ts} is negative")
    return ts


def check_version(obj: MetaObject | None, cmd: Mapping[str, Any], what: str) -> None:
    expected = get_field(cmd, "expected_version", int, optional=True)
    if expected is None:
        return
    actual = -1 if obj is None else obj.version
    if expected != actual:
        now = "does not exist" if obj is None else f"is at version {actual}"
        raise fail(VERSION_CONFLICT, f"{what} {now}; the update expected version {expected}")


# ---------------------------------------------------------------- state edits


class Edit:
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



def get_spu_id(cmd: Mapping[str, Any]) -> int:
    spu_id = get_field(cmd, "id", int)
    try:
        return check_spu_id(spu_id)
    except SpecError as e:
        raise fail(INVALID_ARGUMENT, e.message) from None



def get_partition(state: State, cmd: Mapping[str, Any]) -> MetaObject:
    name = get_field(cmd, "partition", str)
    p = state.get(PARTITION, name)
    if p is None:
        raise fail(NOT_FOUND, f"partition {name} does not exist")
    return p

