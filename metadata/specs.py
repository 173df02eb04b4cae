"""Typed values of the cluster's objects: the spec (and, for partitions and SPUs, the status)
of each kind, with every field check in one place.

The state, the Raft log and the wire keep carrying plain JSON dicts (objects.py); these are
the typed view of them. ``X.from_dict(d)`` reads and checks a dict, ``x.to_dict()`` gives it
back, and building an ``X(...)`` directly runs the same checks, so a value of these types is
always valid. A bad field raises :class:`SpecError` (a ``ValueError``) whose ``field`` names
it and whose message says what is wrong; ``apply`` turns it into an ``invalid_argument``
outcome, prefixed with the object it is about (``topic orders: partitions must be ...``).

The checks are those ``apply`` has always made (docs/metadata.md lists the limits), so every
command it accepted before it still accepts. Fields no command sets (a partition's status)
are checked for the shape ``apply`` gives them.

``smartmodule`` and ``policy`` specs are open: keys beyond the known fields are kept as they
are in ``extra``. Only the policy object ``active`` is a :class:`PolicySpec`; other policy
objects are drafts, opaque to the cluster.

Pure and dependency-free (the standard library and objects.py): the client, the SC and the
SPU can all import it.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Iterable, Mapping

from .objects import partition_name

__all__ = ["SpecError", "TopicSpec", "PartitionSpec", "PartitionStatus", "LostReplica", "SpuSpec", "SpuStatus",
           "SmartModuleSpec", "PolicySpec", "check_name", "check_spu_id", "check_address", "check_storage_id",
           "whole_number"]

# Limits on what a spec may hold (TIGER_STYLE: everything bounded). docs/metadata.md lists them.
NAME_CHARS_MAX = 200
PARTITIONS_MAX = 1000
REPLICATION_FACTOR_MAX = 7
CONFIG_ENTRIES_MAX = 64
CONFIG_VALUE_CHARS_MAX = 1024
ADDRESS_CHARS_MAX = 255
SMARTMODULE_BYTES_MAX = 2 << 20
REASON_CHARS_MAX = 300  # of a lost replica's reason
SPU_ID_LIMIT = 2**31  # SPU ids are 0 to 2^31-1

_NAME = re.compile(r"[A-Za-z0-9._-]+")  # used with fullmatch: "$" would accept a trailing newline
_STORAGE_ID = re.compile(r"[0-9a-f]{32}")
_WASM_MAGIC = b"\0asm"


class SpecError(ValueError):
    """A field of a spec or status is wrong. ``field`` names it (``config.min_in_sync`` for a
    key of a map, ``isr`` for a list); the message says what is wrong and what is allowed."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


# ---------------------------------------------------------------- field checks


def _is_int(value: Any) -> bool:
    # bool is an int in Python; a count or an id must not accept True.
    return isinstance(value, int) and not isinstance(value, bool)


def whole_number(text: str) -> int | None:
    """``text`` as a whole number if it is only digits, else None. (``str.isdigit`` accepts
    characters ``int`` refuses, such as superscripts: those are not whole numbers here.)"""
    if not text.isdigit():
        return None
    try:
        return int(text)
    except ValueError:
        return None


def check_name(value: Any, what: str, field_name: str = "name") -> str:
    """A name of a topic, an SPU's object, a SmartModule or a policy."""
    if (not isinstance(value, str) or not value or len(value) > NAME_CHARS_MAX or value in (".", "..")
            or not _NAME.fullmatch(value)):
        raise SpecError(field_name, f"{what} name {value!r} is invalid: use 1-{NAME_CHARS_MAX} of A-Z a-z 0-9 . _ - "
                                    "(and not '.' or '..')")
    return value


def check_spu_id(value: Any, field_name: str = "id") -> int:
    if not _is_int(value):
        raise SpecError(field_name, f"{field_name} must be an SPU id (a whole number), got {value!r}")
    if not 0 <= value < SPU_ID_LIMIT:
        where = "" if field_name == "id" else f"{field_name}: "
        raise SpecError(field_name, f"{where}SPU id {value} must be 0 to 2^31-1")
    return value


