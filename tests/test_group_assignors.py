"""The consumer group assignors (kolk.groups.assignors): what each promises, for any input.

Properties (hypothesis) for all three: every member gets an entry, every partition of a subscribed
topic goes to exactly one of its subscribers, the answer does not depend on the order of the
members. Balance: within one partition for round-robin and sticky when every member subscribes
to the same topics, per topic for range. Sticky moves exactly the fewest partitions a balanced
answer can (the bound is computed independently in ``_fewest_moves``), is idempotent, and with
differing subscriptions leaves no partition that could go to a subscriber with two fewer.
Exact small examples from Kafka's documentation, bad input, and the speed of a 1,000-member,
10,000-partition group.
"""

from __future__ import annotations

import time
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kolk.groups.assignors import Subscription, assign
from kolk.groups.names import ASSIGNORS, TopicPartition as TP

TOPICS = ["a", "b", "c", "d"]
MEMBER_IDS = [f"m{i}" for i in range(10)]
FEW = settings(max_examples=200, deadline=None)

partition_counts = st.dictionaries(st.sampled_from(TOPICS), st.integers(0, 7), max_size=len(TOPICS))
# "z" is subscribed to by some but never exists: a topic not created yet
topic_sets = st.frozensets(st.sampled_from(TOPICS + ["z"]), max_size=5)


@st.composite
def groups(draw, same_topics: bool = False):
    """(members, partitions): unique member ids, subscriptions equal or not."""
    ids = draw(st.lists(st.sampled_from(MEMBER_IDS), unique=True, max_size=8))
    if same_topics:
        topics = draw(topic_sets)
        members = [Subscription(i, topics) for i in ids]
    else:
        members = [Subscription(i, draw(topic_sets)) for i in ids]
    return members, draw(partition_counts)


@st.composite
def arbitrary_previous(draw, partitions: dict[str, int]):
    """A previous assignment with each existing partition owned by at most one member, drawn
    from all of MEMBER_IDS (so some owners may have left), plus some partitions that no longer
    exist (beyond the count, or of a topic that is gone)."""
    slots = [TP(topic, p) for topic in TOPICS for p in range(partitions.get(topic, 0) + 2)]
    owners = draw(st.lists(st.none() | st.sampled_from(MEMBER_IDS), min_size=len(slots), max_size=len(slots)))
    out: dict[str, set[TP]] = {}
    for tp, owner in zip(slots, owners):
        if owner is not None:
            out.setdefault(owner, set()).add(tp)
    return {m: frozenset(tps) for m, tps in out.items()}


def _all_partitions(members, partitions) -> set[TP]:
    subscribed = set().union(*(m.topics for m in members)) if members else set()
    return {TP(t, p) for t in subscribed for p in range(partitions.get(t, 0))}


def _check_valid(answer, members, partitions) -> None:
    assert set(answer) == {m.member_id for m in members}
    topics_of = {m.member_id: m.topics for m in members}
    seen: list[TP] = []
    for member, tps in answer.items():
        assert isinstance(tps, frozenset)
        for tp in tps:
            assert isinstance(tp, TP)
            assert tp.topic in topics_of[member], f"{member} got {tp} without subscribing to {tp.topic}"
        seen.extend(tps)
    assert Counter(seen) == Counter(_all_partitions(members, partitions)), "each partition exactly once"


def _existing(previous, members, partitions) -> dict[str, set[TP]]:
    """``previous`` without the partitions that are not to be assigned now (gone, or of a topic
    nobody subscribes to any more)."""
    assignable = _all_partitions(members, partitions)
    return {m: set(tps) & assignable for m, tps in previous.items()}


def _moved(previous, answer, members, partitions) -> int:
    """The (member, partition) pairs of ``previous`` whose partition is still to be assigned and
    is no longer that member's: the partitions a rebalance takes from one member and gives to
    another."""
    return sum(1 for m, tps in _existing(previous, members, partitions).items() for tp in tps
               if tp not in answer.get(m, frozenset()))


