"""The typed specs and statuses (metadata/specs.py): every valid value survives to_dict and
from_dict (and JSON between them), every invalid field is refused with a SpecError naming it,
and apply refuses, never raises on, the inputs that used to crash its checks."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any, Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kolk.metadata.apply import apply
from kolk.metadata.objects import PARTITION, State
from kolk.metadata.specs import check_name, check_storage_id
from kolk.metadata.specs import (LostReplica, PartitionSpec, PartitionStatus, PolicySpec, SmartModuleSpec, SpecError,
                                 SpuSpec, SpuStatus, TopicSpec)

from kolk.metadata.topic_config import KEYS  # noqa: E402

SPU_ID = st.integers(0, 2**31 - 1)
NAME = st.text("abcXYZ019._-", min_size=1, max_size=200).filter(lambda n: n not in (".", ".."))
EXTRA_VALUE = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=10),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                        max_size=3), max_leaves=8)


@st.composite
def topics(draw: st.DrawFn) -> TopicSpec:
    rf = draw(st.integers(1, 7))
    # Keys of the config table (metadata/topic_config.py), each with a value it allows.
    config = {}
    for k in KEYS:
        if k.name == "min_in_sync" or not draw(st.booleans()):
            continue
        config[k.name] = draw(st.sampled_from(k.choices) if k.type == "choice" else
                              st.integers(k.lo, k.hi).map(str) | st.just("-1" if k.minus_one else str(k.lo)))
    if draw(st.booleans()):
        config["min_in_sync"] = str(draw(st.integers(1, rf)))
    return TopicSpec(draw(st.integers(1, 1000)), rf, config)


partition_specs = st.builds(PartitionSpec, NAME, st.integers(0, 999),
                            st.lists(SPU_ID, min_size=1, max_size=7, unique=True).map(tuple))
lost_replicas = st.builds(LostReplica, SPU_ID, st.text(max_size=300), st.integers(0, 2**63))
partition_statuses = st.builds(
    PartitionStatus, st.none() | SPU_ID, st.integers(0, 2**40), st.lists(SPU_ID, max_size=7, unique=True).map(tuple),
    st.lists(lost_replicas, max_size=4, unique_by=lambda e: e.spu).map(tuple), st.none() | st.integers(0, 2**40))
ADDRESS = st.builds(lambda host, port: f"{host}:{port}", st.text(min_size=1, max_size=100), st.integers(1, 65535))
spu_specs = st.builds(SpuSpec, SPU_ID, st.none() | st.text(max_size=50), ADDRESS, ADDRESS,
                      st.none() | st.text("0123456789abcdef", min_size=32, max_size=32))
spu_statuses = st.builds(SpuStatus, st.booleans(), st.integers(0, 2**63))


@st.composite
def smartmodules(draw: st.DrawFn) -> SmartModuleSpec:
    wasm = b"\0asm" + draw(st.binary(max_size=200))
    known = {"wasm", "sha256", "size", "kind", "init", "source", "created_by", "description"}
    text = st.none() | st.text(max_size=30)
    return SmartModuleSpec(wasm, hashlib.sha256(wasm).hexdigest(), len(wasm), draw(text),
                           draw(st.none() | st.booleans()), draw(text), draw(text), draw(text),
                           draw(st.dictionaries(st.text(max_size=10).filter(lambda k: k not in known), EXTRA_VALUE,
                                                max_size=3)))


policies = st.builds(PolicySpec, st.integers(1, 2**40), st.none() | st.text(max_size=100),
                     st.none() | st.text("0123456789abcdef", min_size=64, max_size=64),
                     st.dictionaries(st.text(max_size=10).filter(lambda k: k not in ("version", "source", "sha256")),
                                     EXTRA_VALUE, max_size=3))

KINDS = {TopicSpec: topics(), PartitionSpec: partition_specs, PartitionStatus: partition_statuses, SpuSpec: spu_specs,
         SpuStatus: spu_statuses, SmartModuleSpec: smartmodules(), PolicySpec: policies}


@pytest.mark.parametrize("cls", list(KINDS), ids=lambda c: c.__name__)
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_round_trip(cls: type, data: st.DataObject) -> None:
    """value -> to_dict -> JSON -> from_dict gives the value back, and the dict back too."""
    value = data.draw(KINDS[cls])
    d = value.to_dict()
    again = cls.from_dict(json.loads(json.dumps(d)))
    assert again == value
    assert again.to_dict() == d


# (class, field the error must name, how to spoil a valid dict)
def _set(key: str, value: Any) -> Callable[[dict], None]:
    def spoil(d: dict) -> None:
        d[key] = value
    return spoil


def _drop(key: str) -> Callable[[dict], None]:
    return lambda d: d.pop(key)


def _config(value: Any) -> Callable[[dict], None]:
    def spoil(d: dict) -> None:
        d["config"] = {**d["config"], "min_in_sync": value}
    return spoil


def _wasm(wasm: bytes, keep_digest: bool = False) -> Callable[[dict], None]:
    def spoil(d: dict) -> None:
        d["wasm"] = base64.b64encode(wasm).decode()
        if not keep_digest:
            d["sha256"], d["size"] = hashlib.sha256(wasm).hexdigest(), len(wasm)
    return spoil


def _lost(entry: dict) -> Callable[[dict], None]:
    return lambda d: d.update(lost=[entry])


BAD: list[tuple[type, str, Callable[[dict], None]]] = [
    (TopicSpec, "partitions", _set("partitions", 0)),
    (TopicSpec, "partitions", _set("partitions", 1001)),
    (TopicSpec, "partitions", _set("partitions", "2")),
    (TopicSpec, "partitions", _set("partitions", True)),
    (TopicSpec, "partitions", _drop("partitions")),
    (TopicSpec, "replication_factor", _set("replication_factor", 8)),
    (TopicSpec, "replication_factor", _set("replication_factor", 0)),
    (TopicSpec, "config", _set("config", {"k": 5})),
    (TopicSpec, "config", _set("config", {f"k{i}": "v" for i in range(65)})),
    (TopicSpec, "config", _set("config", {"k": "v" * 1025})),
    (TopicSpec, "config", _set("config", ["not", "a", "map"])),
    (TopicSpec, "config.min_in_sync", _config("0")),
    (TopicSpec, "config.min_in_sync", _config("8")),
    (TopicSpec, "config.min_in_sync", _config("two")),
    (TopicSpec, "config.min_in_sync", _config("²")),
    (PartitionSpec, "topic", _set("topic", "no/slash")),
    (PartitionSpec, "topic", _set("topic", "..")),
    (PartitionSpec, "topic", _set("topic", "")),
    (PartitionSpec, "partition", _set("partition", -1)),
    (PartitionSpec, "partition", _set("partition", 1000)),
    (PartitionSpec, "replicas", _set("replicas", [])),
    (PartitionSpec, "replicas", _set("replicas", [1, 1])),
    (PartitionSpec, "replicas", _set("replicas", list(range(8)))),
    (PartitionSpec, "replicas", _set("replicas", [-1])),
    (PartitionSpec, "replicas", _set("replicas", [True])),
    (PartitionSpec, "replicas", _set("replicas", [[1]])),
    (PartitionSpec, "replicas", _drop("replicas")),
    (PartitionStatus, "leader", _set("leader", -1)),
    (PartitionStatus, "leader", _set("leader", 2**31)),
    (PartitionStatus, "leader", _set("leader", "1")),
    (PartitionStatus, "epoch", _set("epoch", -1)),
    (PartitionStatus, "epoch", _set("epoch", 1.5)),
    (PartitionStatus, "isr", _set("isr", [2, 2])),
    (PartitionStatus, "isr", _set("isr", [[2]])),
    (PartitionStatus, "lost", _set("lost", {"spu": 1})),
    (PartitionStatus, "lost", _set("lost", [{"spu": 1, "reason": "x", "ts": 1}, {"spu": 1, "reason": "y", "ts": 2}])),
    (PartitionStatus, "lost.spu", _lost({"spu": -3, "reason": "x", "ts": 1})),
    (PartitionStatus, "lost.reason", _lost({"spu": 1, "reason": "x" * 301, "ts": 1})),
    (PartitionStatus, "lost.ts", _lost({"spu": 1, "reason": "x", "ts": -1})),
    (PartitionStatus, "lost.ts", _lost({"spu": 1, "reason": "x"})),
    (PartitionStatus, "last_unclean_epoch", _set("last_unclean_epoch", -1)),
    (SpuSpec, "id", _set("id", 2**31)),
    (SpuSpec, "id", _set("id", False)),
    (SpuSpec, "rack", _set("rack", 3)),
    (SpuSpec, "public_address", _set("public_address", "nohost")),
    (SpuSpec, "public_address", _set("public_address", "h:0")),
    (SpuSpec, "public_address", _set("public_address", "h:65536")),
    (SpuSpec, "public_address", _set("public_address", "h:²")),
    (SpuSpec, "private_address", _set("private_address", ":9000")),
    (SpuSpec, "private_address", _set("private_address", "h:" + "1" * 300)),
    (SpuSpec, "storage_id", _set("storage_id", "X" * 32)),
    (SpuStatus, "alive", _set("alive", 1)),
    (SpuStatus, "changed_ms", _set("changed_ms", -5)),
    (SmartModuleSpec, "wasm", _drop("wasm")),
    (SmartModuleSpec, "wasm", _set("wasm", "not base64!")),
    (SmartModuleSpec, "wasm", _wasm(b"\0asm" + bytes(2 << 20))),
    (SmartModuleSpec, "wasm", _wasm(b"MZ not wasm")),
    (SmartModuleSpec, "sha256", _wasm(b"\0asm\x01\0\0\0", keep_digest=True)),
    (SmartModuleSpec, "sha256", _set("sha256", "0" * 64)),
    (SmartModuleSpec, "size", lambda d: d.update(size=d["size"] + 1)),
    (SmartModuleSpec, "kind", _set("kind", 5)),
    (SmartModuleSpec, "init", _set("init", "yes")),
    (SmartModuleSpec, "source", _set("source", ["a.c"])),
    (SmartModuleSpec, "description", _set("description", {})),
    (PolicySpec, "version", _set("version", 0)),
    (PolicySpec, "version", _set("version", "2")),
    (PolicySpec, "version", _set("version", True)),
    (PolicySpec, "version", _drop("version")),
    (PolicySpec, "source", _set("source", 7)),
    (PolicySpec, "sha256", _set("sha256", 1)),
]


@pytest.mark.parametrize("case", BAD, ids=[f"{c.__name__}.{f}-{i}" for i, (c, f, _) in enumerate(BAD)])
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_invalid_field_is_refused_naming_it(case: tuple, data: st.DataObject) -> None:
    """Spoil one field of any valid value: from_dict raises SpecError (a ValueError) whose
    ``field`` and message name that field."""
    cls, field_name, spoil = case
    d = json.loads(json.dumps(data.draw(KINDS[cls]).to_dict()))
    spoil(d)
    with pytest.raises(SpecError) as e:
        cls.from_dict(d)
    assert isinstance(e.value, ValueError)
    assert e.value.field == field_name
    last = field_name.rsplit(".", 1)[-1]
    assert last in str(e.value) or last.replace("_", " ") in str(e.value), str(e.value)


def test_not_a_mapping_is_refused() -> None:
    for cls in KINDS:
        with pytest.raises(SpecError):
            cls.from_dict(["not", "an", "object"])


def test_building_directly_checks_too() -> None:
    """A spec built in code passes the same checks as one read from a dict."""
    with pytest.raises(SpecError) as e:
        PartitionStatus(leader=1, epoch=0, isr=(1, 1))
    assert e.value.field == "isr"
    with pytest.raises(SpecError):
        TopicSpec(1, 1, {"min_in_sync": "2"})
    assert TopicSpec(1, 3).min_in_sync == 2 and TopicSpec(1, 3, {"min_in_sync": "3"}).min_in_sync == 3


# ---------------------------------------------------------------- apply and the specs


def _cluster() -> State:
    s = State()
    for i in (1, 2, 3):
        s = apply(s, {"op": "register_spu", "id": i, "rack": None, "public_address": f"h:{9000 + i}",
                      "private_address": f"h:{9100 + i}", "ts": 1}).state
    return apply(s, {"op": "create_topic", "name": "t", "partitions": 1, "replication_factor": 2, "config": {},
                     "assignment": [[1, 2]], "ts": 2}).state


USED_TO_CRASH = [
    ("min_in_sync of a digit int() refuses", {"op": "create_topic", "name": "u", "partitions": 1,
                                             "replication_factor": 1, "config": {"min_in_sync": "²"},
                                             "assignment": [[1]], "ts": 2}, "invalid_argument", "min_in_sync"),
    ("a list as a replica", {"op": "create_topic", "name": "u", "partitions": 1, "replication_factor": 1,
                             "config": {}, "assignment": [[[1]]], "ts": 2}, "invalid_command", "distinct"),
    ("a list in an election's isr", {"op": "elect_leader", "partition": "t-0", "leader": 1, "epoch": 0,
                                     "isr": [[1]], "ts": 3}, "invalid_argument", "in-sync set"),
    ("text and numbers in based_on", {"op": "update_isr", "partition": "t-0", "leader": 1, "epoch": 0, "isr": [1],
                                      "based_on": [1, "a"], "ts": 3}, "version_conflict", "based on"),
    ("a list in a move's replicas", {"op": "reassign_partition", "partition": "t-0", "replicas": [[1], 2],
                                     "epoch": 0, "ts": 3}, "invalid_argument", "distinct"),
    ("a port int() refuses", {"op": "register_spu", "id": 4, "rack": None, "public_address": "h:²",
                              "private_address": "h:1", "ts": 1}, "invalid_argument", "host:port"),
]


@pytest.mark.parametrize("case", USED_TO_CRASH, ids=[c[0] for c in USED_TO_CRASH])
def test_apply_refuses_what_used_to_raise(case: tuple) -> None:
    """These inputs made apply raise (TypeError, ValueError) before its checks moved here;
    now each is an outcome naming the problem, and the state is untouched."""
    _, cmd, code, words = case
    state = _cluster()
    a = apply(state, cmd)
    assert not a.outcome.ok and a.outcome.code == code and words in a.outcome.message, a.outcome
    assert a.state is state


def test_apply_stores_what_the_specs_say() -> None:
    """Every object apply stores reads back as its typed spec (and status), unchanged."""
    s = _cluster()
    s = apply(s, {"op": "fence_replica", "partition": "t-0", "id": 2, "reason": "disk", "ts": 4}).state
    s = apply(s, {"op": "set_spu_status", "id": 1, "alive": False, "ts": 5}).state
    p = s.get(PARTITION, "t-0")
    status = PartitionStatus.from_dict(p.status)
    assert status.isr == (1,) and status.lost == (LostReplica(2, "disk", 4),) and status.epoch == 1
    assert PartitionSpec.from_dict(p.spec).name == "t-0"
    for o in s.all("spu"):
        assert SpuSpec.from_dict(o.spec).to_dict() == dict(o.spec)
        assert SpuStatus.from_dict(o.status).to_dict() == dict(o.status)
    topic = TopicSpec.from_dict(s.get("topic", "t").spec)
    assert topic.to_dict() == dict(s.get("topic", "t").spec) and topic.min_in_sync == 2


@pytest.mark.parametrize("name", ["orders\n", "orders\r\n", "\norders", "a b", "orders/x"])
def test_a_name_with_a_trailing_newline_or_other_stray_character_is_refused(name: str) -> None:
    # A "$" anchor matches before a final newline: names are matched whole.
    with pytest.raises(SpecError, match="name"):
        check_name(name, "topic")


def test_a_storage_id_with_a_trailing_newline_is_refused() -> None:
    with pytest.raises(SpecError):
        check_storage_id("0" * 32 + "\n")
