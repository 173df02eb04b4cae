"""The harness's netns mode, its pure parts (issue 22): the three new fault kinds in the seeded
schedule (partition-pair, netem, rolling-restart), the per-pair plans of every link fault
(jepsen/net_faults.py), the edge counting that keeps one fault's heal from opening another's
cut, and the Nemesis applying all of it to a system in netns mode (a recording double: no
process, no namespace; tests/test_jepsen_netns.py runs the real thing)."""

from __future__ import annotations

import hashlib
import json
import pathlib
import random
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from jepsen.net_faults import (  # noqa: E402
    LOSSY_LOSS_PCT,
    NETEM_DELAY_MS,
    EdgeCounts,
    Netem,
    NetPlan,
    between,
    plan,
)
from jepsen.nemesis import (  # noqa: E402
    KINDS,
    MAX_CONCURRENT,
    NETNS_KINDS,
    ROLLING_RESTART_NODE_S,
    Fault,
    Nemesis,
    conflicts,
    pair_members,
    schedule,
)

OLD_KINDS = list(KINDS[:14])
NODES = ["spu-1", "spu-2", "spu-3", "sc-1", "sc-2", "sc-3"]


def _fingerprint(faults: list[Fault]) -> str:
    rows = [(f.start_s, f.end_s, f.kind, f.target, sorted(f.params.items())) for f in faults]
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


# ---------------------------------------------------------------- the schedule


@pytest.mark.parametrize("seed, count, digest", [(7, 56, "3da53f9771039dd9"), (1, 52, "8dbd07299b0a9966"),
                                                 (28, 53, "93c5f1042c97e1fc")])
def test_older_kinds_keep_their_schedule_for_a_seed(seed, count, digest):
    """The new kinds went at the end of KINDS: a run of the 14 older kinds draws exactly the
    faults it drew before issue 22 (fingerprints taken on the code before the change)."""
    faults = schedule(seed, 600, OLD_KINDS, spus=3, scs=3, partitions=3)
    assert (len(faults), _fingerprint(faults)) == (count, digest)


@pytest.mark.parametrize("kind", sorted(NETNS_KINDS))
def test_every_new_kind_is_produced(kind):
    faults = schedule(1, 200, [kind])
    assert faults and {f.kind for f in faults} == {kind}


def test_pair_targets_name_two_different_nodes_of_any_family_sc_pairs_included():
    targets = {f.target for seed in range(20) for f in schedule(seed, 300, ["partition-pair"])}
    for t in targets:
        a, b = pair_members(t)
        assert a != b and not a.endswith(":leader") and not b.endswith(":leader")
    assert any(all(m.startswith("sc:") for m in pair_members(t)) for t in targets)
    assert any({m.split(":")[0] for m in pair_members(t)} == {"spu", "sc"} for t in targets)
    assert schedule(1, 100, ["partition-pair"], spus=1, scs=0) == []


def test_conflicts_of_pairs_and_of_the_rolling_restart():
    pair = ("partition-pair", "pair:sc:1,sc:2")
    assert conflicts(pair, ("kill", "sc:1")) and conflicts(pair, ("pause", "sc:leader"))
    assert conflicts(pair, ("partition-pair", "pair:sc:2,spu:3"))
    assert not conflicts(pair, ("kill", "sc:3")) and not conflicts(pair, ("netem", "spu:1"))
    assert conflicts(("bridge", "spu:1"), ("partition-pair", "pair:spu:2,sc:1"))
    for other in (("kill", "spu:1"), ("netem", "sc:2"), pair, ("restart-all", "all")):
        assert conflicts(("rolling-restart", "all"), other) and conflicts(other, ("rolling-restart", "all"))


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), duration=st.floats(30, 900), spus=st.integers(1, 5),
       scs=st.sampled_from([1, 3, 5]), kinds=st.sets(st.sampled_from(KINDS), min_size=1))
