"""Compiling and validating modules in a worker process, from asyncio (DESIGN.md §8, §11).

:class:`Compiler` runs ``python -m kolk.smartmodule.compile_worker`` for a module and waits for
its verdict without blocking the loop. Each compile is bounded: a wall-clock deadline, a limit
on the worker's resident memory (sampled while it runs), a CPU-time rlimit as a backstop, and a
cap on what it may write back. Few compiles run at once, few wait, and concurrent requests for
the same module share one compile. A worker that breaks a limit is killed by its own pid.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
from dataclasses import dataclass

from .limits import Limits, ModuleInfo, SmartModuleError

RSS_POLL_S = 0.05
STDERR_BYTES_MAX = 4096
VERDICT_BYTES_MAX = 64 << 10


@dataclass(frozen=True)
class CompileLimits:
    timeout_ms: int = 10_000
    memory_bytes: int = 1 << 30  # resident memory of the compile worker
    artifact_bytes_max: int = 128 << 20
    concurrent: int = 1  # compiles at once
    waiting_max: int = 16  # distinct modules waiting for a compile slot
    per_tenant_waiting_max: int = 4  # of them, asked for by one identity


class CompilerBusy(Exception):
    """Too many modules are waiting to be compiled; retry later."""


def _rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


class _Compile:
    """One compile, shared by everyone who asked for the same module meanwhile."""

    def __init__(self, tenant: str) -> None:
        self.tenant = tenant
        self.task: asyncio.Task | None = None
        self.waiters = 0


class Compiler:
    """Compiles modules in worker processes, ``concurrent`` at a time. Waiting compiles are
    bounded (``waiting_max`` in all, ``per_tenant_waiting_max`` per tenant: the identity that
    asked) and started round robin across tenants, so one client uploading slow modules cannot
    hold the queue against another. A compile runs in its own task: a waiter that goes away
    does not cancel it for the others; the last one to go does."""

    def __init__(self, limits: Limits, compile_limits: CompileLimits | None = None) -> None:
        self.limits = limits
        self.cl = compile_limits or CompileLimits()
        self._running = 0
        self._waiting: dict[str, list[asyncio.Future]] = {}  # tenant -> futures granting a slot, in order
        self._inflight: dict[tuple[str, bool], _Compile] = {}
        self._turns = 0
        self._last_turn: dict[str, int] = {}  # tenant -> when it last got a slot (the least recent goes next)
        self.compiles = 0

    async def compile(self, wasm: bytes, sha256: str, artifact: bool = True,
                      tenant: str = "") -> tuple[ModuleInfo, bytes]:
        """Validate (and compile, when ``artifact``) ``wasm``; raises SmartModuleError when the
        module is refused or breaks a compile limit, CompilerBusy when too many wait."""
        key = (sha256, artifact)
        job = self._inflight.get(key)
        if job is None:
            total = len(self._inflight)
            mine = sum(1 for j in self._inflight.values() if j.tenant == tenant)
            if total >= self.cl.concurrent + self.cl.waiting_max:
                raise CompilerBusy(f"{total} modules are being compiled or wait for it; retry later")
            if mine >= self.cl.concurrent + self.cl.per_tenant_waiting_max:
                raise CompilerBusy(f"{mine} modules of {tenant or 'this client'} are being compiled or wait for it "
                                   f"(at most {self.cl.concurrent + self.cl.per_tenant_waiting_max} each); "
                                   "retry later")
            job = self._inflight[key] = _Compile(tenant)
            job.task = asyncio.create_task(self._slotted(wasm, artifact, tenant))
            job.task.add_done_callback(lambda t, key=key, job=job: self._done(key, job, t))
        job.waiters += 1
        try:
            return await asyncio.shield(job.task)  # type: ignore[arg-type]
        finally:
            job.waiters -= 1
            if job.waiters == 0 and job.task is not None and not job.task.done():
                job.task.cancel()  # nobody wants it any more

    def _done(self, key: tuple[str, bool], job: _Compile, task: asyncio.Task) -> None:
        if self._inflight.get(key) is job:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # retrieved: waiters that left are not told, and nothing is logged

    async def _slotted(self, wasm: bytes, artifact: bool, tenant: str) -> tuple[ModuleInfo, bytes]:
        await self._acquire(tenant)
        try:
            return await self._run(wasm, artifact)
        finally:
            self._release()

    async def _acquire(self, tenant: str) -> None:
        if self._running < self.cl.concurrent and not any(self._waiting.values()):
            self._running += 1
            self._took_turn(tenant)
            return
        grant: asyncio.Future = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(tenant, []).append(grant)
        try:
            await grant  # the slot is ours (counted) once granted
        except asyncio.CancelledError:
            queue = self._waiting.get(tenant, [])
            if grant in queue:
                queue.remove(grant)
                if not queue:
                    del self._waiting[tenant]
            elif grant.done() and not grant.cancelled():
                self._release()  # granted in the same turn as cancelled: give it on
            raise

    def _release(self) -> None:
        self._running -= 1
        while self._waiting and self._running < self.cl.concurrent:
            # The waiting tenant whose last turn is the oldest (never: first) goes next.
            tenant = min(self._waiting, key=lambda t: self._last_turn.get(t, -1))
            queue = self._waiting[tenant]
            grant = queue.pop(0)
            if not queue:
                del self._waiting[tenant]
            if grant.done():
                continue  # its compile was cancelled meanwhile
            self._running += 1
            self._took_turn(tenant)
            grant.set_result(None)

    def _took_turn(self, tenant: str) -> None:
        self._turns += 1
        self._last_turn[tenant] = self._turns
        if len(self._last_turn) > 4 * (self.cl.waiting_max + self.cl.concurrent):  # bounded: forget the idle
            for t in [t for t in self._last_turn if t not in self._waiting and t != tenant]:
                del self._last_turn[t]

    async def _run(self, wasm: bytes, artifact: bool) -> tuple[ModuleInfo, bytes]:
        self.compiles += 1
        timeout_s = self.cl.timeout_ms / 1000
        head = {"limits": dataclasses.asdict(self.limits), "artifact": artifact, "cpu_s": int(timeout_s * 2) + 2}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "kolk.smartmodule.compile_worker", stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            async with asyncio.timeout(timeout_s):
                return await self._talk(proc, json.dumps(head).encode() + b"\n" + wasm)
        except TimeoutError:
            raise SmartModuleError("invalidModule", f"compiling the module took more than {timeout_s:g} s "
                                                    "(the compile time limit)") from None
        finally:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()

    async def _talk(self, proc: asyncio.subprocess.Process, data: bytes) -> tuple[ModuleInfo, bytes]:
        assert proc.stdin and proc.stdout and proc.stderr
        watch = asyncio.create_task(self._watch_memory(proc))
        try:
            try:
                proc.stdin.write(data)
                await proc.stdin.drain()
                proc.stdin.close()
            except (BrokenPipeError, ConnectionResetError):
                pass  # the worker is gone: its verdict (or its absence) says why
            line = await proc.stdout.readline()
            if watch.done():
                raise watch.exception() or SmartModuleError("invalidModule", "the compile worker stopped")
            if not line.endswith(b"\n") or len(line) > VERDICT_BYTES_MAX:
                err = (await proc.stderr.read(STDERR_BYTES_MAX)).decode("utf-8", "replace").strip().splitlines()
                raise SmartModuleError("invalidModule", "the compile worker stopped without a verdict"
                                       + (f": {err[-1]}" if err else ""))
            verdict = json.loads(line)
            if not verdict.get("ok"):
                raise SmartModuleError(str(verdict.get("reason", "invalidModule")), str(verdict.get("message")))
            n = int(verdict.get("artifact_bytes", 0))
            if n > self.cl.artifact_bytes_max:
                raise SmartModuleError("invalidModule", f"the compiled module is {n} bytes, more than "
                                                        f"{self.cl.artifact_bytes_max}")
            artifact = await proc.stdout.readexactly(n) if n else b""
            return ModuleInfo.from_json(verdict["info"]), artifact
        except asyncio.IncompleteReadError:
            raise SmartModuleError("invalidModule", "the compile worker stopped before sending the module") from None
        finally:
            watch.cancel()

    async def _watch_memory(self, proc: asyncio.subprocess.Process) -> None:
        """Kill the worker (by its pid) once its resident memory passes the limit."""
        while proc.returncode is None:
            await asyncio.sleep(RSS_POLL_S)  # sampling interval of the worker's memory
            if _rss_bytes(proc.pid) > self.cl.memory_bytes:
                proc.kill()
                raise SmartModuleError("invalidModule", f"compiling the module used more than "
                                                        f"{self.cl.memory_bytes >> 20} MiB (the compile memory limit)")
