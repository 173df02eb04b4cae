"""A rolling restart of every node under an acks=all load (issue 22, Build item 4): what a
Kubernetes StatefulSet with readiness probes and a PodDisruptionBudget does, run for real.

Three SCs and three SPUs, each in a network namespace of its own on its real address
(jepsen/netns.py, jepsen/netns_cluster.py). A topic of 6 partitions, replication factor 3, min in-sync 2; an
idempotent acks=all producer writes throughout; a poller records every partition's leader
every ~100 ms through the admin client. Every node in turn, SPUs first, then the SCs with the
Raft leader last: SIGTERM (an SPU hands its leaderships over first: controlled shutdown,
core/spu/shutdown.py), exit 0, start again, wait for its /health and for every partition's
in-sync set to be full again. Then: every acknowledged record is read back exactly once, at
its offset, in send order per partition; no partition was seen without a serving leader for
more than 5 s (the longest is printed, with the record counts and the longest stall of
metadata writes while an SC leader stopped: pysyncobj has no leadership transfer).

"Serving leader": an SPU answers a request for the partition (``offsets``, which only its
leader answers) within 1 s; the one the metadata names is asked first, then the others (a
stale metadata read must not count as an outage). An SPU stopping but not yet exited still
serves (that is the point of the hand-over); one that exited, or restarted and has not opened
its logs, does not.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dataplane_cluster import read_all, wait_until  # noqa: E402
from jepsen.cluster import wait_for  # noqa: E402
from jepsen.netns import Network, netns_unavailable  # noqa: E402
from jepsen.netns_cluster import NetnsCluster  # noqa: E402
from kolk.client.admin import AdminClient  # noqa: E402
from kolk.client.client import AsyncClient  # noqa: E402
from kolk.protocol.channel import SPU  # noqa: E402
from kolk.protocol.channel_client import CallRejected, ClientConnection, ConnectionLost  # noqa: E402
from kolk.protocol.errors import KolkError  # noqa: E402
from rolling_restart_checks import acked_problems, leaderless_runs, longest_leaderless  # noqa: E402

TOPIC = "roll"
PARTITIONS = 6
LEADERLESS_MAX_S = 5.0
POLL_S = 0.1  # the poller's period
SEND_PERIOD_S = 0.004  # the producer's pace: ~250 records/s offered, on a 2-core machine shared with 6 servers
WINDOW = 256  # records awaiting their answer at most
FULL_ISR_TIMEOUT_S = 60.0
PROBE_TIMEOUT_S = 1.0  # a leader that does not answer for its partition this fast counts as no leader


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    why = netns_unavailable()
    assert why is None, f"the rolling-restart test runs nodes in network namespaces, which cannot be used here: {why}"
    with Network() as net:
        c = NetnsCluster(net, str(tmp_path_factory.mktemp("roll")), scs=3, spus=3)
        try:
            c.start_all()
            yield c
        finally:
            c.close()


# ---------------------------------------------------------------- the checks themselves


def test_longest_leaderless_measures_runs_between_samples() -> None:
    samples = [(0.0, 0, 1), (1.0, 0, None), (1.1, 1, None), (2.5, 0, None), (3.0, 0, 2), (4.0, 1, None)]
    assert longest_leaderless(samples) == {0: 2.0, 1: 2.9}
    assert leaderless_runs(samples) == [(0, 1.0, 3.0), (1, 1.1, 4.0)]


def test_acked_problems_names_lost_duplicated_moved_and_reordered() -> None:
    acked = {0: [(0, b"a"), (1, b"b"), (3, b"d")], 1: [(5, b"x"), (4, b"y")]}
    read = {0: [(0, b"a"), (1, b"b"), (2, b"b")], 1: [(4, b"y"), (5, b"x")]}
    assert acked_problems(acked, read) == ["partition 0: b'b' read 2 times",
                                           "partition 0: acknowledged b'd' at offset 3, read None there",
                                           "partition 1: acknowledged offsets out of send order"]
    assert acked_problems({0: [(0, b"a")]}, {0: [(0, b"a")]}) == []


# ---------------------------------------------------------------- the roll


class Load:
    """The producer, the leader poller and the metadata-write prober, as tasks on one loop."""

    def __init__(self, cluster: NetnsCluster, client: AsyncClient) -> None:
        self.cluster = cluster
        self.client = client
        self.stop = asyncio.Event()
        self.sent: list[tuple[int, Any]] = []  # (send index, RecordFuture)
        self.samples: list[tuple[float, int, int | None]] = []
        self.meta_writes: list[float] = []  # when a metadata write succeeded
        self.send_errors: list[str] = []

    def acked_count(self) -> int:
        return sum(1 for _, f in self.sent if f.done() and f.exception() is None)

    async def produce(self) -> None:
        producer = self.client.producer(TOPIC, acks="all", partitioner="round_robin", linger_ms=2,
                                        retries=1_000, request_timeout_ms=10_000, delivery_timeout_ms=90_000)
        try:
            i = 0
            while not self.stop.is_set():
                pending = [f for _, f in self.sent[-WINDOW:] if not f.done()]
                if len(pending) >= WINDOW:
                    await asyncio.wait([asyncio.ensure_future(_settle(pending[0]))])
                self.sent.append((i, await producer.send(f"v{i}".encode())))
                i += 1
                await asyncio.sleep(SEND_PERIOD_S)  # the offered load's pace
            await producer.flush()
        finally:
            await producer.close()

    async def poll_leaders(self) -> None:
        """Every ~100 ms: the leader of each partition from the metadata (any SC, stale read), and
        whether that SPU answers an ``offsets`` call for it (its log opened, it leads) within 1 s."""
        admin = AdminClient(self.cluster.admin_addresses, timeout_s=2)
        conns: dict[str, ClientConnection] = {}
        try:
            while not self.stop.is_set():
                try:
                    parts = await _partitions(admin)
                    spus = {o["spec"]["id"]: o["spec"]["public_address"]
                            for o in await admin.list_objects("spu", stale=True)}
                except KolkError:
                    parts = []  # no SC answered this time: no sample, the run goes on
                t = time.monotonic()
                answers = await asyncio.gather(*(_serving(conns, spus, p) for p in parts))
                self.samples.extend((t, int(p["name"].rsplit("-", 1)[1]), a) for p, a in zip(parts, answers))
                await asyncio.sleep(POLL_S)  # the poller's period
        finally:
            for c in conns.values():
                c.close()

    async def probe_metadata_writes(self) -> None:
        admin = AdminClient(self.cluster.admin_addresses, timeout_s=2)
        while not self.stop.is_set():
            try:
                await admin.allocate_producer_ids(1)
                self.meta_writes.append(time.monotonic())
            except KolkError:
                pass  # no leader now: the gap is what is measured
            await asyncio.sleep(0.2)  # the probe's period


async def _serving(conns: dict[str, ClientConnection], spus: dict[int, str], part: dict[str, Any]) -> int | None:
    """The SPU that answers for the partition as its leader now: the one the metadata names
    first (the metadata read may be stale: an SC restarting, or a follower behind), then the
    others; None when none does."""
    topic, index = part["name"].rsplit("-", 1)
    named = part["status"]["leader"]
    for spu in [named] + sorted(s for s in spus if s != named):
        if spu in spus and await _answers(conns, spus[spu], topic, int(index)):
            return spu
    return None


async def _answers(conns: dict[str, ClientConnection], address: str, topic: str, partition: int) -> bool:
    try:
        conn = conns.get(address)
        if conn is None or conn.is_closed:
            conn = conns[address] = await ClientConnection.open(SPU, address, PROBE_TIMEOUT_S)
        r = await conn.call("offsets", PROBE_TIMEOUT_S, topic=topic, partition=partition)
    except (OSError, CallRejected, ConnectionLost, TimeoutError):
        conns.pop(address, None)
        return False
    return bool(r.result.ok)


async def _settle(future: Any) -> None:
    try:
        await future
    except KolkError:
        pass


async def _partitions(admin: AdminClient) -> list[dict[str, Any]]:
    return [o for o in await admin.list_objects("partition", stale=True) if o["name"].startswith(TOPIC + "-")]


async def _all_in_sync(admin: AdminClient) -> bool:
    parts = await _partitions(admin)
    return len(parts) == PARTITIONS and all(p["status"]["leader"] is not None and len(p["status"]["isr"]) == 3
                                            for p in parts)


def _longest_gap(times: list[float], start: float, end: float) -> float:
    points = [start] + [t for t in times if start <= t <= end] + [end]
    return max(b - a for a, b in zip(points, points[1:]))


def _healthy(cluster: NetnsCluster, name: str) -> bool:
    try:
        return cluster.health(name)[0] == 200
    except OSError:  # not listening yet
        return False


def _restart(cluster: NetnsCluster, name: str) -> tuple[int | None, float]:
    """SIGTERM, wait for the exit, start again, wait for the ready file and /health. The exit
    status and how long the node took to exit after its SIGTERM."""
    t0 = time.monotonic()
    code = cluster.stop(name)
    stopped = time.monotonic() - t0
    cluster.start(name)
    cluster.wait_ready(name)
    wait_for(lambda: _healthy(cluster, name), 60, lambda: f"{name}'s /health to answer 200\n" + cluster.logs())
    return code, stopped


def test_rolling_restart_loses_nothing_and_keeps_leaders(cluster: NetnsCluster) -> None:
    asyncio.run(_roll(cluster))


async def _roll(cluster: NetnsCluster) -> None:
    client = AsyncClient(cluster.admin_addresses, timeout_s=20)
    admin = AdminClient(cluster.admin_addresses, timeout_s=5)
    load = Load(cluster, client)
    tasks: list[asyncio.Task[Any]] = []
    try:
        await client.create_topic(TOPIC, PARTITIONS, 3, {"min_in_sync": "2"})
        await wait_until(lambda: _all_in_sync(admin), FULL_ISR_TIMEOUT_S, "the topic's in-sync sets to be full")
        tasks = [asyncio.ensure_future(c) for c in (load.produce(), load.poll_leaders(), load.probe_metadata_writes())]
        await wait_until(lambda: load.acked_count() >= 200, 60, "the producer to get going")
        leader_admin = (await admin.cluster_status())["leader"]
        sc_leader = cluster.sc_names()[cluster.admin_addresses.index(leader_admin)]
        order = cluster.spu_names() + sorted(cluster.sc_names(), key=lambda n: n == sc_leader)
        restarts = []
        for name in order:
            t0 = time.monotonic()
            code, stopped = await asyncio.to_thread(_restart, cluster, name)
            assert code == 0, f"{name} exited with status {code} after SIGTERM\n" + cluster.logs()
            await wait_until(lambda: _all_in_sync(admin), FULL_ISR_TIMEOUT_S,
                             lambda: f"every in-sync set to be full after restarting {name}\n" + cluster.logs())
            writes_gap = _longest_gap(load.meta_writes, t0, time.monotonic()) if name.startswith("sc") else None
            restarts.append((name, stopped, time.monotonic() - t0, writes_gap))
        acked_before_end = load.acked_count()
        await wait_until(lambda: load.acked_count() >= acked_before_end + 100, 60, "writes to go on after the roll")
        load.stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 120)
        results = await asyncio.gather(*(_outcome(f) for _, f in load.sent))
        acked: dict[int, list[tuple[int, bytes]]] = {p: [] for p in range(PARTITIONS)}
        failed = 0
        for (i, _f), meta in zip(load.sent, results):
            if meta is None:
                failed += 1
            else:
                acked[meta.partition].append((meta.offset, f"v{i}".encode()))
        read: dict[int, list[tuple[int, bytes]]] = {}
        for p in range(PARTITIONS):
            read[p] = [(r.offset, r.value) for r in await read_all(client, TOPIC, partition=p, timeout_s=60)]
        leaderless = longest_leaderless(load.samples)
        worst = max(leaderless.values())
        print(f"\nrolling restart of {len(order)} nodes: {len(load.sent)} records sent, "
              f"{sum(map(len, acked.values()))} acknowledged, {failed} failed, "
              f"{sum(map(len, read.values()))} read back; {len(load.samples)} leader samples")
        for name, stop_s, total_s, gap in restarts:
            extra = f", longest metadata-write stall {gap:.2f} s" if gap is not None else ""
            print(f"  {name}: exited {stop_s:.2f} s after SIGTERM, serving and in sync again after {total_s:.2f} s"
                  f"{extra}")
        print(f"  longest time a partition had no serving leader: {worst:.2f} s "
              f"(per partition: {', '.join(f'{p}={s:.2f}' for p, s in sorted(leaderless.items()))})")
        wall = time.time() - time.monotonic()
        for p, start, end in leaderless_runs(load.samples):
            if end - start >= 0.5:
                print(f"  partition {p}: no serving leader from {_utc(start + wall)} for {end - start:.2f} s")
        assert acked_problems(acked, read) == []
        assert len(leaderless) == PARTITIONS and worst <= LEADERLESS_MAX_S, leaderless
    finally:
        load.stop.set()
        for t in tasks:
            t.cancel()
        await client.close()


def _utc(t: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


async def _outcome(future: Any) -> Any:
    try:
        return await future
    except KolkError:
        return None
