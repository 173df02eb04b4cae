"""Controlled shutdown end to end (core/spu/shutdown.py, core/sc/leaving.py): one real SC,
three real SPUs on loopback.

The SC's heartbeat timeout is 20 s here: without the ``leaving`` heartbeat an SPU's
leaderships would move only after 20 s, so a hand-over seen in a few seconds is the
controlled shutdown at work, not the timeout.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from dataplane_cluster import DataPlaneCluster, read_text, wait_until  # noqa: E402 (tests/ on sys.path)

HEARTBEAT_TIMEOUT_MS = 20_000
TOPIC = "handover"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    c = DataPlaneCluster(str(tmp_path_factory.mktemp("cs")), spus=3, heartbeat_timeout_ms=HEARTBEAT_TIMEOUT_MS,
                         spu_args=("--heartbeat-interval-ms", "200"))
    try:
        c.start()
        yield c
    finally:
        c.close()


async def _leaders(client, partitions: int) -> dict[int, int | None]:
    out = {}
    for p in range(partitions):
        obj = await client.admin.get_object("partition", f"{TOPIC}-{p}")
        out[p] = obj["status"]["leader"] if obj else None
    return out


def test_sigterm_hands_leaderships_over_before_the_spu_exits(cluster: DataPlaneCluster) -> None:
    """SIGTERM to an SPU leading partitions while an acks=all producer writes: every partition it
    led has another leader (from its in-sync set) before it exits, well inside the heartbeat
    timeout; it exits 0; every acknowledged record is read back once, in order."""

    async def go() -> None:
        client = cluster.client()
        try:
            await client.create_topic(TOPIC, 3, 3, {"min_in_sync": "2"})
            await wait_until(lambda: _all_led(client), 30, "every partition to have a leader")
            leaders = await _leaders(client, 3)
            victim = max(set(leaders.values()), key=lambda s: sum(1 for v in leaders.values() if v == s))
            producer = client.producer(TOPIC, acks="all", partitioner="round_robin", linger_ms=2)
            acked: dict[int, list[bytes]] = {0: [], 1: [], 2: []}
            stop = asyncio.Event()

            async def write() -> None:
                i = 0
                while not stop.is_set():
                    value = f"r{i}".encode()
                    meta = await (await producer.send(value))
                    acked[meta.partition].append(value)
                    i += 1

            writer = asyncio.ensure_future(write())
            await wait_until(lambda: sum(map(len, acked.values())) >= 50, 30, "the producer to get going")
            proc = cluster.spus[victim].proc
            assert proc is not None
            started = time.monotonic()
            os.kill(proc.pid, signal.SIGTERM)
            code = await wait_until(lambda: proc.poll() is not None and (proc.returncode,), 30,
                                    f"SPU {victim} to exit after SIGTERM\n" + cluster.logs())
            took = time.monotonic() - started
            after = await _leaders(client, 3)
            await wait_until(lambda: sum(map(len, acked.values())) >= 100 + 50, 60, "writes to go on")
            stop.set()
            await writer
            await producer.close()
            log = read_text(cluster.spus[victim].log_path)
            assert code == (0,), log
            assert "handed its leaderships over" in log, log
            assert victim not in after.values() and None not in after.values(), (after, log)
            assert took < HEARTBEAT_TIMEOUT_MS / 1000 / 2, f"the hand-over took {took:.1f} s"
            print(f"\ncontrolled shutdown of SPU {victim} (led {list(leaders.values()).count(victim)} of 3): "
                  f"exited after {took * 1000:.0f} ms; leaders {leaders} -> {after}")
            for p in range(3):
                got = [r.value for r in await _read(client, p)]
                assert _subsequence_once(acked[p], got), f"partition {p}: acknowledged records out of order"
        finally:
            await client.close()
    asyncio.run(go())
    cluster.launch_spu(_victim_gone(cluster))


async def _all_led(client) -> bool:
    return None not in (await _leaders(client, 3)).values()


async def _read(client, partition: int):
    from dataplane_cluster import read_all
    return await read_all(client, TOPIC, partition=partition)


def _subsequence_once(acked: list[bytes], got: list[bytes]) -> bool:
    """Every acknowledged value appears exactly once in ``got``, in acknowledgement order (a
    record whose answer was lost may sit between them, also once)."""
    assert len(set(got)) == len(got), "a record read twice"
    pos = {v: i for i, v in enumerate(got)}
    missing = [v for v in acked if v not in pos]
    assert not missing, f"{len(missing)} acknowledged records lost, first {missing[0]!r}"
    idx = [pos[v] for v in acked]
    return idx == sorted(idx)


def _victim_gone(cluster: DataPlaneCluster) -> int:
    return next(i for i, s in cluster.spus.items() if not s.alive)


def test_a_second_sigterm_stops_at_once(cluster: DataPlaneCluster) -> None:
    """With the SC paused the hand-over cannot finish; a second SIGTERM ends the wait at once."""
    spu = next(s for s in cluster.spus.values() if s.alive and os.path.exists(s.ready_file))
    sc = cluster.sc.nodes[1].proc
    assert sc is not None and spu.proc is not None
    before = len(read_text(spu.log_path))  # the log of an earlier run of this SPU id comes first
    os.kill(sc.pid, signal.SIGSTOP)
    try:
        os.kill(spu.pid, signal.SIGTERM)
        asyncio.run(wait_until(lambda: "is stopping: handing its leaderships over" in read_text(spu.log_path)[before:],
                               30, "the SPU to start its hand-over"))
        started = time.monotonic()
        os.kill(spu.pid, signal.SIGTERM)
        asyncio.run(wait_until(lambda: spu.proc.poll() is not None, 30, "the SPU to exit"))
        took = time.monotonic() - started
    finally:
        os.kill(sc.pid, signal.SIGCONT)
    log = read_text(spu.log_path)[before:]
    assert spu.proc.returncode == 0, log
    assert "a second signal: stopping at once" in log, log
    assert "no SC leader answered" not in log, log
    print(f"\nsecond SIGTERM: exited {took * 1000:.0f} ms after it")
