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

from .sizes import size_text
from .budget import BudgetExceeded, InstanceMemory
from .limits import Limits, ModuleInfo, SmartModuleError
from .abi import ABI_VERSION, KINDS, AbiError, Output, check_output, encode_call, encode_params, split_result

TICK_S = 0.01
# Host memory a module controls besides its linear memory: tables (8+ bytes an element;
# table.grow is not fuel-bound) and extra memories (multi-memory, each capped separately).
TABLES_MAX = 4
TABLE_ELEMENTS_MAX = 1 << 16


_REQUIRED = {"kolk_abi_version": ([], ["i32"]), "kolk_alloc": (["i32"], ["i32"])}
_KIND_SIG = (["i32", "i32"], ["i64"])
_INIT_SIG = (["i32", "i32"], ["i32"])
_ERROR_SIG = ([], ["i64"])
PAGE = 64 << 10
ERROR_MESSAGE_BYTES_MAX = 1024  # of a module's own error message (kolk_error)
ERROR_CODE_MIN = -(1 << 31)  # results in [ERROR_CODE_MIN, -1] are error codes; below, a bad pointer


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


def engine_config() -> wasmtime.Config:
    """The one engine configuration: the SPU, the SC's validator and the compile worker use it,
    so a module compiled in the worker deserializes in the SPU (wasmtime checks that they match)."""
    cfg = wasmtime.Config()
    cfg.consume_fuel = True
    cfg.epoch_interruption = True
    cfg.wasm_gc = False  # a GC heap would sit beside the capped linear memory
    return cfg


def new_engine() -> wasmtime.Engine:
    return wasmtime.Engine(engine_config())


def compile_module(engine: wasmtime.Engine, wasm: bytes, limits: Limits) -> wasmtime.Module:
    """Compile ``wasm``: refused when too large or not WebAssembly (the bytes only; the ABI is
    :func:`check_module`'s to say)."""
    if len(wasm) > limits.module_bytes_max:
        raise SmartModuleError("invalidModule", f"module of {len(wasm)} bytes is more than {limits.module_bytes_max}")
    try:
        return wasmtime.Module(engine, wasm)
    except wasmtime.WasmtimeError as e:
        raise SmartModuleError("invalidModule", f"not a valid WebAssembly module: {str(e).splitlines()[0]}") from None


class ModuleCache:
    """Compiled, ABI-checked modules by sha256, bounded in bytes of compiled code and in entries
    (least recently used goes). Evicting a module does not touch instances made from it."""

    def __init__(self, limits: Limits | None = None, capacity: int = 64, bytes_max: int = 128 << 20) -> None:
        self.engine = new_engine()
        self.limits = limits or Limits()
        self.capacity = capacity
        self.bytes_max = bytes_max
        self._modules: OrderedDict[str, tuple[wasmtime.Module, ModuleInfo, int]] = OrderedDict()
        self._lock = threading.Lock()  # loads come from worker threads
        self.bytes = 0
        self.compiles = 0
        self.ticker = _Ticker(self.engine)

    def get(self, sha256: str) -> "LoadedModule | None":
        with self._lock:
            hit = self._modules.get(sha256)
            if hit is None:
                return None
            self._modules.move_to_end(sha256)
        self.ticker.ensure()
        return LoadedModule(self, hit[0], hit[1].kind, hit[1].has_init, sha256, hit[1].memory_limit,
                            hit[1].initial_memory)

    def load(self, wasm: bytes, sha256: str | None = None) -> "LoadedModule":
        """Compile here (or take from the cache) and check ``wasm``; raises SmartModuleError.
        The CLI and tests use it; a server compiles in a worker process (compiler.py) and
        :meth:`add_compiled` the result."""
        digest = sha256 or hashlib.sha256(wasm).hexdigest()
        hit = self.get(digest)
        if hit is not None:
            return hit
        if hashlib.sha256(wasm).hexdigest() != digest:
            raise SmartModuleError("invalidModule", f"module bytes do not match sha256 {digest}")
        module = compile_module(self.engine, wasm, self.limits)
        info = inspect_module(module, digest, self.limits)
        return self._add(module, info, len(wasm) * 8)  # compiled code: several times the bytes

    def add_compiled(self, artifact: bytes, info: ModuleInfo) -> "LoadedModule":
        """Take a module compiled by this host's compile worker (``Module.serialize``: trusted,
        since only our own worker made it)."""
        try:
            module = wasmtime.Module.deserialize(self.engine, artifact)
        except wasmtime.WasmtimeError as e:
            raise SmartModuleError("invalidModule", f"compiled module refused: {str(e).splitlines()[0]}") from None
        return self._add(module, info, len(artifact))

    def _add(self, module: wasmtime.Module, info: ModuleInfo, nbytes: int) -> "LoadedModule":
        with self._lock:
            if info.sha256 not in self._modules:
                self.compiles += 1
                self._modules[info.sha256] = (module, info, nbytes)
                self.bytes += nbytes
                while len(self._modules) > 1 and (len(self._modules) > self.capacity or self.bytes > self.bytes_max):
                    _sha, (_m, _i, n) = self._modules.popitem(last=False)
                    self.bytes -= n
            module, info, _n = self._modules.get(info.sha256, (module, info, nbytes))
        self.ticker.ensure()
        return LoadedModule(self, module, info.kind, info.has_init, info.sha256, info.memory_limit,
                            info.initial_memory)


