"""The frame codec of Kolk's transport (core/protocol/framing.py), sans-IO.

Frames encoded with ``encode_frame`` and cut anywhere come out of a ``FrameDecoder`` whole and in
order; a frame over the decoder's body limit is reported (kind, id, length) as soon as its
header is in and its body is skipped however it arrives, with the decoder never holding more
than a header, the limit and one feed; a byte stream that is not the framing raises
ProtocolError.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kolk.protocol.framing import (
    BODYLESS,
    CREDIT_MAX,
    HEADER,
    ID_MAX,
    Frame,
    FrameDecoder,
    Kind,
    OversizedFrame,
    ProtocolError,
    encode_frame,
)
from kolk.protocol.limits import FRAME_BODY_BYTES_MAX, FRAME_HEADER_BYTES

# ---------------------------------------------------------------- strategies

ids = st.integers(0, ID_MAX)
credits = st.integers(0, CREDIT_MAX)


@st.composite
def frames(draw: st.DrawFn, body_max: int = 4096) -> Frame:
    kind = draw(st.sampled_from(list(Kind)))
    body = b"" if kind in BODYLESS else draw(st.binary(max_size=body_max))
    return Frame(kind, draw(ids), body, draw(credits))


def pieces(data: bytes, sizes: list[int]) -> list[bytes]:
    """``data`` cut into pieces of ``sizes`` (the rest in one last piece)."""
    out = []
    pos = 0
    for n in sizes:
        if pos >= len(data):
            break
        out.append(data[pos:pos + n])
        pos += n
    if pos < len(data):
        out.append(data[pos:])
    return out


# piece sizes: single bytes, bits of a header, and whole frames at once
piece_sizes = st.lists(st.one_of(st.just(1), st.integers(2, FRAME_HEADER_BYTES + 1), st.integers(1, 9000)),
                       max_size=300)


def encode(frame: Frame) -> bytes:
    return encode_frame(frame.kind, frame.id, frame.body, frame.credit)


def decode_all(decoder: FrameDecoder, chunks: list[bytes], bound: int | None = None) -> list[Frame | OversizedFrame]:
    out: list[Frame | OversizedFrame] = []
    for chunk in chunks:
        out += decoder.feed(chunk)
        if bound is not None:
            assert decoder.buffered <= bound + len(chunk), (decoder.buffered, bound, len(chunk))
    return out


# ---------------------------------------------------------------- round trips


def test_header_layout() -> None:
    raw = encode_frame(Kind.CREDIT, 0x01020304, b"", 0xA0B0C0D0)
    assert raw == struct.pack("<IIBBHI", 0, 0x01020304, 6, 0, 0, 0xA0B0C0D0)
    assert len(encode_frame(Kind.REQUEST, 1, b"abc")) == FRAME_HEADER_BYTES + 3


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(frames(), max_size=20), piece_sizes)
def test_any_split_yields_the_same_frames(sent: list[Frame], sizes: list[int]) -> None:
    stream = b"".join(encode(f) for f in sent)
    got = decode_all(FrameDecoder(), pieces(stream, sizes))
    assert got == sent


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_any_cut_points_yield_the_same_frames(data: st.DataObject) -> None:
    sent = data.draw(st.lists(frames(), max_size=20))
    stream = b"".join(encode(f) for f in sent)
    cuts = sorted(set(data.draw(st.lists(st.integers(0, len(stream)), max_size=60))))
    chunks = [stream[a:b] for a, b in zip([0] + cuts, cuts + [len(stream)])]
    assert b"".join(chunks) == stream
    assert decode_all(FrameDecoder(), chunks) == sent


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(frames(body_max=64), max_size=12))
def test_one_byte_at_a_time(sent: list[Frame]) -> None:
    stream = b"".join(encode(f) for f in sent)
    decoder = FrameDecoder()
    got = []
    for i in range(len(stream)):
        got += decoder.feed(stream[i:i + 1])
    assert got == sent
    assert decoder.buffered == 0


def test_empty_feeds_and_partial_frames() -> None:
    decoder = FrameDecoder()
    raw = encode_frame(Kind.RESPONSE, 7, b"hello")
    assert decoder.feed(b"") == []
    assert decoder.feed(raw[:FRAME_HEADER_BYTES - 1]) == []
    assert decoder.buffered == FRAME_HEADER_BYTES - 1
    assert decoder.feed(raw[FRAME_HEADER_BYTES - 1:-1]) == []
    assert decoder.feed(b"") == []
    assert decoder.feed(raw[-1:]) == [Frame(Kind.RESPONSE, 7, b"hello")]
    assert decoder.buffered == 0


def test_a_body_of_exactly_the_limit_is_a_frame() -> None:
    decoder = FrameDecoder(body_bytes_max=10)
    assert decoder.feed(encode_frame(Kind.PUSH, 3, b"x" * 10)) == [Frame(Kind.PUSH, 3, b"x" * 10)]
    assert decoder.feed(encode_frame(Kind.PUSH, 4, b"x" * 11)) == [OversizedFrame(Kind.PUSH, 4, 11)]


def test_the_default_limit_is_the_protocol_limit() -> None:
    assert FrameDecoder().body_bytes_max == FRAME_BODY_BYTES_MAX
    header = HEADER.pack(FRAME_BODY_BYTES_MAX + 1, 9, Kind.REQUEST, 0, 0, 0)
    assert FrameDecoder().feed(header) == [OversizedFrame(Kind.REQUEST, 9, FRAME_BODY_BYTES_MAX + 1)]


# ---------------------------------------------------------------- oversized frames


@st.composite
def frames_some_oversized(draw: st.DrawFn, limit: int) -> tuple[bytes, list[Frame | OversizedFrame]]:
    """Frames of which some have a body over ``limit``: (their bytes, what a decoder reports)."""
    n = draw(st.integers(0, 12))
    raw = []
    want: list[Frame | OversizedFrame] = []
    for _ in range(n):
        kind = draw(st.sampled_from(list(Kind)))
        rid = draw(ids)
        if kind not in BODYLESS and draw(st.booleans()):
            length = draw(st.integers(limit + 1, limit + 3000))
            # bodies that look like headers: the decoder must skip them, not parse them
            body = draw(st.sampled_from([b"\xff", b"\x00", encode_frame(Kind.CANCEL, 1)[:8]])) * length
            body = body[:length]
            raw.append(HEADER.pack(length, rid, kind, 0, 0, 0) + body)
            want.append(OversizedFrame(kind, rid, length))
        else:
            body = b"" if kind in BODYLESS else draw(st.binary(max_size=limit))
            credit = draw(credits)
            raw.append(encode_frame(kind, rid, body, credit))
            want.append(Frame(kind, rid, body, credit))
    return b"".join(raw), want


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_oversized_frames_are_reported_and_skipped(data: st.DataObject) -> None:
    limit = data.draw(st.integers(0, 300), label="limit")
    stream, want = data.draw(frames_some_oversized(limit))
    sizes = data.draw(piece_sizes, label="sizes")
    decoder = FrameDecoder(body_bytes_max=limit)
    got = decode_all(decoder, pieces(stream, sizes), bound=FRAME_HEADER_BYTES + limit)
    assert got == want
    assert decoder.buffered == 0


def test_an_oversized_body_across_many_feeds_is_skipped() -> None:
    limit = 32
    decoder = FrameDecoder(body_bytes_max=limit)
    length = 100_000
    header = HEADER.pack(length, 41, Kind.REQUEST, 0, 0, 0)
    # reported as soon as its header is in, before any of its body
    assert decoder.feed(header) == [OversizedFrame(Kind.REQUEST, 41, length)]
    body = b"\x09" * length  # would be an unknown kind if it were parsed
    for i in range(0, length - 500, 500):
        assert decoder.feed(body[i:i + 500]) == []
        assert decoder.buffered == 0
    after = encode_frame(Kind.REQUEST, 42, b"next") + encode_frame(Kind.CREDIT, 42, b"", 5)
    tail = body[length - (length % 500 or 500):] + after
    assert decoder.feed(tail[:-3]) == [Frame(Kind.REQUEST, 42, b"next")]
    assert decoder.buffered <= FRAME_HEADER_BYTES + limit
    assert decoder.feed(tail[-3:]) == [Frame(Kind.CREDIT, 42, b"", 5)]
    assert decoder.buffered == 0


def test_oversized_frames_back_to_back_in_one_feed() -> None:
    decoder = FrameDecoder(body_bytes_max=4)
    stream = (encode_frame(Kind.PUSH, 1, b"12345") + encode_frame(Kind.END, 2, b"123456")
              + encode_frame(Kind.RESPONSE, 3, b"1234") + encode_frame(Kind.REQUEST, 4, b"x" * 50))
    assert decoder.feed(stream) == [OversizedFrame(Kind.PUSH, 1, 5), OversizedFrame(Kind.END, 2, 6),
                                    Frame(Kind.RESPONSE, 3, b"1234"), OversizedFrame(Kind.REQUEST, 4, 50)]
    assert decoder.buffered == 0
    assert decoder.feed(encode_frame(Kind.CANCEL, 5)) == [Frame(Kind.CANCEL, 5)]


def test_buffered_stays_under_the_limit_while_a_large_legal_body_arrives() -> None:
    limit = 1000
    decoder = FrameDecoder(body_bytes_max=limit)
    raw = encode_frame(Kind.REQUEST, 1, b"y" * limit)
    got = []
    for i in range(0, len(raw), 7):
        got += decoder.feed(raw[i:i + 7])
        assert decoder.buffered <= FRAME_HEADER_BYTES + limit
    assert got == [Frame(Kind.REQUEST, 1, b"y" * limit)]
    assert decoder.buffered == 0


# ---------------------------------------------------------------- not the framing


def _header(kind: int = Kind.REQUEST, flags: int = 0, reserved: int = 0, length: int = 0) -> bytes:
    return HEADER.pack(length, 1, kind, flags, reserved, 0)


@pytest.mark.parametrize("kind", [0, 7, 0x7F, 0xFF])
def test_an_unknown_kind_is_a_protocol_error(kind: int) -> None:
    decoder = FrameDecoder()
    assert decoder.feed(encode_frame(Kind.REQUEST, 1, b"ok")) == [Frame(Kind.REQUEST, 1, b"ok")]
    raw = _header(kind)
    assert decoder.feed(raw[:-1]) == []  # nothing is decided before the header is complete
    with pytest.raises(ProtocolError, match="kind"):
        decoder.feed(raw[-1:])


def test_nonzero_flags_are_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="flags"):
        FrameDecoder().feed(_header(flags=1))


def test_nonzero_reserved_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="reserved"):
        FrameDecoder().feed(_header(reserved=0x100))


def test_a_cancel_with_a_body_is_a_protocol_error() -> None:
    # refused on its header alone, before any of its body arrives
    with pytest.raises(ProtocolError, match="CANCEL"):
        FrameDecoder().feed(_header(Kind.CANCEL, length=3))


def test_a_credit_with_a_body_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="CREDIT"):
        FrameDecoder().feed(_header(Kind.CREDIT, length=1) + b"x")


def test_a_bodyless_frame_is_refused_even_over_the_limit() -> None:
    # a huge announced length on a CANCEL is not the framing, not an oversized request
    with pytest.raises(ProtocolError):
        FrameDecoder(body_bytes_max=8).feed(_header(Kind.CANCEL, length=1 << 30))
