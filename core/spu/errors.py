"""What the SPU's storage and producer-state errors mean to a client: the wire code (the
``Error`` codes of kolk.capnp), and whether retrying the same request may help.

Shared by the data-plane calls (core/spu/api.py) and the replication calls
(core/spu/replication_api.py), and used for the error that ends a consumer's stream.
"""

from __future__ import annotations

from typing import Any

from ..segments.errors import (
    BatchTooLargeError,
    CorruptBatchError,
    InvalidBatchError,
    LogClosedError,
    LogFailedError,
    OffsetOutOfRangeError,
    StorageError,
    StorageFullError,
    TruncatedBeforeDurableError,
)
from ..segments.producer_state import (
    DuplicateSequenceError,
    OutOfOrderSequenceError,
    ProducerFencedError,
    ProducerStateError,
)
from ..protocol.offset_range import out_of_range_message
from ..protocol.wire import set_error


def storage_failure(e: StorageError, partition: str | None = None) -> tuple[str, str, bool]:
    """``(code, message, retriable)`` for a storage error (of ``partition``, when given: an
    offset out of range is then worded as clients word it, core/protocol/offset_range.py)."""
    if isinstance(e, LogFailedError):
        # The disk failed under the replica: it is fenced and leadership moves (core/spu/disk_faults.py).
        return "notLeader", f"{e}; leadership is moving to an intact in-sync replica", True
    if isinstance(e, (TruncatedBeforeDurableError, LogClosedError)):
        # The replica was truncated or closed under the call: leadership moved.
        return "notLeader", str(e), True
    if isinstance(e, BatchTooLargeError):
        return "tooLarge", str(e), False
    if isinstance(e, InvalidBatchError):
        return "invalidBatch", str(e), False
    if isinstance(e, OffsetOutOfRangeError):
        if partition is not None:
            return "offsetOutOfRange", out_of_range_message(partition, e.offset, e.log_start_offset,
                                                            e.log_end_offset), False
        return "offsetOutOfRange", str(e), False
    if isinstance(e, CorruptBatchError):
        return "corruptBatch", str(e), False
    if isinstance(e, StorageFullError):
        return "storageFull", str(e), True
    return "storage", str(e), False


def storage_error(result: Any, e: StorageError, write: bool = False, partition: str | None = None) -> None:
    """Fill ``result`` with a storage error. For a write (``write``) that met a failed or
    closed log the append may or may not have reached the disk and the other replicas: the
    outcome is unknown, and an idempotent retry at the new leader settles it."""
    code, message, retriable = storage_failure(e, partition)
    unknown = write and isinstance(e, (LogFailedError, TruncatedBeforeDurableError, LogClosedError))
    set_error(result, code, message, None, retriable, outcome_unknown=unknown)


def producer_error(result: Any, e: ProducerStateError) -> None:
    """Fill ``result`` with an idempotent producer's error (nothing was written)."""
    if isinstance(e, ProducerFencedError):
        set_error(result, "producerFenced", str(e))
    elif isinstance(e, OutOfOrderSequenceError):
        set_error(result, "outOfOrderSequence", str(e), None, True)
    elif isinstance(e, DuplicateSequenceError):
        set_error(result, "duplicateSequence", str(e))
    else:
        set_error(result, "invalidBatch", str(e))
