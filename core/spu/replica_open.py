"""Opening (and deleting) replicas' logs off the event loop.

Opening a replica's log runs recovery, creates its directory (an fsync of the logs
directory), reads and writes the RocksDB index and rebuilds the producer table from the
batch headers: a few ms on a quiet disk, 50-100 ms under load. A 1,000-partition topic
opened inside the metadata callback held the SPU's loop for seconds (once ~97 s): no
produce, no fetch, no heartbeat. Here each open runs on a worker thread of a small pool
(:data:`OPENS_AT_ONCE` at a time; file I/O and RocksDB release the GIL), and the loop only
learns the result. Deleting a log (rmtree, an fsync, RocksDB range deletes and a flush:
~28 ms each here, so ~28 s for a deleted 1,000-partition topic) runs the same way; the log
is closed on the loop first, so no read on the loop ever meets a file closed under it.

The ordering the SPU relies on is kept by the caller (``SpuServer``), with this object
saying which names are opening:

* a replica is in ``SpuServer.replicas`` (served, followed, reported) only once open, and
  leaves it (on the loop) before its log is deleted;
* while a name is busy (opening or being deleted), metadata for it (an epoch change, a move
  away, a delete, a new incarnation) only updates the SPU's view; when the work ends, the
  partition's *latest* metadata is applied (which may drop the new replica again, or open
  the partition's new incarnation after the old log is gone), so what arrived meanwhile is
  applied after, in order; one name is never opened and deleted at once;
* an open or a delete that fails (the disk refuses) is logged and leaves no replica, as when
  it ran on the loop: the next metadata change of the partition tries again.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Coroutine, Generic, TypeVar

log = logging.getLogger("kolk.spu")

OPENS_AT_ONCE = 4  # worker threads opening logs; more only queue on the same disk
CLOSE_WAIT_S = 30.0  # how long stopping waits for opens already running on a thread

R = TypeVar("R")


class ReplicaOpener(Generic[R]):
    """Runs ``open_replica(name, incarnation)`` on a worker thread for each :meth:`start`,
    then ``opened(name, replica, error)`` on the loop (exactly one of the two is None); and
    ``delete_log(name)`` for each :meth:`delete`, then ``deleted(name, error)``."""

    def __init__(self, open_replica: Callable[[str, int], R],
                 opened: Callable[[str, R | None, BaseException | None], None],
                 delete_log: Callable[[str], None],
                 deleted: Callable[[str, BaseException | None], None],
                 workers: int = OPENS_AT_ONCE) -> None:
        if workers < 1:
            raise ValueError(f"replica open workers must be at least 1, got {workers}")
        self._open = open_replica
        self._opened = opened
        self._delete = delete_log
        self._deleted = deleted
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="replica-open")
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._when_idle: list[Callable[[], None]] = []
        self._closed = False
        self.opens = 0  # statistics: opens finished (either way)
        self.open_errors = 0

    def busy(self, name: str) -> bool:
        """Whether ``name``'s log is being opened or deleted."""
        return name in self._tasks

    async def wait(self, name: str, timeout_s: float) -> None:
        """Until ``name``'s open or delete (if any) has finished and its metadata was applied,
        or ``timeout_s`` passed; the work itself is never cancelled by a waiter."""
        task = self._tasks.get(name)
        if task is not None:
            await asyncio.wait({task}, timeout=timeout_s)

    def __len__(self) -> int:
        return len(self._tasks)

    def start(self, name: str, incarnation: int) -> None:
        """Open ``name`` (incarnation ``incarnation``) on a worker; never while it is busy."""
        self._begin(name, self._run(name, incarnation))

    def delete(self, name: str) -> None:
        """Delete ``name``'s (closed) log on a worker; never while it is busy."""
        self._begin(name, self._run_delete(name))

    def _begin(self, name: str, work: Coroutine[Any, Any, None]) -> None:
        if self._closed or name in self._tasks:
            work.close()
            raise RuntimeError(f"{name}: the replica opener is closed" if self._closed else f"{name} is busy")
        self._tasks[name] = asyncio.ensure_future(work)

    def when_idle(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (on the loop) once no open or delete is running: now if none is."""
        if self._tasks:
            self._when_idle.append(callback)
        else:
            callback()

    async def _run(self, name: str, incarnation: int) -> None:
        loop = asyncio.get_running_loop()
        replica: R | None = None
        error: BaseException | None = None
        try:
            replica = await loop.run_in_executor(self._executor, self._open, name, incarnation)
        except asyncio.CancelledError:
            self._tasks.pop(name, None)  # stopping: the store closes whatever was opened
            raise
        except Exception as e:  # noqa: BLE001 - handed to the SPU, which logs it
            error = e
            self.open_errors += 1
        self._tasks.pop(name, None)
        self.opens += 1
        try:
            self._opened(name, replica, error)
        except Exception:  # noqa: BLE001 - one partition's failure must not stop the others
            log.exception("%s: applying the metadata after the open failed", name)
        self._maybe_idle()

    async def _run_delete(self, name: str) -> None:
        error: BaseException | None = None
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._delete, name)
        except asyncio.CancelledError:
            self._tasks.pop(name, None)
            raise
        except Exception as e:  # noqa: BLE001 - handed to the SPU, which logs it
            error = e
        self._tasks.pop(name, None)
        try:
            self._deleted(name, error)
        except Exception:  # noqa: BLE001 - one partition's failure must not stop the others
            log.exception("%s: applying the metadata after the log was deleted failed", name)
        self._maybe_idle()

    def _maybe_idle(self) -> None:
        if not self._tasks:
            callbacks, self._when_idle = self._when_idle, []
            for cb in callbacks:
                cb()

    async def close(self) -> None:
        """Stop: opens not started are dropped; those running on a thread are waited for
        (up to :data:`CLOSE_WAIT_S`), so the store is not closed under them."""
        self._closed = True
        tasks = list(self._tasks.values())
        for t in tasks:
            t.cancel()
        self._tasks.clear()
        self._when_idle.clear()
        waiter = asyncio.get_running_loop().run_in_executor(
            None, lambda: self._executor.shutdown(wait=True, cancel_futures=True))
        try:
            await asyncio.wait_for(waiter, CLOSE_WAIT_S)
        except TimeoutError:
            log.error("replica opens still running after %g s; closing the data directory anyway", CLOSE_WAIT_S)
