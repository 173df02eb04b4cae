"""The storage engine: record batches in segment files, indexed in RocksDB (DESIGN.md §4).

Imports nothing else of kolk. Start with :class:`LogStore`; ``docs/format.md`` describes the
bytes on disk and on the wire.
"""

from .batch import (
    CODEC_GZIP as CODEC_GZIP,
    CODEC_NONE as CODEC_NONE,
    CODEC_ZSTD as CODEC_ZSTD,
    BatchHeader as BatchHeader,
    parse_header as parse_header,
    validate_batch as validate_batch,
)
from .config import LogConfig as LogConfig
from .errors import (
    BatchTooLargeError as BatchTooLargeError,
    CorruptBatchError as CorruptBatchError,
    CrcMismatchError as CrcMismatchError,
    InvalidBatchError as InvalidBatchError,
    LogClosedError as LogClosedError,
    LogFailedError as LogFailedError,
    NotALogDirectoryError as NotALogDirectoryError,
    OffsetOutOfRangeError as OffsetOutOfRangeError,
    SegmentDeletedError as SegmentDeletedError,
    StorageError as StorageError,
    StorageFullError as StorageFullError,
    TruncatedBatchError as TruncatedBatchError,
    TruncatedBeforeDurableError as TruncatedBeforeDurableError,
)
from .leader_epochs import EpochEnd as EpochEnd
from .records import Record as Record
from .records import build_batch as build_batch
from .records import decode_records as decode_records

# The log itself (RocksDB through rocksdict) is loaded on first use: a client or an SC that only
# builds and reads batches does not carry RocksDB in memory (DESIGN.md §11).
_LAZY = {
    "GroupCommit": "group_commit", "AppendInfo": "log", "PartitionLog": "log", "FileRegion": "reader",
    "ReadResult": "reader", "LogStore": "store",
    "CompactionPolicy": "compaction", "EraseSpec": "compaction", "CleanPlan": "clean_plan",
    "CleanResult": "clean_plan", "CleanStats": "clean_plan", "StaleCleanError": "clean_plan",
    "CleanError": "clean_plan", "execute_plan": "clean_exec", "run_plan_in_process": "cleaner",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
