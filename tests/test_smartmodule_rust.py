"""The Rust SDK (smartmodule/sdk/rust/) and the Rust twins of the C examples, built with
Debian's rustc for wasm32-unknown-unknown and run through the real engine: each Rust example
gives what its C twin gives, and what a small Python model says, on random batches (null keys
and values, headers, bytes that are not UTF-8, empty batches), error messages included; the
SDK's own features work; ``build_rust`` and ``kolk smartmodule build FILE.rs`` answer with one
line naming the file and line when something is wrong."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kolk.smartmodule import rust_build
from kolk.smartmodule.build import BuildError, build_c, build_rust, build_source, load_source
from kolk.smartmodule.chain import ChainError
from kolk.smartmodule.engine import ModuleCache, SmartModuleError

sys.path.insert(0, os.path.dirname(__file__))
from test_smartmodule_sdk import EXAMPLES, run  # noqa: E402

NAMES = ("contains", "json_field", "split_lines", "count_per_key", "redact")
ABI_EXPORTS = {"memory", "kolk_abi_version", "kolk_alloc", "kolk_error"}
LINKER_EXPORTS = {"__data_end", "__heap_base"}  # globals rustc always exports; the host ignores them
MODULE_BYTES_MAX = 32 << 10
HYPOTHESIS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="session")
def rust_wasm() -> dict[str, bytes]:
    """Each Rust example, built once per session."""
    return {name: build_rust(EXAMPLES / f"{name}.rs") for name in NAMES}


@pytest.fixture(scope="session")
def c_wasm() -> dict[str, bytes]:
    return {name: build_c(EXAMPLES / f"{name}.c") for name in NAMES}


@pytest.fixture(scope="module")
def cache() -> ModuleCache:
    return ModuleCache()


def outcome(cache: ModuleCache, module: bytes, batches: list[list], params: dict[str, str] | None = None,
            base_offset: int = 1000) -> tuple[list, bytes | None]:
    """Batches through one instance: per batch the records out, as plain tuples, or the
    stream's error (then no more batches); and the accumulator at the end."""
    inst = cache.load(module).instantiate(params or {})
    results: list = []
    offset = base_offset
    for records in batches:
        if not records:  # an empty batch: straight through the engine
            results.append(("empty", inst.call(0, offset, 5000, b"", -1).record_count))
            continue
        try:
            got, _ = run(cache, module, records, base_offset=offset, instance=inst)
        except ChainError as e:
            results.append(("error", e.reason, e.offset, str(e)))
            break
        results.append([(r.offset, r.timestamp, r.key, r.value, r.headers) for r in got])
        offset += len(records)
    return results, inst.accumulator


def twins(cache: ModuleCache, rust_wasm: dict[str, bytes], c_wasm: dict[str, bytes], name: str, batches: list,
          params: dict[str, str] | None = None) -> tuple[list, bytes | None]:
    """What the Rust example gives, after checking its C twin gives exactly the same."""
    got = outcome(cache, rust_wasm[name], batches, params)
    assert got == outcome(cache, c_wasm[name], batches, params)
    return got


def is_error_at(results: list, offset: int) -> bool:
    return results[-1][:3] == ("error", "recordError", offset)


# ------------------------------------------------------------------ random records

KEYS = st.none() | st.sampled_from([b"", b"a", b"b", b"null", b"\xff\xfe", "é".encode()]) | st.binary(max_size=5)
HEADERS = st.lists(st.tuples(st.text(max_size=4), st.none() | st.binary(max_size=4)), max_size=3)
BYTES = st.lists(st.sampled_from([b"a", b"b", b"\n", b"\r", b"\0", b"\xff", b"\xc3", b"\xa9"]),
                 max_size=24).map(b"".join)


def batches_of(values: st.SearchStrategy, max_batches: int = 3) -> st.SearchStrategy:
    record = st.tuples(KEYS, values, HEADERS)
    return st.lists(st.lists(record, max_size=8), min_size=1, max_size=max_batches)


def expect(batches: list[list], per_record, base_offset: int = 1000) -> list:  # noqa: ANN001
    """The model's results: ``per_record(key, value, headers)`` gives the (key, value) pairs
    out of one record, or raises ValueError for a record error."""
    results: list = []
    offset = base_offset
    for records in batches:
        if not records:
            results.append(("empty", 0))
            continue
        out = []
        for i, (key, value, headers) in enumerate(records):
            try:
                pairs = per_record(key, value, headers)
            except ValueError:
                return results + [("error", "recordError", offset + i)]
            out += [(offset + i, 5000 + i, k, v, tuple(headers)) for k, v in pairs]
        results.append(out)
        offset += len(records)
    return results


