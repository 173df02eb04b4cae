"""The topic config table (metadata/topic_config.py, issue 19 item 1): every key's valid and
invalid values, ranges by hypothesis, the pairs, the cluster defaults, apply refusing each bad
config with its message and storing nothing, and docs/metadata.md showing the same table."""

from __future__ import annotations

import pathlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kolk.metadata.apply import apply
from kolk.metadata.objects import State
from kolk.metadata.specs import SpecError, TopicSpec
from kolk.metadata.topic_config import (BY_NAME, KEYS, TopicConfig, check_defaults, check_value, markdown_table,
                                        resolve, sources)
from kolk.segments.config import BATCH_BYTES_MIN, LogConfig

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "metadata.md"
YEARS_100_MS = 3_153_600_000_000


def test_the_doc_shows_the_modules_table() -> None:
    assert markdown_table() in DOC.read_text(), "docs/metadata.md's topic config table differs from " \
                                                "kolk.metadata.topic_config.markdown_table(): paste it in"


def test_the_storage_limits_agree_with_the_table() -> None:
    assert BY_NAME["max_message_bytes"].hi == LogConfig().batch_bytes_max
    assert BY_NAME["max_message_bytes"].lo == BATCH_BYTES_MIN
    assert int(BY_NAME["segment_bytes"].default) == LogConfig().segment_bytes
    assert int(BY_NAME["segment_ms"].default) == LogConfig().segment_ms
    assert int(BY_NAME["retention_ms"].default) == LogConfig().retention_ms
    assert int(BY_NAME["retention_bytes"].default) == LogConfig().retention_bytes


def test_defaults_resolve_to_the_table() -> None:
    assert resolve({}, {}, 3) == TopicConfig(
        retention_ms=604_800_000, retention_bytes=-1, segment_bytes=1 << 30, segment_ms=604_800_000,
        cleanup_policy="delete", delete_retention_ms=86_400_000, min_compaction_lag_ms=0,
        max_message_bytes=4 << 20, min_in_sync=2, compression="producer")
    assert [resolve({}, {}, rf).min_in_sync for rf in (1, 2, 3, 4, 5, 7)] == [1, 2, 2, 3, 3, 4]


# (key, value, the message's tail after "config KEY=VALUE ")
INVALID = [
    ("retention_ms", "-5", "is not allowed: -1 (keep forever) or 1-3153600000000 ms"),
    ("retention_ms", "0", "is not allowed: -1 (keep forever) or 1-3153600000000 ms"),
    ("retention_ms", str(YEARS_100_MS + 1), "is not allowed: -1 (keep forever) or 1-3153600000000 ms"),
    ("retention_ms", "1e3", "is not allowed: a whole number, -1 (keep forever) or 1-3153600000000 ms"),
    ("retention_ms", "+5", "is not allowed: a whole number, -1 (keep forever) or 1-3153600000000 ms"),
    ("retention_ms", "0x10", "is not allowed: a whole number, -1 (keep forever) or 1-3153600000000 ms"),
    ("retention_ms", "1.5", "is not allowed: a whole number, -1 (keep forever) or 1-3153600000000 ms"),
    ("retention_bytes", "-2", "is not allowed: -1 (no size limit) or 1-1125899906842624 bytes"),
    ("retention_bytes", "9" * 40, "is not allowed: a whole number, -1 (no size limit) or 1-1125899906842624 bytes"),
    ("segment_bytes", "1023", "is not allowed: 1024-1099511627776 bytes"),
    ("segment_bytes", "-1", "is not allowed: 1024-1099511627776 bytes"),
    ("segment_bytes", "two", "is not allowed: a whole number, 1024-1099511627776 bytes"),
    ("segment_ms", "999", "is not allowed: 1000-3153600000000 ms"),
    ("cleanup_policy", "delete,compact", "is not allowed: delete | compact | compact,delete"),
    ("cleanup_policy", "Compact", "is not allowed: delete | compact | compact,delete"),
    ("delete_retention_ms", "-1", "is not allowed: 0-3153600000000 ms"),
    ("min_compaction_lag_ms", "-1", "is not allowed: 0-3153600000000 ms"),
    ("max_message_bytes", "89", "is not allowed: 90-4194304 bytes"),
    ("max_message_bytes", str((4 << 20) + 1), "is not allowed: 90-4194304 bytes"),
    ("min_in_sync", "0", "is not allowed: 1-7 replicas"),
    ("min_in_sync", "8", "is not allowed: 1-7 replicas"),
    ("compression", "lz4", "is not allowed: producer | none | gzip | zstd"),
    ("compression", "", "is not allowed: producer | none | gzip | zstd"),
]


