"""The SmartModule worker pool (core/spu/module_pool.py): off the loop, bounded, fair."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from kolk.spu.module_pool import ModulePool, PoolOverloaded


class Gate:
    """A job that blocks its worker thread until released (with a deadline)."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(self, value: object = None) -> object:
        self.started.set()
        assert self.release.wait(10), "the test never released the job"
        return value


async def wait_until(cond, timeout_s: float = 5.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)  # polling interval


def test_jobs_run_off_the_loop_and_the_loop_keeps_running() -> None:
    async def main() -> None:
        pool = ModulePool(workers=1)
        loop_thread = threading.get_ident()
        busy = asyncio.create_task(pool.run("a", lambda: (time.sleep(0.3), threading.get_ident())[1]))
        ticks = 0
        while not busy.done():
            await asyncio.sleep(0.01)  # the loop goes on while the worker is busy
            ticks += 1
        assert busy.result() != loop_thread
        assert ticks >= 10
        pool.shutdown()
    asyncio.run(main())


def test_errors_come_back_to_the_caller() -> None:
    async def main() -> None:
        pool = ModulePool(workers=1)
        with pytest.raises(ZeroDivisionError):
            await pool.run("a", lambda: 1 // 0)
        assert await pool.run("a", lambda: 7) == 7
        pool.shutdown()
    asyncio.run(main())


def test_a_full_queue_is_refused_as_overloaded_naming_the_limit() -> None:
    async def main() -> None:
        pool = ModulePool(workers=1, queue_max=2, per_tenant_queue_max=2)
        gate = Gate()
        first = asyncio.create_task(pool.run("a", gate))
        await wait_until(gate.started.is_set)
        queued = [asyncio.create_task(pool.run(t, lambda: None)) for t in ("b", "c")]
        await wait_until(lambda: pool.queued == 2)
        with pytest.raises(PoolOverloaded, match=r"2 calls wait \(at most 2\)"):
            await pool.run("d", lambda: None)
        gate.release.set()
        await asyncio.gather(first, *queued)
        assert pool.refused == 1 and pool.queued == 0 and pool.running == 0
        pool.shutdown()
    asyncio.run(main())


def test_one_tenant_cannot_fill_the_queue_past_its_share() -> None:
    async def main() -> None:
        pool = ModulePool(workers=1, queue_max=100, per_tenant_queue_max=3)
        gate = Gate()
        first = asyncio.create_task(pool.run("greedy", gate))
        await wait_until(gate.started.is_set)
        mine = [asyncio.create_task(pool.run("greedy", lambda: None)) for _ in range(3)]
        await wait_until(lambda: pool.queued == 3)
        with pytest.raises(PoolOverloaded, match="of greedy wait for a worker"):
            await pool.run("greedy", lambda: None)
        other = asyncio.create_task(pool.run("polite", lambda: "ok"))  # another identity still gets in
        gate.release.set()
        assert await other == "ok"
        await asyncio.gather(first, *mine)
        pool.shutdown()
    asyncio.run(main())


def test_waiting_tenants_take_turns() -> None:
    async def main() -> None:
        pool = ModulePool(workers=1, per_tenant_queue_max=10)
        gate = Gate()
        order: list[str] = []
        first = asyncio.create_task(pool.run("x", gate))
        await wait_until(gate.started.is_set)
        jobs = [asyncio.create_task(pool.run("a", order.append, "a")) for _ in range(4)]
        jobs += [asyncio.create_task(pool.run("b", order.append, "b")) for _ in range(2)]
        await wait_until(lambda: pool.queued == 6)
        gate.release.set()
        await asyncio.gather(first, *jobs)
        assert order[:4] == ["a", "b", "a", "b"], order  # round robin, not first come first served
        pool.shutdown()
    asyncio.run(main())


def test_a_tenant_alone_may_use_every_worker() -> None:
    async def main() -> None:
        pool = ModulePool(workers=3)
        gates = [Gate() for _ in range(3)]
        jobs = [asyncio.create_task(pool.run("alone", g)) for g in gates]
        await wait_until(lambda: all(g.started.is_set() for g in gates))
        assert pool.running == 3 and pool.queued == 0
        for g in gates:
            g.release.set()
        await asyncio.gather(*jobs)
        pool.shutdown()
    asyncio.run(main())


def test_while_others_wait_a_tenant_gets_no_more_than_its_share() -> None:
    async def main() -> None:
        pool = ModulePool(workers=4)
        assert pool.per_tenant_running == 2
        gates = [Gate() for _ in range(6)]
        greedy = [asyncio.create_task(pool.run("greedy", g)) for g in gates]
        await wait_until(lambda: sum(g.started.is_set() for g in gates) == 4)  # alone: all four workers
        other_gate = Gate()
        other = asyncio.create_task(pool.run("other", other_gate))
        await wait_until(lambda: pool.queued == 3)
        started = [g for g in gates if g.started.is_set()]
        started[0].release.set()  # a worker frees: the waiting tenant under its share goes first
        await wait_until(other_gate.started.is_set)
        assert sum(g.started.is_set() for g in gates) == 4
        started[1].release.set()  # greedy holds 2 of 4 now, its share, and others no longer wait:
        await wait_until(lambda: sum(g.started.is_set() for g in gates) == 5)  # it may take the free worker
        for g in [*gates, other_gate]:
            g.release.set()
        await asyncio.gather(*greedy, other)
        pool.shutdown()
    asyncio.run(main())


def test_a_cancelled_waiting_job_never_runs() -> None:
    async def main() -> None:
        pool = ModulePool(workers=1)
        gate = Gate()
        ran: list[int] = []
        first = asyncio.create_task(pool.run("a", gate))
        await wait_until(gate.started.is_set)
        waiting = asyncio.create_task(pool.run("b", ran.append, 1))
        await wait_until(lambda: pool.queued == 1)
        waiting.cancel()
        await wait_until(lambda: pool.queued == 0)
        gate.release.set()
        await first
        assert await pool.run("c", lambda: "after") == "after"
        assert ran == []
        pool.shutdown()
    asyncio.run(main())


def test_workers_run_at_a_lower_priority_than_the_loop() -> None:
    import os

    async def main() -> None:
        pool = ModulePool(workers=1)
        nice = await pool.run("a", lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        assert nice >= os.getpriority(os.PRIO_PROCESS, 0) + 10 or nice == 19
        pool.shutdown()
    asyncio.run(main())


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one worker"):
        ModulePool(workers=1, queue_max=0)


def test_a_result_nobody_takes_is_handed_to_abandon() -> None:
    async def main() -> None:
        pool = ModulePool(workers=1)
        gate = Gate()
        freed: list[object] = []
        job = asyncio.create_task(pool.run("a", gate, "instances", abandon=freed.append))
        await wait_until(gate.started.is_set)
        job.cancel()  # while it runs: its result must still be freed when it comes
        with pytest.raises(asyncio.CancelledError):
            await job
        gate.release.set()
        await wait_until(lambda: freed == ["instances"])
        pool.shutdown()
    asyncio.run(main())
