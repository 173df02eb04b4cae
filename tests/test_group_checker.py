"""The consumer-group checker (jepsen/checkers/groups.py) and the history it reads
(jepsen/group_history.py): one hand-made history per anomaly and per excused case, the member
log format, then properties of histories simulated from a correct group and from one that grants
a partition before its old owner revoked it."""

from __future__ import annotations

import pathlib
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from jepsen.checkers.groups import ANOMALIES, check_groups, intervals  # noqa: E402
from jepsen.group_history import (Change, Commit, Delivery, GroupHistory, Send, dumps, loads,  # noqa: E402
                                  member_lines)


class H:
    """A group history built step by step; every step takes the next tick of a fake clock."""

    def __init__(self) -> None:
        self.h = GroupHistory()
        self.t = 0.0
        self.next_value = 0
        self.log: dict[int, list[int]] = {}  # partition -> values at offsets 0, 1, ...

    def tick(self) -> float:
        self.t += 1.0
        return self.t

    def send(self, p: int, n: int = 1) -> H:
        for _ in range(n):
            self.next_value += 1
            log = self.log.setdefault(p, [])
            self.h.sends.append(Send(self.next_value, p, "ok", len(log)))
            log.append(self.next_value)
        return self

    def change(self, member: str, kind: str, ps: tuple[int, ...] = (), gen: int | None = 1) -> H:
        self.h.changes.append(Change(self.tick(), member, kind, ps, gen))  # type: ignore[arg-type]
        return self

    def read(self, member: str, p: int, offsets: range | list[int]) -> H:
        t = self.tick()
        self.h.deliveries += [Delivery(t, member, p, o, self.log[p][o]) for o in offsets]
        return self

    def commit(self, member: str, p: int, offset: int, outcome: str = "ok", concurrent: bool = False) -> H:
        t = self.tick()
        done = None if outcome == "info" else (t + 0.5 if not concurrent else t + 10)
        self.h.commits.append(Commit(member, ((p, offset),), t, done, outcome))
        return self

    def check(self) -> dict:
        return check_groups(self.h)


def found(r: dict) -> set[str]:
    return {name for name, n in r["counts"].items() if n}


def handover() -> H:
    """a reads p0 0-4, commits 5, hands p0 back; b starts at 5 and reads to the end."""
    h = H().send(0, 10)
    h.change("a", "assigned", (0,), 1).read("a", 0, range(5)).commit("a", 0, 5).change("a", "revoked", (0,), 2)
    return h.change("b", "assigned", (0,), 2).read("b", 0, range(5, 10)).commit("b", 0, 10)


def test_a_clean_handover_is_valid():
    r = handover().check()
    assert r["valid"], r
    assert set(r["counts"]) == set(ANOMALIES) and r["examples"] == {}
    s = r["stats"]
    assert (s["acknowledged"], s["deliveries"], s["redeliveries"], s["intervals"]) == (10, 10, 0, 2)
    assert s["commits"] == {"ok": 2, "fail": 0, "info": 0}
    assert s["interval_ends"]["revoked"] == 1 and s["interval_ends"]["end"] == 1


def test_redelivery_after_a_kill_is_at_least_once_not_an_anomaly():
    h = H().send(0, 6)
    h.change("a", "assigned", (0,)).read("a", 0, range(4)).commit("a", 0, 2).change("a", "killed", ())
    h.change("b", "assigned", (0,), 2).read("b", 0, range(2, 6))
    r = h.check()
    assert r["valid"], r
    assert r["stats"]["redeliveries"] == 2 and r["stats"]["interval_ends"]["killed"] == 1


def test_lost_when_an_acknowledged_value_is_never_delivered():
    h = H().send(0, 3).send(1, 2)
    h.change("a", "assigned", (0, 1)).read("a", 0, range(3)).read("a", 1, [0])
    r = h.check()
    assert found(r) == {"lost"}, r
    assert r["examples"]["lost"] == [{"value": 5, "partition": 1, "offset": 1}]


