"""An SPU opens the replicas of a new topic off its event loop (core/spu/replica_open.py).

A real SC and one real SPU on loopback. A probe asks the SPU for the offsets of an existing
partition every 10 ms while a 1,000-partition topic is created; the worst gap between two
answers is how long the SPU's loop stalled. Opening 1,000 logs (directory fsyncs, RocksDB)
on the loop stalled it for seconds (about 97 s once, under load); off the loop, 4 at a time,
the gap stays near the probe period. The bound asserted is loose for a loaded CI machine,
and the measured number is printed.

Also: a topic deleted while its replicas are still opening leaves no log behind, and one
created again under the same name (a new incarnation) serves from empty logs; the 1,000
deletes (on worker threads too) do not stall the loop. Then the opener alone: what is busy,
failed opens and deletes handed back, stopping.
"""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any

import pytest

from dataplane_cluster import DataPlaneCluster, raw_spu, run_async, wait_until
from kolk.segments.records import build_batch
from kolk.spu.replica_open import ReplicaOpener

PARTITIONS = 1000
PROBE_PERIOD_S = 0.01
WORST_GAP_MAX_S = 0.5  # today's on-loop opening: seconds; off the loop: tens of ms
OPEN_TIMEOUT_S = 120.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: Any) -> Any:
    c = DataPlaneCluster(str(tmp_path_factory.mktemp("replica-open")), spus=1)
    try:
        c.start()

        async def seed() -> None:
            async with c.client() as client:
                await client.create_topic("probe", partitions=1)
                await wait_until(lambda: client.offsets("probe", 0), 30, "probe-0 served")
        run_async(seed)
        yield c
    finally:
        c.close()


def _logs_of(c: DataPlaneCluster, topic: str) -> list[str]:
    logs_dir = os.path.join(c.spus[1].data_dir, "logs")
    return [n for n in os.listdir(logs_dir) if n.rsplit("-", 1)[0] == topic]


async def _offsets(conn: Any, topic: str, partition: int) -> Any:
    r = await conn.call("offsets", 120, topic=topic, partition=partition)
    return r


async def _all_served(conn: Any, topic: str, partitions: int) -> bool:
    """True once the SPU answers offsets for every partition of ``topic`` (each replica open)."""
    for p in range(partitions):
        r = await _offsets(conn, topic, p)
        if not r.result.ok:
            return False
    return True


class Probe:
    """Asks the SPU for probe-0's offsets every PROBE_PERIOD_S; records the gaps between
    answers (how long the SPU's loop kept it waiting) and any refusal."""

    def __init__(self, c: DataPlaneCluster) -> None:
        self.c = c
        self.gaps: list[float] = []
        self.errors: list[str] = []
        self._done = asyncio.Event()

    async def __aenter__(self) -> "Probe":
        self._conn = await raw_spu(self.c.spus[1].address)
        self._task = asyncio.ensure_future(self._run())
        await wait_until(lambda: len(self.gaps) >= 10, 10, "the probe to get answers")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._done.set()
        try:
            await self._task
        finally:
            self._conn.close()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        last = loop.time()
        while not self._done.is_set():
            r = await _offsets(self._conn, "probe", 0)
            if not r.result.ok:  # e.g. offline: the SC took a stalled SPU for dead
                self.errors.append(r.result.error.message)
            now = loop.time()
            self.gaps.append(now - last)
            last = now
            await asyncio.sleep(PROBE_PERIOD_S)  # the probe's period, not synchronisation

    def check(self, what: str) -> None:
        worst = max(self.gaps)
        print(f"\n{what}: worst probe gap {worst * 1000:.1f} ms over {len(self.gaps)} probes; "
              f"{len(self.errors)} refused")
        assert not self.errors, f"{len(self.errors)} probes of probe-0 refused, the first: {self.errors[0]}"
        assert worst < WORST_GAP_MAX_S, f"the SPU's loop stalled {worst:.3f} s: {what}"


def test_worst_loop_gap_while_1000_replicas_open(cluster: DataPlaneCluster) -> None:
    async def go() -> None:
        loop = asyncio.get_running_loop()
        conn = await raw_spu(cluster.spus[1].address)
        try:
            async with Probe(cluster) as probe, cluster.client() as client:
                started = loop.time()
                await client.create_topic("wide", partitions=PARTITIONS)
                await wait_until(lambda: _all_served(conn, "wide", PARTITIONS), OPEN_TIMEOUT_S,
                                 lambda: f"every partition of wide served\n{cluster.logs()}", interval_s=0.1)
                opened_s = loop.time() - started
        finally:
            conn.close()
        probe.check(f"{PARTITIONS} replicas opened in {opened_s:.2f} s")

    run_async(go)


def test_topic_deleted_and_created_again_while_its_replicas_open(cluster: DataPlaneCluster) -> None:
    """The delete, then the new incarnation, arrive while the first one's 1,000 replicas are
    still opening: each is applied after its open, in order, and only the new logs remain;
    the 1,000 deletes do not stall the loop either."""
    async def go() -> None:
        conn = await raw_spu(cluster.spus[1].address)
        try:
            async with Probe(cluster) as probe, cluster.client() as client:
                await client.create_topic("churn", partitions=PARTITIONS)
                await client.delete_topic("churn")
                await wait_until(lambda: _create_again(client), 30, "churn created again")
                await wait_until(lambda: _all_served(conn, "churn", 3), OPEN_TIMEOUT_S,
                                 lambda: f"churn-0..2 served\n{cluster.logs()}", interval_s=0.1)
                wanted = {"churn-0", "churn-1", "churn-2"}
                await wait_until(lambda: set(_logs_of(cluster, "churn")) == wanted, OPEN_TIMEOUT_S,
                                 lambda: f"only {sorted(wanted)} on disk, found {len(_logs_of(cluster, 'churn'))}",
                                 interval_s=0.1)
                r = await _offsets(conn, "churn", 3)
                assert not r.result.ok and r.result.error.code == "notFound", r.result
                for p in range(3):
                    r = await _offsets(conn, "churn", p)
                    assert (r.logStartOffset, r.logEndOffset) == (0, 0), r
        finally:
            conn.close()
        probe.check(f"{PARTITIONS} replicas opened, deleted, and 3 of a new incarnation opened")
        assert "applying the metadata failed" not in cluster.spu_log(), cluster.spu_log()[-4000:]
        assert "opening the log failed" not in cluster.spu_log(), cluster.spu_log()[-4000:]
        assert "deleting the log failed" not in cluster.spu_log(), cluster.spu_log()[-4000:]

    run_async(go)


