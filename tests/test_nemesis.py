"""The nemesis (jepsen/nemesis.py): properties of the pure fault schedule, the segment-tail
damage helper on temporary files, and Nemesis start/stop against a fake System that records
every call (processes and proxies are test doubles; no process is started)."""

from __future__ import annotations

import os
import pathlib
import random
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from jepsen.nemesis import (  # noqa: E402
    CLOCK_ENV,
    HEAL_FRACTION,
    KINDS,
    LOSSY_MAX_S,
    MAX_CONCURRENT,
    TAIL_BYTES,
    Fault,
    Nemesis,
    conflicts,
    damage_tail,
    newest_segment,
    schedule,
)
from jepsen.proxy import FaultProxy  # noqa: E402

# ---------------------------------------------------------------- schedule


def test_same_seed_same_schedule_and_seeds_differ():
    a = schedule(7, 300, list(KINDS))
    assert a == schedule(7, 300, list(KINDS))
    assert len(a) > 5
    schedules = [tuple(schedule(seed, 300, list(KINDS))) for seed in range(10)]
    assert len(set(map(repr, schedules))) == 10


@pytest.mark.parametrize("seed", range(40))
@pytest.mark.parametrize("args", [
    dict(duration_s=300, faults=list(KINDS)),
    dict(duration_s=120, faults=["kill", "partition-half", "slow"], interval_s=(1, 3), fault_duration_s=(2, 8)),
    dict(duration_s=200, faults=list(KINDS), interval_s=(0.5, 1), spus=5, scs=1, partitions=4),
])
def test_schedule_invariants(seed, args):
    faults = schedule(seed, **args)
    duration = args["duration_s"]
    assert [f.start_s for f in faults] == sorted(f.start_s for f in faults)
    for f in faults:
        assert f.kind in args["faults"]
        assert 0 < f.start_s < f.end_s <= duration * (1 - HEAL_FRACTION) + 1e-9
        if f.kind == "lossy":
            assert f.end_s - f.start_s <= LOSSY_MAX_S + 1e-9
        if f.target == "spu:leader":
            assert 0 <= f.params["partition"] < args.get("partitions", 1)
        if f.target.startswith(("spu:", "sc:")) and not f.target.endswith("leader"):
            family, _, n = f.target.partition(":")
            assert 1 <= int(n) <= args.get(family + "s", 3)
    for i, f in enumerate(faults):
        for g in faults[i + 1:]:
            if f.overlaps(g):
                assert f.target != g.target
                assert not conflicts(f, g)
                assert not (f.kind in ("torn-tail", "power-loss") and g.kind in ("torn-tail", "power-loss"))
        concurrent = [g for g in faults if g.start_s <= f.start_s < g.end_s]
        assert len(concurrent) <= MAX_CONCURRENT


def test_dense_schedules_reach_two_concurrent_faults():
    faults = schedule(3, 200, ["kill", "pause", "slow"], interval_s=(0.5, 1), fault_duration_s=(5, 10))
    assert max(sum(g.start_s <= f.start_s < g.end_s for g in faults) for f in faults) == MAX_CONCURRENT


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_can_be_produced(kind):
    faults = schedule(1, 120, [kind])
    assert faults and {f.kind for f in faults} == {kind}


def test_all_kinds_appear_in_long_runs():
    seen = {f.kind for seed in range(5) for f in schedule(seed, 600, list(KINDS))}
    assert seen == set(KINDS)


def test_schedule_edge_cases():
    assert schedule(1, 300, []) == []
    assert schedule(1, 5, ["kill"]) == []  # the first fault would start inside the heal window
    with pytest.raises(ValueError, match="unknown fault kinds"):
        schedule(1, 100, ["kill", "meteor"])
    with pytest.raises(ValueError):
        schedule(1, 100, ["kill"], interval_s=(0, 1))
    # A single SPU has no bridge; a single node has no minority.
    assert schedule(1, 100, ["bridge"], spus=1) == []
    assert schedule(1, 100, ["partition-half"], spus=1, scs=0) == []


