"""Hostile SmartModules for the isolation and upload tests (issue 18), as wasm bytes.

Each function returns the bytes of one module and says in its docstring what the module does
and which limit it meets. The modules are built from the pieces of
``tests/test_smartmodule_hostile.py`` (``wat``: memory, ``kolk_abi_version`` 1, a bump
``kolk_alloc`` and one kind export whose body a case replaces), so they are ABI-legal unless
the docstring says otherwise. Two parts of the corpus:

* **run-time** modules, valid at upload, which are slow, greedy or failing when they run
  (``slow_filter`` … ``drop_everything_filter``);
* **upload-refused** modules (``UPLOAD_REFUSED``): a good validator refuses each when it is
  stored (``validate_module``, docs/smartmodule-abi.md), by name.

The defaults they are written against are those of smartmodule/limits.py: 100 M fuel and a
2 s wall clock per call, 64 MiB of memory per instance, modules of at most 2 MiB.
"""

from __future__ import annotations

import functools
import os
import sys
from typing import Callable

import wasmtime

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from test_smartmodule_hostile import IDENTITY, LOOP, wat, walk  # noqa: E402

PAGE = 65536
MEMORY_CAP_PAGES = (64 << 20) // PAGE  # smartmodule/limits.py Limits.memory_bytes, in pages
# Grow the memory one page at a time until memory.grow refuses (the instance's cap), then
# write 0xAB over all of it, so every page is resident (RSS), not only reserved. wasmtime
# charges memory.fill one fuel a byte: 64 M of the default 100 M fuel.
_GROW_TO_CAP_AND_TOUCH = """
    (block $refused (loop $more
      (br_if $refused (i32.eq (memory.grow (i32.const 1)) (i32.const -1)))
      (br $more)))
    (memory.fill (i32.const 0) (i32.const 0xAB) (i32.shl (memory.size) (i32.const 16)))
"""


# --- run-time hostiles: accepted at upload ---------------------------------------------------


SQRT_CHAIN = 64  # f64.sqrt per step of the slow filters, each on the result of the one before

# One step: $f = sqrt(sqrt(...sqrt($f))), SQRT_CHAIN deep. Fuel counts instructions (one per
# sqrt) while each sqrt waits for the one before (~15-20 cycles of latency): the most time a
# unit of fuel buys without touching memory. (memory.copy and memory.fill would be slower
# per instruction, but wasmtime charges their fuel per byte.)
_STEP = "(local.set $f " + "(f64.sqrt " * SQRT_CHAIN + "(local.get $f)" + ")" * SQRT_CHAIN + ")"
_STEP_LOOP = """(block $done (loop $again (br_if $done (i32.eqz (local.get $k))) %s
    (local.set $k (i32.sub (local.get $k) (i32.const 1))) (br $again)))""" % _STEP


@functools.cache
def slow_filter(steps: int, max_pages: int | None = None) -> bytes:
    """A legal filter that runs ``steps`` steps of a dependent chain of SQRT_CHAIN square
    roots per call, then keeps every record. A step costs ~``step_cost()`` fuel (74 here)
    and ~0.27-0.4 µs, so up to ~1.3 M steps fit the default 100 M fuel per call: up to ~0.3-0.5 s a
    call here, legal and only slow (``slow_filter_taking`` picks the steps for a time).
    ``max_pages``: the memory's declared maximum (default none: it may grow to the cap)."""
    if not 0 < steps < 2**31:
        raise ValueError(f"steps {steps} is not in 1..2^31-1")
    body = (f"(local $k i32) (local $f f64) (local.set $f (f64.const 12345.678)) (local.set $k (i32.const {steps}))"
            + _STEP_LOOP + IDENTITY)
    limits = "1" if max_pages is None else f"1 {max_pages}"
    return wat(body, memory=f'(memory (export "memory") {limits})')


@functools.cache
def step_cost() -> tuple[float, int]:
    """``(seconds, fuel)`` of one step of ``slow_filter`` on this machine: the same loop run
    directly in a fuel-metered wasmtime engine (the best of three runs of 20,000 steps)."""
    import time

    config = wasmtime.Config()
    config.consume_fuel = True
    engine = wasmtime.Engine(config)
    module = wasmtime.Module(engine, f"""(module (func (export "spin") (param $k i32) (result f64)
      (local $f f64) (local.set $f (f64.const 12345.678)) {_STEP_LOOP} (local.get $f)))""")
    store = wasmtime.Store(engine)
    spin = wasmtime.Instance(store, module, []).exports(store)["spin"]
    steps, best, fuel = 20_000, float("inf"), 0
    for _ in range(3):
        store.set_fuel(10**12)
        t0 = time.perf_counter()
        spin(store, steps)
        best = min(best, (time.perf_counter() - t0) / steps)
        fuel = (10**12 - store.get_fuel()) // steps
    return best, fuel


