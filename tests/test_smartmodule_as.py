"""The AssemblyScript SDK (smartmodule/sdk/assemblyscript/) and the AssemblyScript twins of the C
examples, built with the pinned asc and run through the real engine: each example gives exactly
what its C twin gives on random batches (null keys and values, headers, JSON and bytes that are
not, empty batches, parameters), error messages included; and the SDK's own promises (no
imports, no start function, memory rewound at every host call, state made by top-level code
and by init kept)."""

from __future__ import annotations

import functools
import os
import pathlib
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kolk.smartmodule.build import build_c, build_source
from kolk.smartmodule.chain import ChainError
from kolk.smartmodule.engine import ModuleCache, SmartModuleError

sys.path.insert(0, os.path.dirname(__file__))
from test_smartmodule_rust import (  # noqa: E402
    BYTES, FIELDS, JSONISH, as_bytes, batches_of, mangled_json, outcome,
)
from test_smartmodule_sdk import EXAMPLES, run  # noqa: E402

NAMES = ("contains", "json_field", "split_lines", "count_per_key", "redact")
ABI_EXPORTS = {"memory", "kolk_abi_version", "kolk_alloc", "kolk_error"}
MODULE_BYTES_MAX = 32 << 10
HYPOTHESIS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@functools.lru_cache(maxsize=1)
def built_modules() -> dict[str, bytes]:
    """Each AssemblyScript example and this file's own modules, built once per test session
    (asc is slow to start: two at a time); test_smartmodule_as_cli.py uses them too."""
    with tempfile.TemporaryDirectory(prefix="kolk-as-test-") as tmp:
        sources = {name: EXAMPLES / f"{name}.ts" for name in NAMES}
        for name, text in (("features", FEATURES),):
            sources[name] = pathlib.Path(tmp) / f"{name}.ts"
            sources[name].write_text(text)
        with ThreadPoolExecutor(2) as pool:
            return dict(zip(sources, pool.map(build_source, sources.values())))


def built_examples() -> dict[str, bytes]:
    return {name: built_modules()[name] for name in NAMES}


@pytest.fixture(scope="module")
def as_wasm() -> dict[str, bytes]:
    return built_examples()


@pytest.fixture(scope="module")
def c_wasm() -> dict[str, bytes]:
    return {name: build_c(EXAMPLES / f"{name}.c") for name in NAMES}


@pytest.fixture(scope="module")
def cache() -> ModuleCache:
    return ModuleCache()


def twins(cache: ModuleCache, as_wasm: dict, c_wasm: dict, name: str, batches: list,
          params: dict[str, str] | None = None) -> tuple[list, bytes | None]:
    """What the AssemblyScript example gives, after checking its C twin gives exactly the same."""
    got = outcome(cache, as_wasm[name], batches, params)
    assert got == outcome(cache, c_wasm[name], batches, params)
    return got


def test_every_example_is_its_c_twins_kind_with_only_the_abi_exports(cache: ModuleCache, as_wasm: dict,
                                                                     c_wasm: dict) -> None:
    """Same kind and init as the C twin, kolk_error, no imports, no start function, small."""
    import wasmtime

    from kolk.smartmodule.validate import SECTION_START, section_ids

    assert sorted(p.stem for p in EXAMPLES.glob("*.ts")) == sorted(p.stem for p in EXAMPLES.glob("*.c"))
    for name in NAMES:
        mod, c = cache.load(as_wasm[name]), cache.load(c_wasm[name])
        assert (mod.kind, mod.has_init) == (c.kind, c.has_init), name
        exports = {e.name for e in mod.module.exports}
        assert exports == ABI_EXPORTS | {mod.kind} | ({"init"} if mod.has_init else set()), name
        assert not list(wasmtime.Module(cache.engine, as_wasm[name]).imports), name
        assert SECTION_START not in section_ids(as_wasm[name]), name
        assert len(as_wasm[name]) < MODULE_BYTES_MAX, (name, len(as_wasm[name]))


@HYPOTHESIS
@given(needle=st.text(alphabet="ab\u00e9\0", max_size=3), batches=batches_of(st.none() | BYTES))
def test_contains_agrees_with_c(cache: ModuleCache, as_wasm: dict, c_wasm: dict, needle: str, batches: list) -> None:
    twins(cache, as_wasm, c_wasm, "contains", batches, {"needle": needle})