@pytest.mark.parametrize("key,value,tail", INVALID, ids=[f"{k}={v[:12]}" for k, v, _ in INVALID])
def test_each_bad_value_is_refused_naming_key_value_and_what_is_allowed(key: str, value: str, tail: str) -> None:
    with pytest.raises(SpecError) as e:
        check_value(key, value)
    shown = value if value and value.isprintable() and " " not in value else repr(value)
    shown = shown if len(shown) <= 40 else shown[:40] + "..."
    assert e.value.message == f"config {key}={shown} {tail}"
    assert e.value.field == f"config.{key}"


def test_a_value_with_spaces_is_shown_quoted() -> None:
    with pytest.raises(SpecError, match=r"config retention_ms=' 5' is not allowed: a whole number"):
        check_value("retention_ms", " 5")


VALID = [("retention_ms", "-1", -1), ("retention_ms", "1", 1), ("retention_ms", str(YEARS_100_MS), YEARS_100_MS),
         ("retention_bytes", "-1", -1), ("retention_bytes", "1", 1), ("segment_bytes", "1024", 1024),
         ("segment_ms", "1000", 1000), ("cleanup_policy", "delete", "delete"), ("cleanup_policy", "compact", "compact"),
         ("cleanup_policy", "compact,delete", "compact,delete"), ("delete_retention_ms", "0", 0),
         ("min_compaction_lag_ms", "0", 0), ("max_message_bytes", "90", 90), ("min_in_sync", "1", 1),
         ("min_in_sync", "7", 7), ("compression", "producer", "producer"), ("compression", "none", "none"),
         ("compression", "gzip", "gzip"), ("compression", "zstd", "zstd")]


@pytest.mark.parametrize("key,value,typed", VALID, ids=[f"{k}={v}" for k, v, _ in VALID])
def test_each_good_value_is_typed(key: str, value: str, typed: object) -> None:
    assert check_value(key, value) == typed


@pytest.mark.parametrize("key", [k.name for k in KEYS if k.type == "int"])
@settings(max_examples=60, deadline=None)
@given(number=st.integers(-(10**16), 10**16))
def test_a_number_is_allowed_exactly_within_its_range(key: str, number: int) -> None:
    k = BY_NAME[key]
    ok = k.lo <= number <= k.hi or (bool(k.minus_one) and number == -1)
    try:
        assert check_value(key, str(number)) == number and ok
    except SpecError as e:
        assert not ok and e.message.startswith(f"config {key}={number} is not allowed: ")


@pytest.mark.parametrize("key", [k.name for k in KEYS if k.type == "int"])
@settings(max_examples=40, deadline=None)
@given(text=st.text(max_size=12).filter(lambda t: not t.lstrip("-").isascii() or not t.lstrip("-").isdigit()
                                        or t.count("-") > 1 or (t.startswith("-") is False and "-" in t)))
def test_anything_but_decimal_digits_is_not_a_whole_number(key: str, text: str) -> None:
    with pytest.raises(SpecError):
        check_value(key, text)


def test_an_unknown_key_names_the_known_ones_and_the_close_one() -> None:
    with pytest.raises(SpecError) as e:
        check_value("retention.ms", "5")
    assert e.value.message == ("unknown config key retention.ms (did you mean retention_ms?); known keys: "
                               "cleanup_policy, compression, delete_retention_ms, max_message_bytes, "
                               "min_compaction_lag_ms, min_in_sync, retention_bytes, retention_ms, segment_bytes, "
                               "segment_ms")
    with pytest.raises(SpecError, match=r"^unknown config key colour; known keys: cleanup_policy"):
        check_value("colour", "red")


