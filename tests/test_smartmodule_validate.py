"""Validation before a module is stored, and compilation in a worker process under limits
(smartmodule/validate.py, compiler.py; issue 18). The SC and CLI paths are tested end to end
in test_smartmodule_upload.py; here, each refusal and each compile limit on its own."""

from __future__ import annotations

import asyncio
import hashlib

import pytest
import wasmtime

from kolk.smartmodule.compiler import CompileLimits, Compiler, CompilerBusy
from kolk.smartmodule.limits import Limits, SmartModuleError
from kolk.smartmodule.validate import section_ids, validate_module
from test_smartmodule_hostile import GOOD, wat

REFUSED = {
    "start-function": (wat(extra="(func $s (loop $l (br $l))) (start $s)"), "has a start function"),
    "abi-version-2": (wat(version="(i32.const 2)"), "kolk_abi_version returned 2; this host speaks ABI 1"),
    "memory-over-cap": (wat(memory='(memory (export "memory") 1025)'), "starts at 1025 pages (65600 KiB), more "
                                                                      "than the cap of 64 MiB"),
    "imports": (wat(imports='(import "env" "f" (func))'), "imports env.f"),
    "no-kind": (wat(kind=None), "exports exactly one of"),
    "bad-kolk-error": (wat(extra='(func (export "kolk_error") (result i32) (i32.const 0))'),
                       "export kolk_error must be a function () -> i64"),
    "not-wasm": (b"hello world", "not a WebAssembly binary"),
    "too-large": (b"\0asm" + bytes(3 << 20), "is more than 2097152"),
    "table-too-large": (wat(extra="(table 100000 funcref)"), "cannot instantiate"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_each_bad_module_is_refused_naming_the_problem(case: str) -> None:
    module, words = REFUSED[case]
    with pytest.raises(SmartModuleError) as info:
        validate_module(module)
    assert info.value.reason == "invalidModule", str(info.value)
    assert words in str(info.value), str(info.value)
    assert "\n" not in str(info.value)


def test_wasm64_memory_is_refused_as_such() -> None:
    module = wasmtime.wat2wasm(_wasm64_module())
    with pytest.raises(SmartModuleError, match="64-bit \\(memory64\\)"):
        validate_module(module)


def _wasm64_module() -> str:
    # A complete filter whose memory is 64-bit: everything else valid, so the memory is what is refused.
    return """(module (memory (export "memory") i64 1)
      (func (export "kolk_abi_version") (result i32) (i32.const 1))
      (func (export "kolk_alloc") (param i32) (result i32) (i32.const 4096))
      (func (export "filter") (param i32 i32) (result i64) (i64.const 0)))"""


def test_a_good_module_is_accepted_with_what_it_is() -> None:
    info, _module = validate_module(GOOD)
    assert (info.kind, info.has_init, info.sha256) == ("filter", False, hashlib.sha256(GOOD).hexdigest())


def test_section_ids_stop_at_a_cut_module() -> None:
    assert section_ids(GOOD)[:1] == [1]  # the type section first
    assert section_ids(GOOD[:9]) == []


def run(coro):  # noqa: ANN001, ANN201
    return asyncio.run(coro)


def test_the_worker_compiles_and_its_code_loads_in_this_process() -> None:
    from kolk.smartmodule.engine import ModuleCache

    async def main() -> None:
        compiler = Compiler(Limits())
        info, artifact = await compiler.compile(GOOD, hashlib.sha256(GOOD).hexdigest())
        assert info.kind == "filter" and artifact
        loaded = ModuleCache().add_compiled(artifact, info)
        inst = loaded.instantiate()
        inst.close()
    run(main())


def test_the_worker_gives_the_same_refusal_as_validate_module() -> None:
    async def main() -> None:
        module, words = REFUSED["start-function"]
        with pytest.raises(SmartModuleError) as info:
            await Compiler(Limits()).compile(module, hashlib.sha256(module).hexdigest())
        with pytest.raises(SmartModuleError) as here:
            validate_module(module)
        assert str(info.value) == str(here.value)
    run(main())


async def until(condition, timeout_s: float = 10.0) -> None:  # noqa: ANN001
    """Wait for ``condition()`` with a deadline."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)  # polling interval


def _many_functions(n: int) -> bytes:
    funcs = "".join(f"(func $f{i} (result i32) (i32.const {i}))" for i in range(n))
    return wasmtime.wat2wasm(f"(module {funcs})")


def test_a_compile_past_its_time_limit_is_stopped() -> None:
    big = _many_functions(60_000)

    async def main() -> None:
        compiler = Compiler(Limits(), CompileLimits(timeout_ms=300))
        with pytest.raises(SmartModuleError, match=r"took more than 0.3 s \(the compile time limit\)"):
            await compiler.compile(big, "big", artifact=False)
    run(main())


def test_a_compile_past_its_memory_limit_is_stopped() -> None:
    big = _many_functions(60_000)

    async def main() -> None:
        compiler = Compiler(Limits(), CompileLimits(memory_bytes=40 << 20, timeout_ms=60_000))
        with pytest.raises(SmartModuleError, match=r"used more than 40 MiB \(the compile memory limit\)"):
            await compiler.compile(big, "big", artifact=False)
    run(main())


def test_concurrent_compiles_of_one_module_share_one_worker() -> None:
    async def main() -> None:
        compiler = Compiler(Limits())
        sha = hashlib.sha256(GOOD).hexdigest()
        results = await asyncio.gather(*(compiler.compile(GOOD, sha) for _ in range(5)))
        assert compiler.compiles == 1 and len({r[0] for r in results}) == 1
    run(main())


def test_too_many_waiting_compiles_are_refused() -> None:
    async def main() -> None:
        compiler = Compiler(Limits(), CompileLimits(concurrent=1, waiting_max=1))
        mods = [wat(extra=f"(func (result i32) (i32.const {i}))") for i in range(3)]
        tasks = [asyncio.create_task(compiler.compile(m, hashlib.sha256(m).hexdigest())) for m in mods]
        results = await asyncio.gather(*tasks, return_exceptions=True)
        busy = [r for r in results if isinstance(r, CompilerBusy)]
        assert len(busy) == 1 and "retry later" in str(busy[0])
    run(main())


def test_a_shared_compile_goes_on_for_the_others_when_its_first_asker_leaves() -> None:
    slow = _many_functions(20_000)  # about a second to compile here

    async def main() -> None:
        compiler = Compiler(Limits())
        sha = hashlib.sha256(slow).hexdigest()
        first = asyncio.create_task(compiler.compile(slow, sha, artifact=False, tenant="a"))
        await until(lambda: compiler.compiles == 1)  # its worker is starting
        second = asyncio.create_task(compiler.compile(slow, sha, artifact=False, tenant="b"))
        await until(lambda: compiler._inflight[(sha, False)].waiters == 2)  # the second shares it
        first.cancel()
        with pytest.raises(SmartModuleError, match="does not export its memory"):  # the verdict, not a cancellation
            await asyncio.wait_for(second, 60)
        assert compiler.compiles == 1
    run(main())


def test_the_last_asker_leaving_stops_the_compile() -> None:
    slow = _many_functions(60_000)

    async def main() -> None:
        compiler = Compiler(Limits(), CompileLimits(timeout_ms=60_000))
        task = asyncio.create_task(compiler.compile(slow, "s", artifact=False))
        await until(lambda: compiler.compiles == 1)  # its worker is starting
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await until(lambda: not compiler._inflight)  # the compile's own task ends (and its worker is killed)
    run(main())


def test_one_tenant_cannot_hold_the_compile_queue_against_another() -> None:
    async def main() -> None:
        compiler = Compiler(Limits(), CompileLimits(concurrent=1, waiting_max=16, per_tenant_waiting_max=2))
        mods = [wat(extra=f"(func (result i32) (i32.const {i}))") for i in range(5)]
        greedy = [asyncio.create_task(compiler.compile(m, hashlib.sha256(m).hexdigest(), tenant="greedy"))
                  for m in mods]
        await asyncio.sleep(0)
        done = await asyncio.gather(*greedy, return_exceptions=True)
        refused = [r for r in done if isinstance(r, CompilerBusy)]
        assert len(refused) == 2 and "modules of greedy" in str(refused[0])  # 1 running + 2 waiting each

        order: list[str] = []

        async def ask(tenant: str, m: bytes) -> None:
            await compiler.compile(m, hashlib.sha256(m).hexdigest() + tenant, tenant=tenant)
            order.append(tenant)
        more = [wat(extra=f"(func (result i32) (i32.const {100 + i}))") for i in range(4)]
        tasks = [asyncio.create_task(ask("greedy", m)) for m in more[:3]]
        await asyncio.sleep(0)
        tasks.append(asyncio.create_task(ask("polite", more[3])))
        await asyncio.gather(*tasks)
        assert order.index("polite") <= 2, order  # its turn comes after at most the running and one more
    run(main())