def test_failed_and_unknown_sends_need_not_be_delivered():
    h = H().send(0, 2)
    h.h.sends += [Send(100, 0, "fail"), Send(101, 0, "info")]
    h.change("a", "assigned", (0,)).read("a", 0, range(2))
    r = h.check()
    assert r["valid"], r
    assert r["stats"]["sends"] == {"ok": 2, "fail": 1, "info": 1}


def test_commit_backwards():
    h = H().send(0, 10).change("a", "assigned", (0,)).read("a", 0, range(10))
    r = h.commit("a", 0, 8).commit("a", 0, 5).check()
    assert found(r) == {"commit_backwards"}, r
    ex = r["examples"]["commit_backwards"][0]
    assert (ex["earlier"]["offset"], ex["later"]["offset"]) == (8, 5)


def test_concurrent_commits_may_land_in_either_order():
    """A commit answered late (its member was frozen with the answer in flight) is not ordered
    before one invoked while it was outstanding."""
    h = H().send(0, 10).change("a", "assigned", (0,)).read("a", 0, range(10))
    r = h.commit("a", 0, 8, concurrent=True).commit("a", 0, 5).check()
    assert r["valid"], r


def test_refused_and_unknown_commits_are_not_ordered():
    h = H().send(0, 10).change("a", "assigned", (0,)).read("a", 0, range(10))
    r = h.commit("a", 0, 9, "fail").commit("a", 0, 8, "info").commit("a", 0, 5).check()
    assert r["valid"], r


def test_start_after_commit_is_a_gap():
    h = H().send(0, 10)
    h.change("a", "assigned", (0,)).read("a", 0, range(3)).commit("a", 0, 3).change("a", "revoked", (0,), 2)
    h.change("b", "assigned", (0,), 2).read("b", 0, range(6, 10))
    r = h.check()
    assert "start_after_commit" in found(r), r
    ex = r["examples"]["start_after_commit"][0]
    assert (ex["member"], ex["first_offset"], ex["committed_at_most"], ex["skipped"]) == ("b", 6, 3, 3)


def test_without_any_commit_a_member_starts_at_the_beginning():
    h = H().send(0, 5).change("a", "assigned", (0,)).read("a", 0, range(2, 5))
    assert found(h.check()) == {"start_after_commit", "lost"}


def test_an_unknown_commit_invoked_before_the_assignment_may_explain_a_later_start():
    h = H().send(0, 10)
    h.change("a", "assigned", (0,)).read("a", 0, range(7)).commit("a", 0, 3).commit("a", 0, 7, "info")
    h.change("a", "killed").change("b", "assigned", (0,), 2).read("b", 0, range(7, 10))
    r = h.check()
    assert r["valid"], r


def test_a_refused_commit_does_not_explain_a_later_start():
    h = H().send(0, 10)
    h.change("a", "assigned", (0,)).read("a", 0, range(7)).commit("a", 0, 3).commit("a", 0, 7, "fail")
    h.change("a", "killed").change("b", "assigned", (0,), 2).read("b", 0, range(7, 10))
    assert found(h.check()) == {"start_after_commit"}


def test_overlap_when_a_partition_is_granted_before_it_was_revoked():
    h = H().send(0, 10)
    h.change("a", "assigned", (0,), 1).read("a", 0, range(5))
    h.change("b", "assigned", (0,), 2).read("b", 0, range(5))  # a still owns it
    h.commit("a", 0, 5).change("a", "revoked", (0,), 2).read("b", 0, range(5, 10))
    r = h.check()
    assert found(r) == {"overlap"}, r
    ex = r["examples"]["overlap"][0]
    assert (ex["first"]["member"], ex["first"]["ended_by"], ex["second"]["member"]) == ("a", "revoked", "b")


