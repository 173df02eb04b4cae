"""The group consumer's pure parts: the construction checks (each bad option refused in one
line naming it), where a newly assigned partition starts, what a commit carries, the wire shape
of partition sets, and the coordinator look-up's backoff (core/client/group_core.py,
group_membership.py, coordinator.py). The member against real processes is
tests/test_group_consumer.py."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kolk.client.client import AsyncClient  # noqa: E402
from kolk.client.consumer import AsyncConsumer, Offset  # noqa: E402
from kolk.client.coordinator import BACKOFF_MAX_S, BACKOFF_MIN_S, backoff_s  # noqa: E402
from kolk.client.group_consumer import AsyncGroupConsumer  # noqa: E402
from kolk.client.group_core import start_offset, to_commit  # noqa: E402
from kolk.client.group_membership import read_partitions, wire_partitions  # noqa: E402
from kolk.groups.names import TopicPartition  # noqa: E402
from kolk.protocol.errors import InvalidRequestError  # noqa: E402
from kolk.protocol.messages import schema  # noqa: E402


def client() -> AsyncClient:
    return AsyncClient("127.0.0.1:1", timeout_s=1)  # never contacted: construction only


def refused(**options: object) -> str:
    options.setdefault("group", "billing")
    with pytest.raises(InvalidRequestError) as e:
        AsyncGroupConsumer(client(), "orders", **options)  # type: ignore[arg-type]
    text = str(e.value)
    assert "\n" not in text and text
    return text


def test_a_group_gives_a_group_consumer_and_no_group_a_plain_one() -> None:
    c = client()
    assert isinstance(c.consumer("orders", group="billing"), AsyncGroupConsumer)
    assert isinstance(c.consumer("orders"), AsyncConsumer)


def test_empty_group_name_is_refused() -> None:
    assert "the group name is empty" in refused(group="")


def test_a_10_kb_group_name_is_refused_naming_its_length() -> None:
    assert "10240 characters, more than 255" in refused(group="g" * 10240)


def test_a_group_name_with_a_slash_is_refused() -> None:
    assert "group name 'a/b' is invalid" in refused(group="a/b")


def test_unknown_assignor_names_the_choices() -> None:
    assert refused(assignor="fair") == "unknown assignor 'fair': use one of sticky, range, roundrobin"


@pytest.mark.parametrize("ms", [999, 600_001, 0, -5])
def test_session_timeout_out_of_range(ms: int) -> None:
    assert refused(session_timeout_ms=ms) == f"session_timeout_ms must be 1000-600000, not {ms}"


def test_rebalance_timeout_out_of_range() -> None:
    assert refused(rebalance_timeout_ms=10) == "rebalance_timeout_ms must be 1000-1800000, not 10"


def test_auto_commit_interval_must_be_positive() -> None:
    assert refused(auto_commit_interval_ms=0) == "auto_commit_interval_ms must be 1-3600000, not 0"


@pytest.mark.parametrize("start", [Offset.absolute(5), Offset.from_end(3), Offset.timestamp(1000)])
def test_start_other_than_beginning_or_end_is_refused(start: Offset) -> None:
    assert refused(start=start).startswith("a group consumer starts a partition without a commit at "
                                           "Offset.beginning() or Offset.end(), not Offset(kind=")


def test_partition_together_with_group_is_refused() -> None:
    assert refused(partition=0) == ("partition= and group= exclude each other: the group's coordinator assigns "
                                    "the partitions")


def test_empty_group_instance_id_is_refused() -> None:
    assert refused(group_instance_id="") == "group_instance_id must be 1-255 characters, not ''"


def test_an_unknown_option_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        AsyncGroupConsumer(client(), "orders", group="g", stop_at_start=True)  # type: ignore[call-arg]


# -------------------------------------------------------------------- where a partition starts

@pytest.mark.parametrize("committed, start, expected", [
    (150, "beginning", (150, False)),   # a commit inside the range: there
    (100, "end", (100, False)),         # at the log start
    (300, "beginning", (300, False)),   # at the log end (it waits there)
    (None, "beginning", (100, False)),  # no commit: the log start
    (None, "end", (250, False)),        # no commit: the high watermark
    (50, "beginning", (100, True)),     # below the log start (retention): start, and warn
    (400, "end", (None, False)),        # past the log end: ask again (a deposed leader answered)
])
def test_start_offset(committed: int | None, start: str, expected: tuple[int, bool]) -> None:
    assert start_offset(committed, 100, 250, 300, start) == expected


def test_a_commit_past_the_end_for_long_is_resumed_at_the_high_watermark_not_the_start() -> None:
    """The records past the partition's end are gone (an unclean election): the group resumes
    at the high watermark rather than reading everything again from the beginning."""
    from kolk.client.group_core import PAST_END_WAIT_S
    assert start_offset(400, 100, 250, 300, "beginning", PAST_END_WAIT_S - 0.1) == (None, False)
    assert start_offset(400, 100, 250, 300, "beginning", PAST_END_WAIT_S) == (250, True)


def test_only_moved_positions_are_committed() -> None:
    assert to_commit({0: 10, 1: 5, 2: 7}, {0: 10, 1: 4}) == {1: 5, 2: 7}
    assert to_commit({}, {0: 3}) == {}


def test_positions_include_the_records_handed_out_of_the_current_push() -> None:
    from kolk.client.consumer import ConsumerRecord

    c = AsyncGroupConsumer(client(), "orders", group="g")
    c.handout.done.update({0: 10, 1: 20})
    c.handout.hold(1, [ConsumerRecord(1, 20 + i, 0, None, b"") for i in range(5)])
    assert c.positions() == {0: 10, 1: 20}  # held, nothing yielded yet
    c.handout.n = 2
    assert c.positions() == {0: 10, 1: 22}
    c.handout.finish(1, 25)
    assert c.positions() == {0: 10, 1: 25}


# -------------------------------------------------------------------- wire shapes and backoff

def test_partition_sets_round_trip_through_the_wire_shape() -> None:
    parts = frozenset({TopicPartition("b", 2), TopicPartition("a", 1), TopicPartition("b", 0)})
    wire = wire_partitions(parts)
    assert wire == [{"topic": "a", "partitions": [1]}, {"topic": "b", "partitions": [0, 2]}]
    msg = schema.GroupHeartbeatRequest.new_message()
    msg.owned = wire
    assert read_partitions(msg.as_reader().owned) == parts
    assert wire_partitions(frozenset()) == []


def test_backoff_stays_within_50_to_200_ms() -> None:
    pauses = [backoff_s(a) for a in range(20) for _ in range(20)]
    assert min(pauses) >= BACKOFF_MIN_S == 0.05 and max(pauses) <= BACKOFF_MAX_S == 0.2
    assert max(backoff_s(0) for _ in range(50)) <= 0.05


# -------------------------------------------------------------------- the change queue and callbacks

def test_the_change_queue_keeps_the_newest_1000_and_counts_what_it_dropped() -> None:
    import asyncio

    from kolk.client.group_consumer import CHANGES_QUEUE_MAX

    async def body() -> None:
        c = AsyncGroupConsumer(client(), "orders", group="g")
        for generation in range(CHANGES_QUEUE_MAX + 5):
            await c._report("assigned", frozenset({TopicPartition("orders", 0)}), generation)
        await c.close()
        changes = [ch async for ch in c.assignment_changes()]
        assert len(changes) == CHANGES_QUEUE_MAX == 1000 and c.changes_dropped == 5
        assert [ch.generation for ch in changes] == list(range(5, CHANGES_QUEUE_MAX + 5))
    asyncio.run(body())


def test_a_callback_error_is_raised_from_the_next_poll_after_the_change_is_done() -> None:
    import asyncio

    calls = []

    async def on_assigned(parts: frozenset, generation: int) -> None:  # an async callback is awaited
        calls.append((parts, generation))
        raise RuntimeError("the application's bug")

    async def body() -> None:
        c = AsyncGroupConsumer(client(), "orders", group="g", on_assigned=on_assigned)
        parts = frozenset({TopicPartition("orders", 1)})
        await c._report("assigned", parts, 3)
        assert calls == [(parts, 3)] and [ch.kind for ch in c._changes] == ["assigned"]
        with pytest.raises(RuntimeError, match="the application's bug"):
            await c._boundary()
        await c._boundary()  # raised once
        await c.close()
    asyncio.run(body())


# -------------------------------------------------------------------- commit(offsets): refused before anything is sent

@pytest.mark.parametrize("offsets, message", [
    ({0: -1}, "the offset to commit for orders-0 must be an int >= 0, not -1"),
    ({TopicPartition("orders", 2): 1.5}, "the offset to commit for orders-2 must be an int >= 0, not 1.5"),
    ({TopicPartition("payments", 0): 3}, "payments-0 is not a partition of orders, which this consumer reads"),
    ({-1: 3}, "orders--1 is not a partition of orders, which this consumer reads"),
])
def test_bad_commit_offsets_are_refused_in_one_line(offsets: dict, message: str) -> None:
    import asyncio

    async def body() -> None:
        c = AsyncGroupConsumer(client(), "orders", group="g")
        with pytest.raises(InvalidRequestError) as e:
            await c.commit(offsets)
        assert str(e.value) == message
    asyncio.run(body())
