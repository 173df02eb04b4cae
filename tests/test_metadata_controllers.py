"""Controllers and the watch change log as pure functions (metadata/controllers.py, watch.py)."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from kolk.metadata.apply import Event, apply
from kolk.metadata.controllers import place_replicas, reconcile_leaders, reconcile_liveness
from kolk.metadata.objects import PARTITION, State
from kolk.metadata.watch import ChangeLog


def cluster(racks: list[str | None], alive: list[bool] | None = None) -> State:
    s = State()
    for i, rack in enumerate(racks):
        s = apply(s, {"op": "register_spu", "id": i, "rack": rack, "public_address": f"h:{1000 + i}",
                      "private_address": f"h:{2000 + i}", "ts": 1}).state
        if alive is not None and not alive[i]:
            s = apply(s, {"op": "set_spu_status", "id": i, "alive": False, "ts": 2}).state
    return s


def test_placement_spreads_racks_and_leaders() -> None:
    """With three racks and RF 3 every partition has one replica per rack, and the preferred
    leaders (first replicas) are spread evenly."""
    s = cluster(["a", "a", "b", "b", "c", "c"])
    out = place_replicas(s, 6, 3)
    rack = {0: "a", 1: "a", 2: "b", 3: "b", 4: "c", 5: "c"}
    assert all(len({rack[r] for r in reps}) == 3 for reps in out)
    assert sorted(Counter(reps[0] for reps in out).values()) == [1] * 6


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from([None, "a", "b", "c"]), min_size=1, max_size=7), st.integers(1, 12), st.data())
def test_placement_is_valid_and_balanced(racks: list, partitions: int, data: st.DataObject) -> None:
    """Any cluster: replicas distinct and RF long; when there are at least RF failure domains
    (a named rack, or an SPU without a rack) a partition's replicas sit in distinct domains;
    without racks, loads differ by at most one; apply accepts the assignment."""
    rf = data.draw(st.integers(1, len(racks)))
    s = cluster(racks)
    out = place_replicas(s, partitions, rf)
    assert all(len(r) == rf == len(set(r)) for r in out)
    domain = {i: rack if rack is not None else f"spu-{i}" for i, rack in enumerate(racks)}
    if len(set(domain.values())) >= rf:
        assert all(len({domain[r] for r in reps}) == rf for reps in out)
    if all(r is None for r in racks):
        load = Counter(r for reps in out for r in reps)
        counts = [load.get(i, 0) for i in range(len(racks))]
        assert max(counts) - min(counts) <= 1
    a = apply(s, {"op": "create_topic", "name": "t", "partitions": partitions, "replication_factor": rf,
                  "config": {}, "assignment": out, "ts": 5})
    assert a.outcome.ok


def test_placement_prefers_live_spus_as_leaders() -> None:
    """A dead SPU is not chosen as preferred leader while live ones exist."""
    s = cluster([None, None, None], alive=[False, True, True])
    assert all(reps[0] != 0 for reps in place_replicas(s, 4, 1))


def test_liveness_marks_silent_spus_dead_and_returning_ones_alive() -> None:
    """Heartbeat older than the timeout -> dead; fresh heartbeat from a dead SPU -> alive."""
    s = cluster([None, None, None], alive=[True, True, False])
    cmds = reconcile_liveness(s, {0: 9_500, 1: 5_000, 2: 9_900}, now_ms=10_000, timeout_ms=2_000)
    assert cmds == [{"op": "set_spu_status", "id": 1, "alive": False, "ts": 10_000},
                    {"op": "set_spu_status", "id": 2, "alive": True, "ts": 10_000}]


def test_leader_election_from_isr_with_epoch_bump() -> None:
    """When the leader dies the first live in-sync replica leads at epoch + 1; with no live
    in-sync replica the partition goes offline and the epoch still moves (fencing)."""
    s = cluster([None, None, None])
    s = apply(s, {"op": "create_topic", "name": "t", "partitions": 2, "replication_factor": 2, "config": {},
                  "assignment": [[0, 1], [0, 2]], "ts": 2}).state
    s = apply(s, {"op": "update_isr", "partition": "t-1", "isr": [0], "epoch": 0, "leader": 0, "ts": 3}).state
    s = apply(s, {"op": "set_spu_status", "id": 0, "alive": False, "ts": 4}).state
    cmds = reconcile_leaders(s, now_ms=5)
    assert cmds == [{"op": "elect_leader", "partition": "t-0", "leader": 1, "epoch": 0, "ts": 5},
                    {"op": "elect_leader", "partition": "t-1", "leader": None, "epoch": 0, "ts": 5}]
    for c in cmds:
        s = apply(s, c).state
    assert s.get(PARTITION, "t-0").status["epoch"] == 1 and s.get(PARTITION, "t-1").status["leader"] is None
    assert reconcile_leaders(s, now_ms=6) == []  # stable: nothing more to do


def _ev(v: int) -> Event:
    return Event(v, "topic", f"t{v}", None)


def test_change_log_deltas_and_full_sync_when_behind() -> None:
    """A watcher within the log gets deltas; one older than the log gets None (full sync)."""
    log = ChangeLog(capacity=3)
    log.append([_ev(1), _ev(2)])
    assert [e.version for e in log.since(0)] == [1, 2]
    log.append([_ev(3), _ev(4)])  # evicts version 1
    assert log.since(0) is None
    assert [e.version for e in log.since(1)] == [2, 3, 4]
    assert log.since(4) == []
    log.reset(10)
    assert log.since(4) is None and log.since(10) == []