def _fewest_moves(previous, members, partitions) -> int:
    """The fewest pairs of ``previous`` that ANY balanced answer must move, when every member
    subscribes to the same topics and ``previous`` names each partition at most once.

    - A pair of a member that has left moves, whatever the answer.
    - T partitions over n members, balanced (counts differ by at most one): T % n members hold
      T // n + 1 and the others T // n. A remaining member that kept k pairs (of still existing
      partitions) and ends with cap partitions loses at least max(0, k - cap) of them.
    - Which members get the larger cap is free; the sum of the losses is smallest when the
      larger caps go to the members that kept the most (swapping a larger cap from a member
      with fewer kept pairs to one with more never raises the sum). That sum, plus the
      leavers' pairs, is the bound; sticky must meet it exactly, being balanced itself.
    """
    existing = _existing(previous, members, partitions)
    present = {m.member_id for m in members}
    leavers = sum(len(tps) for m, tps in existing.items() if m not in present)
    kept = sorted((len(existing.get(m.member_id, ())) for m in members), reverse=True)
    total = len(_all_partitions(members, partitions))
    share, extra = divmod(total, len(members)) if members else (0, 0)
    overflow = sum(max(0, k - (share + (1 if rank < extra else 0))) for rank, k in enumerate(kept))
    return leavers + overflow


def _counts(answer) -> list[int]:
    return [len(tps) for tps in answer.values()]


# ---- what every assignor promises ----

@FEW
@given(st.sampled_from(ASSIGNORS), groups(), st.data())
def test_every_partition_goes_to_exactly_one_subscriber(assignor, group, data):
    members, partitions = group
    previous = data.draw(arbitrary_previous(partitions))
    answer = assign(assignor, members, partitions, previous)
    _check_valid(answer, members, partitions)


@FEW
@given(st.sampled_from(ASSIGNORS), groups(), st.data(), st.randoms(use_true_random=False))
def test_the_answer_does_not_depend_on_the_order_of_members(assignor, group, data, rnd):
    members, partitions = group
    previous = data.draw(arbitrary_previous(partitions))
    shuffled = list(members)
    rnd.shuffle(shuffled)
    assert assign(assignor, shuffled, partitions, previous) == assign(assignor, members, partitions, previous)


@FEW
@given(st.sampled_from(["roundrobin", "sticky"]), groups(same_topics=True), st.data())
def test_equal_subscriptions_are_balanced_within_one(assignor, group, data):
    members, partitions = group
    previous = data.draw(arbitrary_previous(partitions))
    counts = _counts(assign(assignor, members, partitions, previous))
    if counts:
        assert max(counts) - min(counts) <= 1, counts


@FEW
@given(groups(same_topics=True))
def test_range_balances_each_topic_within_one(group):
    """Range balances per topic only: the first members get the extra partition of every topic."""
    members, partitions = group
    answer = assign("range", members, partitions, {})
    for topic in {tp.topic for tps in answer.values() for tp in tps}:
        counts = [sum(1 for tp in tps if tp.topic == topic) for tps in answer.values()]
        assert max(counts) - min(counts) <= 1, (topic, counts)


# ---- sticky: fewest moves, idempotent, local balance ----

@FEW
@given(groups(same_topics=True), st.data())
def test_sticky_moves_exactly_the_fewest_a_balanced_answer_can(group, data):
    """From any previous (members gone, partitions gone or added), with equal subscriptions."""
    members, partitions = group
    previous = data.draw(arbitrary_previous(partitions))
    answer = assign("sticky", members, partitions, previous)
    assert _moved(previous, answer, members, partitions) == _fewest_moves(previous, members, partitions)


@FEW
@given(groups(same_topics=True), st.data())
def test_sticky_one_member_leaving_moves_only_its_partitions(group, data):
    members, partitions = group
    if not members:
        return
    previous = assign("sticky", members, partitions, data.draw(arbitrary_previous(partitions)))
    leaver = data.draw(st.sampled_from(members))
    rest = [m for m in members if m is not leaver]
    answer = assign("sticky", rest, partitions, previous)
    _check_valid(answer, rest, partitions)
    # From a balanced answer, the others are within their new quotas: nothing else moves (the
    # leaver's partitions count unless it was the last member: then nobody subscribes to them).
    leavers_partitions = len(_existing(previous, rest, partitions)[leaver.member_id])
    assert _moved(previous, answer, rest, partitions) == leavers_partitions
    assert _fewest_moves(previous, rest, partitions) == leavers_partitions


