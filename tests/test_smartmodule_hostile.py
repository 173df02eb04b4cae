"""Hostile SmartModules against the sandbox (docs/smartmodule-abi.md, smartmodule/engine.py).

Every module here is a few lines of WAT around a minimal valid module (``wat``): memory,
``kolk_abi_version`` returning 1, a bump-pointer ``kolk_alloc`` and one kind export whose body
each case replaces. Each case checks the documented ``reason`` (or the ChainError's reason,
label and offset), that the message names the problem, and that afterwards a well-behaved
instance of the same ModuleCache (another "stream", made before the hostile one failed) and a
fresh one still work on a batch.
"""

from __future__ import annotations

import functools
import struct
import time

import pytest
import wasmtime

from kolk.segments import build_batch, decode_records, parse_header
from kolk.segments.batch import HEADER_SIZE
from kolk.smartmodule.chain import Chain, ChainError, Stage
from kolk.smartmodule.engine import Instance, Limits, ModuleCache, SmartModuleError

# --- building modules -------------------------------------------------------------------

PAGE = 65536
OUT = 256  # where constant outputs live (a data segment); the bump allocator starts at 4096

ALLOC = """
  (global $bump (mut i32) (i32.const 4096))
  (func (export "kolk_alloc") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $bump))
    (global.set $bump (i32.and (i32.add (i32.add (local.get $p) (local.get $n)) (i32.const 7)) (i32.const -8)))
    (block $ok
      (loop $grow
        (br_if $ok (i32.le_u (global.get $bump) (i32.shl (memory.size) (i32.const 16))))
        (br_if $grow (i32.ne (memory.grow (i32.const 1)) (i32.const -1))))
      (global.set $bump (local.get $p))
      (return (i32.const 0)))
    (local.get $p))
"""

# The input unchanged: the record count moves next to the records section (ptr + 20) and
# the output is that count and the records. A valid filter, map, filter_map or array_map.
IDENTITY = """
    (i32.store (i32.add (local.get $ptr) (i32.const 20)) (i32.load (local.get $ptr)))
    (i64.or (i64.shl (i64.extend_i32_u (i32.add (local.get $ptr) (i32.const 20))) (i64.const 32))
            (i64.extend_i32_u (i32.sub (local.get $len) (i32.const 20))))
"""


def wat(body: str = IDENTITY, *, kind: str | None = "filter", params: str = "(param $ptr i32) (param $len i32)",
        result: str = "(result i64)", alloc: str | None = ALLOC, memory: str = '(memory (export "memory") 1)',
        version: str = "(i32.const 1)", extra: str = "", imports: str = "") -> bytes:
    """A minimal valid module, any part of which a case replaces (None leaves it out)."""
    parts = ["(module", imports, memory, f'(func (export "kolk_abi_version") (result i32) {version})']
    if alloc is not None:
        parts.append(alloc)
    if kind is not None:
        parts.append(f'(func (export "{kind}") {params} {result} {body})')
    parts += [extra, ")"]
    return wasmtime.wat2wasm("\n".join(parts))


def data(addr: int, raw: bytes) -> str:
    escaped = "".join("\\%02x" % b for b in raw)
    return f'(data (i32.const {addr}) "{escaped}")'


def ret(ptr: int, length: int) -> str:
    """``(i64.const ...)`` of the result naming ``ptr`` and ``length`` (as the i64 bits)."""
    (v,) = struct.unpack("<q", struct.pack("<Q", ((ptr & 0xFFFFFFFF) << 32) | (length & 0xFFFFFFFF)))
    return f"(i64.const {v})"


def const_output(out: bytes, kind: str = "filter", **kw) -> bytes:
    """A module whose kind call always hands back ``out``."""
    return wat(ret(OUT, len(out)), kind=kind, extra=data(OUT, out), **kw)


def walk(hook: str) -> str:
    """A body that visits the input records in order ($i the index, $p its address), runs
    ``hook`` on each, then returns the input unchanged."""
    return """
    (local $i i32) (local $p i32) (local $n i32)
    (local.set $n (i32.load (local.get $ptr)))
    (local.set $p (i32.add (local.get $ptr) (i32.const 24)))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        %s
        (local.set $p (i32.add (local.get $p) (i32.add (i32.const 4) (i32.load (local.get $p)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    """ % hook + IDENTITY


