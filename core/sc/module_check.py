"""The SC's check of a SmartModule before it is stored (DESIGN.md §8: modules are validated
when they are stored, not first when used).

Every ``putObject`` of kind ``smartmodule`` goes through it, from the CLI or raw: the spec must
parse (base64, sha256 and size agree), and the module must pass the same validation the CLI
and the SPUs run (smartmodule/validate.py), in a compile worker process under the compile
limits, so an SC never compiles untrusted code on its event loop. What the module says about
itself (``kind``, ``init``) is taken from the check, not from the client.
"""

from __future__ import annotations

from typing import Any

from ..metadata.specs import SmartModuleSpec, SpecError
from ..smartmodule.compiler import Compiler, CompilerBusy
from ..smartmodule.limits import Limits, SmartModuleError

_compiler: Compiler | None = None


def compiler() -> Compiler:
    """One compiler per SC process: its concurrency and queue limits hold across connections."""
    global _compiler
    if _compiler is None:
        _compiler = Compiler(Limits())
    return _compiler


async def check_smartmodule(name: str, spec: dict[str, Any], tenant: str) -> tuple[str, str] | None:
    """``(code, message)`` when ``spec`` may not be stored as smartmodule ``name``; else None,
    with ``spec``'s kind and init set from what the module is. ``tenant``: who asks (the
    compile queue takes turns between them)."""
    try:
        parsed = SmartModuleSpec.from_dict(spec)
    except SpecError as e:
        return "invalidArgument", f"smartmodule {name}: {e}"
    try:
        info, _ = await compiler().compile(parsed.wasm, parsed.sha256, artifact=False, tenant=tenant)
    except CompilerBusy as e:
        return "overloaded", f"smartmodule {name} cannot be checked now: {e}"
    except SmartModuleError as e:
        return "invalidArgument", f"smartmodule {name}: {e}"
    spec["kind"] = info.kind
    spec["init"] = info.has_init
    return None
