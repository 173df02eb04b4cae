"""Errors that help the author (issue 18, Build item 4), in the C SDK: the message a module
hands the host through ``kolk_error`` (kolk_fail, kolk_set_error, cleared per record and per
call, cut at 1 KiB on a character boundary), the parameter helpers that name the parameter
``init`` refused, the examples' messages, and the strict JSON helpers, which refuse what
RFC 8259 refuses and say what and where. Real clang builds, the real engine."""

from __future__ import annotations

import json
import pathlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kolk.smartmodule.build import build_c
from kolk.smartmodule.chain import ChainError
from kolk.smartmodule.engine import ModuleCache, SmartModuleError
from test_smartmodule_sdk import EXAMPLES, KINDS, run


@pytest.fixture(scope="module")
def cache() -> ModuleCache:
    return ModuleCache()


@pytest.fixture(scope="module")
def wasm() -> dict[str, bytes]:
    return {name: build_c(EXAMPLES / f"{name}.c") for name in KINDS}



def build_source(tmp_path: pathlib.Path, name: str, source: str) -> bytes:
    src = tmp_path / f"{name}.c"
    src.write_text(source)
    return build_c(src)


MESSAGES = r"""
#include "kolk_smartmodule.h"
/* value "ok": kept; "say": kept, a message set but no error; "fail": kolk_fail; "quiet": -1 and
 * no message; "long": 2000 bytes of a two-byte character; "emit" records the SDK's own messages. */
static int f(const kolk_record *r) {
    if (kolk_equal(r->value, r->value_len, "say", 3)) { kolk_set_error("said, not failed"); return 1; }
    if (kolk_equal(r->value, r->value_len, "fail", 4)) return kolk_fail("record said no");
    if (kolk_equal(r->value, r->value_len, "quiet", 5)) return -1;
    if (kolk_equal(r->value, r->value_len, "long", 4)) {
        kolk_set_error("x");  /* one byte first, so the cut falls inside a character */
        for (int i = 0; i < 1000; i++) kolk_error_append("\xc3\xa9", 2);
        return -1;
    }
    if (kolk_equal(r->value, r->value_len, "number", 6)) {
        kolk_set_error_len("offset is ", 10); kolk_error_append_i64(r->offset);
        kolk_error_append(", not good", -1);
        return -1;
    }
    return 1;
}
KOLK_FILTER(f)
"""


