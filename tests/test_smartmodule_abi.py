"""Property tests of the SmartModule ABI's pure functions (smartmodule/abi.py).

``check_output`` accepts exactly the well-formed outputs of docs/smartmodule-abi.md: a
records section in the format of docs/format.md (after the accumulator, for an aggregate)
whose records ``decode_records`` decodes, with attributes 0 and offset deltas that are
strictly increasing (filter, map, filter_map) or non-decreasing (array_map, aggregate) and at
most the input's last. Anything else, including any damaged byte, is AbiError("badOutput"),
never another exception. ``encode_params`` round-trips and enforces its limits; ``renumber``
sets the deltas to 0..n-1 and keeps every other byte.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kolk.segments import InvalidBatchError, Record, decode_records
from kolk.segments.records import encode_batch
from kolk.smartmodule.abi import (
    CALL_HEAD,
    KINDS,
    PARAM_CHARS_MAX,
    PARAMS_MAX,
    STRICT_KINDS,
    AbiError,
    check_output,
    encode_call,
    encode_params,
    renumber,
    split_result,
)

BASE = 1_000
FIRST_TS = 1_700_000_000_000

# --- encoding records (docs/format.md, written independently of kolk.segments) -----------

headers_st = st.lists(st.tuples(st.text(max_size=4), st.none() | st.binary(max_size=5)), max_size=3).map(tuple)
record_st = st.tuples(
    st.integers(-(2**40), 2**40),  # timestamp delta
    st.none() | st.binary(max_size=8),  # key
    st.none() | st.binary(max_size=12),  # value
    headers_st,
)


def encode_record(delta: int, ts: int, key: bytes | None, value: bytes | None, headers, attributes: int = 0) -> bytes:
    body = struct.pack("<BqI", attributes, ts, delta)
    for raw in (key, value):
        body += struct.pack("<i", -1) if raw is None else struct.pack("<i", len(raw)) + raw
    body += struct.pack("<I", len(headers))
    for name, raw in headers:
        nb = name.encode()
        body += struct.pack("<I", len(nb)) + nb
        body += struct.pack("<i", -1) if raw is None else struct.pack("<i", len(raw)) + raw
    return struct.pack("<I", len(body)) + body


def encode_output(kind: str, records, deltas, accumulator: bytes | None) -> tuple[bytes, bytes]:
    """(the whole output, its records section)."""
    sect = b"".join(encode_record(d, *r) for d, r in zip(deltas, records))
    head = struct.pack("<I", len(accumulator)) + accumulator if kind == "aggregate" else b""
    return head + struct.pack("<I", len(records)) + sect, sect


def decoded(sect: bytes, count: int, last: int) -> list[Record]:
    return decode_records(encode_batch(sect, count, first_timestamp=FIRST_TS, max_timestamp=FIRST_TS,
                                       base_offset=BASE, last_offset_delta=last))


def ordered(kind: str, deltas: list[int], last: int) -> bool:
    if any(d > last for d in deltas):
        return False
    pairs = list(zip(deltas, deltas[1:]))
    return all(a < b for a, b in pairs) if kind in STRICT_KINDS else all(a <= b for a, b in pairs)


@st.composite
def outputs(draw):
    """(kind, records, deltas, last, accumulator): deltas that follow the kind's rules, then
    perhaps broken (swapped, repeated, or past the input's last)."""
    kind = draw(st.sampled_from(KINDS))
    records = draw(st.lists(record_st, max_size=6))
    n = len(records)
    if kind in STRICT_KINDS:
        deltas = sorted(draw(st.sets(st.integers(0, 40), min_size=n, max_size=n)))
    else:
        deltas = sorted(draw(st.lists(st.integers(0, 40), min_size=n, max_size=n)))
    last = draw(st.integers(max(deltas, default=0), 45))
    if n and draw(st.booleans()):
        i = draw(st.integers(0, n - 1))
        how = draw(st.sampled_from(["swap", "repeat", "past", "any"]))
        if how == "swap" and n > 1:
            j = draw(st.integers(0, n - 1))
            deltas[i], deltas[j] = deltas[j], deltas[i]
        elif how == "repeat" and i > 0:
            deltas[i] = deltas[i - 1]
        elif how == "past":
            deltas[i] = last + draw(st.sampled_from([1, 2]) | st.integers(1, 2**32 - 1 - last))
        else:
            deltas[i] = draw(st.integers(0, 2**32 - 1))
    accumulator = draw(st.binary(max_size=10)) if kind == "aggregate" else None
    return kind, records, deltas, last, accumulator


def fields(kind: str, out: bytes) -> list[tuple[int, str, str]]:
    """Where the length, count and delta fields of a well-formed ``out`` are: (position, pack
    format, name), for damage aimed at them."""
    found, pos = [], 0
    if kind == "aggregate":
        found.append((0, "<I", "accumulator_length"))
        pos = 4 + struct.unpack_from("<I", out)[0]
    found.append((pos, "<I", "record_count"))
    pos += 4
    while pos < len(out):
        (length,) = struct.unpack_from("<I", out, pos)
        end = pos + 4 + length
        found += [(pos, "<I", "length"), (pos + 4, "<B", "attributes"), (pos + 13, "<I", "offset_delta"),
                  (pos + 17, "<i", "key_length")]
        p = pos + 21 + max(struct.unpack_from("<i", out, pos + 17)[0], 0)
        found.append((p, "<i", "value_length"))
        p += 4 + max(struct.unpack_from("<i", out, p)[0], 0)
        found.append((p, "<I", "header_count"))
        (headers,) = struct.unpack_from("<I", out, p)
        p += 4
        for _ in range(headers):
            found.append((p, "<I", "header_key_length"))
            p += 4 + struct.unpack_from("<I", out, p)[0]
            found.append((p, "<i", "header_value_length"))
            p += 4 + max(struct.unpack_from("<i", out, p)[0], 0)
        assert p == end
        pos = end
    return found


# --- an oracle for any bytes at all ---------------------------------------------------------


def oracle(kind: str, out: bytes, last: int):
    """What check_output must return for ``out`` (section, count, accumulator, max delta), or
    None when it must refuse it: decided with decode_records, not with abi.py."""
    pos, accumulator = 0, None
    if kind == "aggregate":
        if len(out) < 4:
            return None
        (alen,) = struct.unpack_from("<I", out)
        if 4 + alen > len(out):
            return None
        accumulator, pos = out[4:4 + alen], 4 + alen
    if pos + 4 > len(out):
        return None
    (count,) = struct.unpack_from("<I", out, pos)
    sect = out[pos + 4:]
    if count * 29 > len(sect):  # a record takes 29 bytes at least
        return None
    try:
        decoded(sect, count, 0)
    except InvalidBatchError:
        return None
    deltas, p = [], 0
    for _ in range(count):
        (length,) = struct.unpack_from("<I", sect, p)
        if sect[p + 4] != 0:  # attributes
            return None
        deltas.append(struct.unpack_from("<I", sect, p + 13)[0])
        p += 4 + length
    if not ordered(kind, deltas, last):
        return None
    return sect, count, accumulator, deltas[-1] if deltas else -1


def check(kind: str, out: bytes, last: int):
    """check_output, held to the oracle: same verdict, same result, only badOutput."""
    want = oracle(kind, out, last)
    try:
        got = check_output(kind, out, last)
    except AbiError as e:
        assert e.reason == "badOutput"
        assert str(e)
        assert want is None, f"refused a well-formed output: {e}"
        return None
    assert want is not None, f"accepted an ill-formed output: {got}"
    assert (got.records, got.record_count, got.accumulator, got.max_offset_delta) == want
    return got


# --- check_output ---------------------------------------------------------------------------


@settings(max_examples=300)
@given(outputs())
def test_check_output_accepts_exactly_the_well_formed(case) -> None:
    kind, records, deltas, last, accumulator = case
    out, sect = encode_output(kind, records, deltas, accumulator)
    got = check(kind, out, last)
    if not ordered(kind, deltas, last):
        assert got is None
        return
    assert got is not None
    assert got.records == sect and got.record_count == len(records) and got.accumulator == accumulator
    assert got.max_offset_delta == (deltas[-1] if deltas else -1)
    assert decoded(got.records, got.record_count, last) == [
        Record(BASE + d, FIRST_TS + ts, key, value, headers)
        for d, (ts, key, value, headers) in zip(deltas, records)]


@settings(max_examples=400)
@given(outputs(), st.data())
def test_check_output_on_damaged_bytes(case, data) -> None:
    kind, records, deltas, last, accumulator = case
    out = bytearray(encode_output(kind, records, deltas, accumulator)[0])
    how = data.draw(st.sampled_from(["byte", "byte", "truncate", "extend", "field", "field", "slack"]))
    if how == "byte":
        i = data.draw(st.integers(0, len(out) - 1))
        out[i] = data.draw(st.integers(0, 255).filter(lambda b: b != out[i]))
    elif how == "truncate":
        del out[data.draw(st.integers(0, len(out) - 1)):]
    elif how == "extend":
        out += data.draw(st.binary(min_size=1, max_size=40))
    elif how == "field":  # a length, count, attributes or delta field that lies
        at, fmt, _ = data.draw(st.sampled_from(fields(kind, bytes(out))))
        (old,) = struct.unpack_from(fmt, out, at)
        lo, hi = {"<B": (0, 255), "<I": (0, 2**32 - 1), "<i": (-(2**31), 2**31 - 1)}[fmt]
        new = data.draw(st.sampled_from([old - 2, old - 1, old + 1, old + 2, -2, -1, 0, 1, 2**31 - 1, 2**31, 2**32 - 1])
                        .filter(lambda v: lo <= v <= hi) | st.integers(lo, hi))
        struct.pack_into(fmt, out, at, new)
    else:  # a record whose length covers bytes its fields do not use
        starts = [at for at, _, name in fields(kind, bytes(out)) if name == "length"]
        if not starts:
            return
        at = data.draw(st.sampled_from(starts))
        (length,) = struct.unpack_from("<I", out, at)
        k = data.draw(st.integers(1, 4))
        struct.pack_into("<I", out, at, length + k)
        out[at + 4 + length:at + 4 + length] = data.draw(st.binary(min_size=k, max_size=k))
    check(kind, bytes(out), last)


SAMPLE = [(5, b"k", b"val", (("h", b"x"), ("\u00e9", None))), (-1, None, None, ()), (0, b"", b"", ())]
SAMPLE_DELTAS = [0, 1, 3]


def interesting(fmt: str, old: int) -> list[int]:
    lo, hi = {"<B": (0, 255), "<I": (0, 2**32 - 1), "<i": (-(2**31), 2**31 - 1)}[fmt]
    values = {old - 2, old - 1, old + 1, old + 2, old + 30, -2, -1, 0, 1, 2**31 - 1, 2**31, 2**32 - 1, -(2**31)}
    return sorted(v for v in values if lo <= v <= hi and v != old)


@pytest.mark.parametrize("kind", KINDS)
def test_check_output_on_every_damaged_field_and_byte(kind: str) -> None:
    """Every field of a sample output set to every interesting value, every byte to a few
    others, every truncation, slack in every record: check_output agrees with the oracle."""
    out, _ = encode_output(kind, SAMPLE, SAMPLE_DELTAS, b"acc" if kind == "aggregate" else None)
    assert check(kind, out, 3) is not None
    refused = 0
    for at, fmt, _ in fields(kind, out):
        (old,) = struct.unpack_from(fmt, out, at)
        for new in interesting(fmt, old):
            bad = bytearray(out)
            struct.pack_into(fmt, bad, at, new)
            refused += check(kind, bytes(bad), 3) is None
    for i, b in enumerate(out):
        for new in {0, 0x01, 0x7F, 0x80, 0xFE, 0xFF, b ^ 1, (b + 1) % 256} - {b}:
            bad = bytearray(out)
            bad[i] = new
            refused += check(kind, bytes(bad), 3) is None
    for n in range(len(out)):
        assert check(kind, out[:n], 3) is None
    for at, _, name in fields(kind, out):
        if name == "length":
            (length,) = struct.unpack_from("<I", out, at)
            for k in (1, 4):
                bad = bytearray(out)
                struct.pack_into("<I", bad, at, length + k)
                bad[at + 4 + length:at + 4 + length] = bytes(k)
                assert check(kind, bytes(bad), 3) is None
    assert refused > 100


@given(st.sampled_from(KINDS), st.binary(max_size=80), st.integers(0, 2**32 - 1))
def test_check_output_on_noise(kind: str, out: bytes, last: int) -> None:
    check(kind, out, last)


@given(st.sampled_from(KINDS), st.lists(record_st, min_size=1, max_size=3), st.integers(1, 255))
def test_check_output_refuses_attributes(kind: str, records, attributes: int) -> None:
    sect = b"".join(encode_record(i, *r, attributes=attributes if i == len(records) - 1 else 0)
                    for i, r in enumerate(records))
    out = (b"\0\0\0\0" if kind == "aggregate" else b"") + struct.pack("<I", len(records)) + sect
    with pytest.raises(AbiError) as info:
        check_output(kind, out, 10)
    assert info.value.reason == "badOutput" and f"attributes {attributes}" in str(info.value)
    assert info.value.record_index == len(records) - 1


def test_check_output_refuses_a_header_name_that_is_not_utf8() -> None:
    rec = bytearray(encode_record(0, 0, None, b"v", (("ab", b"x"),)))
    rec[rec.index(b"ab")] = 0xFF
    for kind in KINDS:
        out = (b"\0\0\0\0" if kind == "aggregate" else b"") + struct.pack("<I", 1) + bytes(rec)
        assert oracle(kind, out, 0) is None
        with pytest.raises(AbiError) as info:
            check_output(kind, out, 0)
        assert info.value.reason == "badOutput" and "UTF-8" in str(info.value)


@pytest.mark.parametrize("kind", KINDS)
def test_check_output_duplicate_offsets(kind: str) -> None:
    out, _ = encode_output(kind, [(0, None, b"a", ()), (0, None, b"b", ())], [3, 3], b"" if kind == "aggregate"
                           else None)
    if kind in STRICT_KINDS:
        with pytest.raises(AbiError, match="strictly increasing"):
            check_output(kind, out, 3)
    else:
        assert check_output(kind, out, 3).record_count == 2


@pytest.mark.parametrize("kind", STRICT_KINDS)
def test_after_a_sharing_stage_a_strict_kind_may_repeat_offsets_but_not_add_records(kind: str) -> None:
    out, _ = encode_output(kind, [(0, None, b"a", ()), (0, None, b"b", ())], [3, 3], None)
    assert check_output(kind, out, 3, input_count=2, shared_input=True).record_count == 2
    with pytest.raises(AbiError, match="2 output records from 1 input records: a .* gives at most one"):
        check_output(kind, out, 3, input_count=1, shared_input=True)
    with pytest.raises(AbiError, match="non-decreasing"):
        bad, _ = encode_output(kind, [(0, None, b"a", ()), (0, None, b"b", ())], [3, 2], None)
        check_output(kind, bad, 3, input_count=2, shared_input=True)


def test_check_output_empty() -> None:
    assert check_output("filter", b"\0\0\0\0", 0) == (b"", 0, None, -1)
    assert check_output("aggregate", b"\2\0\0\0ab\0\0\0\0", 0) == (b"", 0, b"ab", -1)
    for kind in KINDS:
        with pytest.raises(AbiError):
            check_output(kind, b"", 0)


# --- encode_params --------------------------------------------------------------------------


def decode_params(raw: bytes) -> dict[str, str]:
    (n,) = struct.unpack_from("<I", raw)
    pos, out = 4, {}
    for _ in range(n):
        (kl,) = struct.unpack_from("<I", raw, pos)
        k = raw[pos + 4:pos + 4 + kl].decode()
        pos += 4 + kl
        (vl,) = struct.unpack_from("<I", raw, pos)
        v = raw[pos + 4:pos + 4 + vl].decode()
        pos += 4 + vl
        assert k not in out
        out[k] = v
    assert pos == len(raw)
    return out


@given(st.dictionaries(st.text(max_size=30), st.text(max_size=60), max_size=PARAMS_MAX))
def test_encode_params_round_trip(params: dict[str, str]) -> None:
    raw = encode_params(params)
    assert decode_params(raw) == params
    assert list(decode_params(raw)) == list(params)


@given(st.integers(PARAMS_MAX + 1, 3 * PARAMS_MAX))
def test_encode_params_refuses_too_many(n: int) -> None:
    with pytest.raises(ValueError, match=str(PARAMS_MAX)):
        encode_params({f"k{i}": "v" for i in range(n)})


@given(st.integers(0, 20), st.booleans())
def test_encode_params_length_limit(extra: int, on_key: bool) -> None:
    text = "x" * (PARAM_CHARS_MAX + extra)  # ASCII: characters and bytes agree
    params = {text: "v"} if on_key else {"k": text}
    if extra == 0:
        assert decode_params(encode_params(params)) == params
    else:
        with pytest.raises(ValueError, match=str(PARAM_CHARS_MAX)):
            encode_params(params)


@pytest.mark.parametrize("params", [{1: "v"}, {"k": 2}, {"k": b"v"}, {b"k": "v"}, {"k": None}])
def test_encode_params_refuses_non_text(params) -> None:
    with pytest.raises(ValueError, match="text"):
        encode_params(params)


def test_encode_params_empty() -> None:
    assert encode_params({}) == b"\0\0\0\0"


# --- renumber, split_result, encode_call ---------------------------------------------------


@given(st.lists(st.tuples(st.integers(0, 2**32 - 1), record_st), max_size=8))
def test_renumber(items) -> None:
    deltas = [d for d, _ in items]
    records = [r for _, r in items]
    sect = b"".join(encode_record(d, *r) for d, r in items)
    out = renumber(sect, len(items))
    assert len(out) == len(sect)
    want = b"".join(encode_record(i, *r) for i, r in enumerate(records))
    assert out == want
    assert [r.offset - BASE for r in decoded(out, len(items), max(len(items) - 1, 0))] == list(range(len(items)))
    # Every byte but the offset deltas is kept.
    pos, mask = 0, bytearray(len(sect))
    for _ in deltas:
        mask[pos + 13:pos + 17] = b"\xff" * 4
        pos += 4 + struct.unpack_from("<I", sect, pos)[0]
    assert all(m or a == b for a, b, m in zip(sect, out, mask))


@given(st.integers(0, 2**31 - 1), st.integers(0, 2**32 - 1))
def test_split_result(ptr: int, length: int) -> None:
    assert split_result((ptr << 32) | length) == (ptr, length)


@given(st.sampled_from(KINDS), st.integers(0, 2**32 - 1), st.integers(-(2**63), 2**63 - 1),
       st.integers(-(2**63), 2**63 - 1), st.binary(max_size=20), st.none() | st.binary(max_size=20))
def test_encode_call(kind, count, base, ts, records, accumulator) -> None:
    raw = encode_call(kind, count, base, ts, records, accumulator)
    assert CALL_HEAD.unpack_from(raw) == (count, 0, base, ts)
    rest = raw[CALL_HEAD.size:]
    if kind == "aggregate":
        acc = accumulator or b""
        assert rest == struct.pack("<I", len(acc)) + acc + records
    else:
        assert rest == records