def test_a_fenced_zombie_of_an_older_generation_is_excused():
    """a froze (SIGSTOP) holding p0 in generation 1, was removed, b got p0 in generation 2; a
    woke up, read what it had buffered, then learnt it was lost."""
    h = H().send(0, 10)
    h.change("a", "assigned", (0,), 1).read("a", 0, range(3)).commit("a", 0, 3)
    h.change("b", "assigned", (0,), 2).read("b", 0, range(3, 10))
    h.read("a", 0, [3]).commit("a", 0, 4, "fail").change("a", "lost", (0,), 1)
    r = h.check()
    assert r["valid"], r
    assert r["stats"]["fenced_overlaps"] == 1 and r["stats"]["interval_ends"]["lost"] == 1


def test_a_lost_owner_in_the_same_generation_is_not_excused():
    h = H().send(0, 4)
    h.change("a", "assigned", (0,), 2).change("b", "assigned", (0,), 2).read("b", 0, range(4))
    h.change("a", "lost", (0,), 2)
    assert found(h.check()) == {"overlap"}


def test_a_lost_owner_of_unknown_generation_is_not_excused():
    h = H().send(0, 4)
    h.change("a", "assigned", (0,), None).change("b", "assigned", (0,), 2).read("b", 0, range(4))
    h.change("a", "lost", (0,), None)
    assert found(h.check()) == {"overlap"}


def test_touching_intervals_do_not_overlap():
    h = H().send(0, 2)
    ivs, odd = intervals([Change(1.0, "a", "assigned", (0,), 1), Change(2.0, "a", "revoked", (0,), 2),
                          Change(2.0, "b", "assigned", (0,), 2)], end_time=9.0)
    assert odd == 0 and [(iv.member, iv.start, iv.end, iv.end_kind) for iv in ivs] == [
        ("a", 1.0, 2.0, "revoked"), ("b", 2.0, 9.0, "end")]
    h.h.changes = [Change(1.0, "a", "assigned", (0,), 1), Change(2.0, "a", "revoked", (0,), 2),
                   Change(2.0, "b", "assigned", (0,), 2)]
    h.h.deliveries = [Delivery(1.5, "a", 0, 0, 1), Delivery(2.5, "b", 0, 1, 2)]
    h.h.commits = [Commit("a", ((0, 1),), 1.6, 1.7, "ok")]
    r = h.check()
    assert r["valid"], r


def test_closing_and_killed_end_every_interval_of_the_member():
    ivs, _ = intervals([Change(1, "a", "assigned", (0, 1), 1), Change(2, "a", "closing"),
                        Change(3, "b", "assigned", (2,), 1), Change(4, "b", "killed")])
    assert sorted((iv.member, iv.partition, iv.end, iv.end_kind) for iv in ivs) == [
        ("a", 0, 2, "closing"), ("a", 1, 2, "closing"), ("b", 2, 4, "killed")]


def test_changes_naming_partitions_not_held_are_counted_not_fatal():
    ivs, odd = intervals([Change(1, "a", "revoked", (0,), 1), Change(2, "a", "assigned", (1,), 1),
                          Change(3, "a", "assigned", (1,), 2)])
    assert odd == 2 and len(ivs) == 1


def test_unowned_delivery():
    h = H().send(0, 4)
    h.change("a", "assigned", (0,)).read("a", 0, range(2)).commit("a", 0, 2).change("a", "revoked", (0,), 2)
    h.read("a", 0, [2]).change("b", "assigned", (0,), 2).read("b", 0, range(2, 4))
    r = h.check()
    assert found(r) == {"unowned_delivery"}, r
    assert r["examples"]["unowned_delivery"][0]["offset"] == 2


def test_nonmonotonic_delivery_and_skip_inside_one_interval():
    h = H().send(0, 8).change("a", "assigned", (0,)).read("a", 0, [0, 1, 2, 1])
    assert found(h.check()) == {"nonmonotonic_delivery", "lost"}
    h = H().send(0, 8).change("a", "assigned", (0,)).read("a", 0, [0, 1, 5, 6, 7])
    r = h.check()
    assert found(r) == {"delivery_skip", "lost"}, r
    assert r["examples"]["delivery_skip"][0] == {"member": "a", "partition": 0, "offsets": [1, 5], "skipped": 3}


