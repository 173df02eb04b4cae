"""The bulk decode of plain sections (no keys, no headers, one value size) in
segments/records.py: the same records as the record-by-record path, the consumer's record
type with its partition in front, and any damage to a plain section either decoded the way
the record-by-record path decodes it or refused with the same error."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kolk.segments.records as records_module
from kolk.client.consumer import ConsumerRecord
from kolk.segments import InvalidBatchError, Record, build_batch, decode_records
from kolk.segments.batch import HEADER_SIZE, parse_header

TS = st.integers(0, 2**40)


def record_by_record(raw: bytes, **kw):
    """The oracle: decode_records with the bulk path switched off."""
    saved = records_module._plain_layout
    records_module._plain_layout = lambda body, count: None
    try:
        return decode_records(raw, **kw)
    finally:
        records_module._plain_layout = saved


@st.composite
def plain_batches(draw: st.DrawFn) -> tuple[bytes, list[bytes], list[int], int]:
    size = draw(st.integers(0, 300), label="value size")
    n = draw(st.integers(1, 60), label="records")
    values = [draw(st.binary(min_size=size, max_size=size)) for _ in range(n)]
    first = draw(TS)
    stamps = [first + draw(st.integers(0, 10_000)) for _ in range(n)]
    base = draw(st.integers(0, 2**40))
    raw = build_batch([(None, v, ()) for v in values], timestamps=stamps, base_offset=base)
    return raw, values, stamps, base


@settings(max_examples=300, deadline=None)
@given(plain_batches())
def test_plain_sections_take_the_bulk_path_and_decode_exactly(built) -> None:
    raw, values, stamps, base = built
    body = raw[HEADER_SIZE:]
    assert records_module._plain_layout(body, parse_header(raw).record_count) is not None
    expected = [Record(base + i, ts, None, v, ()) for i, (v, ts) in enumerate(zip(values, stamps))]
    assert decode_records(raw) == expected == record_by_record(raw)
    consumer = decode_records(raw, record_type=ConsumerRecord, leading=(3,))
    assert consumer == [ConsumerRecord(3, *r) for r in expected]
    assert all(type(r) is ConsumerRecord for r in consumer)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.one_of(st.none(), st.binary(max_size=5)), st.binary(max_size=6),
                          st.lists(st.tuples(st.sampled_from(["a", "é"]), st.none()), max_size=1)),
                min_size=1, max_size=20))
def test_mixed_sections_take_the_record_path_with_the_same_result(recs) -> None:
    raw = build_batch([(k, v, tuple(h)) for k, v, h in recs], timestamps=[7] * len(recs))
    plain = all(k is None and not h for k, _, h in recs) and len({len(v) for _, v, _ in recs}) == 1
    assert (records_module._plain_layout(raw[HEADER_SIZE:], len(recs)) is not None) == plain
    assert decode_records(raw, record_type=ConsumerRecord, leading=(0,)) == \
        record_by_record(raw, record_type=ConsumerRecord, leading=(0,))


@settings(max_examples=400, deadline=None)
@given(plain_batches(), st.data())
def test_damaged_plain_sections_decode_or_fail_as_the_record_path_does(built, data: st.DataObject) -> None:
    """Any byte of the section overwritten: the bulk path either still applies (the byte was
    in a value, a timestamp or an offset delta, which both paths read the same way) or
    declines, and the record path then gives the same records or the same error."""
    raw, values, _, _ = built
    bad = bytearray(raw)
    i = data.draw(st.integers(HEADER_SIZE, len(raw) - 1), label="at")
    bad[i] = data.draw(st.integers(0, 255), label="byte")
    bad = bytes(bad)  # decode_records does not check the CRC; validate_batch does
    try:
        want = record_by_record(bad)
    except InvalidBatchError as e:
        with pytest.raises(InvalidBatchError) as got:
            decode_records(bad)
        assert str(got.value) == str(e)
        return
    assert decode_records(bad) == want


@pytest.mark.parametrize("field, at", [("length", 0), ("key length", 17), ("value length", 21), ("header count", -4)])
def test_one_odd_record_anywhere_sends_the_section_to_the_record_path(field: str, at: int) -> None:
    """A record whose key length, value length, header count or length differs, in the
    middle of an otherwise plain section, is seen by the strided check."""
    raw = build_batch([(None, b"v" * 10, ())] * 9, timestamps=[1] * 9)
    body = bytearray(raw[HEADER_SIZE:])
    stride = len(body) // 9
    pos = 4 * stride + (at % stride)
    struct.pack_into("<i", body, pos, struct.unpack_from("<i", body, pos)[0] + 1)
    assert records_module._plain_layout(bytes(body), 9) is None, field
