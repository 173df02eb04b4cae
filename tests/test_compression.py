"""zstd records sections (codec 4): round trip, bounded expansion, and damage refused."""

from __future__ import annotations

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from kolk.segments import CODEC_ZSTD, InvalidBatchError, build_batch, decode_records
from kolk.segments.records import decompress


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.none() | st.binary(max_size=20), st.none() | st.binary(max_size=300)),
                min_size=1, max_size=40))
def test_zstd_round_trip(records: list) -> None:
    """Records built with zstd decode to the same keys and values."""
    raw = build_batch(records, codec=CODEC_ZSTD)
    assert [(r.key, r.value) for r in decode_records(raw)] == records


def test_zstd_bomb_is_bounded() -> None:
    """A small frame that claims to expand past the limit is refused before it is expanded."""
    frame = zstandard.ZstdCompressor().compress(b"\0" * (8 << 20))
    with pytest.raises(InvalidBatchError, match="expands past the limit"):
        decompress(CODEC_ZSTD, frame, 1 << 20)


@pytest.mark.parametrize("damage, words", [
    (lambda f: f[:-3], "ends before its frame|does not decompress"),
    (lambda f: f + b"JUNK", "after its frame"),
    (lambda f: b"not zstd at all", "not a zstd frame"),
])
def test_damaged_zstd_section_is_refused(damage, words: str) -> None:
    """Cut frames, junk after the frame and non-zstd bytes are InvalidBatchError, not crashes."""
    frame = zstandard.ZstdCompressor().compress(b"hello world" * 100)
    with pytest.raises(InvalidBatchError, match=words):
        decompress(CODEC_ZSTD, damage(frame), 1 << 20)
