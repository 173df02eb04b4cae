"""The pure arithmetic of ``kolk consumer``: lag per partition (describe) and reset plans
(core/client/groups_admin.py). The same functions run against a real cluster in
tests/test_consumer_cli.py."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kolk.client.groups_admin import (PartitionLag, PartitionRange, PlannedReset, ResetTarget, checked_group,
                                      group_topics, lag_rows, plan_rows)
from kolk.groups.names import TopicPartition as TP
from kolk.protocol.errors import InvalidRequestError, OffsetOutOfRangeError

RANGES = {0: PartitionRange(10, 100), 1: PartitionRange(0, 50), 2: PartitionRange(20, 20)}


def described(**over: Any) -> dict[str, Any]:
    d = {"group": "billing", "state": "stable", "epoch": 3, "assignor": "sticky", "coordinator": 2,
         "members": [{"member_id": "m1", "client": "127.0.0.1:5000", "topics": ["orders"],
                      "assignment": [["orders", 0], ["orders", 2]]},
                     {"member_id": "m2", "client": "127.0.0.1:5001", "topics": ["orders"],
                      "assignment": [["orders", 1]]}],
         "offsets": [{"topic": "orders", "partition": 0, "offset": 60, "metadata": "", "commit_ms": 1}]}
    d.update(over)
    return d


# ---------------------------------------------------------------- lag


def test_lag_is_the_high_watermark_minus_the_commit_or_the_log_start_without_one() -> None:
    ranges = {TP("orders", p): r for p, r in RANGES.items()}
    rows = lag_rows(described(), {"orders": 3}, ranges)
    assert rows == [
        PartitionLag("orders", 0, "m1", "127.0.0.1:5000", 60, 10, 100, 40),
        PartitionLag("orders", 1, "m2", "127.0.0.1:5001", None, 0, 50, 50),
        PartitionLag("orders", 2, "m1", "127.0.0.1:5000", None, 20, 20, 0),
    ]


def test_a_commit_past_the_high_watermark_is_lag_0_not_negative() -> None:
    d = described(offsets=[{"topic": "orders", "partition": 1, "offset": 70}])
    rows = lag_rows(d, {"orders": 3}, {TP("orders", p): r for p, r in RANGES.items()})
    assert rows[1].lag == 0 and rows[1].committed == 70


def test_a_partition_whose_leader_did_not_answer_has_no_lag_and_says_why() -> None:
    ranges: dict[TP, Any] = {TP("orders", 0): "partition orders-0 is offline", TP("orders", 1): RANGES[1],
                             TP("orders", 2): RANGES[2]}
    rows = lag_rows(described(), {"orders": 3}, ranges)
    assert rows[0] == PartitionLag("orders", 0, "m1", "127.0.0.1:5000", 60, None, None, None,
                                   "partition orders-0 is offline")


def test_commits_of_a_deleted_topic_are_shown_with_the_reason() -> None:
    d = described(members=[], offsets=[{"topic": "gone", "partition": 4, "offset": 7}])
    rows = lag_rows(d, {"gone": "topic gone does not exist"}, {})
    assert rows == [PartitionLag("gone", 4, None, None, 7, None, None, None, "topic gone does not exist")]


def test_the_topics_are_subscriptions_assignments_and_commits() -> None:
    d = described(offsets=[{"topic": "old", "partition": 0, "offset": 1}])
    d["members"][1]["topics"] = ["orders", "refunds"]
    assert group_topics(d) == ["old", "orders", "refunds"]


# ---------------------------------------------------------------- reset plans


def test_earliest_latest_and_offset() -> None:
    committed = {0: 60}
    assert [r.new for r in plan_rows(ResetTarget("earliest"), "orders", RANGES, committed)] == [10, 0, 20]
    assert [r.new for r in plan_rows(ResetTarget("latest"), "orders", RANGES, committed)] == [100, 50, 20]
    rows = plan_rows(ResetTarget("offset", 20), "orders", RANGES, committed)
    assert rows == [PlannedReset("orders", 0, 60, 20, 10, 100), PlannedReset("orders", 1, None, 20, 0, 50),
                    PlannedReset("orders", 2, None, 20, 20, 20)]


def test_an_offset_below_the_log_start_is_refused_naming_partition_offset_and_range() -> None:
    with pytest.raises(OffsetOutOfRangeError) as e:
        plan_rows(ResetTarget("offset", 5), "orders", RANGES, {})
    assert str(e.value) == ("reset --to-offset 5: offset 5 of orders-0 is below the log start 10 (records 10-99 are "
                            "available; older ones were deleted by retention)")


def test_an_offset_past_the_high_watermark_is_refused() -> None:
    with pytest.raises(OffsetOutOfRangeError) as e:
        plan_rows(ResetTarget("offset", 51), "orders", {1: RANGES[1]}, {})
    assert str(e.value) == ("reset --to-offset 51: offset 51 is past the end of orders-1 (records 0-49 are "
                            "available; the next record written gets offset 50)")


def test_a_timestamp_takes_the_found_offset_and_never_past_the_high_watermark() -> None:
    rows = plan_rows(ResetTarget("timestamp", 1000), "orders", RANGES, {}, found={0: 42, 1: 55, 2: 20})
    assert [r.new for r in rows] == [42, 50, 20]


def test_shift_moves_the_commit_and_clamps_into_the_range_saying_so() -> None:
    rows = plan_rows(ResetTarget("shift", -30), "orders", {0: RANGES[0], 1: RANGES[1]}, {0: 60, 1: 20})
    assert rows == [PlannedReset("orders", 0, 60, 30, 10, 100),
                    PlannedReset("orders", 1, 20, 0, 0, 50, "clamped: 20-30 = -10 is outside 0-50")]
    up = plan_rows(ResetTarget("shift", 1000), "orders", {0: RANGES[0]}, {0: 60})
    assert up[0].new == 100 and up[0].note == "clamped: 60+1000 = 1060 is outside 10-100"


def test_shift_without_a_commit_is_refused() -> None:
    with pytest.raises(InvalidRequestError) as e:
        plan_rows(ResetTarget("shift", 1), "orders", {1: RANGES[1]}, {})
    assert str(e.value) == ("partition orders-1 has no committed offset to shift from; reset it with --to-earliest, "
                            "--to-latest or --to-offset first")


@given(st.integers(-(2**62), 2**62), st.integers(0, 1000), st.integers(0, 1000), st.integers(0, 2000))
def test_shift_always_lands_in_the_range(n: int, start: int, width: int, committed: int) -> None:
    r = PartitionRange(start, start + width)
    row = plan_rows(ResetTarget("shift", n), "t", {0: r}, {0: committed})[0]
    assert r.log_start <= row.new <= r.high_watermark
    assert (row.note == "") == (row.new == committed + n)


# ---------------------------------------------------------------- bad targets and names


@pytest.mark.parametrize("kind, value, message", [
    ("offset", -1, "reset: --to-offset -1 is out of range: an offset, 0 to 9223372036854775807"),
    ("timestamp", -5, "reset: --to-timestamp -5 is out of range: milliseconds since the epoch, 0 to "
                      "9223372036854775807"),
    ("shift", 2**63, f"reset: --shift {2**63} is out of range: -9223372036854775807 to 9223372036854775807"),
    ("rewind", 0, "reset: 'rewind' is not a reset kind (one of earliest, latest, offset, timestamp, shift)"),
    ("offset", "5", "reset: --to-offset takes a whole number, got str"),
])
def test_a_bad_target_is_refused_in_one_line(kind: str, value: Any, message: str) -> None:
    with pytest.raises(InvalidRequestError) as e:
        ResetTarget(kind, value)
    assert str(e.value) == message


@pytest.mark.parametrize("name, message", [
    ("", "the group name is empty: use 1-255 of A-Z a-z 0-9 . _ -"),
    ("g" * 10240, "the group name has 10240 characters, more than 255: use 1-255 of A-Z a-z 0-9 . _ -"),
    ("a b", "group name 'a b' is invalid: use 1-255 of A-Z a-z 0-9 . _ - (and not '.' or '..')"),
])
def test_a_bad_group_name_is_refused_in_one_line(name: str, message: str) -> None:
    with pytest.raises(InvalidRequestError) as e:
        checked_group(name)
    assert str(e.value) == message
