"""Group commit for asyncio servers: one fsync makes every append since the last one durable.

``await group.append(data)`` writes the batches at once (page cache) and returns when an fsync
covers them. Appends made while an fsync is pending or running accumulate and the next fsync
covers them all, so N concurrent producers cost about one fsync per round, not N (DESIGN.md
§4, §10). The number of appends waiting is bounded: past ``waiters_max`` an append waits for
room before it writes.

Where the fsync runs is chosen by how long recent ones took. A fast device (tens of
microseconds, as on this machine's virtual disk) gets the fsync on the event loop itself,
scheduled after the appends already read in the same loop pass: handing 60 µs of work to a
thread costs more than the work, because the thread and the loop then wait for each other's
GIL (up to the 5 ms switch interval when the loop is busy), which was most of the produce
latency at 2,000 requests/s. A slow device (the moving average of fsync time at or above
``inline_fsync_max_s``) gets its fsyncs on a worker thread, so the loop keeps serving while
the disk works; the average is kept in both modes, so the choice follows the device.

A failed fsync, wherever it ran, fails the log (fsync.py): every waiter gets the log's
:class:`LogFailedError`, and so does every later ``append`` or ``wait_durable``, at once. No
waiter is resolved after a failure, not even by a round that succeeded before it was seen.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Callable

INLINE_FSYNC_MAX_S = 0.0005  # fsyncs faster than this on average run on the event loop
FSYNC_EWMA_WEIGHT = 0.2  # weight of the newest fsync in the moving average

from .errors import LogClosedError, TruncatedBeforeDurableError
from .log import AppendInfo, PartitionLog


class GroupCommit:
    def __init__(self, log: PartitionLog, *, waiters_max: int = 4096,
                 inline_fsync_max_s: float = INLINE_FSYNC_MAX_S) -> None:
        if waiters_max < 1:
            raise ValueError("waiters_max must be at least 1")
        if inline_fsync_max_s < 0:
            raise ValueError("inline_fsync_max_s must be >= 0 (0: always on a worker thread)")
        self.inline_fsync_max_s = inline_fsync_max_s
        self.fsync_avg_s = 0.0  # moving average of fsync durations; starts on the loop
        self.log = log
        self._room = asyncio.Semaphore(waiters_max)
        # (offset, log generation at append, future); a truncation bumps the generation, and a
        # waiter from before it fails rather than resolve on someone else's bytes.
        self._waiters: deque[tuple[int, int, asyncio.Future[int]]] = deque()
        self._flusher: asyncio.Task[None] | None = None
        self.fsyncs = 0  # statistics: how many fsync rounds ran
        self.inline_fsyncs = 0  # statistics: how many of them ran on the event loop
        # Told of every round that succeeded: its fsync's seconds and the records it made
        # durable (the SPU's metrics); called on the loop, so it must be quick.
        self.on_fsync: Callable[[float, int], None] | None = None

    async def append(self, data: bytes | bytearray | memoryview, leader_epoch: int = 0) -> AppendInfo:
        """Append as leader and return once the batches are durable."""
        self._check_failed()
        async with self._room:
            info = self.log.append(data, leader_epoch)
            await self.wait_durable(info.next_offset)
            return info

    async def wait_durable(self, offset: int) -> int:
        """Return once every offset below ``offset`` is durable."""
        self._check_failed()
        if self.log.durable_offset >= offset:
            return self.log.durable_offset
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiters.append((offset, self.log.generation, fut))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.ensure_future(self._flush_loop())
        return await fut

    async def _flush_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while self._waiters:
            try:
                before = self.log.durable_offset
                ticket = self.log.begin_sync()
                if self.fsync_avg_s < self.inline_fsync_max_s:
                    self.inline_fsyncs += 1
                    ticket.run()
                else:
                    await loop.run_in_executor(None, ticket.run)
                self.fsync_avg_s += FSYNC_EWMA_WEIGHT * (ticket.elapsed_s - self.fsync_avg_s)
                self.fsyncs += 1
                # Raises the log's failure if this or any other fsync of the log failed.
                durable = self.log.complete_sync(ticket)
            except BaseException as e:  # noqa: BLE001 - every waiter must hear of the failure
                self._fail_all(e if isinstance(e, Exception) else LogClosedError(str(e)))
                if isinstance(e, Exception):
                    return
                raise
            if self.log.closed:
                self._fail_all(LogClosedError(f"log {self.log.name} was closed before the append became durable"))
                return
            if self.on_fsync is not None:
                self.on_fsync(ticket.elapsed_s, max(0, durable - before))
            generation = self.log.generation
            still: deque[tuple[int, int, asyncio.Future[int]]] = deque()
            for offset, gen, fut in self._waiters:
                if fut.done():
                    continue
                if gen != generation:
                    fut.set_exception(TruncatedBeforeDurableError(
                        f"the log was truncated before offset {offset - 1} became durable"))
                elif offset <= durable:
                    fut.set_result(durable)
                else:
                    still.append((offset, gen, fut))
            self._waiters = still

    def _check_failed(self) -> None:
        failure = self.log.failure
        if failure is not None:
            raise failure.with_traceback(None)

    def _fail_all(self, error: Exception) -> None:
        while self._waiters:
            fut = self._waiters.popleft()[2]
            if not fut.done():
                fut.set_exception(error)