def test_a_jump_over_offsets_where_no_record_exists_is_no_skip():
    h = H()
    h.h.sends = [Send(1, 0, "ok", 0), Send(2, 0, "ok", 5)]
    h.h.changes = [Change(0.5, "a", "assigned", (0,), 1)]
    h.h.deliveries = [Delivery(1, "a", 0, 0, 1), Delivery(2, "a", 0, 5, 2)]
    assert check_groups(h.h)["valid"]


def test_examples_are_bounded():
    h = H().send(0, 50)
    assert check_groups(h.h)["counts"]["lost"] == 50 and len(check_groups(h.h)["examples"]["lost"]) == 10


# ---------------------------------------------------------------- the stored forms

def test_member_lines_pair_commits_and_tolerate_a_torn_last_line():
    lines = ['{"t": 10.0, "k": "assigned", "ps": [1, 0], "g": 3}\n',
             '{"t": 10.5, "k": "deliver", "recs": [[0, 0, 7], [1, 0, 8]]}\n',
             '{"t": 11.0, "k": "commit", "id": 1, "phase": "invoke", "offsets": [[0, 1]]}\n',
             '{"t": 11.1, "k": "commit", "id": 1, "phase": "ok"}\n',
             '{"t": 11.2, "k": "commit", "id": 2, "phase": "invoke", "offsets": [[1, 1]]}\n',
             '{"t": 11.3, "k": "deliv']
    h = member_lines("c1.1", lines, t0=10.0)
    assert h.changes == [Change(0.0, "c1.1", "assigned", (0, 1), 3)]
    assert h.deliveries == [Delivery(0.5, "c1.1", 0, 0, 7), Delivery(0.5, "c1.1", 1, 0, 8)]
    assert h.commits[0] == Commit("c1.1", ((0, 1),), 1.0, pytest.approx(1.1), "ok", None)
    assert h.commits[1].outcome == "info" and h.commits[1].complete_time is None


def test_member_lines_refuse_a_bad_line_before_the_last():
    with pytest.raises(ValueError, match="member c1.1 line 1"):
        member_lines("c1.1", ['{"t": 1, "k": "dance"}\n', '{"t": 2, "k": "closing"}\n'], 0.0)
    with pytest.raises(ValueError, match="member c1.1 line 1"):
        member_lines("c1.1", ["not json\n", '{"t": 2, "k": "closing"}\n'], 0.0)


def test_an_unknown_change_kind_or_commit_outcome_is_refused():
    with pytest.raises(ValueError, match="unknown change kind 'moved'"):
        Change(1.0, "a", "moved")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown commit outcome 'maybe'"):
        Commit("a", (), 1.0, 2.0, "maybe")


def test_dumps_and_loads_round_trip():
    h = handover()
    h.h.end_time = 99.0
    h.h.commits.append(Commit("b", ((0, 3),), 20.0, None, "info", "killed"))
    back = loads(dumps(h.h))
    assert (back.sends, back.deliveries, back.changes, back.commits, back.end_time) == (
        h.h.sends, h.h.deliveries, h.h.changes, h.h.commits, 99.0)
    assert loads(dumps(GroupHistory())).end_time == float("inf")
    with pytest.raises(ValueError, match="line 1: unknown type 'x'"):
        loads('{"type": "x"}\n')


# ---------------------------------------------------------------- simulated groups

@st.composite
def group_runs(draw):
    """A random run of a group over 3 partitions: records appended, members joining, leaving,
    being killed, frozen and fenced, reading and committing. ``unsafe`` grants a moving
    partition to its new owner before the old one has revoked it."""
    return draw(st.lists(st.tuples(st.sampled_from(["send", "read", "commit", "join", "leave", "kill", "fence"]),
                                   st.integers(0, 2), st.integers(1, 4)), min_size=1, max_size=60))


