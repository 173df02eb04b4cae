"""One segment file: record batches back to back, exactly as they travel on the wire.

The file is authoritative (DESIGN.md §4). A segment knows its base offset (its name), its
size in bytes, the offset after its last batch and the largest timestamp in it; the RocksDB
indexes point into it by byte position. Writes go through ``pwritev`` at the logical end,
so a failed or partial write is cut away and never becomes part of the log.

Every fdatasync of a segment of an open log goes through :func:`fdatasync_segment` (called by
the log's fsync guard, fsync.py), so that the test hook in faults.py sees each one.
"""

from __future__ import annotations

import errno
import os
from typing import Sequence

from . import faults
from .errors import SegmentDeletedError, StorageFullError
from .file_names import segment_file_name

IOV_MAX = 1024
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}

# Indirection so that tests can simulate a full disk without a real one.
_pwritev = os.pwritev


class Segment:
    __slots__ = (
        "base_offset",
        "path",
        "fd",
        "size",
        "next_offset",
        "max_timestamp",
        "created_ms",
        "deleted",
        "_closed",
    )

    def __init__(self, directory: str, base_offset: int, created_ms: int, *, create: bool) -> None:
        self.base_offset = base_offset
        self.path = os.path.join(directory, segment_file_name(base_offset))
        flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT | os.O_EXCL if create else 0)
        self.fd = os.open(self.path, flags, 0o600)  # records are private to the SPU's user (docs/security.md)
        self.size = os.fstat(self.fd).st_size
        self.next_offset = base_offset
        self.max_timestamp = -1
        self.created_ms = created_ms
        self.deleted = False
        self._closed = False

    def __repr__(self) -> str:
        return f"Segment({self.path!r}, size={self.size}, next_offset={self.next_offset})"

    def write(self, parts: Sequence[bytes | memoryview], nbytes: int) -> int:
        """Append ``parts`` at the logical end; return the position they start at.

        On a full disk (ENOSPC, EDQUOT, EFBIG) the file is cut back to its previous size and
        :class:`StorageFullError` is raised: the segment is as it was, and a retry can succeed
        once space is freed. Any other failure, or a full disk whose partial write cannot be
        cut away, is raised as the ``OSError``: the disk is failing, or the file holds bytes
        past the logical end that the next open could take for batches (whole batches of
        this append may have reached it), and the log fences itself.
        """
        start = self.size
        pos = start
        try:
            i = 0
            n = len(parts)
            while i < n:
                chunk = parts[i : i + IOV_MAX]
                want = sum(len(p) for p in chunk)
                done = _pwritev(self.fd, chunk, pos)
                pos += done
                if done == want:
                    i += len(chunk)
                    continue
                # Partial write: keep the unwritten remainder and try again.
                rest: list[bytes | memoryview] = []
                skip = done
                for p in chunk:
                    if skip >= len(p):
                        skip -= len(p)
                        continue
                    rest.append(memoryview(p)[skip:])
                    skip = 0
                parts = list(rest) + list(parts[i + len(chunk) :])
                i = 0
                n = len(parts)
        except OSError as e:
            try:
                os.ftruncate(self.fd, start)
            except OSError as cut:
                raise OSError(cut.errno, f"cutting a partial write back to {start} bytes after "
                                         f"[Errno {e.errno}] {e.strerror} failed: {cut.strerror}") from e
            if e.errno in _FULL_ERRNOS:
                raise StorageFullError(
                    f"{self.path}: the file system refused {nbytes} bytes ({os.strerror(e.errno)}); "
                    "nothing was appended"
                ) from e
            raise
        assert pos - start == nbytes, (pos, start, nbytes)
        self.size = pos
        return start

    def check_readable(self) -> None:
        """Raise unless the descriptor still belongs to this segment's file."""
        if self.deleted:
            raise SegmentDeletedError(
                f"{self.path} was deleted by retention, truncation or deletion of its log; read "
                "again from the log start offset")
        if self._closed:
            raise SegmentDeletedError(f"{self.path} was closed with its log; reopen the log and read again")

    def read(self, position: int, length: int) -> bytes:
        self.check_readable()
        return os.pread(self.fd, length, position)

    def truncate(self, size: int) -> None:
        """Cut the file to ``size`` bytes; the caller fsyncs it (under its log's fsync lock)."""
        os.ftruncate(self.fd, size)
        self.size = size

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            os.close(self.fd)

    def delete(self) -> None:
        """Unlink the file. Regions handed out earlier raise SegmentDeletedError."""
        self.deleted = True
        self.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def fdatasync_segment(fd: int) -> None:
    """``os.fdatasync`` of a segment file, or the failure faults.py was told to inject."""
    trigger = faults.fsync_fault_file
    if trigger is not None:
        faults.take_fsync_fault(trigger)
    os.fdatasync(fd)


def fsync_directory(path: str) -> None:
    """Make renames, creations and unlinks in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