def rec(delta: int, value: bytes = b"x", key: bytes | None = None, ts: int = 0, attributes: int = 0) -> bytes:
    """One record of a records section (docs/format.md), no headers."""
    k = b"" if key is None else key
    body = struct.pack("<BqIi", attributes, ts, delta, -1 if key is None else len(k)) + k
    body += struct.pack("<i", len(value)) + value + struct.pack("<I", 0)
    return struct.pack("<I", len(body)) + body


def section(*records: bytes) -> bytes:
    return struct.pack("<I", len(records)) + b"".join(records)


# --- batches, caches, the well-behaved stream -----------------------------------------------

BASE = 100
BATCH = build_batch([(None if i % 2 else b"k%d" % i, b"value-%d" % i) for i in range(5)], base_offset=BASE,
                    first_timestamp=1_000)
LAST = 4  # the batch's last offset delta
GOOD = wat(walk(""))


@functools.cache
def cache_for(limits: Limits) -> ModuleCache:
    # One cache per set of limits (each has an epoch thread); tests share them, which is
    # the point: a hostile module must not disturb the others of its cache.
    return ModuleCache(limits)


FAST = Limits(fuel_per_call=2_000_000)


@pytest.fixture
def cache() -> ModuleCache:
    return cache_for(FAST)


def call(inst: Instance, batch: bytes = BATCH):
    h = parse_header(batch)
    return inst.call(h.record_count, h.base_offset, h.first_timestamp, batch[HEADER_SIZE:h.size],
                     h.last_offset_delta)


def good_stream(cache: ModuleCache) -> Instance:
    inst = cache.load(GOOD).instantiate()
    assert_works(inst)
    return inst


def assert_works(inst: Instance) -> None:
    out = Chain([Stage("good@1.0.0", inst)]).apply(BATCH, 1 << 20)
    assert decode_records(out) == decode_records(BATCH)


def assert_others_fine(cache: ModuleCache, stream: Instance) -> None:
    """The stream started before the failure, and a new one, still process batches."""
    assert_works(stream)
    assert_works(cache.load(GOOD).instantiate())


def fails(cache: ModuleCache, wasm: bytes, reason: str, *words: str, params: dict | None = None,
          batch: bytes = BATCH) -> SmartModuleError:
    """Load, instantiate and call ``wasm``; it must fail with ``reason`` and a message with
    every one of ``words``; the rest of the cache must not notice."""
    stream = good_stream(cache)
    with pytest.raises(SmartModuleError) as info:
        call(cache.load(wasm).instantiate(params), batch)
    e = info.value
    assert e.reason == reason, str(e)
    for w in words:
        assert w in str(e), (w, str(e))
    assert_others_fine(cache, stream)
    return e


def refused_at_load(cache: ModuleCache, wasm: bytes, *words: str) -> SmartModuleError:
    stream = good_stream(cache)
    compiles = cache.compiles
    with pytest.raises(SmartModuleError) as info:
        cache.load(wasm)
    e = info.value
    assert e.reason == "invalidModule", str(e)
    for w in words:
        assert w in str(e), (w, str(e))
    assert cache.compiles == compiles  # a refused module is not cached
    assert_others_fine(cache, stream)
    return e


# --- the good module itself -----------------------------------------------------------------


def test_good_module_is_the_identity(cache: ModuleCache) -> None:
    out = call(cache.load(GOOD).instantiate())
    assert out.record_count == 5 and out.max_offset_delta == LAST and out.accumulator is None
    assert out.records == BATCH[HEADER_SIZE:]


# --- fuel and wall clock --------------------------------------------------------------------

LOOP = "(loop $forever (br $forever)) (i64.const 0)"


def test_infinite_loop_runs_out_of_fuel(cache: ModuleCache) -> None:
    fails(cache, wat(LOOP), "fuelExhausted", "filter", "fuel")


