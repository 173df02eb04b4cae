"""Limits and settings of a partition log, in one place, checked when a log is opened.

Units come last in every name (``segment_ms``, ``batch_bytes_max``), after TigerBeetle's
habit; a value of ``-1`` for a retention limit means "no limit by this measure".
"""

from __future__ import annotations

from dataclasses import dataclass

KIB = 1 << 10
MIB = 1 << 20
GIB = 1 << 30
DAY_MS = 24 * 3600 * 1000
BATCH_BYTES_MIN = 90  # a 61-byte header and one empty record of 29 bytes
SEGMENT_BYTES_MIN = 1024


@dataclass(frozen=True)
class LogConfig:
    # Roll the active segment before it would pass this size ...
    segment_bytes: int = GIB
    # ... or once it is this old.
    segment_ms: int = 7 * DAY_MS
    # Delete the oldest segments while the log is larger than this (-1: no size limit).
    retention_bytes: int = -1
    # Delete segments whose newest record is older than this (-1: keep forever).
    retention_ms: int = 7 * DAY_MS
    # One batch, header included. Kafka's default message.max.bytes is ~1 MiB.
    batch_bytes_max: int = 4 * MIB
    # All the batches of one append call (one produce request).
    append_bytes_max: int = 16 * MIB
    # The most one read call returns; a read may exceed its own max_bytes only to return
    # one whole first batch, and never this.
    read_bytes_max: int = 64 * MIB
    # Window used when recovery scans a segment.
    scan_window_bytes: int = 8 * MIB

    def __post_init__(self) -> None:
        def need(ok: bool, why: str) -> None:
            if not ok:
                raise ValueError(f"invalid LogConfig: {why}")

        need(self.batch_bytes_max >= BATCH_BYTES_MIN,
             f"batch_bytes_max={self.batch_bytes_max} is below {BATCH_BYTES_MIN} bytes, the smallest batch")
        need(self.batch_bytes_max < 2**31, "batch_bytes_max must fit in the i32 batch_length field")
        need(
            self.append_bytes_max >= self.batch_bytes_max,
            f"append_bytes_max={self.append_bytes_max} is below batch_bytes_max={self.batch_bytes_max}",
        )
        # A batch larger than segment_bytes simply fills a segment of its own (should_roll
        # rolls only a non-empty segment), so segment_bytes is not tied to batch_bytes_max.
        need(
            self.segment_bytes >= SEGMENT_BYTES_MIN,
            f"segment_bytes={self.segment_bytes} is below {SEGMENT_BYTES_MIN}",
        )
        need(self.segment_ms > 0, f"segment_ms={self.segment_ms} must be positive")
        need(self.retention_bytes == -1 or self.retention_bytes > 0, "retention_bytes must be -1 or positive")
        need(self.retention_ms == -1 or self.retention_ms > 0, "retention_ms must be -1 or positive")
        need(
            self.read_bytes_max >= self.batch_bytes_max,
            f"read_bytes_max={self.read_bytes_max} is below batch_bytes_max={self.batch_bytes_max}",
        )
        need(
            self.scan_window_bytes >= self.batch_bytes_max,
            f"scan_window_bytes={self.scan_window_bytes} is below batch_bytes_max={self.batch_bytes_max}",
        )