def same_as_model(got: list, model: list) -> bool:
    """Records equal; an error equal in reason and offset (the message is the SDK's)."""
    return len(got) == len(model) and all(g[:3] == m if m[0] == "error" else g == m for g, m in zip(got, model))


# ------------------------------------------------------------------ the examples

def test_every_rust_example_is_its_c_twins_kind_with_the_abi_exports(cache: ModuleCache, rust_wasm: dict[str, bytes],
                                                                     c_wasm: dict[str, bytes]) -> None:
    """Same kind, init where the C twin has one, kolk_error, no imports, and small."""
    import wasmtime

    assert sorted(p.stem for p in EXAMPLES.glob("*.rs")) == sorted(p.stem for p in EXAMPLES.glob("*.c"))
    for name in NAMES:
        rust, c = cache.load(rust_wasm[name]), cache.load(c_wasm[name])
        assert (rust.kind, rust.has_init) == (c.kind, c.has_init), name
        exports = {e.name for e in rust.module.exports}
        assert exports - LINKER_EXPORTS == ABI_EXPORTS | {rust.kind} | ({"init"} if rust.has_init else set()), name
        assert not list(wasmtime.Module(cache.engine, rust_wasm[name]).imports), name
        assert len(rust_wasm[name]) < MODULE_BYTES_MAX, (name, len(rust_wasm[name]))


@HYPOTHESIS
@given(needle=st.text(alphabet="ab\u00e9\0", max_size=3), batches=batches_of(st.none() | BYTES))
def test_contains_agrees_with_c_and_python(cache: ModuleCache, rust_wasm: dict[str, bytes], c_wasm: dict[str, bytes],
                                           needle: str, batches: list) -> None:
    got, _ = twins(cache, rust_wasm, c_wasm, "contains", batches, {"needle": needle})
    n = needle.encode()
    assert got == expect(batches, lambda k, v, h: [(k, v)] if v is not None and n in v else [])


@HYPOTHESIS
@given(batches=batches_of(st.none() | BYTES))
def test_split_lines_agrees_with_c_and_python(cache: ModuleCache, rust_wasm: dict[str, bytes],
                                              c_wasm: dict[str, bytes], batches: list) -> None:
    def lines(key: bytes | None, value: bytes | None, headers: list) -> list:
        cut = [ln[:-1] if ln.endswith(b"\r") else ln for ln in (value.split(b"\n") if value is not None else [])]
        return [(key, ln) for ln in cut if ln]

    got, _ = twins(cache, rust_wasm, c_wasm, "split_lines", batches)
    assert got == expect(batches, lines)


@HYPOTHESIS
@given(batches=batches_of(st.none() | BYTES, max_batches=4))
def test_count_per_key_agrees_with_c_and_python_across_batches(cache: ModuleCache, rust_wasm: dict[str, bytes],
                                                               c_wasm: dict[str, bytes], batches: list) -> None:
    """The counts and the accumulator table itself (byte for byte) are the C twin's."""
    counts: dict[bytes | None, int] = {}

    def count(key: bytes | None, value: bytes | None, headers: list) -> list:
        counts[key] = counts.get(key, 0) + 1
        return [(key, (b"null" if key is None else key) + b"=" + str(counts[key]).encode())]

    got, acc = twins(cache, rust_wasm, c_wasm, "count_per_key", batches)
    assert got == expect(batches, count)
    table = b"".join((b"\xff\xff\xff\xff" if k is None else len(k).to_bytes(4, "little") + k)
                     + n.to_bytes(8, "little") for k, n in counts.items())
    assert acc == table


JSON_SCALARS = st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.text(max_size=6)
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text("abé", max_size=2), inner, max_size=3), max_leaves=6)
FIELDS = ["f", "pw", "é", "ab"]
OBJECTS = st.tuples(st.dictionaries(st.sampled_from(FIELDS + ["g", "x"]), JSON_VALUES, max_size=4), st.booleans())
NOT_OBJECTS = st.binary(max_size=12).filter(lambda b: not b.lstrip(b" \t\r\n").startswith(b"{"))
# A value and how it was made: None, a JSON object (dict, ensure_ascii) or bytes that are no object.
JSONISH = st.none() | OBJECTS | NOT_OBJECTS


