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
from .group_commit import GroupCommit as GroupCommit
from .leader_epochs import EpochEnd as EpochEnd
from .log import AppendInfo as AppendInfo
from .reader import FileRegion as FileRegion
from .log import PartitionLog as PartitionLog
from .reader import ReadResult as ReadResult
from .records import Record as Record
from .records import build_batch as build_batch
from .records import decode_records as decode_records
from .store import LogStore as LogStore