def test_conflict_rules():
    assert conflicts(("kill", "spu:1"), ("pause", "spu:1"))
    assert conflicts(("kill", "spu:leader"), ("pause", "spu:2"))
    assert conflicts(("slow", "all"), ("pause", "sc:2"))
    assert conflicts(("torn-tail", "spu:1"), ("power-loss", "sc:2"))
    assert not conflicts(("kill", "spu:1"), ("pause", "spu:2"))
    assert not conflicts(("kill", "spu:leader"), ("pause", "sc:leader"))
    assert conflicts(("bridge", "spu:1"), ("partition-one", "spu:2"))
    assert not conflicts(("bridge", "spu:1"), ("partition-one", "sc:2"))


# ---------------------------------------------------------------- damage_tail


def _file(path: pathlib.Path, size: int) -> bytes:
    data = random.Random(size).randbytes(size)
    path.write_bytes(data)
    return data


@pytest.mark.parametrize("size", [1, 100, 4096, 10_000])
def test_damage_tail_truncate(tmp_path, size):
    path = tmp_path / "00000000000000000000.log"
    data = _file(path, size)
    done = damage_tail(str(path), random.Random(5), "truncate")
    new = path.read_bytes()
    assert done["action"] == "truncate" and done["new_size"] == len(new)
    assert max(0, size - TAIL_BYTES) <= len(new) < size
    assert new == data[:len(new)]


@pytest.mark.parametrize("size", [1, 100, 10_000])
def test_damage_tail_bitflip(tmp_path, size):
    path = tmp_path / "00000000000000000000.log"
    data = _file(path, size)
    done = damage_tail(str(path), random.Random(5), "bitflip")
    new = path.read_bytes()
    assert len(new) == size
    diff = [i for i in range(size) if new[i] != data[i]]
    assert diff == [done["offset"]] and done["offset"] >= size - TAIL_BYTES
    assert new[diff[0]] ^ data[diff[0]] == 1 << done["bit"]


def test_damage_tail_is_deterministic_and_leaves_empty_files(tmp_path):
    a, b = tmp_path / "a.log", tmp_path / "b.log"
    _file(a, 9000), _file(b, 9000)
    assert damage_tail(str(a), random.Random(1), "truncate")["new_size"] == \
        damage_tail(str(b), random.Random(1), "truncate")["new_size"]
    empty = tmp_path / "e.log"
    empty.write_bytes(b"")
    assert damage_tail(str(empty), random.Random(1), "bitflip")["action"].startswith("none")
    with pytest.raises(ValueError):
        damage_tail(str(a), random.Random(1), "shred")


def test_newest_segment_is_the_highest_base_offset(tmp_path):
    for name in ("00000000000000000000.log", "00000000000000683000.log", "00000000000000001000.log"):
        (tmp_path / name).write_bytes(b"x")
    assert newest_segment(str(tmp_path)).endswith("00000000000000683000.log")
    assert newest_segment(str(tmp_path / "missing")) is None


# ---------------------------------------------------------------- Nemesis against a fake System


class FakeProxy:
    def __init__(self, name: str) -> None:
        self.name, self.mode, self.delay, self.drop = name, None, 0.0, False

    def cut(self, mode: str = "reset") -> None:
        self.mode = mode

    def heal(self) -> None:
        self.mode = None

    def set_delay(self, seconds: float) -> None:
        self.delay = seconds

    def set_drop_replies(self, drop: bool) -> None:
        self.drop = drop

    @property
    def faulty(self) -> bool:
        return self.mode is not None or self.delay != 0 or self.drop


