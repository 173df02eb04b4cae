"""What every Kolk process reports about itself (docs/metrics.md, "Process metrics").

* :class:`ProcessCollector`: resident memory, CPU seconds, open file descriptors and the build,
  read from the kernel at scrape time (a few small reads of /proc; the scrape runs in a worker
  thread, never on the node's loop).
* :class:`LoopLagMonitor`: how late the node's event loop runs a callback scheduled for a
  given time. A task sleeps :data:`LOOP_LAG_INTERVAL_S` and observes how much later than asked
  it woke into ``kolk_event_loop_lag_seconds``: the time a ready callback waited behind the
  others, which is what a produce or fetch request waits too when the loop is busy.
"""

from __future__ import annotations

import asyncio
import logging
import os
import platform
import resource
from typing import Iterator

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger("kolk.observe")

LOOP_LAG_INTERVAL_S = 0.1
# From 0.5 ms (an idle loop) to 5 s (a loop held by a blocking call).
LOOP_LAG_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_memory_bytes() -> int:
    """Resident set size now (Linux: /proc/self/statm); elsewhere the peak (getrusage)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE_BYTES
    except (OSError, IndexError, ValueError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if platform.system() == "Darwin" else peak * 1024


def cpu_seconds() -> float:
    """User and system CPU time this process has used."""
    t = os.times()
    return t.user + t.system


def open_fds() -> int | None:
    """File descriptors open now (Linux: /proc/self/fd); None where it cannot be counted."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return None


class ProcessCollector(Collector):
    """kolk_process_resident_memory_bytes, kolk_process_cpu_seconds_total,
    kolk_process_open_fds and kolk_build_info{version,python}."""

    def __init__(self, version: str) -> None:
        self.version = version

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("kolk_process_resident_memory_bytes", "Resident memory of this process, in bytes",
                                value=resident_memory_bytes())
        yield CounterMetricFamily("kolk_process_cpu_seconds", "User and system CPU time this process has used",
                                  value=cpu_seconds())
        fds = open_fds()
        if fds is not None:
            yield GaugeMetricFamily("kolk_process_open_fds", "File descriptors this process has open", value=fds)
        # An info metric: exposed as kolk_build_info{version,python} 1.
        yield InfoMetricFamily("kolk_build", "The Kolk version and the Python running it",
                               value={"version": self.version, "python": platform.python_version()})


class LoopLagMonitor:
    """Observes the event loop's lag every :data:`LOOP_LAG_INTERVAL_S` while started."""

    def __init__(self, registry: CollectorRegistry, interval_s: float = LOOP_LAG_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self.histogram = Histogram("kolk_event_loop_lag_seconds",
                                   "How late the event loop ran a callback scheduled for a given time",
                                   buckets=LOOP_LAG_BUCKETS_S, registry=registry)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self.interval_s
            await asyncio.sleep(self.interval_s)  # the measurement itself: how late this wakes
            self.histogram.observe(max(0.0, loop.time() - due))


def register_process_metrics(registry: CollectorRegistry, version: str) -> LoopLagMonitor:
    """Register the process collector and the loop-lag histogram in ``registry``; the monitor
    to start once the node's loop serves (and stop with it)."""
    registry.register(ProcessCollector(version))
    return LoopLagMonitor(registry)
