"""Bounds on every request and answer (core/protocol/bounds.py) and the message codec's
defences (core/protocol/messages.py).

Every list field of the schema has a named limit; a tiny hand-made message that claims a huge
list (a Cap'n Proto INLINE_COMPOSITE pointer whose tag announces a million zero-size structs)
is decoded and then refused by ``check`` at once, naming the field; text, data and nested lists
over their limits are refused naming the field, its size and the limit; anything within the
limits passes. ``decode`` of any bytes raises nothing but MalformedMessage, and the whole
server-side read (decode, the union member, ``check``) nothing but MalformedMessage or
BoundsError.
"""

from __future__ import annotations

import re
import struct
import time
from typing import Any

import capnp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kolk.protocol import limits as L
from kolk.protocol.bounds import LIST_LIMITS, SIZE_LIMITS, BoundsError, check, plan_for
from kolk.protocol.messages import SEGMENTS_MAX, MalformedMessage, decode, encode, member, schema, segments_of, which

ENVELOPES = [schema.ScRequest, schema.ScResponse, schema.SpuRequest, schema.SpuResponse, schema.Push]


def _struct_types() -> dict[str, Any]:
    """Every struct of kolk.capnp, by name."""
    out = {}
    for node in schema.schema.node.nestedNodes:
        t = getattr(schema, node.name)
        if isinstance(t.schema, capnp.lib.capnp._StructSchema):
            out[node.name] = t
    return out


STRUCTS = _struct_types()


def _slots(struct_schema: Any) -> list[tuple[str, str, Any]]:
    """(name, type kind, field) of a struct's slot fields."""
    return [(f.proto.name, str(f.proto.slot.type.which()), f) for f in struct_schema.fields_list
            if f.proto.which() == "slot"]


def _default_size_limit(kind: str) -> int:
    return L.TEXT_CHARS_MAX if kind == "text" else L.FRAME_BODY_BYTES_MAX


# ---------------------------------------------------------------- every field has a limit


def test_every_struct_of_the_schema_gets_a_plan() -> None:
    assert len(STRUCTS) > 50
    for name, t in STRUCTS.items():
        plan = plan_for(t.schema)
        assert plan.name == name


def test_every_list_field_has_a_named_limit_and_no_limit_is_stale() -> None:
    lists = set()
    sized = set()
    for name, t in STRUCTS.items():
        for fname, kind, field in _slots(t.schema):
            if kind == "list":
                lists.add((name, fname))
                if str(field.proto.slot.type.list.elementType.which()) in ("text", "data"):
                    sized.add((name, fname))
            elif kind in ("text", "data"):
                sized.add((name, fname))
    assert set(LIST_LIMITS) == lists
    assert set(SIZE_LIMITS) <= sized, set(SIZE_LIMITS) - sized
    assert all(v > 0 for v in LIST_LIMITS.values()) and all(v > 0 for v in SIZE_LIMITS.values())


def test_every_list_field_is_in_its_plan() -> None:
    for name, t in STRUCTS.items():
        planned = {c[0]: c for c in plan_for(t.schema).checks}
        for fname, kind, _ in _slots(t.schema):
            if kind in ("list", "text", "data"):
                assert fname in planned, f"{name}.{fname}"
                assert planned[fname][1] == kind
                if kind == "list":
                    assert planned[fname][2] == LIST_LIMITS[(name, fname)]


# ---------------------------------------------------------------- hand-made huge claims


def _struct_ptr(offset: int, data_words: int, ptr_words: int) -> bytes:
    return struct.pack("<Q", ((offset & 0x3FFFFFFF) << 2) | (data_words << 32) | (ptr_words << 48))


def _inline_composite_ptr(offset: int, words: int) -> bytes:
    return struct.pack("<Q", 1 | ((offset & 0x3FFFFFFF) << 2) | (7 << 32) | (words << 35))


