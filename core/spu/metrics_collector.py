"""What the SPU's ``/metrics`` reads at scrape time (a prometheus_client custom collector).

Runs in the scrape's worker thread, never on the event loop and never calling into it: it
reads the SPU's state through atomic copies (``list(d.values())``, ``list(d.items())``) and
plain attributes, so a scrape sees each value as it was at some instant during the scrape,
not one snapshot of the whole SPU. A replica whose log is closed or failed (or closes while
it is read) has no offsets or size in that scrape, only ``kolk_partition_leader`` 0. Every value is one the SPU keeps anyway: bytes on disk are the segments' sizes
the log holds in memory (what ``partitionStatus`` reports), so no file is looked at. Collecting
an SPU that leads 1,000 partitions takes about 9 ms of CPU; rendering its ~9,000 samples
(prometheus_client, ~8 µs a sample) is most of a scrape's cost (docs/benchmarks.md).

Partition gauges come from every replica this SPU holds, leader or follower (Prometheus adds
``instance``); ``kolk_partition_leader`` says which one leads. Follower lag, under-replicated
partitions and consumer-group lag are the leader's view.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from ..groups.names import OFFSETS_TOPIC

if TYPE_CHECKING:
    from .server import SpuServer

log = logging.getLogger("kolk.spu")

# Series of consumer-group offsets in one scrape (committed offset and lag each); past this a
# scrape leaves the rest out and says so in the log, so that a flood of groups cannot make
# /metrics unbounded.
GROUP_SERIES_MAX = 10_000

PARTITION = ["topic", "partition"]


def _topic_partition(name: str) -> tuple[str, str]:
    topic, _, partition = name.rpartition("-")
    return topic, partition


class SpuCollector(Collector):
    def __init__(self, server: "SpuServer") -> None:
        self.s = server
        self._warned_groups = False  # the cap on group series is logged once, not every scrape

    def collect(self) -> Iterator[Metric]:
        s = self.s
        m = s.metrics
        replicas = list(s.replicas.values())

        records_in = CounterMetricFamily("kolk_spu_records_in", "Records produced to partitions led here",
                                         labels=PARTITION)
        bytes_in = CounterMetricFamily("kolk_spu_bytes_in", "Record bytes produced to partitions led here",
                                       labels=PARTITION)
        records_out = CounterMetricFamily("kolk_spu_records_out", "Offsets fetch answers and stream pushes moved "
                                          "consumers past", labels=PARTITION)
        bytes_out = CounterMetricFamily("kolk_spu_bytes_out", "Record bytes sent to consumers", labels=PARTITION)
        hw = GaugeMetricFamily("kolk_partition_high_watermark", "The replica's high watermark", labels=PARTITION)
        leo = GaugeMetricFamily("kolk_partition_log_end_offset", "The replica's log end offset", labels=PARTITION)
        start = GaugeMetricFamily("kolk_partition_log_start_offset", "The replica's log start offset",
                                  labels=PARTITION)
        size = GaugeMetricFamily("kolk_partition_size_bytes", "Bytes of the replica's segment files",
                                 labels=PARTITION)
        leader = GaugeMetricFamily("kolk_partition_leader", "1 where this SPU leads the partition, else 0",
                                   labels=PARTITION)
        lag = GaugeMetricFamily("kolk_spu_follower_lag_records", "The leader's log end offset minus the "
                                "follower's, as of its last fetch", labels=["topic", "partition", "follower"])
        under = offline = 0
        for r in replicas:
            topic, partition = _topic_partition(r.name)
            labels = {"topic": topic, "partition": partition}  # one dict per replica, shared by its samples
            t = r.traffic
            leading = r.is_leader and not r.fenced and r.failure is None
            if leading or t.records_in or t.records_out:
                # Only where clients are served (or were): a follower's would be zeros, and a
                # 1,000-partition SPU's scrape is dominated by rendering (docs/metrics.md).
                _put(records_in, labels, t.records_in)
                _put(bytes_in, labels, t.bytes_in)
                _put(records_out, labels, t.records_out)
                _put(bytes_out, labels, t.bytes_out)
            if r.leader is None:
                offline += 1
            _put(leader, labels, 1 if leading else 0)
            lg = r.log
            try:
                if lg.closed or lg.failure is not None:
                    continue
                end = lg.log_end_offset
                _put(leo, labels, end)
                _put(hw, labels, lg.high_watermark)
                _put(start, labels, lg.log_start_offset)
                _put(size, labels, lg.size_bytes)
            except Exception:  # noqa: BLE001 - closed or changed while we read: left out of this scrape
                continue
            if leading:
                isr = r.state.isr
                if len(isr) < len(r.state.replicas):
                    under += 1
                for follower, p in list(r.state.progress.items()):
                    if p.leo is not None and follower in r.state.replicas:
                        lag.add_metric([topic, partition, str(follower)], max(0, end - p.leo))
        yield from (records_in, bytes_in, records_out, bytes_out, hw, leo, start, size, leader, lag)

        yield _gauge("kolk_spu_under_replicated_partitions", "Partitions led here whose in-sync set is smaller "
                     "than their replica set", under)
        yield _gauge("kolk_spu_offline_partitions", "Partitions with a replica here that have no leader", offline)
        yield _counter("kolk_spu_isr_shrinks", "In-sync set shrinks committed for partitions led here",
                       m.isr_shrinks)
        yield _counter("kolk_spu_isr_expands", "In-sync set expansions committed for partitions led here",
                       m.isr_expands)
        yield _gauge("kolk_spu_connections", "Open connections to this SPU (clients and nodes)", s.connections)
        yield _gauge("kolk_spu_streams", "Consumer streams this SPU is feeding", s.streams)

        calls, fuel, errors = m.smartmodules.snapshot()
        yield _labelled(CounterMetricFamily("kolk_smartmodule_calls", "SmartModule calls (one stage on one batch)",
                                            labels=["module"]), [((k,), v) for k, v in calls])
        yield _labelled(CounterMetricFamily("kolk_smartmodule_fuel", "Fuel SmartModule calls used",
                                            labels=["module"]), [((k,), v) for k, v in fuel])
        yield _labelled(CounterMetricFamily("kolk_smartmodule_errors", "SmartModule calls that failed, by reason",
                                            labels=["module", "reason"]), errors)
        yield _labelled(CounterMetricFamily("kolk_policy_denials", "Requests the policy (or a node-only rule) "
                                            "refused, by action", labels=["action"]),
                        [((k,), v) for k, v in list(s.authz.denials.items())])
        yield from self._groups()

    def _groups(self) -> Iterator[Metric]:
        """Committed offsets of the groups this SPU coordinates, and their lag where it leads the partition."""
        committed = GaugeMetricFamily("kolk_group_committed_offset", "A consumer group's committed offset",
                                      labels=["group", "topic", "partition"])
        lag = GaugeMetricFamily("kolk_group_lag_records", "The partition's high watermark minus the group's "
                                "committed offset (where this SPU leads the partition)",
                                labels=["group", "topic", "partition"])
        replicas = self.s.replicas
        n = 0
        for part in list(self.s.coordinator.parts.values()):
            if not part.ready or part.closed:
                continue
            for name, entry in list(part.groups.items()):
                for tp, c in list(entry.offsets.items()):
                    if n >= GROUP_SERIES_MAX:
                        if not self._warned_groups:
                            self._warned_groups = True
                            log.warning("/metrics: more than %d group offsets here; the rest are left out",
                                        GROUP_SERIES_MAX)
                        yield committed
                        yield lag
                        return
                    n += 1
                    labels = [name, tp.topic, str(tp.partition)]
                    committed.add_metric(labels, c.offset)
                    r = replicas.get(f"{tp.topic}-{tp.partition}")
                    if r is not None and r.is_leader and tp.topic != OFFSETS_TOPIC:
                        lag.add_metric(labels, max(0, r.log.high_watermark - c.offset))
        yield committed
        yield lag


def _put(family: Metric, labels: dict[str, str], value: float) -> None:
    """``family.add_metric`` without building a label dict per sample (a counter's samples are
    NAME_total, a gauge's NAME): a third of a 1,000-partition collection's time."""
    name = family.name + "_total" if family.type == "counter" else family.name
    family.samples.append(Sample(name, labels, value))


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _labelled(family: Any, samples: list[tuple[Any, int]]) -> Any:
    for labels, value in samples:
        family.add_metric(list(labels), value)
    return family
