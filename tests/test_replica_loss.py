"""Replicas that lost data (DESIGN.md §5, storage identity): pure apply and controller tests.

A replica whose SPU registers with another storage id, or reports its log short, or is
fenced for a disk fault, leaves the in-sync set and leadership at a new epoch in the same
command; elections never choose it; with no intact in-sync replica the partition stays
offline until an operator's unclean election. A model-based hypothesis test runs sequences of
writes, restarts, wipes, deaths, catch-ups and controller rounds and checks that the leader
and every in-sync replica always hold every acknowledged record.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kolk.metadata.apply import apply
from kolk.metadata.controllers import choose_leader, offline_reason, reconcile_leaders
from kolk.metadata.objects import PARTITION, SPU, State

SID = {1: "a" * 32, 2: "b" * 32, 3: "c" * 32}


def register(i: int, storage: str | None = None, lost: list | None = None, ts: int = 1) -> dict:
    cmd = {"op": "register_spu", "id": i, "rack": None, "public_address": f"127.0.0.1:{9000 + i}",
           "private_address": f"127.0.0.1:{9100 + i}", "ts": ts}
    if storage is not None:
        cmd["storage_id"] = storage
    if lost is not None:
        cmd["lost"] = lost
    return cmd


def run(state: State, *cmds: dict) -> State:
    for c in cmds:
        applied = apply(state, c)
        assert applied.outcome.ok, applied.outcome
        state = applied.state
    return state


def cluster(leader_first: list[int] = [3, 1, 2]) -> State:  # noqa: B006 - read only
    s = run(State(), *(register(i, SID[i]) for i in (1, 2, 3)))
    return run(s, {"op": "create_topic", "name": "orders", "partitions": 1, "replication_factor": 3, "config": {},
                   "assignment": [leader_first], "ts": 2})


def part(state: State) -> dict:
    p = state.get(PARTITION, "orders-0")
    return {"leader": p.status["leader"], "epoch": p.status["epoch"], "isr": list(p.status["isr"]),
            "lost": [e["spu"] for e in p.status.get("lost", [])]}


def test_new_storage_id_takes_the_leader_out_of_the_isr_and_leadership() -> None:
    """The issue's scenario: SPU 3 led orders-0 and came back with an empty disk. Its
    registration removes it from the in-sync set and leadership at a new epoch, in one command,
    and the controller then elects an intact in-sync replica."""
    s = cluster()
    s = run(s, register(3, "d" * 32, ts=10))
    assert part(s) == {"leader": None, "epoch": 1, "isr": [1, 2], "lost": [3]}
    assert "came back with storage dddddddd, not cccccccc" in s.get(PARTITION, "orders-0").status["lost"][0]["reason"]
    assert s.get(SPU, "3").spec["storage_id"] == "d" * 32
    (cmd,) = reconcile_leaders(s, 11)
    s = run(s, cmd)
    assert part(s)["leader"] == 1 and part(s)["isr"] == [1, 2]


def test_the_same_storage_id_keeps_the_replica_and_only_bumps_the_epoch() -> None:
    s = run(cluster(), register(3, SID[3], ts=10))
    assert part(s) == {"leader": 3, "epoch": 1, "isr": [3, 1, 2], "lost": []}


def test_a_follower_with_new_storage_leaves_the_isr_and_rejoins_by_catching_up() -> None:
    """A wiped follower is out of the set at once; the leader adds it back when it has caught
    up (update_isr), which also clears its lost entry."""
    s = run(cluster(), register(2, "e" * 32, ts=10))
    assert part(s) == {"leader": 3, "epoch": 1, "isr": [3, 1], "lost": [2]}
    s = run(s, {"op": "update_isr", "partition": "orders-0", "isr": [3, 1, 2], "epoch": 1, "leader": 3, "ts": 11,
                "based_on": [3, 1]})
    assert part(s) == {"leader": 3, "epoch": 1, "isr": [3, 1, 2], "lost": []}


def test_a_replica_reported_short_on_start_leaves_the_isr() -> None:
    s = run(cluster(), register(1, SID[1], lost=[{"partition": "orders-0", "reason": "log ends at 3 below 9"},
                                                 {"partition": "gone-7", "reason": "stale log"}], ts=10))
    assert part(s) == {"leader": 3, "epoch": 1, "isr": [3, 2], "lost": [1]}


def test_the_only_in_sync_replica_losing_its_disk_leaves_the_partition_offline() -> None:
    """With no intact in-sync replica alive the partition stays offline (empty set, no leader)
    rather than lose records; the controller elects nobody; only an unclean election ends it."""
    s = run(cluster(), {"op": "update_isr", "partition": "orders-0", "isr": [3], "epoch": 0, "leader": 3, "ts": 5})
    s = run(s, register(3, "d" * 32, ts=10))
    assert part(s) == {"leader": None, "epoch": 1, "isr": [], "lost": [3]}
    assert reconcile_leaders(s, 11) == []
    why = offline_reason(s.get(PARTITION, "orders-0").status, [3, 1, 2], {1, 2, 3})
    assert "no in-sync replica holds every acknowledged record" in why and "SPU 3" in why and "--unclean" in why
    assert isinstance(choose_leader(s, s.get(PARTITION, "orders-0"), None, False), str)
    choice = choose_leader(s, s.get(PARTITION, "orders-0"), None, True)
    assert choice == 1  # the first live replica not recorded as lost
    s = run(s, {"op": "elect_leader", "partition": "orders-0", "leader": choice, "epoch": 1, "ts": 12, "unclean": True})
    p = s.get(PARTITION, "orders-0")
    assert part(s) == {"leader": 1, "epoch": 2, "isr": [1], "lost": [3]}
    assert p.status["last_unclean_epoch"] == 2


def test_fence_replica_reports() -> None:
    """A disk fault (no epoch) fences at once; a follower's report about the leader counts only
    at the epoch it was made for."""
    s = cluster()
    stale = apply(s, {"op": "fence_replica", "partition": "orders-0", "id": 3, "reason": "short", "epoch": 7, "ts": 3})
    assert not stale.outcome.ok and stale.outcome.code == "stale_epoch" and stale.state is s
    s = run(s, {"op": "fence_replica", "partition": "orders-0", "id": 3, "reason": "fsync EIO", "epoch": 0, "ts": 3})
    assert part(s) == {"leader": None, "epoch": 1, "isr": [1, 2], "lost": [3]}
    s = run(s, {"op": "fence_replica", "partition": "orders-0", "id": 2, "reason": "disk full", "ts": 4})
    assert part(s) == {"leader": None, "epoch": 2, "isr": [1], "lost": [3, 2]}


BAD = [
    ("storage id not hex", register(1, "X" * 32), "invalid_argument", "32 lowercase hex"),
    ("storage id short", register(1, "ab"), "invalid_argument", "32 lowercase hex"),
    ("lost not a list", {**register(1, SID[1]), "lost": "orders-0"}, "invalid_command", "'lost' must be list"),
    ("lost entry shape", register(1, SID[1], lost=[["orders-0"]]), "invalid_argument", "each entry"),
    ("lost too long", register(1, SID[1], lost=[{"partition": "p", "reason": "r"}] * 10_001), "invalid_argument",
     "more than 10000"),
    ("fence unknown partition", {"op": "fence_replica", "partition": "nope-0", "id": 1, "reason": "r", "ts": 3},
     "not_found", "does not exist"),
    ("fence a non-replica", {"op": "fence_replica", "partition": "orders-0", "id": 9, "reason": "r", "ts": 3},
     "invalid_argument", "holds no replica"),
    ("fence without reason", {"op": "fence_replica", "partition": "orders-0", "id": 1, "ts": 3}, "invalid_command",
     "'reason' is missing"),
    ("unclean of a non-replica", {"op": "elect_leader", "partition": "orders-0", "leader": 9, "epoch": 0, "ts": 3,
                                  "unclean": True}, "invalid_argument", "needs one of its replicas"),
    ("unclean without leader", {"op": "elect_leader", "partition": "orders-0", "leader": None, "epoch": 0, "ts": 3,
                                "unclean": True}, "invalid_argument", "needs one of its replicas"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_reports_are_refused_and_change_nothing(case: tuple) -> None:
    _, cmd, code, text = case
    s = cluster()
    a = apply(s, cmd)
    assert not a.outcome.ok and a.outcome.code == code and text in a.outcome.message, a.outcome
    assert a.state is s


def test_unclean_election_is_refused_while_a_live_in_sync_replica_exists() -> None:
    """As Kafka's ELECTION_NOT_NEEDED: with a live in-sync replica, an unclean election could
    only lose acknowledged records (the reviewer's case: a wiped SPU named as leader)."""
    s = run(cluster(), register(2, "e" * 32, ts=10))
    a = apply(s, {"op": "elect_leader", "partition": "orders-0", "leader": 2, "epoch": 1, "ts": 11, "unclean": True})
    assert not a.outcome.ok and "in-sync replica SPU 3 is alive" in a.outcome.message, a.outcome
    assert "elect without --unclean" in choose_leader(s, s.get(PARTITION, "orders-0"), 2, True)
    assert "holds no replica" in choose_leader(s, s.get(PARTITION, "orders-0"), 7, False)


def test_a_disk_fault_never_takes_the_last_in_sync_replica_out() -> None:
    """keep_last (an SPU reporting its own disk fault): the log still holds what was
    acknowledged, so the last member stays, at a new epoch (it may come back without the tail
    it had not fsynced, which a follower must then truncate); another member leaves as usual."""
    s = run(cluster(), {"op": "update_isr", "partition": "orders-0", "isr": [3, 1], "epoch": 0, "leader": 3, "ts": 5})
    s = run(s, {"op": "fence_replica", "partition": "orders-0", "id": 3, "reason": "EIO", "ts": 6, "keep_last": True})
    assert part(s) == {"leader": None, "epoch": 1, "isr": [1], "lost": [3]}
    same = apply(s, {"op": "fence_replica", "partition": "orders-0", "id": 1, "reason": "full", "ts": 7,
                     "keep_last": True})
    assert same.outcome.ok and part(same.state) == {"leader": None, "epoch": 2, "isr": [1], "lost": [3]}


def test_a_registration_without_a_storage_id_keeps_the_recorded_one() -> None:
    """An older SPU, or a forged call, registering without a storage id must not erase the one
    recorded, or the next disk loss would go unnoticed."""
    s = run(cluster(), register(3, None, ts=10))
    assert s.get(SPU, "3").spec["storage_id"] == SID[3]
    s = run(s, register(3, "d" * 32, ts=11))
    assert part(s)["lost"] == [3] and 3 not in part(s)["isr"]


def test_losing_a_replica_outside_the_isr_still_bumps_the_epoch() -> None:
    """A stale in-sync change computed before the loss (the leader adding the replica back on
    old progress) must fail: the epoch moves even when the replica was not in the set."""
    s = run(cluster(), {"op": "update_isr", "partition": "orders-0", "isr": [3, 1], "epoch": 0, "leader": 3, "ts": 5})
    s = run(s, register(2, "e" * 32, ts=10))
    assert part(s)["epoch"] == 1
    stale = apply(s, {"op": "update_isr", "partition": "orders-0", "isr": [3, 1, 2], "epoch": 0, "leader": 3, "ts": 11,
                      "based_on": [3, 1]})
    assert not stale.outcome.ok and stale.outcome.code == "stale_epoch"


def test_unclean_election_needs_a_live_replica() -> None:
    s = run(cluster(), {"op": "set_spu_status", "id": 2, "alive": False, "ts": 3})
    a = apply(s, {"op": "elect_leader", "partition": "orders-0", "leader": 2, "epoch": 0, "ts": 4, "unclean": True})
    assert not a.outcome.ok and "not alive" in a.outcome.message


# ---------------------------------------------------------------- the model


@dataclass
class Model:
    """What each SPU's log holds (a count of acknowledged records) beside the SC's state."""

    state: State
    data: dict[int, int] = field(default_factory=lambda: {1: 0, 2: 0, 3: 0})
    storage: dict[int, int] = field(default_factory=lambda: {1: 0, 2: 0, 3: 0})
    acked: int = 0
    ts: int = 10

    def p(self):  # noqa: ANN201
        return self.state.get(PARTITION, "orders-0")

    def alive(self) -> set[int]:
        return {o.spec["id"] for o in self.state.all(SPU) if o.status.get("alive")}

    def do(self, cmd: dict) -> None:
        self.ts += 1
        cmd = {**cmd, "ts": self.ts}
        self.state = apply(self.state, cmd).state  # refused commands change nothing, as on the SC


def _sid(spu: int, generation: int) -> str:
    return f"{spu:x}{generation:031x}"


def step(m: Model, action: tuple[str, int]) -> None:
    kind, spu = action
    p = m.p()
    leader, isr, epoch = p.status["leader"], list(p.status["isr"]), p.status["epoch"]
    alive = m.alive()
    if kind == "write":
        # acks=all: acknowledged once every in-sync replica has it (the high watermark).
        if leader is not None and leader in alive and set(isr) <= alive and m.data[leader] >= m.acked:
            m.acked += 1
            for r in isr:
                m.data[r] = m.acked
    elif kind == "restart":
        m.do(register(spu, _sid(spu, m.storage[spu])))
        m.do({"op": "set_spu_status", "id": spu, "alive": True})
    elif kind == "wipe":
        m.storage[spu] += 1
        m.data[spu] = 0
        m.do(register(spu, _sid(spu, m.storage[spu])))
        m.do({"op": "set_spu_status", "id": spu, "alive": True})
    elif kind == "die":
        m.do({"op": "set_spu_status", "id": spu, "alive": False})
    elif kind == "catch_up":
        # A live follower copies the leader's log, and the leader adds it back once it has
        # reached the high watermark (core/spu/isr.py).
        if leader is not None and leader in alive and spu in alive and spu != leader and spu not in isr:
            m.data[spu] = max(m.data[spu], m.data[leader]) if m.data[spu] <= m.data[leader] else m.data[spu]
            if m.data[spu] >= m.acked:
                m.do({"op": "update_isr", "partition": "orders-0", "isr": isr + [spu], "epoch": epoch,
                      "leader": leader, "based_on": isr})
    elif kind == "shrink":
        if leader is not None and leader in alive and spu != leader and spu in isr and spu not in alive:
            m.do({"op": "update_isr", "partition": "orders-0", "isr": [r for r in isr if r != spu],
                  "epoch": epoch, "leader": leader, "based_on": isr})
    elif kind == "elect":
        for cmd in reconcile_leaders(m.state, m.ts):
            m.do(cmd)


ACTIONS = st.tuples(st.sampled_from(["write", "write", "restart", "wipe", "die", "catch_up", "shrink", "elect"]),
                    st.sampled_from([1, 2, 3]))


@settings(max_examples=300, deadline=None)
@given(st.lists(ACTIONS, max_size=40), st.permutations([1, 2, 3]))
def test_no_election_or_restart_sequence_chooses_a_replica_that_lost_data(actions: list, order: list) -> None:
    """Whatever happens, the leader and every in-sync replica hold every acknowledged record."""
    m = Model(run(State(), *(register(i, _sid(i, 0)) for i in (1, 2, 3))))
    m.do({"op": "create_topic", "name": "orders", "partitions": 1, "replication_factor": 3, "config": {},
          "assignment": [list(order)]})
    for action in actions:
        step(m, action)
        p = m.p()
        for r in p.status["isr"]:
            assert m.data[r] >= m.acked, (action, p.status, m.data, m.acked)
        if p.status["leader"] is not None:
            assert m.data[p.status["leader"]] >= m.acked, (action, p.status, m.data, m.acked)


def test_the_model_catches_a_build_that_ignores_storage_ids() -> None:
    """The same model without storage ids (the broken build) elects the wiped leader."""
    m = Model(run(State(), *(register(i) for i in (1, 2, 3))))
    m.do({"op": "create_topic", "name": "orders", "partitions": 1, "replication_factor": 3, "config": {},
          "assignment": [[3, 1, 2]]})
    step(m, ("write", 0))
    m.data[3] = 0  # the disk is wiped; the SPU registers without a storage id
    m.do(register(3))
    assert m.p().status["leader"] == 3 and m.data[3] < m.acked