def _spu_ids(value: Any, field_name: str, problem: str, *, lo: int = 0,
             hi: int = REPLICATION_FACTOR_MAX) -> tuple[int, ...]:
    """A list of ``lo``-``hi`` distinct SPU ids (the type is checked before anything hashes it)."""
    if (not isinstance(value, (list, tuple)) or not lo <= len(value) <= hi
            or not all(_is_int(r) and 0 <= r < SPU_ID_LIMIT for r in value) or len(set(value)) != len(value)):
        raise SpecError(field_name, f"{field_name} {list(value) if isinstance(value, tuple) else value!r} {problem}")
    return tuple(value)


def check_address(value: Any, field_name: str) -> str:
    """``host:port``, port 1-65535, at most ADDRESS_CHARS_MAX characters."""
    if not isinstance(value, str):
        raise SpecError(field_name, f"{field_name} {value!r} must be host:port")
    host, sep, port = value.rpartition(":")
    number = whole_number(port)
    if not sep or not host or number is None or not 0 < number < 65536 or len(value) > ADDRESS_CHARS_MAX:
        raise SpecError(field_name, f"{field_name} {value!r} must be host:port")
    return value


def check_storage_id(value: Any, field_name: str = "storage_id") -> str:
    """The random id of an SPU's data directory: 32 lowercase hex digits."""
    if not isinstance(value, str) or not _STORAGE_ID.fullmatch(value):
        raise SpecError(field_name, f"{field_name} {value!r} must be 32 lowercase hex digits")
    return value


def _check_type(value: Any, field_name: str, kind: type, what: str, *, optional: bool = True) -> None:
    if value is None and optional:
        return
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise SpecError(field_name, f"{field_name} must be {what}, got {type(value).__name__}")


def _non_negative(value: Any, field_name: str) -> int:
    if not _is_int(value) or value < 0:
        raise SpecError(field_name, f"{field_name} must be a whole number >= 0, got {value!r}")
    return value