def test_infinite_loop_in_init_runs_out_of_fuel(cache: ModuleCache) -> None:
    stream = good_stream(cache)
    loaded = cache.load(wat(extra='(func (export "init") (param i32 i32) (result i32) (loop $l (br $l)) '
                                  '(i32.const 0))'))
    with pytest.raises(SmartModuleError) as info:
        loaded.instantiate({"a": "b"})
    assert info.value.reason == "fuelExhausted" and "init" in str(info.value)
    assert_others_fine(cache, stream)


def test_infinite_start_function_runs_out_of_fuel(cache: ModuleCache) -> None:
    stream = good_stream(cache)
    loaded = cache.load(wat(extra="(func $start (loop $l (br $l))) (start $start)"))
    with pytest.raises(SmartModuleError) as info:
        loaded.instantiate()
    assert info.value.reason == "fuelExhausted" and "instantiating" in str(info.value)
    assert_others_fine(cache, stream)


def test_infinite_loop_with_endless_fuel_times_out() -> None:
    cache = cache_for(Limits(fuel_per_call=10**15, wall_clock_ms=100))
    stream = good_stream(cache)
    inst = cache.load(wat(LOOP)).instantiate()
    t0 = time.monotonic()
    with pytest.raises(SmartModuleError) as info:
        call(inst)
    took = time.monotonic() - t0
    assert info.value.reason == "timeout", str(info.value)
    assert "wall-clock" in str(info.value) and "filter" in str(info.value)
    assert 0.05 <= took < 2.0, took
    assert_others_fine(cache, stream)


# --- memory ---------------------------------------------------------------------------------

SMALL_MEMORY = Limits(fuel_per_call=2_000_000, memory_bytes=1 << 20)
GROW_UNTIL_REFUSED = """
    (block $refused (loop $more
      (br_if $refused (i32.eq (memory.grow (i32.const 1)) (i32.const -1)))
      (br $more)))
"""


def test_memory_growth_past_the_cap_then_trap() -> None:
    cache = cache_for(SMALL_MEMORY)
    stream = good_stream(cache)
    inst = cache.load(wat(GROW_UNTIL_REFUSED + "unreachable")).instantiate()
    with pytest.raises(SmartModuleError) as info:
        call(inst)
    assert info.value.reason == "trap", str(info.value)
    assert "unreachable" in str(info.value), str(info.value)
    # It grew right up to the cap, and never past it.
    assert inst.memory.data_len(inst.store) == SMALL_MEMORY.memory_bytes
    assert_others_fine(cache, stream)


def test_memory_growth_refused_is_handled_by_the_module() -> None:
    cache = cache_for(SMALL_MEMORY)
    stream = good_stream(cache)
    inst = cache.load(wat(GROW_UNTIL_REFUSED + "(drop (memory.grow (i32.const 65535)))" + IDENTITY)).instantiate()
    out = call(inst)
    assert out.records == BATCH[HEADER_SIZE:]
    assert inst.memory.data_len(inst.store) == SMALL_MEMORY.memory_bytes
    assert_others_fine(cache, stream)


def test_memory_declared_larger_than_the_cap_is_refused() -> None:
    cache = cache_for(SMALL_MEMORY)
    stream = good_stream(cache)
    with pytest.raises(SmartModuleError) as info:  # refused when checked, before any instance exists
        cache.load(wat(memory='(memory (export "memory") 17)'))  # 17 pages > 1 MiB
    assert info.value.reason == "invalidModule" and "17 pages (1088 KiB)" in str(info.value) \
        and "cap of 1 MiB" in str(info.value), str(info.value)
    assert_others_fine(cache, stream)


def test_a_second_memory_does_not_double_the_cap() -> None:
    # Multi-memory: the cap is per memory, so a module with two could use twice the cap.
    cache = cache_for(SMALL_MEMORY)
    stream = good_stream(cache)
    loaded = cache.load(wat("(drop (memory.grow $more (i32.const 15)))" + IDENTITY,
                            memory='(memory (export "memory") 1) (memory $more 1)'))
    with pytest.raises(SmartModuleError) as info:
        loaded.instantiate()
    assert info.value.reason == "trap" and "memory count" in str(info.value), str(info.value)
    assert_others_fine(cache, stream)


