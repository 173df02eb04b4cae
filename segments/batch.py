"""The record-batch header: layout, validation and the two fields the server rewrites.

A record batch is the unit of storage, transport and processing (DESIGN.md §4). Its header is
61 bytes, little-endian, laid out like Kafka's v2 batch so that a Kafka user recognises every
field; ``docs/format.md`` is the normative description and carries test vectors.

====== ==== ================== =====================================================
offset size field              meaning
====== ==== ================== =====================================================
0      8    base_offset        i64, offset of the first record (server assigns)
8      4    batch_length       i32, bytes after this field
12     4    leader_epoch       i32, epoch of the leader that appended (server assigns)
16     1    magic              i8, format version, always 1
17     4    crc                u32, CRC-32C of bytes [21, end of batch)
21     2    attributes         i16, bits 0-2 compression codec, bit 5 control batch
23     4    last_offset_delta  i32, offset of the last record minus base_offset
27     8    first_timestamp    i64, ms since the Unix epoch of the first record
35     8    max_timestamp      i64, largest record timestamp in the batch
43     8    producer_id        i64, -1 when not idempotent
51     2    producer_epoch     i16, -1 when not idempotent
53     4    base_sequence      i32, -1 when not idempotent
57     4    record_count       i32, number of records (>= 1)
61          records            encoded as in records.py, compressed as a whole
====== ==== ================== =====================================================

The CRC starts at ``attributes`` so that the server can assign ``base_offset`` and
``leader_epoch`` without recomputing it: the server never decodes records on the plain
produce and fetch path.
"""

from __future__ import annotations

import struct
from typing import Iterator, NamedTuple

import crc32c as _crc32c

from .errors import BatchTooLargeError, CrcMismatchError, InvalidBatchError, TruncatedBatchError

MAGIC = 1
HEADER = struct.Struct("<qiibIhiqqqhii")
HEADER_SIZE = HEADER.size  # 61
LENGTH_PREFIX_SIZE = 12  # base_offset + batch_length: what precedes the counted bytes
CRC_START = 21
# The bytes the server rewrites on append: base_offset, batch_length (unchanged), leader_epoch.
HEAD = struct.Struct("<qii")
HEAD_SIZE = HEAD.size  # 16

CODEC_MASK = 0x07
CONTROL_FLAG = 0x20
CODEC_NONE = 0
CODEC_GZIP = 1
CODEC_ZSTD = 4
# Codec numbers follow Kafka; 2 (snappy) and 3 (lz4) are reserved and refused.
KNOWN_CODECS = {CODEC_NONE: "none", CODEC_GZIP: "gzip", CODEC_ZSTD: "zstd"}

NO_PRODUCER_ID = -1
NO_PRODUCER_EPOCH = -1
NO_SEQUENCE = -1


class BatchHeader(NamedTuple):
    base_offset: int
    batch_length: int
    leader_epoch: int
    magic: int
    crc: int
    attributes: int
    last_offset_delta: int
    first_timestamp: int
    max_timestamp: int
    producer_id: int
    producer_epoch: int
    base_sequence: int
    record_count: int

    @property
    def size(self) -> int:
        """Bytes the whole batch occupies, header included."""
        return LENGTH_PREFIX_SIZE + self.batch_length

    @property
    def last_offset(self) -> int:
        return self.base_offset + self.last_offset_delta

    @property
    def next_offset(self) -> int:
        return self.base_offset + self.last_offset_delta + 1

    @property
    def codec(self) -> int:
        return self.attributes & CODEC_MASK

    @property
    def is_control(self) -> bool:
        return bool(self.attributes & CONTROL_FLAG)


def crc_of(buf: bytes | bytearray | memoryview, start: int, end: int) -> int:
    """CRC-32C over ``buf[start + 21 : end]``: what a batch at ``start`` must carry."""
    return _crc32c.crc32c(memoryview(buf)[start + CRC_START : end])