def _mapping(d: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(d, Mapping):
        raise SpecError(what, f"a {what} is a JSON object, got {type(d).__name__}")
    return d


def _required(d: Mapping[str, Any], name: str, prefix: str = "") -> Any:
    if name not in d:
        raise SpecError(prefix + name, f"{prefix}{name} is missing")
    return d[name]


def _frozen_map(value: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(value))


def _extra(d: Mapping[str, Any], known: Iterable[str]) -> dict[str, Any]:
    known = set(known)
    return {k: v for k, v in d.items() if k not in known}


def _check_extra(extra: Any, known: Iterable[str]) -> None:
    if not isinstance(extra, Mapping) or not all(isinstance(k, str) for k in extra):
        raise SpecError("extra", "extra must map text keys to JSON values")
    clash = sorted(set(extra) & set(known))
    if clash:
        raise SpecError(clash[0], f"{clash[0]} is a field of its own, not an extra key")


# ---------------------------------------------------------------- topic


@dataclass(frozen=True)
class TopicSpec:
    """``topic``: how many partitions, how many replicas of each, and its config (a string
    map of the keys of metadata/topic_config.py, each value checked there; pairs that depend
    on the cluster defaults are checked by ``topic_config.resolve`` in apply)."""

    partitions: int
    replication_factor: int
    config: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not _is_int(self.partitions) or not 1 <= self.partitions <= PARTITIONS_MAX:
            raise SpecError("partitions", f"partitions must be 1-{PARTITIONS_MAX}, got {self.partitions!r}")
        rf = self.replication_factor
        if not _is_int(rf) or not 1 <= rf <= REPLICATION_FACTOR_MAX:
            raise SpecError("replication_factor", f"replication factor must be 1-{REPLICATION_FACTOR_MAX}, got {rf!r}")
        config = self.config
        if not isinstance(config, Mapping) or len(config) > CONFIG_ENTRIES_MAX or not all(
                isinstance(k, str) and isinstance(v, str) and len(k) <= NAME_CHARS_MAX
                and len(v) <= CONFIG_VALUE_CHARS_MAX for k, v in config.items()):
            raise SpecError("config", f"config must be at most {CONFIG_ENTRIES_MAX} string pairs")
        from .topic_config import check_entries  # the one table of keys (it imports SpecError from here)

        check_entries(config, rf)  # every key known, every value allowed; min_in_sync at most rf
        object.__setattr__(self, "config", _frozen_map(config))

    @property
    def min_in_sync(self) -> int:
        """``config.min_in_sync``, else a majority of the replicas."""
        return min_in_sync(self.config, self.replication_factor)

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> "TopicSpec":
        d = _mapping(d, "topic spec")
        config = d.get("config")
        return TopicSpec(_required(d, "partitions"), _required(d, "replication_factor"),
                         {} if config is None else config)

    def to_dict(self) -> dict[str, Any]:
        return {"partitions": self.partitions, "replication_factor": self.replication_factor,
                "config": dict(self.config)}


def min_in_sync(config: Mapping[str, str], rf: int) -> int:
    """A topic's ``min_in_sync``: as configured, else a majority of its replicas."""
    raw = config.get("min_in_sync")
    number = whole_number(raw) if isinstance(raw, str) else None
    return number if number is not None else rf // 2 + 1


# ---------------------------------------------------------------- partition


@dataclass(frozen=True)
class PartitionSpec:
    """``partition`` ``<topic>-<n>``: its topic, its index and its replicas (distinct SPU ids;
    the first is the preferred leader)."""

    topic: str
    partition: int
    replicas: tuple[int, ...]
    # The state version of the command that created the partition (create_topic or
    # add_partitions); 0 for partitions created before it was recorded. An SPU that finds a log
    # of another incarnation on disk deletes it (the topic was deleted and recreated meanwhile).
    incarnation: int = 0
    # A move in progress (metadata/move_ops.py, docs/rebalance.md): the replica list it ends
    # with, the list it started from, and the copy throttle of the replicas being added
    # (bytes/s). During a move ``replicas`` is ``moving_from`` followed by the new replicas.
    target: tuple[int, ...] | None = None
    moving_from: tuple[int, ...] | None = None
    throttle: int = 0

    def __post_init__(self) -> None:
        check_name(self.topic, "topic", "topic")
        if not _is_int(self.partition) or not 0 <= self.partition < PARTITIONS_MAX:
            raise SpecError("partition", f"partition must be 0-{PARTITIONS_MAX - 1}, got {self.partition!r}")
        object.__setattr__(self, "replicas", _spu_ids(
            self.replicas, "replicas", f"must be 1-{REPLICATION_FACTOR_MAX} distinct SPU ids", lo=1))
        _non_negative(self.incarnation, "incarnation")
        if (self.target is None) != (self.moving_from is None):
            raise SpecError("target", "target and moving_from come together")
        if self.target is not None:
            for name in ("target", "moving_from"):
                object.__setattr__(self, name, _spu_ids(
                    getattr(self, name), name, f"must be 1-{REPLICATION_FACTOR_MAX} distinct SPU ids", lo=1))
            assert self.moving_from is not None
            if set(self.replicas) != set(self.target) | set(self.moving_from):
                raise SpecError("replicas", f"replicas {list(self.replicas)} must be moving_from "
                                            f"{list(self.moving_from)} and target {list(self.target)} together")
        _non_negative(self.throttle, "throttle")

    @property
    def name(self) -> str:
        return partition_name(self.topic, self.partition)

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> "PartitionSpec":
        d = _mapping(d, "partition spec")
        return PartitionSpec(_required(d, "topic"), _required(d, "partition"), _required(d, "replicas"),
                             d.get("incarnation", 0), d.get("target"), d.get("moving_from"), d.get("throttle", 0))

    def to_dict(self) -> dict[str, Any]:
        """``incarnation`` only when recorded (older partitions keep the dict they had)."""
        out: dict[str, Any] = {"topic": self.topic, "partition": self.partition, "replicas": list(self.replicas)}
        if self.incarnation:
            out["incarnation"] = self.incarnation
        if self.target is not None and self.moving_from is not None:
            out["target"], out["moving_from"] = list(self.target), list(self.moving_from)
        if self.throttle:
            out["throttle"] = self.throttle
        return out


@dataclass(frozen=True)
class LostReplica:
    """A replica that lost data and has not caught up since (a partition's ``status.lost``)."""

    spu: int
    reason: str
    ts: int

    def __post_init__(self) -> None:
        check_spu_id(self.spu, "lost.spu")
        if not isinstance(self.reason, str) or len(self.reason) > REASON_CHARS_MAX:
            raise SpecError("lost.reason", f"lost.reason must be text of at most {REASON_CHARS_MAX} characters, "
                                           f"got {self.reason!r:.80}")
        _non_negative(self.ts, "lost.ts")

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> "LostReplica":
        d = _mapping(d, "lost replica")
        return LostReplica(_required(d, "spu", "lost."), _required(d, "reason", "lost."), _required(d, "ts", "lost."))

    def to_dict(self) -> dict[str, Any]:
        return {"spu": self.spu, "reason": self.reason, "ts": self.ts}


@dataclass(frozen=True)
class PartitionStatus:
    """What the cluster observed of a partition: its ``leader`` (None: offline), ``epoch``,
    in-sync set ``isr`` (in replica order), the replicas that ``lost`` data, and the epoch of
    the last operator's unclean election. Where leadership goes is apply's business
    (partition_ops.py); this checks each field's shape."""

    leader: int | None
    epoch: int
    isr: tuple[int, ...]
    lost: tuple[LostReplica, ...] = ()
    last_unclean_epoch: int | None = None

    def __post_init__(self) -> None:
        if self.leader is not None:
            check_spu_id(self.leader, "leader")
        _non_negative(self.epoch, "epoch")
        object.__setattr__(self, "isr", _spu_ids(
            self.isr, "isr", f"must be at most {REPLICATION_FACTOR_MAX} distinct SPU ids"))
        if not isinstance(self.lost, (list, tuple)) or not all(isinstance(e, LostReplica) for e in self.lost):
            raise SpecError("lost", "lost must be a list of lost replicas")
        if len({e.spu for e in self.lost}) != len(self.lost):
            raise SpecError("lost", f"lost names an SPU twice: {[e.spu for e in self.lost]}")
        object.__setattr__(self, "lost", tuple(self.lost))
        if self.last_unclean_epoch is not None:
            _non_negative(self.last_unclean_epoch, "last_unclean_epoch")

    @property
    def lost_spus(self) -> dict[int, str]:
        """SPU id -> why its replica lost data."""
        return {e.spu: e.reason for e in self.lost}

    def without_lost(self, spu_ids: Iterable[int]) -> "PartitionStatus":
        """This status with the ``lost`` entries of ``spu_ids`` dropped (they caught up again,
        or left the replica list)."""
        gone = set(spu_ids)
        return dataclasses.replace(self, lost=tuple(e for e in self.lost if e.spu not in gone))

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> "PartitionStatus":
        d = _mapping(d, "partition status")
        lost = d.get("lost", [])
        if not isinstance(lost, list):
            raise SpecError("lost", f"lost must be a list, got {type(lost).__name__}")
        return PartitionStatus(_required(d, "leader"), _required(d, "epoch"), _required(d, "isr"),
                               tuple(LostReplica.from_dict(e) for e in lost), d.get("last_unclean_epoch"))

    def to_dict(self) -> dict[str, Any]:
        """``lost`` and ``last_unclean_epoch`` only when there is something to say, as apply
        has always stored them."""
        out: dict[str, Any] = {"leader": self.leader, "epoch": self.epoch, "isr": list(self.isr)}
        if self.lost:
            out["lost"] = [e.to_dict() for e in self.lost]
        if self.last_unclean_epoch is not None:
            out["last_unclean_epoch"] = self.last_unclean_epoch
        return out


# ---------------------------------------------------------------- SPU


@dataclass(frozen=True)
class SpuSpec:
    """``spu``: its id, rack (None: no rack), the addresses clients and other SPUs use, and
    the storage id of its data directory (None until it registers with one)."""

    id: int
    rack: str | None
    public_address: str
    private_address: str
    storage_id: str | None = None
    # Marked by an operator (`kolk cluster spu drain`): no new replicas go to it and the
    # rebalance plan moves every replica off it (docs/rebalance.md).
    draining: bool = False

    def __post_init__(self) -> None:
        check_spu_id(self.id)
        _check_type(self.draining, "draining", bool, "true or false", optional=False)
        _check_type(self.rack, "rack", str, "text or null")
        check_address(self.public_address, "public_address")
        check_address(self.private_address, "private_address")
        if self.storage_id is not None:
            check_storage_id(self.storage_id)

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> "SpuSpec":
        d = _mapping(d, "SPU spec")
        return SpuSpec(_required(d, "id"), d.get("rack"), _required(d, "public_address"),
                       _required(d, "private_address"), d.get("storage_id"), d.get("draining", False))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "rack": self.rack, "public_address": self.public_address,
                               "private_address": self.private_address}
        if self.storage_id is not None:
            out["storage_id"] = self.storage_id
        if self.draining:
            out["draining"] = True
        return out


