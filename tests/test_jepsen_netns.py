"""The fault harness in netns mode against a real cluster (issue 22): 3 SCs and 3 SPUs, each a
host of its own (a network namespace on a bridge, jepsen/netns_system.py), faults as packet
filters between pairs of hosts and netem on a host, applied by the harness's Nemesis.

One cluster serves the whole module, each test on a topic of its own:

* a partition between two SCs only (the third reaches both) while a client reads and writes
  metadata keys: the register history stays linearizable;
* a one-way partition of a partition leader from its followers under acks=all: nothing
  acknowledged is lost (the queue checker over the final read);
* 200 ms of netem delay on one follower drops it from the in-sync set under load, as the
  client's partition listing shows, and it comes back once the delay is cleared;
* last, the broken build (``KOLK_TEST_UNSAFE_ACKS``, the harness's ``--unsafe-acks``): with the
  leader's node links cut and clients still reaching it, the checker finds lost records.
"""

from __future__ import annotations

import asyncio
import pathlib
import sys
import time
from typing import Any, Callable

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from jepsen.checkers.linearizability import check as check_linearizable  # noqa: E402
from jepsen.checkers.queue import check_queue  # noqa: E402
from jepsen.nemesis import Fault, Nemesis  # noqa: E402
from jepsen.net_faults import NetPlan  # noqa: E402
from jepsen.netns import netns_unavailable  # noqa: E402
from jepsen.queue_history import Recorder  # noqa: E402
from jepsen.run import TOPIC, UNSAFE_ACKS_ENV, Run  # noqa: E402

from kolk.client.admin import AdminClient, run  # noqa: E402
from kolk.client.client import AsyncClient  # noqa: E402

DEADLINE_S = 60.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: Any) -> Any:
    why = netns_unavailable()
    assert why is None, f"this test needs network namespaces: {why}"
    from jepsen.netns_system import NetnsSystem

    system = NetnsSystem(str(tmp_path_factory.mktemp("netns-cluster")))
    try:
        system.start_all()
        yield system
    finally:
        system.close()