def inspect_module(module: wasmtime.Module, sha256: str, limits: Limits) -> ModuleInfo:
    """The ABI check of a compiled module and the memory its instances may use."""
    kind, has_init = check_module(module)
    memory = next(e.type for e in module.exports if e.name == "memory")
    assert isinstance(memory, wasmtime.MemoryType)  # check_module said so
    if memory.is_64:
        raise SmartModuleError("invalidModule", "the module's memory is 64-bit (memory64): a SmartModule's memory "
                                                "is a wasm32 memory")
    lim = memory.limits
    if lim.min * PAGE > limits.memory_bytes:
        raise SmartModuleError("invalidModule", f"the module's memory starts at {lim.min} pages "
                                                f"({size_text(lim.min * PAGE)}), more than the cap of "
                                                f"{size_text(limits.memory_bytes)}")
    memory_limit = limits.memory_bytes if lim.max is None else max(lim.min * PAGE, min(lim.max * PAGE,
                                                                                        limits.memory_bytes))
    return ModuleInfo(kind, has_init, sha256, memory_limit, lim.min * PAGE)


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
    err = exports.get("kolk_error")
    if err is not None and (not isinstance(err, wasmtime.FuncType) or _sig(err) != _ERROR_SIG):
        raise SmartModuleError("invalidModule", f"export kolk_error must be a function () -> i64, "
                                                f"found {_describe(err)}")
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
    memory_limit: int = 64 << 20
    initial_memory: int = 0

    def instantiate(self, params: Mapping[str, str] | None = None, run_init: bool = True,
                    memory: "InstanceMemory | None" = None) -> "Instance":
        return Instance(self, params or {}, run_init, memory)


