"""The cleaner's plain data: a plan made on the event loop, the result a worker sends back.

Both go through JSON (``to_json`` / ``from_json``), because the heavy part of a pass runs in a
separate process (clean_worker.py): Python's record decoding holds the GIL, and a thread
would starve the SPU's event loop.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from .compaction import CompactionPolicy, EraseSpec
from .errors import StorageError


class StaleCleanError(StorageError):
    """The log changed between a clean's plan and its finish (truncated, reset, closed, a
    planned segment deleted or rewritten): the cleaned files were removed, nothing swapped."""


class CleanError(StorageError):
    """A clean pass could not run: a planned segment is unreadable, corrupt or changed."""


@dataclass(frozen=True)
class PlannedSegment:
    base_offset: int
    next_offset: int  # the next segment's base offset: where this one's offsets end
    size: int
    inode: int
    path: str


@dataclass(frozen=True)
class CleanPlan:
    log_name: str
    directory: str
    generation: int
    segments: tuple[PlannedSegment, ...]  # sealed, oldest first, from the log start
    cleaned_offset: int  # the dirty range starts here ...
    cleanable_end: int  # ... and ends here (the map covers a prefix of it)
    now_ms: int
    policy: CompactionPolicy
    erase: EraseSpec | None
    batch_bytes_max: int

    def to_json(self) -> str:
        d = asdict(self)
        d["erase"] = None if self.erase is None else {"key_sha256": self.erase.key_sha256.hex(),
                                                      "upto_offset": self.erase.upto_offset}
        return json.dumps(d, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> CleanPlan:
        try:
            d = json.loads(text)
            erase = d["erase"]
            return cls(
                log_name=str(d["log_name"]), directory=str(d["directory"]), generation=int(d["generation"]),
                segments=tuple(PlannedSegment(**s) for s in d["segments"]),
                cleaned_offset=int(d["cleaned_offset"]), cleanable_end=int(d["cleanable_end"]),
                now_ms=int(d["now_ms"]), policy=CompactionPolicy(**d["policy"]),
                erase=None if erase is None else EraseSpec(bytes.fromhex(erase["key_sha256"]),
                                                           int(erase["upto_offset"])),
                batch_bytes_max=int(d["batch_bytes_max"]))
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"not a clean plan: {type(e).__name__}: {e}") from None


@dataclass(frozen=True)
class RewrittenSegment:
    base_offset: int
    cleaned_path: str  # <20-digit base>.cleaned beside the segment, fsynced
    size: int  # bytes of the cleaned file (0: every record went)
    records_removed: int


@dataclass
class CleanResult:
    map_end: int  # the new cleaned offset
    rewritten: list[RewrittenSegment] = field(default_factory=list)
    keys_in_map: int = 0
    bytes_read: int = 0  # segment bytes read, both phases
    bytes_scanned: int = 0  # bytes of the segments the pass covered, each counted once
    bytes_written: int = 0
    records_removed: int = 0
    records_erased: int = 0
    batches_removed: int = 0
    tombstone_due_ms: int = -1  # when a kept tombstone below map_end may next go; -1: none
    seconds: float = 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> CleanResult:
        try:
            d = json.loads(text)
            d["rewritten"] = [RewrittenSegment(**r) for r in d["rewritten"]]
            return cls(**d)
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"not a clean result: {type(e).__name__}: {e}") from None


@dataclass(frozen=True)
class CleanStats:
    """What :meth:`PartitionLog.finish_clean` did."""

    cleaned_offset: int
    segments_swapped: int
    records_removed: int
    records_erased: int
    bytes_before: int
    bytes_after: int
    keys_in_map: int
    seconds: float