def parse_header(buf: bytes | bytearray | memoryview, pos: int = 0) -> BatchHeader:
    """Decode the header at ``pos`` without checking anything but that 61 bytes are there."""
    if len(buf) - pos < HEADER_SIZE:
        raise TruncatedBatchError(
            f"batch at byte {pos} is truncated: {len(buf) - pos} bytes left, "
            f"a header needs {HEADER_SIZE}",
            pos,
        )
    return BatchHeader._make(HEADER.unpack_from(buf, pos))


def check_header(header: BatchHeader, pos: int, batch_bytes_max: int, shared_offsets: bool = False) -> None:
    """Checks that need only the header. Raises :class:`InvalidBatchError` naming the field.

    ``shared_offsets``: accept more records than offsets (a consumer reading a SmartModule's
    array_map output, whose records share their input's offset); the log never does."""
    if header.magic != MAGIC:
        raise InvalidBatchError(
            f"batch at byte {pos} has magic {header.magic}; this format is version {MAGIC}", pos
        )
    if header.batch_length < HEADER_SIZE - LENGTH_PREFIX_SIZE:
        raise InvalidBatchError(
            f"batch at byte {pos} has batch_length {header.batch_length}, "
            f"less than the {HEADER_SIZE - LENGTH_PREFIX_SIZE} bytes its header needs",
            pos,
        )
    if header.size > batch_bytes_max:
        raise BatchTooLargeError(
            f"batch at byte {pos} is {header.size} bytes, more than batch_bytes_max "
            f"({batch_bytes_max})",
            pos,
        )
    if header.codec not in KNOWN_CODECS:
        raise InvalidBatchError(
            f"batch at byte {pos} uses compression codec {header.codec}, which Kolk does not "
            f"support (known: {', '.join(f'{k}={v}' for k, v in KNOWN_CODECS.items())})",
            pos,
        )
    if header.record_count < 1:
        raise InvalidBatchError(
            f"batch at byte {pos} has record_count {header.record_count}; a batch holds at "
            "least one record",
            pos,
        )
    if header.last_offset_delta < header.record_count - 1 and not shared_offsets:
        raise InvalidBatchError(
            f"batch at byte {pos} has last_offset_delta {header.last_offset_delta} but "
            f"{header.record_count} records",
            pos,
        )
    if header.max_timestamp < header.first_timestamp:
        raise InvalidBatchError(
            f"batch at byte {pos} has max_timestamp {header.max_timestamp} before "
            f"first_timestamp {header.first_timestamp}",
            pos,
        )


def validate_batch(
    buf: bytes | bytearray | memoryview, pos: int, batch_bytes_max: int, shared_offsets: bool = False
) -> BatchHeader:
    """Parse and fully check the batch at ``pos``: header fields, length, then CRC."""
    header = parse_header(buf, pos)
    check_header(header, pos, batch_bytes_max, shared_offsets)
    end = pos + header.size
    if end > len(buf):
        raise TruncatedBatchError(
            f"batch at byte {pos} is truncated: header announces {header.size} bytes, "
            f"{len(buf) - pos} are there",
            pos,
        )
    actual = crc_of(buf, pos, end)
    if actual != header.crc:
        raise CrcMismatchError(
            f"batch at byte {pos} has CRC {header.crc:#010x} but its contents give "
            f"{actual:#010x}",
            pos,
        )
    return header


def iter_batches(
    buf: bytes | bytearray | memoryview, batch_bytes_max: int, shared_offsets: bool = False
) -> Iterator[tuple[int, BatchHeader]]:
    """Yield ``(position, header)`` for each batch in ``buf``, validating each fully.

    Raises on the first bad batch; ``buf`` must end exactly at a batch boundary.
    """
    pos = 0
    n = len(buf)
    if n == 0:
        raise InvalidBatchError("no batches: the data is empty", 0)
    while pos < n:
        header = validate_batch(buf, pos, batch_bytes_max, shared_offsets)
        yield pos, header
        pos += header.size


def with_head(header: BatchHeader, base_offset: int, leader_epoch: int) -> bytes:
    """The 16 head bytes of ``header`` with base_offset and leader_epoch replaced."""
    return HEAD.pack(base_offset, header.batch_length, leader_epoch)