@pytest.fixture(scope="module")
def messages(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return build_source(tmp_path_factory.mktemp("messages"), "messages", MESSAGES)


def test_kolk_fail_message_reaches_the_error_of_the_record(cache: ModuleCache, messages: bytes) -> None:
    """kolk_fail sets the message the host reads through the exported kolk_error."""
    with pytest.raises(ChainError) as e:
        run(cache, messages, [(None, b"ok"), (None, b"fail")])
    assert e.value.offset == 1001 and str(e.value).endswith("refused the record: record said no")


def test_the_message_of_a_record_that_passed_is_not_blamed_on_the_next(cache: ModuleCache, messages: bytes) -> None:
    """The SDK clears the message before every record: a later silent failure has none."""
    with pytest.raises(ChainError) as e:
        run(cache, messages, [(None, b"say"), (None, b"quiet")])
    assert str(e.value).endswith("refused the record") and "said" not in str(e.value)


def test_a_message_is_cleared_by_the_next_call(cache: ModuleCache, messages: bytes) -> None:
    """kolk_alloc (once per host call) clears it too: a new batch starts with no message."""
    inst = cache.load(messages).instantiate()
    with pytest.raises(ChainError):
        run(cache, messages, [(None, b"fail")], instance=inst)
    with pytest.raises(ChainError) as e:
        run(cache, messages, [(None, b"quiet")], instance=inst)
    assert "said no" not in str(e.value)


def test_a_long_message_is_cut_at_1024_bytes_on_a_character_boundary(cache: ModuleCache, messages: bytes) -> None:
    with pytest.raises(ChainError) as e:
        run(cache, messages, [(None, b"long")])
    said = str(e.value).split("refused the record: ", 1)[1]
    assert said == "x" + "é" * 511 and len(said.encode()) == 1023  # 1024 would split an é: it is left out


def test_kolk_error_append_i64_writes_decimal(cache: ModuleCache, messages: bytes) -> None:
    with pytest.raises(ChainError) as e:
        run(cache, messages, [(None, b"number")], base_offset=-5 + 2**40)
    assert str(e.value).endswith(f"offset is {2**40 - 5}, not good")


PARAMS = r"""
#include "kolk_smartmodule.h"
static const char *const KNOWN[] = {"name", "limit", "verbose", NULL};
static int check(void) {
    kolk_i32 len; kolk_i64 limit = 10; int verbose = 0;
    if (kolk_params_known(KNOWN) != 0) return 1;
    if (!kolk_param_required("name", &len)) return 2;
    if (kolk_param_i64("limit", 1, 100, &limit) < 0) return 3;
    if (kolk_param_bool("verbose", &verbose) < 0) return 4;
    return 0;
}
KOLK_INIT(check)
static int f(const kolk_record *r) { (void)r; return 1; }
KOLK_FILTER(f)
"""


@pytest.fixture(scope="module")
def params_module(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return build_source(tmp_path_factory.mktemp("params"), "params", PARAMS)


@pytest.mark.parametrize("params", [{"name": "a"}, {"name": "", "limit": "1", "verbose": "true"},
                                    {"name": "a", "limit": "100", "verbose": "false", "initial": "x"}])
def test_parameter_helpers_accept_good_parameters(cache: ModuleCache, params_module: bytes,
                                                  params: dict[str, str]) -> None:
    cache.load(params_module).instantiate(params)


@pytest.mark.parametrize("params, rc, message", [
    ({}, 2, "missing parameter `name`"),
    ({"nmae": "a"}, 1, "unknown parameter `nmae` (this module takes: name, limit, verbose)"),
    ({"name": "a", "limit": "ten"}, 3, "parameter `limit`: `ten` is not an integer"),
    ({"name": "a", "limit": "101"}, 3, "parameter `limit`: 101 is outside 1..100"),
    ({"name": "a", "limit": "0"}, 3, "parameter `limit`: 0 is outside 1..100"),
    ({"name": "a", "verbose": "yes"}, 4, "parameter `verbose`: `yes` is not true or false"),
])
def test_parameter_helpers_name_the_parameter_that_init_refused(cache: ModuleCache, params_module: bytes,
                                                                params: dict[str, str], rc: int,
                                                                message: str) -> None:
    """init fails with the return value and the helper's message: which parameter, and why."""
    with pytest.raises(SmartModuleError) as e:
        cache.load(params_module).instantiate(params)
    assert e.value.reason == "initFailed"
    assert str(e.value) == f"init returned {rc} for parameters {sorted(params)}: {message}"


@pytest.mark.parametrize("name, params, message", [
    ("contains", {}, "missing parameter `needle`"),
    ("contains", {"needle": "x", "neddle": "y"}, "unknown parameter `neddle` (this module takes: needle)"),
    ("json_field", {}, "missing parameter `field`"),
    ("redact", {"fields": "pw"}, "unknown parameter `fields` (this module takes: field)"),
])
def test_examples_say_which_parameter_is_wrong(cache: ModuleCache, wasm: dict[str, bytes], name: str,
                                               params: dict[str, str], message: str) -> None:
    with pytest.raises(SmartModuleError) as e:
        cache.load(wasm[name]).instantiate(params)
    assert e.value.reason == "initFailed" and str(e.value).endswith(f": {message}")


@pytest.mark.parametrize("value, message", [
    (None, "the value is null, not a JSON object"),
    (b"[1]", "JSON: not an object at byte 0"),
    (b'{"f": 1, "f": 2}', "JSON: the field `f` is there twice"),
    (b'{"f": 1} {}', "JSON: trailing data after the object at byte 9"),
    (b'{"f": "\\ud83d"}', None),  # a lone surrogate in the wanted string: json_field says so
])
def test_json_field_errors_say_what_is_wrong_with_the_value(cache: ModuleCache, wasm: dict[str, bytes],
                                                            value: bytes | None, message: str | None) -> None:
    with pytest.raises(ChainError) as e:
        run(cache, wasm["json_field"], [(None, value)], {"field": "f"})
    assert str(e.value).endswith(f"refused the record: {message or 'the field' + chr(39) + 's string has a lone surrogate escape'}")


def test_redact_masks_a_field_whose_key_is_written_with_escapes(cache: ModuleCache, wasm: dict[str, bytes]) -> None:
    """"p\\u0077" is the key pw: a raw comparison would let it through unmasked."""
    got, _ = run(cache, wasm["redact"], [(None, b'{"p\\u0077": "secret", "pw": 1, "px": 2}')], {"field": "pw"})
    assert got[0].value == b'{"p\\u0077": "***", "pw": "***", "px": 2}'


def test_count_per_key_says_its_accumulator_is_not_a_table(cache: ModuleCache, wasm: dict[str, bytes]) -> None:
    inst = cache.load(wasm["count_per_key"]).instantiate({"initial": "not a table"})
    with pytest.raises(ChainError) as e:
        run(cache, wasm["count_per_key"], [(b"a", b"")], instance=inst)
    assert str(e.value).endswith("the accumulator is not a count table (see count_per_key.c)")


# ---------------------------------------------------------------- the JSON helpers are strict

JSON_PROBE = r"""
#include "kolk_smartmodule.h"
/* The value becomes what kolk_json_find(value, "a") says: "found:<as written>", "absent" or
 * "error:<the SDK's message>". */
static int probe(const kolk_record *in, kolk_output *out) {
    kolk_json_value v;
    int rc = kolk_json_find(in->value, in->value_len, "a", -1, &v);
    char *text = kolk_arena_alloc((kolk_u32)in->value_len + KOLK_ERROR_BYTES_MAX + 16);
    if (!text) return -1;
    kolk_i32 n;
    if (rc > 0) { kolk_memcpy(text, "found:", 6); kolk_memcpy(text + 6, v.start, (kolk_u32)v.len); n = 6 + v.len; }
    else if (rc == 0) { kolk_memcpy(text, "absent", 6); n = 6; }
    else { kolk_memcpy(text, "error:", 6); kolk_memcpy(text + 6, kolk__error, kolk__error_len); n = 6 + (kolk_i32)kolk__error_len; }
    kolk_set_value(out, text, n);
    return 0;
}
KOLK_MAP(probe)
"""


@pytest.fixture(scope="module")
def json_probe(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return build_source(tmp_path_factory.mktemp("json"), "probe", JSON_PROBE)


def probe(cache: ModuleCache, module: bytes, docs: list[bytes]) -> list[str]:
    got, _ = run(cache, module, [(None, d) for d in docs])
    return [r.value.decode("utf-8", "replace") for r in got]


JSON_CASES = [
    # accepted
    (b'{"a": 1}', "found:1"),
    (b' {"b": [1, {"c": null}], "a" : "x\\"y" } \n', 'found:"x\\"y"'),
    (b'{"\\u0061": true}', "found:true"),  # a key is compared with its escapes decoded
    (b'{"b": {"a": 1, "a": 2}}', "absent"),  # duplicates below the top level are not looked for
    (b'{"a": -0.5e+10}', "found:-0.5e+10"),
    (b'{"a": "\\ud83d\\ude00 \xc3\xa9 \xf0\x9f\x98\x80"}', 'found:"\\ud83d\\ude00 é 😀"'),
    (b'{"a": ' + b"[" * 63 + b"]" * 63 + b"}", "found:" + "[" * 63 + "]" * 63),  # 64 deep with the object
    (b"{}", "absent"),
    # refused, each with what and where
    (b'{"a": 1, "a": 2}', "error:JSON: the field `a` is there twice"),
    (b'{"a": 1, "\\u0061": 2}', "error:JSON: the field `a` is there twice"),
    (b'{"a": 1} x', "error:JSON: trailing data after the object at byte 9"),
    (b'{"a": 1,}', "error:JSON: expected a string key at byte 8"),
    (b'{"a": 01}', "error:JSON: expected , or } at byte 7"),
    (b'{"a": 1.}', "error:JSON: bad number at byte 6"),
    (b'{"a": -}', "error:JSON: bad number at byte 6"),
    (b'{"a": 1e}', "error:JSON: bad number at byte 6"),
    (b'{"a": tru}', "error:JSON: unexpected character at byte 6"),
    (b'{"a": nul}', "error:JSON: unexpected character at byte 6"),
    (b'{"a": "\x01"}', "error:JSON: control character in a string at byte 7"),
    (b'{"a": "\\x"}', "error:JSON: bad escape at byte 7"),
    (b'{"a": "\\u12g4"}', "error:JSON: bad \\u escape at byte 7"),
    (b'{"a": "\xff"}', "error:JSON: invalid UTF-8 in a string at byte 7"),
    (b'{"a": "\xc0\xaf"}', "error:JSON: invalid UTF-8 in a string at byte 7"),  # overlong
    (b'{"a": "\xed\xa0\x80"}', "error:JSON: invalid UTF-8 in a string at byte 7"),  # a surrogate
    (b'{"a": "x', "error:JSON: unterminated string at byte 6"),
    (b'{"b": [1,,2], "a": 1}', "error:JSON: unexpected character at byte 9"),
    (b'{"b": {"c" 1}, "a": 1}', "error:JSON: expected : at byte 11"),
    (b'{"b": [1 2]}', "error:JSON: expected , or ] at byte 9"),
    (b'{"b": [1', "error:JSON: unterminated object or array at byte 8"),
    (b'{"a": ' + b"[" * 64 + b"]" * 64 + b"}", "error:JSON: nested deeper than 64 at byte 69"),
    (b'{"\\ud800": 1}', "error:JSON: lone surrogate escape in a key at byte 1"),
    (b"[]", "error:JSON: not an object at byte 0"),
    (b"", "error:JSON: empty, not an object at byte 0"),
]


@pytest.mark.parametrize("doc, expected", JSON_CASES, ids=[repr(c[0][:30]) for c in JSON_CASES])
def test_json_find_accepts_json_and_refuses_the_rest_saying_where(cache: ModuleCache, json_probe: bytes,
                                                                   doc: bytes, expected: str) -> None:
    assert probe(cache, json_probe, [doc]) == [expected]


def _python_verdict(doc: bytes) -> str:
    """What kolk_json_find(doc, "a") must say, by Python's strict json: found, absent or error."""
    def pairs(items: list) -> dict:
        return dict(items)

    try:
        top_pairs: list = []
        parsed = json.loads(doc.decode("utf-8"), parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)),
                            object_pairs_hook=lambda items: (top_pairs.append(items), pairs(items))[1])
    except (UnicodeDecodeError, ValueError, RecursionError):
        return "error"
    if not isinstance(parsed, dict):
        return "error"
    top = top_pairs[-1]  # the outermost object is the last one finished
    keys = [k for k, _ in top]
    if any("\ud800" <= ch <= "\udfff" for k in keys for ch in k):
        return "error"  # a key with a lone surrogate escape is not text: the SDK refuses it
    if keys.count("a") > 1:
        return "error"
    return "found" if "a" in keys else "absent"


def _depth(doc: bytes) -> int:
    depth = deepest = 0
    in_string = escaped = False
    for c in doc.decode("utf-8", "replace"):
        if in_string:
            escaped, in_string = (False, True) if escaped else (c == "\\", c != '"')
        elif c == '"':
            in_string = True
        elif c in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif c in "]}":
            depth -= 1
    return deepest


json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20),
                      st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=6))