def test_min_in_sync_is_bounded_by_the_replication_factor() -> None:
    with pytest.raises(SpecError, match=r"config min_in_sync=3 is not allowed: 1-2 replicas \(the replication factor "
                                        r"is 2\)"):
        TopicSpec(1, 2, {"min_in_sync": "3"})
    assert resolve({"min_in_sync": "2"}, {}, 2).min_in_sync == 2
    with pytest.raises(SpecError, match=r"config min_in_sync=3 \(cluster default\) is not allowed: 1-2 replicas"):
        resolve({}, {"min_in_sync": "3"}, 2)


def test_segment_bytes_below_the_batch_limit_is_refused_from_any_source() -> None:
    with pytest.raises(SpecError, match=r"^config segment_bytes=1024 is not allowed: segment_bytes below the batch "
                                        r"limit max_message_bytes=4194304 \(default\)$"):
        resolve({"segment_bytes": "1024"}, {}, 1)
    with pytest.raises(SpecError, match=r"segment_bytes=1024 \(cluster default\) is not allowed: segment_bytes below "
                                        r"the batch limit max_message_bytes=2048$"):
        resolve({"max_message_bytes": "2048"}, {"segment_bytes": "1024"}, 1)
    assert resolve({"segment_bytes": "1024", "max_message_bytes": "1024"}, {}, 1).segment_bytes == 1024


def test_compacted_and_deletes() -> None:
    assert [(resolve({"cleanup_policy": p}, {}, 1).compacted, resolve({"cleanup_policy": p}, {}, 1).deletes)
            for p in ("delete", "compact", "compact,delete")] == [(False, True), (True, False), (True, True)]


def test_sources_say_where_each_value_came_from() -> None:
    got = {k: (v, src) for k, v, src in sources({"retention_ms": "60000"}, {"segment_ms": "3600000"}, 3)}
    assert got["retention_ms"] == ("60000", "topic")
    assert got["segment_ms"] == ("3600000", "default")
    assert got["min_in_sync"] == ("2", "built-in")
    assert set(got) == set(BY_NAME)


def test_bad_cluster_defaults_are_refused() -> None:
    with pytest.raises(SpecError, match=r"config retention_ms=-5 \(cluster default\) is not allowed"):
        check_defaults({"retention_ms": "-5"})
    with pytest.raises(SpecError, match=r"segment_bytes=2048 \(cluster default\) is not allowed: segment_bytes below"):
        check_defaults({"segment_bytes": "2048"})  # below the built-in max_message_bytes
    check_defaults({"segment_bytes": "2048", "max_message_bytes": "1024", "retention_ms": "-1"})


# ---------------------------------------------------------------- apply


def _cluster(spus: int = 3) -> State:
    s = State()
    for i in range(1, spus + 1):
        s = apply(s, {"op": "register_spu", "id": i, "rack": None, "public_address": f"h:{i}",
                      "private_address": f"h:{i}", "ts": 1}).state
    return s


def _create(s: State, config: dict[str, str], rf: int = 3, name: str = "orders") -> tuple[State, object]:
    a = apply(s, {"op": "create_topic", "name": name, "partitions": 1, "replication_factor": rf, "config": config,
                  "assignment": [[1, 2, 3][:rf]], "ts": 2})
    return a.state, a.outcome


