"""Masking fails closed (docs/security.md "Masking fails closed", issue 17 item 4): for any bytes
a value may hold, a masked reader gets either the whole-value redaction or strict JSON whose
every masked path holds only the replacement; nothing raises, per value or per batch; a batch
that cannot be decoded is withheld with a typed error; clients cannot produce control batches.

The oracle here is written independently of security/jsonmask.py: strict means UTF-8 without
a BOM, one JSON value and only whitespace after it, no NaN/Infinity, no duplicate key, every
string a Unicode string (no lone surrogate)."""

from __future__ import annotations

import json
import struct
from typing import Any, Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kolk.security.jsonmask import mask_json, parse_field_path, redaction
from kolk.security.masking import UnmaskableBatchError, mask_batches
from kolk.security.policy import parse_policy
from kolk.segments.batch import CODEC_GZIP, CODEC_NONE, CODEC_ZSTD, HEADER_SIZE, iter_batches
from kolk.segments.records import build_batch, decode_records, encode_batch
from kolk.spu.api import control_batch_refusal

SECRET = "S3CR3T-4111"
MASKS = [("$.card", "***"), ("$.user.email", "#"), ("$.items[*].sku", "?")]
REDACTED = b'"***"'


# ---------------------------------------------------------------- the oracle

class _Refused(ValueError):
    pass


def _no_duplicates(pairs: list) -> dict:
    if len({k for k, _ in pairs}) != len(pairs):
        raise _Refused("duplicate key")
    return dict(pairs)


def _refuse(name: str) -> Any:
    raise _Refused(name)


def oracle_parse(value: bytes) -> tuple[bool, Any]:
    """(True, doc) when ``value`` is strict JSON, else (False, None)."""
    try:
        if value.startswith(b"\xef\xbb\xbf"):
            return False, None
        doc = json.loads(value.decode("utf-8", "strict"), object_pairs_hook=_no_duplicates, parse_constant=_refuse)
        json.dumps(doc, ensure_ascii=False).encode("utf-8", "strict")  # a lone surrogate cannot be encoded
        return True, doc
    except (ValueError, RecursionError):
        return False, None


def values_at(node: Any, steps: tuple) -> list[Any]:
    """Every value the path reaches in ``node``."""
    if not steps:
        return [node]
    (kind, key), rest = steps[0], steps[1:]
    if kind == "key":
        return values_at(node[key], rest) if isinstance(node, dict) and key in node else []
    return [v for element in node for v in values_at(element, rest)] if isinstance(node, list) else []


def masked_correctly(out: bytes, masks: list[tuple[str, str]]) -> bool:
    """The property: the redaction, or strict JSON whose masked paths hold only replacements."""
    if out == redaction(masks):
        return True
    ok, doc = oracle_parse(out) if out else (True, None)
    if not ok:
        return False
    return all(v == replacement for path, replacement in masks for v in values_at(doc, parse_field_path(path)))


# ---------------------------------------------------------------- hostile values

def _doc(extra: dict) -> dict:
    doc = dict(extra)
    doc.update({"card": SECRET, "user": {"email": SECRET, "id": 1},
                "items": [{"sku": SECRET}, {"sku": SECRET, "q": 2}]})
    return doc


extras = st.dictionaries(st.sampled_from(["id", "name", "note", "n"]),
                         st.one_of(st.integers(), st.text(max_size=6), st.floats(allow_nan=False), st.none()),
                         max_size=3)


def _text(value: bytes) -> str:
    try:
        return value.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return value.decode("latin-1")


def _insert_after_brace(text: bytes, member: bytes) -> bytes:
    return text.replace(b"{", b"{" + member, 1)


