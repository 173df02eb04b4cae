"""Processes the peer benchmark starts: spawned in their own session, stopped by their own pid."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
from typing import Any, Awaitable, Callable

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


CLK_TCK = os.sysconf("SC_CLK_TCK")


def stat_cpu_ticks(stat: str) -> int:
    """utime + stime (fields 14 and 15 of ``/proc/PID/stat``, in clock ticks) from that file's
    text. The command name (field 2) is in parentheses and may hold spaces or parentheses, so
    the fields are counted from the last ")"; for a process they cover all of its threads."""
    fields = stat[stat.rindex(")") + 2:].split()  # fields[0] is field 3, the state
    return int(fields[14 - 3]) + int(fields[15 - 3])


def cpu_ticks(pid: int) -> int:
    """CPU time ``pid`` has used so far, user + system, in clock ticks (:data:`CLK_TCK` a second)."""
    with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
        return stat_cpu_ticks(f.read())


class CpuWindow:
    """The CPU time of named server processes over a window of the benchmark, per request.

    ``open(requests)`` and ``close(requests, records)`` each read utime + stime of every
    process from /proc/PID/stat and take the client's count of requests sent so far;
    :meth:`result` is each process's CPU over the window in µs, and that divided by the
    requests sent in between. A process whose stat cannot be read gets None."""

    def __init__(self, processes: dict[str, int]) -> None:
        self.processes = dict(processes)
        self._t0: dict[str, int | None] = {}
        self._t1: dict[str, int | None] = {}
        self._r0 = self._r1 = self.records = 0
        self._w0 = self._w1 = 0.0

    def _read(self) -> dict[str, int | None]:
        out: dict[str, int | None] = {}
        for name, pid in self.processes.items():
            try:
                out[name] = cpu_ticks(pid)
            except (OSError, ValueError, IndexError):
                out[name] = None
        return out

    def open(self, requests: int) -> None:
        self._r0 = requests
        self._w0 = time.perf_counter()
        self._t0 = self._read()

    def close(self, requests: int, records: int) -> None:
        self._t1 = self._read()
        self._w1 = time.perf_counter()
        self._r1 = requests
        self.records = records

    def result(self) -> dict[str, Any]:
        requests = self._r1 - self._r0
        cpu_us: dict[str, float | None] = {}
        for name in self.processes:
            a, b = self._t0.get(name), self._t1.get(name)
            cpu_us[name] = None if a is None or b is None else (b - a) * 1e6 / CLK_TCK
        return {"requests": requests, "records": self.records, "seconds": self._w1 - self._w0,
                "cpu_us": cpu_us,
                "us_per_request": {name: None if us is None or requests <= 0 else us / requests
                                   for name, us in cpu_us.items()}}


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