APPLY_REFUSALS = [
    ({"retention_ms": "-5"}, "topic orders: config retention_ms=-5 is not allowed: -1 (keep forever) or "
                             "1-3153600000000 ms"),
    ({"retention.ms": "5"}, "topic orders: unknown config key retention.ms (did you mean retention_ms?); known keys: "
                            "cleanup_policy, compression, delete_retention_ms, max_message_bytes, "
                            "min_compaction_lag_ms, min_in_sync, retention_bytes, retention_ms, segment_bytes, "
                            "segment_ms"),
    ({"segment_bytes": "abc"}, "topic orders: config segment_bytes=abc is not allowed: a whole number, "
                               "1024-1099511627776 bytes"),
    ({"retention_bytes": "99999999999999999999"}, "topic orders: config retention_bytes=99999999999999999999 is not "
                                                  "allowed: -1 (no size limit) or 1-1125899906842624 bytes"),
    ({"segment_bytes": "4096"}, "topic orders: config segment_bytes=4096 is not allowed: segment_bytes below the "
                                "batch limit max_message_bytes=4194304 (default)"),
    ({"min_in_sync": "4"}, "topic orders: config min_in_sync=4 is not allowed: 1-3 replicas (the replication factor "
                           "is 3)"),
    ({"cleanup_policy": "none"}, "topic orders: config cleanup_policy=none is not allowed: delete | compact | "
                                 "compact,delete"),
]


@pytest.mark.parametrize("config,message", APPLY_REFUSALS, ids=[next(iter(c)) for c, _ in APPLY_REFUSALS])
def test_apply_refuses_each_bad_config_and_stores_nothing(config: dict[str, str], message: str) -> None:
    s = _cluster()
    after, outcome = _create(s, config)
    assert (outcome.ok, outcome.code, outcome.message) == (False, "invalid_argument", message)
    assert after is s


def test_a_topic_is_checked_against_the_cluster_defaults_in_force() -> None:
    s = _cluster()
    s = apply(s, {"op": "put_object", "kind": "config", "name": "topic-defaults",
                  "spec": {"max_message_bytes": "1024", "segment_bytes": "1024"}, "ts": 2}).state
    after, outcome = _create(s, {"max_message_bytes": "2048"})
    assert outcome.message == ("topic orders: config segment_bytes=1024 (cluster default) is not allowed: "
                               "segment_bytes below the batch limit max_message_bytes=2048")
    after, outcome = _create(s, {"max_message_bytes": "2048", "segment_bytes": "2048"})
    assert outcome.ok


def test_a_defaults_change_that_would_break_a_topic_is_refused_naming_it() -> None:
    s, outcome = _create(_cluster(), {}, rf=1, name="solo")
    assert outcome.ok
    a = apply(s, {"op": "put_object", "kind": "config", "name": "topic-defaults", "spec": {"min_in_sync": "2"},
                  "ts": 3})
    assert a.outcome.message == ("config topic-defaults: the change would make topic solo inconsistent: config "
                                 "min_in_sync=2 (cluster default) is not allowed: 1-1 replicas (the replication "
                                 "factor is 1)")
    assert a.state is s
    bad = apply(s, {"op": "put_object", "kind": "config", "name": "topic-defaults", "spec": {"colour": "red"},
                    "ts": 3}).outcome
    assert bad.code == "invalid_argument" and bad.message.startswith("config topic-defaults: unknown config key colour")
    other = apply(s, {"op": "put_object", "kind": "config", "name": "other", "spec": {}, "ts": 3}).outcome
    assert other.message == "config other: the only config object is topic-defaults"


def test_deleting_the_defaults_is_refused_when_a_topic_needs_them() -> None:
    s = _cluster()
    s = apply(s, {"op": "put_object", "kind": "config", "name": "topic-defaults",
                  "spec": {"max_message_bytes": "1024"}, "ts": 2}).state
    s, outcome = _create(s, {"segment_bytes": "2048"})
    assert outcome.ok
    a = apply(s, {"op": "delete_object", "kind": "config", "name": "topic-defaults", "ts": 3})
    assert a.outcome.message == ("config topic-defaults: the change would make topic orders inconsistent: config "
                                 "segment_bytes=2048 is not allowed: segment_bytes below the batch limit "
                                 "max_message_bytes=4194304 (default)")
    s2 = apply(s, {"op": "alter_topic", "name": "orders", "set": {"max_message_bytes": "1024"}, "ts": 3}).state
    assert apply(s2, {"op": "delete_object", "kind": "config", "name": "topic-defaults", "ts": 4}).outcome.ok