def legal_seconds(fuel_per_call: int = 100_000_000) -> float:
    """The longest call of ``slow_filter`` that stays within 75% of ``fuel_per_call`` on this
    machine: faster machines run more steps a second, so the same fuel buys less time."""
    step_s, step_fuel = step_cost()
    return 0.75 * fuel_per_call / step_fuel * step_s


def slow_filter_taking(seconds: float, fuel_per_call: int = 100_000_000, max_pages: int | None = None) -> bytes:
    """``slow_filter`` with as many steps as take ``seconds`` a call on this machine; at most
    80% of ``fuel_per_call`` (ValueError if ``seconds`` needs more: not a legal module)."""
    step_s, step_fuel = step_cost()
    steps = max(1, round(seconds / step_s))
    if steps * step_fuel > 0.8 * fuel_per_call:
        raise ValueError(f"{seconds} s is {steps} steps of {step_fuel} fuel here: more than 80% of {fuel_per_call}")
    return slow_filter(steps, max_pages)


@functools.cache
def wall_clock_filter() -> bytes:
    """A filter that runs steps of the slow filter forever (~170 M fuel a second here): the
    default 100 M fuel ends it in well under a second (``fuelExhausted``), but on an SPU
    started with ``--smartmodule-fuel 100000000000`` (~10 minutes of it) the 2 s wall clock
    per call ends it first (``timeout``)."""
    body = "(local $f f64) (local.set $f (f64.const 12345.678)) (loop $forever " + _STEP + " (br $forever)) (i64.const 0)"
    return wat(body)


@functools.cache
def fuel_exhaustion_filter() -> bytes:
    """A filter whose call never ends (``(loop (br))``): the fuel per call ends it
    (``fuelExhausted``), and with that stream only."""
    return wat(LOOP)


@functools.cache
def memory_grow_spinner() -> bytes:
    """A filter that grows its memory page by page up to the per-instance cap (64 MiB),
    touches all of it, then spins asking for one more page forever: every ``memory.grow``
    past the cap is refused by the host's memory limiter (a call out of wasm, far slower than
    the 2 fuel it costs), until the fuel or the wall clock ends the call. The most memory and
    host time one legal call can take."""
    return wat(_GROW_TO_CAP_AND_TOUCH + "(loop $spin (drop (memory.grow (i32.const 1))) (br $spin)) (i64.const 0)")


@functools.cache
def trapping_filter() -> bytes:
    """A filter that fills its memory up to the cap (64 MiB, all resident) and then traps
    (``unreachable``): an instance whose failure must not leave its 64 MiB store behind."""
    return wat(_GROW_TO_CAP_AND_TOUCH + "unreachable")


@functools.cache
def big_init_filter(mib: int = 61) -> bytes:
    """An identity filter whose ``init`` grows its memory to ``mib`` MiB (under the 64 MiB
    cap) and touches every byte: each instance costs ``mib`` MiB of resident memory before it
    processes a record, so a 16-stage chain of it costs ~1 GiB a stream."""
    pages = (mib << 20) // PAGE
    if not 1 < pages <= MEMORY_CAP_PAGES:
        raise ValueError(f"{mib} MiB is not between 128 KiB and the 64 MiB cap")
    init = f"""(func (export "init") (param i32 i32) (result i32)
      (if (i32.lt_u (memory.size) (i32.const {pages}))
        (then (if (i32.eq (memory.grow (i32.sub (i32.const {pages}) (memory.size))) (i32.const -1))
          (then (return (i32.const 1))))))
      (memory.fill (i32.const 0) (i32.const 0xCD) (i32.const {pages * PAGE}))
      (i32.const 0))"""
    return wat(extra=init)


