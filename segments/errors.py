"""Errors raised by the storage engine.

Every error derives from :class:`StorageError`. The subclasses say whose fault it is:

* :class:`InvalidBatchError` and its subclasses: the caller handed us bytes that are not a
  valid record batch. Nothing was stored; fix the input, do not retry it unchanged.
* :class:`OffsetOutOfRangeError`: the caller asked for an offset the log does not hold.
* :class:`CorruptBatchError`: bytes on disk failed verification. The batch is fenced and is
  never served; the rest of the log stays readable.
* :class:`StorageFullError`: the disk refused the write. Nothing partial was kept; a retry
  can succeed once space is freed.
* :class:`LogFailedError`: the disk under the log failed (an fsync or a write error, its files
  deleted or made read-only underneath it). The log is fenced for good: no retry can help,
  the replica must be rebuilt from its peers.
* :class:`NotALogDirectoryError`, :class:`SegmentDeletedError`, :class:`LogClosedError`:
  misuse of a directory or a handle.

``kolk.segments`` imports nothing else of kolk, so these do not derive from ``KolkError``;
the servers translate them into wire errors.
"""

from __future__ import annotations


class StorageError(Exception):
    """Root of every error the storage engine raises."""


class InvalidBatchError(StorageError):
    """The bytes given to append are not a valid record batch; nothing was stored.

    ``position`` is the byte position of the bad batch inside the data handed to append.
    """

    def __init__(self, message: str, position: int = 0) -> None:
        super().__init__(message)
        self.position = position


class CrcMismatchError(InvalidBatchError):
    """The batch's CRC-32C does not match its contents."""


class TruncatedBatchError(InvalidBatchError):
    """The data ends before the batch its header announces."""


class BatchTooLargeError(InvalidBatchError):
    """The batch is larger than ``LogConfig.batch_bytes_max``."""


class OffsetOutOfRangeError(StorageError):
    """The offset is outside ``[log_start_offset, log_end_offset]``."""

    def __init__(self, offset: int, log_start_offset: int, log_end_offset: int) -> None:
        super().__init__(
            f"offset {offset} is out of range: the log holds "
            f"[{log_start_offset}, {log_end_offset})"
        )
        self.offset = offset
        self.log_start_offset = log_start_offset
        self.log_end_offset = log_end_offset


class CorruptBatchError(StorageError):
    """A stored batch failed verification; it is fenced and never served."""

    def __init__(self, path: str, position: int, reason: str, base_offset: int | None = None) -> None:
        where = f"{path} at byte {position}"
        if base_offset is not None:
            where += f" (batch at offset {base_offset})"
        super().__init__(f"corrupt batch in {where}: {reason}")
        self.path = path
        self.position = position
        self.reason = reason
        self.base_offset = base_offset


class StorageFullError(StorageError):
    """The file system refused a write (no space, quota, or file size limit).

    The partial write was cut away; the log is as it was before the call.
    """


class LogFailedError(StorageError):
    """The disk under this log failed; the log is fenced until the replica is rebuilt.

    Whose fault: the disk's (or whoever deleted or remounted the files), not the caller's.
    Raised when an fsync of the log's files failed (any errno: after a failed fsync the kernel
    may already have dropped the dirty pages, and a second fsync reports success without them,
    so retrying the same write cannot help: "fsyncgate"), when a synced segment file turned
    out to have been deleted, when a write failed for a reason other than a full disk, or when
    a roll, truncation or reset failed part way. From then on every operation on the log
    raises this same error, and its ``durable_offset`` never moves again: what the log
    acknowledged before stays acknowledged, nothing after is. The replica must be deleted
    (:meth:`LogStore.delete_log`) and rebuilt from the other replicas.

    ``log_name`` names the log, ``cause`` says what failed (the operation, the file, the OS
    error).
    """

    def __init__(self, log_name: str, cause: str) -> None:
        super().__init__(
            f"log {log_name} failed: {cause}; it is fenced until rebuilt from the other replicas")
        self.log_name = log_name
        self.cause = cause


class NotALogDirectoryError(StorageError):
    """The directory exists but does not hold a Kolk log."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path} is not a Kolk log directory: {reason}")
        self.path = path
        self.reason = reason


class SegmentDeletedError(StorageError):
    """A file region refers to a segment that retention or truncation has deleted."""


class LogClosedError(StorageError):
    """The log or store was closed."""


class TruncatedBeforeDurableError(StorageError):
    """The log was truncated (a new leader took over) before this append became durable; it
    may or may not be in the log now, so the producer must treat it as not acknowledged."""