def test_tables_past_the_cap_are_refused(cache: ModuleCache) -> None:
    stream = good_stream(cache)
    for extra, words in [("(table 100000000 funcref)", "table minimum size"),
                         ("(table 1 funcref)" * 5, "table count")]:
        with pytest.raises(SmartModuleError) as info:
            cache.load(wat(extra=extra)).instantiate()
        assert info.value.reason == "trap" and words in str(info.value), str(info.value)
    assert_others_fine(cache, stream)


def test_table_growth_is_capped(cache: ModuleCache) -> None:
    # 10**8 table elements are ~800 MB of host memory, outside the linear-memory cap.
    stream = good_stream(cache)
    body = """(if (i32.ne (table.grow $t (ref.null func) (i32.const 100000000)) (i32.const -1))
                (then unreachable))""" + IDENTITY
    inst = cache.load(wat(body, extra="(table $t 1 funcref)")).instantiate()
    try:
        out = call(inst)
    except SmartModuleError as e:  # the table grew: a limit was missing
        pytest.fail(f"a table grew to 10**8 elements: {e}")
    assert out.record_count == 5
    assert_others_fine(cache, stream)


def test_out_of_bounds_access_traps(cache: ModuleCache) -> None:
    fails(cache, wat("(drop (i32.load (i32.const 0x7ffffff0)))" + IDENTITY), "trap", "filter",
          "out of bounds memory access", "0x7ffffff0")


def test_stack_overflow_traps(cache: ModuleCache) -> None:
    e = fails(cache, wat("(call $down (i32.const 0))",
                         extra="(func $down (param i32) (result i64) (call $down (i32.add (local.get 0) "
                               "(i32.const 1))))"), "trap", "filter")
    assert "stack" in str(e)


# --- addresses and lengths handed back ----------------------------------------------------


def test_output_outside_memory(cache: ModuleCache) -> None:
    fails(cache, wat(ret(PAGE - 8, 64)), "badOutput", "outside the module's memory", str(PAGE - 8))


def test_output_far_outside_memory(cache: ModuleCache) -> None:
    fails(cache, wat(ret(0x7FFFFFF0, 0x100)), "badOutput", "outside the module's memory")


def test_output_longer_than_the_limit(cache: ModuleCache) -> None:
    fails(cache, wat(ret(0, 0xFFFFFFFF)), "badOutput", "more than the limit", str(0xFFFFFFFF))


def test_output_longer_than_64_times_the_input(cache: ModuleCache) -> None:
    # Inside memory (4 pages), but far more than 64 times a ~250-byte input.
    n = 3 * PAGE
    assert n > 64 * (len(BATCH) - HEADER_SIZE + 24)
    fails(cache, wat(ret(0, n), memory='(memory (export "memory") 4)'), "badOutput", "more than the limit")


def test_output_pointer_wrapping_past_2_32(cache: ModuleCache) -> None:
    # 0xfffffff0 + 0x20 wraps in u32; as an i64 result it is negative, but below the error
    # codes (-2^31 .. -1): a bad pointer, and no read.
    e = fails(cache, wat(ret(0xFFFFFFF0, 0x20)), "badOutput", "output pointer 0xfffffff0 is outside")
    assert e.record_index is None


@pytest.mark.parametrize("pointer", [0x80000000, 0xC0000000, 0xFFFFFFFD])
def test_output_pointer_at_or_above_2_31_is_a_bad_pointer(cache: ModuleCache, pointer: int) -> None:
    fails(cache, wat(ret(pointer, 8)), "badOutput", f"output pointer {pointer:#x} is outside the module's memory")


@pytest.mark.parametrize("code", [-(1 << 31), -(1 << 31) + 1, -(1 << 31) + 2, -1 - 1000])
def test_batch_error_codes_stay_error_codes(cache: ModuleCache, code: int) -> None:
    # -2^31 .. -1 are error codes (the SDK's KOLK_ERR_* at the bottom of that range, and a
    # record index past the batch): refused batches, not pointers.
    high, low = (code >> 32) & 0xFFFFFFFF, code & 0xFFFFFFFF
    fails(cache, wat(ret(high, low)), "recordError", "the batch")


