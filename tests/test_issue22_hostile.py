"""Issue 22's new calls and files, attacked from outside (reviewer R1): a real SC process, raw
requests over the admin port, and `kolk sc --config` run as a process.

- A rebalance plan of a big cluster (600 partitions grown from 3 SPUs to 40 in 3 racks) ran
  on the SC's event loop: one 200-byte request held it for minutes (planner cost: every step
  sorted and scanned every partition for every SPU). The planner now runs in a worker thread,
  one plan at a time, and costs a step the partitions of the most loaded SPU.
- heartbeat(leaving=true), which takes an SPU's leaderships away, is a node-only call.
- addSc at a port that accepts TCP but is no SC was accepted, and a 1-SC cluster lost its
  quorum for good; the leader now asks that address for its status first.
- Concurrent drains could drain every SPU (each checked a state without the others).
- addSc/removeSc/drainSpu/rebalance with hostile ids, addresses and throttles are refused with
  one line each, and the SC keeps serving.
- A config file nested too deeply, or with an integer of thousands of digits, is refused with
  one line (it was a Python traceback).
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from typing import Any

import pytest

from dataplane_cluster import run_async
from jepsen.cluster import SECRET, ScCluster, free_port, wait_for
from kolk.client.admin import AdminClient
from kolk.protocol.channel import SC
from kolk.protocol.channel_client import ClientConnection
from kolk.protocol.node_auth import NodeCredential

PARTITIONS = 600
SPUS = 40
PLAN_TIMEOUT_S = 90.0  # the plan itself, in a worker thread on a shared 2-core machine
LOOP_HELD_MAX_S = 1.5  # the longest a status call may wait while a plan runs


@pytest.fixture(scope="module")
def sc(tmp_path_factory: Any) -> Any:
    """One SC; SPUs are registered (never started) by a node client, alive for 10 minutes."""
    c = ScCluster(str(tmp_path_factory.mktemp("hostile")), size=1, heartbeat_timeout_ms=600_000,
                  extra_args=("--replica-move-after-ms", "600000", "--leader-rebalance-interval-ms", "0"))
    try:
        c.start_all()
        wait_for(lambda: run_async(lambda: AdminClient(c.admin_addresses, timeout_s=2).cluster_status())["leader"],
                 30, lambda: "the SC to lead\n" + open(c.nodes[1].log_path).read()[-3000:])

        async def setup() -> None:
            node = AdminClient(c.admin_addresses, timeout_s=20, credential=NodeCredential("spu-1", SECRET))
            for i in (1, 2, 3):
                await node.register_spu(i, f"127.0.0.1:{free_port()}", rack=f"r{i % 3}")
            await AdminClient(c.admin_addresses, timeout_s=20).create_topic("big", PARTITIONS, 3)
            for i in range(4, SPUS + 1):  # the cluster grew: 37 empty SPUs
                await node.register_spu(i, f"127.0.0.1:{free_port()}", rack=f"r{i % 3}")
        run_async(setup)
        yield c
    finally:
        c.close()


async def _raw(c: ScCluster, call: str, **fields: Any) -> Any:
    conn = await ClientConnection.open(SC, c.admin_addresses[0], 5)
    try:
        return await conn.call(call, 30, **fields)
    finally:
        conn.close()


def test_a_big_rebalance_plan_does_not_hold_the_event_loop(sc: ScCluster) -> None:
    """While the SC plans moving ~600 partitions onto 37 new SPUs, its other calls answer
    at once; the plan itself comes back, evens the SPUs and keeps racks distinct."""
    async def body() -> None:
        admin = AdminClient(sc.admin_addresses, timeout_s=PLAN_TIMEOUT_S)
        probe = AdminClient(sc.admin_addresses, timeout_s=10)
        await probe.cluster_status()  # connected before the plan starts
        plan = asyncio.ensure_future(admin.rebalance())
        slowest = 0.0
        while not plan.done():
            t0 = time.monotonic()
            await probe.cluster_status()
            slowest = max(slowest, time.monotonic() - t0)
            assert slowest < LOOP_HELD_MAX_S, f"a status call waited {slowest:.1f} s while the SC planned"
            await asyncio.wait([plan], timeout=0.05)  # pace the probes
        answer = plan.result()
        assert len(answer["moves"]) > PARTITIONS // 2 and answer["started"] == []
        replicas = {m["partition"]: m["to"] for m in answer["moves"]}
        load: dict[int, int] = {}
        for to in replicas.values():
            assert len({r % 3 for r in to}) == 3, to  # racks r0, r1, r2 stay distinct
        for part in range(PARTITIONS):
            for r in replicas.get(f"big-{part}", [1, 2, 3]):
                load[r] = load.get(r, 0) + 1
        for rack in range(3):  # even within each rack (r1 has 14 SPUs, r0 and r2 13: one replica per rack)
            counts = [n for spu, n in load.items() if spu % 3 == rack]
            assert max(counts) - min(counts) <= 1, (rack, load)
    run_async(body)


def test_concurrent_plans_and_drains_are_answered(sc: ScCluster) -> None:
    """Three rebalance plans and a drain/undo at once: each answers, none on the loop."""
    async def body() -> None:
        admin = AdminClient(sc.admin_addresses, timeout_s=PLAN_TIMEOUT_S * 2)
        answers = await asyncio.gather(admin.rebalance(), admin.rebalance(), admin.drain_spu(SPUS),
                                       admin.rebalance(), return_exceptions=True)
        assert all(isinstance(a, dict) for a in answers), answers
        await admin.drain_spu(SPUS, undo=True)
        status = await admin.cluster_status()
        assert not any(s["draining"] for s in status["spus"])
    run_async(body)


def test_leaving_heartbeat_for_another_spu_is_node_only(sc: ScCluster) -> None:
    """An anonymous client (no cluster secret) cannot say SPU 1 is leaving."""
    async def body() -> None:
        answer = await _raw(sc, "heartbeat", spuId=1, leaving=True)
        assert not answer.result.ok and answer.result.error.code == "denied", answer.result
        status = await AdminClient(sc.admin_addresses, timeout_s=10).cluster_status()
        assert next(s for s in status["spus"] if s["id"] == 1)["alive"]
    run_async(body)


@pytest.mark.parametrize("call,fields,code", [
    ("drainSpu", {"spu": 2**31 - 1}, "notFound"),
    ("drainSpu", {"spu": -2**31}, "notFound"),
    ("rebalance", {"throttleBytesPerSec": 2**64 - 1}, "invalidArgument"),
    ("removeSc", {"id": 2**31 - 1}, "notFound"),
    ("removeSc", {"id": -1}, "notFound"),
    ("removeSc", {"id": 1}, "invalidArgument"),  # the last SC
    ("addSc", {"id": -5, "raft": "127.0.0.1:1", "admin": "127.0.0.1:2"}, "invalidArgument"),
    ("addSc", {"id": 2**31 - 1, "raft": "127.0.0.1:1", "admin": "127.0.0.1:2"}, "invalidArgument"),
    ("addSc", {"id": 7, "raft": "127.0.0.1:0", "admin": "127.0.0.1:2"}, "invalidArgument"),
    ("addSc", {"id": 7, "raft": "127.0.0.1:65536", "admin": "127.0.0.1:2"}, "invalidArgument"),
    ("addSc", {"id": 7, "raft": "h" * 4_000 + ":1", "admin": "127.0.0.1:2"}, "invalidArgument"),
    ("addSc", {"id": 7, "raft": "\u00e9\u0000\u202e:1", "admin": "127.0.0.1:2"}, "notEnoughReplicas"),
    ("addSc", {"id": 7, "raft": "", "admin": ""}, "invalidArgument"),
])
def test_hostile_arguments_are_refused_with_one_line(sc: ScCluster, call: str, fields: dict[str, Any],
                                                     code: str) -> None:
    async def body() -> None:
        answer = await _raw(sc, call, **fields)
        assert not answer.result.ok and answer.result.error.code == code, (call, fields, answer.result)
        assert "\n" not in answer.result.error.message and len(answer.result.error.message) < 4200
        await AdminClient(sc.admin_addresses, timeout_s=10).cluster_status()  # still serving
    run_async(body)


def test_adding_the_scs_own_address_is_refused(sc: ScCluster) -> None:
    me = sc.nodes[1]

    async def body() -> None:
        for raft, admin in ((me.raft, f"127.0.0.1:{free_port()}"), (f"127.0.0.1:{free_port()}", me.admin)):
            answer = await _raw(sc, "addSc", id=9, raft=raft, admin=admin)
            assert not answer.result.ok and answer.result.error.code == "alreadyExists", answer.result
    run_async(body)


def test_two_executes_at_once_start_each_move_once_and_cancel_undoes_them(sc: ScCluster) -> None:
    """Two `rebalance --execute` at once (the SPUs never copy: the moves stay in progress): no
    partition is started twice, and a cancel puts every partition back where it was."""
    async def body() -> None:
        admin = AdminClient(sc.admin_addresses, timeout_s=PLAN_TIMEOUT_S * 2)
        before = {p["name"]: p["spec"]["replicas"] for p in await admin.list_objects("partition")}
        first, second = await asyncio.gather(admin.rebalance(execute=True, throttle=1),
                                             admin.rebalance(execute=True, throttle=2**40))
        started = first["started"] + second["started"]
        assert started and len(started) == len(set(started)), (first["refused"][:3], second["refused"][:3])
        moving = (await admin.cluster_status())["moving"]
        assert sorted(m["partition"] for m in moving) == sorted(started)
        cancelled = await admin.rebalance(cancel=True)
        assert sorted(cancelled["started"]) == sorted(started) and cancelled["moving"] == []
        after = {p["name"]: p["spec"]["replicas"] for p in await admin.list_objects("partition")}
        assert after == before
    run_async(body)


def test_adding_an_sc_at_a_port_that_is_not_an_sc_is_refused(sc: ScCluster) -> None:
    """addSc at a port that accepts TCP but is no SC (an SPU's, a typo) is refused, and the
    cluster keeps its quorum: it was accepted, Raft counted a voter that never answers, and this
    1-SC cluster could commit nothing ever again. Last of the cluster tests: it would break it."""
    listener = socket.socket()
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        address = f"127.0.0.1:{listener.getsockname()[1]}"

        async def body() -> None:
            answer = await _raw(sc, "addSc", id=5, raft=address, admin=address)
            assert not answer.result.ok and answer.result.error.code == "notEnoughReplicas", answer.result
            assert "does not answer as a Kolk SC" in answer.result.error.message
            admin = AdminClient(sc.admin_addresses, timeout_s=20)
            assert (await admin.cluster_status())["raft"]["has_quorum"]
            await admin.create_topic("after-bogus-add", 1, 1)  # still commits
            assert [m["id"] for m in (await admin.cluster_status())["scs"]] == [1]
        run_async(body)
    finally:
        listener.close()


def test_concurrent_drains_cannot_drain_more_than_the_others_can_hold(tmp_path: Any) -> None:
    """Six SPUs, partitions of RF 3, a drain of every SPU at once: three are accepted, three
    refused (each drain's check and commit are one step). All six were accepted: each checked a
    state without the others draining, and no replica could be placed anywhere after."""
    c = ScCluster(str(tmp_path), size=1, heartbeat_timeout_ms=600_000, extra_args=("--replica-move-after-ms", "600000"))
    try:
        c.start_all()
        wait_for(lambda: run_async(lambda: AdminClient(c.admin_addresses, timeout_s=2).cluster_status())["leader"],
                 30, lambda: "the SC to lead\n" + open(c.nodes[1].log_path).read()[-3000:])

        async def body() -> None:
            node = AdminClient(c.admin_addresses, timeout_s=20, credential=NodeCredential("spu-1", SECRET))
            for i in range(1, 7):
                await node.register_spu(i, f"127.0.0.1:{free_port()}")
            admin = AdminClient(c.admin_addresses, timeout_s=20)
            await admin.create_topic("t", 20, 3)
            answers = await asyncio.gather(*[AdminClient(c.admin_addresses, timeout_s=30).drain_spu(i)
                                             for i in range(1, 7)], return_exceptions=True)
            refused = [a for a in answers if isinstance(a, Exception)]
            assert len(refused) == 3 and all("cannot be drained" in str(e) for e in refused), answers
            assert len([s for s in (await admin.cluster_status())["spus"] if s["draining"]]) == 3
            assert (await admin.rebalance())["moves"]  # the plan that empties them exists
        run_async(body)
    finally:
        c.close()


# ---------------------------------------------------------------- config files, as processes


@pytest.mark.parametrize("text,words", [
    ("id = " + "[" * 50_000 + "]" * 50_000, "nested too deeply"),
    ("raft = " + "{a=" * 5_000 + "1" + "}" * 5_000, "nested too deeply"),
    ("heartbeat-timeout-ms = " + "9" * 5_000, "digits"),
])
def test_a_hostile_config_file_is_refused_with_one_line(tmp_path: Any, text: str, words: str) -> None:
    path = os.path.join(tmp_path, "sc.toml")
    with open(path, "w") as f:
        f.write(text)
    r = subprocess.run([sys.executable, "-m", "kolk", "sc", "--config", path], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr[-2000:]
    assert path in r.stderr and words in r.stderr, r.stderr


@pytest.mark.parametrize("target", ["/dev/zero", "/dev/null", "loop", "/proc/self/status"])
def test_a_config_symlink_to_a_device_a_loop_or_proc_is_refused(tmp_path: Any, target: str) -> None:
    """A symlink to a device (never ending or empty), to itself, or to a /proc file (st_size 0,
    content generated): a one-line refusal or the text, never a hang or a traceback."""
    from kolk.node.config_file import ConfigFileError, read_config_text

    path = os.path.join(tmp_path, "sc.toml")
    os.symlink(path if target == "loop" else target, path)
    try:
        text = read_config_text(path)
    except ConfigFileError as e:
        assert path in str(e) and "\n" not in str(e)
    else:
        assert target == "/proc/self/status" and "Pid" in text


def test_a_huge_changelog_events_in_a_config_file_is_one_line(tmp_path: Any) -> None:
    """Every flag is a key now, so a value no one would type reaches the SC: a huge
    changelog-events was a traceback (OverflowError from the watchers' deque)."""
    path = os.path.join(tmp_path, "sc.toml")
    with open(path, "w") as f:
        f.write(f'id = 1\ndata-dir = "{tmp_path}/sc"\nraft = "127.0.0.1:{free_port()}"\n'
                f'admin = "127.0.0.1:{free_port()}"\nchangelog-events = 99999999999999999999\n')
    r = subprocess.run([sys.executable, "-m", "kolk", "sc", "--config", path], capture_output=True, text=True,
                       timeout=60, env=dict(os.environ, KOLK_CLUSTER_SECRET=SECRET))
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert r.stderr.strip() == "kolk sc: --changelog-events must be 1-10000000, got 99999999999999999999", r.stderr
    assert not os.path.exists(os.path.join(tmp_path, "sc"))  # stopped before creating anything
