"""Where SmartModule code runs on an SPU: a bounded pool of worker threads (DESIGN.md §8, §11).

wasmtime releases the GIL while wasm runs (its calls go through ctypes), so a module spinning
on a worker thread leaves the event loop free; the threads run at a lower priority (nice 10)
so that, on a busy machine, the loop thread is scheduled first. docs/smartmodule-abi.md
"Isolation" has the measurements behind choosing threads over processes.

Jobs wait in one bounded queue per tenant (the caller's identity) and are started round robin
across tenants. While other tenants wait, a tenant with ``per_tenant_running`` jobs running
(half the workers) gets no more: one tenant's slow chains cannot hold more than its share when
others want theirs, yet a tenant alone may use every worker (the pool is work-conserving). A job that cannot be
queued is refused with :class:`PoolOverloaded`. A cancelled caller's queued job is dropped; a
running one finishes on its thread (its chain frees itself when closed, smartmodule/chain.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

log = logging.getLogger("kolk.spu")

WORKER_NICE = 10


def default_workers() -> int:
    return max(2, os.cpu_count() or 1)


class PoolOverloaded(Exception):
    """The pool's queue (or the tenant's share of it) is full; the message says which."""


def _lower_priority() -> None:
    try:  # Linux: a thread id is a valid PRIO_PROCESS target and sets only that thread's nice value
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WORKER_NICE)
    except (OSError, AttributeError):
        pass


@dataclass
class _Job:
    tenant: str
    fn: Callable[..., Any]
    args: tuple
    future: asyncio.Future = field(repr=False)


class ModulePool:
    def __init__(self, workers: int | None = None, queue_max: int = 256, per_tenant_queue_max: int = 64,
                 per_tenant_running: int | None = None) -> None:
        self.workers = workers or default_workers()
        if self.workers < 1 or queue_max < 1 or per_tenant_queue_max < 1:
            raise ValueError("a SmartModule pool needs at least one worker and room for one job")
        self.queue_max = queue_max
        self.per_tenant_queue_max = per_tenant_queue_max
        self.per_tenant_running = per_tenant_running or max(1, (self.workers + 1) // 2)
        self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="kolk-smartmodule",
                                            initializer=_lower_priority)
        self._running: dict[str, int] = {}
        self._waiting: OrderedDict[str, deque[_Job]] = OrderedDict()
        self.queued = 0
        self.jobs = 0
        self.refused = 0

    @property
    def running(self) -> int:
        return sum(self._running.values())

    async def run(self, tenant: str, fn: Callable[..., Any], *args: Any,
                  abandon: Callable[[Any], None] | None = None) -> Any:
        """``fn(*args)`` on a worker thread, when the tenant's turn comes; its result. When the
        caller is cancelled while the job runs, ``abandon`` gets the result once it comes (to
        free what nobody will take)."""
        loop = asyncio.get_running_loop()
        job = _Job(tenant, fn, args, loop.create_future())
        if self.running < self.workers and not self._waiting:
            self._start(job)  # nobody waits: whoever asks may use a free worker
        else:
            queue = self._waiting.get(tenant)
            if self.queued >= self.queue_max:
                self.refused += 1
                raise PoolOverloaded(f"the SPU's SmartModule workers are busy: {self.queued} calls wait "
                                     f"(at most {self.queue_max}); retry later")
            if queue is not None and len(queue) >= self.per_tenant_queue_max:
                self.refused += 1
                raise PoolOverloaded(f"{len(queue)} SmartModule calls of {tenant} wait for a worker (at most "
                                     f"{self.per_tenant_queue_max} per identity); retry later")
            self._waiting.setdefault(tenant, deque()).append(job)
            self.queued += 1
            self._dispatch()
        try:
            return await asyncio.shield(job.future)
        except asyncio.CancelledError:
            if abandon is not None:
                fut = job.future
                if fut.done():  # finished in the very turn the caller was cancelled: its result is ours to free
                    if not fut.cancelled() and fut.exception() is None:
                        abandon(fut.result())
                    raise
                if job not in self._waiting.get(tenant, ()):  # running: free its result when it comes
                    fut.add_done_callback(lambda f: f.cancelled() or f.exception() or abandon(f.result()))
                    raise
            self._drop(job)
            raise

    def _may_start(self, tenant: str) -> bool:
        return self.running < self.workers and self._running.get(tenant, 0) < self.per_tenant_running

    def _start(self, job: _Job) -> None:
        self._running[job.tenant] = self._running.get(job.tenant, 0) + 1
        self.jobs += 1
        inner = asyncio.get_running_loop().run_in_executor(self._executor, job.fn, *job.args)
        inner.add_done_callback(lambda f, job=job: self._finished(job, f))

    def _finished(self, job: _Job, inner: asyncio.Future) -> None:
        n = self._running[job.tenant] - 1
        if n:
            self._running[job.tenant] = n
        else:
            del self._running[job.tenant]
        if not job.future.done():
            if inner.cancelled():
                job.future.cancel()
            elif inner.exception() is not None:
                job.future.set_exception(inner.exception())  # type: ignore[arg-type]
            else:
                job.future.set_result(inner.result())
        elif not inner.cancelled():
            inner.exception()  # retrieved: a dropped caller's error is not logged as unhandled
        self._dispatch()

    def _dispatch(self) -> None:
        """Start waiting jobs round robin across tenants while workers are free: first those
        of tenants under their share, then (work-conserving) anyone's."""
        for within_share in (True, False):
            self._dispatch_round(within_share)

    def _dispatch_round(self, within_share: bool) -> None:
        progress = True
        while progress and self._waiting and self.running < self.workers:
            progress = False
            for tenant in list(self._waiting):
                if self.running >= self.workers:
                    return
                if within_share and not self._may_start(tenant):
                    continue
                queue = self._waiting.pop(tenant)
                job = queue.popleft()
                self.queued -= 1
                if queue:
                    self._waiting[tenant] = queue  # to the back of the round
                self._start(job)
                progress = True

    def _drop(self, job: _Job) -> None:
        queue = self._waiting.get(job.tenant)
        if queue is not None and job in queue:
            queue.remove(job)
            self.queued -= 1
            if not queue:
                del self._waiting[job.tenant]
        if not job.future.done():
            job.future.cancel()

    def shutdown(self) -> None:
        for queue in self._waiting.values():
            for job in queue:
                job.future.cancel()
        self._waiting.clear()
        self.queued = 0
        self._executor.shutdown(wait=False, cancel_futures=True)