json_tree = st.recursive(json_leaf, lambda inner: st.lists(inner, max_size=3)
                         | st.dictionaries(st.sampled_from(["a", "b", "\u00e9"]), inner, max_size=3), max_leaves=8)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=st.one_of(
    st.dictionaries(st.sampled_from(["a", "b", "c"]), json_tree, max_size=4).map(
        lambda d: json.dumps(d).encode()),
    st.tuples(st.dictionaries(st.sampled_from(["a", "b"]), json_tree, max_size=3).map(lambda d: json.dumps(d).encode()),
              st.integers(0, 200), st.binary(min_size=1, max_size=3)).map(
        lambda t: t[0][:t[1]] + t[2] + t[0][t[1] + 1:]),  # one spot changed: mostly not JSON any more
    st.lists(st.tuples(st.sampled_from(['"a"', '"b"', '"\\u0061"']), st.sampled_from(["1", '"x"', "[]", "{}"])),
             max_size=4).map(lambda kv: ("{" + ", ".join(f"{k}: {v}" for k, v in kv) + "}").encode()),
))
def test_json_find_agrees_with_python_json(cache: ModuleCache, json_probe: bytes, doc: bytes) -> None:
    """On valid documents, near-valid ones and duplicate keys, kolk_json_find accepts exactly
    what Python's strict json accepts (objects only, "a" at most once at the top level)."""
    if _depth(doc) > 60:
        return  # the SDK's depth limit, tested above; Python's is far deeper
    verdict = probe(cache, json_probe, [doc])[0].split(":", 1)[0]
    assert verdict == _python_verdict(doc), doc