def test_schedules_with_the_new_kinds_keep_every_rule(seed, duration, spus, scs, kinds):
    args = dict(spus=spus, scs=scs, partitions=3, interval_s=(1, 6))
    faults = schedule(seed, duration, sorted(kinds), **args)
    assert faults == schedule(seed, duration, sorted(kinds), **args)
    for i, f in enumerate(faults):
        active = [g for g in faults[:i] if g.end_s > f.start_s]
        assert len(active) < MAX_CONCURRENT and not any(conflicts(f, g) for g in active)
        if f.kind == "rolling-restart":
            assert f.target == "all"
            assert not any(f.overlaps(g) for g in faults if g is not f)
            horizon = duration * 0.9
            assert f.end_s - f.start_s >= min(ROLLING_RESTART_NODE_S * (spus + scs), horizon - f.start_s) - 1e-3
        if f.kind == "netem":
            p = f.params
            assert NETEM_DELAY_MS[0] <= p["delay_ms"] <= NETEM_DELAY_MS[1] and 0 <= p["jitter_ms"] <= p["delay_ms"]
            assert {"loss_pct", "duplicate_pct", "reorder_pct"} <= set(p)


# ---------------------------------------------------------------- the plans


def test_partition_one_and_pair_cut_only_their_links():
    one = plan("partition-one", ["sc-2"], NODES, {"clients": True}, random.Random(1))
    assert one.edges == between(["sc-2"], [n for n in NODES if n != "sc-2"]) and "clients" in one.note
    pair = plan("partition-pair", ["sc-1", "sc-3"], NODES, {}, random.Random(1))
    assert pair.edges == {("sc-1", "sc-3"), ("sc-3", "sc-1")}  # sc-2 still reaches both


def test_partition_half_cuts_between_the_sides_only():
    minority = ["spu-1", "sc-1"]
    edges = plan("partition-half", minority, NODES, {}, random.Random(3)).edges
    assert ("spu-1", "sc-1") not in edges and ("sc-1", "spu-1") not in edges  # the minority reach each other
    assert ("spu-2", "sc-3") not in edges  # and so does the majority
    assert edges == {(a, b) for a in NODES for b in NODES if (a in minority) != (b in minority)}


@pytest.mark.parametrize("seed", range(10))
def test_bridge_splits_the_others_in_two_halves_that_both_reach_the_bridge(seed):
    p = plan("bridge", ["spu-2"], NODES, {}, random.Random(seed))
    assert not any("spu-2" in e for e in p.edges)
    side = {}
    for a, b in p.edges:
        side.setdefault(a, set()).add(b)
    halves = {frozenset(x for x in NODES if x != "spu-2" and x not in side[n]) for n in side}
    assert len(halves) == 2 and sorted(map(len, halves)) == [2, 3]
    assert p == plan("bridge", ["spu-2"], NODES, {}, random.Random(seed))


def test_oneway_slow_lossy_and_netem():
    out = plan("partition-oneway", ["spu-1"], NODES, {"direction": "out"}, random.Random(0)).edges
    into = plan("partition-oneway", ["spu-1"], NODES, {"direction": "in"}, random.Random(0)).edges
    assert out == {("spu-1", n) for n in NODES if n != "spu-1"} and into == {(b, a) for a, b in out}
    slow = plan("slow", NODES, NODES, {"delay_s": 0.15}, random.Random(0))
    assert slow.edges == frozenset() and slow.netem == {n: Netem(delay_ms=150) for n in NODES}
    lossy = plan("lossy", ["sc-1"], NODES, {"links": "clients"}, random.Random(5)).netem["sc-1"]
    assert LOSSY_LOSS_PCT[0] <= lossy.loss_pct <= LOSSY_LOSS_PCT[1] and lossy.delay_ms == 0
    shape = dict(delay_ms=200, jitter_ms=20, loss_pct=5.0, duplicate_pct=1.0, reorder_pct=10.0)
    assert plan("netem", ["spu-3"], NODES, {"seed": 1, **shape}, random.Random(0)).netem == {"spu-3": Netem(**shape)}