def as_bytes(batches: list) -> list:
    """The batches with each value as the bytes a producer sends (a dict as its JSON text)."""
    def value(v: object) -> bytes | None:
        return json.dumps(v[0], ensure_ascii=v[1]).encode() if isinstance(v, tuple) else v  # type: ignore[return-value]
    return [[(k, value(v), h) for k, v, h in records] for records in batches]


@HYPOTHESIS
@given(field=st.sampled_from(FIELDS), batches=batches_of(JSONISH))
def test_json_field_agrees_with_c_and_python(cache: ModuleCache, rust_wasm: dict[str, bytes],
                                             c_wasm: dict[str, bytes], field: str, batches: list) -> None:

    def extract(key: bytes | None, value: object, headers: list) -> list:
        if not isinstance(value, tuple):
            raise ValueError("not a JSON object")
        obj, ascii_only = value
        v = obj.get(field)
        if v is None:
            return [(key, None)]
        if isinstance(v, str):
            return [(key, v.encode())]
        return [(key, json.dumps(v, ensure_ascii=ascii_only).encode())]

    got, _ = twins(cache, rust_wasm, c_wasm, "json_field", as_bytes(batches), {"field": field})
    assert same_as_model(got, expect(batches, extract))


@HYPOTHESIS
@given(field=st.sampled_from(FIELDS), batches=batches_of(JSONISH))
def test_redact_agrees_with_c_and_python(cache: ModuleCache, rust_wasm: dict[str, bytes], c_wasm: dict[str, bytes],
                                         field: str, batches: list) -> None:
    def mask(key: bytes | None, value: object, headers: list) -> list:
        if value is None:
            return [(key, None)]
        if not isinstance(value, tuple):
            raise ValueError("not a JSON object")
        obj, ascii_only = value
        return [(key, json.dumps({k: "***" if k == field else v for k, v in obj.items()},
                                 ensure_ascii=ascii_only).encode())]

    got, _ = twins(cache, rust_wasm, c_wasm, "redact", as_bytes(batches), {"field": field})
    assert same_as_model(got, expect(batches, mask))


def mangled_json() -> st.SearchStrategy:
    """JSON objects with a byte cut, dropped or put in: most are refused somewhere inside."""
    def mangle(args: tuple) -> bytes:
        (obj, ascii_only), at, byte, how = args
        text = json.dumps(obj, ensure_ascii=ascii_only).encode()
        at %= len(text) + 1
        return text[:at] if how == 0 else text[:at] + text[at + 1:] if how == 1 else text[:at] + byte + text[at:]
    return st.tuples(OBJECTS, st.integers(0, 200), st.sampled_from([b",", b"}", b'"', b"\\", b"0", b"\xff", b" ", b"\n",
                                                                   b"\x01", b"[", b":"]), st.integers(0, 2)).map(mangle)


@HYPOTHESIS
@given(field=st.sampled_from(FIELDS), batches=batches_of(mangled_json() | st.binary(max_size=16)))
def test_json_examples_refuse_what_c_refuses_with_the_same_message(cache: ModuleCache, rust_wasm: dict[str, bytes],
                                                                   c_wasm: dict[str, bytes], field: str,
                                                                   batches: list) -> None:
    """The strict JSON helpers: on broken JSON the Rust SDK refuses the same record with the
    same words ("JSON: expected , or } at byte 9") as the C SDK."""
    for name in ("json_field", "redact"):
        twins(cache, rust_wasm, c_wasm, name, batches, {"field": field})


def test_error_messages_reach_the_host_as_the_c_twins_do(cache: ModuleCache, rust_wasm: dict[str, bytes],
                                                         c_wasm: dict[str, bytes]) -> None:
    """kolk_error: a refused record or parameter carries the module's message, word for word the C twin's."""
    def init_error(module: bytes, params: dict[str, str]) -> str:
        with pytest.raises(SmartModuleError) as e:
            cache.load(module).instantiate(params)
        assert e.value.reason == "initFailed"
        return str(e.value)

    for name, params, words in [("contains", {}, "missing parameter `needle`"),
                                ("contains", {"needle": "x", "neddle": "y"},
                                 "unknown parameter `neddle` (this module takes: needle)"),
                                ("json_field", {"field": "f", "initial": ""}, None)]:
        if words is None:
            cache.load(rust_wasm[name]).instantiate(params)  # `initial` is always known
            continue
        message = init_error(rust_wasm[name], params)
        assert message.endswith(words) and message == init_error(c_wasm[name], params)
    batches = [[(None, b'{"f": 1}', []), (None, b'{"f": 1 "g": 2}', [])]]
    got, _ = twins(cache, rust_wasm, c_wasm, "json_field", batches, {"field": "f"})
    assert is_error_at(got, 1001) and got[-1][3].endswith("map refused the record: JSON: expected , or } at byte 8")
    got, _ = twins(cache, rust_wasm, c_wasm, "json_field", [[(b"k", None, [])]], {"field": "f"})
    assert got[-1][3].endswith(": the value is null, not a JSON object")
    got, _ = twins(cache, rust_wasm, c_wasm, "json_field", [[(None, b'{"f": 1, "f": 2}', [])]], {"field": "f"})
    assert got[-1][3].endswith(": JSON: the field `f` is there twice")
    inst = cache.load(rust_wasm["count_per_key"]).instantiate({"initial": "not a table"})
    with pytest.raises(ChainError) as e:
        run(cache, rust_wasm["count_per_key"], [(b"a", b"")], instance=inst)
    assert e.value.offset == 1000 and str(e.value).endswith("the accumulator is not a count table (see count_per_key.c)")


