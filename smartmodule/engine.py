"""The SmartModule engine: wasmtime, sandboxed (DESIGN.md §8, docs/smartmodule-abi.md).

* One wasmtime ``Engine`` per process, with fuel metering and epoch interruption. A daemon
  thread bumps the epoch every ``TICK_S`` while any module is loaded, so a call's wall-clock
  limit is a number of ticks.
* :class:`ModuleCache` compiles a module once per sha256 (bounded, least recently used goes)
  and checks it against the ABI before anyone instantiates it: no imports at all, the
  required exports with their exact signatures, exactly one kind.
* :class:`Instance` is one sandbox: its own store with a memory cap, fuel set before every
  call, a wall-clock deadline, and every address and length the module returns checked
  against its memory before the host copies a byte. Calls take a whole batch.

Errors are :class:`SmartModuleError` with a documented ``reason``; the caller adds the
record offset and ends only the stream that ran the module.
"""

from __future__ import annotations

import ctypes
import hashlib
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Mapping

import wasmtime

from .limits import Limits, SmartModuleError
from .abi import ABI_VERSION, KINDS, AbiError, Output, check_output, encode_call, encode_params, split_result

TICK_S = 0.01
# Host memory a module controls besides its linear memory: tables (8+ bytes an element;
# table.grow is not fuel-bound) and extra memories (multi-memory, each capped separately).
TABLES_MAX = 4
TABLE_ELEMENTS_MAX = 1 << 16


_REQUIRED = {"kolk_abi_version": ([], ["i32"]), "kolk_alloc": (["i32"], ["i32"])}
_KIND_SIG = (["i32", "i32"], ["i64"])
_INIT_SIG = (["i32", "i32"], ["i32"])


def _sig(ft: wasmtime.FuncType) -> tuple[list[str], list[str]]:
    return [str(p) for p in ft.params], [str(r) for r in ft.results]


class _Ticker:
    """Bumps the engine's epoch every TICK_S from a daemon thread, started on first use."""

    def __init__(self, engine: wasmtime.Engine) -> None:
        self.engine = engine
        self._started = False
        self._lock = threading.Lock()

    def ensure(self) -> None:
        with self._lock:
            if not self._started:
                threading.Thread(target=self._run, name="kolk-wasm-epoch", daemon=True).start()
                self._started = True

    def _run(self) -> None:
        while True:
            time.sleep(TICK_S)  # the clock of the wall-clock limit
            self.engine.increment_epoch()


class ModuleCache:
    """Compiled, ABI-checked modules by sha256; at most ``capacity``."""

    def __init__(self, limits: Limits | None = None, capacity: int = 64) -> None:
        cfg = wasmtime.Config()
        cfg.consume_fuel = True
        cfg.epoch_interruption = True
        cfg.wasm_gc = False  # a GC heap would sit beside the capped linear memory
        self.engine = wasmtime.Engine(cfg)
        self.limits = limits or Limits()
        self.capacity = capacity
        self._modules: OrderedDict[str, tuple[wasmtime.Module, str, bool]] = OrderedDict()
        self.compiles = 0
        self.ticker = _Ticker(self.engine)

    def load(self, wasm: bytes, sha256: str | None = None) -> "LoadedModule":
        """Compile (or take from the cache) and check ``wasm``; raises SmartModuleError."""
        digest = sha256 or hashlib.sha256(wasm).hexdigest()
        hit = self._modules.get(digest)
        if hit is None:
            if len(wasm) > self.limits.module_bytes_max:
                raise SmartModuleError("invalidModule", f"module of {len(wasm)} bytes is more than "
                                                        f"{self.limits.module_bytes_max}")
            if hashlib.sha256(wasm).hexdigest() != digest:
                raise SmartModuleError("invalidModule", f"module bytes do not match sha256 {digest}")
            try:
                module = wasmtime.Module(self.engine, wasm)
            except wasmtime.WasmtimeError as e:
                raise SmartModuleError("invalidModule", f"not a valid WebAssembly module: "
                                                        f"{str(e).splitlines()[0]}") from None
            kind, has_init = check_module(module)
            self.compiles += 1
            hit = (module, kind, has_init)
            self._modules[digest] = hit
            while len(self._modules) > self.capacity:
                self._modules.popitem(last=False)
        else:
            self._modules.move_to_end(digest)
        self.ticker.ensure()
        return LoadedModule(self, hit[0], hit[1], hit[2], digest)