class FakeSystem:
    """3 SPUs and 3 SCs; each SPU has in:public, in:private and out:sc proxies, each SC in:raft
    and out:raft. Records every process call in ``calls``."""

    def __init__(self, root: pathlib.Path, spus=(1, 2, 3), scs=(1, 2, 3), proxy=FakeProxy) -> None:
        self.root, self._spus, self._scs = root, list(spus), list(scs)
        self.spu_leaders: dict[int, int | None] = {0: 2, 1: 3}
        self.sc_leader: int | None = 3
        self.calls: list[tuple] = []
        self.state = {n: "running" for n in self.nodes()}
        self.env: dict[str, dict | None] = {n: None for n in self.nodes()}
        self.links = {f"spu-{i}": {k: proxy(f"spu-{i}/{k}") for k in ("in:public", "in:private", "out:sc")}
                      for i in spus}
        self.links.update({f"sc-{i}": {k: proxy(f"sc-{i}/{k}") for k in ("in:raft", "out:raft")} for i in scs})
        for n in self.nodes():
            if n.startswith("spu"):
                for part, size in (("t-0", 6000), ("t-1", 3000)):
                    d = root / n / "logs" / part
                    d.mkdir(parents=True)
                    (d / "00000000000000000000.log").write_bytes(b"o" * 5000)
                    (d / "00000000000000000100.log").write_bytes(b"n" * size)

    def nodes(self) -> list[str]:
        return [f"spu-{i}" for i in self._spus] + [f"sc-{i}" for i in self._scs]

    def spus(self): return list(self._spus)
    def scs(self): return list(self._scs)
    def leader_spu(self, partition): return self.spu_leaders.get(partition)
    def leader_sc(self): return self.sc_leader
    def proxies(self, node): return dict(self.links[node])
    def data_dir(self, node): return str(self.root / node)

    def kill(self, node):
        self.calls.append(("kill", node))
        self.state[node] = "dead"

    def restart(self, node, env=None):
        self.calls.append(("restart", node, env))
        assert self.state[node] == "dead", f"restart of a {self.state[node]} node {node}"
        self.state[node], self.env[node] = "running", env

    def pause(self, node):
        self.calls.append(("pause", node))
        self.state[node] = "paused"

    def resume(self, node):
        self.calls.append(("resume", node))
        self.state[node] = "running"

    def cut_sc_to_fsynced(self, node):
        self.calls.append(("cut_sc_to_fsynced", node))
        return {f"/{node}/raft/journal.log": 10}

    def faulty_links(self) -> list[str]:
        return sorted({p.name for links in self.links.values() for p in links.values() if p.faulty})

    def assert_pristine(self) -> None:
        assert self.faulty_links() == []
        assert set(self.state.values()) == {"running"}
        assert all(e is None for e in self.env.values())


@pytest.fixture
def system(tmp_path):
    return FakeSystem(tmp_path)


def run(system, kind, target, **params):
    nem = Nemesis(system)
    fault = Fault(1.0, 2.0, kind, target, dict(seed=11, **params))
    started = nem.start(fault)
    during = (system.faulty_links(), dict(system.state), list(system.calls))
    stopped = nem.stop(fault)
    system.assert_pristine()
    assert nem.active == []
    return started, during, stopped


def test_kill_resolves_the_leader_and_restarts_it(system):
    started, (_, state, calls), stopped = run(system, "kill", "spu:leader", partition=1)
    assert started["nodes"] == ["spu-3"] and calls == [("kill", "spu-3")] and state["spu-3"] == "dead"
    assert system.calls[-1] == ("restart", "spu-3", None) and stopped["action"] == "restart"


def test_pause_and_resume(system):
    started, (_, state, calls), _ = run(system, "pause", "sc:leader")
    assert calls == [("pause", "sc-3")] and state["sc-3"] == "paused"
    assert system.calls[-1] == ("resume", "sc-3")


def test_partition_one_cuts_node_links_and_clients_only_when_asked(system):
    started, (links, _, _), stopped = run(system, "partition-one", "spu:1", mode="blackhole", clients=False)
    assert links == ["spu-1/in:private", "spu-1/out:sc"] and started["action"] == "cut (blackhole)"
    assert stopped["action"] == "heal"
    _, (links, _, _), _ = run(system, "partition-one", "spu:1", mode="reset", clients=True)
    assert links == ["spu-1/in:private", "spu-1/in:public", "spu-1/out:sc"]


def test_partition_half_cuts_a_minority_with_the_leaders(system):
    started, (links, _, _), _ = run(system, "partition-half", "minority", mode="reset", leader_side=True)
    assert started["nodes"] == ["spu-2", "sc-3"]
    assert links == ["sc-3/in:raft", "sc-3/out:raft", "spu-2/in:private", "spu-2/out:sc"]
    started, (links, _, _), _ = run(system, "partition-half", "minority", mode="reset", leader_side=False)
    assert len(started["nodes"]) == 2 and len(links) == 4