@pytest.mark.parametrize("kind, nodes, params, message", [
    ("partition-pair", ["sc-1"], {}, "partition-pair needs two different nodes"),
    ("partition-pair", ["sc-1", "sc-1"], {}, "partition-pair needs two different nodes"),
    ("bridge", ["spu-1", "spu-2"], {}, "bridge needs one bridge node"),
    ("partition-oneway", ["spu-1"], {"direction": "sideways"}, "direction must be 'in' or 'out'"),
    ("kill", ["spu-1"], {}, "'kill' is not a link fault"),
])
def test_bad_plans_are_refused_with_one_line(kind, nodes, params, message):
    with pytest.raises(ValueError, match=message):
        plan(kind, nodes, NODES, params, random.Random(0))


EDGES = st.sets(st.tuples(st.sampled_from(NODES[:4]), st.sampled_from(NODES[:4])).filter(lambda e: e[0] != e[1]),
                max_size=6)


@settings(max_examples=200, deadline=None)
@given(steps=st.lists(st.tuples(st.booleans(), EDGES), max_size=30), data=st.data())
def test_edge_counts_heal_an_edge_only_when_no_fault_holds_it(steps, data):
    counts, active, cut = EdgeCounts(), [], set()
    for is_add, edges in steps:
        if is_add or not active:
            new = counts.add(edges)
            active.append(edges)
            assert set(new) == edges - cut
            cut |= set(new)
        else:
            gone_set = active.pop(data.draw(st.integers(0, len(active) - 1)))
            gone = counts.remove(gone_set)
            still = set().union(*active) if active else set()
            assert set(gone) == gone_set - still
            cut -= set(gone)
        assert counts.cut() == cut == (set().union(*active) if active else set())
    assert set(counts.clear()) == cut and counts.cut() == frozenset()


# ---------------------------------------------------------------- the nemesis in netns mode


class FakeNetnsSystem:
    """Records what the nemesis asks of a system in netns mode; counts edges as the real one does."""

    net_mode = "netns"

    def __init__(self, tmp: pathlib.Path) -> None:
        self.tmp = tmp
        self.counts = EdgeCounts()
        self.netem: dict[str, Netem] = {}
        self.calls: list[tuple] = []
        self.down: set[str] = set()

    def spus(self): return [1, 2, 3]
    def scs(self): return [1, 2, 3]
    def leader_spu(self, partition): return 2
    def leader_sc(self): return 1
    def proxies(self, node): return {}
    def data_dir(self, node): return str(self.tmp / node)
    def exit_code(self, node): return 0 if node in self.down else None
    def fail_fsync_file(self, node): return str(self.tmp / f"{node}.fail-fsync")
    def cut_sc_to_fsynced(self, node): return {}
    def kill(self, node): self.down.add(node)
    def restart(self, node, env=None): self.down.discard(node)
    def pause(self, node): self.calls.append(("pause", node))
    def resume(self, node): self.calls.append(("resume", node))

    def apply_net(self, p: NetPlan) -> None:
        self.counts.add(p.edges)
        assert not set(p.netem) & set(self.netem), "two shapes on one host"
        self.netem.update(p.netem)

    def revert_net(self, p: NetPlan) -> None:
        self.counts.remove(p.edges)
        for n in p.netem:
            del self.netem[n]

    def rolling_restart(self, order):
        self.calls.append(("rolling-restart", tuple(order)))
        return {"restarts": [{"node": n} for n in order]}


@pytest.mark.parametrize("seed", range(10))
def test_every_kind_of_a_schedule_applies_and_heals_in_netns_mode(tmp_path, seed):
    system = FakeNetnsSystem(tmp_path)
    nem = Nemesis(system)
    faults = schedule(seed, 400, list(KINDS), interval_s=(1, 4))
    events = sorted([(f.start_s, 1, f) for f in faults] + [(f.end_s, 0, f) for f in faults], key=lambda e: e[:2])
    for _, is_start, fault in events:
        record = (nem.start if is_start else nem.stop)(fault)
        assert "errors" not in record, record
        plans = [st["plan"] for st in nem._active.values() if st.get("plan") is not None]
        assert system.counts.cut() == frozenset().union(*(p.edges for p in plans))
    assert system.counts.cut() == frozenset() and system.netem == {} and not system.down
    rolls = [c for c in system.calls if c[0] == "rolling-restart"]
    assert all(sorted(order) == sorted(NODES) for _, order in rolls)


