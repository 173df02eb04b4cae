"""Typed wire values (core/protocol/values.py): a SmartModuleInvocation survives the schema's
struct, written with ``to_wire`` or by field assignment (``wire_fields``), encoded, decoded
and bounds-checked as an SPU receives it; what the transport would refuse is refused early."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kolk.protocol import limits as L
from kolk.protocol.bounds import check
from kolk.protocol.errors import InvalidRequestError
from kolk.protocol.messages import decode, encode, member, schema
from kolk.protocol.values import SmartModuleInvocation

TEXT = st.text(max_size=40)
invocations = st.builds(
    SmartModuleInvocation,
    st.text(min_size=1, max_size=L.NAME_CHARS_MAX),
    st.dictionaries(TEXT, TEXT, max_size=L.SMARTMODULE_PARAMS_MAX),
    st.none() | st.binary(max_size=300))


def _received(chain: list[SmartModuleInvocation], by_fields: bool) -> list[SmartModuleInvocation]:
    """The chain of a stream request as the SPU reads it off the wire."""
    env = schema.SpuRequest.new_message()
    req = env.init("stream")
    req.topic = "t"
    if by_fields:
        req.smartmodules = [i.wire_fields() for i in chain]
    else:
        stages = req.init("smartmodules", len(chain))
        for i, inv in enumerate(chain):
            inv.to_wire(stages[i])
    got = member(decode(schema.SpuRequest, encode(env)), "stream")
    check(got)  # what the transport does before a handler runs
    return [SmartModuleInvocation.from_wire(s) for s in got.smartmodules]


@settings(max_examples=200, deadline=None)
@given(st.lists(invocations, max_size=L.CHAIN_STAGES_MAX), st.booleans())
def test_round_trip_through_the_wire(chain: list[SmartModuleInvocation], by_fields: bool) -> None:
    """to_wire (or wire_fields) -> bytes -> from_wire gives every stage back, no accumulator
    and an empty one kept apart."""
    assert _received(chain, by_fields) == chain


def test_no_accumulator_is_not_an_empty_one() -> None:
    got = _received([SmartModuleInvocation("a"), SmartModuleInvocation("b", {}, b"")], by_fields=False)
    assert got[0].accumulator is None and got[1].accumulator == b""


@pytest.mark.parametrize("args,words", [
    (("",), "names a module"),
    (("x" * (L.NAME_CHARS_MAX + 1),), "names a module"),
    ((7,), "names a module"),
    (("m", {"k": 1}), "params map text to text"),
    (("m", [("k", "v")]), "params map text to text"),
    (("m", {f"k{i}": "v" for i in range(L.SMARTMODULE_PARAMS_MAX + 1)}), "more than"),
    (("m", {"k": "v" * (L.TEXT_CHARS_MAX + 1)}), "more than"),
    (("m", {}, "text"), "accumulator is bytes"),
    (("m", {}, bytes(L.ACCUMULATOR_BYTES_MAX + 1)), "more than"),
])
def test_what_the_transport_refuses_is_refused_early(args: tuple, words: str) -> None:
    with pytest.raises(InvalidRequestError, match=words):
        SmartModuleInvocation(*args)


def test_values_are_frozen() -> None:
    inv = SmartModuleInvocation("m", {"k": "v"})
    with pytest.raises(TypeError):
        inv.params["k"] = "w"  # type: ignore[index]
    assert inv.with_accumulator(b"acc") == SmartModuleInvocation("m", {"k": "v"}, b"acc")


# ---------------------------------------------------------------- chains as applications give them

def test_a_chain_takes_numbers_and_booleans_as_text() -> None:
    from kolk.client.consumer import normalize_chain

    (stage,) = normalize_chain([("limit", {"n": 10, "strict": True, "ratio": 0.5})])
    assert dict(stage.params) == {"n": "10", "strict": "true", "ratio": "0.5"}
    assert normalize_chain(None) == [] and normalize_chain(["a", ("b", None)])[1].params == {}


@pytest.mark.parametrize("chain,message", [
    ("upper", "smartmodules is a list of stages, e.g. ['upper'] or [('name', {'key': 'value'})], not str 'upper'"),
    ([("contains", {"needle": b"disk"})], "SmartModule contains: parameter 'needle' must be text (or a number or "
                                          "boolean), not bytes b'disk'"),
    ([("contains", {"needle": None})], "SmartModule contains: parameter 'needle' must be text (or a number or "
                                       "boolean), not NoneType None"),
    ([("contains", {1: "x"})], "SmartModule contains: parameter keys must be text, not int 1"),
    ([("a", "b", "c")], "a SmartModule chain stage is NAME[@VERSION] or (NAME, params), got ('a', 'b', 'c')"),
], ids=["string-chain", "bytes-value", "none-value", "int-key", "triple"])
def test_a_chain_the_client_would_have_to_guess_at_is_refused(chain: object, message: str) -> None:
    from kolk.client.consumer import normalize_chain

    with pytest.raises(InvalidRequestError) as info:
        normalize_chain(chain)
    assert str(info.value) == message