@functools.cache
def drop_everything_filter(steps_per_record: int = 20) -> bytes:
    """A filter that works on every record (``steps_per_record`` steps of the slow filter,
    ~8 µs and ~1,500 fuel a record with the default) and keeps none, like the shipped
    ``contains`` filter with a needle no record has: every read through it is emptied, so a
    stream through it only ever tells the consumer how far it has read. A batch of 2,000
    records costs ~3 M fuel and ~15 ms: legal; a topic of many such batches, seconds."""
    empty = """
    (i32.store (i32.add (local.get $ptr) (i32.const 20)) (i32.const 0))
    (i64.or (i64.shl (i64.extend_i32_u (i32.add (local.get $ptr) (i32.const 20))) (i64.const 32))
            (i64.const 4))
    """
    work = f"(local.set $k (i32.const {steps_per_record}))" + _STEP_LOOP
    body = walk(work).replace(IDENTITY, "")
    # walk() declares its locals first; the step loop's go right after them.
    body = body.replace("(local $n i32)", "(local $n i32) (local $k i32) (local $f f64)", 1)
    return wat(body + empty)


@functools.cache
def good_filter() -> bytes:
    """The identity filter: keeps every record, costs a few instructions per record."""
    return wat(walk(""))


# --- upload-refused: a validator refuses each when it is stored ------------------------------


def start_function_loop() -> bytes:
    """A module with a ``start`` function that loops forever: instantiating it never
    returns. Refused at upload: modules may have no start function."""
    return wat(extra="(func $start (loop $l (br $l))) (start $start)")


def abi_version_2() -> bytes:
    """``kolk_abi_version`` returns 2: a module for an ABI this host does not speak."""
    return wat(version="(i32.const 2)")


def memory_over_the_cap() -> bytes:
    """Its memory's minimum is 1025 pages, one page over the 64 MiB cap: it could never be
    instantiated."""
    return wat(memory=f'(memory (export "memory") {MEMORY_CAP_PAGES + 1})')


def wasm64_memory() -> bytes:
    """A 64-bit memory (memory64 proposal, ``(memory i64 1)``): the ABI is wasm32 only.
    ``wasmtime.wat2wasm`` accepts the syntax; the module is otherwise the good filter, with
    ``kolk_alloc``'s and the kind's pointers still i32 (only the memory's index type is
    64-bit, which is what a validator must refuse)."""
    return wasmtime.wat2wasm(
        '(module (memory (export "memory") i64 1)'
        ' (func (export "kolk_abi_version") (result i32) (i32.const 1))'
        ' (func (export "kolk_alloc") (param i32) (result i32) (i32.const 4096))'
        ' (func (export "filter") (param i32 i32) (result i64) (i64.const 0)))')


