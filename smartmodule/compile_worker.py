"""The compile worker: ``python -m kolk.smartmodule.compile_worker``, one module per process.

It reads a JSON line (the limits, and whether the caller wants the compiled code) and then the
module's bytes on stdin, validates the module (validate.py), and writes a JSON line with the
verdict, followed by the compiled code (``Module.serialize``) when asked. Compiling untrusted
code can take seconds and hundreds of MiB: it happens here, at a lower priority, where the
caller's time and memory limits can stop it (compiler.py), never on a server's event loop.
"""

from __future__ import annotations

import json
import os
import resource
import sys

from .limits import Limits, SmartModuleError


def main() -> int:
    os.nice(10)
    head = json.loads(sys.stdin.buffer.readline())
    cpu_s = int(head.get("cpu_s", 30))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))  # a backstop to the caller's deadline
    limits = Limits(**head["limits"])
    wasm = sys.stdin.buffer.read(limits.module_bytes_max + 1)
    from .validate import validate_module

    out = sys.stdout.buffer
    try:
        info, module = validate_module(wasm, limits)
    except SmartModuleError as e:
        out.write(json.dumps({"ok": False, "reason": e.reason, "message": str(e)}).encode() + b"\n")
        return 0
    artifact = bytes(module.serialize()) if head.get("artifact") else b""
    out.write(json.dumps({"ok": True, "info": info.to_json(), "artifact_bytes": len(artifact)}).encode() + b"\n")
    out.write(artifact)
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
