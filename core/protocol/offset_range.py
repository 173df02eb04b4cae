"""Where a partition's records are, and the one wording of "that offset is not there".

A partition holds offsets ``[log_start_offset, log_end_offset)``: retention deletes from the
start (the log start moves forward, docs/lifecycle.md), producers append at the end. A reader
may start anywhere in ``[log_start_offset, log_end_offset]``: at the log end it waits for the
next record. Below the start or past the end it gets ``offsetOutOfRange``, worded here, once,
for the consumer and the CLI (and for the SPU, which should answer the same words). Pure.
"""

from __future__ import annotations

from .errors import OffsetOutOfRangeError


def readable(offset: int, log_start_offset: int, log_end_offset: int) -> bool:
    """Whether a reader may start at ``offset``: the log end included (it waits there)."""
    return log_start_offset <= offset <= log_end_offset


def _available(log_start_offset: int, log_end_offset: int) -> str:
    if log_end_offset > log_start_offset:
        return f"records {log_start_offset}-{log_end_offset - 1} are available"
    return "no records are available"


def out_of_range_message(partition: str, offset: int, log_start_offset: int, log_end_offset: int) -> str:
    """One line naming the partition, the offset asked and the range it holds now.

    >>> out_of_range_message("orders-0", 5, 1200, 5000)
    'offset 5 of orders-0 is below the log start 1200 (records 1200-4999 are available; older ones were deleted by retention)'
    """
    if offset < log_start_offset:
        return (f"offset {offset} of {partition} is below the log start {log_start_offset} "
                f"({_available(log_start_offset, log_end_offset)}; older ones were deleted by retention)")
    return (f"offset {offset} is past the end of {partition} "
            f"({_available(log_start_offset, log_end_offset)}; the next record written gets offset "
            f"{log_end_offset})")


def out_of_range(partition: str, offset: int, log_start_offset: int, log_end_offset: int) -> OffsetOutOfRangeError:
    """The error for a reader at ``offset``, which must not be :func:`readable`."""
    assert not readable(offset, log_start_offset, log_end_offset), (offset, log_start_offset, log_end_offset)
    e = OffsetOutOfRangeError(out_of_range_message(partition, offset, log_start_offset, log_end_offset))
    e.offset, e.log_start_offset, e.log_end_offset = offset, log_start_offset, log_end_offset
    return e