def _leb(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _section(sid: int, payload: bytes) -> bytes:
    return bytes([sid]) + _leb(len(payload)) + payload


def _name(s: str) -> bytes:
    return _leb(len(s)) + s.encode()


def _assemble(types: list[bytes], funcs: list[int], exports: list[tuple[str, int, int]], bodies: list[bytes],
              memory_pages: int = 1) -> bytes:
    """A wasm binary by hand: ``types`` (encoded functypes), ``funcs`` (type index of each
    function), one memory, ``exports`` (name, kind, index) and ``bodies`` (each a locals
    vector then code, without its size)."""
    out = b"\x00asm\x01\x00\x00\x00"
    out += _section(1, _leb(len(types)) + b"".join(types))
    out += _section(3, _leb(len(funcs)) + b"".join(_leb(t) for t in funcs))
    out += _section(5, b"\x01\x00" + _leb(memory_pages))
    out += _section(7, _leb(len(exports)) + b"".join(_name(n) + bytes([k]) + _leb(i) for n, k, i in exports))
    out += _section(10, _leb(len(bodies)) + b"".join(_leb(len(b)) + b for b in bodies))
    return out


I32, I64 = 0x7F, 0x7E
_T_VERSION = b"\x60\x00\x01" + bytes([I32])             # () -> i32
_T_ALLOC = b"\x60\x01" + bytes([I32]) + b"\x01" + bytes([I32])  # (i32) -> i32
_T_KIND = b"\x60\x02" + bytes([I32, I32]) + b"\x01" + bytes([I64])  # (i32, i32) -> i64
_BODY_VERSION = b"\x00\x41\x01\x0b"                      # i32.const 1
_BODY_ALLOC = b"\x00\x41\x80\x20\x0b"                    # i32.const 4096
_BODY_KIND = b"\x00\x42\x00\x0b"                         # i64.const 0


@functools.cache
def many_functions(count: int = 100_000) -> bytes:
    """A valid filter module (``kolk_abi_version``, ``kolk_alloc``, ``filter``) plus
    ``count`` extra functions, each a chain of ~8 arithmetic steps over its parameters:
    with the default count, ~2 MiB, just under the module size limit, and seconds of
    compilation. A validator must refuse it by its compile time limit, or compile it off
    every serving loop."""
    # (i32, i32) -> i64 body: ((p0 * p1 + p0) ^ p1 ...) extended; ~20 bytes.
    step = b"\x20\x00\x20\x01\x6c\x20\x00\x6a\x20\x01\x73"   # local.get0 local.get1 mul local.get0 add local.get1 xor
    body = b"\x00" + step + b"\x20\x00\x6a\xad\x0b"        # local.get0 add i64.extend_i32_u end
    types = [_T_VERSION, _T_ALLOC, _T_KIND]
    funcs = [0, 1, 2] + [2] * count
    exports = [("memory", 2, 0), ("kolk_abi_version", 0, 0), ("kolk_alloc", 0, 1), ("filter", 0, 2)]
    return _assemble(types, funcs, exports, [_BODY_VERSION, _BODY_ALLOC, _BODY_KIND] + [body] * count)


@functools.cache
def many_locals(locals_count: int = 40_000, passes: int = 2) -> bytes:
    """A valid filter whose ``filter`` has ``locals_count`` i32 locals, all updated
    (``x[i] += x[i+1]``) ``passes`` times inside one loop, so every local is live across the
    loop's back edge at once (~0.9 MB with the defaults). Compilation grows with the square
    of the locals (measured here: 5k locals 1.5 s, 10k 6 s; 40k, tens of seconds to minutes).
    A validator must refuse it by its compile time limit, or compile it off every serving loop."""
    code = bytearray(b"\x03\x40")                               # loop (no result)
    for p in range(passes):
        for i in range(locals_count):
            j = (i + 1 + p) % locals_count
            code += b"\x20" + _leb(i) + b"\x20" + _leb(j) + b"\x6a\x21" + _leb(i)  # x[i] = x[i] + x[j]
    code += b"\x20\x00\x0d\x00\x0b"                               # br_if 0 (x[0]); end of loop
    body = b"\x01" + _leb(locals_count) + bytes([I32]) + bytes(code) + b"\x42\x00\x0b"  # i64.const 0
    types = [_T_VERSION, _T_ALLOC, _T_KIND]
    exports = [("memory", 2, 0), ("kolk_abi_version", 0, 0), ("kolk_alloc", 0, 1), ("filter", 0, 2)]
    return _assemble(types, [0, 1, 2], exports, [_BODY_VERSION, _BODY_ALLOC, body])


def imports_a_host_function() -> bytes:
    """Imports ``env.whatever``: the ABI allows no imports at all."""
    return wat(imports='(import "env" "whatever" (func))')


def imports_wasi() -> bytes:
    """Imports ``wasi_snapshot_preview1.fd_write``: no WASI."""
    return wat(imports='(import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))')


def no_kind_export() -> bytes:
    """Exports no kind (filter, map, ...): nothing to call."""
    return wat(kind=None)


def no_kolk_alloc() -> bytes:
    """Exports no ``kolk_alloc``: the host cannot hand it a batch."""
    return wat(alloc=None)


def memory_not_exported() -> bytes:
    """Its memory is not exported as ``memory``: the host cannot read or write it."""
    return wat(memory="(memory 1)")


# name -> module; every one is refused at upload (smartmodule create and a raw putObject).
# The two slow-to-compile modules are separate (COMPILE_HEAVY): they may be refused by the
# compile time limit or accepted, and the tests check the SC stays responsive either way.
UPLOAD_REFUSED: dict[str, Callable[[], bytes]] = {
    "start-loop": start_function_loop,
    "abi-version-2": abi_version_2,
    "memory-over-cap": memory_over_the_cap,
    "wasm64-memory": wasm64_memory,
    "imports-host-function": imports_a_host_function,
    "imports-wasi": imports_wasi,
    "no-kind-export": no_kind_export,
    "no-kolk-alloc": no_kolk_alloc,
    "memory-not-exported": memory_not_exported,
}

COMPILE_HEAVY: dict[str, Callable[[], bytes]] = {
    "many-functions": many_functions,
    "many-locals": many_locals,
}