@pytest.mark.parametrize("code", [-(1 << 31) - 1, -(1 << 32) - 1])
def test_results_below_the_error_codes_are_bad_pointers(cache: ModuleCache, code: int) -> None:
    high, low = (code >> 32) & 0xFFFFFFFF, code & 0xFFFFFFFF
    fails(cache, wat(ret(high, low)), "badOutput", f"output pointer {high:#x} is outside the module's memory")


@pytest.mark.parametrize("address", [0, PAGE, PAGE - 8, 0x7FFFFFFF, -16], ids=["zero", "end", "straddling",
                                                                              "far", "negative"])
def test_alloc_returning_a_bad_address(cache: ModuleCache, address: int) -> None:
    alloc = f'(func (export "kolk_alloc") (param i32) (result i32) (i32.const {address}))'
    fails(cache, wat(alloc=alloc), "allocFailed", "kolk_alloc", f"returned {address}")


def test_alloc_failing_before_init(cache: ModuleCache) -> None:
    stream = good_stream(cache)
    alloc = '(func (export "kolk_alloc") (param i32) (result i32) (i32.const 0))'
    loaded = cache.load(wat(alloc=alloc, extra='(func (export "init") (param i32 i32) (result i32) (i32.const 0))'))
    with pytest.raises(SmartModuleError) as info:
        loaded.instantiate({"k": "v"})
    assert info.value.reason == "allocFailed" and "kolk_alloc" in str(info.value)
    assert_others_fine(cache, stream)


# --- exports and imports, refused at load -------------------------------------------------


def test_kind_taking_i64(cache: ModuleCache) -> None:
    refused_at_load(cache, wat(params="(param $ptr i64) (param $len i32)", body="(i64.const 0)"),
                    "export filter", "i64")


def test_kind_returning_i32(cache: ModuleCache) -> None:
    refused_at_load(cache, wat(result="(result i32)", body="(i32.const 0)"), "export filter", "i32")


def test_kolk_alloc_missing(cache: ModuleCache) -> None:
    refused_at_load(cache, wat(alloc=None), "kolk_alloc", "found nothing")


def test_kolk_alloc_with_another_signature(cache: ModuleCache) -> None:
    refused_at_load(cache, wat(alloc='(func (export "kolk_alloc") (param i64) (result i32) (i32.const 8))'),
                    "kolk_alloc", "i64")


def test_kolk_abi_version_missing(cache: ModuleCache) -> None:
    wasm = wasmtime.wat2wasm('(module (memory (export "memory") 1) %s (func (export "filter") (param i32 i32) '
                             '(result i64) (i64.const 0)))' % ALLOC)
    refused_at_load(cache, wasm, "kolk_abi_version")


def test_memory_not_exported(cache: ModuleCache) -> None:
    refused_at_load(cache, wat(memory="(memory 1)"), "memory")


def test_memory_exported_under_another_name(cache: ModuleCache) -> None:
    refused_at_load(cache, wat(memory='(memory (export "mem") 1)'), "'memory'")


def test_two_kinds_exported(cache: ModuleCache) -> None:
    e = refused_at_load(cache, wat(extra='(func (export "map") (param i32 i32) (result i64) (i64.const 0))'),
                        "exactly one", "filter", "map")
    assert "'map'" in str(e)


def test_no_kind_exported(cache: ModuleCache) -> None:
    refused_at_load(cache, wat(kind=None), "exactly one", "none")


def test_init_with_another_signature(cache: ModuleCache) -> None:
    refused_at_load(cache, wat(extra='(func (export "init") (param i32) (result i32) (i32.const 0))'),
                    "export init")


def test_importing_wasi(cache: ModuleCache) -> None:
    wasm = wat(imports='(import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))')
    refused_at_load(cache, wasm, "wasi_snapshot_preview1.fd_write", "import")


