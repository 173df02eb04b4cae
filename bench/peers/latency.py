"""End-to-end latency, the same way for every system.

A consumer runs in its own process (``tail.py``), as an application would run it, and tails
the stream. The producer here first sends warm-up records every 10 ms until the consumer
reports that it has seen one (so the timed run starts with the consumer streaming, with no
fixed sleep), then sends ``rate`` records/s for ``seconds``. Each record carries its send
time; the consumer records (time seen - time sent) for every timed record. Around the timed
records, a :class:`procs.CpuWindow` can read the server processes' CPU time.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from typing import Awaitable, Callable

from kolk.cli.bench import TIMED, WARMUP, latency_record, paced, read_latency_record, until_streaming

from . import procs

TAIL_TIMEOUT_S = 60.0


async def measure(system: str, address: str, stream: str, rate: int, seconds: float,
                  send: Callable[[bytes], Awaitable[None]], finish: Callable[[], Awaitable[None]],
                  window: "procs.CpuWindow | None" = None, requests: Callable[[], int] | None = None) -> list[float]:
    """``window``, if given, is opened right before the first timed record and closed right
    after ``finish`` (every timed record acknowledged), with ``requests()`` (default: the
    number of timed ``send`` calls, one request each) read at both ends."""
    count = int(rate * seconds)
    sent = 0

    async def send_timed() -> None:
        nonlocal sent
        sent += 1
        await send(latency_record(TIMED))

    counted = requests or (lambda: sent)
    here = os.path.dirname(os.path.abspath(__file__))
    proc = subprocess.Popen([sys.executable, os.path.join(here, "tail.py"), system, address, stream, str(count)],
                            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        loop = asyncio.get_running_loop()
        await until_streaming(proc, lambda: send(latency_record(WARMUP)), system)
        if window is not None:
            window.open(counted())
        await paced(count, rate, send_timed)
        await finish()
        if window is not None:
            window.close(counted(), count)
        out, _ = await loop.run_in_executor(None, lambda: proc.communicate(timeout=TAIL_TIMEOUT_S))
        latencies = json.loads(out)
        if len(latencies) != count:
            raise RuntimeError(f"{system}: the consumer saw {len(latencies)} of {count} timed records")
        return latencies
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


class Seen:
    """The consumer side: ``seen(now, value)`` for each record; True once ``count`` timed
    records arrived. Says "ready" on stdout at the first record of any kind."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.latencies: list[float] = []
        self.ready = False

    def __call__(self, now: float, value: bytes) -> bool:
        if not self.ready:
            self.ready = True
            sys.stdout.write("ready\n")
            sys.stdout.flush()
        sent, timed = read_latency_record(value)
        if timed:
            self.latencies.append((now - sent) * 1000)
        return len(self.latencies) >= self.count
