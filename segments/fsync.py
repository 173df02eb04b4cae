"""Fsyncing a partition log's files: the guard every fsync of one log goes through, and the
ticket of one group-commit round.

Why a guard. Two fsyncs of one file through one open file description (a segment's
descriptor and the duplicates that tickets take share one) share the kernel's writeback
error state: when pages fail to reach the disk, the first fsync to look reports EIO and the
other reports success for the same lost pages ("fsyncgate", PostgreSQL 2018). So the fsyncs
of a log run one at a time under :attr:`FsyncGuard.lock`, and a failure is recorded in the
guard before the lock is released; every claim of durability checks the guard first, so a
success that follows a failure is never believed. The failure is permanent
(:class:`LogFailedError`): the kernel may have dropped the pages, and no later fsync can make
them durable.

A segment file deleted under an open log (its data directory removed) still takes writes and
fsyncs, into an inode no one can open again. So after each fdatasync the file's link count is
checked: zero fails the log, unless the log deleted the segment itself (retention, truncation,
reset, deletion of the log), in which case its bytes were either fsynced whole when it was
sealed or are no longer part of the log.
"""

from __future__ import annotations

import os
import threading
import time

from .errors import LogFailedError
from .index_db import RecoveryPoint
from .segment import Segment, fdatasync_segment


class FsyncGuard:
    """One per partition log, shared with its sync tickets: the lock that fsyncs of the log's
    files hold, and the log's failure once there is one."""

    def __init__(self, log_name: str) -> None:
        self.log_name = log_name
        self.lock = threading.Lock()
        self.failure: LogFailedError | None = None

    def fail(self, cause: str) -> LogFailedError:
        """Record that the log failed (the first cause is kept) and return the error to raise."""
        if self.failure is None:
            self.failure = LogFailedError(self.log_name, cause)
        # One instance is raised again and again; drop the old traceback so it does not grow.
        return self.failure.with_traceback(None)

    def check(self) -> None:
        """Raise the log's failure, if it has one."""
        if self.failure is not None:
            raise self.failure.with_traceback(None)

    def fdatasync(self, fd: int, segment: Segment) -> None:
        """fdatasync ``fd``, a descriptor of ``segment``'s file, then check that the file still
        has a name. The caller holds :attr:`lock`. A failure is recorded and raised."""
        try:
            fdatasync_segment(fd)
            links = os.fstat(fd).st_nlink
        except OSError as e:
            raise self.fail(f"fsync of {segment.path}: {e}") from e
        if links == 0 and not segment.deleted:
            raise self.fail(f"{segment.path} was deleted under the open log; what was written to it "
                            "since it was last synced is gone")


class SyncTicket:
    """One group-commit fsync: every segment file written since the previous ticket.

    :meth:`run` blocks and may run on another thread; it works on duplicated descriptors (a
    segment deleted meanwhile is harmless) and reads only each segment's path and ``deleted``
    flag, under the log's :class:`FsyncGuard`. It raises :class:`LogFailedError` if the log
    has failed or fails now.
    """

    def __init__(self, fds: list[int], segments: list[Segment], end: RecoveryPoint, generation: int,
                 guard: FsyncGuard) -> None:
        self.fds = fds
        self.segments = segments
        self.end = end
        self.generation = generation
        self.done = False
        self.elapsed_s = 0.0  # how long run() spent in fdatasync
        self._guard = guard

    def run(self) -> None:
        t0 = time.perf_counter()
        try:
            with self._guard.lock:
                self._guard.check()
                for fd, segment in zip(self.fds, self.segments):
                    self._guard.fdatasync(fd, segment)
            self.done = True
        finally:
            self.elapsed_s = time.perf_counter() - t0
            for fd in self.fds:
                os.close(fd)
            self.fds = []