def test_importing_a_host_function(cache: ModuleCache) -> None:
    refused_at_load(cache, wat(imports='(import "env" "whatever" (func))'), "env.whatever", "import")


def test_importing_memory(cache: ModuleCache) -> None:
    wasm = wasmtime.wat2wasm('(module (import "env" "memory" (memory 1)) (export "memory" (memory 0)) '
                             '(func (export "kolk_abi_version") (result i32) (i32.const 1)) %s '
                             '(func (export "filter") (param i32 i32) (result i64) (i64.const 0)))' % ALLOC)
    refused_at_load(cache, wasm, "env.memory")


def test_not_wasm(cache: ModuleCache) -> None:
    refused_at_load(cache, b"\x7fELF\x02\x01\x01" + bytes(100), "not a valid WebAssembly module")


def test_truncated_wasm(cache: ModuleCache) -> None:
    refused_at_load(cache, GOOD[:-3], "not a valid WebAssembly module")


def test_module_over_the_size_limit(cache: ModuleCache) -> None:
    limit = cache.limits.module_bytes_max
    # A valid module padded with a custom section: refused by its size, before compiling.
    payload = b"\x04name" + bytes(limit)
    leb = bytearray()
    n = len(payload)
    while True:
        b, n = n & 0x7F, n >> 7
        leb.append(b | (0x80 if n else 0))
        if not n:
            break
    refused_at_load(cache, GOOD + b"\x00" + bytes(leb) + payload, "more than", str(limit))


def test_wrong_sha256(cache: ModuleCache) -> None:
    stream = good_stream(cache)
    with pytest.raises(SmartModuleError) as info:
        cache.load(wat(LOOP), sha256="0" * 64)
    assert info.value.reason == "invalidModule" and "sha256" in str(info.value)
    assert_others_fine(cache, stream)


# --- version and init -----------------------------------------------------------------------


def test_abi_version_2(cache: ModuleCache) -> None:
    stream = good_stream(cache)
    loaded = cache.load(wat(version="(i32.const 2)"))
    with pytest.raises(SmartModuleError) as info:
        loaded.instantiate()
    assert info.value.reason == "invalidModule"
    assert "kolk_abi_version returned 2" in str(info.value)
    assert_others_fine(cache, stream)


def _init_fails(cache: ModuleCache, init_body: str, reason: str, *words: str, params: dict | None = None) -> None:
    stream = good_stream(cache)
    loaded = cache.load(wat(extra=f'(func (export "init") (param i32 i32) (result i32) {init_body})'))
    assert loaded.has_init
    with pytest.raises(SmartModuleError) as info:
        loaded.instantiate({"p": "1"} if params is None else params)
    assert info.value.reason == reason, str(info.value)
    for w in words:
        assert w in str(info.value), (w, str(info.value))
    assert_others_fine(cache, stream)


def test_init_returning_1(cache: ModuleCache) -> None:
    _init_fails(cache, "(i32.const 1)", "initFailed", "init returned 1", "'p'")


def test_init_trapping(cache: ModuleCache) -> None:
    # docs/smartmodule-abi.md: initFailed is "init returned non-zero or trapped".
    _init_fails(cache, "unreachable", "initFailed", "init", "unreachable")


def test_too_many_parameters(cache: ModuleCache) -> None:
    _init_fails(cache, "(i32.const 0)", "initFailed", "parameters", "65",
                params={f"k{i}": "v" for i in range(65)})


def test_init_reads_its_parameters(cache: ModuleCache) -> None:
    # init returns the parameter count it was given: 0 for none, and 2 is refused as 2.
    loaded = cache.load(wat(extra='(func (export "init") (param $p i32) (param i32) (result i32) '
                                  '(i32.load (local.get $p)))'))
    call(loaded.instantiate({}))
    with pytest.raises(SmartModuleError) as info:
        loaded.instantiate({"a": "1", "b": "2"})
    assert info.value.reason == "initFailed" and "returned 2" in str(info.value)


# --- failures in the middle of a batch ----------------------------------------------------

