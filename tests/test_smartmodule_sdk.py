"""The C SDK (smartmodule/sdk/kolk_smartmodule.h) and its examples, built with the real clang
and run through the real engine on real batches: each kind keeps the offsets the ABI asks
for, the accumulator carries across batches and instances, and ``kolk smartmodule build`` /
``test`` answer with one clear line when something is wrong."""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kolk.segments.batch import iter_batches
from kolk.segments.records import build_batch, decode_records
from kolk.smartmodule.build import BuildError, build_c, load_source
from kolk.smartmodule.chain import Chain, ChainError, Stage
from kolk.smartmodule.engine import ModuleCache, SmartModuleError

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "smartmodule" / "examples"
BATCH_MAX = 64 << 20

KINDS = {"contains": ("filter", True), "json_field": ("map", True), "split_lines": ("array_map", False),
         "count_per_key": ("aggregate", False), "redact": ("map", True)}


@pytest.fixture(scope="module")
def cache() -> ModuleCache:
    return ModuleCache()


@pytest.fixture(scope="module")
def wasm() -> dict[str, bytes]:
    return {name: build_c(EXAMPLES / f"{name}.c") for name in KINDS}


def run(cache: ModuleCache, module: bytes, records: list, params: dict[str, str] | None = None,
        base_offset: int = 1000, instance=None):  # noqa: ANN001, ANN201
    """Records out of one batch through one module: ``(records, instance)``."""
    instance = instance or cache.load(module).instantiate(params or {})
    out = Chain([Stage("test@1", instance)]).apply(
        build_batch(records, base_offset=base_offset, timestamps=[5000 + i for i in range(len(records))]), BATCH_MAX)
    got = []
    if out:
        for pos, _h in iter_batches(out, BATCH_MAX, shared_offsets=True):
            got.extend(decode_records(out, pos))
    return got, instance


def test_every_example_builds_into_a_module_with_exactly_the_abi_exports(cache: ModuleCache,
                                                                          wasm: dict[str, bytes]) -> None:
    """Each example is one kind, with init where it takes parameters, and imports nothing."""
    import wasmtime

    for name, (kind, has_init) in KINDS.items():
        loaded = cache.load(wasm[name])
        assert (loaded.kind, loaded.has_init) == (kind, has_init), name
        exports = {e.name for e in loaded.module.exports}
        assert exports == {"memory", "kolk_abi_version", "kolk_alloc", "kolk_error", kind} | (
            {"init"} if has_init else set())
        assert not list(wasmtime.Module(cache.engine, wasm[name]).imports)
    assert sorted(p.stem for p in EXAMPLES.glob("*.c")) == sorted(KINDS)


def test_contains_keeps_exactly_the_matching_records_with_their_offsets(cache: ModuleCache,
                                                                        wasm: dict[str, bytes]) -> None:
    recs = [(None, b"hello"), (b"k", b"xhellx", [("h", b"v")]), (None, None), (b"k2", b"nope"), (None, b"hell")]
    got, _ = run(cache, wasm["contains"], recs, {"needle": "hell"})
    assert [(r.offset, r.timestamp, r.key, r.value, r.headers) for r in got] == [
        (1000, 5000, None, b"hello", ()), (1001, 5001, b"k", b"xhellx", (("h", b"v"),)), (1004, 5004, None, b"hell", ())]


def test_contains_init_refuses_a_missing_needle(cache: ModuleCache, wasm: dict[str, bytes]) -> None:
    with pytest.raises(SmartModuleError) as e:
        cache.load(wasm["contains"]).instantiate({"other": "x"})
    assert e.value.reason == "initFailed"


def test_json_field_maps_the_value_to_the_field(cache: ModuleCache, wasm: dict[str, bytes]) -> None:
    recs = [(b"a", b'{"f": "x\\"\\u00e9\\ud83d\\ude00", "g": 1}'), (None, b' { "g": {"f": 2}, "f" : -1.5e3 }'),
            (None, b'{"g": 1}'), (None, b'{"f": null}'), (None, b'{"f": true}'), (None, b'{"f": [1, "]"]}')]
    got, _ = run(cache, wasm["json_field"], recs, {"field": "f"})
    assert [(r.offset, r.key, r.value) for r in got] == [
        (1000, b"a", 'x"é😀'.encode()), (1001, None, b"-1.5e3"), (1002, None, None), (1003, None, None),
        (1004, None, b"true"), (1005, None, b'[1, "]"]')]


