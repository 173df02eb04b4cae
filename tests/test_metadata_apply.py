"""Metadata commands applied as pure functions (metadata/apply.py): each rule of validation
has a case, bad input leaves the state unchanged, and apply is deterministic."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kolk.metadata.apply import apply, apply_bytes, encode_command
from kolk.metadata.objects import PARTITION, TOPIC, State


def spu(i: int, rack: str | None = None, ts: int = 1) -> dict:
    return {"op": "register_spu", "id": i, "rack": rack, "public_address": f"127.0.0.1:{9000 + i}",
            "private_address": f"127.0.0.1:{9100 + i}", "ts": ts}


def topic(name: str, partitions: int = 2, rf: int = 1, assignment: list | None = None, ts: int = 2) -> dict:
    return {"op": "create_topic", "name": name, "partitions": partitions, "replication_factor": rf,
            "config": {}, "assignment": assignment or [[1 + (i % 3)][:rf] if rf == 1 else [1, 2, 3][:rf]
                                                       for i in range(partitions)], "ts": ts}


def run(*cmds: dict) -> State:
    state = State()
    for c in cmds:
        applied = apply(state, c)
        assert applied.outcome.ok, applied.outcome
        state = applied.state
    return state


BASE = run(spu(1, "a"), spu(2, "b"), spu(3, "a"))


def test_create_topic_makes_partitions_with_leaders_and_isr() -> None:
    """A created topic has its partitions, each led by its first live replica at epoch 0 with
    every replica in sync; the state version grows by exactly one."""
    a = apply(BASE, topic("orders", 2, 2, [[1, 2], [2, 3]]))
    assert a.outcome.ok
    assert a.state.version == BASE.version + 1
    p1 = a.state.get(PARTITION, "orders-1")
    assert p1.spec["replicas"] == [2, 3] and p1.status == {"leader": 2, "epoch": 0, "isr": [2, 3]}
    assert {e.name for e in a.events} == {"orders", "orders-0", "orders-1"}
    assert all(e.version == a.state.version for e in a.events)


BAD = [
    ("duplicate topic", topic("dup"), "already_exists", "already exists"),
    ("rf above SPUs", topic("t", 1, 4, [[1, 2, 3, 4]]), "replication_factor_too_high", "more than the 3"),
    ("zero partitions", topic("t", 0, 1, []), "invalid_argument", "partitions must be"),
    ("bad name", topic("no/slash"), "invalid_argument", "name 'no/slash' is invalid"),
    ("dot name", topic(".."), "invalid_argument", "invalid"),
    ("partitions as string", {**topic("t"), "partitions": "2"}, "invalid_command", "'partitions' must be int"),
    ("partitions as bool", {**topic("t"), "partitions": True}, "invalid_command", "boolean"),
    ("missing field", {k: v for k, v in topic("t").items() if k != "ts"}, "invalid_command", "'ts' is missing"),
    ("unknown SPU in assignment", topic("t", 1, 1, [[9]]), "invalid_command", "registered SPU"),
    ("repeated SPU", topic("t", 1, 2, [[1, 1]]), "invalid_command", "distinct"),
    ("unknown op", {"op": "drop_everything", "ts": 1}, "unknown_command", "drop_everything"),
    ("not an object", ["create_topic"], "invalid_command", "JSON object"),
    ("delete missing topic", {"op": "delete_topic", "name": "nope", "ts": 3}, "not_found", "nope"),
    ("stale delete", {"op": "delete_topic", "name": "dup", "ts": 3, "expected_version": 1}, "version_conflict",
     "expected version 1"),
    ("unregister SPU in use", {"op": "unregister_spu", "id": 1, "ts": 3}, "in_use", "dup-0"),
    ("bad address", {**spu(7), "public_address": "nohost"}, "invalid_argument", "host:port"),
    ("elect with old epoch", {"op": "elect_leader", "partition": "dup-0", "leader": 1, "epoch": 5, "ts": 3},
     "stale_epoch", "epoch 0"),
    ("isr from non-leader", {"op": "update_isr", "partition": "dup-0", "isr": [2], "epoch": 0, "leader": 2,
                             "ts": 3}, "not_partition_leader", "not the leader"),
    ("put policy exists", {"op": "put_object", "kind": "policy", "name": "p", "spec": {"version": 2}, "ts": 3,
                           "expected_version": -1}, "version_conflict", "is at version"),
    ("policy version goes back", {"op": "put_object", "kind": "policy", "name": "active", "spec": {"version": 1},
                                  "ts": 3}, "version_conflict", "only goes forward"),
    ("policy without version", {"op": "put_object", "kind": "policy", "name": "active", "spec": {"source": ""},
                                "ts": 3}, "invalid_argument", "version must be"),
    ("put unknown kind", {"op": "put_object", "kind": "topic", "name": "x", "spec": {}, "ts": 3},
     "invalid_argument", "cannot be stored"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_command_is_refused_and_changes_nothing(case: tuple) -> None:
    """Every bad command has an error code and a message naming the problem; state is untouched."""
    _, cmd, code, words = case
    state = run(spu(1), spu(2), spu(3), topic("dup", 1, 1, [[1]]),
                {"op": "put_object", "kind": "policy", "name": "p", "spec": {"version": 1, "text": "x"}, "ts": 2},
                {"op": "put_object", "kind": "policy", "name": "active", "spec": {"version": 1}, "ts": 2})
    a = apply(state, cmd)
    assert not a.outcome.ok
    assert a.outcome.code == code
    assert words in a.outcome.message
    assert a.state is state and a.events == ()


def test_garbage_bytes_are_an_invalid_command() -> None:
    """Bytes that are not JSON are refused with invalid_command; the state is untouched."""
    a = apply_bytes(BASE, b"\xff\x00garbage")
    assert not a.outcome.ok and a.outcome.code == "invalid_command" and a.state is BASE


def test_election_bumps_epoch_and_isr_changes_are_checked() -> None:
    """elect_leader picks from the in-sync set and bumps the epoch; update_isr needs the
    leader, the current epoch, and a set that contains the leader."""
    s = run(spu(1), spu(2), spu(3), topic("t", 1, 3, [[1, 2, 3]]))
    s = run_on(s, {"op": "update_isr", "partition": "t-0", "isr": [1, 3], "epoch": 0, "leader": 1, "ts": 5})
    assert s.get(PARTITION, "t-0").status["isr"] == [1, 3]
    bad = apply(s, {"op": "elect_leader", "partition": "t-0", "leader": 2, "epoch": 0, "ts": 6})
    assert bad.outcome.code == "invalid_argument" and "not in the in-sync set" in bad.outcome.message
    s = run_on(s, {"op": "elect_leader", "partition": "t-0", "leader": 3, "epoch": 0, "ts": 6})
    assert s.get(PARTITION, "t-0").status == {"leader": 3, "epoch": 1, "isr": [1, 3]}
    stale = apply(s, {"op": "update_isr", "partition": "t-0", "isr": [1, 3], "epoch": 0, "leader": 3, "ts": 7})
    assert stale.outcome.code == "stale_epoch"
    no_leader = apply(s, {"op": "update_isr", "partition": "t-0", "isr": [1], "epoch": 1, "leader": 3, "ts": 7})
    assert no_leader.outcome.code == "invalid_argument"


def run_on(state: State, *cmds: dict) -> State:
    for c in cmds:
        a = apply(state, c)
        assert a.outcome.ok, a.outcome
        state = a.state
    return state


def test_delete_topic_removes_partitions_and_cas_put() -> None:
    """delete_topic removes the topic and its partitions; put_object with expected_version
    is compare-and-set."""
    s = run_on(BASE, topic("t", 3, 1, [[1], [2], [3]]))
    s = run_on(s, {"op": "delete_topic", "name": "t", "ts": 9})
    assert s.get(TOPIC, "t") is None and not list(s.all(PARTITION))
    s = run_on(s, {"op": "put_object", "kind": "policy", "name": "p", "spec": {"version": 1}, "ts": 9,
                   "expected_version": -1})
    v = s.get("policy", "p").version
    s = run_on(s, {"op": "put_object", "kind": "policy", "name": "p", "spec": {"version": 2}, "ts": 9,
                   "expected_version": v})
    assert s.get("policy", "p").spec == {"version": 2}


# Random command streams: apply never raises, is deterministic, and the state survives its encoding.
_cmd = st.one_of(
    st.builds(spu, st.integers(0, 5), st.sampled_from([None, "a", "b"]), st.integers(0, 100)),
    st.builds(lambda n, p, rf, ts: {"op": "create_topic", "name": n, "partitions": p, "replication_factor": rf,
                                    "config": {}, "assignment": [list(range(rf)) for _ in range(p)], "ts": ts},
              st.sampled_from(["a", "b", "c", "bad name"]), st.integers(0, 3), st.integers(0, 4), st.integers(0, 100)),
    st.builds(lambda n, ts: {"op": "delete_topic", "name": n, "ts": ts}, st.sampled_from(["a", "b"]), st.integers(0, 9)),
    st.builds(lambda i, a, ts: {"op": "set_spu_status", "id": i, "alive": a, "ts": ts},
              st.integers(0, 5), st.booleans(), st.integers(0, 100)),
    st.builds(lambda i, ts: {"op": "unregister_spu", "id": i, "ts": ts}, st.integers(0, 5), st.integers(0, 9)),
    st.dictionaries(st.sampled_from(["op", "name", "ts", "id"]), st.one_of(st.integers(), st.text(max_size=5), st.none())),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(_cmd, max_size=25))
def test_apply_is_total_deterministic_and_versioned(cmds: list) -> None:
    """For any command stream: apply never raises; applying twice gives equal states; the
    version grows by one exactly when something changed; encode/decode round-trips."""
    a, b = State(), State()
    for c in cmds:
        data = encode_command(c) if isinstance(c, dict) else json.dumps(c).encode()
        ra, rb = apply_bytes(a, data), apply_bytes(b, data)
        assert ra.outcome == rb.outcome and ra.state.to_json() == rb.state.to_json()
        assert ra.state.version == a.version + (1 if ra.events else 0)
        a, b = ra.state, rb.state
    assert State.decode(a.encode()).to_json() == a.to_json()
    assert all(o.version <= a.version for k in ("topic", "partition", "spu") for o in a.all(k))
