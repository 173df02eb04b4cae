"""The fault harness end to end in CI: 3 SCs and 3 SPUs behind proxies, the queue and register
workloads, faults, a final read. Short runs with kills and pauses, and with wiped disks and
whole-cluster restarts, must be valid; the same harness against the deliberately broken builds
(acks=all answered before the high watermark, with leaders cut off; storage ids ignored, with
leaders' disks wiped) must report lost writes. Longer runs: `make jepsen`."""

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

from jepsen.netns import netns_unavailable  # noqa: E402


def jepsen(out: Any, *args: str) -> tuple[subprocess.CompletedProcess, dict[str, Any]]:
    proc = subprocess.run([sys.executable, "-m", "jepsen", "run", "--out", str(out), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert (out / "results.json").exists(), ("the run ended without a report", proc.stdout[-2000:],
                                             proc.stderr[-4000:])
    return proc, json.loads((out / "results.json").read_text())


def test_short_run_with_kills_and_pauses_is_valid(tmp_path: Any) -> None:
    proc, results = jepsen(tmp_path / "run", "--nemesis", "kill,pause", "--time", "25", "--seed", "1")
    assert proc.returncode == 0 and results["valid"], (proc.stdout[-2000:], proc.stderr[-4000:])
    # netns mode (a host per node) wherever namespaces can be made, else the proxies (issue 22).
    assert results["net"] == ("netns" if netns_unavailable() is None else "proxy"), results["net"]
    assert results["queue"]["stats"]["acknowledged"] > 1000, results["queue"]["stats"]
    assert any("start" in f for f in results["faults"]), results["faults"]
    assert results["register"]["valid"] and results["register"]["operations"] > 50
    assert (tmp_path / "run" / "history.jsonl").exists() and (tmp_path / "run" / "latency.svg").exists()


# `make test-long`: tests/test_jepsen_netns.py catches the same build under netns faults in `make test`.
@pytest.mark.long
def test_the_harness_catches_a_build_that_acknowledges_too_early(tmp_path: Any) -> None:
    """KOLK_TEST_UNSAFE_ACKS=1 answers acks=all once the leader has fsynced; cutting leaders off
    from their followers and the SC (clients still reach them) then loses acknowledged writes,
    and the checker must say so."""
    proc, results = jepsen(tmp_path / "broken", "--nemesis", "partition-leader", "--time", "45", "--seed", "2",
                           "--unsafe-acks")
    assert proc.returncode == 1 and not results["valid"], proc.stdout[-2000:]
    assert results["queue"]["counts"]["lost"] > 0, results["queue"]["counts"]


@pytest.mark.long  # `make test-long` (a 30 s fault run); the broken-disk build below stays in `make test`
def test_short_run_with_wiped_disks_and_whole_cluster_restarts_is_valid(tmp_path: Any) -> None:
    """Seed 28: the leaders of two partitions lose their whole data directory (6 s and 13 s in)
    and come back at once, then every SC and SPU is killed and restarted in random order (20 s).
    A replica that lost its disk must never lead or count in the in-sync set until it has caught
    up (DESIGN.md §5, storage identity): nothing acknowledged may be lost, duplicated or moved."""
    proc, results = jepsen(tmp_path / "disk", "--nemesis", "disk-wipe,restart-all", "--time", "30", "--seed", "28")
    counts = results["queue"]["counts"]
    assert (counts["lost"], counts["duplicate"], counts["inconsistent_offsets"]) == (0, 0, 0), \
        (counts, results["queue"]["examples"])
    assert proc.returncode == 0 and results["valid"], (proc.stdout[-2000:], proc.stderr[-4000:])
    started = [f["start"] for f in results["faults"] if "start" in f]
    assert [f["kind"] for f in started] == ["disk-wipe", "disk-wipe", "restart-all"], started
    assert all(d["action"] == "removed" for f in started[:2] for d in f["damage"]), started
    assert results["queue"]["stats"]["acknowledged"] > 1000, results["queue"]["stats"]


@pytest.mark.long  # a broken-build fault run (tests/test_disk_loss.py covers the product in `make test`); `make test-long`
def test_the_harness_catches_a_build_that_follows_a_leader_with_an_empty_disk(tmp_path: Any) -> None:
    """KOLK_TEST_IGNORE_STORAGE_ID=1 (SCs and SPUs) is the build before issue 15's fix: a leader
    that comes back with an empty data directory before the SC has noticed it was gone is still
    the leader, and its followers truncate to its empty log. Seed 18 wipes the leaders of
    partitions 1 and 0, 7 s and 14 s in, when each holds hundreds of acknowledged records or
    more; the checker must report them lost (read earlier, missing from the final read)."""
    # Proxy mode, where this timing was calibrated: the bug shows only when the wiped leader is
    # back within the SC's heartbeat timeout (1.5 s). In netns mode the restart goes through
    # `ip netns exec` and, on a loaded 2-core machine, came back just after it in 4 of 4 runs.
    proc, results = jepsen(tmp_path / "broken-disk", "--net", "proxy", "--nemesis", "disk-wipe", "--time", "25",
                           "--seed", "18", "--ignore-storage-id")
    wipes = [f["start"] for f in results["faults"] if "start" in f]
    assert [w["kind"] for w in wipes] == ["disk-wipe", "disk-wipe"], wipes
    assert all(not w.get("leader_unknown") and w["damage"][0]["files"] > 0 for w in wipes), wipes
    assert proc.returncode == 1 and not results["valid"], proc.stdout[-2000:]
    assert results["queue"]["counts"]["lost"] > 100, results["queue"]["counts"]
