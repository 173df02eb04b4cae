"""A slow, greedy or failing SmartModule slows only its own stream (issue 18, DESIGN.md §8).

Each test starts a real SC and one SPU, and runs the isolation probe (tests/isolation_probe.py:
a plain producer with ``acks=leader`` and a plain consumer on a topic led by the same SPU, in
their own process) through the hostile phase. After it, every test checks the same promises:

* the longest gap between consecutive produce acknowledgements, and between consecutive
  reads, stayed under ``GAP_BOUND_S`` (the design's goal is 200 ms; the bound is generous for
  loaded CI machines, and the measured values are printed);
* the SC never saw the SPU go away (polled every 100 ms, and its ``changed_ms`` is the one
  from before), and no leader epoch of the plain topic changed;
* the SPU's RSS came back within 10% + ``RSS_SLACK_BYTES`` of its value before the hostile
  streams started, waited for with a deadline.

The baseline is taken after one good SmartModule stream has run, so it includes the wasmtime
runtime (engine, epoch thread, worker threads), which an SPU loads once on first use and
keeps by design: what must come back is every byte the hostile streams took.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import re
import sys
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import hostile_modules as hm  # noqa: E402
from dataplane_cluster import DataPlaneCluster, release_consumer, rss_bytes, run_async, wait_until  # noqa: E402
from isolation_probe import IsolationProbe, ProbeReport  # noqa: E402
from kolk.client.client import AsyncClient  # noqa: E402
from kolk.client.consumer import Offset  # noqa: E402
from kolk.protocol.errors import KolkError  # noqa: E402

MIB = 1 << 20
GAP_GOAL_S = 0.2    # issue 18: acknowledgements and reads never stop for more than 200 ms
GAP_BOUND_S = 1.0   # what the tests assert: the goal with room for a loaded CI machine
# RSS after the hostile phase <= 110% of before + this. Why 16 MiB: the allocator keeps freed
# pages of the pool's threads' arenas resident, and the compile cache keeps the hostile
# modules' code by design (tens of KiB each); the leaks of issue 18 are 64 MiB to GiBs.
RSS_SLACK_BYTES = 16 * MIB
RSS_RETURN_TIMEOUT_S = 30.0
STREAM_TIMEOUT_S = 60.0
PLAIN = "plain"


@pytest.fixture
def cluster_factory(tmp_path: Any) -> Any:
    """``cluster_factory(*spu_args)``: one SC and one SPU started with ``spu_args``; stopped
    by pid at the end of the test."""
    made: list[DataPlaneCluster] = []

    def make(*spu_args: str) -> DataPlaneCluster:
        c = DataPlaneCluster(str(tmp_path / f"c{len(made)}"), spus=1, spu_args=spu_args)
        made.append(c)
        return c.start()
    try:
        yield make
    finally:
        for c in made:
            c.close()


# --- helpers ---------------------------------------------------------------------------------


async def store(client: AsyncClient, name: str, wasm: bytes) -> str:
    """Store ``wasm`` as ``name@1`` (a raw putObject, as tests/test_smartmodule_e2e.py does)."""
    spec = {"wasm": base64.b64encode(wasm).decode(), "sha256": hashlib.sha256(wasm).hexdigest(), "size": len(wasm)}
    await client.admin.put_object("smartmodule", f"{name}@1", spec, expected_version=-1)
    return f"{name}@1"


async def fill(client: AsyncClient, topic: str, batches: int, records_per_batch: int = 1,
               value_bytes: int = 16) -> int:
    """Create ``topic`` and write ``batches`` batches of ``records_per_batch`` records each
    (one produce request per batch, each awaited, so each is its own batch in the log)."""
    await client.create_topic(topic, 1, 1)
    producer = client.producer(topic, acks="leader", linger_ms=0)
    for b in range(batches):
        values = [b"%d-%d-" % (b, i) + b"x" * value_bytes for i in range(records_per_batch)]
        await (await producer.send_all(values, partition=0))
    await producer.flush()
    return batches * records_per_batch


async def drain(client: AsyncClient, topic: str, chain: list, timeout_s: float = STREAM_TIMEOUT_S) -> list:
    """Every record of ``topic`` through ``chain``, until the end of the topic (the stream's
    error is raised, as a consumer would see it)."""
    consumer = client.consumer(topic, start=Offset.beginning(), smartmodules=chain, stop_at_end=True)

    async def collect() -> list:
        return [r async for r in consumer]
    try:
        return await asyncio.wait_for(collect(), timeout_s)
    finally:
        await release_consumer(consumer)


async def outcome(aw: Awaitable[Any]) -> Any:
    """The result, or the KolkError it raised (to check many streams at once)."""
    try:
        return await aw
    except KolkError as e:
        return e


@dataclass
class Phase:
    report: ProbeReport
    rss_before: int
    rss_after: int
    took_s: float


async def _cluster_view(client: AsyncClient) -> tuple[dict, dict]:
    spu = await client.admin.get_object("spu", "1")
    parts = {p["name"]: p["status"].get("epoch") for p in await client.admin.list_objects("partition")
             if p["spec"].get("topic") == PLAIN}
    return spu["status"], parts


async def hostile_phase(cluster: DataPlaneCluster, hostile: Callable[[AsyncClient], Awaitable[Any]]) -> Phase:
    """Run ``hostile(client)`` with the probe running beside it; check every promise of the
    module docstring and return what was measured."""
    client = cluster.client(timeout_s=STREAM_TIMEOUT_S)
    try:
        await client.create_topic(PLAIN, 1, 1)
        warm = await store(client, "warm-good", hm.good_filter())
        await fill(client, "warm", 3)
        assert len(await drain(client, "warm", [warm])) == 3  # the runtime is loaded: part of the baseline
        spu_before, epochs_before = await _cluster_view(client)
        pid = cluster.spus[1].pid
        probe = IsolationProbe(cluster.sc_addresses, PLAIN)
        try:
            await probe.start()
            rss_before = rss_bytes(pid)
            t0 = time.monotonic()
            await hostile(client)
            took = time.monotonic() - t0
            report = await probe.stop()
        finally:
            await probe.kill()
        bound = int(rss_before * 1.10) + RSS_SLACK_BYTES
        rss_after = [rss_bytes(pid)]

        def rss_back() -> bool:
            rss_after[0] = rss_bytes(pid)
            return rss_after[0] <= bound
        try:
            await wait_until(rss_back, RSS_RETURN_TIMEOUT_S, "the SPU's RSS to come back")
        except AssertionError:
            pass  # reported below, with everything else that went wrong
        phase = Phase(report, rss_before, rss_after[0], took)
        print(f"\nisolation: hostile phase {took:.1f} s; {report.summary()}; SPU RSS {rss_before / MIB:.0f} MiB "
              f"before, {rss_after[0] / MIB:.0f} MiB after (bound {bound / MIB:.0f} MiB)")
        assert cluster.spus[1].alive, "the SPU exited\n" + cluster.logs()
        spu_after, epochs_after = await _cluster_view(client)
        problems = [text for bad, text in [
            (bool(report.spu_down_seen), f"the SC saw the SPU down {len(report.spu_down_seen)} times: "
                                         f"{report.spu_down_seen[:2]}"),
            (spu_after != spu_before, f"the SPU's status changed: {spu_before} -> {spu_after}"),
            (epochs_after != epochs_before or report.epochs != list(epochs_before.values()),
             f"a leader epoch of {PLAIN} changed: {epochs_before} -> {epochs_after} (seen {report.epochs})"),
            (report.error_count > 0, f"the plain producer or consumer failed: {report.errors[:3]}"),
            (report.max_ack_gap_s > GAP_BOUND_S, f"produce acknowledgements stopped for "
                                                 f"{report.max_ack_gap_s:.2f} s (bound {GAP_BOUND_S} s)"),
            (report.max_read_gap_s > GAP_BOUND_S, f"reads stopped for {report.max_read_gap_s:.2f} s "
                                                  f"(bound {GAP_BOUND_S} s)"),
            (rss_after[0] > bound, f"the SPU's RSS did not come back within {RSS_RETURN_TIMEOUT_S} s: "
                                   f"{rss_before / MIB:.0f} MiB before, {rss_after[0] / MIB:.0f} MiB after"),
        ] if bad]
        assert not problems, "; ".join(problems)
        return phase
    finally:
        await client.close()


def refused_for(result: Any, *reasons: str) -> str:
    """``result`` is a stream's SmartModule error naming one of ``reasons``; its message."""
    assert isinstance(result, KolkError), f"the stream was not ended by its module: {result!r}"
    assert result.code == "smartModule", (result.code, str(result))
    assert any(r in str(result) for r in reasons), (reasons, str(result))
    return str(result)


