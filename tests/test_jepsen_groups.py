"""The fault harness's group workload end to end (jepsen/group_workload.py): 3 SCs and 3 SPUs
behind proxies, three group members as their own processes, producers with acks=all. A run
with members killed -9 and frozen past their session timeout and the coordinator's SPU killed
-9 must be valid; the same workload against the coordinator that grants a partition before its
old owner handed it back (KOLK_TEST_UNSAFE_ASSIGN=1) must report two owners at once. Longer
runs: `make jepsen-groups`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from jepsen.group_workload import COORDINATOR_KEY, member_faults, node_faults, split_nemesis  # noqa: E402


def jepsen(out: Any, *args: str) -> tuple[subprocess.CompletedProcess, dict[str, Any]]:
    proc = subprocess.run([sys.executable, "-m", "jepsen", "run", "--workload", "group", "--out", str(out), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert (out / "results.json").exists(), ("the run ended without a report", proc.stdout[-2000:],
                                             proc.stderr[-4000:])
    return proc, json.loads((out / "results.json").read_text())


# `make test-long` (30 s, a seeded 25-second fault run): in `make test`, groups under faults are
# tests/test_group_consumer.py's coordinator kill and the Node client's group failover.
@pytest.mark.long
def test_group_run_with_member_kills_pauses_and_coordinator_kills_is_valid(tmp_path: Any) -> None:
    """Seed 289, 25 s: member 1 is frozen for 4.6 s from 6.6 s (its session is 3 s), the
    coordinator's SPU is killed -9 from 13.5 s to 17.1 s, member 1 is killed -9 at 16.4 s and a
    new member takes its slot at 18.4 s. The frozen member must be fenced (its partitions
    reassigned in a newer generation); every acknowledged record must reach the group."""
    proc, results = jepsen(tmp_path / "run", "--nemesis", "member-kill,member-pause,kill-coordinator",
                           "--time", "25", "--seed", "289")
    g = results["groups"]
    assert proc.returncode == 0 and results["valid"], (g["counts"], g["examples"], proc.stderr[-3000:])
    s = g["stats"]
    assert s["acknowledged"] > 1000 and s["values_delivered"] >= s["acknowledged"], s
    assert results["drain"]["missing"] == 0 and results["members"]["crashed"] == {}, results["members"]
    assert set(results["members"]["exits"].values()) == {0}, results["members"]  # each closed cleanly
    assert s["interval_ends"]["killed"] >= 1 and s["interval_ends"]["revoked"] >= 3, s
    # The frozen member was removed while frozen: it learnt it lost its partitions, which others
    # owned meanwhile in a newer generation. (Its commits after waking are refused; one sent just
    # before the freeze may have been applied, and is then reported with an unknown outcome.)
    assert s["interval_ends"]["lost"] >= 1 and s["fenced_overlaps"] >= 1, s
    kills = [f for f in results["faults"] if f.get("fault") == "kill" and "start" in f]
    assert kills and all(f["start"]["nodes"] == [f"spu-{f['coordinator']}"] and not f["start"].get("leader_unknown")
                         for f in kills), kills
    for name in ("history.jsonl", "group-history.jsonl", "latency.svg", "members"):
        assert (tmp_path / "run" / name).exists(), name


@pytest.mark.long  # a broken-build fault run; `make test-long`
def test_the_harness_catches_a_coordinator_that_assigns_before_revoking(tmp_path: Any) -> None:
    """KOLK_TEST_UNSAFE_ASSIGN=1 gives a moving partition to its new owner at once; the old owner
    still reads it until it has committed and handed it back. Members join one after another
    and are killed and restarted, so partitions move between live members several times."""
    proc, results = jepsen(tmp_path / "broken", "--nemesis", "member-kill", "--time", "12", "--seed", "1",
                           "--unsafe-assign")
    g = results["groups"]
    assert results["broken"] == ["unsafe_assign"]
    assert proc.returncode == 1 and not results["valid"], proc.stdout[-2000:]
    assert g["counts"]["overlap"] > 0, g["counts"]
    ex = g["examples"]["overlap"][0]
    assert ex["first"]["ended_by"] == "revoked" and ex["second"]["from"] < ex["first"]["to"], ex


# ---------------------------------------------------------------- the schedules (pure)

def test_member_faults_are_seeded_one_at_a_time_and_leave_the_end_healed() -> None:
    faults = member_faults(289, 25, 3, ("kill", "pause"))
    assert faults == member_faults(289, 25, 3, ("kill", "pause")) and faults != member_faults(290, 25, 3)
    assert all(a.end_s <= b.start_s for a, b in zip(faults, faults[1:])), faults
    assert all(f.end_s <= 25 * 0.9 and f.kind in ("kill", "pause") and 1 <= f.slot <= 3 for f in faults)
    assert {f.kind for f in member_faults(1, 300, 3, ("pause",))} == {"pause"}
    assert member_faults(1, 30, 3, ()) == [] and member_faults(1, 30, 0) == []


def test_an_unknown_member_fault_kind_is_refused() -> None:
    with pytest.raises(ValueError, match=r"unknown member fault kinds \['freeze'\]; known: kill, pause"):
        member_faults(1, 30, 3, ("kill", "freeze"))


def test_coordinator_faults_aim_at_the_coordinators_spu() -> None:
    kinds = ["member-kill", "kill-coordinator", "partition-coordinator", "kill", "pause"]
    assert split_nemesis(kinds) == (["kill", "pause"], {"kill-coordinator": "kill", "partition-coordinator":
                                                        "partition-one"}, ("kill",))
    faults = node_faults(7, 120, kinds, 3)
    assert faults == sorted(faults, key=lambda f: f.start_s)
    coord = [f for f in faults if f.params.get("partition") == COORDINATOR_KEY]
    assert {f.kind for f in coord} == {"kill", "partition-one"}, faults
    assert all(f.target == "spu:leader" for f in coord)
    assert all(f.params["clients"] is False for f in coord if f.kind == "partition-one")
    others = [f for f in faults if f not in coord]
    assert {f.kind for f in others} == {"kill", "pause"}, others
    # Only coordinator faults: the schedule of the CI run above.
    assert [(f.kind, f.start_s) for f in node_faults(289, 25, ["member-kill", "member-pause", "kill-coordinator"], 3)
            ] == [("kill", 13.494)]