async def _create_again(client: Any) -> bool:
    """Create churn (3 partitions) once the SC has finished deleting the old one."""
    await client.create_topic("churn", partitions=3)
    return True


# -------------------------------------------------------------------- the opener alone


class _Recorder:
    """Open and delete functions for a ReplicaOpener, with what it reported back."""

    def __init__(self, fail: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        self.fail = fail
        self.events: list[tuple[str, str, Any]] = []
        self.gate = threading.Event()
        self.started = 0  # opens that reached a worker thread

    def open(self, name: str, incarnation: int) -> str:
        self.started += 1
        self.gate.wait(10)
        if name in self.fail:
            raise OSError(f"disk refused {name}")
        return f"{name}@{incarnation}"

    def delete(self, name: str) -> None:
        self.gate.wait(10)
        if name in self.fail:
            raise OSError(f"disk refused deleting {name}")

    def opened(self, name: str, replica: Any, error: BaseException | None) -> None:
        self.events.append(("opened", name, replica if error is None else str(error)))

    def deleted(self, name: str, error: BaseException | None) -> None:
        self.events.append(("deleted", name, None if error is None else str(error)))

    def opener(self) -> ReplicaOpener[str]:
        return ReplicaOpener(self.open, self.opened, self.delete, self.deleted)


def test_a_produce_right_after_create_waits_for_the_log_to_open(cluster: DataPlaneCluster) -> None:
    """A producer without retries that writes to every partition the moment create_topic
    returns is served, not answered "being opened": the SPU holds a request for a partition
    whose log is opening (up to OPEN_WAIT_S) instead of refusing it."""
    async def body() -> None:
        async with cluster.client() as client:
            await client.create_topic("eager", partitions=64)
            for p in range(64):
                await client.produce("eager", p, build_batch([(None, b"x")]), retries=0)
            assert [(await client.offsets("eager", p))[2] for p in range(64)] == [1] * 64
    run_async(body)


def test_opener_reports_each_open_and_delete_and_says_what_is_busy() -> None:
    async def go() -> None:
        rec = _Recorder()
        opener = rec.opener()
        ready: list[bool] = []
        opener.start("t-0", 3)
        opener.delete("t-1")
        assert opener.busy("t-0") and opener.busy("t-1") and not opener.busy("t-2") and len(opener) == 2
        opener.when_idle(lambda: ready.append(True))
        with pytest.raises(RuntimeError, match="t-0 is busy"):
            opener.start("t-0", 3)
        with pytest.raises(RuntimeError, match="t-1 is busy"):
            opener.start("t-1", 1)
        assert rec.events == [] and ready == []  # the workers wait on the gate: nothing reported yet
        rec.gate.set()
        await wait_until(lambda: len(rec.events) == 2, 10, "both reported")
        assert sorted(rec.events) == [("deleted", "t-1", None), ("opened", "t-0", "t-0@3")]
        assert ready == [True] and not opener.busy("t-0") and len(opener) == 0
        opener.when_idle(lambda: ready.append(True))  # idle already: called at once
        assert ready == [True, True]
        await opener.close()
        with pytest.raises(RuntimeError, match="closed"):
            opener.start("t-2", 1)

    run_async(go)


def test_opener_hands_a_failed_open_or_delete_back_with_its_error() -> None:
    async def go() -> None:
        rec = _Recorder(fail={"bad-0"})
        rec.gate.set()
        opener = rec.opener()
        opener.start("bad-0", 1)
        await wait_until(lambda: rec.events, 10, "the open reported")
        opener.delete("bad-0")
        await wait_until(lambda: len(rec.events) == 2, 10, "the delete reported")
        assert rec.events == [("opened", "bad-0", "disk refused bad-0"), ("deleted", "bad-0", "disk refused deleting bad-0")]
        assert opener.open_errors == 1 and not opener.busy("bad-0")
        await opener.close()

    run_async(go)


def test_opener_close_drops_queued_work_and_waits_for_running_work() -> None:
    async def go() -> None:
        rec = _Recorder()
        opener = rec.opener()
        for p in range(12):  # 4 run (blocked on the gate), 8 queue
            opener.start(f"q-{p}", 1)
        await wait_until(lambda: rec.started == 4, 10, "4 opens running on the workers")
        loop = asyncio.get_running_loop()
        loop.call_later(0.2, rec.gate.set)  # the running opens end while close waits for them
        await opener.close()
        assert rec.gate.is_set() and len(opener) == 0
        assert rec.started == 4  # the queued 8 never ran
        assert rec.events == []  # cancelled: nothing is applied after stopping

    run_async(go)


def test_opener_refuses_no_workers() -> None:
    rec = _Recorder()
    with pytest.raises(ValueError, match="at least 1, got 0"):
        ReplicaOpener(rec.open, rec.opened, rec.delete, rec.deleted, workers=0)
