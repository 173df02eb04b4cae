"""Compaction decisions, as pure functions: which segments a pass may touch, which records stay.

A compacted topic keeps, per key, the newest record (DESIGN.md §4). Offsets are never
renumbered: a record keeps its offset and readers see gaps. The cleaner (cleaner.py) runs in
passes; each pass:

1. finds the *cleanable range*: the sealed segments from the log start up to (not including)
   the first segment that is active, holds offsets at or past the high watermark, or whose
   newest record is younger than ``min_compaction_lag_ms`` (:func:`cleanable_count`);
2. builds a :class:`KeyMap` (key digest -> newest offset) over the *dirty range*, from the
   cleaned offset of the last pass on. The map has a cap on its entries (``key_map_bytes``);
   when the dirty range holds more keys than fit, the map covers a prefix of it, ending at
   ``map_end`` (possibly inside a segment), and the next pass continues from there;
3. rewrites the segments from the log start to ``map_end`` keeping what :func:`keep_record`
   says, and records ``map_end`` as the new cleaned offset.

The rule for one record at an offset below ``map_end`` (records at or past it are untouched):

* a keyed record stays iff it is the newest for its key in the map, or its key is not in the
  map (then its newest record lies below the cleaned offset and was kept by an earlier pass);
* a tombstone (null value) that is the newest for its key stays for a pass; it is removed once
  it lies below the cleaned offset of an earlier pass AND ``timestamp + delete_retention_ms
  <= now`` (how long consumers get to see the delete);
* a keyless record always stays (a compacted topic refuses them at produce; old ones stay);
  a control batch stays whole.

An erasure (:class:`EraseSpec`, GDPR) drops every record whose key's SHA-256 matches, at
offsets up to ``upto_offset``, tombstone included, ignoring the lag and delete_retention_ms.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence

from .retention import SegmentSummary

KEY_DIGEST_BYTES = 16
# What one entry of the key map costs in a CPython dict: a 16-byte bytes object (49 bytes),
# an int offset (32) and the dict's slot with its share of free slots (~55). Measured with
# tracemalloc on 200 000 entries: 84 bytes beside the key's 49 (bench/cleaner_bench.py).
KEY_MAP_ENTRY_BYTES = 136
KEY_MAP_BYTES_MIN = KEY_MAP_ENTRY_BYTES  # one key: a pass always makes progress


def key_digest(key: bytes) -> bytes:
    """The key map's key: a 16-byte BLAKE2b digest of the record key (a collision, chance
    about 2^-64 per pair of keys in one pass, would make the older key's record look
    superseded)."""
    return hashlib.blake2b(key, digest_size=KEY_DIGEST_BYTES).digest()


@dataclass(frozen=True)
class CompactionPolicy:
    """How the cleaner treats a log. ``bytes_per_s`` throttles it (0: as fast as it can)."""

    delete_retention_ms: int
    min_compaction_lag_ms: int
    key_map_bytes: int
    bytes_per_s: int = 0

    def __post_init__(self) -> None:
        if self.delete_retention_ms < 0:
            raise ValueError(f"delete_retention_ms={self.delete_retention_ms} must be >= 0")
        if self.min_compaction_lag_ms < 0:
            raise ValueError(f"min_compaction_lag_ms={self.min_compaction_lag_ms} must be >= 0")
        if self.key_map_bytes < KEY_MAP_BYTES_MIN:
            raise ValueError(f"key_map_bytes={self.key_map_bytes} is below {KEY_MAP_BYTES_MIN} "
                             f"({KEY_MAP_BYTES_MIN // KEY_MAP_ENTRY_BYTES} keys)")
        if self.bytes_per_s < 0:
            raise ValueError(f"bytes_per_s={self.bytes_per_s} must be >= 0 (0: not throttled)")

    @property
    def key_map_entries(self) -> int:
        return self.key_map_bytes // KEY_MAP_ENTRY_BYTES


@dataclass(frozen=True)
class EraseSpec:
    """Drop every record whose key's SHA-256 is ``key_sha256`` at offsets <= ``upto_offset``."""

    key_sha256: bytes
    upto_offset: int

    def __post_init__(self) -> None:
        if not isinstance(self.key_sha256, bytes) or len(self.key_sha256) != 32:
            raise ValueError("EraseSpec.key_sha256 must be the 32 bytes of a SHA-256 digest")
        if self.upto_offset < 0:
            raise ValueError(f"EraseSpec.upto_offset={self.upto_offset} is negative")

    def matches(self, offset: int, key: bytes | None) -> bool:
        return key is not None and offset <= self.upto_offset and hashlib.sha256(key).digest() == self.key_sha256


class KeyMap:
    """Key digest -> newest offset, holding at most ``capacity`` keys."""

    __slots__ = ("capacity", "_map")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"a key map holds at least one key, not {capacity}")
        self.capacity = capacity
        self._map: dict[bytes, int] = {}

    def put(self, digest: bytes, offset: int) -> bool:
        """Record ``offset`` as the newest for ``digest``; False (and nothing recorded) when the
        key is new and the map is full."""
        m = self._map
        if digest not in m and len(m) >= self.capacity:
            return False
        m[digest] = offset
        return True

    def get(self, digest: bytes) -> int | None:
        return self._map.get(digest)

    def __len__(self) -> int:
        return len(self._map)


def cleanable_count(segments: Sequence[SegmentSummary], *, high_watermark: int, now_ms: int,
                    min_compaction_lag_ms: int) -> int:
    """How many of the oldest ``segments`` (the last is the active one) a pass may rewrite:
    it stops at the active segment, at one holding offsets at or past the high watermark, and
    at one whose newest record is younger than the lag."""
    count = 0
    for seg in segments[:-1]:
        if seg.next_offset > high_watermark:
            break
        if seg.max_timestamp > now_ms - min_compaction_lag_ms:
            break
        count += 1
    return count


def keep_record(*, offset: int, digest: bytes | None, tombstone: bool, timestamp: int, key_map: KeyMap,
                map_end: int, cleaned_offset: int, now_ms: int, delete_retention_ms: int) -> bool:
    """Does the record survive the pass? (module doc). ``digest`` is None for a keyless record."""
    if offset >= map_end or digest is None:
        return True
    newest = key_map.get(digest)
    if newest is not None and offset < newest:
        return False  # superseded by a newer record of its key
    if tombstone and offset < cleaned_offset and timestamp + delete_retention_ms <= now_ms:
        return False  # a delete, seen by a pass before this one and old enough
    return True


def tombstone_due_ms(timestamp: int, delete_retention_ms: int) -> int:
    """When a kept tombstone becomes removable (given it lies below the cleaned offset)."""
    return timestamp + delete_retention_ms