async def wait_until(condition: Callable[[], Any], what: str, timeout_s: float = DEADLINE_S) -> Any:
    """Poll an async or plain condition until it is truthy, or fail naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        await asyncio.sleep(0.1)  # polling a condition with a deadline
    raise AssertionError(f"not within {timeout_s} s: {what}")


async def partition_row(client: AsyncClient, topic: str) -> dict[str, Any] | None:
    rows = await client.partition_list(topic)
    return rows[0] if rows and rows[0]["leader"] is not None else None


def acknowledged(rec: Recorder) -> int:
    return sum(1 for e in rec.events() if e.f == "send" and e.type == "ok")


async def produce_under(system: Any, topic: str, seed: int, during: Callable[[Run, AsyncClient], Any],
                        producers: int = 3) -> dict[str, Any]:
    """acks=all producers (the harness's queue workload) on ``topic`` around ``during``, then a
    final read of the whole log and the queue checker's verdict."""
    admin = AdminClient(system.client_sc_addresses, timeout_s=30)
    await admin.create_topic(topic, 1, 3, {"min_in_sync": "2"})
    client = AsyncClient(system.client_sc_addresses, timeout_s=30)
    rec = Recorder()
    r = Run(system, rec, partitions=1, seed=seed)
    tasks = [asyncio.ensure_future(r.producer(topic)) for _ in range(producers)]
    try:
        await wait_until(lambda: acknowledged(rec) >= 50, "50 acknowledged sends before the fault")
        await during(r, client)
    finally:
        r.stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    await r.final_reads(topic)
    await client.close()
    return check_queue(rec.events())


def test_a_partition_between_two_scs_only_keeps_metadata_linearizable(cluster):
    """SC leader and one follower cannot reach each other; the third SC reaches both, so a
    majority (leader + third) keeps committing while the cut-off follower forwards nothing."""
    async def go() -> None:
        r = Run(cluster, Recorder(), partitions=1, seed=5)
        oks = lambda: sum(1 for op in r.register_ops if op.outcome == "ok")  # noqa: E731
        task = asyncio.ensure_future(r.register())
        admin = AdminClient(cluster.client_sc_addresses, timeout_s=10)
        try:
            await wait_until(lambda: oks() >= 20, "20 metadata operations before the fault")
            leader = cluster.sc_by_admin((await admin.cluster_status())["leader"])
            other = next(j for j in cluster.scs() if j != leader)
            third = next(j for j in cluster.scs() if j not in (leader, other))
            nemesis = Nemesis(cluster)
            fault = Fault(0, 1, "partition-pair", f"pair:sc:{leader},sc:{other}", {"seed": 3})
            rec = await asyncio.to_thread(nemesis.start, fault)
            assert rec["edges"] == sorted([f"sc-{leader}->sc-{other}", f"sc-{other}->sc-{leader}"]), rec
            before = oks()
            await wait_until(lambda: oks() >= before + 60, "60 metadata operations during the partition")
            # The third SC still reaches both: it answers with a leader.
            third_admin = AdminClient([cluster.client_sc_addresses[third - 1]], timeout_s=10)
            assert (await third_admin.cluster_status())["leader"]
            await asyncio.to_thread(nemesis.stop, fault)
            after = oks()
            await wait_until(lambda: oks() >= after + 20, "20 metadata operations after healing")
        finally:
            r.stop.set()
            await task
        result = check_linearizable(r.register_ops)
        assert result.ok, result.report()
        writes = sum(1 for op in r.register_ops if op.kind == "write" and op.outcome == "ok")
        assert writes >= 20, writes

    run(go)


def test_a_one_way_partition_of_a_leader_from_its_followers_loses_nothing_acknowledged(cluster):
    """Packets from the leader SPU to its followers are dropped (theirs still reach it, and it
    still reaches the SCs): the followers fall behind, the leader shrinks the in-sync set below
    min_in_sync 2 and refuses acks=all; after healing they catch up and nothing is lost."""
    seen: dict[str, Any] = {}

    async def during(r: Run, client: AsyncClient) -> None:
        row = await wait_until(lambda: partition_row(client, "oneway"), "a leader for topic oneway")
        leader = row["leader"]
        followers = [s for s in row["replicas"] if s != leader]
        cut = NetPlan(frozenset((f"spu-{leader}", f"spu-{f}") for f in followers))
        await asyncio.to_thread(cluster.apply_net, cut)
        try:
            shrunk = await wait_until(lambda: _isr_without(client, "oneway", followers), "the in-sync set to shrink")
            seen["shrunk"] = shrunk
        finally:
            await asyncio.to_thread(cluster.revert_net, cut)
        seen["regrown"] = await wait_until(lambda: _isr_with(client, "oneway", len(row["replicas"])),
                                           "the followers to rejoin the in-sync set")
        base = acknowledged(r.rec)
        await wait_until(lambda: acknowledged(r.rec) >= base + 50, "50 acknowledged sends after healing")

    result = run(lambda: produce_under(cluster, "oneway", 7, during))
    counts = result["counts"]
    assert result["valid"] and counts["lost"] == 0, (counts, result["examples"])
    assert result["stats"]["acknowledged"] >= 100, result["stats"]
    assert seen["shrunk"] and seen["regrown"], seen


async def _isr_without(client: AsyncClient, topic: str, followers: list[int]) -> list[int] | None:
    row = await partition_row(client, topic)
    return row["isr"] if row and not set(followers) & set(row["isr"]) else None


async def _isr_with(client: AsyncClient, topic: str, n: int) -> list[int] | None:
    row = await partition_row(client, topic)
    return row["isr"] if row and len(row["isr"]) == n else None


def test_netem_delay_on_a_follower_shrinks_the_in_sync_set_and_it_regrows_when_cleared(cluster):
    """200 ms on every frame the follower sends. A follower counts as caught up when each fetch
    reaches where the leader's log ended at its fetch before, so a slow link alone keeps it in
    the set while the link carries the load; under ~20 MB/s of 60 KB records (acks=leader) it
    cannot, the leader drops it after replica-lag-max (3 s), and it rejoins once cleared."""
    async def go() -> None:
        admin = AdminClient(cluster.client_sc_addresses, timeout_s=30)
        await admin.create_topic("slow", 1, 3, {"min_in_sync": "2"})
        client = AsyncClient(cluster.client_sc_addresses, timeout_s=30)
        row = await wait_until(lambda: partition_row(client, "slow"), "a leader for topic slow")
        follower = next(s for s in row["replicas"] if s != row["leader"])
        producer = client.producer("slow", acks="leader", linger_ms=5)
        stop = asyncio.Event()

        async def load() -> None:
            while not stop.is_set():
                await (await producer.send(b"x" * 60_000, partition=0))

        tasks = [asyncio.ensure_future(load()) for _ in range(4)]
        nemesis = Nemesis(cluster)
        fault = Fault(0, 1, "netem", f"spu:{follower}", {"seed": 1, "delay_ms": 200, "jitter_ms": 0,
                                                          "loss_pct": 0.0, "duplicate_pct": 0.0, "reorder_pct": 0.0})
        try:
            rec = await asyncio.to_thread(nemesis.start, fault)
            assert rec["netem"][f"spu-{follower}"]["delay_ms"] == 200, rec
            try:
                await wait_until(lambda: _isr_without(client, "slow", [follower]),
                                 f"SPU {follower} to leave the in-sync set under 200 ms of delay")
            finally:
                await asyncio.to_thread(nemesis.stop, fault)
            await wait_until(lambda: _isr_with(client, "slow", 3), f"SPU {follower} to rejoin the in-sync set")
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            await client.close()

    run(go)


def test_the_broken_build_still_fails_under_netns_faults(cluster):
    """The SPUs restarted as the build that answers acks=all once the leader has fsynced
    (``--unsafe-acks``); the leader's links to every other node are cut (clients still reach
    it): the SC elects another replica, the old leader keeps acknowledging, and its tail is
    cut when it rejoins. The checker must report lost records. Last in the module: the SPUs
    stay broken until the cluster is torn down."""
    for name in cluster.spu_names():
        cluster.terminate(name)
        cluster.start(name, {UNSAFE_ACKS_ENV: "1"})
    for name in cluster.spu_names():
        cluster.wait_serving(name)

    async def during(r: Run, client: AsyncClient) -> None:
        row = await wait_until(lambda: partition_row(client, TOPIC), "a leader for the topic")
        old = row["leader"]
        nemesis = Nemesis(cluster)
        fault = Fault(0, 1, "partition-one", f"spu:{old}", {"seed": 2, "clients": False})
        await asyncio.to_thread(nemesis.start, fault)
        try:
            await wait_until(lambda: _leader_other_than(client, old), "the SC to elect another leader")
            base = acknowledged(r.rec)
            await wait_until(lambda: acknowledged(r.rec) >= base + 100, "the cut-off leader to acknowledge 100 sends")
        finally:
            await asyncio.to_thread(nemesis.stop, fault)

    result = run(lambda: produce_under(cluster, TOPIC, 9, during, producers=4))
    assert not result["valid"] and result["counts"]["lost"] > 0, (result["counts"], result["stats"])


async def _leader_other_than(client: AsyncClient, old: int) -> int | None:
    row = await partition_row(client, TOPIC)
    return row["leader"] if row and row["leader"] != old else None