MUTATIONS: dict[str, Callable[[bytes, Any], bytes]] = {
    "trailing data": lambda v, d: v + d.draw(st.sampled_from([b"x", b' {"card":1}', b"\x00", b"]", b",", b"//"])),
    "BOM": lambda v, d: b"\xef\xbb\xbf" + v,
    "UTF-16/32": lambda v, d: _text(v).encode(
        d.draw(st.sampled_from(["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be"])),
        "surrogatepass"),
    "invalid UTF-8": lambda v, d: (lambda i: v[:i] + d.draw(st.sampled_from(
        [b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\xc0\xaf"])) + v[i:])(
        d.draw(st.integers(0, len(v)))),
    "duplicate key": lambda v, d: v[:-1] + d.draw(st.sampled_from(
        [b',"card":"x"}', b',"user":"x"}', b',"items":[]}', b',"c\\u0061rd":0}'])),
    "escaped key": lambda v, d: v.replace(b'"card"', b'"c\\u0061rd"').replace(b'"email"', b'"\\u0065m\\u0061il"'),
    "escaped secret": lambda v, d: v.replace(SECRET.encode(), b"S3CR\\u0033T-4111"),
    "NaN": lambda v, d: _insert_after_brace(v, d.draw(st.sampled_from([b'"n":NaN,', b'"n":-Infinity,',
                                                                        b'"n":Infinity,']))),
    "lone surrogate": lambda v, d: _insert_after_brace(v, d.draw(st.sampled_from(
        [b'"s":"\\ud800",', b'"\\udfff":1,', b'"s":["\\uDBFF"],', b'"s":"\\ude00\\ud83d",']))),
    "deep nesting": lambda v, d: _insert_after_brace(v, b'"deep":' + b"[" * 50_000 + b"]" * 50_000 + b","),
    "huge number": lambda v, d: _insert_after_brace(v, d.draw(st.sampled_from([b'"big":1e400,', b'"big":' +
                                                                                b"9" * 5000 + b","]))),
    "whitespace": lambda v, d: d.draw(st.sampled_from([b" ", b"\n\t\r ", b"\x0b", b"\xc2\xa0"])) + v,
}


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(extras, st.lists(st.sampled_from(sorted(MUTATIONS)), min_size=1, max_size=3), st.data())
def test_mutations_of_a_secret_holding_object_never_return_the_secret(extra: dict, mutations: list[str],
                                                                      data: Any) -> None:
    value = json.dumps(_doc(extra), separators=data.draw(st.sampled_from([(",", ":"), (", ", ": ")]))).encode()
    for name in mutations:
        value = MUTATIONS[name](value, data)
    out = mask_json(value, MASKS)
    assert masked_correctly(out, MASKS), (mutations, value[:200], out[:200])
    assert SECRET.encode() not in out and b"S3CR" not in out, (mutations, out[:200])


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_are_masked_correctly_and_never_raise(value: bytes) -> None:
    assert masked_correctly(mask_json(value, MASKS), MASKS)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40), st.integers(0, 40), st.binary(max_size=8))
def test_bytes_spliced_into_a_secret_holding_object(noise: str, at: int, raw: bytes) -> None:
    """Random text and bytes anywhere in an object holding secrets: the output is the
    redaction or strict JSON with every masked path masked."""
    value = json.dumps(_doc({})).encode()
    at = min(at, len(value))
    value = value[:at] + noise.encode("utf-8", "surrogatepass") + raw + value[at:]
    assert masked_correctly(mask_json(value, MASKS), MASKS)


@pytest.mark.parametrize("name,value", [
    ("trailing data", b'{"card": "4111"} {"x": 1}'),
    ("trailing garbage", b'{"card": "4111"}x'),
    ("BOM", b'\xef\xbb\xbf{"card": "4111"}'),
    ("UTF-16", '{"card": "4111"}'.encode("utf-16")),
    ("invalid UTF-8", b'{"card": "4111", "n": "\xff"}'),
    ("encoded surrogate", b'{"card": "4111", "n": "\xed\xa0\x80"}'),
    ("duplicate key hiding a nested field", b'{"user": {"email": "4111"}, "user": 1}'),
    ("NaN", b'{"card": "4111", "n": NaN}'),
    ("lone surrogate", b'{"card": "4111", "s": "\\ud800"}'),
    ("lone surrogate key", b'{"\\udc00": 1, "card": "4111"}'),
    ("too deep", b'{"card": "4111", "d": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
    ("number past the digit limit", b'{"card": "4111", "n": ' + b"7" * 5000 + b"}"),
    ("float overflow beside a masked field", b'{"card": "4111", "n": 1e400}'),
    ("whitespace only", b" \n "),
    ("not JSON", b"card=4111"),
    ("trailing comma", b'{"card": "4111",}'),
    ("single quotes", b"{'card': '4111'}"),
    ("unquoted key", b'{card: "4111"}'),
    ("leading zero", b'{"card": "4111", "n": 01}'),
    ("raw tab inside a string", b'{"card": "41\t11"}'),
    ("form feed after the object", b'{"card": "4111"}\x0c'),
    ("a digit that is not ASCII", '{"card": "4111", "n": \u0661}'.encode()),
    ("Python's True", b'{"card": "4111", "n": True}'),
])
def test_each_kind_of_non_strict_value_is_redacted_whole(name: str, value: bytes) -> None:
    assert mask_json(value, MASKS) == REDACTED, name


def test_escaped_key_names_and_surrogate_pairs_are_strict_and_masked() -> None:
    assert mask_json(b'{"c\\u0061rd": "4111", "e": "\\ud83d\\ude00"}', MASKS) == '{"card":"***","e":"😀"}'.encode()


def test_strict_json_that_is_not_an_object_holds_no_path_and_passes() -> None:
    for value in (b'[{"card": "4111"}]', b'"card"', b"7", b"null"):
        assert mask_json(value, MASKS) is value


def test_a_replacement_with_a_lone_surrogate_still_gives_valid_utf8() -> None:
    masks = [("$.card", "\ud800")]
    for value in (b'{"card": 1}', b"not json"):
        out = mask_json(value, masks)
        out.decode("utf-8")  # strict: raises on invalid UTF-8
        assert b"4111" not in out


# ---------------------------------------------------------------- the policy's view

POLICY = """version = 1
[identities]
alice = ["analyst"]

[[rule]]
effect = "allow"
roles = ["analyst"]
actions = ["consume"]
resources = ["topic:*"]

[[mask]]
roles = ["analyst"]
topics = ["orders*"]
fields = ["$.card", "$.user.email", "$.items[*].sku"]
"""


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=120), extras.map(lambda e: json.dumps(_doc(e)).encode())), st.data())
def test_policy_masking_never_returns_a_masked_field_s_value_for_any_bytes(value: bytes, data: Any) -> None:
    """The hypothesis policy property of issue 17: through Policy.mask, for any bytes."""
    p = parse_policy(POLICY)
    for name in data.draw(st.lists(st.sampled_from(sorted(MUTATIONS)), max_size=2)):
        value = MUTATIONS[name](value, data) if value.startswith(b"{") else value
    masks = p.masks("alice", "127.0.0.1", "orders-eu")
    out = p.mask("alice", "127.0.0.1", "orders-eu", value)
    assert masked_correctly(out, masks) and SECRET.encode() not in out