@HYPOTHESIS
@given(batches=batches_of(st.none() | BYTES))
def test_split_lines_agrees_with_c(cache: ModuleCache, as_wasm: dict, c_wasm: dict, batches: list) -> None:
    twins(cache, as_wasm, c_wasm, "split_lines", batches)


@HYPOTHESIS
@given(batches=batches_of(st.none() | BYTES, max_batches=4))
def test_count_per_key_agrees_with_c_across_batches(cache: ModuleCache, as_wasm: dict, c_wasm: dict,
                                                    batches: list) -> None:
    """The outputs and the accumulator table itself, byte for byte."""
    twins(cache, as_wasm, c_wasm, "count_per_key", batches)


@HYPOTHESIS
@given(field=st.sampled_from(FIELDS), batches=batches_of(JSONISH))
def test_json_field_and_redact_agree_with_c(cache: ModuleCache, as_wasm: dict, c_wasm: dict, field: str,
                                            batches: list) -> None:
    for name in ("json_field", "redact"):
        twins(cache, as_wasm, c_wasm, name, as_bytes(batches), {"field": field})


@HYPOTHESIS
@given(field=st.sampled_from(FIELDS), batches=batches_of(mangled_json() | st.binary(max_size=16)))
def test_json_helpers_refuse_what_c_refuses_with_the_same_message(cache: ModuleCache, as_wasm: dict, c_wasm: dict,
                                                                   field: str, batches: list) -> None:
    """jsonBegin/jsonNext/jsonKeyIs/jsonFind are the C SDK's: same record refused, same words."""
    for name in ("json_field", "redact"):
        twins(cache, as_wasm, c_wasm, name, batches, {"field": field})


def test_error_messages_reach_the_host_as_the_c_twins_do(cache: ModuleCache, as_wasm: dict, c_wasm: dict) -> None:
    """kolk_error: a refused record or parameter carries the module's message, word for word the C twin's."""
    def init_error(module: bytes, params: dict[str, str]) -> str:
        with pytest.raises(SmartModuleError) as e:
            cache.load(module).instantiate(params)
        assert e.value.reason == "initFailed"
        return str(e.value)

    for name, params, words in [("contains", {}, "missing parameter `needle`"),
                                ("contains", {"needle": "x", "neddle": "y"},
                                 "unknown parameter `neddle` (this module takes: needle)")]:
        message = init_error(as_wasm[name], params)
        assert message.endswith(words) and message == init_error(c_wasm[name], params)
    cache.load(as_wasm["json_field"]).instantiate({"field": "f", "initial": ""})  # `initial` is always known
    got, _ = twins(cache, as_wasm, c_wasm, "json_field", [[(None, b'{"f": 1}', []), (None, b'{"f": 1 "g": 2}', [])]],
                   {"field": "f"})
    assert got[-1][:3] == ("error", "recordError", 1001)
    assert got[-1][3].endswith("map refused the record: JSON: expected , or } at byte 8")
    got, _ = twins(cache, as_wasm, c_wasm, "json_field", [[(None, b'{"f": 1, "f": 2}', [])]], {"field": "f"})
    assert got[-1][3].endswith(": JSON: the field `f` is there twice")
    for module in (as_wasm["count_per_key"], c_wasm["count_per_key"]):
        inst = cache.load(module).instantiate({"initial": "not a table"})
        with pytest.raises(ChainError) as e:
            run(cache, module, [(b"a", b"")], instance=inst)
        assert e.value.offset == 1000 and str(e.value).endswith("the accumulator is not a count table "
                                                                "(see count_per_key.c)")


def test_memory_is_rewound_at_every_call_and_init_state_is_kept(cache: ModuleCache, as_wasm: dict) -> None:
    """The stub runtime never collects: kolk_alloc rewinds it. 200 batches of 1,000 records
    through one instance leave its memory where the first batch left it; the needle init made
    is still there at the end."""
    inst = cache.load(as_wasm["contains"]).instantiate({"needle": "needle"})
    records = [(None, (b"needle %d" if i % 3 == 0 else b"hay %d") % i) for i in range(1000)]
    got, _ = run(cache, as_wasm["contains"], records, instance=inst)
    first = inst.memory_size()
    for _ in range(200):
        got, _ = run(cache, as_wasm["contains"], records, instance=inst)
    assert inst.memory_size() == first and len(got) == 334


def test_output_many_times_the_input_grows_the_output(cache: ModuleCache, as_wasm: dict) -> None:
    got, _ = run(cache, as_wasm["split_lines"], [(None, b"x\n" * 100_000), (b"k", b"a\nb")])
    assert len(got) == 100_002 and {r.value for r in got[:100_000]} == {b"x"}
    assert [(r.offset, r.key, r.value) for r in got[-2:]] == [(1001, b"k", b"a"), (1001, b"k", b"b")]