JSON_CHECK = r"""
#include "kolk_smartmodule.h"
static int valid(const kolk_record *r) { return kolk_json_check(r->value, r->value_len) == 0; }
KOLK_FILTER(valid)
"""


def test_json_check_keeps_exactly_one_json_value_of_any_type(cache: ModuleCache, tmp_path: pathlib.Path) -> None:
    module = build_source(tmp_path, "check", JSON_CHECK)
    docs = [b" 1 ", b'"x"', b"[1, {}]", b"null", b'{"a": 1}', b"1 2", b"[1,]", b"", b"01", b"\xef\xbb\xbf1", b"-"]
    got, _ = run(cache, module, [(None, d) for d in docs])
    assert [r.value for r in got] == [b" 1 ", b'"x"', b"[1, {}]", b"null", b'{"a": 1}']


BAD_LENGTH = r"""
#include "kolk_smartmodule.h"
static int f(const kolk_record *in, kolk_output *out) { if (in->index == 1) out->value_len = -5; return 0; }
KOLK_MAP(f)
"""


def test_a_batch_error_code_of_the_sdk_is_an_error_code_with_its_message(cache: ModuleCache,
                                                                         tmp_path: pathlib.Path) -> None:
    """The SDK's batch codes lie in [-2^31, -1], so the host reports them as errors of the batch
    (with the SDK's message), not as an output pointer with the high bit set."""
    module = build_source(tmp_path, "badlen", BAD_LENGTH)
    with pytest.raises(ChainError) as e:
        run(cache, module, [(None, b"a"), (None, b"b")])
    assert e.value.reason == "recordError" and e.value.offset is None
    assert str(e.value).endswith("map refused the batch (code -2147483646): record 1: an output key or value length "
                                 "is below -1")