class Instance:
    """One sandboxed instance: call :meth:`call` once per batch, :meth:`close` when done.

    ``close`` frees the store (the instance's memory) at once, whoever still holds a reference
    to this object: an SPU runs with the cycle collector off, so nothing may wait for it.
    """

    def __init__(self, loaded: LoadedModule, params: Mapping[str, str], run_init: bool = True,
                 memory: "InstanceMemory | None" = None) -> None:
        self.loaded = loaded
        self.kind = loaded.kind
        self.limits = loaded.cache.limits
        self.memory_limit = loaded.memory_limit
        self.account = memory  # what a budget lends this instance (smartmodule/budget.py), if any
        self.memory = self._alloc = self._fn = self._error_fn = None  # type: ignore[assignment]
        self.accumulator: bytes | None = None
        engine = loaded.cache.engine
        self.store: wasmtime.Store | None = wasmtime.Store(engine)
        limit = self.memory_limit
        if memory is not None:
            try:
                limit = memory.start(loaded.initial_memory, f"a {self.kind} instance")
            except BudgetExceeded as e:
                self.close()
                raise SmartModuleError(e.reason, str(e)) from None
        self.store.set_limits(memory_size=limit, memories=1, tables=TABLES_MAX, table_elements=TABLE_ELEMENTS_MAX)
        # Ticks come at least TICK_S apart and the first may come at once: one more than the
        # limit's ticks so a call is never cut before its limit (integer math, no 2.9999 -> 2).
        self._deadline_ticks = -(-self.limits.wall_clock_ms // round(TICK_S * 1000)) + 1
        try:
            self._start(loaded, params, run_init)
        except SmartModuleError as e:
            self.close()
            note = self._budget_note(e)
            if not note:
                raise
            raise SmartModuleError(e.reason, str(e) + note, e.record_index) from None
        except BaseException:
            self.close()
            raise
        if memory is not None:
            memory.settle(self.memory_size())

    def _start(self, loaded: LoadedModule, params: Mapping[str, str], run_init: bool) -> None:
        store = self._store()
        self._arm()
        try:
            inst = wasmtime.Instance(store, loaded.module, [])
        except (wasmtime.Trap, wasmtime.WasmtimeError) as e:
            e.__traceback__ = None  # see _guarded: no cycle may hold the store
            raise _trap_error(e, "instantiating") from None
        ex = inst.exports(store)
        self.memory: wasmtime.Memory = ex["memory"]
        self._alloc = ex["kolk_alloc"]
        self._fn = ex[self.kind]
        self._error_fn = ex.get("kolk_error")
        version = self._guarded(lambda: ex["kolk_abi_version"](store), "kolk_abi_version")
        if version != ABI_VERSION:
            raise SmartModuleError("invalidModule", f"kolk_abi_version returned {version}; this host speaks "
                                                    f"ABI {ABI_VERSION}")
        self.accumulator = params.get("initial", "").encode() if self.kind == "aggregate" else None
        if not loaded.has_init and run_init:
            extra = sorted(k for k in params if not (self.kind == "aggregate" and k == "initial"))
            if extra:  # a typo'd or misplaced parameter would otherwise be silently ignored
                raise SmartModuleError("initFailed", f"the module has no init, so it takes no parameters; given "
                                                     f"{', '.join(extra[:10])}")
        if loaded.has_init and run_init:
            try:
                data = encode_params(params)
            except ValueError as e:
                raise SmartModuleError("initFailed", f"parameters refused: {e}") from None
            ptr = self._write(data)
            init = ex["init"]
            try:
                rc = self._guarded(lambda: init(store, ptr, len(data)), "init")
            except SmartModuleError as e:  # the ABI: initFailed when init "returned non-zero or trapped"
                if e.reason != "trap":
                    raise
                raise SmartModuleError("initFailed", str(e)) from None
            if rc != 0:
                raise SmartModuleError("initFailed", f"init returned {rc} for parameters {sorted(params)}"
                                       + self._module_message())

    def close(self) -> None:
        """Free the store and everything in it, and give its memory back to the budget; the
        instance cannot be called again."""
        store, self.store = self.store, None
        self.memory = self._alloc = self._fn = self._error_fn = None  # type: ignore[assignment]
        if store is not None:
            store.close()
        if self.account is not None:
            self.account.release()

    def _budget_note(self, e: SmartModuleError) -> str:
        """When a budget lent the call less room than the cap and the call failed in a way a
        failed ``memory.grow`` shows up as (no memory for the output, an allocation that
        failed, a trap, a failed init): say so, since the module cannot tell."""
        acc = self.account
        if acc is None or not acc.short:
            return ""
        if e.reason not in ("allocFailed", "trap", "initFailed") and not (
                e.reason == "recordError" and e.record_index is None):
            return ""
        short = acc.budget  # the budget with the least room left is the one that ran short
        while short.parent is not None and short.parent.free <= short.free:
            short = short.parent
        return f" (its memory could grow only to {size_text(acc.limit)}, not its cap of {size_text(acc.cap)}: " \
               f"{short.describe()}; retry when streams end)"

    @property
    def closed(self) -> bool:
        return self.store is None

    def fuel_used(self) -> int:
        """Fuel the last call burned (each call starts with ``fuel_per_call``); 0 once closed."""
        if self.store is None:
            return 0
        try:
            return max(0, self.limits.fuel_per_call - self.store.get_fuel())
        except wasmtime.WasmtimeError:
            return 0

    def _store(self) -> wasmtime.Store:
        if self.store is None:
            raise SmartModuleError("closed", f"the {self.kind} instance was closed")
        return self.store

    def _arm(self) -> None:
        store = self._store()
        store.set_fuel(self.limits.fuel_per_call)
        store.set_epoch_deadline(self._deadline_ticks)

    def _guarded(self, fn, what: str):  # noqa: ANN001, ANN202
        self._arm()
        try:
            return fn()
        except (wasmtime.Trap, wasmtime.WasmtimeError) as e:
            err = _trap_error(e, what)
            # wasmtime's own frames keep the trap in a local: trap -> traceback -> frame -> trap,
            # a cycle holding this instance (and its store) that only the cycle collector,
            # which servers run without, would free. Cut it, and raise outside the handler.
            e.__traceback__ = None
        try:
            raise err
        finally:
            del err  # the raising frame must not keep its own exception (another cycle)

    def _base(self) -> tuple[int, int]:
        store = self._store()
        ptr = self.memory.data_ptr(store)
        return ctypes.addressof(ptr.contents), self.memory.data_len(store)

    def memory_size(self) -> int:
        """Bytes of linear memory the instance has now."""
        return 0 if self.store is None or self.memory is None else self.memory.data_len(self.store)

    def _module_message(self) -> str:
        """``": <message>"`` when the module explains its last error through ``kolk_error``
        (docs/smartmodule-abi.md), else ``""``. Guarded and bounds-checked like every call."""
        fn = self._error_fn
        if fn is None:
            return ""
        store = self._store()
        try:
            result = self._guarded(lambda: fn(store), "kolk_error")
        except SmartModuleError:
            return ""
        if not isinstance(result, int) or result <= 0:
            return ""
        ptr, n = split_result(result)
        base, size = self._base()
        n = min(n, ERROR_MESSAGE_BYTES_MAX)
        if n == 0 or ptr + n > size:
            return ""
        text = ctypes.string_at(base + ptr, n).decode("utf-8", "replace")
        text = " ".join(text.split())  # one line
        return f": {text}" if text else ""

    def _write(self, *parts: bytes) -> int:
        """Copy ``parts`` back to back into memory the module allocates; their address."""
        n = sum(len(p) for p in parts)
        store = self._store()
        ptr = self._guarded(lambda: self._alloc(store, n), "kolk_alloc")
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
        store = self._store()
        ptr = self._guarded(lambda: self._alloc(store, n), "kolk_alloc")
        base, size = self._base()
        if ptr == 0 or ptr < 0 or ptr + n > size:
            raise SmartModuleError("allocFailed", f"kolk_alloc({n}) returned {ptr}, memory is {size} bytes")
        ctypes.memmove(base + ptr, head, len(head))
        src = ctypes.cast(ctypes.c_char_p(buf), ctypes.c_void_p).value  # bytes' own buffer, no copy
        ctypes.memmove(base + ptr + len(head), src + start, end - start)
        return ptr

    def call(self, record_count: int, base_offset: int, first_timestamp: int, records: bytes,
             last_offset_delta: int, start: int = 0, end: int | None = None, shared_input: bool = False) -> Output:
        """Run the kind on one batch's records section (``records[start:end]``); the checked output."""
        head = encode_call(self.kind, record_count, base_offset, first_timestamp, b"", self.accumulator)
        end = len(records) if end is None else end
        if not isinstance(records, bytes) or not 0 <= start <= end <= len(records):
            raise ValueError("records must be bytes, with 0 <= start <= end <= len(records)")
        acc = self.account
        if acc is None:
            return self._call(head, record_count, records, last_offset_delta, start, end, shared_input)
        self._store().set_limits(memory_size=acc.lend())
        try:
            return self._call(head, record_count, records, last_offset_delta, start, end, shared_input)
        except SmartModuleError as e:
            note = self._budget_note(e)
            if not note:
                raise
            raise SmartModuleError(e.reason, str(e) + note, e.record_index) from None
        finally:
            acc.settle(self.memory_size())

    def _call(self, head: bytes, record_count: int, records: bytes, last_offset_delta: int, start: int,
              end: int, shared_input: bool) -> Output:
        ptr = self._write_slice(head, records, start, end)  # no joined or sliced copy of the records
        length = len(head) + end - start
        store = self._store()
        result = self._guarded(lambda: self._fn(store, ptr, length), self.kind)
        if ERROR_CODE_MIN <= result < 0:
            index = -1 - result
            raise SmartModuleError("recordError", f"{self.kind} refused " + (
                f"record {index}" if 0 <= index < record_count else f"the batch (code {result})")
                + self._module_message(), index if 0 <= index < record_count else None)
        out_ptr, out_len = split_result(result)
        if result < 0:
            raise SmartModuleError("badOutput", f"output pointer {out_ptr:#x} is outside the module's memory "
                                                f"({self.memory_size()} bytes)")
        limit = min(self.limits.output_bytes_max, max(4096, length * self.limits.output_ratio_max))
        base, size = self._base()
        if out_len > limit:
            raise SmartModuleError("badOutput", f"output of {out_len} bytes is more than the limit {limit}")
        if out_ptr + out_len > size:
            raise SmartModuleError("badOutput", f"output at {out_ptr}+{out_len} lies outside the module's memory "
                                                f"({size} bytes)")
        out = ctypes.string_at(base + out_ptr, out_len)
        try:
            output = check_output(self.kind, out, last_offset_delta, record_count, shared_input)
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
