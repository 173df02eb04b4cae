"""What an SPU does when its disk fails under it (DESIGN.md §5, docs/replication.md).

A replica whose log failed (an fsync or write error, a segment file deleted under it, a full
disk) is **fenced** at once: it answers nothing as leader, acknowledges nothing, and stops
following. The SPU logs one line and tells the SC (``reportReplicaLoss``), which takes the
replica out of the in-sync set and out of leadership at a new epoch, so an intact in-sync
replica leads — unless it is the last in-sync replica: a disk fault never empties the set
(acknowledged records were fsynced before they were acknowledged, so the log still holds
them). A failed fsync is never retried: the page cache may have dropped what it held. Once
the disk accepts writes again the replica is **recovered**: when a live leader elsewhere
leads the partition and the metadata shows this replica out of the in-sync set, its log is
deleted and it copies the leader's like a new replica, rejoining the in-sync set only when
caught up; otherwise (it may hold the only copy) its log is never deleted but closed and
reopened, recovery checking every batch past the last durable point.

A **watchdog** checks the data directory every ``disk_check_interval_ms`` on a worker thread:
that it is the same directory (device and inode), that its marker still names this SPU's
storage id, and that a small probe file can be written and fsynced. A directory that is gone
or replaced cannot be rebuilt inside this process (its RocksDB index went with it): the SPU
fences every replica, tells the SC, logs one line and exits at once with status
``EXIT_DATA_DIR_LOST``, so that its supervisor restarts it and it registers with a new
storage id. A directory that
is still there but refuses writes (read-only, full, I/O errors) fences every replica it holds;
they are rebuilt when the probe succeeds again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..protocol.errors import KolkError
from ..segments.errors import LogFailedError, StorageError, StorageFullError
from .replica_state import DiskFault

if TYPE_CHECKING:
    from .replica import Replica
    from .server import SpuServer

log = logging.getLogger("kolk.spu")

EXIT_DATA_DIR_LOST = 3
PROBE_FILE = ".kolk-disk-probe"
PROBE_BYTES = 64 << 10  # written and fsynced by each probe: a page or two would fit a full disk
REPORT_ATTEMPTS_MAX = 30  # per fenced replica; the SC also learns from a restart's storage id
REPORT_BACKOFF_MAX_S = 2.0
REBUILD_BACKOFF_MIN_S = 0.1
REBUILD_BACKOFF_MAX_S = 5.0
# A replica fenced again soon after a rebuild waits longer before the next (doubling up to
# this), so a disk that keeps failing cannot make the SPU rebuild in a loop.
REFENCE_DELAY_MAX_S = 30.0
REFENCE_WINDOW_S = 60.0
REBUILD_HISTORY_MAX = 10_000  # partitions whose last rebuild time is remembered
EXIT_REPORT_DEADLINE_S = 3.0


def is_disk_fault(e: BaseException) -> bool:
    """Errors that fence a replica: the log failed, or the disk is full."""
    return isinstance(e, (LogFailedError, StorageFullError))


@dataclass(frozen=True)
class DirIdentity:
    device: int
    inode: int
    storage_id: str


def dir_identity(data_dir: str, storage_id: str) -> DirIdentity:
    st = os.stat(data_dir)
    return DirIdentity(st.st_dev, st.st_ino, storage_id)


def check_data_dir(data_dir: str, marker: str, expected: DirIdentity, free_bytes_min: int) -> tuple[str, str] | None:
    """Blocking (run it on a worker thread). None when healthy, else (kind, problem): kind
    ``lost`` (gone or replaced) or ``failing`` (there, but a write or fsync fails, or fewer
    than ``free_bytes_min`` bytes are free)."""
    try:
        st = os.stat(data_dir)
    except FileNotFoundError:
        return "lost", f"data directory {data_dir} is gone"
    except OSError as e:
        return "failing", f"data directory {data_dir} cannot be read: {e}"
    if (st.st_dev, st.st_ino) != (expected.device, expected.inode):
        return "lost", f"data directory {data_dir} was replaced by another directory"
    try:
        with open(os.path.join(data_dir, marker), encoding="utf-8") as f:
            storage_id = json.load(f).get("storage_id")
    except FileNotFoundError:
        return "lost", f"data directory {data_dir} lost its marker {marker}"
    except (OSError, ValueError) as e:
        return "failing", f"the marker of {data_dir} cannot be read: {e}"
    if storage_id != expected.storage_id:
        return "lost", f"data directory {data_dir} now holds storage {str(storage_id)[:8]}, not {expected.storage_id[:8]}"
    probe = os.path.join(data_dir, PROBE_FILE)
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, bytes(PROBE_BYTES))
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
        fs = os.statvfs(data_dir)
    except OSError as e:
        return "failing", f"data directory {data_dir} refuses writes: {e}"
    free = fs.f_bavail * fs.f_frsize
    if free < free_bytes_min:
        return "failing", f"data directory {data_dir} has {free} bytes free, fewer than {free_bytes_min}"
    return None


class DiskFaults:
    """Fences, reports and rebuilds the replicas of one SPU whose disk failed."""

    def __init__(self, server: "SpuServer") -> None:
        self.s = server
        self.healthy = True  # the last watchdog probe succeeded
        self._identity: DirIdentity | None = None
        self._rebuilding: dict[str, asyncio.Task[Any]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        # Per partition: (when it was last rebuilt, the delay before the next rebuild).
        self._last_rebuild: dict[str, tuple[float, float]] = {}

    def start(self, marker: str) -> asyncio.Task[Any]:
        self._identity = dir_identity(self.s.store.data_dir, self.s.store.storage_id)
        return asyncio.ensure_future(self._watch(marker))

    def stop(self) -> None:
        for task in list(self._rebuilding.values()) + list(self._tasks):
            task.cancel()

    # ---------------------------------------------------------------- fencing

    def on_error(self, replica: "Replica", error: BaseException) -> None:
        """A storage call on ``replica`` failed: fence it if the disk is at fault."""
        if is_disk_fault(error):
            self.fence(replica, str(error))

    def fence(self, replica: "Replica", reason: str) -> None:
        if replica.failure is not None or self.s.replicas.get(replica.name) is not replica:
            return
        self.s.step(replica, DiskFault(reason))  # fenced for good; it stops following
        # Until a probe of the data directory succeeds again, nothing is rebuilt on it.
        self.healthy = False
        log.error("%s: fenced, the disk failed: %s", replica.name, reason)
        self.s.stop_following(replica)
        replica.wake()  # waiting acknowledgements see the fence and fail
        self._spawn(self._report(replica, reason))
        if replica.name not in self._rebuilding:
            self._rebuilding[replica.name] = asyncio.ensure_future(self._rebuild(replica))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _report(self, replica: "Replica", reason: str) -> bool:
        backoff = 0.05
        for _ in range(REPORT_ATTEMPTS_MAX):
            if not self._in_sync(replica):
                return True  # the SC knows already (or never counted it)
            try:
                await self.s.admin.report_replica_loss(replica.name, self.s.config.spu_id,
                                                       f"disk fault on SPU {self.s.config.spu_id}: {reason}",
                                                       keep_last_in_sync=True)
                return True
            except KolkError as e:
                if not e.retriable:
                    log.warning("%s: the SC refused the disk-fault report: %s", replica.name, e)
                    return False
            await asyncio.sleep(backoff)  # retry backoff, bounded
            backoff = min(backoff * 2, REPORT_BACKOFF_MAX_S)
        return False

    def _in_sync(self, replica: "Replica") -> bool:
        meta = self.s.partitions.get(replica.name)
        status = meta["status"] if meta else replica.meta.get("status", {})
        me = self.s.config.spu_id
        return me in status.get("isr", []) or status.get("leader") == me

    # ---------------------------------------------------------------- rebuilding

    def _recovery(self, replica: "Replica") -> bool | None:
        """How to recover ``replica`` now: False, rebuild it empty (a live leader elsewhere has
        every acknowledged record and the SC has this one out of the in-sync set); True, reopen
        its own log (nobody else leads: it may hold the only copy); None, not yet (the SC has
        not taken it out of the set while another replica leads)."""
        meta = self.s.partitions.get(replica.name)
        status = meta["status"] if meta else replica.meta.get("status", {})
        me, leader = self.s.config.spu_id, status.get("leader")
        leader_spu = self.s.spus.get(leader) if leader is not None else None
        if leader is not None and leader != me and leader_spu and leader_spu.get("status", {}).get("alive"):
            return None if me in status.get("isr", []) else False
        return True

    async def _rebuild(self, failed: "Replica") -> None:
        """Once the disk takes writes again, start the replica again (see _recovery)."""
        name = failed.name
        loop = asyncio.get_running_loop()
        backoff = REBUILD_BACKOFF_MIN_S
        last, delay = self._last_rebuild.get(name, (0.0, 0.0))
        if loop.time() - last < REFENCE_WINDOW_S:
            # Fenced again soon after the last rebuild: wait longer each time.
            delay = min(max(delay * 2, 1.0), REFENCE_DELAY_MAX_S)
            log.warning("%s: fenced again %.1f s after a rebuild; next rebuild in %.1f s at the earliest", name,
                        loop.time() - last, delay)
        else:
            delay = 0.0
        not_before = loop.time() + delay
        try:
            while self.s.replicas.get(name) is failed:
                keep = self._recovery(failed) if self.healthy and loop.time() >= not_before else None
                if keep is not None:
                    try:
                        self.s.rebuild_replica(failed, keep_log=keep)
                        self._last_rebuild[name] = (loop.time(), delay)
                        while len(self._last_rebuild) > REBUILD_HISTORY_MAX:
                            self._last_rebuild.pop(next(iter(self._last_rebuild)))
                        if keep:
                            log.warning("%s: reopened its own log after the disk fault (no other replica leads)", name)
                        else:
                            log.warning("%s: rebuilt empty after the disk fault; catching up from the leader", name)
                        return
                    except (StorageError, OSError) as e:
                        log.warning("%s: cannot rebuild yet: %s", name, e)
                changed = failed.changed
                try:
                    async with asyncio.timeout(backoff):
                        await changed.wait()
                except TimeoutError:
                    pass  # look again: the disk may have recovered
                backoff = min(backoff * 2, REBUILD_BACKOFF_MAX_S)
        finally:
            if self._rebuilding.get(name) is asyncio.current_task():
                del self._rebuilding[name]

    # ---------------------------------------------------------------- watchdog

    async def _watch(self, marker: str) -> None:
        assert self._identity is not None
        interval = self.s.config.disk_check_interval_ms / 1000
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)  # the watchdog's period
            problem = await loop.run_in_executor(None, check_data_dir, self.s.store.data_dir, marker,
                                                 self._identity, self.s.config.disk_free_bytes_min)
            if problem is None:
                if not self.healthy:
                    log.warning("data directory %s takes writes again", self.s.store.data_dir)
                    self.healthy = True
                    for replica in list(self.s.replicas.values()):
                        replica.wake()  # rebuilds waiting for the disk look again
                continue
            kind, text = problem
            if kind == "lost":
                await self._exit_lost(text)
                return
            if self.healthy:
                self.healthy = False
                log.error("%s; fencing every replica on it", text)
            for replica in list(self.s.replicas.values()):
                self.fence(replica, text)

    async def _exit_lost(self, text: str) -> None:
        """The data directory is gone or replaced: fence everything, tell the SC, and exit so
        that a restart registers the new (empty) storage."""
        log.critical("%s; stopping so that the SPU restarts with new storage (exit status %d)", text,
                     EXIT_DATA_DIR_LOST)
        self.healthy = False
        replicas = list(self.s.replicas.values())
        for replica in replicas:
            replica.state.step(DiskFault(text))  # fenced (no-op if it already was); nothing else to carry out
            self.s.stop_following(replica)
            replica.wake()
        reports = [asyncio.ensure_future(self._report(r, text)) for r in replicas if self._in_sync(r)]
        if reports:
            await asyncio.wait(reports, timeout=EXIT_REPORT_DEADLINE_S)
        # Exit now, without the usual teardown: nothing on the lost directory can be saved, and
        # closing RocksDB over a vanished directory once crashed the process (SIGSEGV) after
        # this line was logged, hiding the exit status a supervisor acts on.
        logging.shutdown()
        os._exit(EXIT_DATA_DIR_LOST)
