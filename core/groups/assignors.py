"""Which member of a consumer group reads which partition: the range, round-robin and sticky
assignors.

``assign(assignor, members, partitions, previous) -> {member_id: frozenset[TopicPartition]}``.
Pure: no I/O, no clock, no randomness; the coordinator calls it whenever the membership, a
subscription or a subscribed topic's partition count changes, and the answer becomes the group's
target assignment. ``partitions`` maps topic -> partition count (a subscribed topic missing from
it, or with count 0, has no partitions yet); ``previous`` is the current target assignment (only
sticky reads it).

What every assignor promises:

- every member id is a key of the answer (perhaps with an empty set);
- a member gets only partitions of topics it subscribes to, and every partition of every topic
  that at least one member subscribes to goes to exactly one of its subscribers;
- the same input gives the same answer, in whatever order ``members`` comes: members are taken
  in sorted member id order, topics and partitions in sorted order. ``instance_id`` plays no
  part: a static member that comes back takes over its old member id (docs/consumers.md).

Each assignor:

- ``range`` (Kafka's RangeAssignor): per topic, its partitions split into contiguous ranges
  over the topic's subscribers; with n subscribers and c partitions the first ``c % n`` get one
  more. Balanced per topic, not across topics (the first members get the extra partition of
  every topic).
- ``roundrobin`` (Kafka's RoundRobinAssignor): every (topic, partition) in sorted order dealt in
  turn to the members, skipping a member that does not subscribe to the partition's topic. When
  every member subscribes to the same topics, the counts differ by at most one.
- ``sticky`` (the default): balanced like round-robin while keeping as many of ``previous``'s
  (member, partition) pairs as possible, so a rebalance moves few partitions:

  1. keep the previous pairs that are still valid (member present, still subscribed, partition
     still exists; a partition named under two members stays with the first in id order);
  2. when every member subscribes to the same (existing) topics: T partitions over n members
     gives each a quota of ``T // n``, and ``T % n`` of them one more - those that kept the most
     (ties: sorted id). A member above its quota loses its highest-numbered partitions. This
     takes away the fewest pairs any balanced answer can: ``sum(max(0, kept - quota))``;
  3. give every unowned partition to the subscriber that has the fewest (ties: sorted id),
     the topics with the fewest subscribers first;
  4. with differing subscriptions, step 2 is skipped (a fair share is not a single number
     there) and this step balances instead: move a partition to another of its topic's
     subscribers that has at least two fewer, until no such move is left (or after
     ``STICKY_BALANCE_PASSES_MAX`` passes over the partitions). That is local balance, not the
     best possible: no partition can go to a subscriber with two fewer than its owner.

  Sticky is idempotent: given its own answer as ``previous`` and the same input, it answers the
  same.

Cost: O(P log M + S) for P partitions, M members and S (member, topic) subscriptions, plus, for
differing subscriptions, the balancing passes (each O(P log M + S)). 1,000 members x 10,000
partitions takes tens of milliseconds.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from .names import ASSIGNORS, TopicPartition

__all__ = ["Subscription", "assign", "STICKY_BALANCE_PASSES_MAX"]

# Each pass of sticky's balancing moves at least one partition or ends it, and each move lowers
# the sum of the squared counts, so the loop ends anyway; the cap bounds the time of a
# pathological case (the answer is then still valid, only less balanced).
STICKY_BALANCE_PASSES_MAX = 64

Assignment = dict[str, frozenset[TopicPartition]]


@dataclass(frozen=True)
class Subscription:
    """One member as the assignor sees it: its id, the topics it subscribes to, and its static
    instance id if it has one (not used by the assignors; carried for the coordinator)."""

    member_id: str
    topics: frozenset[str]
    instance_id: str | None = None


def assign(assignor: str, members: Sequence[Subscription], partitions: Mapping[str, int],
           previous: Mapping[str, Iterable[TopicPartition]]) -> Assignment:
    """The target assignment of a group (see the module docstring for what each assignor
    promises). Raises ValueError for an unknown assignor, a member id given twice, or a
    negative partition count."""
    if assignor not in ASSIGNORS:
        raise ValueError(f"unknown assignor {assignor!r}: choose one of {', '.join(ASSIGNORS)}")
    for topic, count in partitions.items():
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"topic {topic!r} has partition count {count!r}: a count is an int, 0 or more")
    ordered = sorted(members, key=lambda m: m.member_id)
    for a, b in zip(ordered, ordered[1:]):
        if a.member_id == b.member_id:
            raise ValueError(f"member id {a.member_id!r} appears more than once in the members")
    if not ordered:
        return {}
    subscribers = _subscribers(ordered, partitions)
    if assignor == "range":
        owned = _range(ordered, partitions, subscribers)
    elif assignor == "roundrobin":
        owned = _roundrobin(ordered, partitions, subscribers)
    else:
        owned = _sticky(ordered, partitions, subscribers, previous)
    return {m.member_id: frozenset(owned[m.member_id]) for m in ordered}


def _subscribers(ordered: list[Subscription], partitions: Mapping[str, int]) -> dict[str, list[str]]:
    """Topic (with at least one partition) -> the sorted ids of the members subscribing to it."""
    out: dict[str, list[str]] = {}
    for m in ordered:
        for topic in m.topics:
            if partitions.get(topic, 0) > 0:
                out.setdefault(topic, []).append(m.member_id)
    return out


def _range(ordered: list[Subscription], partitions: Mapping[str, int],
           subscribers: dict[str, list[str]]) -> dict[str, list[TopicPartition]]:
    owned: dict[str, list[TopicPartition]] = {m.member_id: [] for m in ordered}
    for topic in sorted(subscribers):
        subs, count = subscribers[topic], partitions[topic]
        share, extra = divmod(count, len(subs))
        start = 0
        for i, member in enumerate(subs):
            size = share + (1 if i < extra else 0)
            owned[member].extend(TopicPartition(topic, p) for p in range(start, start + size))
            start += size
    return owned


def _roundrobin(ordered: list[Subscription], partitions: Mapping[str, int],
                subscribers: dict[str, list[str]]) -> dict[str, list[TopicPartition]]:
    ids = [m.member_id for m in ordered]
    position = {member: i for i, member in enumerate(ids)}
    owned: dict[str, list[TopicPartition]] = {member: [] for member in ids}
    turn = 0  # the index of the member whose turn it is
    for topic in sorted(subscribers):
        # The topic's subscribers as positions in ``ids``, sorted: the next one at or after
        # ``turn`` is found by bisection instead of stepping over every non-subscriber.
        seats = [position[member] for member in subscribers[topic]]
        for p in range(partitions[topic]):
            k = bisect_left(seats, turn)
            seat = seats[k] if k < len(seats) else seats[0]
            owned[ids[seat]].append(TopicPartition(topic, p))
            turn = (seat + 1) % len(ids)
    return owned


def _sticky(ordered: list[Subscription], partitions: Mapping[str, int], subscribers: dict[str, list[str]],
            previous: Mapping[str, Iterable[TopicPartition]]) -> dict[str, list[TopicPartition]]:
    ids = [m.member_id for m in ordered]
    subscribed = {m.member_id: m.topics for m in ordered}
    owner: dict[TopicPartition, str] = {}
    # 1. keep the previous pairs that are still valid
    for member in ids:
        for topic, p in previous.get(member, ()):
            tp = TopicPartition(topic, p)
            if topic in subscribed[member] and topic in subscribers and 0 <= p < partitions[topic] \
                    and tp not in owner:
                owner[tp] = member
    kept: dict[str, list[TopicPartition]] = {member: [] for member in ids}
    for tp, member in owner.items():
        kept[member].append(tp)
    # 2. with the same subscriptions everywhere, cut every member down to its quota
    effective = [frozenset(t for t in m.topics if t in subscribers) for m in ordered]
    same = all(topics == effective[0] for topics in effective)
    if same:
        total = sum(partitions[t] for t in subscribers)
        share, extra = divmod(total, len(ids))
        by_kept = sorted(ids, key=lambda member: (-len(kept[member]), member))
        for rank, member in enumerate(by_kept):
            quota = share + (1 if rank < extra else 0)
            mine = kept[member]
            if len(mine) > quota:
                mine.sort()
                for tp in mine[quota:]:
                    del owner[tp]
                del mine[quota:]
    count = {member: len(kept[member]) for member in ids}
    # 3. unowned partitions to the subscriber with the fewest, most constrained topics first;
    #    topics with the same subscribers share one heap of (count, member)
    for subs, topics in _groups(subscribers):
        heap = [(count[member], member) for member in subs]
        heapq.heapify(heap)
        for topic in topics:
            for p in range(partitions[topic]):
                tp = TopicPartition(topic, p)
                if tp in owner:
                    continue
                _, member = heapq.heappop(heap)
                owner[tp] = member
                count[member] += 1
                heapq.heappush(heap, (count[member], member))
    # 4. differing subscriptions: move partitions to subscribers with at least two fewer
    if not same:
        _balance(owner, count, subscribers, partitions)
    owned: dict[str, list[TopicPartition]] = {member: [] for member in ids}
    for tp, member in owner.items():
        owned[member].append(tp)
    return owned


def _groups(subscribers: dict[str, list[str]]) -> list[tuple[list[str], list[str]]]:
    """The subscribed topics grouped by their (sorted) subscriber list: [(subscribers, sorted
    topics)], the groups with the fewest subscribers first (ties: the first topic's name)."""
    by_subs: dict[tuple[str, ...], list[str]] = {}
    for topic in sorted(subscribers):
        by_subs.setdefault(tuple(subscribers[topic]), []).append(topic)
    return sorted(((list(subs), topics) for subs, topics in by_subs.items()),
                  key=lambda g: (len(g[0]), g[1][0]))


def _balance(owner: dict[TopicPartition, str], count: dict[str, int], subscribers: dict[str, list[str]],
             partitions: Mapping[str, int]) -> None:
    """Move partitions, highest-numbered first, to the subscriber with the fewest when it has at
    least two fewer than the owner; pass over all partitions until a pass moves none."""
    groups = _groups(subscribers)
    for _ in range(STICKY_BALANCE_PASSES_MAX):
        if max(count.values()) - min(count.values()) < 2:
            return
        moved = False
        for subs, topics in groups:
            # Within one group only its own members' counts change, and every change pushes the
            # new value: an entry whose count is not the member's current count is stale.
            heap = [(count[member], member) for member in subs]
            heapq.heapify(heap)
            for topic in reversed(topics):
                for p in range(partitions[topic] - 1, -1, -1):
                    tp = TopicPartition(topic, p)
                    giver = owner[tp]
                    while heap[0][0] != count[heap[0][1]]:
                        heapq.heappop(heap)
                    least, taker = heap[0]
                    if least > count[giver] - 2:
                        continue
                    owner[tp] = taker
                    count[taker] += 1
                    count[giver] -= 1
                    heapq.heappush(heap, (count[taker], taker))
                    heapq.heappush(heap, (count[giver], giver))
                    moved = True
        if not moved:
            return