@dataclass(frozen=True)
class SpuStatus:
    """Whether the SC leader hears the SPU's heartbeats, and since when (ms)."""

    alive: bool
    changed_ms: int

    def __post_init__(self) -> None:
        _check_type(self.alive, "alive", bool, "true or false", optional=False)
        _non_negative(self.changed_ms, "changed_ms")

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> "SpuStatus":
        d = _mapping(d, "SPU status")
        return SpuStatus(_required(d, "alive"), _required(d, "changed_ms"))

    def to_dict(self) -> dict[str, Any]:
        return {"alive": self.alive, "changed_ms": self.changed_ms}


# ---------------------------------------------------------------- SmartModule


_SMARTMODULE_FIELDS = ("wasm", "sha256", "size", "kind", "init", "source", "created_by", "description")


@dataclass(frozen=True)
class SmartModuleSpec:
    """A stored SmartModule (``NAME@VERSION``): the module's bytes with their sha256 and size,
    which every SPU relies on, and what ``kolk smartmodule create`` says about it. In JSON the
    bytes travel as base64 (``wasm``)."""

    wasm: bytes
    sha256: str
    size: int
    kind: str | None = None
    init: bool | None = None
    source: str | None = None
    created_by: str | None = None
    description: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        wasm = self.wasm
        if not isinstance(wasm, (bytes, bytearray)):
            raise SpecError("wasm", "spec.wasm (base64 of the module) is missing")
        if len(wasm) > SMARTMODULE_BYTES_MAX:
            raise SpecError("wasm", f"spec.wasm: {len(wasm)} bytes is more than {SMARTMODULE_BYTES_MAX}")
        if not wasm.startswith(_WASM_MAGIC):
            raise SpecError("wasm", "spec.wasm is not a WebAssembly binary")
        digest = hashlib.sha256(wasm).hexdigest()
        if self.sha256 != digest or self.size != len(wasm) or not _is_int(self.size):
            raise SpecError("sha256" if self.sha256 != digest else "size",
                            f"sha256/size must be {digest}/{len(wasm)}")
        object.__setattr__(self, "wasm", bytes(wasm))
        _check_type(self.kind, "kind", str, "text")
        _check_type(self.init, "init", bool, "true or false")
        for name in ("source", "created_by", "description"):
            _check_type(getattr(self, name), name, str, "text")
        _check_extra(self.extra, _SMARTMODULE_FIELDS)
        object.__setattr__(self, "extra", _frozen_map(self.extra))

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> "SmartModuleSpec":
        d = _mapping(d, "smartmodule spec")
        wasm_b64 = d.get("wasm")
        if not isinstance(wasm_b64, str):
            raise SpecError("wasm", "spec.wasm (base64 of the module) is missing")
        try:
            wasm = base64.b64decode(wasm_b64, validate=True)
        except (ValueError, binascii.Error):
            raise SpecError("wasm", "spec.wasm is not base64") from None
        return SmartModuleSpec(wasm, d.get("sha256"), d.get("size"), d.get("kind"), d.get("init"), d.get("source"),
                               d.get("created_by"), d.get("description"), _extra(d, _SMARTMODULE_FIELDS))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"wasm": base64.b64encode(self.wasm).decode(), "sha256": self.sha256,
                               "size": self.size}
        for name in _SMARTMODULE_FIELDS[3:]:
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        out.update(self.extra)
        return out


# ---------------------------------------------------------------- policy


_POLICY_FIELDS = ("version", "source", "sha256")


@dataclass(frozen=True)
class PolicySpec:
    """The access policy in force (the object ``policy/active``): its version, which only
    goes forward, and the policy file's text with its sha256. That the text parses and the
    sha256 matches is the SC's check before it proposes the policy (security/policy.py,
    which the metadata does not import)."""

    version: int
    source: str | None = None
    sha256: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not _is_int(self.version) or self.version < 1:
            raise SpecError("version", f"version must be a whole number >= 1, got {self.version!r}")
        _check_type(self.source, "source", str, "text")
        _check_type(self.sha256, "sha256", str, "text")
        _check_extra(self.extra, _POLICY_FIELDS)
        object.__setattr__(self, "extra", _frozen_map(self.extra))

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> "PolicySpec":
        d = _mapping(d, "policy spec")
        return PolicySpec(d.get("version"), d.get("source"), d.get("sha256"), _extra(d, _POLICY_FIELDS))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"version": self.version}
        if self.source is not None:
            out["source"] = self.source
        if self.sha256 is not None:
            out["sha256"] = self.sha256
        out.update(self.extra)
        return out