def test_a_pair_fault_resolves_its_two_nodes(tmp_path):
    system = FakeNetnsSystem(tmp_path)
    rec = Nemesis(system).start(Fault(0, 1, "partition-pair", "pair:sc:1,sc:3", {"seed": 4}))
    assert rec["nodes"] == ["sc-1", "sc-3"] and rec["edges"] == ["sc-1->sc-3", "sc-3->sc-1"]


@pytest.mark.parametrize("kind, target", [("partition-pair", "pair:sc:1,sc:2"), ("netem", "spu:1"),
                                          ("rolling-restart", "all")])
def test_a_system_in_proxy_mode_refuses_the_netns_kinds(tmp_path, kind, target):
    system = FakeNetnsSystem(tmp_path)
    system.net_mode = "proxy"
    with pytest.raises(ValueError, match=f"fault kind '{kind}' needs netns mode"):
        Nemesis(system).start(Fault(0, 1, kind, target, {"seed": 1}))


# ---------------------------------------------------------------- choosing the mode (python -m jepsen run --net)


def _args(net, nemesis):
    import argparse

    return argparse.Namespace(net=net, nemesis=nemesis)


def test_the_default_mode_is_netns_where_namespaces_can_be_made(monkeypatch, capsys):
    import jepsen.netns
    from jepsen.run import choose_net

    monkeypatch.setattr(jepsen.netns, "netns_unavailable", lambda: None)
    args = _args(None, ["kill", "partition-pair"])
    assert choose_net(args) is None and args.net == "netns"
    monkeypatch.setattr(jepsen.netns, "netns_unavailable", lambda: "network namespaces need root (euid is not 0)")
    args = _args(None, ["kill"])
    assert choose_net(args) is None and args.net == "proxy"
    assert capsys.readouterr().err == "proxy mode: network namespaces are unavailable (network namespaces need " \
                                      "root (euid is not 0))\n"


@pytest.mark.parametrize("net, nemesis, available, message", [
    ("proxy", ["kill", "partition-pair", "netem"], True,
     "fault kinds ['netem', 'partition-pair'] need --net netns (a host per node); this run is in proxy mode"),
    ("proxy", ["rolling-restart"], True,
     "fault kinds ['rolling-restart'] need --net netns (a host per node); this run is in proxy mode"),
    (None, ["partition-pair"], False,
     "fault kinds ['partition-pair'] need --net netns (a host per node); this run is in proxy mode"),
    ("netns", ["kill"], False, "--net netns: network namespaces are unavailable (no root)"),
])
def test_a_run_that_cannot_have_its_mode_is_refused_with_one_line(monkeypatch, net, nemesis, available, message):
    import jepsen.netns
    from jepsen.run import choose_net

    monkeypatch.setattr(jepsen.netns, "netns_unavailable", lambda: None if available else "no root")
    assert choose_net(_args(net, nemesis)) == message


@pytest.mark.parametrize("text, message", [("3", "expected LOW,HIGH"), ("a,b", "expected LOW,HIGH"),
                                           ("0,2", "need 0 < LOW <= HIGH"), ("5,2", "need 0 < LOW <= HIGH"),
                                           ("1,4000", "need 0 < LOW <= HIGH <= 3600")])
def test_bad_fault_ranges_are_refused(text, message):
    import argparse

    from jepsen.run import seconds_range

    with pytest.raises(argparse.ArgumentTypeError, match=message):
        seconds_range(text)
    assert seconds_range("1.5,4") == (1.5, 4.0)
