"""The SC's metrics (docs/metrics.md, "SC metrics"): what the collector reads at scrape time.

The SC's hot paths only add to plain ints (:class:`ScCounters`) and observe one histogram
(commit latency); :class:`ScCollector` turns them, Raft's progress and the metadata state into
metric families when Prometheus scrapes, in the metrics listener's worker thread. It only
reads: the metadata state is immutable (a new State per command), counters are copied with
``list(d.items())`` (atomic under the GIL), Raft's numbers are attribute reads
(RaftNode.progress), and nothing calls into the event loop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..metadata.specs import SpuStatus

if TYPE_CHECKING:
    from .server import ScServer

# From 1 ms (a lone SC on a fast disk) to 10 s (an election in between).
COMMIT_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
NO_LEADER_ID = -1  # kolk_sc_raft_leader_id while no leader is known

# The SC's controllers, as kolk_sc_controller_actions_total{controller} names them.
LIVENESS, LEADERS, REPLICAS, TOPIC_DEFAULTS, INTERNAL_TOPICS = (
    "liveness", "leaders", "replicas", "topic_defaults", "internal_topics")


class ScCounters:
    """What the SC counts as it works (on its loop); the collector reads copies."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.admin_requests: dict[tuple[str, str], int] = {}  # (call, "ok" | error code) -> answers
        self.controller_actions: dict[str, int] = {}  # controller -> commands it proposed
        self.commit_seconds = Histogram(
            "kolk_sc_commit_seconds", "Time from proposing a command on the Raft leader to its being applied",
            buckets=COMMIT_BUCKETS_S, registry=registry)

    def answered(self, call: str, result: str) -> None:
        key = (call, result)
        self.admin_requests[key] = self.admin_requests.get(key, 0) + 1

    def acted(self, controller: str) -> None:
        self.controller_actions[controller] = self.controller_actions.get(controller, 0) + 1


class ScCollector(Collector):
    """kolk_sc_*: Raft, controllers, SPUs, watchers, admin requests, and the SC's policy denials."""

    def __init__(self, server: "ScServer") -> None:
        self.server = server

    def collect(self) -> Iterator[Metric]:
        s = self.server
        progress = s.raft.progress()
        yield GaugeMetricFamily("kolk_sc_raft_term", "The Raft term this SC is in", value=progress.term)
        yield GaugeMetricFamily("kolk_sc_raft_commit_index", "The highest Raft log index this SC knows committed",
                                value=progress.commit_index)
        yield GaugeMetricFamily("kolk_sc_raft_is_leader", "1 on the SC that leads Raft, else 0",
                                value=1 if progress.is_leader else 0)
        leader = s.leader_id(progress.leader)
        yield GaugeMetricFamily("kolk_sc_raft_leader_id", f"The id of the SC leading Raft ({NO_LEADER_ID}: none known)",
                                value=NO_LEADER_ID if leader is None else leader)

        actions = CounterMetricFamily("kolk_sc_controller_actions", "Commands the SC's controllers proposed",
                                      labels=["controller"])
        for controller, n in sorted(list(s.counters.controller_actions.items())):
            actions.add_metric([controller], n)
        yield actions

        spus = list(s.sm.state.all("spu"))
        alive = sum(1 for o in spus if SpuStatus.from_dict(o.status).alive)
        yield GaugeMetricFamily("kolk_sc_spus_alive", "SPUs the metadata says are alive", value=alive)
        yield GaugeMetricFamily("kolk_sc_spus_registered", "SPUs registered in the metadata", value=len(spus))
        yield GaugeMetricFamily("kolk_sc_watchers", "Metadata watches this SC serves now", value=s.watchers.used)

        requests = CounterMetricFamily("kolk_sc_admin_requests", "Admin calls this SC answered, by call and result "
                                       "(ok, or the error code)", labels=["method", "result"])
        for (call, result), n in sorted(list(s.counters.admin_requests.items())):
            requests.add_metric([call, result], n)
        yield requests

        denials = CounterMetricFamily("kolk_policy_denials", "Calls this node refused by policy, by action",
                                      labels=["action"])
        for action, n in sorted(list(s.authz.denials.items())):
            denials.add_metric([action], n)
        yield denials