def check_module(module: wasmtime.Module) -> tuple[str, bool]:
    """The module's kind and whether it has ``init``; raise invalidModule naming the problem."""
    imports = [f"{i.module}.{i.name}" for i in module.imports]
    if imports:
        raise SmartModuleError("invalidModule", f"the module imports {', '.join(imports[:5])}: a SmartModule may "
                                                "import nothing (no WASI, no host functions)")
    exports = {e.name: e.type for e in module.exports}
    if not isinstance(exports.get("memory"), wasmtime.MemoryType):
        raise SmartModuleError("invalidModule", "the module does not export its memory as 'memory'")
    for name, sig in _REQUIRED.items():
        t = exports.get(name)
        if not isinstance(t, wasmtime.FuncType) or _sig(t) != sig:
            raise SmartModuleError("invalidModule", f"export {name} must be a function {sig[0]} -> {sig[1]}, "
                                                    f"found {_describe(t)}")
    kinds = [k for k in KINDS if k in exports]
    if len(kinds) != 1:
        raise SmartModuleError("invalidModule", f"a module exports exactly one of {', '.join(KINDS)}; this one "
                                                f"exports {kinds or 'none'}")
    kind = kinds[0]
    t = exports[kind]
    if not isinstance(t, wasmtime.FuncType) or _sig(t) != _KIND_SIG:
        raise SmartModuleError("invalidModule", f"export {kind} must be a function (i32, i32) -> i64, "
                                                f"found {_describe(t)}")
    init = exports.get("init")
    if init is not None and (not isinstance(init, wasmtime.FuncType) or _sig(init) != _INIT_SIG):
        raise SmartModuleError("invalidModule", f"export init must be a function (i32, i32) -> i32, "
                                                f"found {_describe(init)}")
    return kind, init is not None


def _describe(t: object) -> str:
    if t is None:
        return "nothing"
    if isinstance(t, wasmtime.FuncType):
        a, b = _sig(t)
        return f"a function {a} -> {b}"
    return type(t).__name__.replace("Type", "").lower()


@dataclass(frozen=True)
class LoadedModule:
    cache: ModuleCache
    module: wasmtime.Module
    kind: str
    has_init: bool
    sha256: str

    def instantiate(self, params: Mapping[str, str] | None = None) -> "Instance":
        return Instance(self, params or {})


