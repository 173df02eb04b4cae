"""What a topic's config asks of a produce request before it is appended (docs/lifecycle.md).

Pure functions of the request's batch bytes and the topic's effective config:

* ``max_message_bytes``: no batch may be larger (the batch is the unit, as Kafka's
  ``max.message.bytes``); only the headers are read.
* a topic whose ``cleanup_policy`` has ``compact`` refuses keyless records: compaction keeps
  the newest record per key, and a record without one could never be superseded or erased.
  This decodes the records, so it runs only for compacted topics.
* ``compression`` other than ``producer``: batches are stored with that codec; a batch in
  another codec is recompressed (its records section is decompressed and compressed again;
  offsets, timestamps, producer id, epoch and sequence are kept, the CRC is new).
"""

from __future__ import annotations

from ..metadata.topic_config import TopicConfig
from ..segments.batch import HEADER_SIZE, KNOWN_CODECS, LENGTH_PREFIX_SIZE, BatchHeader, parse_header
from ..segments.errors import InvalidBatchError
from ..segments.records import decode_records, decompress, encode_batch

CODEC_BY_NAME = {name: codec for codec, name in KNOWN_CODECS.items()}
SECTION_BYTES_MAX = 4 << 20  # a batch's records section, decompressed, as the storage's batch limit


def _headers(records: bytes) -> list[tuple[int, BatchHeader]]:
    out = []
    pos, n = 0, len(records)
    while n - pos >= HEADER_SIZE:
        h = parse_header(records, pos)
        if h.batch_length < HEADER_SIZE - LENGTH_PREFIX_SIZE or pos + h.size > n:
            break  # not a whole batch: the append names what is wrong with it
        out.append((pos, h))
        pos += h.size
    return out


def size_refusal(records: bytes, tc: TopicConfig, topic: str) -> str | None:
    """Why a batch of ``records`` is over the topic's ``max_message_bytes``, or None."""
    for pos, h in _headers(records):
        if h.size > tc.max_message_bytes:
            return (f"a batch of {h.size} bytes (at byte {pos} of the request) is more than the max_message_bytes "
                    f"of topic {topic} ({tc.max_message_bytes}); send smaller batches or raise it with kolk topic alter")
    return None


def needs_work(records: bytes, tc: TopicConfig) -> bool:
    """Whether :func:`prepare` has anything to check or change for this topic."""
    if tc.compacted:
        return True
    if tc.compression == "producer":
        return False
    target = CODEC_BY_NAME[tc.compression]
    return any(h.codec != target for _, h in _headers(records))


def inline(records: bytes, tc: TopicConfig, inline_bytes_max: int) -> bool:
    """Whether :func:`prepare` is cheap enough for the event loop: a small request with no
    compressed batch (one that decompresses can claim up to SECTION_BYTES_MAX of work)."""
    return len(records) <= inline_bytes_max and all(h.codec == 0 for _, h in _headers(records))


def prepare(records: bytes, tc: TopicConfig, topic: str) -> bytes:
    """The batches to append under ``tc``: refuses keyless records in a compacted topic
    (InvalidBatchError naming the record) and recompresses to the topic's codec. A batch that
    decompresses past SECTION_BYTES_MAX is refused; :func:`size_refusal` must be asked again of
    what this returns (recompression may make a batch larger)."""
    headers = _headers(records)
    if tc.compacted:
        for pos, h in headers:
            if h.is_control:
                continue
            for i, rec in enumerate(decode_records(records, pos, records_bytes_max=SECTION_BYTES_MAX)):
                if rec[2] is None:
                    raise InvalidBatchError(
                        f"record {i} of the batch at byte {pos} has no key: topic {topic} is compacted "
                        f"(cleanup_policy {tc.cleanup_policy}) and keeps the newest record per key, so every "
                        "record needs a key", pos)
    if tc.compression == "producer":
        return records
    target = CODEC_BY_NAME[tc.compression]
    if all(h.codec == target for _, h in headers):
        return records
    parts = []
    for pos, h in headers:
        batch = records[pos:pos + h.size]
        if h.codec == target:
            parts.append(batch)
            continue
        section = decompress(h.codec, batch[HEADER_SIZE:], SECTION_BYTES_MAX)
        parts.append(encode_batch(
            section, h.record_count, first_timestamp=h.first_timestamp, max_timestamp=h.max_timestamp,
            base_offset=h.base_offset, leader_epoch=h.leader_epoch, last_offset_delta=h.last_offset_delta,
            codec=target, control=h.is_control, producer_id=h.producer_id,
            producer_epoch=h.producer_epoch, base_sequence=h.base_sequence))
    return b"".join(parts)