def test_partition_oneway_cuts_one_direction(system):
    started, (links, _, _), _ = run(system, "partition-oneway", "spu:2", mode="reset", direction="out")
    assert links == ["spu-2/out:sc"] and started["direction"] == "out"
    _, (links, _, _), _ = run(system, "partition-oneway", "spu:2", mode="reset", direction="in")
    assert links == ["spu-2/in:private"]  # the client link is not a node link


def test_bridge_cuts_replication_into_every_other_spu(system):
    started, (links, _, _), _ = run(system, "bridge", "spu:1", mode="reset")
    assert started["nodes"] == ["spu-1"] and links == ["spu-2/in:private", "spu-3/in:private"]


def test_slow_and_lossy(system):
    nem = Nemesis(system)
    slow = Fault(0, 1, "slow", "spu:3", {"delay_s": 0.12})
    nem.start(slow)
    assert {p.delay for p in system.links["spu-3"].values()} == {0.12}
    assert system.faulty_links() == ["spu-3/in:private", "spu-3/in:public", "spu-3/out:sc"]
    nem.stop(slow)
    _, (links, _, _), _ = run(system, "slow", "all", delay_s=0.05)
    assert len(links) == 3 * 3 + 3 * 2
    _, (links, _, _), stopped = run(system, "lossy", "spu:leader", links="clients")
    assert links == ["spu-2/in:public"] and stopped["action"] == "forward replies"
    _, (links, _, _), _ = run(system, "lossy", "sc:1", links="nodes")
    assert links == ["sc-1/in:raft", "sc-1/out:raft"]


@pytest.mark.parametrize("mode", ["truncate", "bitflip"])
def test_torn_tail_damages_the_newest_segment_of_one_partition_while_down(system, mode):
    started, (_, state, calls), _ = run(system, "torn-tail", "spu:1", mode=mode)
    assert calls == [("kill", "spu-1")] and state["spu-1"] == "dead"
    [damage] = started["damage"]
    assert damage["action"] == mode and damage["path"].endswith("00000000000000000100.log")
    logs = system.root / "spu-1" / "logs"
    assert (logs / "t-0" / "00000000000000000000.log").read_bytes() == b"o" * 5000
    changed = [p for p, size in (("t-0", 6000), ("t-1", 3000))
               if (logs / p / "00000000000000000100.log").read_bytes() != b"n" * size]
    assert len(changed) == 1


def test_power_loss_spu_truncates_every_partition_and_sc_cuts_to_fsynced(system):
    started, _, _ = run(system, "power-loss", "spu:2")
    segs = started["damage"][0]["segments"]
    assert len(segs) == 2 and all(s["action"] == "truncate" for s in segs)
    for part, size in (("t-0", 6000), ("t-1", 3000)):
        new = os.path.getsize(system.root / "spu-2" / "logs" / part / "00000000000000000100.log")
        assert max(0, size - TAIL_BYTES) <= new < size
    started, (_, _, calls), _ = run(system, "power-loss", "sc:1")
    assert calls[-2:] == [("kill", "sc-1"), ("cut_sc_to_fsynced", "sc-1")]
    assert started["damage"][0]["cuts"]


def test_clock_jump_restarts_with_and_then_without_the_offset(system):
    started, (_, state, calls), _ = run(system, "clock-jump", "sc:2", offset_ms=-90_000)
    assert calls == [("kill", "sc-2"), ("restart", "sc-2", {CLOCK_ENV: "-90000"})] and state["sc-2"] == "running"
    assert system.calls[-2:] == [("kill", "sc-2"), ("restart", "sc-2", None)]


def test_unknown_leader_falls_back_to_a_seeded_choice(system):
    system.sc_leader = None
    started, _, _ = run(system, "kill", "sc:leader")
    again, _, _ = run(system, "kill", "sc:leader")
    assert started["leader_unknown"] and started["nodes"] == again["nodes"]


def test_stop_undoes_what_start_touched_even_if_the_leader_moved(system):
    nem = Nemesis(system)
    fault = Fault(0, 1, "partition-one", "spu:leader", {"partition": 0, "mode": "reset"})
    nem.start(fault)
    system.spu_leaders[0] = 1
    assert nem.stop(fault)["nodes"] == ["spu-2"]
    system.assert_pristine()
    assert nem.stop(fault)["action"].startswith("none")
    with pytest.raises(ValueError):
        nem.start(Fault(0, 1, "meteor", "spu:1"))


