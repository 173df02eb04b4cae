"""The fault harness end to end in CI: 3 SCs and 3 SPUs behind proxies, the queue and register
workloads, faults, a final read. A short run with kills and pauses must be valid; the same
harness against the deliberately broken build (acks=all answered before the high watermark)
with its leaders cut off must report lost writes. Longer runs: `make jepsen`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def jepsen(out: Any, *args: str) -> tuple[subprocess.CompletedProcess, dict[str, Any]]:
    proc = subprocess.run([sys.executable, "-m", "jepsen", "run", "--out", str(out), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    return proc, json.loads((out / "results.json").read_text())


def test_short_run_with_kills_and_pauses_is_valid(tmp_path: Any) -> None:
    proc, results = jepsen(tmp_path / "run", "--nemesis", "kill,pause", "--time", "40", "--seed", "1")
    assert proc.returncode == 0 and results["valid"], (proc.stdout[-2000:], proc.stderr[-4000:])
    assert results["queue"]["stats"]["acknowledged"] > 1000, results["queue"]["stats"]
    assert any("start" in f for f in results["faults"]), results["faults"]
    assert results["register"]["valid"] and results["register"]["operations"] > 50
    assert (tmp_path / "run" / "history.jsonl").exists() and (tmp_path / "run" / "latency.svg").exists()


def test_the_harness_catches_a_build_that_acknowledges_too_early(tmp_path: Any) -> None:
    """KOLK_TEST_UNSAFE_ACKS=1 answers acks=all once the leader has fsynced; cutting leaders off
    from their followers and the SC (clients still reach them) then loses acknowledged writes,
    and the checker must say so."""
    proc, results = jepsen(tmp_path / "broken", "--nemesis", "partition-leader", "--time", "45", "--seed", "2",
                           "--unsafe-acks")
    assert proc.returncode == 1 and not results["valid"], proc.stdout[-2000:]
    assert results["queue"]["counts"]["lost"] > 0, results["queue"]["counts"]
