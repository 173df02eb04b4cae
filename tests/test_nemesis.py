"""The nemesis (jepsen/nemesis.py): properties of the pure fault schedule, the segment-tail
damage and directory removal helpers on temporary files, and Nemesis start/stop against a fake
System that records every call (processes and proxies are test doubles; no process is started)."""

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
    DESTRUCTIVE,
    DISK_FAIL_MODES,
    HEAL_FRACTION,
    KINDS,
    LOSSY_MAX_S,
    MAX_CONCURRENT,
    NETNS_KINDS,
    TAIL_BYTES,
    Fault,
    Nemesis,
    conflicts,
    damage_tail,
    newest_segment,
    remove_tree,
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
                assert not (f.kind in DESTRUCTIVE and g.kind in DESTRUCTIVE)
                assert "restart-all" not in (f.kind, g.kind)
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


def test_the_documented_ten_minute_run_keeps_its_schedule():
    """New kinds go at the end of KINDS, so a seed still gives the schedule it gave before for
    the older kinds: the 52 faults docs/reliability.md reports for `make jepsen` before issue 15."""
    old_kinds = ["kill", "pause", "partition-one", "partition-half", "partition-oneway", "bridge", "slow",
                 "lossy", "torn-tail", "power-loss", "clock-jump"]
    faults = schedule(7, 600, old_kinds, spus=3, scs=3, partitions=3)
    counts = {k: sum(f.kind == k for f in faults) for k in old_kinds}
    assert counts == {"kill": 8, "pause": 8, "partition-one": 8, "partition-half": 2, "partition-oneway": 3,
                      "bridge": 3, "slow": 8, "lossy": 3, "torn-tail": 5, "power-loss": 3, "clock-jump": 1}


@pytest.mark.parametrize("seed", range(30))
def test_disk_wipes_go_to_a_partition_leader_whenever_that_target_is_free(seed):
    """A wiped leader that returns before the SC notices is what lost acknowledged writes
    (issue 15); a wipe aims at a named SPU only while another SPU fault holds the leader role."""
    faults = schedule(seed, 300, ["disk-wipe", "kill", "pause"], interval_s=(1, 4), partitions=3)
    wipes = [f for f in faults if f.kind == "disk-wipe"]
    assert wipes
    for w in wipes:
        others = [f for f in faults if f is not w and f.start_s <= w.start_s < f.end_s]
        if w.target != "spu:leader":
            assert any(conflicts(("disk-wipe", "spu:leader"), o) for o in others)
        else:
            assert 0 <= w.params["partition"] < 3
    assert all(f.target == "spu:leader" for f in schedule(seed, 300, ["disk-wipe"], partitions=3))


def test_disk_faults_and_restart_all_targets_and_params():
    runs = [schedule(seed, 300, ["disk-fail", "restart-all"], partitions=2) for seed in range(10)]
    fails = [f for faults in runs for f in faults if f.kind == "disk-fail"]
    restarts = [f for faults in runs for f in faults if f.kind == "restart-all"]
    assert fails and restarts
    assert {f.params["mode"] for f in fails} == set(DISK_FAIL_MODES)
    assert all(f.target.startswith("spu:") for f in fails)
    assert {f.target for f in restarts} == {"all"}
    for faults in runs:
        assert not any(f.overlaps(g) for f in faults if f.kind == "restart-all" for g in faults if g is not f)
    assert schedule(1, 100, ["restart-all"], spus=0, scs=0) == []
    assert schedule(1, 100, ["disk-wipe", "disk-fail"], spus=0) == []


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
    # At most one data-damaging fault at a time, whatever the nodes.
    for a in ("torn-tail", "power-loss", "disk-wipe", "disk-fail"):
        for b in ("torn-tail", "power-loss", "disk-wipe", "disk-fail"):
            assert conflicts((a, "spu:1"), (b, "spu:2")) and conflicts((a, "spu:3"), (b, "sc:1"))
    assert not conflicts(("disk-wipe", "spu:1"), ("kill", "spu:2"))
    assert not conflicts(("disk-fail", "spu:1"), ("partition-one", "sc:leader"))
    assert conflicts(("disk-wipe", "spu:leader"), ("pause", "spu:3"))
    # restart-all overlaps nothing, even under a target that is not a group.
    for kind, target in (("pause", "sc:2"), ("slow", "spu:1"), ("clock-jump", "sc:leader"), ("restart-all", "all")):
        assert conflicts(("restart-all", "all"), (kind, target)) and conflicts((kind, target), ("restart-all", "all"))
        assert conflicts(("restart-all", "spu:1"), (kind, target))


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


def test_remove_tree_takes_the_directory_away_at_once_and_reports_what_was_there(tmp_path):
    data = tmp_path / "spu-1"
    (data / "logs" / "t-0").mkdir(parents=True)
    (data / "logs" / "t-0" / "00000000000000000000.log").write_bytes(b"x" * 300)
    (data / "storage-id").write_bytes(b"y" * 16)
    (tmp_path / "spu-1.log").write_bytes(b"kept")
    with open(data / "logs" / "t-0" / "00000000000000000000.log", "ab") as held:  # the owner still runs
        done = remove_tree(str(data))
        held.write(b"lost with the directory")
    assert done == {"path": str(data), "action": "removed", "files": 2, "bytes": 316}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spu-1.log"]  # no leftover of the rename
    assert remove_tree(str(data))["action"].startswith("none")


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
        self.exit_codes: dict[str, int] = {}  # a node that exits on its own, and how
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

    def fail_fsync_file(self, node): return str(self.root / f"{node}.fail-fsync")

    def exit_code(self, node):
        return self.exit_codes.get(node, -9) if self.state[node] == "dead" else None

    def exits(self, node, code):
        """The node's process exits on its own (a correct SPU whose data directory vanished)."""
        self.state[node], self.exit_codes[node] = "dead", code

    def kill(self, node):
        self.calls.append(("kill", node))
        self.state[node] = "dead"
        self.exit_codes.pop(node, None)

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
        assert not any(os.path.exists(self.fail_fsync_file(n)) for n in self.nodes())


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


