"""Property tests for the record-batch codec (DESIGN.md §4, docs/format.md).

``build_batch`` and ``decode_records`` are inverses; ``validate_batch`` accepts every built
batch and notices any single damaged byte in the CRC-covered region; ``decode_records``
refuses malformed record sections with :class:`InvalidBatchError` (never IndexError or
struct.error) and bounds what a gzip section may expand to.
"""

from __future__ import annotations

import hashlib
import struct
import tracemalloc
import zlib

import crc32c
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kolk.segments import (
    CODEC_GZIP,
    CODEC_NONE,
    CrcMismatchError,
    InvalidBatchError,
    Record,
    TruncatedBatchError,
    build_batch,
    decode_records,
    parse_header,
    validate_batch,
)
from kolk.segments.batch import CRC_START, HEADER_SIZE, check_header

BIG = 1 << 30  # a batch_bytes_max that never limits these tests
REC_HEAD = struct.Struct("<IBqIi")  # length, attributes, timestamp_delta, offset_delta, key_length

# Timestamps stay where every delta fits the i64 timestamp_delta field.
TS = st.integers(min_value=-(2**61), max_value=2**61)
KEYS = st.none() | st.binary(max_size=48)
HEADERS = st.lists(
    st.tuples(st.text(max_size=12), st.none() | st.binary(max_size=16)), max_size=4
).map(tuple)
RECORDS = st.lists(st.tuples(KEYS, KEYS, HEADERS), min_size=1, max_size=16)
CODECS = st.sampled_from([CODEC_NONE, CODEC_GZIP])


@st.composite
def batches(draw: st.DrawFn) -> tuple[bytes, dict]:
    """A built batch and everything that went into it."""
    records = draw(RECORDS)
    codec = draw(CODECS)
    args = dict(
        base_offset=draw(st.integers(0, 2**62)),
        leader_epoch=draw(st.integers(0, 2**31 - 1)),
        codec=codec,
        control=draw(st.booleans()),
        producer_id=draw(st.integers(-1, 2**62)),
        producer_epoch=draw(st.integers(-1, 2**15 - 1)),
        base_sequence=draw(st.integers(-1, 2**31 - 1)),
    )
    if draw(st.booleans()):
        timestamps = draw(st.lists(TS, min_size=len(records), max_size=len(records)))
        args["timestamps"] = timestamps
    else:
        first = draw(TS)
        args["first_timestamp"] = first
        timestamps = [first] * len(records)
    raw = build_batch(records, **args)
    return raw, dict(args, records=records, timestamps=timestamps)


def _recrc(buf: bytearray, pos: int = 0) -> None:
    """Recompute the CRC of the batch at ``pos`` in place (its batch_length must be right)."""
    h = parse_header(buf, pos)
    struct.pack_into("<I", buf, pos + 17, crc32c.crc32c(bytes(buf[pos + CRC_START : pos + h.size])))


def _with_body(template: bytes, body: bytes, *, record_count: int | None = None,
               codec: int | None = None) -> bytes:
    """``template``'s header over a new records section, with batch_length and CRC fixed."""
    out = bytearray(template[:HEADER_SIZE]) + body
    struct.pack_into("<i", out, 8, HEADER_SIZE - 12 + len(body))
    if record_count is not None:
        struct.pack_into("<i", out, 57, record_count)
        struct.pack_into("<i", out, 23, max(record_count - 1, 0))
    if codec is not None:
        struct.pack_into("<h", out, 21, codec)
    _recrc(out)
    return bytes(out)


def _gzip(data: bytes) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, 31)
    return c.compress(data) + c.flush()


# --------------------------------------------------------------------------- round trip


@settings(max_examples=300, deadline=None)
@given(batches())
def test_build_then_decode_gives_back_the_records(built: tuple[bytes, dict]) -> None:
    """decode_records(build_batch(records)) returns exactly the records, with offsets counted
    from base_offset and the timestamps that were given, for codec none and gzip, for null
    and empty keys/values, unicode header names and null header values."""
    raw, args = built
    expected = [
        Record(args["base_offset"] + i, ts, key, value, tuple(headers))
        for i, ((key, value, headers), ts) in enumerate(zip(args["records"], args["timestamps"]))
    ]
    assert decode_records(raw) == expected
    # The same batch inside a larger buffer decodes the same at its position.
    prefix = b"\xaa" * 13
    assert decode_records(prefix + raw + b"\x55" * 7, len(prefix)) == expected


