"""``erase_key`` and ``erasure_done`` in the pure apply (issue 19 item 6, SC side): the erasure
object's state machine, its refusals, its bounds, and what deleting the topic does to it."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kolk.metadata import erasure_ops
from kolk.metadata.apply import apply
from kolk.metadata.objects import State

SHA = hashlib.sha256(b"alice").hexdigest()


def _cluster(policy: str = "compact", partitions: int = 2) -> State:
    s = State()
    for i in range(1, 5):
        s = apply(s, {"op": "register_spu", "id": i, "rack": None, "public_address": f"h:{i}",
                      "private_address": f"h:{i}", "ts": 1}).state
    a = apply(s, {"op": "create_topic", "name": "users", "partitions": partitions, "replication_factor": 3,
                  "config": {"cleanup_policy": policy}, "assignment": [[1, 2, 3], [2, 3, 4]][:partitions] +
                  [[1, 2, 3]] * max(0, partitions - 2), "ts": 2})
    assert a.outcome.ok, a.outcome
    return a.state


def _erase(s: State, **over: Any) -> Any:
    cmd = {"op": "erase_key", "topic": "users", "partition": 1, "key_sha256": SHA, "offset": 41,
           "requested_by": "alice-admin", "ts": 10, **over}
    return apply(s, cmd)


def _done(s: State, spu: int, name: str = "users-1@41", ts: int = 20) -> Any:
    return apply(s, {"op": "erasure_done", "name": name, "spu": spu, "ts": ts})


def test_an_erasure_is_pending_until_every_replica_is_done() -> None:
    a = _erase(_cluster())
    assert a.outcome.ok and a.outcome.value == {"name": "users-1@41", "existing": False}
    e = a.state.get("erasure", "users-1@41")
    assert dict(e.spec) == {"topic": "users", "partition": 1, "key_sha256": SHA, "offset": 41,
                            "requested_by": "alice-admin"}
    assert dict(e.status) == {"state": "pending", "done": [], "created_ms": 10}
    s = a.state
    for spu, state in ((3, "pending"), (2, "pending"), (3, "pending"), (4, "done")):
        a = _done(s, spu, ts=20 + spu)
        assert a.outcome.ok and a.outcome.value["state"] == state
        s = a.state
    status = dict(s.get("erasure", "users-1@41").status)
    assert status == {"state": "done", "done": [2, 3, 4], "created_ms": 10, "completed_ms": 24, "found": False}
    again = _done(s, 2)
    assert again.outcome.ok and again.outcome.value == {"name": "users-1@41", "state": "done", "completed": False}
    assert again.state.version == s.version  # nothing changed


def test_the_same_request_again_answers_the_existing_erasure() -> None:
    s = _erase(_cluster()).state
    a = _erase(s, requested_by="someone-else", ts=11)
    assert a.outcome.ok and a.outcome.value == {"name": "users-1@41", "existing": True}
    assert a.state.version == s.version
    other = _erase(s, key_sha256=hashlib.sha256(b"bob").hexdigest())
    assert (other.outcome.code, other.outcome.message) == (
        "already_exists", "erasure users-1@41 exists for another key; an offset holds one tombstone")


ERASE_REFUSALS = [
    ({"topic": "nope"}, "not_found", "topic nope does not exist"),
    ({"partition": 2}, "invalid_argument", "topic users has partitions 0-1, not 2"),
    ({"partition": -1}, "invalid_argument", "topic users has partitions 0-1, not -1"),
    ({"key_sha256": "abc"}, "invalid_argument", "erase: key_sha256 'abc' must be 64 lowercase hex digits"),
    ({"key_sha256": SHA.upper()}, "invalid_argument",
     f"erase: key_sha256 '{SHA.upper()}' must be 64 lowercase hex digits"),
    ({"offset": -1}, "invalid_argument", "erase: offset -1 must be 0 or more (the tombstone's offset)"),
    ({"requested_by": "x" * 301}, "invalid_argument", "erase: requested_by is more than 300 characters"),
    ({"offset": "41"}, "invalid_command", "erase_key: field 'offset' must be int, got str"),
]


@pytest.mark.parametrize("over,code,message", ERASE_REFUSALS, ids=[str(o)[:30] for o, _, _ in ERASE_REFUSALS])
def test_erase_refuses_bad_requests(over: dict[str, Any], code: str, message: str) -> None:
    s = _cluster()
    a = _erase(s, **over)
    assert (a.outcome.code, a.outcome.message) == (code, message)
    assert a.state is s


def test_erase_on_a_delete_topic_is_refused_naming_the_policy() -> None:
    a = _erase(_cluster("delete"))
    assert (a.outcome.code, a.outcome.message) == (
        "invalid_argument", "topic users: erase needs cleanup_policy compact or compact,delete; it has delete")
    assert _erase(_cluster("compact,delete")).outcome.ok


def test_erase_follows_the_cluster_default_policy() -> None:
    s = State()
    for i in range(1, 4):
        s = apply(s, {"op": "register_spu", "id": i, "rack": None, "public_address": f"h:{i}",
                      "private_address": f"h:{i}", "ts": 1}).state
    s = apply(s, {"op": "put_object", "kind": "config", "name": "topic-defaults",
                  "spec": {"cleanup_policy": "compact"}, "ts": 1}).state
    s = apply(s, {"op": "create_topic", "name": "users", "partitions": 2, "replication_factor": 1, "config": {},
                  "assignment": [[1], [2]], "ts": 2}).state
    assert _erase(s).outcome.ok


def test_erasure_done_refusals() -> None:
    s = _erase(_cluster()).state
    a = _done(s, 1)
    assert (a.outcome.code, a.outcome.message) == (
        "invalid_argument", "erasure users-1@41: SPU 1 holds no replica of the partition (replicas [2, 3, 4])")
    assert _done(s, 2, name="users-1@40").outcome.message == "erasure users-1@40 does not exist"
    assert _done(s, -1).outcome.code == "invalid_argument"


def test_a_reassignment_counts_only_the_current_replicas() -> None:
    s = _erase(_cluster()).state
    s = _done(s, 4).state
    p = s.get("partition", "users-1")
    s = apply(s, {"op": "reassign_partition", "partition": "users-1", "replicas": [2, 3, 1],
                  "epoch": p.status["epoch"], "ts": 15}).state
    s = _done(s, 2).state
    s = _done(s, 3).state
    assert s.get("erasure", "users-1@41").status["state"] == "pending"  # SPU 1 now holds a replica
    s = _done(s, 1).state
    assert s.get("erasure", "users-1@41").status["state"] == "done"


def test_deleting_the_topic_removes_its_erasures_and_names_the_pending_ones() -> None:
    s = _erase(_cluster()).state
    s = _erase(s, partition=0, offset=7, ts=11).state
    for spu in (1, 2, 3):
        s = _done(s, spu, name="users-0@7").state
    a = apply(s, {"op": "delete_topic", "name": "users", "ts": 30})
    assert a.outcome.value == {"name": "users", "erasures_ended": [
        {"name": "users-1@41", "key_sha256": SHA, "requested_by": "alice-admin"}]}
    assert list(a.state.all("erasure")) == []
    s = apply(a.state, {"op": "create_topic", "name": "users", "partitions": 2, "replication_factor": 3,
                        "config": {"cleanup_policy": "compact"}, "assignment": [[1, 2, 3], [2, 3, 4]], "ts": 31}).state
    fresh = _erase(s, ts=32)
    assert fresh.outcome.value == {"name": "users-1@41", "existing": False}  # not the old, done one


def test_pending_erasures_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(erasure_ops, "ERASURES_PENDING_MAX", 3)
    s = _cluster()
    for offset in range(3):
        s = _erase(s, offset=offset).state
    a = _erase(s, offset=3)
    assert (a.outcome.code, a.outcome.message) == (
        "limit_exceeded", "3 erasures are pending, the most the cluster keeps; try again when some are done")
    for spu in (2, 3, 4):
        s = _done(s, spu, name="users-1@0").state
    assert _erase(s, offset=3).outcome.ok


@settings(max_examples=30, deadline=None)
@given(order=st.lists(st.integers(0, 5), min_size=1, max_size=40))
def test_done_erasures_beyond_the_bound_drop_oldest_first(order: list[int]) -> None:
    """Whatever order erasures complete in, at most ERASURES_DONE_KEPT done ones stay, the
    newest; pending ones are never dropped."""
    kept = 3
    original = erasure_ops.ERASURES_DONE_KEPT
    erasure_ops.ERASURES_DONE_KEPT = kept
    try:
        s = _cluster()
        for offset in range(6):
            s = _erase(s, offset=offset).state
        completed: list[str] = []
        ts = 100
        for offset in order:
            name = f"users-1@{offset}"
            for spu in (2, 3, 4):
                ts += 1
                a = _done(s, spu, name=name, ts=ts)
                if a.outcome.ok and a.outcome.value["completed"]:
                    completed.append(name)
                s = a.state
        done = sorted(e.name for e in s.all("erasure") if e.status["state"] == "done")
        pending = sorted(e.name for e in s.all("erasure") if e.status["state"] == "pending")
        assert done == sorted(completed[-kept:])
        assert len(pending) == 6 - len(completed)
    finally:
        erasure_ops.ERASURES_DONE_KEPT = original


def test_an_erasure_says_whether_any_replica_found_a_record_of_the_key() -> None:
    s = _erase(_cluster()).state
    s = apply(s, {"op": "erasure_done", "name": "users-1@41", "spu": 2, "found": False, "ts": 21}).state
    s = apply(s, {"op": "erasure_done", "name": "users-1@41", "spu": 3, "found": True, "ts": 22}).state
    s = apply(s, {"op": "erasure_done", "name": "users-1@41", "spu": 4, "found": False, "ts": 23}).state
    assert s.get("erasure", "users-1@41").status["found"] is True
    bad = apply(s, {"op": "erasure_done", "name": "users-1@41", "spu": 2, "found": "yes", "ts": 24})
    assert not bad.outcome.ok and "found" in bad.outcome.message


def test_a_replica_that_loses_its_data_must_erase_its_new_copy_again() -> None:
    """SPU 3 did its part, then came back with another storage id (an empty disk it fills from
    the leader, which may not have erased yet): it is not done any more. A disk fault reported
    for SPU 2 does the same. Done erasures and other partitions' are left alone."""
    s = _erase(_cluster()).state
    for spu in (2, 3):
        s = _done(s, spu).state
    s = apply(s, {"op": "register_spu", "id": 3, "rack": None, "public_address": "h:3", "private_address": "h:3",
                  "storage_id": "f" * 32, "ts": 30}).state
    s = apply(s, {"op": "register_spu", "id": 3, "rack": None, "public_address": "h:3", "private_address": "h:3",
                  "storage_id": "e" * 32, "ts": 31}).state
    assert s.get("erasure", "users-1@41").status["done"] == [2]
    s = apply(s, {"op": "fence_replica", "partition": "users-1", "id": 2, "reason": "disk", "ts": 32}).state
    assert s.get("erasure", "users-1@41").status["done"] == []
    for spu in (2, 3, 4):
        s = _done(s, spu, ts=40 + spu).state
    assert s.get("erasure", "users-1@41").status["state"] == "done"
    s = apply(s, {"op": "fence_replica", "partition": "users-1", "id": 4, "reason": "disk", "ts": 50}).state
    assert s.get("erasure", "users-1@41").status["done"] == [2, 3, 4]  # a done erasure stays done


def test_the_leader_ends_an_erasure_whose_offset_holds_no_tombstone_of_the_key() -> None:
    s = _erase(_cluster()).state
    a = apply(s, {"op": "erasure_done", "name": "users-1@41", "spu": 2, "found": False,
                  "note": "offset 41 is past the log end 5 of users-1: no tombstone there, nothing erased", "ts": 21})
    status = a.state.get("erasure", "users-1@41").status
    assert a.outcome.ok and status["state"] == "done" and "past the log end" in status["note"]


def test_erasure_status_names_the_id_format_for_a_malformed_id() -> None:
    import asyncio

    from kolk.client.erasure import erasure_status
    from kolk.protocol.errors import InvalidRequestError

    with pytest.raises(InvalidRequestError, match=r"^'a b' is not an erasure id: ids look like TOPIC-PARTITION@OFFSET"):
        asyncio.run(erasure_status(None, "a b"))  # type: ignore[arg-type]  # refused before any call