def test_output_many_times_the_input_grows_the_output(cache: ModuleCache, rust_wasm: dict[str, bytes]) -> None:
    """One-byte lines: the output buffer moves many times and memory grows past its first pages."""
    got, _ = run(cache, rust_wasm["split_lines"], [(None, b"x\n" * 100_000), (b"k", b"a\nb")])
    assert len(got) == 100_002 and {r.value for r in got[:100_000]} == {b"x"}
    assert [(r.offset, r.key, r.value) for r in got[-2:]] == [(1001, b"k", b"a"), (1001, b"k", b"b")]


# ------------------------------------------------------------------ the SDK's features

FEATURES = r"""
// filter_map: records with a `keep` header; the value, a decimal, times the parameter
// `factor` (default 2); a `seen` header added; the key from a stack array; `boom` panics.
use kolk_smartmodule::*;

static FACTOR: Global<i64> = Global::new(2);

pub fn init(params: &Params) -> Result<(), Error> {
    params.known(&["factor", "strict"])?;
    if let Some(f) = params.i64("factor", -100, 100)? {
        FACTOR.set(f);
    }
    params.bool("strict")?;
    Ok(())
}

pub fn filter_map(record: &Record) -> Result<Option<Output>, Error> {
    if record.header("keep").is_none() {
        return Ok(None);
    }
    let value = record.value().unwrap_or(b"");
    if value == b"boom" {
        panic!("boom");
    }
    let n = parse_i64(value).ok_or_else(|| Error::new("not a number: ").append(value))?;
    let product = n.checked_mul(FACTOR.get()).ok_or(Error::new("overflow"))?;
    let mut text = Buffer::new();
    text.push_i64(product)?;
    let key = [b'k', b'0' + (record.index() % 10) as u8]; // on the stack: the SDK copies it
    let mut out = record.output().with_value(Some(&text)).with_key(Some(&key[..]));
    out.add_header("seen", Some(b"yes"))?;
    Ok(Some(out))
}
"""