@settings(max_examples=300, deadline=None)
@given(batches())
def test_validate_batch_accepts_every_built_batch(built: tuple[bytes, dict]) -> None:
    """validate_batch accepts every batch build_batch makes, and its header reports the
    fields the builder was given (count, offsets, timestamps, codec, control, producer)."""
    raw, args = built
    n = len(args["records"])
    ts = args["timestamps"]
    h = validate_batch(raw, 0, len(raw))
    assert h.size == len(raw)
    assert h.base_offset == args["base_offset"]
    assert h.leader_epoch == args["leader_epoch"]
    assert h.magic == 1
    assert h.record_count == n
    assert h.last_offset_delta == n - 1
    assert h.next_offset == args["base_offset"] + n
    assert h.first_timestamp == ts[0]
    assert h.max_timestamp == max(ts)
    assert h.codec == args["codec"]
    assert h.is_control == args["control"]
    assert (h.producer_id, h.producer_epoch, h.base_sequence) == (
        args["producer_id"], args["producer_epoch"], args["base_sequence"])
    # At a position inside a larger buffer, too.
    assert validate_batch(b"\x00" * 5 + raw + b"\xff" * 3, 5, len(raw)) == h
    # One byte over the limit is refused.
    with pytest.raises(InvalidBatchError, match="batch_bytes_max"):
        validate_batch(raw, 0, len(raw) - 1)


@settings(max_examples=100, deadline=None)
@given(records=RECORDS, first=TS, data=st.data())
def test_header_max_timestamp_is_the_records_max(records: list, first: int, data: st.DataObject) -> None:
    """Given both first_timestamp and per-record timestamps, build_batch either refuses the
    combination or writes a header whose max_timestamp is the largest record timestamp
    (docs/format.md: 'the largest record timestamp in the batch'); the time index and
    retention trust that field, and the server never decodes records to check it."""
    stamps = data.draw(st.lists(TS, min_size=len(records), max_size=len(records)), label="timestamps")
    try:
        raw = build_batch(records, first_timestamp=first, timestamps=stamps)
    except (ValueError, InvalidBatchError):
        return
    h = validate_batch(raw, 0, BIG)
    got = [r.timestamp for r in decode_records(raw)]
    assert got == stamps
    assert h.max_timestamp == max(got), f"header max_timestamp {h.max_timestamp}, records {got}"


@settings(max_examples=200, deadline=None)
@given(built=batches(), data=st.data())
def test_any_flipped_byte_in_the_crc_region_is_refused(built: tuple[bytes, dict], data: st.DataObject) -> None:
    """Changing any single byte in [21, end) makes validate_batch raise: CrcMismatchError
    unless a header field check (another InvalidBatchError subclass) fires first."""
    raw, _ = built
    i = data.draw(st.integers(CRC_START, len(raw) - 1), label="position")
    mask = data.draw(st.integers(1, 255), label="xor mask")
    bad = bytearray(raw)
    bad[i] ^= mask
    header_ok = True
    try:
        check_header(parse_header(bad), 0, BIG)
    except InvalidBatchError:
        header_ok = False
    with pytest.raises(InvalidBatchError) as info:
        validate_batch(bytes(bad), 0, BIG)
    if header_ok:
        assert type(info.value) is CrcMismatchError
        assert "CRC" in str(info.value)