def test_json_field_ends_the_stream_on_a_value_that_is_not_an_object(cache: ModuleCache,
                                                                     wasm: dict[str, bytes]) -> None:
    with pytest.raises(ChainError) as e:
        run(cache, wasm["json_field"], [(None, b'{"f": 1}'), (None, b"not json")], {"field": "f"})
    assert e.value.offset == 1001 and e.value.reason == "recordError"


def test_split_lines_gives_one_record_per_line_at_the_input_offset(cache: ModuleCache,
                                                                   wasm: dict[str, bytes]) -> None:
    recs = [(b"k", b"one\r\ntwo\n\nthree", [("h", b"v")]), (None, b""), (None, None), (None, b"\nlast\n")]
    got, _ = run(cache, wasm["split_lines"], recs)
    assert [(r.offset, r.timestamp, r.key, r.value, r.headers) for r in got] == [
        (1000, 5000, b"k", b"one", (("h", b"v"),)), (1000, 5000, b"k", b"two", (("h", b"v"),)),
        (1000, 5000, b"k", b"three", (("h", b"v"),)), (1003, 5003, None, b"last", ())]


def test_a_filter_after_an_array_map_keeps_records_that_share_an_offset(cache: ModuleCache,
                                                                        wasm: dict[str, bytes]) -> None:
    # split_lines gives several records one offset; contains after it keeps two of them, which
    # share it (before: "offset delta 0 after 0; a filter keeps offsets strictly increasing").
    split = cache.load(wasm["split_lines"]).instantiate()
    keep = cache.load(wasm["contains"]).instantiate({"needle": "error"})
    chain = Chain([Stage("split@1", split), Stage("keep@1", keep)])
    out = chain.apply(build_batch([(None, b"error a\nok\nerror b"), (None, b"error c")], base_offset=7), BATCH_MAX)
    got = [r for pos, _h in iter_batches(out, BATCH_MAX, shared_offsets=True) for r in decode_records(out, pos)]
    assert [(r.offset, r.value) for r in got] == [(7, b"error a"), (7, b"error b"), (8, b"error c")]
    chain.close()


def test_output_many_times_the_input_grows_the_arena(cache: ModuleCache, wasm: dict[str, bytes]) -> None:
    """One-byte lines: 30 output bytes per 2 input bytes, so the output buffer moves many times
    and memory grows well past its first pages."""
    value = b"x\n" * 100_000
    got, _ = run(cache, wasm["split_lines"], [(None, value), (b"k", b"a\nb")])
    assert len(got) == 100_002
    assert {r.value for r in got[:100_000]} == {b"x"} and {r.offset for r in got[:100_000]} == {1000}
    assert [(r.offset, r.value) for r in got[-2:]] == [(1001, b"a"), (1001, b"b")]


def test_count_per_key_counts_across_batches_and_instances(cache: ModuleCache, wasm: dict[str, bytes]) -> None:
    """The accumulator carries the counts to the next batch, and to a fresh instance given it back."""
    got, inst = run(cache, wasm["count_per_key"], [(b"a", b""), (b"b", b""), (b"a", b""), (None, b"")])
    assert [(r.offset, r.key, r.value) for r in got] == [
        (1000, b"a", b"a=1"), (1001, b"b", b"b=1"), (1002, b"a", b"a=2"), (1003, None, b"null=1")]
    got, inst = run(cache, wasm["count_per_key"], [(b"b", b""), (b"null", b"")], base_offset=1004, instance=inst)
    assert [(r.offset, r.value) for r in got] == [(1004, b"b=2"), (1005, b"null=1")]
    fresh = cache.load(wasm["count_per_key"]).instantiate()
    fresh.accumulator = inst.accumulator
    got, _ = run(cache, wasm["count_per_key"], [(b"a", b""), (None, b""), (b"null", b"")], base_offset=1006,
                 instance=fresh)
    assert [r.value for r in got] == [b"a=3", b"null=2", b"null=2"]
    # The table: key_length u32 (0xffffffff: null), key, count u64, in first-seen order.
    assert fresh.accumulator == (b"\1\0\0\0a" + (3).to_bytes(8, "little") + b"\1\0\0\0b" + (2).to_bytes(8, "little")
                                 + b"\xff\xff\xff\xff" + (2).to_bytes(8, "little")
                                 + b"\4\0\0\0null" + (2).to_bytes(8, "little"))


def test_count_per_key_refuses_an_accumulator_that_is_not_its_table(cache: ModuleCache,
                                                                    wasm: dict[str, bytes]) -> None:
    inst = cache.load(wasm["count_per_key"]).instantiate({"initial": "not a table"})
    with pytest.raises(ChainError) as e:
        run(cache, wasm["count_per_key"], [(b"a", b"")], instance=inst)
    assert e.value.offset == 1000