@pytest.fixture(scope="module")
def features(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    src = tmp_path_factory.mktemp("features") / "features.rs"
    src.write_text(FEATURES)
    return build_rust(src)


def test_sdk_headers_integers_params_and_filter_map(cache: ModuleCache, features: bytes) -> None:
    keep = [("keep", None)]
    recs = [(None, b"21", keep), (None, b"5"), (b"x", b"-4611686018427387904", [("a", b"1"), ("keep", b"")])]
    got, _ = run(cache, features, recs)
    assert [(r.offset, r.key, r.value, r.headers) for r in got] == [
        (1000, b"k0", b"42", (("keep", None), ("seen", b"yes"))),
        (1002, b"k2", b"-9223372036854775808", (("a", b"1"), ("keep", b""), ("seen", b"yes")))]
    got, _ = run(cache, features, [(None, b"7", keep)], {"factor": "-3"})
    assert [r.value for r in got] == [b"-21"]
    with pytest.raises(ChainError) as e:
        run(cache, features, [(None, b"1", keep), (None, b"12x\xff", keep)])
    assert e.value.offset == 1001 and str(e.value).endswith("refused the record: not a number: 12x\ufffd")


@pytest.mark.parametrize("params, words", [
    ({"factor": "many"}, "parameter `factor`: `many` is not an integer"),
    ({"factor": "101"}, "parameter `factor`: 101 is outside -100..100"),
    ({"strict": "yes"}, "parameter `strict`: `yes` is not true or false"),
    ({"fator": "2"}, "unknown parameter `fator` (this module takes: factor, strict)"),
])
def test_sdk_parameter_helpers_name_the_parameter(cache: ModuleCache, features: bytes, params: dict[str, str],
                                                  words: str) -> None:
    with pytest.raises(SmartModuleError) as e:
        cache.load(features).instantiate(params)
    assert e.value.reason == "initFailed" and str(e.value).endswith(words)


def test_a_panic_traps_and_ends_only_that_call(cache: ModuleCache, features: bytes) -> None:
    with pytest.raises(ChainError) as e:
        run(cache, features, [(None, b"boom", [("keep", None)])])
    assert e.value.reason == "trap"
    assert len(run(cache, features, [(None, b"1", [("keep", None)])])[0]) == 1  # a new instance is fine


# ------------------------------------------------------------------ building

def test_rustc_is_kolk_rustc_else_debians(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KOLK_RUSTC", "/opt/rust/bin/rustc")
    assert rust_build.rustc() == "/opt/rust/bin/rustc"
    monkeypatch.delenv("KOLK_RUSTC")
    assert rust_build.rustc() == ("/usr/bin/rustc" if os.path.exists("/usr/bin/rustc") else "rustc")


BROKEN = "use kolk_smartmodule::*;\n\npub fn filter(record: &Record) -> bool { nope }\n"


@pytest.mark.parametrize("source, expected", [
    (BROKEN, "m.rs does not compile: m.rs:3:42: error[E0425]: cannot find value `nope` in this scope"),
    ("pub fn helper() {}\n", "m.rs: no kind function: a module defines one of pub fn filter, map, filter_map, "
                             "array_map, aggregate"),
    ("use kolk_smartmodule::*;\npub fn filter(r: &Record) -> bool { true }\n/* pub fn map( */\n"
     "pub fn map(r: &Record) -> Result<Output, Error> { Ok(r.output()) }\n",
     "m.rs: a module has exactly one kind; this one defines filter (line 2) and map (line 4)"),
    ("use kolk_smartmodule::*;\nfn filter(r: &Record) -> bool { true }\n",
     "m.rs:2: fn filter must be public: pub fn filter(record: &Record) -> bool"),
    ("use kolk_smartmodule::*;\npub fn filter(r: &Record) -> Option<bool> { None }\n",
     "m.rs: filter must be declared as pub fn filter(record: &Record) -> bool  (or -> Result<bool, Error>) (error"),
    ("use kolk_smartmodule::*;\npub fn filter(r: &Record) -> bool { true }\npub fn init() {}\n",
     "m.rs: init must be declared as pub fn init(params: &Params) -> Result<(), Error> (error"),
])
def test_build_errors_are_one_line_naming_the_file(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch,
                                                   source: str, expected: str) -> None:
    monkeypatch.chdir(tmp_path)
    pathlib.Path("m.rs").write_text(source)
    with pytest.raises(BuildError) as e:
        build_source("m.rs")
    assert str(e.value).startswith(expected), str(e.value)
    assert "\n" not in str(e.value)


def test_build_refuses_what_is_not_a_rust_source(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(BuildError, match=r"missing\.rs: no such file"):
        build_rust(tmp_path / "missing.rs")
    (tmp_path / "latin1.rs").write_bytes(b"// caf\xe9\n")
    with pytest.raises(BuildError, match=r"latin1\.rs is not UTF-8 text"):
        build_rust(tmp_path / "latin1.rs")
    shutil.copy(EXAMPLES / "contains.rs", tmp_path / "c.rs")
    monkeypatch.setenv("KOLK_RUSTC", str(tmp_path / "no-such-rustc"))
    with pytest.raises(BuildError) as e:
        build_rust(tmp_path / "c.rs")
    assert str(e.value) == (f"{tmp_path / 'no-such-rustc'} is not installed: building a Rust SmartModule needs "
                            "rustc and the wasm32 standard library (apt-get install rustc libstd-rust-dev-wasm32)")


@pytest.mark.parametrize("rustc_args, expected", [
    ("--sysroot /nonexistent", "this rustc ({rustc}) has no standard library for wasm32-unknown-unknown "
                               "(apt-get install rustc libstd-rust-dev-wasm32)"),
    ("-C linker=/nonexistent/rust-lld", "the WebAssembly linker /nonexistent/rust-lld is not installed "
                                        "(apt-get install lld: Debian's rust-lld is lld's)"),
])
def test_a_rustc_that_cannot_build_for_wasm32_says_what_to_install(tmp_path: pathlib.Path,
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   rustc_args: str, expected: str) -> None:
    """The real rustc, without the wasm32 standard library or without its linker."""
    rustc = tmp_path / "rustc"
    rustc.write_text(f'#!/bin/sh\nexec {rust_build.rustc()} {rustc_args} "$@"\n')
    rustc.chmod(0o755)
    monkeypatch.setenv("KOLK_RUSTC", str(rustc))
    with pytest.raises(BuildError) as e:
        build_rust(EXAMPLES / "split_lines.rs")
    assert str(e.value) == expected.format(rustc=rustc)


def test_build_source_writes_the_module_and_load_source_takes_rs(tmp_path: pathlib.Path,
                                                                 rust_wasm: dict[str, bytes]) -> None:
    out = tmp_path / "out.wasm"
    wasm = build_source(EXAMPLES / "split_lines.rs", out)
    assert out.read_bytes() == wasm == rust_wasm["split_lines"]  # the build is reproducible
    assert load_source(EXAMPLES / "split_lines.rs") == wasm


def kolk(*args: str, cwd: pathlib.Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kolk", "smartmodule", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=180)


def test_cli_build_of_a_rust_file_writes_a_checked_module(tmp_path: pathlib.Path) -> None:
    shutil.copy(EXAMPLES / "count_per_key.rs", tmp_path / "count_per_key.rs")
    done = kolk("build", "count_per_key.rs", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["kind"] == "aggregate" and info["init"] is False
    assert info["size"] == len((tmp_path / "count_per_key.wasm").read_bytes())
    (tmp_path / "broken.rs").write_text(BROKEN)
    done = kolk("build", "broken.rs", cwd=tmp_path)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1, done.stderr
    assert lines[0].startswith("kolk smartmodule build: ") and "broken.rs does not compile: broken.rs:3:42:" in lines[0]


# ------------------------------------------------------------------ templates (kolk smartmodule generate --lang rust)

TEMPLATES = EXAMPLES.parent / "templates" / "rust"


TEMPLATE_RECORDS = [(b"k", b"temp is 21"), (None, b"a  b"), (b"k", None), (b"", b""), (b"x", b"\xffz")]


@pytest.fixture(scope="module")
def templates_built() -> dict[str, dict[str, bytes]]:
    """kind -> {"rs": wasm, "c": wasm}, filled by the first case of each kind: the cases of
    one kind differ only in parameters, and building the same two sources again (~1.5 s of
    rustc and clang) shows nothing more."""
    return {}


@pytest.mark.parametrize("kind, params", [("filter", {}), ("filter", {"contains": "temp"}), ("map", {}),
                                          ("filter_map", {}), ("array_map", {}), ("aggregate", {}),
                                          ("aggregate", {"initial": "100"})])
def test_each_rust_template_does_what_its_c_template_does(cache: ModuleCache, tmp_path: pathlib.Path, kind: str,
                                                          params: dict[str, str],
                                                          templates_built: dict[str, dict[str, bytes]]) -> None:
    """smartmodule/templates/rust/KIND.rs with {{NAME}} filled in builds, and on records of
    every sort gives what the C template of that kind gives, parameters included."""
    assert sorted(p.stem for p in TEMPLATES.glob("*.rs")) == sorted(rust_build.KINDS)
    built = templates_built.get(kind, {})
    for lang, build in (("rs", build_rust), ("c", build_c)):
        text = (TEMPLATES.parent / ("rust" if lang == "rs" else "c") / f"{kind}.{lang}").read_text()
        assert "{{NAME}}" in text
        if lang not in built:
            src = tmp_path / f"my_module.{lang}"
            src.write_text(text.replace("{{NAME}}", "my_module"))
            built[lang] = build(src)
    templates_built[kind] = built
    assert cache.load(built["rs"]).kind == kind
    got = outcome(cache, built["rs"], [TEMPLATE_RECORDS, [], TEMPLATE_RECORDS], params)
    assert got == outcome(cache, built["c"], [TEMPLATE_RECORDS, [], TEMPLATE_RECORDS], params)
    assert len(got[0][0]) > 0
    if kind == "filter":  # a typo in its parameter is refused, with the C template's words
        messages = []
        for wasm in built.values():
            with pytest.raises(SmartModuleError) as e:
                cache.load(wasm).instantiate({"contans": "x"})
            messages.append(str(e.value))
        assert messages[0] == messages[1] and messages[0].endswith("unknown parameter `contans` (this module takes: "
                                                                   "contains)")