@pytest.mark.parametrize("codec", [CODEC_NONE, CODEC_GZIP], ids=["none", "gzip"])
def test_every_byte_and_bit_of_a_batch_is_covered(codec: int) -> None:
    """Exhaustively: for one small batch, every single-bit flip and every 0xff-xor of each
    byte in [21, end) is refused by validate_batch, as CrcMismatchError whenever the header
    checks pass."""
    raw = build_batch(
        [(b"key", b"value", (("h\u00e9", b"1"), ("n", None))), (None, b""), (b"", None)],
        timestamps=[1_700_000_000_000, 1_700_000_000_007, 1_699_999_999_000], codec=codec)
    validate_batch(raw, 0, BIG)
    crc_errors = 0
    for i in range(CRC_START, len(raw)):
        for mask in [1 << b for b in range(8)] + [0xFF]:
            bad = bytearray(raw)
            bad[i] ^= mask
            with pytest.raises(InvalidBatchError) as info:
                validate_batch(bytes(bad), 0, BIG)
            try:
                check_header(parse_header(bad), 0, BIG)
            except InvalidBatchError:
                continue
            assert type(info.value) is CrcMismatchError, (i, mask, info.value)
            crc_errors += 1
    assert crc_errors > (len(raw) - HEADER_SIZE) * 9  # every records-section flip is a CRC error


def test_truncated_batch_is_refused_at_every_length() -> None:
    """Every proper prefix of a batch is refused by validate_batch as TruncatedBatchError."""
    raw = build_batch([(b"k", b"v" * 40), (None, None)], first_timestamp=5)
    for n in range(len(raw)):
        with pytest.raises(TruncatedBatchError, match="truncated"):
            validate_batch(raw[:n], 0, BIG)


# --------------------------------------------------------------------------- malformed records


_TEMPLATE = build_batch([(b"k", b"v")], first_timestamp=1_000)


def _rec(key: bytes | None, value: bytes | None, headers: bytes = struct.pack("<I", 0), *,
         length_adjust: int = 0, klen: int | None = None, vlen: int | None = None) -> bytes:
    """One record in the wire layout with optionally lying length fields."""
    kl = (-1 if key is None else len(key)) if klen is None else klen
    vl = (-1 if value is None else len(value)) if vlen is None else vlen
    rest = (key or b"") + struct.pack("<i", vl) + (value or b"") + headers
    length = REC_HEAD.size - 4 + len(rest) + length_adjust
    return REC_HEAD.pack(length, 0, 0, 0, kl) + rest


def _hdrs(*items: tuple[bytes, int, bytes]) -> bytes:
    """Encoded headers from (name bytes, value_length, value bytes) with lying lengths allowed."""
    out = struct.pack("<I", len(items))
    for name, vl, value in items:
        out += struct.pack("<I", len(name)) + name + struct.pack("<i", vl) + value
    return out


_NOISE = b"".join(hashlib.sha256(bytes([i])).digest() for i in range(20))  # incompressible

