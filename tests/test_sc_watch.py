"""Watch streams from a real single-node SC (DESIGN.md §3): deltas after a version, a full
sync for a watcher that is further behind than the change log, resuming from a version, the
order of what a stream delivers, and the SC's bounded number of watchers."""

from __future__ import annotations

import asyncio
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from jepsen.cluster import SECRET, ScCluster, wait_for  # noqa: E402
from kolk.client.admin import AdminClient, run, watch  # noqa: E402
from kolk.protocol.node_auth import NodeCredential  # noqa: E402
from kolk.protocol.errors import KolkError  # noqa: E402
from dataplane_cluster import wait_until  # noqa: E402

# Watching is node-only: without TLS a watcher proves the cluster secret (docs/security.md).
NODE = NodeCredential("spu-1", SECRET)


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
            a = AdminClient(c.admin_addresses, credential=NODE)
            pushes: list[tuple[bool, int, list]] = []
            await a.register_spu(1, "127.0.0.1:9101")
            handle = await watch(a, 0, lambda full, v, evs: pushes.append((full, v, evs)))
            # Condition waits with a deadline: each push arrives asynchronously.
            await wait_until(lambda: pushes, 10.0, "the first push")
            # The SC member list (issue 22) is seeded once by the leader's first controller round,
            # which may land after the watcher starts: waited for here, so that it cannot be the
            # last change the resumed watcher below is asked for.
            await wait_until(lambda: any(e["name"] == "sc-members" for _, _, evs in pushes for e in evs),
                             10.0, "the SC member list")
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
        # The SC member list (issue 22) is not one of the objects this test made.
        names = [e["name"] for _, _, evs in first for e in evs if e["name"] != "sc-members"]
        assert names[:1] == ["1"] and {"alpha", "alpha-0", "alpha-1"} <= set(names)
        full, version, events = out["late"][0]
        assert full, "a watcher further behind than the change log gets a full sync"
        # Every object: the SPU, the topics and partitions, and the SC member list once the leader
        # has written it (its first controller round after the election: issue 22).
        names = {e["name"] for e in events} - {"sc-members"}
        assert names == {"1", "t0", "t0-0", "t1", "t1-0", "t2", "t2-0", "t3", "t3-0"}
        assert not any(e["name"].startswith("alpha") for e in events)
        r_full, r_version, r_events = out["resumed"][0]
        assert not r_full and r_version == out["version"]
        assert {e["name"] for e in r_events} == {"alpha", "alpha-0", "alpha-1"}
        assert all(e["deleted"] for e in r_events)
    finally:
        c.close()


def test_watch_streams_in_order_and_a_closed_watch_frees_its_place(tmp_path) -> None:
    """Over the stream every change arrives once and in version order, to a plain and to an
    asynchronous ``on_push`` alike (the latter awaited before the next push). The SC serves at
    most --watchers-max watches (2 here) and refuses one more with a clear, retriable error; a
    watch that is cancelled, or whose client goes away, gives its place back, and a cancelled
    watch gets no push after ``cancel()``."""
    c = ScCluster(str(tmp_path / "c"), size=1, extra_args=("--watchers-max", "2"))
    c.start_all()
    try:
        wait_for(lambda: run(lambda: AdminClient(c.admin_addresses, timeout_s=2).cluster_status())["leader"],
                 20, "a single SC to lead")

        async def scenario() -> dict:
            a = AdminClient(c.admin_addresses, credential=NODE)
            plain: list[tuple[bool, int, list]] = []
            slow: list[tuple[bool, int, list]] = []
            in_push = [0]

            async def slow_push(full: bool, version: int, events: list) -> None:
                in_push[0] += 1
                assert in_push[0] == 1, "on_push ran again before the previous one had finished"
                await asyncio.sleep(0.005)  # a slow consumer: the next push must wait for it
                slow.append((full, version, events))
                in_push[0] -= 1

            await a.register_spu(1, "127.0.0.1:9101")
            first = await watch(a, 0, lambda full, v, evs: plain.append((full, v, evs)))
            second = await watch(a, 0, slow_push)
            for i in range(10):
                await a.create_topic(f"t{i}")
            await a.delete_topic("t3")
            for seen in (plain, slow):
                await wait_until(lambda: any(e["name"] == "t3-0" and e["deleted"] for _, _, evs in seen for e in evs),
                                 10.0, "the deletion of t3")
            with pytest.raises(KolkError) as refused:
                await watch(AdminClient(c.admin_addresses, timeout_s=1, credential=NODE), 0, lambda *_: None)

            await first.cancel()
            cancelled_at = len(plain)
            await a.create_topic("after")
            b = AdminClient(c.admin_addresses, timeout_s=5, credential=NODE)
            third = await watch(b, 0, lambda *_: None)  # the place the cancelled watch gave back
            await wait_until(lambda: any(e["name"] == "after" for _, _, evs in slow for e in evs), 10.0, "'after'")

            await a.close()  # the client of the second watch goes away
            second_ended = await asyncio.wait_for(second.wait(), 5)
            fourth = await watch(AdminClient(c.admin_addresses, timeout_s=5, credential=NODE), 0, lambda *_: None)
            with pytest.raises(KolkError) as refused_again:
                await watch(AdminClient(c.admin_addresses, timeout_s=1, credential=NODE), 0, lambda *_: None)
            third.cancel()
            fourth.cancel()
            return {"plain": plain, "slow": slow, "refused": refused.value, "cancelled_at": cancelled_at,
                    "first_error": first.error, "first_done": first.done(), "second_ended": second_ended,
                    "refused_again": refused_again.value}

        out = run(scenario)
        expected = [(f"t{i}", False) for i in range(10)]
        for name in ("plain", "slow"):
            pushes = out[name]
            assert all(not full for full, _, _ in pushes), "a watcher within the change log gets deltas"
            versions = [v for _, v, _ in pushes]
            assert versions == sorted(set(versions)), f"{name}: push versions not increasing: {versions}"
            events = [e for _, _, evs in pushes for e in evs]
            assert [e["version"] for e in events] == sorted(e["version"] for e in events)
            assert all(e["version"] <= v for _, v, evs in pushes for e in evs)
            topics = [(e["name"], e["deleted"]) for e in events if e["kind"] == "topic"]
            assert topics[:10] == expected and topics[10] == ("t3", True), topics
            parts = [e["name"] for e in events if e["kind"] == "partition" and not e["deleted"]]
            assert parts[:10] == [f"t{i}-0" for i in range(10)]
        assert len(out["plain"]) == out["cancelled_at"], "a push arrived after cancel()"
        assert not any(e["name"] == "after" for _, _, evs in out["plain"] for e in evs)
        assert out["first_done"] and out["first_error"] is None
        assert isinstance(out["second_ended"], KolkError), "a watch whose connection closed must say so"
        for refused in (out["refused"], out["refused_again"]):
            assert refused.code == "limitExceeded" and refused.retriable
            assert "already serves 2 watchers" in str(refused)
    finally:
        c.close()