# --- time ------------------------------------------------------------------------------------


def test_slow_filters_slow_only_their_own_streams(cluster_factory: Any) -> None:
    """Four streams through a legal filter taking 0.4 s a batch (six batches each; less on a
    machine where 0.4 s of it needs more than the default fuel: a CI machine ran a step in
    0.27 us, not 0.4), and one through an endless loop (ended by its fuel): each slow stream
    gets all its records, the loop's stream ends with fuelExhausted, and nobody else waits."""
    cluster = cluster_factory()
    slow = hm.slow_filter_taking(min(0.4, hm.legal_seconds()))

    async def hostile(client: AsyncClient) -> None:
        name = await store(client, "slow", slow)
        loop = await store(client, "endless", hm.fuel_exhaustion_filter())
        n = await fill(client, "slow-in", 6)
        results = await asyncio.gather(*[outcome(drain(client, "slow-in", [name])) for _ in range(4)],
                                       outcome(drain(client, "slow-in", [loop])))
        for got in results[:4]:
            assert not isinstance(got, Exception), got
            assert [r.offset for r in got] == list(range(n))
        refused_for(results[4], "fuelExhausted")
    run_async(lambda: hostile_phase(cluster, hostile))


def test_wall_clock_filters_end_their_streams(cluster_factory: Any) -> None:
    """With fuel practically unlimited (--smartmodule-fuel 100000000000), three streams through
    a filter that computes forever are each ended by the 2 s wall clock (``timeout``)."""
    cluster = cluster_factory("--smartmodule-fuel", "100000000000")

    async def hostile(client: AsyncClient) -> None:
        name = await store(client, "forever", hm.wall_clock_filter())
        await fill(client, "clock-in", 2)
        results = await asyncio.gather(*[outcome(drain(client, "clock-in", [name])) for _ in range(3)])
        for r in results:
            refused_for(r, "timeout", "wall-clock")
    run_async(lambda: hostile_phase(cluster, hostile))


