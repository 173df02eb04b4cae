"""Watch streams from a real single-node SC (DESIGN.md §3): deltas after a version, a full
sync for a watcher that is further behind than the change log, and resuming from a version."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from jepsen.cluster import ScCluster, wait_for  # noqa: E402
from kolk.admin import AdminClient, run, watch  # noqa: E402
from dataplane_cluster import wait_until  # noqa: E402


def test_watch_deltas_full_sync_and_resume(tmp_path) -> None:
    """A watcher from version 0 sees every change as deltas; once more changes happened than
    the SC keeps (5 here), a watcher from 0 gets a full sync of every object first; a watcher
    resuming from version V sees only what came after V."""
    c = ScCluster(str(tmp_path / "c"), size=1, extra_args=("--changelog-events", "5"))
    c.start_all()
    try:
        wait_for(lambda: run(lambda: AdminClient(c.admin_addresses, timeout_s=2).cluster_status())["leader"],
                 20, "a single SC to lead")

        async def scenario() -> dict:
            a = AdminClient(c.admin_addresses)
            pushes: list[tuple[bool, int, list]] = []
            await a.register_spu(1, "127.0.0.1:9101")
            handle = await watch(a, 0, lambda full, v, evs: pushes.append((full, v, evs)))
            # Condition waits with a deadline: each push arrives asynchronously.
            await wait_until(lambda: pushes, 10.0, "the first push")
            await a.create_topic("alpha", partitions=2)
            await wait_until(lambda: any(e["name"] == "alpha-1" for _, _, evs in pushes for e in evs), 10.0, "alpha deltas")
            first = list(pushes)
            await handle.cancel()
            version_after_alpha = first[-1][1]

            for i in range(4):
                await a.create_topic(f"t{i}")  # 2 events each: topic and partition
            await a.delete_topic("alpha")
            late: list[tuple[bool, int, list]] = []
            await watch(a, 0, lambda full, v, evs: late.append((full, v, evs)))
            await wait_until(lambda: late, 10.0, "the late watcher's first push")

            resumed: list[tuple[bool, int, list]] = []
            status = await a.cluster_status()
            await watch(a, status["metadata_version"] - 1, lambda full, v, evs: resumed.append((full, v, evs)))
            await wait_until(lambda: resumed, 10.0, "the resumed watcher's push")
            return {"first": first, "late": late, "resumed": resumed, "v": version_after_alpha,
                    "version": status["metadata_version"]}

        out = run(scenario)
        first = out["first"]
        assert not first[0][0], "a watcher within the change log gets deltas, not a full sync"
        names = [e["name"] for _, _, evs in first for e in evs]
        assert names[:1] == ["1"] and {"alpha", "alpha-0", "alpha-1"} <= set(names)
        full, version, events = out["late"][0]
        assert full, "a watcher further behind than the change log gets a full sync"
        assert {e["name"] for e in events} == {"1", "t0", "t0-0", "t1", "t1-0", "t2", "t2-0", "t3", "t3-0"}
        assert not any(e["name"].startswith("alpha") for e in events)
        r_full, r_version, r_events = out["resumed"][0]
        assert not r_full and r_version == out["version"]
        assert {e["name"] for e in r_events} == {"alpha", "alpha-0", "alpha-1"}
        assert all(e["deleted"] for e in r_events)
    finally:
        c.close()