# ------------------------------------------------------------------ the SDK's features

FEATURES = r"""
// filter_map: records with a `keep` header; the value, a decimal, times the parameter `factor`
// (default 2, or 3 from top-level code when `strict` is true); a `seen` header added; the key
// from a string; `boom` fails an assert (asc's abort, the SDK's: a trap, no import). Building it
// compiles every export of the SDK (asc compiles only what a module reaches).
import { Record, Output, fail, paramsKnown, paramI64, paramI64Value, paramBool, paramBoolValue,
         parseI64, parsedI64 } from "kolk-smartmodule";
import * as k from "kolk-smartmodule";

let factor: i64 = 2;
const table: Map<string, i64> = new Map<string, i64>(); // made by top-level code: kept

export function init(): i32 {
  if (paramsKnown(["factor", "strict"]) != 0) return 1;
  table.set("strict", 3);
  const given = paramI64("factor", -100, 100);
  if (given < 0) return 1;
  if (given > 0) factor = paramI64Value();
  const strict = paramBool("strict");
  if (strict < 0) return 1;
  if (strict > 0 && paramBoolValue()) factor = table.get("strict");
  return 0;
}

export function filter_map(r: Record, out: Output): i32 {
  if (r.index == 0xffffffff) return everything(r, out) + everyParam(); // never: asc compiles what is reachable
  if (r.header("keep") === null) return 0;
  const v = r.value();
  assert(v != "boom", "boom");
  if (!parseI64(r.valuePtr, r.valueLen)) return fail("not a number: " + (v === null ? "null" : v));
  out.setValueString((parsedI64() * factor).toString());
  out.setKeyString("k" + (r.index % 10).toString());
  out.addHeader("seen", "yes");
  return 1;
}

// Every other export of the SDK, used once, so that each of them is compiled and checked.
let sink: i64 = 0;
function everyParam(): i32 {
  sink += <i64>k.paramCount() + k.paramI64("a", 0, 1) + k.paramI64Value() + k.paramBool("b") + (k.paramBoolValue() ? 1 : 0);
  const p = k.param("x"); const q = k.paramRequired("y");
  sink += k.paramsKnown(["a"]) + (p === null ? 0 : 1) + (q === null ? 0 : 1);
  if (k.paramCount() > 0) { sink += k.paramName(0).length + k.paramPtr(0) + k.paramLength(0); }
  return 0;
}
function everything(r: k.Record, out: k.Output): i32 {
  const acc = new k.Accumulator();
  const buf = k.arenaAlloc(64);
  sink += k.find(r.valuePtr, r.valueLen, buf, 1) + (k.equal(buf, 1, buf, 1) ? 1 : 0) + (k.utf8Valid(buf, 3) ? 1 : 0);
  sink += k.utf8Char(buf, buf + 4) + (k.parseI64(buf, 2) ? k.parsedI64() : 0) + k.formatU64(5, buf) + k.formatI64(-5, buf);
  const t = k.text(r.keyPtr, r.keyLen); const c = k.copyBytes(r.valuePtr, r.valueLen); const u = k.utf8("x");
  sink += (t === null ? 0 : t.length) + (c === null ? 0 : c.length) + u.byteLength;
  k.setError("a"); k.errorAppend("b"); k.errorAppendBytes(buf, 1); k.errorAppendI64(5); k.clearError();
  sink += k.ERROR_BYTES_MAX + k.JSON_DEPTH_MAX + k.PARAMS_MAX + k.JSON_STRING + k.JSON_NUMBER + k.JSON_OBJECT + k.JSON_ARRAY + k.JSON_TRUE + k.JSON_FALSE + k.JSON_NULL;
  const it = new k.JsonIter(); const kk = new k.JsonValue(); const v = new k.JsonValue();
  sink += k.jsonCheck(r.valuePtr, r.valueLen) + k.jsonBegin(it, r.valuePtr, r.valueLen) + k.jsonNext(it, kk, v);
  sink += k.jsonUnescape(buf, 2, buf + 8) + k.jsonKeyIs(kk, buf, 1) + k.jsonFind(r.valuePtr, r.valueLen, buf, 1, v);
  const h = r.header("x"); if (h !== null) { sink += h.name().length; const hv = h.value(); if (hv !== null) sink += hv.length; }
  const h2 = k.headerAt(r.headersPtr, r.headerCount, 0); if (h2 !== null) sink += h2.nameLen;
  const kv = r.key(); const vv = r.value(); const kb = r.keyBytes(); const vb = r.valueBytes();
  sink += (kv === null ? 0 : 1) + (vv === null ? 0 : 1) + (kb === null ? 0 : 1) + (vb === null ? 0 : 1);
  out.setKey(buf, 1); out.setValue(buf, 1); out.setKeyString(null); out.setKeyString("a"); out.setValueString("b");
  out.setValueBytes(c); out.clearHeaders(); out.addHeader("h", null); out.addHeader("h", "v");
  acc.reserve(10); acc.splice(0, 0, buf, 1); acc.append(buf, 1); sink += acc.text().length; acc.setString("x");
  if (sink == 12345) return k.fail("x");
  if (sink == 54321) { const em = new k.Emitter(); return em.emitStrings("a", null) + em.emitOutput(out) + em.emit(buf, 1, buf, 1); }
  return 0;
}
"""


