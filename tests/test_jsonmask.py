"""Field masking (docs/policy.md "Masks", docs/security.md "Masking fails closed"): strict JSON
values in, masked JSON out; strict values that are not objects untouched and the very same
bytes when nothing matched; anything not strict JSON redacted whole; whole batches keep their
offsets. The property "never returns a masked field's value, for any bytes" is in
tests/test_masking_fails_closed.py."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kolk.security.jsonmask import FieldPathError, mask_json, parse_field_path
from kolk.security.masking import mask_batches
from kolk.segments.batch import CODEC_GZIP, CODEC_ZSTD, iter_batches
from kolk.segments.records import build_batch, decode_records

EMAIL = [("$.email", "***")]


def test_top_level_field_keeps_key_order_and_text() -> None:
    value = '{"id": 7, "email": "ann@example.com", "name": "Zoë"}'.encode()
    assert mask_json(value, EMAIL) == '{"id":7,"email":"***","name":"Zoë"}'.encode()


def test_nested_paths_and_their_own_replacements() -> None:
    value = b'{"card": {"number": "4111", "exp": "12/30"}, "user": {"ip": "1.2.3.4", "id": 1}}'
    out = mask_json(value, [("$.card.number", "XXXX"), ("$.user.ip", "0.0.0.0")])
    assert json.loads(out) == {"card": {"number": "XXXX", "exp": "12/30"}, "user": {"ip": "0.0.0.0", "id": 1}}


def test_a_masked_object_or_array_is_replaced_whole() -> None:
    assert mask_json(b'{"card": {"number": "4111"}, "x": 1}', [("$.card", "***")]) == b'{"card":"***","x":1}'
    assert mask_json(b'{"tags": ["a", "b"]}', [("$.tags", "-")]) == b'{"tags":"-"}'


def test_every_element_of_an_array() -> None:
    value = b'{"items": [{"sku": 1, "note": "hi"}, {"sku": 2}, 3, {"note": null}], "tags": ["a", "b"]}'
    out = json.loads(mask_json(value, [("$.items[*].note", "***"), ("$.tags[*]", "?")]))
    assert out == {"items": [{"sku": 1, "note": "***"}, {"sku": 2}, 3, {"note": "***"}], "tags": ["?", "?"]}
    nested = b'{"m": [[{"a": 1}], [{"a": 2}, {"b": 3}]]}'
    assert json.loads(mask_json(nested, [("$.m[*][*].a", "*")])) == {"m": [[{"a": "*"}], [{"a": "*"}, {"b": 3}]]}


@pytest.mark.parametrize("value", [b'{"name": "ann"}', b'{"other": {"email": 1}}',
                                   b'{"card": "4111"}', b'{"items": []}', b'{"items": {"note": 1}}'])
def test_no_match_returns_the_same_bytes(value: bytes) -> None:
    paths = [("$.email", "*"), ("$.card.number", "*"), ("$.items[*].note", "*")]
    assert mask_json(value, paths) is value


@pytest.mark.parametrize("value", [b"", b'[{"email": "a"}]', b"42", b'"email"', b"null", b" true \n"])
def test_empty_values_and_strict_json_that_is_not_an_object_pass_unchanged(value: bytes) -> None:
    assert mask_json(value, EMAIL) is value


@pytest.mark.parametrize("value", [b"hello", b"\xff\xfe\x00", b'{"email": "a"', b'{"email": "a"} trailing', b"   "])
def test_values_that_are_not_strict_json_are_redacted_whole(value: bytes) -> None:
    assert mask_json(value, EMAIL) == b'"***"'
    assert mask_json(value, [("$.x", "gone"), ("$.email", "***")]) == b'"gone"'  # the first mask's replacement


def test_no_paths_is_identity() -> None:
    value = b'{"email": "a"}'
    assert mask_json(value, []) is value


def test_too_deep_to_parse_fails_closed() -> None:
    value = b'{"a": ' + b"[" * 200_000 + b"]" * 200_000 + b', "email": "x"}'
    assert mask_json(value, EMAIL) == b'"***"'


@pytest.mark.parametrize("path,steps", [("$.email", (("key", "email"),)),
                                        ("$.card.number", (("key", "card"), ("key", "number"))),
                                        ("$.items[*].sku", (("key", "items"), ("all", ""), ("key", "sku"))),
                                        ("$.a b.c-d", (("key", "a b"), ("key", "c-d")))])
def test_field_paths(path: str, steps: tuple) -> None:
    assert parse_field_path(path) == steps


@pytest.mark.parametrize("path", ["email", "$email", "$", "$.", "$.a..b", "$.a[0]", "$.a[", "$.a]", ".email",
                                  "$[*].a"])
def test_bad_field_paths(path: str) -> None:
    with pytest.raises(FieldPathError):
        parse_field_path(path)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["email", "name", "card"]),
                       st.one_of(st.integers(), st.text(max_size=5),
                                 st.dictionaries(st.sampled_from(["number", "x"]), st.integers(), max_size=2)),
                       max_size=3))
def test_masking_touches_only_the_named_fields(doc: dict) -> None:
    value = json.dumps(doc).encode()
    out = mask_json(value, [("$.email", "***"), ("$.card.number", "#")])
    expected = dict(doc)
    if "email" in expected:
        expected["email"] = "***"
    if isinstance(expected.get("card"), dict) and "number" in expected["card"]:
        expected["card"] = dict(expected["card"], number="#")
    assert json.loads(out) == expected and list(json.loads(out)) == list(doc)
    assert (out is value) == (expected == doc)


# ---------------------------------------------------------------- whole batches

def _values(data: bytes) -> list[tuple[int, bytes | None]]:
    out = []
    for pos, _header in iter_batches(data, 1 << 20):
        out.extend((r.offset, r.value) for r in decode_records(data, pos))
    return out


@pytest.mark.parametrize("codec", [0, CODEC_GZIP, CODEC_ZSTD])
def test_mask_batches_keeps_offsets_keys_and_headers(codec: int) -> None:
    a = build_batch([(b"k1", b'{"email": "a@x", "n": 1}', (("h", b"v"),)), (None, b"plain text"), (b"k3", None)],
                    base_offset=10, codec=codec)
    b = build_batch([(None, b'{"n": 2}')], base_offset=13)
    data = a + b
    out = mask_batches(data, EMAIL)
    assert _values(out) == [(10, b'{"email":"***","n":1}'), (11, b'"***"'), (12, None), (13, b'{"n": 2}')]
    first = decode_records(out, 0)[0]
    assert (first.key, first.headers) == (b"k1", (("h", b"v"),))
    assert out.endswith(b)  # the untouched batch is passed byte for byte


def test_mask_batches_without_a_match_or_masks_is_the_same_bytes() -> None:
    data = build_batch([(None, b'{"n": 1}')], base_offset=5)
    assert mask_batches(data, EMAIL) is data
    assert mask_batches(data, []) is data
    assert mask_batches(b"", EMAIL) == b""


def test_mask_batches_masks_control_batches_too() -> None:
    control = build_batch([(b"ctl", b'{"email": "x"}'), (None, b"x\xff")], base_offset=0, control=True)
    out = mask_batches(control, EMAIL)
    (pos, header), = iter_batches(out, 1 << 20)
    assert header.is_control
    assert _values(out) == [(0, b'{"email":"***"}'), (1, b'"***"')]
