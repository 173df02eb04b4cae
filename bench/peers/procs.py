"""Processes the peer benchmark starts: spawned in their own session, stopped by their own pid."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
from typing import Awaitable, Callable

STOP_TIMEOUT_S = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(args: list[str], log_path: str, cwd: str | None = None) -> subprocess.Popen:
    with open(log_path, "ab") as log:
        return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=cwd,
                                start_new_session=True)


def stop(procs: list[subprocess.Popen]) -> list[int]:
    """SIGTERM each process, wait with a deadline, SIGKILL what is left; returns the pids killed."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    killed = []
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            killed.append(p.pid)
    return killed


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` from /proc (VmRSS), in bytes."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


async def wait_serving(what: str, attempt: Callable[[], Awaitable[object]], alive: Callable[[], bool],
                       timeout_s: float) -> None:
    """Await ``attempt`` (a client round trip) until it succeeds; fail if the process exits
    or ``timeout_s`` passes, naming the last failure."""
    deadline = time.monotonic() + timeout_s
    last: BaseException | None = None
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"{what} exited while starting")
        try:
            await attempt()
            return
        except Exception as exc:  # noqa: BLE001 - not serving yet; the last failure is reported
            last = exc
        await asyncio.sleep(0.01)  # polling a server coming up, with a deadline
    raise RuntimeError(f"{what} not serving after {timeout_s:.0f} s: {last!r}")


def tool_version(args: list[str]) -> str:
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else "unknown"


def machine() -> str:
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = ""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            kib = int(f.readline().split()[1])
            mem = f", {kib / (1 << 20):.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return f"{os.cpu_count()} cores ({model}){mem}, {os.uname().sysname} {os.uname().release}"