class Instance:
    """One sandboxed instance: call :meth:`call` once per batch."""

    def __init__(self, loaded: LoadedModule, params: Mapping[str, str]) -> None:
        self.loaded = loaded
        self.kind = loaded.kind
        self.limits = loaded.cache.limits
        engine = loaded.cache.engine
        self.store = wasmtime.Store(engine)
        self.store.set_limits(memory_size=self.limits.memory_bytes, memories=1, tables=TABLES_MAX,
                              table_elements=TABLE_ELEMENTS_MAX)
        # Ticks come at least TICK_S apart and the first may come at once: one more than the
        # limit's ticks so a call is never cut before its limit (integer math, no 2.9999 -> 2).
        self._deadline_ticks = -(-self.limits.wall_clock_ms // round(TICK_S * 1000)) + 1
        self._arm()
        try:
            inst = wasmtime.Instance(self.store, loaded.module, [])
        except (wasmtime.Trap, wasmtime.WasmtimeError) as e:
            raise _trap_error(e, "instantiating") from None
        ex = inst.exports(self.store)
        self.memory: wasmtime.Memory = ex["memory"]
        self._alloc = ex["kolk_alloc"]
        self._fn = ex[self.kind]
        version = self._guarded(lambda: ex["kolk_abi_version"](self.store), "kolk_abi_version")
        if version != ABI_VERSION:
            raise SmartModuleError("invalidModule", f"kolk_abi_version returned {version}; this host speaks "
                                                    f"ABI {ABI_VERSION}")
        self.accumulator = params.get("initial", "").encode() if self.kind == "aggregate" else None
        if loaded.has_init:
            try:
                data = encode_params(params)
            except ValueError as e:
                raise SmartModuleError("initFailed", f"parameters refused: {e}") from None
            ptr = self._write(data)
            init = ex["init"]
            try:
                rc = self._guarded(lambda: init(self.store, ptr, len(data)), "init")
            except SmartModuleError as e:  # the ABI: initFailed when init "returned non-zero or trapped"
                if e.reason != "trap":
                    raise
                raise SmartModuleError("initFailed", str(e)) from None
            if rc != 0:
                raise SmartModuleError("initFailed", f"init returned {rc} for parameters {sorted(params)}")

    def _arm(self) -> None:
        self.store.set_fuel(self.limits.fuel_per_call)
        self.store.set_epoch_deadline(self._deadline_ticks)

    def _guarded(self, fn, what: str):  # noqa: ANN001, ANN202
        self._arm()
        try:
            return fn()
        except (wasmtime.Trap, wasmtime.WasmtimeError) as e:
            raise _trap_error(e, what) from None

    def _base(self) -> tuple[int, int]:
        ptr = self.memory.data_ptr(self.store)
        return ctypes.addressof(ptr.contents), self.memory.data_len(self.store)

    def _write(self, *parts: bytes) -> int:
        """Copy ``parts`` back to back into memory the module allocates; their address."""
        n = sum(len(p) for p in parts)
        ptr = self._guarded(lambda: self._alloc(self.store, n), "kolk_alloc")
        base, size = self._base()
        if ptr == 0 or ptr < 0 or ptr + n > size:
            raise SmartModuleError("allocFailed", f"kolk_alloc({n}) returned {ptr}, memory is {size} bytes")
        at = base + ptr
        for part in parts:
            ctypes.memmove(at, part, len(part))
            at += len(part)
        return ptr

    def _write_slice(self, head: bytes, buf: bytes, start: int, end: int) -> int:
        """``head`` then ``buf[start:end]`` into the module, without slicing ``buf`` first."""
        n = len(head) + end - start
        ptr = self._guarded(lambda: self._alloc(self.store, n), "kolk_alloc")
        base, size = self._base()
        if ptr == 0 or ptr < 0 or ptr + n > size:
            raise SmartModuleError("allocFailed", f"kolk_alloc({n}) returned {ptr}, memory is {size} bytes")
        ctypes.memmove(base + ptr, head, len(head))
        src = ctypes.cast(ctypes.c_char_p(buf), ctypes.c_void_p).value  # bytes' own buffer, no copy
        ctypes.memmove(base + ptr + len(head), src + start, end - start)
        return ptr

    def call(self, record_count: int, base_offset: int, first_timestamp: int, records: bytes,
             last_offset_delta: int, start: int = 0, end: int | None = None) -> Output:
        """Run the kind on one batch's records section (``records[start:end]``); the checked output."""
        head = encode_call(self.kind, record_count, base_offset, first_timestamp, b"", self.accumulator)
        end = len(records) if end is None else end
        if not isinstance(records, bytes) or not 0 <= start <= end <= len(records):
            raise ValueError("records must be bytes, with 0 <= start <= end <= len(records)")
        ptr = self._write_slice(head, records, start, end)  # no joined or sliced copy of the records
        length = len(head) + end - start
        result = self._guarded(lambda: self._fn(self.store, ptr, length), self.kind)
        if result < 0:
            index = -1 - result
            raise SmartModuleError("recordError", f"{self.kind} refused " + (
                f"record {index}" if 0 <= index < record_count else f"the batch (code {result})"),
                index if 0 <= index < record_count else None)
        out_ptr, out_len = split_result(result)
        limit = min(self.limits.output_bytes_max, max(4096, length * self.limits.output_ratio_max))
        base, size = self._base()
        if out_len > limit:
            raise SmartModuleError("badOutput", f"output of {out_len} bytes is more than the limit {limit}")
        if out_ptr + out_len > size:
            raise SmartModuleError("badOutput", f"output at {out_ptr}+{out_len} lies outside the module's memory "
                                                f"({size} bytes)")
        out = ctypes.string_at(base + out_ptr, out_len)
        try:
            output = check_output(self.kind, out, last_offset_delta)
        except AbiError as e:
            raise SmartModuleError(e.reason, str(e)) from None
        if output.accumulator is not None:
            self.accumulator = output.accumulator
        return output


def _trap_error(e: Exception, what: str) -> SmartModuleError:
    code = getattr(e, "trap_code", None)
    # wasmtime's text starts with "error while executing at wasm backtrace:" and the frames;
    # what went wrong follows "Caused by:", one cause a line, numbered "0: " when several.
    causes = []
    for line in str(e).split("Caused by:")[-1].splitlines():
        head, sep, rest = line.strip().partition(": ")
        causes.append(rest if sep and head.isdigit() else line.strip())
    first = "; ".join(c for c in causes if c) or type(e).__name__
    if code == wasmtime.TrapCode.OUT_OF_FUEL:
        return SmartModuleError("fuelExhausted", f"{what} ran out of fuel (an endless loop, or too much work "
                                                 "for one batch)")
    if code == wasmtime.TrapCode.INTERRUPT:
        return SmartModuleError("timeout", f"{what} ran past the wall-clock limit")
    return SmartModuleError("trap", f"{what} trapped: {first}")