TRAP_AT_3 = wat(walk("(if (i32.eq (local.get $i) (i32.const 3)) (then unreachable))"))
ERROR_AT_2 = wat(walk("(if (i32.eq (local.get $i) (i32.const 2)) (then (return (i64.const -3))))"))


def test_trap_in_the_middle_of_a_batch(cache: ModuleCache) -> None:
    fails(cache, TRAP_AT_3, "trap", "filter trapped", "unreachable")


def test_trap_in_the_middle_of_a_batch_through_a_chain(cache: ModuleCache) -> None:
    stream = good_stream(cache)
    chain = Chain([Stage("good@1.0.0", cache.load(GOOD).instantiate()),
                   Stage("trapper@0.1.0", cache.load(TRAP_AT_3).instantiate())])
    with pytest.raises(ChainError) as info:
        chain.apply(BATCH, 1 << 20)
    e = info.value
    assert (e.reason, e.label, e.kind, e.offset) == ("trap", "trapper@0.1.0", "filter", None)
    assert "trapper@0.1.0" in str(e) and "unreachable" in str(e)
    assert_others_fine(cache, stream)


def test_record_error_names_the_input_record(cache: ModuleCache) -> None:
    e = fails(cache, ERROR_AT_2, "recordError", "record 2")
    assert e.record_index == 2


def test_record_error_through_a_chain_names_the_offset(cache: ModuleCache) -> None:
    stream = good_stream(cache)
    chain = Chain([Stage("refuser@2.0.0", cache.load(ERROR_AT_2).instantiate())])
    with pytest.raises(ChainError) as info:
        chain.apply(BATCH, 1 << 20)
    e = info.value
    assert (e.reason, e.label, e.kind, e.offset) == ("recordError", "refuser@2.0.0", "filter", BASE + 2)
    assert f"at offset {BASE + 2}" in str(e) and "refuser@2.0.0" in str(e)
    assert_others_fine(cache, stream)


def test_record_error_for_the_whole_batch(cache: ModuleCache) -> None:
    stream = good_stream(cache)
    chain = Chain([Stage("refuser@2.0.0", cache.load(wat("(i64.const -6)")).instantiate())])  # record 5 of 5
    with pytest.raises(ChainError) as info:
        chain.apply(BATCH, 1 << 20)
    e = info.value
    assert (e.reason, e.offset) == ("recordError", None)
    assert "the batch (code -6)" in str(e)
    assert_others_fine(cache, stream)


# --- malformed output -----------------------------------------------------------------------


def test_output_record_cut_short(cache: ModuleCache) -> None:
    out = section(rec(0))[:-2]  # the last two bytes of the record are missing
    fails(cache, const_output(out), "badOutput", "output record 0 of 1", "ends at byte 32")


def test_output_record_length_past_the_output(cache: ModuleCache) -> None:
    r = bytearray(rec(0, b"0123456789"))
    struct.pack_into("<I", r, 0, 36)  # 35 bytes follow; the output ends one short
    fails(cache, const_output(section(bytes(r))), "badOutput", "output record 0", "length 36",
          "past the output")


def test_output_record_length_field_lies(cache: ModuleCache) -> None:
    r = bytearray(rec(0))
    struct.pack_into("<I", r, 0, 1000)
    fails(cache, const_output(section(bytes(r))), "badOutput", "length 1000", "past the output")


def test_output_offset_delta_past_the_inputs_last(cache: ModuleCache) -> None:
    fails(cache, const_output(section(rec(0), rec(LAST + 1))), "badOutput", "output record 1",
          f"offset delta {LAST + 1}", "past the input's last")


def test_output_decreasing_offsets_in_a_filter(cache: ModuleCache) -> None:
    fails(cache, const_output(section(rec(3), rec(1))), "badOutput", "offset delta 1 after 3", "strictly increasing")


def test_output_duplicate_offsets_in_a_map(cache: ModuleCache) -> None:
    fails(cache, const_output(section(rec(2), rec(2)), kind="map"), "badOutput", "offset delta 2 after 2",
          "strictly increasing")


