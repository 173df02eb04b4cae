"""Controllers and the watch change log as pure functions (metadata/controllers.py, watch.py)."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from kolk.metadata.apply import Event, apply
from kolk.metadata.controllers import place_replicas, reconcile_leaders, reconcile_liveness, reconcile_replicas
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
    assert cmds == [{"op": "elect_leader", "partition": "t-0", "leader": 1, "epoch": 0, "ts": 5, "isr": [1]},
                    {"op": "elect_leader", "partition": "t-1", "leader": None, "epoch": 0, "ts": 5}]
    for c in cmds:
        s = apply(s, c).state
    assert s.get(PARTITION, "t-0").status["epoch"] == 1 and s.get(PARTITION, "t-1").status["leader"] is None
    assert s.get(PARTITION, "t-0").status["isr"] == [1]  # the dead leader left the in-sync set
    assert s.get(PARTITION, "t-1").status["isr"] == [0]  # offline: kept, so SPU 0 can lead again
    assert reconcile_leaders(s, now_ms=6) == []  # stable: nothing more to do


def test_replicas_move_off_an_spu_dead_long_enough() -> None:
    """A replica on an SPU dead for move_after_ms moves to a live SPU without a replica of the
    partition, on another rack first; the epoch bumps and the in-sync set keeps who stayed.
    Before the time, or without a live leader, nothing moves."""
    s = cluster(["a", "b", "c", "c"])
    s = apply(s, {"op": "create_topic", "name": "t", "partitions": 1, "replication_factor": 3, "config": {},
                  "assignment": [[0, 1, 2]], "ts": 2}).state
    s = apply(s, {"op": "set_spu_status", "id": 1, "alive": False, "ts": 10_000}).state
    assert reconcile_replicas(s, now_ms=10_500, move_after_ms=1_000) == []
    cmds = reconcile_replicas(s, now_ms=11_000, move_after_ms=1_000)
    assert cmds == [{"op": "reassign_partition", "partition": "t-0", "replicas": [0, 3, 2], "epoch": 0, "ts": 11_000}]
    s = apply(s, cmds[0]).state
    p = s.get(PARTITION, "t-0")
    assert p.spec["replicas"] == [0, 3, 2] and p.status["isr"] == [0, 2] and p.status["epoch"] == 1
    assert reconcile_replicas(s, now_ms=12_000, move_after_ms=1_000) == []
    # A partition whose leader is dead does not move: there is no source to copy from.
    s2 = apply(s, {"op": "set_spu_status", "id": 0, "alive": False, "ts": 12_000}).state
    s2 = apply(s2, {"op": "elect_leader", "partition": "t-0", "leader": None, "epoch": 1, "ts": 12_001}).state
    assert reconcile_replicas(s2, now_ms=99_000, move_after_ms=1_000) == []


def test_reassign_and_election_refuse_bad_input() -> None:
    """Stale epoch, wrong replica count, unknown SPU, dropping the leader, and an election
    whose in-sync set is not a shrink each fail with a message naming the problem."""
    s = cluster([None, None, None, None])
    s = apply(s, {"op": "create_topic", "name": "t", "partitions": 1, "replication_factor": 2, "config": {},
                  "assignment": [[0, 1]], "ts": 2}).state
    base = {"op": "reassign_partition", "partition": "t-0", "epoch": 0, "ts": 3}
    for change, code, words in [
        ({"epoch": 5}, "stale_epoch", "epoch 0"),
        ({"replicas": [0]}, "invalid_argument", "2 distinct"),
        ({"replicas": [0, 9]}, "invalid_argument", "registered"),
        ({"replicas": [2, 3]}, "invalid_argument", "leader"),
    ]:
        out = apply(s, {**base, "replicas": [0, 2], **change}).outcome
        assert (out.ok, out.code) == (False, code) and words in out.message, out
    out = apply(s, {"op": "elect_leader", "partition": "t-0", "leader": 1, "epoch": 0, "isr": [1, 2], "ts": 3}).outcome
    assert out.code == "invalid_argument" and "in-sync set" in out.message


def test_producer_ids_are_handed_out_once() -> None:
    """Blocks of producer ids never overlap, survive a snapshot, and a bad count is refused."""
    s = State()
    a = apply(s, {"op": "allocate_producer_ids", "count": 10, "ts": 1})
    b = apply(a.state, {"op": "allocate_producer_ids", "count": 5, "ts": 2})
    assert a.outcome.value == {"first": 0, "count": 10} and b.outcome.value == {"first": 10, "count": 5}
    assert State.decode(b.state.encode()).next_producer_id == 15
    assert b.state.version == 0  # no object changed, no watcher woken
    bad = apply(s, {"op": "allocate_producer_ids", "count": 0, "ts": 1}).outcome
    assert bad.code == "invalid_argument" and "count" in bad.message


def test_min_in_sync_defaults_to_a_majority_and_is_checked() -> None:
    from kolk.metadata.apply import min_in_sync
    assert [min_in_sync({}, rf) for rf in (1, 2, 3, 5)] == [1, 2, 2, 3]
    assert min_in_sync({"min_in_sync": "1"}, 3) == 1
    s = cluster([None, None, None])
    out = apply(s, {"op": "create_topic", "name": "t", "partitions": 1, "replication_factor": 3,
                    "config": {"min_in_sync": "4"}, "assignment": [[0, 1, 2]], "ts": 2}).outcome
    assert out.code == "invalid_argument" and "min_in_sync" in out.message and "min_in_sync=4 " in out.message


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


def test_a_restarted_spu_leads_at_a_new_epoch() -> None:
    """Registering again means the SPU restarted (it may have lost unsynced data): the
    partitions it leads bump their epoch so followers truncate against what it really has;
    partitions it only follows are untouched."""
    s = cluster([None, None])
    s = apply(s, {"op": "create_topic", "name": "t", "partitions": 2, "replication_factor": 2, "config": {},
                  "assignment": [[0, 1], [1, 0]], "ts": 2}).state
    again = {"op": "register_spu", "id": 0, "rack": None, "public_address": "h:1000", "private_address": "h:2000",
             "ts": 3}
    s = apply(s, again).state
    assert s.get(PARTITION, "t-0").status["epoch"] == 1 and s.get(PARTITION, "t-0").status["leader"] == 0
    assert s.get(PARTITION, "t-1").status["epoch"] == 0


def test_isr_change_from_a_stale_set_is_refused() -> None:
    """update_isr carries the set it was computed from; if the set changed since (a request
    that committed while the leader did not know yet), it is refused, not applied blindly."""
    s = cluster([None, None, None])
    s = apply(s, {"op": "create_topic", "name": "t", "partitions": 1, "replication_factor": 3, "config": {},
                  "assignment": [[0, 1, 2]], "ts": 2}).state
    s = apply(s, {"op": "update_isr", "partition": "t-0", "isr": [0, 1], "epoch": 0, "leader": 0, "ts": 3,
                  "based_on": [0, 1, 2]}).state
    out = apply(s, {"op": "update_isr", "partition": "t-0", "isr": [0, 2], "epoch": 0, "leader": 0, "ts": 4,
                    "based_on": [0, 1, 2]}).outcome
    assert out.code == "version_conflict" and "[0, 1]" in out.message