@FEW
@given(groups(same_topics=True), st.data())
def test_sticky_one_member_joining_moves_only_what_balance_requires(group, data):
    members, partitions = group
    newcomer_id = data.draw(st.sampled_from(MEMBER_IDS))
    if any(m.member_id == newcomer_id for m in members):
        return
    previous = assign("sticky", members, partitions, data.draw(arbitrary_previous(partitions)))
    topics = members[0].topics if members else data.draw(topic_sets)
    grown = members + [Subscription(newcomer_id, topics)]
    answer = assign("sticky", grown, partitions, previous)
    _check_valid(answer, grown, partitions)
    moved = _moved(previous, answer, grown, partitions)
    assert moved == _fewest_moves(previous, grown, partitions)
    # Everything that moved went to the newcomer (which also gets any partition nobody owned
    # before, when it is the first member): the old members only lost partitions.
    owned_before = frozenset().union(*previous.values())
    assert moved == len(answer[newcomer_id] & owned_before)
    for m in members:
        assert answer[m.member_id] <= previous[m.member_id]


@FEW
@given(groups(), st.data())
def test_sticky_given_its_own_answer_answers_the_same(group, data):
    members, partitions = group
    answer = assign("sticky", members, partitions, data.draw(arbitrary_previous(partitions)))
    assert assign("sticky", members, partitions, answer) == answer


@FEW
@given(groups(), st.data())
def test_sticky_with_differing_subscriptions_leaves_no_partition_for_one_with_two_fewer(group, data):
    members, partitions = group
    answer = assign("sticky", members, partitions, data.draw(arbitrary_previous(partitions)))
    count = {m: len(tps) for m, tps in answer.items()}
    for owner, tps in answer.items():
        for tp in tps:
            for m in members:
                if tp.topic in m.topics:
                    assert count[m.member_id] > count[owner] - 2, (tp, owner, m.member_id, count)


def test_sticky_keeps_valid_pairs_and_ignores_the_rest_of_previous():
    members = [Subscription("m1", frozenset({"a"})), Subscription("m2", frozenset({"a", "b"}))]
    partitions = {"a": 4, "b": 1}
    previous = {
        "gone": frozenset({TP("a", 0)}),                     # a member that left
        "m1": frozenset({TP("a", 1), TP("a", 2), TP("b", 0),  # b: m1 does not subscribe to it
                         TP("a", 9), TP("x", 0)}),            # a-9 and x do not exist
        "m2": frozenset({TP("a", 2), TP("a", 3)}),            # a-2 named twice: m1 (first id) keeps it
    }
    answer = assign("sticky", members, partitions, previous)
    assert answer["m1"] >= {TP("a", 1), TP("a", 2)}
    assert TP("a", 3) in answer["m2"]
    _check_valid(answer, members, partitions)


def test_sticky_takes_the_highest_numbered_partitions_away_first():
    members = [Subscription(m, frozenset({"a"})) for m in ("m1", "m2")]
    previous = {"m1": frozenset(TP("a", p) for p in range(4))}
    answer = assign("sticky", members, {"a": 4}, previous)
    assert answer == {"m1": frozenset({TP("a", 0), TP("a", 1)}), "m2": frozenset({TP("a", 2), TP("a", 3)})}


# ---- exact examples (Kafka's documentation of the same assignors) ----

def _subs(spec: dict[str, str]) -> list[Subscription]:
    return [Subscription(m, frozenset(topics.split())) for m, topics in spec.items()]


def _tps(text: str) -> frozenset[TP]:
    return frozenset(TP(s.split("p")[0], int(s.split("p")[1])) for s in text.split())


TWO_BY_THREE = (_subs({"C1": "t0 t1", "C0": "t0 t1"}), {"t0": 3, "t1": 3})


def test_range_kafka_example():
    assert assign("range", *TWO_BY_THREE, {}) == {"C0": _tps("t0p0 t0p1 t1p0 t1p1"), "C1": _tps("t0p2 t1p2")}


def test_roundrobin_kafka_example():
    assert assign("roundrobin", *TWO_BY_THREE, {}) == {"C0": _tps("t0p0 t0p2 t1p1"), "C1": _tps("t0p1 t1p0 t1p2")}


def test_roundrobin_kafka_example_with_differing_subscriptions():
    members = _subs({"C0": "t0", "C1": "t0 t1", "C2": "t0 t1 t2"})
    answer = assign("roundrobin", members, {"t0": 1, "t1": 2, "t2": 3}, {})
    assert answer == {"C0": _tps("t0p0"), "C1": _tps("t1p0"), "C2": _tps("t1p1 t2p0 t2p1 t2p2")}


