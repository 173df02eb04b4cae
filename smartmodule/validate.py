"""Checking a module before it is stored: what ``kolk smartmodule create``, the SC's
``putObject`` and the SPU's compile worker all run, so all three say the same thing
(docs/smartmodule-abi.md "Validation").

A module is accepted when it compiles within the limits, follows the ABI (exports and their
signatures, no imports, one kind, an optional ``kolk_error``), has no start function (a
SmartModule runs code only when the host calls it), has one wasm32 memory within the cap, and
instantiates under the limits with ``kolk_abi_version`` answering this host's version.
``init`` is not run: its parameters come with each stream.
"""

from __future__ import annotations

import hashlib

from .limits import Limits, SmartModuleError

WASM_MAGIC = b"\0asm"
SECTION_START = 8


def _leb_u32(data: bytes, pos: int) -> tuple[int, int]:
    """An unsigned LEB128 of at most 5 bytes at ``pos``: (value, next position); ValueError if cut."""
    value = shift = 0
    for i in range(5):
        if pos + i >= len(data):
            raise ValueError("cut")
        b = data[pos + i]
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos + i + 1
        shift += 7
    raise ValueError("too long")


def section_ids(wasm: bytes) -> list[int]:
    """The ids of the module's top-level sections, in order, as far as they are well-formed
    (the compiler judges the rest)."""
    ids: list[int] = []
    pos = 8
    while pos < len(wasm):
        sid = wasm[pos]
        try:
            size, pos = _leb_u32(wasm, pos + 1)
        except ValueError:
            break
        ids.append(sid)
        pos += size
    return ids


def check_static(wasm: bytes, limits: Limits) -> None:
    """What can be refused before compiling: size, magic, a start function."""
    if len(wasm) > limits.module_bytes_max:
        raise SmartModuleError("invalidModule", f"module of {len(wasm)} bytes is more than {limits.module_bytes_max}")
    if not wasm.startswith(WASM_MAGIC):
        raise SmartModuleError("invalidModule", "not a WebAssembly binary (it does not start with \\0asm)")
    if SECTION_START in section_ids(wasm):
        raise SmartModuleError("invalidModule", "the module has a start function: a SmartModule runs code only when "
                                                "the host calls it (remove the start section)")


_caches: dict[Limits, object] = {}  # one engine (and epoch ticker) per set of limits, not one per check


def validate_module(wasm: bytes, limits: Limits | None = None):  # noqa: ANN201
    """Check ``wasm`` completely; its :class:`~kolk.smartmodule.engine.ModuleInfo` and the
    compiled module. Raises SmartModuleError("invalidModule" or the instantiation's reason)."""
    from .engine import Instance, LoadedModule, ModuleCache, compile_module, inspect_module

    limits = limits or Limits()
    check_static(wasm, limits)
    cache = _caches.get(limits)
    if not isinstance(cache, ModuleCache):
        cache = _caches.setdefault(limits, ModuleCache(limits, capacity=1))
        assert isinstance(cache, ModuleCache)
    cache.ticker.ensure()
    module = compile_module(cache.engine, wasm, limits)
    info = inspect_module(module, hashlib.sha256(wasm).hexdigest(), limits)
    loaded = LoadedModule(cache, module, info.kind, info.has_init, info.sha256, info.memory_limit,
                          info.initial_memory)
    try:
        instance = Instance(loaded, {}, run_init=False)
    except SmartModuleError as e:
        if e.reason == "invalidModule":
            raise
        raise SmartModuleError("invalidModule", f"cannot instantiate: {e}") from None
    instance.close()
    return info, module