def claiming(envelope: Any, member: str, field: str, count: int) -> bytes:
    """A standard-serialization ``envelope`` whose ``member`` struct's list ``field`` is an
    INLINE_COMPOSITE list whose tag claims ``count`` elements of 0 data and 0 pointer words."""
    env = envelope.schema.node.struct
    m = envelope.schema.fields[member]
    inner = m.schema.node.struct
    lst = m.schema.fields[field]
    d_e, p_e, d_i, p_i = env.dataWordCount, env.pointerCount, inner.dataWordCount, inner.pointerCount
    words = [_struct_ptr(0, d_e, p_e)]
    data = bytearray(8 * d_e)
    struct.pack_into("<H", data, 2 * env.discriminantOffset, m.proto.discriminantValue)
    words += [bytes(data[i:i + 8]) for i in range(0, len(data), 8)]
    at_inner = 1 + d_e + p_e
    for slot in range(p_e):
        here = 1 + d_e + slot
        words.append(_struct_ptr(at_inner - here - 1, d_i, p_i) if slot == m.proto.slot.offset else bytes(8))
    words += [bytes(8)] * d_i
    at_tag = at_inner + d_i + p_i
    for slot in range(p_i):
        here = at_inner + d_i + slot
        words.append(_inline_composite_ptr(at_tag - here - 1, 0) if slot == lst.proto.slot.offset else bytes(8))
    words.append(_struct_ptr(count, 0, 0))  # the tag: `count` elements of 0 + 0 words
    segment = b"".join(words)
    return struct.pack("<II", 0, len(segment) // 8) + segment


CLAIMS = [
    (schema.ScRequest, "registerSpu", "lost", "RegisterSpuRequest.lost", L.LOST_REPLICAS_MAX),
    (schema.ScRequest, "createTopic", "config", "CreateTopicRequest.config", L.TOPIC_CONFIG_ENTRIES_MAX),
    (schema.SpuRequest, "produce", "smartmodules", "ProduceRequest.smartmodules", L.CHAIN_STAGES_MAX),
    (schema.SpuRequest, "stream", "smartmodules", "StreamRequest.smartmodules", L.CHAIN_STAGES_MAX),
    (schema.ScResponse, "listObjects", "objects", "ListObjectsResponse.objects", L.OBJECTS_PER_ANSWER_MAX),
]


def _member(envelope: Any, body: bytes) -> tuple[str, Any]:
    env = decode(envelope, body)
    name = which(env)
    return name, getattr(env, name)


def test_the_hand_made_claim_is_what_it_says() -> None:
    # 3 entries: small enough to read, so the encoding above is checked against pycapnp
    body = claiming(schema.ScRequest, "registerSpu", "lost", 3)
    name, req = _member(schema.ScRequest, body)
    assert name == "registerSpu"
    assert len(req.lost) == 3 and [x.partition for x in req.lost] == ["", "", ""]
    check(req)


@pytest.mark.parametrize("envelope,member,field,where,limit", CLAIMS, ids=[c[3] for c in CLAIMS])
def test_a_tiny_message_claiming_a_million_entries_is_refused_fast(envelope: Any, member: str, field: str,
                                                                   where: str, limit: int) -> None:
    count = 1_000_000
    if limit >= count:
        count = (1 << 30) - 1  # the largest count a tag can claim
    body = claiming(envelope, member, field, count)
    assert len(body) < 300
    name, req = _member(envelope, body)  # decoding is lazy: the claim is not read yet
    assert name == member
    start = time.perf_counter()
    with pytest.raises(BoundsError) as e:
        check(req)
    elapsed = time.perf_counter() - start
    assert elapsed < 0.05
    message = str(e.value)
    assert where in message and str(limit) in message
    # the whole envelope, checked from its root, is refused the same way
    with pytest.raises(BoundsError, match=re.escape(f"{plan_for(envelope.schema).name}.{member}.{field} ")):
        check(decode(envelope, body))


def test_a_claim_the_reader_can_measure_is_refused_naming_the_count() -> None:
    # 100,000 zero-size entries fit the reader's traversal budget, so the count is known
    body = claiming(schema.ScRequest, "registerSpu", "lost", 100_000)
    assert len(body) < 300
    _, req = _member(schema.ScRequest, body)
    start = time.perf_counter()
    with pytest.raises(BoundsError) as e:
        check(req)
    assert time.perf_counter() - start < 0.05
    assert str(e.value) == (f"RegisterSpuRequest.lost has 100000 entries, more than the limit of "
                            f"{L.LOST_REPLICAS_MAX}")


def test_partition_status_over_its_limit_names_field_count_and_limit() -> None:
    env = schema.SpuRequest.new_message()
    env.init("partitionStatus").init("partitions", L.PARTITION_STATUS_MAX + 1)
    _, req = _member(schema.SpuRequest, encode(env))
    with pytest.raises(BoundsError) as e:
        check(req)
    assert str(e.value) == (f"PartitionStatusRequest.partitions has {L.PARTITION_STATUS_MAX + 1} entries, "
                            f"more than the limit of {L.PARTITION_STATUS_MAX}")


def test_every_request_list_claiming_millions_is_refused_at_once_naming_it() -> None:
    """Every list field reachable in every request member of both servers (the schema walk of
    tests/amplified_attack.py, nested lists included), claiming 1,000,000 and 8,000,000
    entries as zero-size structs and as VOID: refused by ``check`` from the union member, as
    the server calls it, in well under a millisecond each, naming the field and its limit.
    tests/test_amplified_requests.py sends the same bytes to real servers."""
    import os
    import sys

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from amplified_attack import COUNTS, ENCODINGS, ENVELOPES, claiming, list_cases, owner_of_field, where

    cases = list_cases()
    assert len(cases) >= 9
    for service, name, path in cases:
        member_schema = ENVELOPES[service].schema.fields[name].schema
        limit = LIST_LIMITS[(plan_for(owner_of_field(member_schema, path)).name, path[-1][0])]
        for count in COUNTS:
            for encoding in ENCODINGS:
                body = claiming(service, name, path, count, encoding)
                assert len(body) <= 256
                env = decode(ENVELOPES[service], body)
                start = time.perf_counter()
                with pytest.raises(BoundsError) as e:
                    check(member(env, which(env)), plan_for(member_schema))
                # Refused without walking the claimed entries (that would take seconds); the bound
                # is loose because the machine may be busy: one full CI run saw 50 ms exceeded.
                assert time.perf_counter() - start < 0.5
                assert str(e.value).startswith(where(member_schema, path) + " claims more than"), str(e.value)
                assert str(e.value).endswith(f"the limit is {limit} entries"), str(e.value)


# ---------------------------------------------------------------- text, data, nesting


def test_a_long_topic_name_is_refused_naming_the_field() -> None:
    env = schema.ScRequest.new_message()
    env.init("createTopic").name = "t" * 10_000
    _, req = _member(schema.ScRequest, encode(env))
    with pytest.raises(BoundsError) as e:
        check(req)
    assert str(e.value) == (f"CreateTopicRequest.name has 10000 characters, more than the limit of "
                            f"{L.NAME_CHARS_MAX}")


def _produce_to(topic: str) -> Any:
    env = schema.SpuRequest.new_message()
    env.init("produce").topic = topic
    return _member(schema.SpuRequest, encode(env))[1]


def test_names_are_measured_in_characters() -> None:
    check(_produce_to("é" * L.NAME_CHARS_MAX))  # 510 bytes, 255 characters
    with pytest.raises(BoundsError, match=r"ProduceRequest\.topic has 256 characters"):
        check(_produce_to("é" * (L.NAME_CHARS_MAX + 1)))


def _rack(rack: str) -> Any:
    m = schema.RegisterSpuRequest.new_message()
    m.rack = rack
    return decode(schema.RegisterSpuRequest, encode(m))


def test_other_text_gets_the_default_limit() -> None:
    check(_rack("r" * L.TEXT_CHARS_MAX))
    with pytest.raises(BoundsError, match=rf"RegisterSpuRequest\.rack has {L.TEXT_CHARS_MAX + 1} characters"):
        check(_rack("r" * (L.TEXT_CHARS_MAX + 1)))


def test_each_element_of_a_text_list_is_bounded() -> None:
    env = schema.SpuRequest.new_message()
    parts = env.init("partitionStatus").init("partitions", 3)
    parts[0] = "a-0"
    parts[1] = "p" * (L.NAME_CHARS_MAX + 1)
    _, req = _member(schema.SpuRequest, encode(env))
    with pytest.raises(BoundsError) as e:
        check(req)
    assert str(e.value) == (f"PartitionStatusRequest.partitions[1] has {L.NAME_CHARS_MAX + 1} characters, "
                            f"more than the limit of {L.NAME_CHARS_MAX}")


def _produce_with_chain(stages: int, params: list[int]) -> Any:
    env = schema.SpuRequest.new_message()
    p = env.init("produce")
    p.topic = "t"
    chain = p.init("smartmodules", stages)
    for i, n in enumerate(params):
        chain[i].name = f"m{i}"
        chain[i].init("params", n)
    return env


def test_nested_lists_are_checked() -> None:
    env = _produce_with_chain(3, [1, L.SMARTMODULE_PARAMS_MAX, L.SMARTMODULE_PARAMS_MAX + 1])
    _, req = _member(schema.SpuRequest, encode(env))
    with pytest.raises(BoundsError) as e:
        check(req)
    assert str(e.value) == (f"ProduceRequest.smartmodules[2].params has {L.SMARTMODULE_PARAMS_MAX + 1} entries, "
                            f"more than the limit of {L.SMARTMODULE_PARAMS_MAX}")


def test_text_inside_nested_lists_is_checked() -> None:
    env = _produce_with_chain(2, [0, 3])
    env.produce.smartmodules[1].params[2].value = "v" * (L.TEXT_CHARS_MAX + 1)
    _, req = _member(schema.SpuRequest, encode(env))
    with pytest.raises(BoundsError, match=re.escape("ProduceRequest.smartmodules[1].params[2].value has 4097")):
        check(req)


def test_data_inside_nested_lists_is_checked() -> None:
    env = schema.SpuRequest.new_message()
    chain = env.init("stream").init("smartmodules", 1)
    chain[0].accumulator = b"\0" * (L.ACCUMULATOR_BYTES_MAX + 1)
    _, req = _member(schema.SpuRequest, encode(env))
    with pytest.raises(BoundsError, match=re.escape("StreamRequest.smartmodules[0].accumulator has "
                                                    f"{L.ACCUMULATOR_BYTES_MAX + 1} bytes")):
        check(req)


def test_too_many_chain_stages() -> None:
    env = _produce_with_chain(L.CHAIN_STAGES_MAX + 1, [])
    _, req = _member(schema.SpuRequest, encode(env))
    with pytest.raises(BoundsError, match=rf"ProduceRequest\.smartmodules has {L.CHAIN_STAGES_MAX + 1} entries"):
        check(req)


def test_structs_inside_answers_are_checked() -> None:
    env = schema.ScResponse.new_message()
    r = env.init("getObject")
    r.object.kind = "k" * (L.TEXT_CHARS_MAX + 1)
    _, resp = _member(schema.ScResponse, encode(env))
    with pytest.raises(BoundsError, match=rf"GetObjectResponse\.object\.kind has {L.TEXT_CHARS_MAX + 1} characters"):
        check(resp)


def _over_by_one() -> list[tuple[str, str, str, int]]:
    """(struct, field, kind, limit) of every bounded field small enough to build one over."""
    out = []
    for name, t in STRUCTS.items():
        for fname, kind, field in _slots(t.schema):
            if kind == "list":
                limit = LIST_LIMITS[(name, fname)]
                if limit <= 20_000:
                    out.append((name, fname, "list", limit))
                element = str(field.proto.slot.type.list.elementType.which())
                if element in ("text", "data"):
                    each = SIZE_LIMITS.get((name, fname), _default_size_limit(element))
                    if each <= 2 << 20:
                        out.append((name, fname, element + "[]", each))
            elif kind in ("text", "data"):
                limit = SIZE_LIMITS.get((name, fname), _default_size_limit(kind))
                if limit <= 2 << 20:
                    out.append((name, fname, kind, limit))
    return out


OVER = _over_by_one()


@pytest.mark.parametrize("name,fname,kind,limit", OVER, ids=[f"{o[0]}.{o[1]}" + ("[]" if o[2].endswith("[]") else "")
                                                             for o in OVER])
def test_every_field_at_its_limit_passes_and_one_over_is_refused(name: str, fname: str, kind: str,
                                                                 limit: int) -> None:
    t = STRUCTS[name]

    def build(n: int) -> Any:
        m = t.new_message()
        if kind == "list":
            m.init(fname, n)
        elif kind == "text":
            setattr(m, fname, "x" * n)
        elif kind == "data":
            setattr(m, fname, b"x" * n)
        else:
            lst = m.init(fname, 1)
            lst[0] = ("x" * n) if kind == "text[]" else (b"x" * n)
        return decode(t, encode(m))

    check(build(limit))
    with pytest.raises(BoundsError) as e:
        check(build(limit + 1))
    where = f"{name}.{fname}" + ("[0]" if kind.endswith("[]") else "")
    assert str(e.value).startswith(f"{where} has {limit + 1} ")
    assert str(e.value).endswith(f"more than the limit of {limit}")


# ---------------------------------------------------------------- anything within the limits passes

_chars = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")


def _text(limit: int) -> st.SearchStrategy[str]:
    small = st.text(_chars, max_size=min(limit, 24))
    if limit > 8192:
        return small
    return st.one_of(small, st.builds(lambda c, n: c * n, _chars, st.sampled_from([limit, limit - 1])))


def _data(limit: int) -> st.SearchStrategy[bytes]:
    small = st.binary(max_size=min(limit, 64))
    if limit > 8192:
        return small
    return st.one_of(small, st.builds(lambda n: b"\xa5" * n, st.sampled_from([limit, limit - 1])))


def _count(limit: int) -> st.SearchStrategy[int]:
    small = st.integers(0, min(limit, 4))
    return st.one_of(small, st.just(limit)) if limit <= 64 else small


def _fill(draw: st.DrawFn, b: Any, struct_schema: Any, depth: int = 0) -> None:
    name = plan_for(struct_schema).name
    for fname, kind, field in _slots(struct_schema):
        if field.proto.discriminantValue != 0xFFFF:
            continue  # union members: the envelope chose one
        if kind == "text":
            setattr(b, fname, draw(_text(SIZE_LIMITS.get((name, fname), L.TEXT_CHARS_MAX))))
        elif kind == "data":
            setattr(b, fname, draw(_data(SIZE_LIMITS.get((name, fname), L.FRAME_BODY_BYTES_MAX))))
        elif kind == "struct":
            if depth < 4 and draw(st.booleans()):
                _fill(draw, b.init(fname), field.schema, depth + 1)
        elif kind == "list":
            n = draw(_count(LIST_LIMITS[(name, fname)]))
            lst = b.init(fname, n)
            element = str(field.proto.slot.type.list.elementType.which())
            each = SIZE_LIMITS.get((name, fname), _default_size_limit(element))
            for i in range(min(n, 3)):  # the rest stay empty: within every limit
                if element == "struct":
                    _fill(draw, lst[i], field.schema.elementType, depth + 1)
                elif element == "text":
                    lst[i] = draw(_text(each))
                elif element == "data":
                    lst[i] = draw(_data(each))
                elif element.startswith("uint"):  # TopicPartitions.partitions
                    lst[i] = draw(st.integers(0, (1 << 31) - 1))
                else:
                    lst[i] = draw(st.integers(-(1 << 31), (1 << 31) - 1))


@st.composite
def valid_messages(draw: st.DrawFn) -> tuple[Any, bytes]:
    envelope = draw(st.sampled_from(ENVELOPES))
    member = draw(st.sampled_from([f.proto.name for f in envelope.schema.fields_list]))
    env = envelope.new_message()
    m = env.init(member)
    _fill(draw, m, envelope.schema.fields[member].schema)
    return envelope, encode(env)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(valid_messages())
def test_messages_within_the_limits_pass(message: tuple[Any, bytes]) -> None:
    envelope, body = message
    env = decode(envelope, body)
    name = which(env)
    check(getattr(env, name))
    check(env)


# ---------------------------------------------------------------- decoding any bytes


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_decode_of_random_bytes_raises_only_malformed(body: bytes) -> None:
    for envelope in (schema.SpuRequest, schema.ScRequest, schema.Push):
        try:
            decode(envelope, body)
        except MalformedMessage:
            pass


def _framed(segments: list[bytes]) -> bytes:
    table = struct.pack(f"<{len(segments) + 1}I", len(segments) - 1, *[len(s) // 8 for s in segments])
    table += b"\0" * (len(table) % 8)
    return table + b"".join(segments)


_words = st.builds(lambda ws: b"".join(struct.pack("<Q", w) for w in ws),
                   st.lists(st.one_of(st.integers(0, (1 << 64) - 1), st.sampled_from([0, 1, 2, 3, 0x0001000100000000])),
                            min_size=0, max_size=24))


def _read_like_the_server(envelope: Any, body: bytes) -> None:
    """What a server does with a request body before any handler runs (channel._serve)."""
    env = decode(envelope, body)
    name = which(env)
    check(member(env, name))


def _mutations(body: bytes) -> st.SearchStrategy[bytes]:
    n = len(body)
    return st.lists(st.tuples(st.integers(8, n - 1), st.integers(0, 255)), min_size=1, max_size=6).map(
        lambda edits: _apply(body, edits))


def _apply(body: bytes, edits: list[tuple[int, int]]) -> bytes:
    b = bytearray(body)
    for i, v in edits:
        b[i] = v
    return bytes(b)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_words, min_size=1, max_size=3))
def test_well_framed_random_segments_raise_only_malformed_or_bounds(segments: list[bytes]) -> None:
    body = _framed(segments)
    assert [bytes(s) for s in segments_of(body)] == segments
    for envelope in (schema.SpuRequest, schema.ScRequest):
        try:
            _read_like_the_server(envelope, body)
        except (MalformedMessage, BoundsError):
            pass


def _bases() -> list[tuple[Any, bytes]]:
    """Valid requests with lists, text, data and nested structs, to mutate."""
    out = []
    env = schema.SpuRequest.new_message()
    p = env.init("produce")
    p.topic, p.records, p.timeoutMs = "orders", b"\x01" * 40, 5
    chain = p.init("smartmodules", 2)
    chain[0].name, chain[1].name, chain[1].accumulator = "filter@1", "agg", b"acc"
    kv = chain[0].init("params", 2)
    kv[0].key, kv[0].value, kv[1].key = "k", "v", "k2"
    out.append((schema.SpuRequest, encode(env)))
    env = schema.SpuRequest.new_message()
    env.init("partitionStatus").partitions = ["a-0", "b-1", "c-2"]
    out.append((schema.SpuRequest, encode(env)))
    env = schema.SpuRequest.new_message()
    s = env.init("stream")
    s.topic, s.windowBytes = "t", 1000
    s.init("smartmodules", 1)[0].init("params", 1)[0].key = "x"
    out.append((schema.SpuRequest, encode(env)))
    env = schema.ScRequest.new_message()
    r = env.init("registerSpu")
    r.rack, r.publicAddress, r.storageId = "r1", "127.0.0.1:1", "sid"
    lost = r.init("lost", 2)
    lost[0].partition, lost[0].reason, lost[1].partition = "t-0", "short", "t-1"
    out.append((schema.ScRequest, encode(env)))
    env = schema.ScRequest.new_message()
    c = env.init("createTopic")
    c.name = "topic"
    cfg = c.init("config", 2)
    cfg[0].key, cfg[0].value = "retention", "1d"
    out.append((schema.ScRequest, encode(env)))
    env = schema.ScRequest.new_message()
    u = env.init("updateIsr")
    u.partition, u.isr, u.basedOn = "t-0", [1, 2, 3], [1, 2]
    out.append((schema.ScRequest, encode(env)))
    return out


BASES = _bases()


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_messages_raise_only_malformed_or_bounds(data: st.DataObject) -> None:
    envelope, body = data.draw(st.sampled_from(BASES))
    _read_like_the_server(envelope, body)
    bad = data.draw(_mutations(body))
    try:
        _read_like_the_server(envelope, bad)
    except (MalformedMessage, BoundsError):
        pass


def test_invalid_utf8_in_a_name_is_malformed() -> None:
    env = schema.SpuRequest.new_message()
    env.init("produce").topic = "abcd"
    body = bytearray(encode(env))
    i = body.index(b"abcd")
    body[i:i + 2] = b"\xff\xfe"
    with pytest.raises(MalformedMessage, match=r"ProduceRequest\.topic"):
        _read_like_the_server(schema.SpuRequest, bytes(body))


def test_a_union_member_this_schema_lacks_is_malformed() -> None:
    env = schema.SpuRequest.new_message()
    env.init("identify")
    body = bytearray(encode(env))
    # the root struct's data word holds the discriminant
    struct.pack_into("<H", body, 16, 99)
    with pytest.raises(MalformedMessage):
        which(decode(schema.SpuRequest, bytes(body)))


# ---------------------------------------------------------------- segment tables


def test_segments_of_a_multi_segment_message() -> None:
    env = schema.SpuRequest.new_message()
    p = env.init("produce")
    p.records = b"r" * 20_000  # larger than the first segment
    p.topic = "t"
    body = encode(env)
    segs = segments_of(body)
    assert len(segs) >= 2
    assert sum(len(s) for s in segs) + 4 + 4 * len(segs) + (4 if len(segs) % 2 == 0 else 0) == len(body)
    req = decode(schema.SpuRequest, body).produce
    assert req.records == b"r" * 20_000 and req.topic == "t"


def test_segments_of_refuses_a_table_past_the_end() -> None:
    with pytest.raises(MalformedMessage, match="8 bytes"):
        segments_of(b"\0" * 7)
    with pytest.raises(MalformedMessage, match="segment table"):
        segments_of(struct.pack("<II", 2, 0))  # 3 segments: the table needs 16 bytes
    with pytest.raises(MalformedMessage, match="more than"):
        segments_of(struct.pack("<II", SEGMENTS_MAX, 0) + b"\0" * 8)
    with pytest.raises(MalformedMessage, match="more than"):
        segments_of(struct.pack("<II", 0xFFFFFFFF, 0))


def test_segments_of_refuses_segments_past_the_end() -> None:
    with pytest.raises(MalformedMessage, match="runs past the end"):
        segments_of(struct.pack("<II", 0, 2) + b"\0" * 8)
    with pytest.raises(MalformedMessage, match="runs past the end"):
        segments_of(struct.pack("<II", 0, 0xFFFFFFFF) + b"\0" * 8)
    with pytest.raises(MalformedMessage, match="runs past the end"):
        segments_of(struct.pack("<IIII", 1, 1, 1, 0) + b"\0" * 8)  # two segments of 1 word, only 1 present
    with pytest.raises(MalformedMessage, match="follow"):
        segments_of(struct.pack("<II", 0, 1) + b"\0" * 16)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(1, 6), st.lists(st.integers(0, 0xFFFFFFFF), min_size=6, max_size=6), st.binary(max_size=200))
def test_segments_of_never_reads_past_the_end(count: int, sizes: list[int], rest: bytes) -> None:
    body = struct.pack(f"<{count + 1}I", count - 1, *sizes[:count]) + rest
    try:
        segs = segments_of(body)
    except MalformedMessage:
        return
    table = 4 + 4 * count
    table += table % 8
    assert len(segs) == count
    assert [len(s) for s in segs] == [8 * n for n in sizes[:count]]
    assert table + sum(len(s) for s in segs) == len(body)
