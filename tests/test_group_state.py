"""The group state machine (core/groups/state.py) without a socket: join, heartbeat, revoke before
assign, timeouts, leave, static members, generation fencing, persistence."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kolk.groups.names import TopicPartition as TP
from kolk.groups.state import (JOIN, LEAVE, LEAVE_FOR_NOW, Group, GroupError, HeartbeatIn, answer, check_commit,
                               expire, heartbeat, leave, regrant, restore, set_partitions, snapshot)

T = "orders"


def hb(member_id: str = "", epoch: int = JOIN, owned: frozenset[TP] = frozenset(), instance: str | None = None,
       session: int = 10_000, rebalance: int = 60_000, topics: frozenset[str] = frozenset({T}),
       assignor: str = "sticky") -> HeartbeatIn:
    return HeartbeatIn(member_id, instance, epoch, topics, owned, session, rebalance, assignor)


def group(partitions: int = 6) -> Group:
    g = Group("billing")
    g.partitions = {T: partitions}
    return g


def join(g: Group, name: str, now: int = 0, **kw: object) -> tuple[str, int, frozenset[TP]]:
    out = heartbeat(g, hb(**kw), now, name)  # type: ignore[arg-type]
    return out.member_id, out.member_epoch, out.assignment


def settle(g: Group, held: dict[str, frozenset[TP]], now: int = 0, rounds: int = 20) -> dict[str, frozenset[TP]]:
    """Members heartbeat in turn, each reporting what it was last answered, until nothing moves
    and the group is stable (a partition one member handed back after another's turn is given
    at that other's next turn, as a held heartbeat woken by the change would be)."""
    for _ in range(rounds):
        moved = False
        for member_id in list(held):
            if member_id not in g.members:
                del held[member_id]
                continue
            m = g.members[member_id]
            out = heartbeat(g, hb(member_id, m.epoch, held[member_id]), now, "unused")
            if out.assignment != held[member_id]:
                moved = True
            held[member_id] = out.assignment
            assert_exclusive(g, held)
        if not moved and (g.state == "stable" or not g.members):
            return held
    raise AssertionError("the group did not settle")


def assert_exclusive(g: Group, held: dict[str, frozenset[TP]]) -> None:
    """No partition is held by two members, in what they hold or in the coordinator's view."""
    seen: dict[TP, str] = {}
    for member_id, tps in held.items():
        for tp in tps:
            assert tp not in seen, f"{tp} held by {seen[tp]} and {member_id}"
            seen[tp] = member_id
    owners: dict[TP, str] = {}
    for m in g.members.values():
        for tp in m.owned:
            assert tp not in owners, f"{tp} owned by {owners[tp]} and {m.member_id}"
            owners[tp] = m.member_id


def test_a_first_member_gets_every_partition_and_an_epoch_above_zero() -> None:
    g = group()
    member, epoch, assignment = join(g, "a")
    assert member == "a" and epoch >= 1
    assert assignment == frozenset(TP(T, p) for p in range(6))
    assert g.state == "stable"


def test_a_second_member_gets_partitions_only_after_the_first_hands_them_back() -> None:
    g = group()
    _, _, a_held = join(g, "a")
    _, _, b_first = join(g, "b")
    assert b_first == frozenset()  # all six still owned by a
    assert g.state == "reconciling"
    out_a = heartbeat(g, hb("a", g.members["a"].epoch, a_held), 0, "x")
    assert len(out_a.assignment) == 3  # a must hand back three
    # b asks again before a reported: still nothing
    assert answer(g, "b") == frozenset()
    assert not regrant(g, "b", 0)
    # a reports it let them go: now b gets them
    heartbeat(g, hb("a", g.members["a"].epoch, out_a.assignment), 0, "x")
    assert regrant(g, "b", 0)
    assert answer(g, "b") == frozenset(TP(T, p) for p in range(6)) - out_a.assignment
    held = settle(g, {"a": out_a.assignment, "b": answer(g, "b") or frozenset()})
    assert sorted(len(v) for v in held.values()) == [3, 3]
    assert g.state == "stable"


def test_a_member_that_misses_its_session_is_removed_and_its_partitions_go_to_the_others() -> None:
    g = group()
    held = {"a": join(g, "a", session=2_000)[2]}
    join(g, "b", now=0, session=2_000)
    held["b"] = frozenset()
    held = settle(g, held)
    # b keeps heart-beating; a goes silent
    out = heartbeat(g, hb("b", g.members["b"].epoch, held["b"], session=2_000), 1_500, "x")
    assert expire(g, 2_001) == [("a", "no heartbeat for 2000 ms (session timeout)")]
    assert "a" not in g.members
    out = heartbeat(g, hb("b", g.members["b"].epoch, out.assignment, session=2_000), 2_002, "x")
    assert out.assignment == frozenset(TP(T, p) for p in range(6))
    with pytest.raises(GroupError) as e:
        check_commit(g, "a", 1, [TP(T, 0)])
    assert e.value.code == "staleMember"
    with pytest.raises(GroupError) as e:
        heartbeat(g, hb("a", 1, held["a"]), 2_003, "x")
    assert e.value.code == "staleMember"


def test_a_member_that_holds_revoked_partitions_past_its_rebalance_timeout_is_removed() -> None:
    g = group()
    held = {"a": join(g, "a", rebalance=5_000, session=60_000)[2]}
    join(g, "b", session=60_000)
    heartbeat(g, hb("a", g.members["a"].epoch, held["a"], rebalance=5_000, session=60_000), 100, "x")
    assert g.members["a"].revoke_deadline_ms == 5_100
    assert expire(g, 5_000) == []
    gone = expire(g, 5_101)
    assert [m for m, _ in gone] == ["a"] and "rebalance timeout" in gone[0][1]


def test_a_clean_leave_frees_the_partitions_at_once() -> None:
    g = group()
    held = settle(g, {"a": join(g, "a")[2], "b": join(g, "b")[2]})
    assert leave(g, "a", LEAVE, 10)
    out = heartbeat(g, hb("b", g.members["b"].epoch, held["b"]), 10, "x")
    assert out.assignment == frozenset(TP(T, p) for p in range(6))


def test_a_static_member_back_within_its_session_gets_its_partitions_without_a_rebalance() -> None:
    g = group()
    held = settle(g, {"a": join(g, "a", instance="host-a")[2], "b": join(g, "b", instance="host-b")[2]})
    epoch = g.epoch
    assert not leave(g, "a", LEAVE_FOR_NOW, 10)
    assert g.members["a"].away
    new_id, _, assignment = join(g, "a2", now=20, instance="host-a")
    assert new_id == "a2" and assignment == held["a"]
    assert g.epoch == epoch  # nobody else moved
    assert answer(g, "b") == held["b"]
    with pytest.raises(GroupError):  # the old process is fenced
        check_commit(g, "a", 1, [next(iter(held["a"]))])
    with pytest.raises(GroupError) as e:  # and told so: it must not take the entry back
        heartbeat(g, hb("a", 1, held["a"], instance="host-a"), 30, "a3")
    assert e.value.code == "fencedInstance" and "host-a" in str(e.value)


def test_commits_are_fenced_by_member_and_ownership() -> None:
    g = group()
    held = settle(g, {"a": join(g, "a")[2], "b": join(g, "b")[2]})
    mine = next(iter(held["a"]))
    theirs = next(iter(held["b"]))
    check_commit(g, "a", g.members["a"].epoch, [mine])
    with pytest.raises(GroupError) as e:
        check_commit(g, "a", g.members["a"].epoch, [theirs])
    assert e.value.code == "staleMember" and str(theirs) in str(e.value)
    with pytest.raises(GroupError) as e:
        check_commit(g, "a", g.members["a"].epoch + 5, [mine])
    assert e.value.code == "staleMember"
    with pytest.raises(GroupError) as e:
        check_commit(g, "", 0, [mine])
    assert e.value.code == "inUse"
    with pytest.raises(GroupError) as e:
        check_commit(g, "a", -1, [mine])
    assert e.value.code == "invalidArgument" and "epoch -1" in str(e.value)
    check_commit(Group("empty"), "", 0, [mine])  # a reset of a group without members


def test_added_partitions_are_picked_up() -> None:
    g = group(2)
    held = settle(g, {"a": join(g, "a")[2], "b": join(g, "b")[2]})
    assert set_partitions(g, {T: 4})
    held = settle(g, held)
    assert frozenset().union(*held.values()) == frozenset(TP(T, p) for p in range(4))


def test_bad_heartbeats_are_refused_with_one_line() -> None:
    g = group()
    for bad, words in [(hb(session=10), "session timeout"), (hb(rebalance=10), "rebalance timeout"),
                       (hb(assignor="best"), "assignor"), (hb(epoch=-3, member_id="x"), "member epoch"),
                       (hb(member_id="x"), "names no member id"), (hb(epoch=3), "needs the member id"),
                       (hb(topics=frozenset()), "at least one topic")]:
        with pytest.raises(GroupError) as e:
            heartbeat(g, bad, 0, "n")
        assert e.value.code == "invalidArgument" and words in str(e.value) and "\n" not in str(e.value)


def test_a_snapshot_restores_who_owns_what() -> None:
    g = group()
    held = settle(g, {"a": join(g, "a")[2], "b": join(g, "b")[2]})
    g2 = restore("billing", snapshot(g), 1_000)
    g2.partitions = dict(g.partitions)
    assert {m: g2.members[m].owned for m in g2.members} == held
    assert g2.epoch == g.epoch
    assert all(m.deadline_ms == 11_000 for m in g2.members.values())
    # the members carry on with the new coordinator without a move
    assert settle(g2, dict(held), now=1_000) == held


def test_the_unsafe_build_assigns_before_revoking() -> None:
    g = group()
    g.unsafe_assign = True
    join(g, "a")
    _, _, b = join(g, "b")
    assert b  # b got partitions a still owns
    assert any(tp in g.members["a"].owned for tp in b)


# ---------------------------------------------------------------- properties

events = st.lists(st.tuples(st.sampled_from(["join", "beat", "leave", "away", "expire", "grow", "lose"]),
                            st.integers(0, 5), st.integers(0, 3_000)), min_size=1, max_size=60)


@settings(max_examples=200, deadline=None)
@given(events, st.sampled_from(["sticky", "range", "roundrobin"]))
def test_no_partition_ever_has_two_owners_and_the_group_settles(evs: list[tuple[str, int, int]], assignor: str) -> None:
    g = group(6)
    held: dict[str, frozenset[TP]] = {}
    now = 0
    n = 0
    for kind, who, dt in evs:
        now += dt
        ids = sorted(g.members)
        target = ids[who % len(ids)] if ids else None
        if kind == "join":
            n += 1
            out = heartbeat(g, hb(assignor=assignor, session=2_000, instance=f"i{who}" if who < 2 else None),
                            now, f"m{n}")
            for mid in list(held):
                if mid not in g.members:
                    held.pop(mid)  # a static member replaced: the old process was fenced
            held[out.member_id] = out.assignment
        elif target is None:
            continue
        elif kind == "beat" and target in held:
            out = heartbeat(g, hb(target, g.members[target].epoch, held[target], assignor=assignor, session=2_000),
                            now, "x")
            held[target] = out.assignment
        elif kind in ("leave", "away"):
            leave(g, target, LEAVE if kind == "leave" else LEAVE_FOR_NOW, now)
            if target not in g.members or kind == "leave":
                held.pop(target, None)
        elif kind == "expire":
            for mid, _ in expire(g, now):
                held.pop(mid, None)
        elif kind == "grow":
            set_partitions(g, {T: g.partitions[T] + 1})
        elif kind == "lose" and target in held:
            held[target] = frozenset()  # the answer was lost: the member holds nothing new
        held = {m: v for m, v in held.items() if m in g.members}
        assert_exclusive(g, held)
        for m in g.members.values():
            assert m.epoch >= 1
    # Every member heart-beats until the group settles on its target, every partition owned.
    for m in g.members.values():
        held.setdefault(m.member_id, frozenset())
        m.away = False
    held = settle(g, held, now)
    if g.members:
        assert frozenset().union(*held.values()) == frozenset(TP(T, p) for p in range(g.partitions[T]))
        assert g.state == "stable"