def test_memory_grow_spinners_in_parallel(cluster_factory: Any) -> None:
    """Six streams at once through a filter that grows its memory to the 64 MiB cap, touches
    it all, then spins until its fuel runs out: each ends with fuelExhausted; their memory is
    given back."""
    cluster = cluster_factory()

    async def hostile(client: AsyncClient) -> None:
        name = await store(client, "spinner", hm.memory_grow_spinner())
        await fill(client, "spin-in", 2)
        for r in await asyncio.gather(*[outcome(drain(client, "spin-in", [name])) for _ in range(6)]):
            refused_for(r, "fuelExhausted")
    run_async(lambda: hostile_phase(cluster, hostile))


def test_failed_streams_leave_no_memory_behind(cluster_factory: Any) -> None:
    """25 streams, five at a time, through a filter that fills 64 MiB and traps: each ends
    with its trap, and the SPU's RSS comes back (issue 18: 1.6 GiB stayed behind)."""
    cluster = cluster_factory()

    async def hostile(client: AsyncClient) -> None:
        name = await store(client, "trapper", hm.trapping_filter())
        await fill(client, "trap-in", 1)
        for _ in range(5):
            for r in await asyncio.gather(*[outcome(drain(client, "trap-in", [name])) for _ in range(5)]):
                refused_for(r, "trap", "unreachable")
    run_async(lambda: hostile_phase(cluster, hostile))


def test_filter_emptying_every_read_yields_and_ends(cluster_factory: Any) -> None:
    """A filter that keeps nothing, over ~16 MiB of records: the consumer through it reaches
    the end of the topic with no records, and nobody else waits while it reads."""
    cluster = cluster_factory()

    async def hostile(client: AsyncClient) -> None:
        name = await store(client, "dropper", hm.drop_everything_filter())
        await fill(client, "drop-in", 64, records_per_batch=2000, value_bytes=100)  # 64 batches of ~256 KiB
        got = await asyncio.gather(*[drain(client, "drop-in", [name]) for _ in range(2)])
        assert got == [[], []]
    run_async(lambda: hostile_phase(cluster, hostile))


# --- memory ----------------------------------------------------------------------------------

# A refusal names the limit it met: the chain cap or the SPU's budget, with its size.
NAMES_A_LIMIT = re.compile(r"(budget|cap|a chain may use)\b.*\b\d+ MiB|\b\d+ MiB\b.*(budget|cap|a chain may use)",
                           re.IGNORECASE)


def test_chain_of_sixteen_big_inits_is_refused(cluster_factory: Any) -> None:
    """A 16-stage chain of a module whose init touches 61 MiB (~1 GiB a stream) is refused
    when the stream opens, by the per-chain cap or the SPU's budget, with a message naming the
    limit; three such streams at once take nothing from anyone. The same module alone runs."""
    cluster = cluster_factory()

    async def hostile(client: AsyncClient) -> None:
        name = await store(client, "big-init", hm.big_init_filter(61))
        n = await fill(client, "big-in", 2)
        chain = [(name, {"touch": "61MiB"})] * 16
        for r in await asyncio.gather(*[outcome(drain(client, "big-in", chain)) for _ in range(3)]):
            assert isinstance(r, KolkError), f"a 16-stage chain of 61 MiB inits ran: {r!r}"
            assert r.code in ("smartModule", "overloaded"), (r.code, str(r))
            assert NAMES_A_LIMIT.search(str(r)), f"the refusal does not name the limit: {r}"
        assert len(await drain(client, "big-in", [(name, {"touch": "61MiB"})])) == n
    run_async(lambda: hostile_phase(cluster, hostile))