MALFORMED = {
    "empty section": (b"", 1, "truncated"),
    "shorter than a record head": (_rec(b"k", b"v")[:10], 1, "truncated"),
    "record length past the section": (_rec(b"k", b"v", length_adjust=5), 1, "length"),
    "record length below the minimum": (
        struct.pack("<I", 10) + _rec(b"k", b"v")[4:], 1, "length 10"),
    "record length 0xffffffff": (
        struct.pack("<I", 0xFFFFFFFF) + _rec(b"k", b"v")[4:], 1, "length 4294967295"),
    "key length -2": (_rec(b"k", b"v", klen=-2), 1, "key length"),
    "key length past the record": (_rec(b"k", b"v", klen=200), 1, "key length"),
    "key length i32 max": (_rec(b"k", b"v", klen=2**31 - 1), 1, "key length"),
    "value length -7": (_rec(b"k", b"v", vlen=-7), 1, "value length"),
    "value length past the record": (_rec(b"k", b"v", vlen=99), 1, "value length"),
    "header count past the record": (
        _rec(b"k", b"v", struct.pack("<I", 2**32 - 1)), 1, "headers"),
    "header name length past the record": (
        _rec(b"k", b"v", struct.pack("<II", 1, 1000) + b"ab" + struct.pack("<i", -1)), 1, "header key length"),
    "header name not utf-8": (_rec(b"k", b"v", _hdrs((b"\xff\xfe", -1, b""))), 1, "UTF-8"),
    "header value length -3": (_rec(b"k", b"v", _hdrs((b"n", -3, b""))), 1, "header value length"),
    "header value length past the record": (
        _rec(b"k", b"v", _hdrs((b"n", 50, b"xy"))), 1, "header value length"),
    "bytes past a record's fields": (
        _rec(b"k", b"v", struct.pack("<I", 0) + b"zz"), 1, "past its fields"),
    "bytes after the last record": (_rec(b"k", b"v") + b"\x00\x01", 1, "after its 1 records"),
    "fewer records than record_count": (_rec(b"k", b"v") + _rec(None, None), 3, "record 2"),
    "gzip: not a gzip stream": (b"this is not gzip at all", 1, "gzip"),
    "gzip: deflate data cut short": (_gzip(_rec(b"k", _NOISE))[: len(_NOISE) // 2], 1, "gzip"),
    "gzip: bad stream checksum": (
        (lambda g: g[:-8] + bytes([g[-8] ^ 1]) + g[-7:])(_gzip(_rec(b"k", b"v"))), 1, "gzip"),
}


@pytest.mark.parametrize("case", list(MALFORMED), ids=list(MALFORMED))
def test_malformed_record_section_is_invalid_batch_error(case: str) -> None:
    """A records section with lying lengths, bad UTF-8, leftovers, too few records or a broken
    gzip stream makes decode_records raise InvalidBatchError (naming the problem), never
    IndexError, struct.error or UnicodeDecodeError, while the CRC is fine."""
    body, count, words = MALFORMED[case]
    codec = CODEC_GZIP if case.startswith("gzip") else CODEC_NONE
    raw = _with_body(_TEMPLATE, body, record_count=count, codec=codec)
    validate_batch(raw, 0, BIG)  # the damage is inside the records, behind a good CRC
    with pytest.raises(InvalidBatchError, match=words):
        decode_records(raw)


@pytest.mark.parametrize("case", ["stream without its trailer", "junk after the stream"])
def test_malformed_gzip_stream_is_refused(case: str) -> None:
    """A gzip records section that is not one whole RFC 1952 stream (docs/format.md: codec 1
    is 'an RFC 1952 stream') is refused: a stream cut before its CRC-32/ISIZE trailer, or one
    followed by bytes that are no gzip member, must not decode as if it were whole."""
    stream = _gzip(_rec(b"k", b"value"))
    body = stream[:-8] if case == "stream without its trailer" else stream + b"JUNK"
    raw = _with_body(_TEMPLATE, body, record_count=1, codec=CODEC_GZIP)
    validate_batch(raw, 0, BIG)
    with pytest.raises(InvalidBatchError, match="gzip"):
        decode_records(raw)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(built=batches(), data=st.data())
def test_random_damage_to_records_never_escapes_as_another_error(
        built: tuple[bytes, dict], data: st.DataObject) -> None:
    """Overwriting, cutting or extending the (uncompressed or gzip) records section, and
    lying about record_count, gives decode_records either a list of records or an
    InvalidBatchError: never IndexError, struct.error, UnicodeDecodeError, zlib.error..."""
    raw, args = built
    body = bytearray(raw[HEADER_SIZE:])
    if args["codec"] == CODEC_GZIP and data.draw(st.booleans(), label="damage the plain section"):
        # Damage the decompressed records and compress them again, so the damage gets past
        # zlib and reaches the record parser.
        body = bytearray(zlib.decompress(bytes(body), 31))
        recompress = True
    else:
        recompress = False
    for _ in range(data.draw(st.integers(1, 4), label="edits")):
        kind = data.draw(st.sampled_from(["set", "cut", "extend"]), label="kind")
        if kind == "set" and body:
            i = data.draw(st.integers(0, len(body) - 1), label="at")
            body[i] = data.draw(st.integers(0, 255), label="byte")
        elif kind == "cut" and body:
            del body[data.draw(st.integers(0, len(body) - 1), label="cut at"):]
        else:
            body += data.draw(st.binary(min_size=1, max_size=8), label="tail")
    if recompress:
        body = bytearray(_gzip(bytes(body)))
    count = data.draw(st.integers(-2, len(args["records"]) + 2), label="record_count")
    bad = _with_body(raw, bytes(body))
    bad = bytearray(bad)
    struct.pack_into("<i", bad, 57, count)
    _recrc(bad)
    try:
        out = decode_records(bytes(bad))
    except InvalidBatchError:
        return
    assert isinstance(out, list) and all(isinstance(r, Record) for r in out)


@settings(max_examples=100, deadline=None)
@given(built=batches(), cut=st.integers(0, 200))
def test_decode_of_a_cut_buffer_is_invalid_batch_error(built: tuple[bytes, dict], cut: int) -> None:
    """decode_records on a buffer that ends before the batch does raises InvalidBatchError."""
    raw, _ = built
    n = max(0, len(raw) - 1 - cut)
    with pytest.raises(InvalidBatchError):
        decode_records(raw[:n])


# --------------------------------------------------------------------------- decompression bomb


def _bomb(plain_bytes: int) -> tuple[bytes, int]:
    """A gzip batch of one record whose value is ``plain_bytes`` zeros, compressed streaming
    (the plain section is never held in memory). Returns the batch and its plain size."""
    head = REC_HEAD.pack(REC_HEAD.size - 4 + 4 + plain_bytes + 4, 0, 0, 0, -1)
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts = [c.compress(head + struct.pack("<i", plain_bytes))]
    chunk = bytes(1 << 20)
    left = plain_bytes
    while left:
        n = min(left, len(chunk))
        parts.append(c.compress(chunk[:n]))
        left -= n
    parts.append(c.compress(struct.pack("<I", 0)))
    parts.append(c.flush())
    plain = len(head) + 4 + plain_bytes + 4
    return _with_body(_TEMPLATE, b"".join(parts), record_count=1, codec=CODEC_GZIP), plain


def test_gzip_bomb_is_bounded_by_records_bytes_max() -> None:
    """A ~60 KiB gzip batch that would expand to 64 MiB is refused with InvalidBatchError
    naming the limit, and decoding it allocates about records_bytes_max, not 64 MiB."""
    bomb, plain = _bomb(64 << 20)
    assert len(bomb) < 256 << 10
    validate_batch(bomb, 0, BIG)
    limit = 1 << 20
    tracemalloc.start()
    try:
        with pytest.raises(InvalidBatchError, match=f"limit of {limit} bytes"):
            decode_records(bomb, records_bytes_max=limit)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * limit, f"decoding the bomb allocated {peak} bytes"


def test_gzip_limit_is_exact() -> None:
    """A gzip section that expands to exactly records_bytes_max decodes; one byte less of
    limit refuses it."""
    bomb, plain = _bomb(100_000)
    (rec,) = decode_records(bomb, records_bytes_max=plain)
    assert rec.value == bytes(100_000) and rec.key is None
    with pytest.raises(InvalidBatchError, match="limit"):
        decode_records(bomb, records_bytes_max=plain - 1)


def test_unknown_and_unavailable_codecs_are_invalid_batch_error() -> None:
    """validate_batch and decode_records refuse a batch whose codec is reserved (2 snappy,
    3 lz4) or unassigned (5-7) with InvalidBatchError naming the codec; decode_records also
    refuses zstd (4), which this build cannot decompress, with InvalidBatchError."""
    for codec in (2, 3, 5, 6, 7):
        raw = _with_body(_TEMPLATE, _TEMPLATE[HEADER_SIZE:], record_count=1, codec=codec)
        with pytest.raises(InvalidBatchError, match=f"codec {codec}"):
            validate_batch(raw, 0, BIG)
        with pytest.raises(InvalidBatchError, match="codec"):
            decode_records(raw)
    zstd = _with_body(_TEMPLATE, b"\x28\xb5\x2f\xfd" + bytes(8), record_count=1, codec=4)
    validate_batch(zstd, 0, BIG)
    with pytest.raises(InvalidBatchError, match="zstd"):
        decode_records(zstd)