def test_output_duplicate_offsets_in_an_array_map_are_fine(cache: ModuleCache) -> None:
    out = call(cache.load(const_output(section(rec(2, b"a"), rec(2, b"b"), rec(4)), kind="array_map"))
               .instantiate())
    assert out.record_count == 3 and out.max_offset_delta == 4


def test_output_decreasing_offsets_in_an_array_map(cache: ModuleCache) -> None:
    fails(cache, const_output(section(rec(2), rec(1)), kind="array_map"), "badOutput", "non-decreasing")


def test_output_bytes_left_over(cache: ModuleCache) -> None:
    fails(cache, const_output(section(rec(0)) + b"\x00\x01\x02"), "badOutput", "3 bytes left over")


def test_output_fewer_records_than_its_count(cache: ModuleCache) -> None:
    out = struct.pack("<I", 3) + rec(0) + rec(1)
    fails(cache, const_output(out), "badOutput", "output record 2 of 3")


def test_output_without_a_record_count(cache: ModuleCache) -> None:
    fails(cache, const_output(b"\x01\x00"), "badOutput", "no record count")


def test_output_record_with_attributes(cache: ModuleCache) -> None:
    fails(cache, const_output(section(rec(0, attributes=4))), "badOutput", "attributes 4")


def test_output_record_with_a_bad_value_length(cache: ModuleCache) -> None:
    r = bytearray(rec(0, b"abcd"))
    struct.pack_into("<i", r, 21, -7)
    fails(cache, const_output(section(bytes(r))), "badOutput", "value length -7")


def test_output_header_name_not_utf8(cache: ModuleCache) -> None:
    body = struct.pack("<BqIi", 0, 0, 0, -1) + struct.pack("<i", -1)
    body += struct.pack("<I", 1) + struct.pack("<I", 2) + b"\xff\xfe" + struct.pack("<i", -1)
    r = struct.pack("<I", len(body)) + body
    fails(cache, const_output(section(r)), "badOutput", "output record 0", "UTF-8")


def test_aggregate_output_without_accumulator_length(cache: ModuleCache) -> None:
    fails(cache, const_output(b"\x01\x00", kind="aggregate"), "badOutput", "no accumulator length")


def test_aggregate_accumulator_past_the_output(cache: ModuleCache) -> None:
    fails(cache, const_output(struct.pack("<I", 50) + b"acc" + section(), kind="aggregate"), "badOutput",
          "accumulator of 50 bytes")


def test_aggregate_keeps_its_accumulator(cache: ModuleCache) -> None:
    out = struct.pack("<I", 3) + b"acc" + section(rec(4, b"sum"))
    inst = cache.load(const_output(out, kind="aggregate")).instantiate({"initial": "zero"})
    assert inst.accumulator == b"zero"
    result = call(inst)
    assert result.accumulator == b"acc" and inst.accumulator == b"acc" and result.record_count == 1


# --- the compile cache ----------------------------------------------------------------------


def test_compile_cache_compiles_once() -> None:
    cache = ModuleCache(FAST, capacity=2)
    a, b, c = GOOD, TRAP_AT_3, ERROR_AT_2
    first = cache.load(a)
    second = cache.load(bytes(a))
    assert cache.compiles == 1 and second.module is first.module and second.sha256 == first.sha256
    assert_works(first.instantiate())
    assert_works(second.instantiate())
    cache.load(b)
    assert cache.compiles == 2
    cache.load(a)  # a is now the most recently used; c pushes b out
    cache.load(c)
    assert cache.compiles == 3
    cache.load(a)
    assert cache.compiles == 3
    cache.load(b)
    assert cache.compiles == 4


def test_parameters_for_a_module_without_init_are_refused_not_ignored(cache: ModuleCache) -> None:
    # A typo'd or misplaced -p would otherwise change nothing, silently.
    with pytest.raises(SmartModuleError) as info:
        cache.load(GOOD).instantiate({"needle": "x", "limit": "3"})
    assert info.value.reason == "initFailed"
    assert str(info.value) == "the module has no init, so it takes no parameters; given limit, needle"
    cache.load(GOOD).instantiate({}).close()