BUDGET_MIB = 256


def test_memory_budget_refuses_streams_past_it(cluster_factory: Any) -> None:
    """SPU started with --smartmodule-memory 256: streams of a 61 MiB module are opened and
    kept open one by one; those under the budget run, the first past it is refused naming the
    budget, and once the open ones close a new stream runs again (their memory was given
    back)."""
    cluster = cluster_factory("--smartmodule-memory", str(BUDGET_MIB))

    async def hostile(client: AsyncClient) -> None:
        name = await store(client, "big-init", hm.big_init_filter(61))
        await fill(client, "budget-in", 2)
        chain = [(name, {"touch": "61MiB"})]
        held, refusal = [], None
        try:
            for _ in range(BUDGET_MIB // 61 + 2):
                consumer = client.consumer("budget-in", start=Offset.beginning(), smartmodules=chain)
                held.append(consumer)
                try:
                    first = await asyncio.wait_for(consumer.poll(STREAM_TIMEOUT_S), STREAM_TIMEOUT_S)
                except KolkError as e:
                    refusal = e
                    break
                assert first, "a stream under the budget gave no records"
            assert refusal is not None, f"{len(held)} streams of 61 MiB each all ran under a {BUDGET_MIB} MiB budget"
            assert 2 <= len(held) - 1 <= BUDGET_MIB // 61, f"refused after {len(held) - 1} streams: {refusal}"
            # Refused when it opens (overloaded), or started with less memory than its init
            # needs (smartModule, initFailed): either way the message names the budget.
            assert refusal.code in ("overloaded", "smartModule"), (refusal.code, str(refusal))
            assert "budget" in str(refusal) and f"{BUDGET_MIB} MiB" in str(refusal), \
                f"the refusal does not name the --smartmodule-memory budget of {BUDGET_MIB} MiB: {refusal}"
        finally:
            for consumer in held:
                await release_consumer(consumer)

        async def runs_again() -> bool:
            return len(await drain(client, "budget-in", chain)) == 2
        await wait_until(runs_again, RSS_RETURN_TIMEOUT_S, "a stream to run again once the others closed")
    run_async(lambda: hostile_phase(cluster, hostile))


# --- the pool --------------------------------------------------------------------------------

WORKERS = 1
# One worker running and 64 calls of one identity waiting (docs/smartmodule-abi.md
# "Isolation"), and then some: at least the last 15 have to be refused.
SLOW_STREAMS = 80


def test_more_slow_streams_than_the_pool_takes_are_told_overloaded(cluster_factory: Any) -> None:
    """SPU started with --smartmodule-workers 1; 80 streams at once through a filter taking
    0.1 s a batch (declaring a 256 KiB memory, so the memory budget is not what refuses
    them; compiled by a first stream, so the compile queue is not either): more than the pool
    and its queue take, so the extra streams end with code ``overloaded`` naming the workers,
    the others get every record, and the plain producer and consumer go on."""
    cluster = cluster_factory("--smartmodule-workers", str(WORKERS))
    slow = hm.slow_filter_taking(0.1, max_pages=4)

    async def hostile(client: AsyncClient) -> None:
        name = await store(client, "slow", slow)
        n = await fill(client, "pool-in", 1)
        assert len(await drain(client, "pool-in", [name])) == n  # compiled once, before the crowd
        # Two connections: one carries at most 64 streams (docs/security.md "Fair use").
        clients = [cluster.client(timeout_s=STREAM_TIMEOUT_S) for _ in range(2)]
        try:
            results = await asyncio.gather(*[outcome(drain(clients[i % 2], "pool-in", [name], timeout_s=180))
                                             for i in range(SLOW_STREAMS)])
        finally:
            for c in clients:
                await c.close()
        refused = [r for r in results if isinstance(r, KolkError)]
        print(f"\npool: {len(refused)} of {SLOW_STREAMS} streams refused: {refused[:1]}")
        assert refused, f"all {SLOW_STREAMS} slow streams were taken by a pool of {WORKERS} worker"
        for e in refused:
            assert e.code == "overloaded" and "worker" in str(e), (e.code, str(e))
        for got in results:
            if not isinstance(got, KolkError):
                assert [r.offset for r in got] == list(range(n))
    run_async(lambda: hostile_phase(cluster, hostile))