def test_range_with_differing_subscriptions_splits_each_topic_over_its_subscribers():
    members = _subs({"C0": "t0", "C1": "t0 t1", "C2": "t1"})
    answer = assign("range", members, {"t0": 3, "t1": 5}, {})
    assert answer == {"C0": _tps("t0p0 t0p1"), "C1": _tps("t0p2 t1p0 t1p1 t1p2"), "C2": _tps("t1p3 t1p4")}


def test_sticky_kafka_example_keeps_the_survivors_partitions():
    """Kafka's StickyAssignor example: three consumers, four topics of two partitions; C1 leaves.
    Round-robin would move 5 partitions; sticky moves only C1's 3."""
    every = "t0 t1 t2 t3"
    partitions = {t: 2 for t in every.split()}
    first = assign("sticky", _subs({"C0": every, "C1": every, "C2": every}), partitions, {})
    assert first == {"C0": _tps("t0p0 t1p1 t3p0"), "C1": _tps("t0p1 t2p0 t3p1"), "C2": _tps("t1p0 t2p1")}
    second = assign("sticky", _subs({"C0": every, "C2": every}), partitions, first)
    assert second == {"C0": _tps("t0p0 t1p1 t3p0 t2p0"), "C2": _tps("t1p0 t2p1 t0p1 t3p1")}
    assert assign("roundrobin", _subs({"C0": every, "C2": every}), partitions, {}) == {
        "C0": _tps("t0p0 t1p0 t2p0 t3p0"), "C2": _tps("t0p1 t1p1 t2p1 t3p1")}


# ---- edges and bad input ----

@pytest.mark.parametrize("assignor", ASSIGNORS)
def test_no_members_get_an_empty_answer(assignor):
    assert assign(assignor, [], {"a": 3}, {"gone": frozenset({TP("a", 0)})}) == {}


@pytest.mark.parametrize("assignor", ASSIGNORS)
def test_a_topic_with_no_partitions_or_not_created_assigns_nothing(assignor):
    members = _subs({"m1": "empty", "m2": "missing"})
    assert assign(assignor, members, {"empty": 0}, {}) == {"m1": frozenset(), "m2": frozenset()}


@pytest.mark.parametrize("assignor", ASSIGNORS)
def test_more_members_than_partitions_leaves_some_with_none(assignor):
    answer = assign(assignor, _subs({"m1": "a", "m2": "a", "m3": "a"}), {"a": 2, "unsubscribed": 5}, {})
    assert sorted(_counts(answer)) == [0, 1, 1]


def test_an_unknown_assignor_is_refused_naming_the_choices():
    with pytest.raises(ValueError, match=r"^unknown assignor 'cooperative': choose one of sticky, range, roundrobin$"):
        assign("cooperative", _subs({"m1": "a"}), {"a": 1}, {})


def test_a_member_id_given_twice_is_refused():
    with pytest.raises(ValueError, match=r"^member id 'm1' appears more than once in the members$"):
        assign("sticky", _subs({"m1": "a"}) + _subs({"m1": "b"}), {"a": 1, "b": 1}, {})


@pytest.mark.parametrize("count", [-1, 1.5, "3", True])
def test_a_partition_count_that_is_not_a_count_is_refused(count):
    with pytest.raises(ValueError, match=rf"^topic 'a' has partition count {count!r}: a count is an int, 0 or more$"):
        assign("range", _subs({"m1": "a"}), {"a": count}, {})


# ---- speed ----

@pytest.mark.parametrize("assignor", ASSIGNORS)
def test_a_thousand_members_and_ten_thousand_partitions_take_well_under_a_second(assignor):
    members = [Subscription(f"m{i:04d}", frozenset({"a", "b"})) for i in range(1000)]
    partitions = {"a": 6000, "b": 4000}
    # CPU time of this process, not wall time: other processes on a loaded machine do not count.
    started = time.process_time()
    first = assign(assignor, members, partitions, {})
    second = assign(assignor, members[1:] + [Subscription("new", frozenset({"a", "b"}))], partitions, first)
    elapsed = time.process_time() - started
    assert sum(_counts(second)) == 10_000
    assert elapsed < 1.0, f"two assignments took {elapsed:.3f} s of CPU"