def simulate(steps, unsafe: bool = False) -> tuple[GroupHistory, bool]:
    """Play ``steps`` against a model coordinator; returns the history (drained at the end) and
    whether an unsafe handover happened (a partition granted while its old owner held it)."""
    h = H()
    parts = (0, 1, 2)
    committed = dict.fromkeys(parts, 0)
    gen = 1
    members: dict[str, dict[int, int]] = {}  # member -> partition -> position
    n = 0
    unsafe_happened = False

    def give(p: int, to: str) -> None:
        nonlocal unsafe_happened
        owner = next((m for m, held in members.items() if p in held), None)
        if owner is not None:
            if unsafe:
                unsafe_happened = True
                h.change(to, "assigned", (p,), gen)
                members[to][p] = committed[p]
                h.commit(owner, p, members[owner].pop(p))
                h.change(owner, "revoked", (p,), gen)
                return
            pos = members[owner].pop(p)
            h.commit(owner, p, pos)
            committed[p] = max(committed[p], pos)
            h.change(owner, "revoked", (p,), gen)
        h.change(to, "assigned", (p,), gen)
        members[to][p] = committed[p]

    def balance() -> None:
        nonlocal gen
        gen += 1
        names = sorted(members)
        for i, p in enumerate(parts):
            if names and p not in members[names[i % len(names)]]:
                give(p, names[i % len(names)])

    for op, p, k in steps:
        if op == "send":
            h.send(p, k)
        elif op == "join" and len(members) < 4:
            n += 1
            members[f"m{n}"] = {}
            balance()
        elif op in ("leave", "kill", "fence") and members:
            name = sorted(members)[p % len(members)]
            held = members.pop(name)
            if op == "leave":
                for q, pos in held.items():
                    h.commit(name, q, pos)
                    committed[q] = max(committed[q], pos)
                h.change(name, "closing", ())
            elif op == "kill":
                h.change(name, "killed", ())
            else:  # frozen, removed, then it wakes up: its commit is refused and it learns it is lost
                zombie_gen = gen
                balance()
                for q, pos in held.items():
                    h.commit(name, q, pos, "fail")
                h.change(name, "lost", tuple(sorted(held)), zombie_gen)
                continue
            balance()
        elif op in ("read", "commit"):
            for held in members.values():
                if p in held:
                    if op == "read":
                        end = min(len(h.log.get(p, [])), held[p] + k)
                        h.read(next(m for m, x in members.items() if x is held), p, range(held[p], end))
                        held[p] = max(held[p], end)
                    else:
                        h.commit(next(m for m, x in members.items() if x is held), p, held[p])
                        committed[p] = max(committed[p], held[p])
    # The drain: the members leave, and a last one reads every partition to its end.
    for name, held in sorted(members.items()):
        for q, pos in held.items():
            h.commit(name, q, pos)
            committed[q] = max(committed[q], pos)
        h.change(name, "closing", ())
    members.clear()
    members["drain"] = {}
    balance()
    for p in parts:
        if p in members["drain"]:
            h.read("drain", p, range(members["drain"][p], len(h.log.get(p, []))))
    return h.h, unsafe_happened


@settings(max_examples=200, deadline=None)
@given(group_runs())
def test_a_correct_group_is_always_valid(steps):
    history, _ = simulate(steps)
    r = check_groups(history)
    assert r["valid"], (r["counts"], r["examples"])


@settings(max_examples=200, deadline=None)
@given(group_runs())
def test_granting_before_revoking_is_always_caught(steps):
    history, unsafe = simulate(steps, unsafe=True)
    r = check_groups(history)
    assert r["counts"]["overlap"] > 0 if unsafe else r["valid"], (r["counts"], r["examples"])


@settings(max_examples=100, deadline=None)
@given(group_runs(), st.data())
def test_dropping_a_delivered_record_is_caught(steps, data):
    history, _ = simulate(steps)
    if not history.deliveries:
        return
    gone = data.draw(st.sampled_from(history.deliveries))
    history.deliveries = [d for d in history.deliveries if d.value != gone.value]
    assert check_groups(history)["counts"]["lost"] == 1