def test_redact_masks_every_top_level_occurrence(cache: ModuleCache, wasm: dict[str, bytes]) -> None:
    recs = [(b"k", b'{"pw": "se\\"cret", "x": {"pw": 1}, "pw":[1,2]}'), (None, b'{"a": 1}'), (None, None),
            (None, b'{"pw":7}')]
    got, _ = run(cache, wasm["redact"], recs, {"field": "pw"})
    assert [(r.offset, r.key, r.value) for r in got] == [
        (1000, b"k", b'{"pw": "***", "x": {"pw": 1}, "pw":"***"}'), (1001, None, b'{"a": 1}'), (1002, None, None),
        (1003, None, b'{"pw":"***"}')]
    with pytest.raises(ChainError) as e:  # fails closed: nothing passes unmasked
        run(cache, wasm["redact"], [(None, b'{"pw": "x"'), (None, b"{}")], {"field": "pw"})
    assert e.value.offset == 1000


SDK_FEATURES = r"""
/* filter_map: keep records with a "keep" header; the value, a decimal, doubled; a "seen" header added. */
#include "kolk_smartmodule.h"
static int twice(const kolk_record *in, kolk_output *out) {
    const kolk_u8 *h; kolk_i32 hlen; kolk_i64 v;
    if (kolk_header(in, "keep", &h, &hlen) != 0) return 0;
    if (kolk_parse_i64(in->value, in->value_len, &v) != 0) return -1;
    char *text = kolk_arena_alloc(21);
    if (!text || kolk_add_header(out, "seen", "yes", 3) != 0) return -1;
    kolk_set_value(out, text, kolk_format_i64(v * 2, text));
    return 1;
}
KOLK_FILTER_MAP(twice)
"""


def test_sdk_headers_integers_and_filter_map(cache: ModuleCache, tmp_path: pathlib.Path) -> None:
    src = tmp_path / "twice.c"
    src.write_text(SDK_FEATURES)
    module = build_c(src)
    keep = [("keep", None)]
    recs = [(None, b"21", keep), (None, b"5"), (b"k", b"-4611686018427387904", [("a", b"1"), ("keep", b"")])]
    got, _ = run(cache, module, recs)
    assert [(r.offset, r.key, r.value, r.headers) for r in got] == [
        (1000, None, b"42", (("keep", None), ("seen", b"yes"))),
        (1002, b"k", b"-9223372036854775808", (("a", b"1"), ("keep", b""), ("seen", b"yes")))]
    with pytest.raises(ChainError) as e:
        run(cache, module, [(None, b"1", keep), (None, b"9223372036854775808", keep)])
    assert e.value.offset == 1001


DEEP = r"""
#include "kolk_smartmodule.h"
__attribute__((noinline)) static int down(int n, volatile char *up) {
    volatile char pad[64];
    pad[0] = up ? up[0] : 1;
    return n <= 0 ? pad[0] : down(n - 1, pad) + pad[0];
}
static int deep(const kolk_record *r) { kolk_i64 n; return kolk_parse_i64(r->value, r->value_len, &n) || down((int)n, 0); }
KOLK_FILTER(deep)
"""


def test_a_stack_overflow_traps_instead_of_overwriting_globals(cache: ModuleCache, tmp_path: pathlib.Path) -> None:
    """build_c links with the stack below the static data: running off it is a trap."""
    src = tmp_path / "deep.c"
    src.write_text(DEEP)
    module = build_c(src)
    assert len(run(cache, module, [(None, b"100")])[0]) == 1
    with pytest.raises(ChainError) as e:
        run(cache, module, [(None, b"5000")])
    assert e.value.reason == "trap" and e.value.offset is None


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(needle=st.text(alphabet="ab\u00e9", max_size=3),
       values=st.lists(st.none() | st.lists(st.sampled_from([b"a", b"b", b"\xc3", b"\xa9", b"\0", b"\xff"]),
                                            max_size=40).map(b"".join), min_size=1, max_size=30),
       base_offset=st.integers(0, 2**40))
def test_contains_agrees_with_python_in(cache: ModuleCache, wasm: dict[str, bytes], needle: str,
                                        values: list[bytes | None], base_offset: int) -> None:
    """For any batch of byte values and any needle, the filter keeps exactly the records for
    which Python's ``needle in value`` holds, at their own offsets."""
    got, _ = run(cache, wasm["contains"], [(None, v) for v in values], {"needle": needle}, base_offset=base_offset)
    n = needle.encode()
    assert [(r.offset, r.value) for r in got] == [
        (base_offset + i, v) for i, v in enumerate(values) if v is not None and n in v]


