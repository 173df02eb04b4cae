"""The last step of building an AssemblyScript SmartModule: asc's output made a module the host
accepts (docs/smartmodule-abi.md, "Writing a module in AssemblyScript").

asc puts a module's top-level initialisation (the runtime's globals and the author's) in a start
function, which a SmartModule may not have: the host runs code only when it calls an export. The
builder asks asc to export it instead (``--exportStart kolk_start``); :func:`link` then makes
``kolk_alloc`` — the first export the host calls in every instance, before ``init`` and before
every kind call — call it first (asc guards it with a flag, so it runs once), removes the
``kolk_start`` export, and refuses a module that imports anything. Pure: bytes in, bytes out.
"""

from __future__ import annotations

START_EXPORT = "kolk_start"
ALLOC_EXPORT = "kolk_alloc"
_IMPORT, _EXPORT, _START, _CODE = 2, 7, 8, 10
_CALL = 0x10
WHY_IMPORTS = {  # what asc imports, and what in the source makes it do so
    "env.abort": "asc's abort; the builder replaces it with the SDK's (--use abort=)",
    "env.seed": "Math.random: a SmartModule has no randomness",
    "env.trace": "trace(): a SmartModule has no console",
    "env.Date.now": "Date.now(): a SmartModule has no clock",
}


class LinkError(ValueError):
    """The module cannot be linked; ``str()`` is one line."""


def _leb(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data):
            raise LinkError("asc's output ends inside a number")
        b = data[pos]
        value |= (b & 0x7F) << shift
        pos += 1
        if not b & 0x80:
            return value, pos
        shift += 7
        if shift > 35:
            raise LinkError("asc's output has a number longer than 5 bytes")


def _uleb(value: int) -> bytes:
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        out.append(b | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _name(data: bytes, pos: int) -> tuple[str, int]:
    n, pos = _leb(data, pos)
    return data[pos:pos + n].decode("utf-8", "replace"), pos + n


def sections(wasm: bytes) -> list[tuple[int, bytes]]:
    """The module's sections as (id, payload), in order."""
    if wasm[:8] != b"\0asm\x01\0\0\0":
        raise LinkError("asc's output is not a WebAssembly binary")
    out, pos = [], 8
    while pos < len(wasm):
        sid = wasm[pos]
        size, pos = _leb(wasm, pos + 1)
        if pos + size > len(wasm):
            raise LinkError("asc's output has a section running past its end")
        out.append((sid, wasm[pos:pos + size]))
        pos += size
    return out


def imports(payload: bytes) -> list[str]:
    """``module.name`` of each import in an import section."""
    count, pos = _leb(payload, 0)
    names = []
    for _ in range(count):
        module, pos = _name(payload, pos)
        field, pos = _name(payload, pos)
        kind = payload[pos]
        pos += 1
        if kind == 0:  # func: type index
            _, pos = _leb(payload, pos)
        elif kind == 1:  # table: reftype, limits
            pos += 1
            flags, pos = _leb(payload, pos + 0)
            _, pos = _leb(payload, pos)
            if flags & 1:
                _, pos = _leb(payload, pos)
        elif kind == 2:  # memory: limits
            flags, pos = _leb(payload, pos)
            _, pos = _leb(payload, pos)
            if flags & 1:
                _, pos = _leb(payload, pos)
        else:  # global: valtype, mut
            pos += 2
        names.append(f"{module}.{field}")
    return names


def _exports(payload: bytes) -> list[tuple[str, int, int, bytes]]:
    count, pos = _leb(payload, 0)
    out = []
    for _ in range(count):
        start = pos
        name, pos = _name(payload, pos)
        kind = payload[pos]
        index, pos = _leb(payload, pos + 1)
        out.append((name, kind, index, payload[start:pos]))
    return out


def _with_call_first(code: bytes, func_index: int, callee: int) -> bytes:
    """The code section with ``call callee`` at the start of function ``func_index``'s body."""
    count, pos = _leb(code, 0)
    bodies = []
    for _ in range(count):
        size, body_start = _leb(code, pos)
        bodies.append(code[body_start:body_start + size])
        pos = body_start + size
    if not 0 <= func_index < count:
        raise LinkError(f"{ALLOC_EXPORT} is not a function of the module")
    body = bodies[func_index]
    groups, p = _leb(body, 0)
    for _ in range(groups):  # the local declarations: (count, type) pairs
        _, p = _leb(body, p)
        p += 1
    bodies[func_index] = body[:p] + bytes([_CALL]) + _uleb(callee) + body[p:]
    return _uleb(count) + b"".join(_uleb(len(b)) + b for b in bodies)


def link(wasm: bytes) -> bytes:
    """asc's output (built with ``--exportStart kolk_start``) as a SmartModule: no start export,
    ``kolk_alloc`` running the module's initialisation first. Raises LinkError naming what is wrong."""
    secs = sections(wasm)
    for sid, payload in secs:
        if sid == _IMPORT:
            names = imports(payload)
            if names:
                why = WHY_IMPORTS.get(names[0], "something only a host with that function has")
                raise LinkError(f"the module imports {names[0]} ({why}); a SmartModule imports nothing")
        if sid == _START:
            raise LinkError("asc wrote a start section although asked to export the start function")
    exports = next((_exports(p) for sid, p in secs if sid == _EXPORT), [])
    by_name = {name: (kind, index) for name, kind, index, _ in exports}
    if ALLOC_EXPORT not in by_name:
        raise LinkError(f"the module does not export {ALLOC_EXPORT} (the glue was not compiled)")
    if START_EXPORT not in by_name:
        return wasm  # nothing to initialise
    start = by_name[START_EXPORT][1]
    alloc = by_name[ALLOC_EXPORT][1]
    kept = [raw for name, _, _, raw in exports if name != START_EXPORT]
    out = bytearray(wasm[:8])
    for sid, payload in secs:
        if sid == _EXPORT:
            payload = _uleb(len(kept)) + b"".join(kept)
        elif sid == _CODE:
            payload = _with_call_first(payload, alloc, start)  # no function imports: index == body
        out += bytes([sid]) + _uleb(len(payload)) + payload
    return bytes(out)
