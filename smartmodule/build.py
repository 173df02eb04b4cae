"""Turning a SmartModule source into WebAssembly bytes: ``.wasm`` as is, ``.wat`` through
wasmtime's assembler, ``.c`` through clang with the SDK header (smartmodule/sdk/), ``.rs``
through rustc with the Rust SDK crate (smartmodule/sdk/rust/, built by rust_build.py).

Building is edge code: it runs a compiler in a subprocess, bounded by a timeout, and says in
one sentence what went wrong (no compiler, no linker, the source does not compile). Whether
the bytes are a valid module is the engine's to say (``ModuleCache.load``), not this file's.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import tempfile

SDK_DIR = pathlib.Path(__file__).resolve().parent / "sdk"
CLANG_ENV = "KOLK_CLANG"  # another compiler than the `clang` on PATH
CLANG_TIMEOUT_S = 120
SOURCE_BYTES_MAX = 4 << 20
INSTALL_HINT = "apt-get install clang lld"
# The flags of docs/smartmodule-abi.md "Writing a module in C": no libc, no entry point, the
# SDK's exports only (its other symbols are hidden). --stack-first puts the stack below the
# static data, so an overflow traps (address < 0) instead of overwriting the module's globals.
CLANG_FLAGS = ("--target=wasm32", "-O2", "-nostdlib", "-Wl,--no-entry", "-Wl,--export-dynamic", "-Wl,--stack-first")


class BuildError(Exception):
    """A source could not be read or built. ``str()`` is one line; ``details`` has the
    compiler's whole output when there is one."""

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.details = details


def clang_command(source: pathlib.Path, out: pathlib.Path) -> list[str]:
    return [os.environ.get(CLANG_ENV) or "clang", *CLANG_FLAGS, "-I", str(SDK_DIR), "-o", str(out), str(source)]


def build_c(source_path: str | os.PathLike[str], out_path: str | os.PathLike[str] | None = None) -> bytes:
    """Compile a C SmartModule; the module's bytes (also written to ``out_path`` if given)."""
    source = pathlib.Path(source_path)
    check_file(source)
    with tempfile.TemporaryDirectory(prefix="kolk-build-") as tmp:
        out = pathlib.Path(tmp) / (source.stem + ".wasm")
        cmd = clang_command(source, out)
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=CLANG_TIMEOUT_S,
                                  stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise BuildError(f"{cmd[0]} is not installed: building a C SmartModule needs clang and wasm-ld "
                             f"({INSTALL_HINT})") from None
        except subprocess.TimeoutExpired:
            raise BuildError(f"{source}: clang ran past {CLANG_TIMEOUT_S} s and was stopped") from None
        output = (done.stderr or "") + (done.stdout or "")
        if done.returncode != 0:
            raise BuildError(_first_problem(source, output), output)
        wasm = out.read_bytes()
    if out_path is not None:
        pathlib.Path(out_path).write_bytes(wasm)
    return wasm


def _first_problem(source: pathlib.Path, output: str) -> str:
    """One line saying why clang failed: the linker missing, else the first error."""
    lower = output.lower()
    if "wasm-ld" in lower and ("not found" in lower or "doesn't exist" in lower or "no such file" in lower):
        return f"wasm-ld (the WebAssembly linker) is not installed ({INSTALL_HINT})"
    if "no available targets" in lower or "unknown target" in lower:
        return f"this clang cannot target wasm32 ({INSTALL_HINT})"
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    first = next((ln for ln in lines if "error:" in ln), lines[0] if lines else "no output")
    return f"{source} does not compile: {first}"


def check_file(path: pathlib.Path) -> None:
    """A source file that exists and is at most SOURCE_BYTES_MAX bytes."""
    if not path.is_file():
        if path.exists():  # a directory, FIFO or device (or a symlink to one): never opened
            raise BuildError(f"{path} is not a regular file")
        raise BuildError(f"{path}: no such file")
    size = path.stat().st_size
    if size > SOURCE_BYTES_MAX:
        raise BuildError(f"{path} is {size} bytes, more than {SOURCE_BYTES_MAX}")


def read_text_source(source: pathlib.Path) -> str:
    """A Rust or AssemblyScript source's text, once check_file allowed the file; BuildError when
    it is not UTF-8."""
    check_file(source)
    try:
        return source.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise BuildError(f"{source} is not UTF-8 text") from None


def single_kind(source: str, found: dict[str, int], kinds: tuple[str, ...], lang: str, declares: str) -> str:
    """The one kind among ``found`` (function name -> first line) that a Rust or AssemblyScript
    module declares; BuildError naming the file when it declares none or several. ``declares``:
    how the language says it ("defines one of pub fn", "exports one of function")."""
    present = [k for k in kinds if k in found]
    if not present:
        raise BuildError(f"{source}: no kind function: a module {declares} "
                         f"{', '.join(kinds)} (docs/smartmodule-abi.md, Writing a module in {lang})")
    if len(present) > 1:
        where = " and ".join(f"{k} (line {found[k]})" for k in present)
        raise BuildError(f"{source}: a module has exactly one kind; this one {declares.split(' one of')[0]} {where}")
    return present[0]


SOURCE_SUFFIXES = (".wasm", ".wat", ".c", ".rs", ".ts")


def build_rust(source_path: str | os.PathLike[str], out_path: str | os.PathLike[str] | None = None) -> bytes:
    """Compile a Rust SmartModule (one attribute-free function per kind, see
    docs/smartmodule-abi.md); the module's bytes (also written to ``out_path`` if given)."""
    from .rust_build import build_rust_module

    return build_rust_module(source_path, out_path)


def build_assemblyscript(source_path: str | os.PathLike[str], out_path: str | os.PathLike[str] | None = None) -> bytes:
    """Compile an AssemblyScript SmartModule (one exported function per kind, see
    docs/smartmodule-abi.md); the module's bytes (also written to ``out_path`` if given)."""
    from .as_build import build_as_module

    return build_as_module(source_path, out_path)


def build_source(path: str | os.PathLike[str], out_path: str | os.PathLike[str] | None = None) -> bytes:
    """The module bytes of a ``.wasm``, ``.wat``, ``.c`` or ``.rs`` file (by its suffix), also
    written to ``out_path`` if given."""
    p = pathlib.Path(path)
    suffix = p.suffix.lower()
    if suffix not in SOURCE_SUFFIXES:
        raise BuildError(f"{p}: a SmartModule source is a .wasm, .wat, .c, .rs or .ts file")
    if suffix == ".c":
        return build_c(p, out_path)
    if suffix == ".rs":
        return build_rust(p, out_path)
    if suffix == ".ts":
        return build_assemblyscript(p, out_path)
    check_file(p)
    data = p.read_bytes()
    if suffix == ".wat":
        import wasmtime

        try:
            data = bytes(wasmtime.wat2wasm(data.decode("utf-8")))
        except (wasmtime.WasmtimeError, UnicodeDecodeError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise BuildError(f"{p} is not valid WebAssembly text: {first}") from None
    if out_path is not None:
        pathlib.Path(out_path).write_bytes(data)
    return data


def load_source(path: str | os.PathLike[str]) -> bytes:
    """The module bytes of a ``.wasm``, ``.wat``, ``.c`` or ``.rs`` file (by its suffix)."""
    return build_source(path)
