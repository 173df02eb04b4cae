"""The SPU's metrics: what is counted where the work happens, and the histograms it observes.

The names, types and labels are the contract in docs/metrics.md ("SPU metrics"); this module
defines each name once. The hot path stays cheap (DESIGN.md §11): counters are plain Python
ints kept beside the work (a partition's :class:`Traffic` on its replica, the SPU's
connection and stream counts, the authorizer's denials, :class:`SpuMetrics`' in-sync
changes), incremented once per request or batch, never per record, and read only when
Prometheus scrapes (core/spu/metrics_collector.py). Histograms (prometheus_client, fixed
buckets) are observed once per request, fsync or SmartModule call.

The scrape renders in a worker thread (the shared listener, core/observe/): what it reads
here is copied atomically (``list(d.items())``; a dict copy holds the GIL throughout), and the
SmartModule counts, which worker threads write, are kept under a lock.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Histogram

from ..protocol.codes import Acks

# Fixed buckets (seconds, or records for the group-commit batch). A request slower than the
# last bucket still counts, in +Inf.
REQUEST_SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
FSYNC_SECONDS_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                         0.5, 1.0)
GROUP_COMMIT_RECORDS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384, 65536)
SMARTMODULE_SECONDS_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                               1.0)
# Distinct SmartModule labels (NAME@VERSION) counted; calls of further modules are counted
# under "other" so that a cluster cycling through versions cannot grow the scrape without end.
SMARTMODULE_LABELS_MAX = 256
OTHER_MODULE = "other"

ACKS_LABEL = {Acks.NONE: "0", Acks.LEADER: "1", Acks.ALL: "all"}


@dataclass(slots=True)
class Traffic:
    """One partition's client traffic on this SPU, as its leader (replication is not counted).

    ``records_in``/``bytes_in``: produce requests appended (after the topic's rules and any
    produce-side SmartModules; a duplicate idempotent batch is not appended, so not counted).
    ``records_out``: offsets that fetch answers and stream pushes moved consumers past
    (nextOffset minus the offset read from; it counts what a filter dropped and what the
    cleaner removed, so its rate is the rate consumers read at). ``bytes_out``: record bytes
    those answers carried (after masking and SmartModules).
    """

    records_in: int = 0
    bytes_in: int = 0
    records_out: int = 0
    bytes_out: int = 0


class SmartModuleStats:
    """Calls, errors by reason and fuel per SmartModule (``NAME@VERSION``), written from the
    SmartModule worker threads (smartmodule/chain.py calls :meth:`observe` per stage call),
    read by the scrape; a lock, since threads write."""

    def __init__(self, call_seconds: Histogram) -> None:
        self._lock = threading.Lock()
        self.calls: dict[str, int] = {}
        self.fuel: dict[str, int] = {}
        self.errors: dict[tuple[str, str], int] = {}
        self._call_seconds = call_seconds

    def observe(self, module: str, seconds: float, fuel: int, reason: str | None) -> None:
        with self._lock:
            if module not in self.calls and len(self.calls) >= SMARTMODULE_LABELS_MAX:
                module = OTHER_MODULE
            self.calls[module] = self.calls.get(module, 0) + 1
            self.fuel[module] = self.fuel.get(module, 0) + fuel
            if reason is not None:
                key = (module, reason)
                self.errors[key] = self.errors.get(key, 0) + 1
        self._call_seconds.labels(module).observe(seconds)

    def snapshot(self) -> tuple[list[tuple[str, int]], list[tuple[str, int]], list[tuple[tuple[str, str], int]]]:
        with self._lock:
            return list(self.calls.items()), list(self.fuel.items()), list(self.errors.items())


class SpuMetrics:
    """The SPU's histograms and the counters that have no better home, in ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.produce_seconds = Histogram(
            "kolk_spu_produce_seconds", "Time to answer a produce request, by the acks it asked for",
            ["acks"], buckets=REQUEST_SECONDS_BUCKETS, registry=registry)
        self._produce_by_acks = {acks: self.produce_seconds.labels(label) for acks, label in ACKS_LABEL.items()}
        self.fetch_seconds = Histogram(
            "kolk_spu_fetch_seconds", "Time to answer a fetch request", buckets=REQUEST_SECONDS_BUCKETS,
            registry=registry)
        # Streaming consumers (kolk consume, the Python consumers, group members) never send a
        # fetch: what they wait on is a push, timed from reading the log to handing the push to
        # the transport (masking and SmartModules included; waiting for records or credit not).
        self.stream_push_seconds = Histogram(
            "kolk_spu_stream_push_seconds", "Time to prepare one stream push: read, mask, SmartModules, send",
            buckets=REQUEST_SECONDS_BUCKETS, registry=registry)
        self.fsync_seconds = Histogram(
            "kolk_spu_fsync_seconds", "Time of one group-commit fsync of a partition log (leader or follower)",
            buckets=FSYNC_SECONDS_BUCKETS, registry=registry)
        self.group_commit_batches = Histogram(
            "kolk_spu_group_commit_batches", "Records made durable by one group-commit fsync",
            buckets=GROUP_COMMIT_RECORDS_BUCKETS, registry=registry)
        self.smartmodule_call_seconds = Histogram(
            "kolk_smartmodule_call_seconds", "Time of one SmartModule call (one stage on one batch)",
            ["module"], buckets=SMARTMODULE_SECONDS_BUCKETS, registry=registry)
        self.smartmodules = SmartModuleStats(self.smartmodule_call_seconds)
        # In-sync set changes this SPU, as leader, had committed by the SC (Kafka's IsrShrinksPerSec
        # and IsrExpandsPerSec): one per committed change that removed, or added, followers.
        self.isr_shrinks = 0
        self.isr_expands = 0

    def observe_produce(self, acks: int, seconds: float) -> None:
        """A produce request answered; ``acks`` as the wire carried it (an unknown value is not observed)."""
        child = self._produce_by_acks.get(acks)  # type: ignore[call-overload]
        if child is not None:
            child.observe(seconds)

    def observe_fsync(self, seconds: float, records: int) -> None:
        """One group-commit round (segments/group_commit.py): its fsync time and the records it made durable."""
        self.fsync_seconds.observe(seconds)
        self.group_commit_batches.observe(records)

    def on_isr_committed(self, before: tuple[int, ...], after: tuple[int, ...]) -> None:
        """The SC committed in-sync set ``after``, asked for as a change of ``before``."""
        if set(before) - set(after):
            self.isr_shrinks += 1
        if set(after) - set(before):
            self.isr_expands += 1