# ---------------------------------------------------------------- whole batches

def _values(data: bytes) -> list[bytes | None]:
    return [r.value for pos, _h in iter_batches(data, 1 << 24) for r in decode_records(data, pos)]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(st.none(), st.binary(max_size=60), extras.map(lambda e: json.dumps(_doc(e)).encode()),
                          st.just(b'{"card": "4111", "s": "\\ud800"}')), min_size=1, max_size=6),
       st.sampled_from([CODEC_NONE, CODEC_GZIP, CODEC_ZSTD]), st.booleans())
def test_mask_batches_never_raises_for_any_values_and_masks_every_record(values: list, codec: int,
                                                                         control: bool) -> None:
    data = build_batch([(b"k", v) for v in values], base_offset=40, codec=codec, control=control)
    data += build_batch([(None, b'{"card": "x"} tail')], base_offset=40 + len(values))
    out = mask_batches(data, MASKS)
    got = _values(out)
    assert len(got) == len(values) + 1 and got[-1] == REDACTED
    for original, masked in zip(values, got):
        assert masked is None if original is None else masked_correctly(masked, MASKS)
        assert SECRET.encode() not in (masked or b"")
    assert [h.is_control for _p, h in iter_batches(out, 1 << 24)] == [control, False]


def test_a_lone_surrogate_value_no_longer_breaks_the_batch() -> None:
    data = build_batch([(None, b'{"card": "4111"}'), (None, b'{"card": "\\ud800"}'), (None, b'{"card": "4112"}')])
    assert _values(mask_batches(data, MASKS)) == [b'{"card":"***"}', REDACTED, b'{"card":"***"}']


