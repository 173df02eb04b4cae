"""``alter_topic`` and ``add_partitions`` in the pure apply (issue 19 item 2): compare-and-set on
the topic version, the config checked as create checks it, growth only, placement like
create's, and each partition's incarnation."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kolk.metadata.apply import apply
from kolk.metadata.controllers import place_replicas
from kolk.metadata.objects import State


def _cluster(spus: int = 3, racks: tuple[str | None, ...] = ()) -> State:
    s = State()
    for i in range(1, spus + 1):
        rack = racks[i - 1] if racks else None
        s = apply(s, {"op": "register_spu", "id": i, "rack": rack, "public_address": f"h:{i}",
                      "private_address": f"h:{i}", "ts": 1}).state
    return s


def _topic(s: State, partitions: int = 2, rf: int = 3, config: dict[str, str] | None = None) -> State:
    a = apply(s, {"op": "create_topic", "name": "orders", "partitions": partitions, "replication_factor": rf,
                  "config": config or {}, "assignment": place_replicas(s, partitions, rf), "ts": 2})
    assert a.outcome.ok, a.outcome
    return a.state


def _alter(s: State, **fields: Any) -> Any:
    return apply(s, {"op": "alter_topic", "name": "orders", "ts": 3, **fields})


def test_alter_sets_and_deletes_keys() -> None:
    s = _topic(_cluster(), config={"retention_ms": "60000", "segment_ms": "3600000"})
    a = _alter(s, set={"cleanup_policy": "compact", "retention_ms": "120000"}, delete=["segment_ms"])
    assert a.outcome.ok and a.outcome.value == {"name": "orders", "version": s.version + 1}
    t = a.state.get("topic", "orders")
    assert dict(t.spec["config"]) == {"cleanup_policy": "compact", "retention_ms": "120000"}
    assert t.version == s.version + 1 and dict(t.status) == dict(s.get("topic", "orders").status)


def test_alter_is_compare_and_set_on_the_topic_version() -> None:
    s = _topic(_cluster())
    version = s.get("topic", "orders").version
    stale = _alter(s, set={"retention_ms": "1000"}, expected_version=version - 1)
    assert (stale.outcome.code, stale.outcome.message) == (
        "version_conflict", f"topic orders is at version {version}; the update expected version {version - 1}")
    assert stale.state is s
    ok = _alter(s, set={"retention_ms": "1000"}, expected_version=version)
    assert ok.outcome.ok
    again = _alter(ok.state, set={"retention_ms": "2000"}, expected_version=version)
    assert again.outcome.code == "version_conflict"


def test_alter_of_a_deleted_topic_is_not_found() -> None:
    s = _topic(_cluster())
    s = apply(s, {"op": "delete_topic", "name": "orders", "ts": 3}).state
    a = _alter(s, set={"retention_ms": "1000"})
    assert (a.outcome.code, a.outcome.message) == ("not_found", "topic orders does not exist")


ALTER_REFUSALS = [
    ({"set": {"retention_ms": "-5"}}, "topic orders: config retention_ms=-5 is not allowed: -1 (keep forever) or "
                                      "1-3153600000000 ms"),
    ({"set": {"min_in_sync": "4"}}, "topic orders: config min_in_sync=4 is not allowed: 1-3 replicas (the "
                                    "replication factor is 3)"),
    ({"set": {"segment_bytes": "2048"}}, "topic orders: config segment_bytes=2048 is not allowed: segment_bytes "
                                         "below the batch limit max_message_bytes=4194304 (default)"),
    ({"delete": ["colour"]}, "topic orders: unknown config key colour; known keys: cleanup_policy, compression, "
                             "delete_retention_ms, max_message_bytes, min_compaction_lag_ms, min_in_sync, "
                             "retention_bytes, retention_ms, segment_bytes, segment_ms"),
    ({"set": {"retention_ms": "5"}, "delete": ["retention_ms"]}, "topic orders: config retention_ms is both set "
                                                                 "and deleted"),
    ({}, "topic orders: nothing to change (give config keys to set or delete)"),
]


@pytest.mark.parametrize("fields,message", ALTER_REFUSALS, ids=[str(f)[:30] for f, _ in ALTER_REFUSALS])
def test_alter_refuses_a_bad_result_and_changes_nothing(fields: dict[str, Any], message: str) -> None:
    s = _topic(_cluster())
    a = _alter(s, **fields)
    assert (a.outcome.code, a.outcome.message) == ("invalid_argument", message)
    assert a.state is s


def test_deleting_max_message_bytes_is_checked_against_what_then_applies() -> None:
    s = _topic(_cluster(), config={"max_message_bytes": "1024", "segment_bytes": "2048"})
    a = _alter(s, delete=["max_message_bytes"])
    assert a.outcome.message == ("topic orders: config segment_bytes=2048 is not allowed: segment_bytes below the "
                                 "batch limit max_message_bytes=4194304 (default)")


def test_alter_with_bad_field_types_is_invalid_command() -> None:
    s = _topic(_cluster())
    assert _alter(s, set={"retention_ms": 5}).outcome.code == "invalid_command"
    assert _alter(s, set=["retention_ms"]).outcome.code == "invalid_command"
    assert _alter(s, delete=[5]).outcome.code == "invalid_command"


# ---------------------------------------------------------------- add_partitions


def _grow(s: State, count: int, **fields: Any) -> Any:
    t = s.get("topic", "orders")
    new = max(0, count - t.spec["partitions"])
    assignment = fields.pop("assignment", None)
    if assignment is None:
        assignment = place_replicas(s, new, t.spec["replication_factor"]) if 0 < count <= 1000 else []
    return apply(s, {"op": "add_partitions", "name": "orders", "count": count, "assignment": assignment, "ts": 4,
                     **fields})


def test_add_partitions_grows_with_new_incarnations_and_keeps_the_old_ones() -> None:
    s = _topic(_cluster(), partitions=2)
    created_at = s.version
    a = _grow(s, 5)
    assert a.outcome.ok and a.outcome.value["partitions"] == 5
    assert a.state.get("topic", "orders").spec["partitions"] == 5
    parts = [a.state.get("partition", f"orders-{i}") for i in range(5)]
    assert [p.spec["incarnation"] for p in parts] == [created_at] * 2 + [a.state.version] * 3
    assert parts[0] is s.get("partition", "orders-0")  # untouched
    assert all(len(set(p.spec["replicas"])) == 3 and p.status["epoch"] == 0 for p in parts[2:])


def test_add_partitions_never_shrinks() -> None:
    s = _topic(_cluster(), partitions=6)
    for count in (6, 3, 0):
        a = _grow(s, count, assignment=[])
        assert (a.outcome.code, a.outcome.message) == (
            "invalid_argument", f"topic orders has 6 partitions; add-partitions can only grow it, got {count}")
        assert a.state is s


def test_add_partitions_refuses_past_the_limit_a_deleted_topic_and_a_bad_assignment() -> None:
    s = _topic(_cluster(), partitions=2)
    assert _grow(s, 1001, assignment=[]).outcome.message == "topic orders: partitions must be 1-1000, got 1001"
    wrong = _grow(s, 3, assignment=[[1, 1, 2]])
    assert wrong.outcome.code == "invalid_command" and "partition 2 needs 3 distinct registered SPU ids" in \
        wrong.outcome.message
    short = _grow(s, 4, assignment=[[1, 2, 3]])
    assert short.outcome.message == "topic orders: assignment has 1 entries for 2 new partitions"
    stale = _grow(s, 3, expected_version=s.get("topic", "orders").version - 1)
    assert stale.outcome.code == "version_conflict"
    gone = apply(s, {"op": "delete_topic", "name": "orders", "ts": 3}).state
    assert apply(gone, {"op": "add_partitions", "name": "orders", "count": 3, "assignment": [[1, 2, 3]],
                        "ts": 4}).outcome.code == "not_found"


@settings(max_examples=40, deadline=None)
@given(spus=st.integers(3, 7), first=st.integers(1, 20), more=st.integers(1, 20), rf=st.integers(1, 3),
       racked=st.booleans())
def test_growth_is_placed_as_create_would_place_it(spus: int, first: int, more: int, rf: int, racked: bool) -> None:
    """Growing from ``first`` to ``first + more`` places the new partitions exactly where one
    create of ``first + more`` would have put them (the same pure placement, fed the first
    partitions' load); without racks the loads stay within one of each other."""
    racks = tuple(f"r{i % 3}" for i in range(spus)) if racked else ()
    empty = _cluster(spus, racks)
    s = _topic(empty, partitions=first, rf=rf)
    a = _grow(s, first + more)
    assert a.outcome.ok
    parts = [list(a.state.get("partition", f"orders-{i}").spec["replicas"]) for i in range(first + more)]
    assert parts == place_replicas(empty, first + more, rf)
    if not racked:
        load = {i: sum(i in r for r in parts) for i in range(1, spus + 1)}
        leaders = {i: sum(r[0] == i for r in parts) for i in range(1, spus + 1)}
        assert max(load.values()) - min(load.values()) <= 1
        assert max(leaders.values()) - min(leaders.values()) <= 1


def test_a_topic_stored_before_the_table_is_repaired_by_deleting_its_unknown_keys() -> None:
    """Before issue 19 the SC stored any key: such a topic keeps its config until an alter,
    which must delete the keys the table does not know (and may, although they are unknown)."""
    s = _topic(_cluster())
    raw = s.to_json()
    for o in raw["objects"]:
        if o["kind"] == "topic":
            o["spec"]["config"] = {"retention.ms": "5"}
    old = State.from_json(raw)
    kept = _alter(old, set={"retention_ms": "1000"})
    assert kept.outcome.message.startswith("topic orders: unknown config key retention.ms (did you mean "
                                           "retention_ms?)")
    fixed = _alter(old, set={"retention_ms": "1000"}, delete=["retention.ms"])
    assert fixed.outcome.ok and dict(fixed.state.get("topic", "orders").spec["config"]) == {"retention_ms": "1000"}


def test_the_leader_proposes_its_flags_as_the_defaults() -> None:
    from kolk.sc.topic_defaults import defaults_command, parse_topic_defaults

    s = _cluster()
    assert defaults_command(s, {}, 5) is None
    put = defaults_command(s, {"retention_ms": "1000"}, 5)
    assert put == {"op": "put_object", "kind": "config", "name": "topic-defaults", "spec": {"retention_ms": "1000"},
                   "ts": 5}
    s = apply(s, put).state
    assert defaults_command(s, {"retention_ms": "1000"}, 6) is None
    assert defaults_command(s, {}, 6) == {"op": "delete_object", "kind": "config", "name": "topic-defaults", "ts": 6}
    assert parse_topic_defaults(["retention_ms=1000", "cleanup_policy=compact"]) == {
        "retention_ms": "1000", "cleanup_policy": "compact"}
    for flags, message in ((["retention_ms"], "--topic-default 'retention_ms' must be KEY=VALUE"),
                           (["retention_ms=1", "retention_ms=2"], "--topic-default retention_ms is given twice"),
                           (["segment_bytes=2048"], "--topic-default: config segment_bytes=2048 (cluster default) is "
                                                    "not allowed: segment_bytes below the batch limit "
                                                    "max_message_bytes=4194304 (default)")):
        with pytest.raises(ValueError) as e:
            parse_topic_defaults(flags)
        assert str(e.value) == message