def test_a_start_that_fails_half_way_is_undone_by_heal_all(system):
    class Breaks(FakeProxy):
        def cut(self, mode="reset"):
            raise OSError("proxy gone")
    system.links["spu-1"]["out:sc"] = Breaks("spu-1/out:sc")
    nem = Nemesis(system)
    fault = Fault(0, 1, "partition-one", "spu:1", {"mode": "reset"})
    with pytest.raises(OSError):
        nem.start(fault)
    assert system.faulty_links() == ["spu-1/in:private"]
    [stopped] = nem.heal_all()
    assert stopped["action"] == "heal"
    system.assert_pristine()


def test_a_proxy_shared_by_two_active_faults_is_healed_by_the_last_one(system):
    shared = system.links["spu-1"]["out:sc"]
    system.links["sc-1"]["in:sc"] = shared  # the runner shows SPU 1's link to the SC on both nodes
    nem = Nemesis(system)
    a = Fault(0, 3, "partition-one", "spu:1", {"mode": "reset"})
    b = Fault(1, 2, "partition-one", "sc:1", {"mode": "reset"})
    nem.start(a), nem.start(b)
    nem.stop(b)
    assert shared.mode == "reset" and system.faulty_links() == ["spu-1/in:private", "spu-1/out:sc"]
    nem.stop(a)
    system.assert_pristine()


def test_node_names_from_the_system_and_an_rng_for_unseeded_faults(system):
    system.spus = lambda: ["spu-1", "spu-2", "spu-3"]
    system.scs = lambda: ["sc-1", "sc-2", "sc-3"]
    system.spu_leaders[0] = None
    picks = set()
    for seed in range(20):
        nem = Nemesis(system, random.Random(seed))
        fault = Fault(0, 1, "pause", "spu:leader")
        picks.update(nem.start(fault)["nodes"])
        nem.stop(fault)
    assert picks == {"spu-1", "spu-2", "spu-3"}
    system.assert_pristine()


def test_heal_reports_errors_and_keeps_going(system):
    nem = Nemesis(system)
    fault = Fault(0, 1, "kill", "spu:1")
    nem.start(fault)
    system.restart = lambda node, env=None: (_ for _ in ()).throw(RuntimeError("no"))
    assert "errors" in nem.stop(fault)


@pytest.mark.parametrize("seed", range(20))
def test_every_fault_of_a_schedule_applies_and_undoes_in_order(tmp_path, seed):
    system = FakeSystem(tmp_path)
    nem = Nemesis(system)
    events = sorted([(f.start_s, 1, f) for f in schedule(seed, 400, list(KINDS), interval_s=(1, 4))]
                    + [(f.end_s, 0, f) for f in schedule(seed, 400, list(KINDS), interval_s=(1, 4))],
                    key=lambda e: (e[0], e[1]))
    links: dict[Fault, list[str]] = {}
    for _, is_start, fault in events:
        record = (nem.start if is_start else nem.stop)(fault)
        assert record["kind"] == fault.kind and "errors" not in record
        assert len(nem.active) <= MAX_CONCURRENT
        if is_start:
            links[fault] = record.get("links", [])
        else:
            del links[fault]
        # No fault healed a link that another active fault still holds.
        assert system.faulty_links() == sorted({x for v in links.values() for x in v})
    system.assert_pristine()


def test_real_fault_proxies_fit_the_protocol(tmp_path):
    """Unstarted FaultProxy objects accept every call the nemesis makes."""
    system = FakeSystem(tmp_path, proxy=lambda name: FaultProxy("127.0.0.1:9"))
    nem = Nemesis(system)
    for fault in (Fault(0, 1, "partition-one", "spu:1", {"mode": "blackhole", "clients": True}),
                  Fault(0, 1, "slow", "all", {"delay_s": 0.2}), Fault(0, 1, "lossy", "spu:2", {"links": "clients"})):
        nem.start(fault)
        nem.stop(fault)