@pytest.fixture(scope="module")
def features() -> bytes:
    return built_modules()["features"]


def test_parameters_headers_strings_and_top_level_state(cache: ModuleCache, features: bytes) -> None:
    keep = [("keep", b"")]
    records = [(b"a", b"21", keep), (b"b", b"5", []), (None, b"-4", keep + [("x", None)])]
    for params, factor in [({}, 2), ({"factor": "-7"}, -7), ({"strict": "true"}, 3), ({"strict": "false"}, 2)]:
        got, _ = run(cache, features, records, params)
        assert [(r.offset, r.key, r.value, r.headers) for r in got] == [
            (1000, b"k0", b"%d" % (21 * factor), (("keep", b""), ("seen", b"yes"))),
            (1002, b"k2", b"%d" % (-4 * factor), (("keep", b""), ("x", None), ("seen", b"yes")))], params
    for params, words in [({"factor": "ten"}, "parameter `factor`: `ten` is not an integer"),
                          ({"factor": "101"}, "parameter `factor`: 101 is outside -100..100"),
                          ({"strict": "yes"}, "parameter `strict`: `yes` is not true or false"),
                          ({"factr": "1"}, "unknown parameter `factr` (this module takes: factor, strict)")]:
        with pytest.raises(SmartModuleError) as e:
            cache.load(features).instantiate(params)
        assert e.value.reason == "initFailed" and str(e.value).endswith(words), str(e.value)
    with pytest.raises(ChainError) as ce:
        run(cache, features, [(None, b"x1", keep)])
    assert ce.value.reason == "recordError" and str(ce.value).endswith("filter_map refused the record: not a number: x1")
    with pytest.raises(ChainError) as ce:
        run(cache, features, [(None, b"1", keep), (None, b"boom", keep)])
    assert ce.value.reason == "trap"







# ------------------------------------------------------------------ as_link, pure

def test_link_makes_kolk_alloc_run_the_exported_start_first_and_drops_the_export() -> None:
    import wasmtime

    from kolk.smartmodule.as_link import LinkError, link

    wat = """(module (memory (export "memory") 1) (global $g (mut i32) (i32.const 0))
      (func $start (global.set $g (i32.add (global.get $g) (i32.const 1))))
      (func (export "kolk_alloc") (param i32) (result i32) (local i32) (global.get $g))
      (export "kolk_start" (func $start)))"""
    linked = link(bytes(wasmtime.wat2wasm(wat)))
    store = wasmtime.Store()
    inst = wasmtime.Instance(store, wasmtime.Module(store.engine, linked), [])
    assert "kolk_start" not in inst.exports(store)
    assert inst.exports(store)["kolk_alloc"](store, 0) == 1  # the start ran first (each call, unguarded here)
    no_start = bytes(wasmtime.wat2wasm('(module (func (export "kolk_alloc") (param i32) (result i32) (i32.const 0)))'))
    assert link(no_start) == no_start
    with pytest.raises(LinkError, match="does not export kolk_alloc"):
        link(bytes(wasmtime.wat2wasm("(module)")))
    with pytest.raises(LinkError, match=r"imports env.trace \(trace\(\): a SmartModule has no console\)"):
        link(bytes(wasmtime.wat2wasm('(module (import "env" "trace" (func)))')))
    with pytest.raises(LinkError, match="not a WebAssembly binary"):
        link(b"\0asm\x02\0\0\0")