def _batch_with_section(section: bytes, record_count: int, base_offset: int = 7) -> bytes:
    """A batch with a valid header and CRC around ``section`` (which may not decode)."""
    return encode_batch(section, record_count, first_timestamp=0, max_timestamp=0, base_offset=base_offset)


@pytest.mark.parametrize("name,section,count", [
    ("record longer than the section", struct.pack("<IBqIi", 1000, 0, 0, 0, -1) + b"\x00" * 8, 1),
    ("bad key length", struct.pack("<IBqIi", 25, 0, 0, 0, -7) + b"\x00" * 8, 1),
    ("fewer records than the header says", build_batch([(None, b'{"card": "4111"}')])[HEADER_SIZE:], 2),
    ("bytes after the records", build_batch([(None, b'{"card": "4111"}')])[HEADER_SIZE:] + b"\x01", 1),
    ("header name not UTF-8", build_batch([(None, b'{"card": "4111"}', (("h", b"v"),))])[HEADER_SIZE:]
     .replace(b"h", b"\xff", 1), 1),
])
def test_an_undecodable_batch_is_withheld_with_a_typed_error(name: str, section: bytes, count: int) -> None:
    good = build_batch([(None, b'{"card": "4111"}')], base_offset=6)
    bad = _batch_with_section(section, count)
    withheld = "the batch at offset 7 cannot be masked for this reader .*; it is withheld, not sent unmasked"
    with pytest.raises(UnmaskableBatchError, match=withheld) as e:
        mask_batches(good + bad + good, MASKS)
    assert e.value.offset == 7, name
    assert _values(e.value.masked_before) == [b'{"card":"***"}']  # what precedes it may still be sent
    with pytest.raises(UnmaskableBatchError) as e:
        mask_batches(bad + good, MASKS)
    assert e.value.masked_before == b""


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120), st.integers(1, 4))
def test_any_records_section_is_masked_or_withheld_never_an_other_exception(section: bytes, count: int) -> None:
    data = _batch_with_section(section, count)
    try:
        out = mask_batches(data, MASKS)
    except UnmaskableBatchError as e:
        assert e.offset == 7
        return
    assert all(v is None or masked_correctly(v, MASKS) for v in _values(out))


def test_a_trailing_partial_batch_is_dropped() -> None:
    data = build_batch([(None, b'{"card": "4111"}')])
    assert _values(mask_batches(data + data[:70], MASKS)) == [b'{"card":"***"}']


# ---------------------------------------------------------------- the produce path

def test_control_batches_are_refused_naming_the_batch() -> None:
    plain = build_batch([(None, b"a")])
    control = build_batch([(None, b'{"card": "4111"}')], control=True)
    assert control_batch_refusal(plain + plain) is None
    assert control_batch_refusal(b"") is None and control_batch_refusal(b"\x00" * 70) is None
    message = control_batch_refusal(plain + control)
    assert message == (f"batch at byte {len(plain)} is a control batch (attributes 0x0020 has the control bit "
                       "0x20): clients may not produce control batches")