def test_disk_wipe_kills_the_leader_deletes_its_data_and_restarts_it_at_once(system):
    started, (_, state, calls), stopped = run(system, "disk-wipe", "spu:leader", partition=0)
    assert started["nodes"] == ["spu-2"] and state["spu-2"] == "running"
    assert calls == [("kill", "spu-2"), ("restart", "spu-2", None)]
    [damage] = started["damage"]
    assert damage["action"] == "removed" and damage["files"] == 4 and damage["bytes"] == 2 * 5000 + 6000 + 3000
    assert not (system.root / "spu-2").exists() and (system.root / "spu-1" / "logs").is_dir()
    assert stopped["action"].startswith("none") and system.calls == calls  # already running: nothing more


def test_a_wiped_node_that_exited_since_is_restarted_by_stop(system):
    nem = Nemesis(system)
    fault = Fault(0, 1, "disk-wipe", "spu:3", {"seed": 1})
    nem.start(fault)
    system.exits("spu-3", 1)
    stopped = nem.stop(fault)
    assert stopped["exited"] == {"spu-3": 1} and system.calls[-1] == ("restart", "spu-3", None)
    system.assert_pristine()


def test_disk_fail_remove_deletes_the_data_of_a_running_node(system):
    nem = Nemesis(system)
    fault = Fault(0, 1, "disk-fail", "spu:leader", {"seed": 3, "partition": 1, "mode": "remove"})
    started = nem.start(fault)
    assert started["nodes"] == ["spu-3"] and started["damage"][0]["action"] == "removed"
    assert not (system.root / "spu-3").exists()
    assert system.calls == [] and system.state["spu-3"] == "running"  # the node is not touched
    system.exits("spu-3", 1)  # a correct SPU notices, tells the SC and exits non-zero
    stopped = nem.stop(fault)
    assert stopped["exited"] == {"spu-3": 1} and stopped["action"] == "restart the exited"
    assert system.calls == [("restart", "spu-3", None)]
    system.assert_pristine()


def test_disk_fail_remove_leaves_a_node_that_kept_running_alone(system):
    started, (_, state, calls), stopped = run(system, "disk-fail", "spu:1", mode="remove")
    assert calls == [] and state["spu-1"] == "running"
    assert stopped["exited"] == {} and system.calls == []


def test_disk_fail_fsync_arms_the_trigger_file_and_stop_disarms_it(system):
    trigger = pathlib.Path(system.fail_fsync_file("spu-2"))
    nem = Nemesis(system)
    fault = Fault(0, 1, "disk-fail", "spu:2", {"seed": 4, "mode": "fsync"})
    started = nem.start(fault)
    assert started["damage"] == [{"node": "spu-2", "trigger": str(trigger)}] and trigger.exists()
    assert system.calls == [] and (system.root / "spu-2" / "logs").is_dir()  # nothing else touched
    nem.stop(fault)
    assert not trigger.exists() and system.calls == []
    # The SPU consumed the file (it failed one fsync) and stayed up: stop has nothing to do.
    nem.start(fault)
    trigger.unlink()
    assert "errors" not in nem.stop(fault)
    system.assert_pristine()
    with pytest.raises(ValueError, match="disk-fail mode"):
        Nemesis(system).start(Fault(0, 1, "disk-fail", "spu:2", {"mode": "shred"}))


def test_disk_fail_fsync_disarms_before_restarting_a_node_that_exited(system):
    trigger = pathlib.Path(system.fail_fsync_file("spu-1"))
    seen: list[bool] = []
    restart = system.restart
    system.restart = lambda node, env=None: (seen.append(trigger.exists()), restart(node, env))
    nem = Nemesis(system)
    fault = Fault(0, 1, "disk-fail", "spu:1", {"mode": "fsync"})
    nem.start(fault)
    system.exits("spu-1", 3)
    assert nem.stop(fault)["exited"] == {"spu-1": 3}
    assert seen == [False]  # a restarted SPU must not fail an fsync of its own
    system.assert_pristine()


def test_restart_all_kills_every_node_then_restarts_all_in_a_seeded_order(system):
    nodes = system.nodes()
    started, (_, state, calls), stopped = run(system, "restart-all", "all")
    assert set(state.values()) == {"running"}
    assert calls[:len(nodes)] == [("kill", n) for n in nodes]
    restarted = [c[1] for c in calls[len(nodes):]]
    assert sorted(restarted) == sorted(nodes) and started["order"] == restarted
    assert all(c[0] == "restart" and c[2] is None for c in calls[len(nodes):])
    assert stopped["action"].startswith("none") and len(system.calls) == 2 * len(nodes)
    orders = set()
    for seed in range(10):
        nem = Nemesis(FakeSystem(system.root / f"s{seed}"))
        fault = Fault(0, 1, "restart-all", "all", {"seed": seed})
        orders.add(tuple(nem.start(fault)["order"]))
        assert tuple(Nemesis(FakeSystem(system.root / f"t{seed}")).start(fault)["order"]) in orders
    assert len(orders) > 1


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
    proxy_kinds = [k for k in KINDS if k not in NETNS_KINDS]  # the fake system runs in proxy mode
    events = sorted([(f.start_s, 1, f) for f in schedule(seed, 400, proxy_kinds, interval_s=(1, 4))]
                    + [(f.end_s, 0, f) for f in schedule(seed, 400, proxy_kinds, interval_s=(1, 4))],
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