# ---------------------------------------------------------------- build helpers and the CLI

def test_load_source_reads_wat_and_refuses_other_files(tmp_path: pathlib.Path) -> None:
    (tmp_path / "m.wat").write_text("(module)")
    assert load_source(tmp_path / "m.wat") == b"\0asm\1\0\0\0"
    (tmp_path / "m.txt").write_text("x")
    with pytest.raises(BuildError, match="a .wasm, .wat, .c, .rs or .ts file"):
        load_source(tmp_path / "m.txt")
    (tmp_path / "bad.wat").write_text("(module (func (nope)))")
    with pytest.raises(BuildError, match="not valid WebAssembly text"):
        load_source(tmp_path / "bad.wat")


def kolk(*args: str, cwd: pathlib.Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kolk", "smartmodule", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def test_cli_build_writes_a_checked_module(tmp_path: pathlib.Path) -> None:
    src = tmp_path / "contains.c"
    shutil.copy(EXAMPLES / "contains.c", src)
    done = kolk("build", str(src), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "filter" in done.stdout and (tmp_path / "contains.wasm").exists()
    done = kolk("build", str(src), "-o", str(tmp_path / "out.wasm"), "--json", cwd=tmp_path)
    info = json.loads(done.stdout)
    assert info["kind"] == "filter" and info["init"] is True
    assert info["size"] == len((tmp_path / "out.wasm").read_bytes())


def test_cli_test_runs_a_module_on_the_input_lines(tmp_path: pathlib.Path) -> None:
    (tmp_path / "in.txt").write_text("hello world\nnothing\n\nsay hello\n")
    done = kolk("test", str(EXAMPLES / "contains.c"), "--input", "in.txt", "-p", "needle=hello", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    # OFFSET  TIMESTAMP  key=  value=; empty lines are not records; a line has no timestamp: now.
    assert [line.split("  ", 2)[::2] for line in done.stdout.splitlines()] == [
        ["0", 'key=null  value="hello world"'], ["2", 'key=null  value="say hello"']]
    (tmp_path / "kv.txt").write_text("a:1\nb:2\na:3\n")
    done = kolk("test", str(EXAMPLES / "count_per_key.c"), "--input", "kv.txt", "--key-separator", ":", "--json",
                cwd=tmp_path)
    out = json.loads(done.stdout)
    assert [(r["offset"], r["key"], r["value"]) for r in out["records"]] == [(0, "a", "a=1"), (1, "b", "b=1"),
                                                                          (2, "a", "a=2")]
    # count_per_key's table is binary (a count is a u64): shown as hex
    assert out["stages"][0]["kind"] == "aggregate" and out["stages"][0]["accumulator"] == {
        "hex": (b"\1\0\0\0a" + (2).to_bytes(8, "little") + b"\1\0\0\0b" + (1).to_bytes(8, "little")).hex()}


@pytest.mark.parametrize("args, expected", [
    (["test", "missing.c", "--input", "in.txt"], "missing.c: no such file"),
    (["test", "stored-name", "--input", "in.txt"], "stored-name: no such file (to test a stored SmartModule, "
                                                   "give --sc)"),
    (["build", "missing.c"], "missing.c: no such file"),
    (["build", "broken.c"], "broken.c does not compile: broken.c:3:"),
    (["test", "broken.c", "--input", "in.txt"], "broken.c does not compile: broken.c:3:"),
    (["test", "CONTAINS", "--input", "in.txt"], "cannot start: initFailed"),
    (["test", "CONTAINS", "--input", "missing.txt", "-p", "needle=x"], "missing.txt: no such file"),
    (["test", "JSON_FIELD", "--input", "in.txt", "-p", "field=x"], "failed at offset 0: recordError"),
    (["test", "nokind.wat", "--input", "in.txt"], "the module is refused: invalidModule"),
])
def test_cli_errors_are_one_line_naming_the_problem(tmp_path: pathlib.Path, args: list[str], expected: str) -> None:
    (tmp_path / "in.txt").write_text("not json\n")
    (tmp_path / "broken.c").write_text('#include "kolk_smartmodule.h"\n\nstatic int f(void) { return nope; }\n')
    (tmp_path / "nokind.wat").write_text("(module (memory (export \"memory\") 1))")
    args = [str(EXAMPLES / "contains.c") if a == "CONTAINS" else str(EXAMPLES / "json_field.c")
            if a == "JSON_FIELD" else a for a in args]
    done = kolk(*args, cwd=tmp_path)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"kolk smartmodule {args[0]}: "), done.stderr
    assert expected in lines[0]

