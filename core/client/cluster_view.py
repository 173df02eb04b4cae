"""The cluster view: one typed snapshot of a running cluster, collected client-side over the
public wire API only, rendered by the SC's web console (core/console) and ``kolk top``
(core/cli/top.py). docs/operations.md, "kolk top", lists the decisions.

Additions to the interface agreed for issue 21 (nothing agreed was removed or renamed):
- ``PolicyView.in_force: bool | None``: True/False when ``policy/active`` was read, None when it
  could not be (``errors`` says why). ``version``/``source`` are None unless in force.
- ``PartitionView.name`` ("topic-partition") and ``PartitionView.epoch`` (leader epoch).
- ``SpuView.rack`` is "" never: None when the SPU has no rack.
- ``TopicView.high_watermarks``: partition -> HW (None unknown), what :func:`with_rates` uses.
- ``GroupView.error``: why the group could not be described (then ``partitions`` is empty).
- ``ClusterView.metadata_version`` (the answering SC's) and ``ClusterView.answered_by`` (its id);
  ``ClusterView.count(health)``: how many partitions have that health.
- ``partitions`` holds only partitions of the topics in ``topics`` (those the caller may see),
  when the topics could be listed.

Everything here is pure: the dataclasses, :func:`partition_health`, :func:`parse_denial`,
:func:`with_rates` and the builders from the SC's and SPUs' answers. The calls are in
core/client/cluster_collect.py, which :func:`collect_view` calls.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from ..groups.names import OFFSETS_TOPIC
from ..metadata.specs import SpecError, TopicSpec

if TYPE_CHECKING:
    from .client import AsyncClient

AUDIT_TOPIC = "_audit"  # the audit log's topic (core/node/audit.py; the client may not import kolk.node)
INTERNAL_TOPICS = frozenset({AUDIT_TOPIC, OFFSETS_TOPIC})
DENIALS_MAX = 50  # newest denials kept in a view
PARTITIONS_MAX = 10_000  # partitions described per view; beyond, counted in errors
GROUPS_MAX = 1_000  # groups described per view; beyond, counted in errors
DENIAL_TEXT_CHARS_MAX = 256  # each text field of a denial, cut with an ellipsis

HEALTH_OK = "ok"
HEALTH_UNDER_REPLICATED = "under-replicated"
HEALTH_OFFLINE = "offline"


@dataclass(frozen=True)
class ScView:
    id: int
    admin: str
    leader: bool
    reachable: bool


@dataclass(frozen=True)
class SpuView:
    id: int
    address: str
    rack: str | None
    alive: bool
    replicas: int  # replicas placed on this SPU
    leaders: int  # partitions it leads


@dataclass(frozen=True)
class PartitionView:
    topic: str
    partition: int
    leader: int | None
    replicas: tuple[int, ...]
    isr: tuple[int, ...]
    high_watermark: int | None
    log_end_offset: int | None
    log_start_offset: int | None
    size_bytes: int | None  # the leader's copy on disk
    lag_max: int | None  # the worst follower's lag, records (0 with no followers)
    health: str  # HEALTH_OK | HEALTH_UNDER_REPLICATED | HEALTH_OFFLINE
    error: str | None
    name: str = ""
    epoch: int | None = None


@dataclass(frozen=True)
class TopicView:
    name: str
    partitions: int
    replication_factor: int
    size_bytes: int | None  # sum of the partitions' leader copies; None when any is unknown
    records: int | None  # sum of (HW - log start); None when any partition is unknown
    in_records_per_s: float | None  # from two views; None on the first
    config: dict[str, str]
    internal: bool
    high_watermarks: tuple[tuple[int, int | None], ...] = ()


@dataclass(frozen=True)
class GroupPartitionView:
    topic: str
    partition: int
    committed: int | None
    high_watermark: int | None
    lag: int | None


@dataclass(frozen=True)
class GroupView:
    name: str
    state: str
    members: int
    coordinator: int | None
    lag: int | None  # total over its partitions; None when any partition's lag is unknown
    partitions: tuple[GroupPartitionView, ...]
    error: str | None = None


@dataclass(frozen=True)
class ModuleView:
    name: str
    version: str
    kind: str | None
    size_bytes: int | None


@dataclass(frozen=True)
class DenialView:
    ts_ms: int
    identity: str
    action: str
    resource: str
    node: str
    reason: str


@dataclass(frozen=True)
class PolicyView:
    version: int | None
    source: str | None
    in_force: bool | None = None


@dataclass(frozen=True)
class ClusterView:
    taken_at_ms: int
    scs: tuple[ScView, ...]
    leader_sc: int | None
    spus: tuple[SpuView, ...]
    racks: tuple[str, ...]
    topics: tuple[TopicView, ...]
    partitions: tuple[PartitionView, ...]
    groups: tuple[GroupView, ...]
    modules: tuple[ModuleView, ...]
    policy: PolicyView
    denials: tuple[DenialView, ...]  # newest first, at most DENIALS_MAX
    errors: tuple[str, ...]  # what could not be collected, one line each
    metadata_version: int | None = None
    answered_by: int | None = None

    def count(self, health: str) -> int:
        return sum(1 for p in self.partitions if p.health == health)


# ---------------------------------------------------------------- pure: health, rates, denials


def partition_health(leader: int | None, replicas: Iterable[int], isr: Iterable[int], alive: set[int]) -> str:
    """Offline: no leader, or its leader's SPU is down. Under-replicated: some replica is out of
    the in-sync set or on an SPU that is down (before the leader notices and shrinks the set).
    Else ok."""
    if leader is None or leader not in alive:
        return HEALTH_OFFLINE
    in_sync = set(isr)
    if any(r not in in_sync or r not in alive for r in replicas):
        return HEALTH_UNDER_REPLICATED
    return HEALTH_OK


def with_rates(view: ClusterView, previous: ClusterView | None) -> ClusterView:
    """``view`` with each topic's ``in_records_per_s``: the growth of its partitions' high
    watermarks since ``previous`` over the time between the views. Partitions whose HW is unknown
    in either view, or went down (a topic deleted and created again), are left out; a topic with
    none left, the first view, or views not in time order give None."""
    if previous is None:
        return replace(view, topics=tuple(replace(t, in_records_per_s=None) for t in view.topics))
    dt_s = (view.taken_at_ms - previous.taken_at_ms) / 1000
    before = {t.name: dict(t.high_watermarks) for t in previous.topics}
    topics = []
    for t in view.topics:
        rate = None
        old = before.get(t.name)
        if dt_s > 0 and old is not None:
            deltas = [hw - old[p] for p, hw in t.high_watermarks
                      if hw is not None and old.get(p) is not None and hw >= old[p]]  # type: ignore[operator]
            if deltas:
                rate = sum(deltas) / dt_s
        topics.append(replace(t, in_records_per_s=rate))
    return replace(view, topics=tuple(topics))


def _text(value: Any) -> str:
    s = value if isinstance(value, str) else ("" if value is None else str(value))
    s = " ".join(s.split())  # one line
    return s if len(s) <= DENIAL_TEXT_CHARS_MAX else s[:DENIAL_TEXT_CHARS_MAX - 1] + "…"


def parse_denial(value: bytes | memoryview | None) -> DenialView | None:
    """The denial an ``_audit`` record's value holds, or None for anything else (an allowed
    change, a value that is not a JSON object, a record without a whole-number ``ts``). The node
    shown is the writer's own name (``process``: sc-1, spu-2) when it gave one."""
    if value is None:
        return None
    try:
        event = json.loads(bytes(value))
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(event, dict) or event.get("decision") != "deny":
        return None
    ts = event.get("ts")
    if not isinstance(ts, int) or isinstance(ts, bool):
        return None
    node = event.get("process") if isinstance(event.get("process"), str) else event.get("node")
    return DenialView(ts, _text(event.get("identity")), _text(event.get("action")), _text(event.get("resource")),
                      _text(node), _text(event.get("reason")))


def newest_denials(denials: Iterable[DenialView], limit: int = DENIALS_MAX) -> tuple[DenialView, ...]:
    """Newest first (by ts; ties keep their order), at most ``limit``."""
    ordered = sorted(enumerate(denials), key=lambda e: (-e[1].ts_ms, -e[0]))
    return tuple(d for _i, d in ordered[:limit])


# ---------------------------------------------------------------- pure: builders


def whole(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def partition_view(row: Mapping[str, Any], alive: set[int]) -> PartitionView:
    """One row of ``AsyncClient.partition_list`` as a view."""
    leader = whole(row.get("leader"))
    replicas = tuple(int(r) for r in row.get("replicas", ()))
    isr = tuple(int(r) for r in row.get("isr", ()))
    size = None
    for log in row.get("replica_logs", ()):
        if leader is not None and log.get("spu") == leader:
            size = whole(log.get("size_bytes"))
    return PartitionView(str(row.get("topic")), int(row["partition"]), leader, replicas, isr,
                         whole(row.get("high_watermark")), whole(row.get("log_end_offset")),
                         whole(row.get("log_start_offset")), size, whole(row.get("lag")),
                         partition_health(leader, replicas, isr, alive), row.get("error"),
                         str(row.get("name", f"{row.get('topic')}-{row.get('partition')}")), whole(row.get("epoch")))


def _sum_known(values: list[int | None]) -> int | None:
    return None if any(v is None for v in values) else sum(v for v in values if v is not None)


def topic_view(obj: Mapping[str, Any], parts: list[PartitionView]) -> TopicView:
    """A topic object (``list_topics``) and its partitions' views; SpecError for a bad spec."""
    spec = TopicSpec.from_dict(obj.get("spec", {}))
    parts = sorted(parts, key=lambda p: p.partition)
    records = [p.high_watermark - p.log_start_offset
               if p.high_watermark is not None and p.log_start_offset is not None else None for p in parts]
    name = str(obj["name"])
    return TopicView(name, spec.partitions, spec.replication_factor,
                     _sum_known([p.size_bytes for p in parts]) if parts else None,
                     _sum_known(records) if parts else None, None, dict(spec.config), name in INTERNAL_TOPICS,
                     tuple((p.partition, p.high_watermark) for p in parts))


def topic_views(objs: list[dict[str, Any]], parts: Iterable[PartitionView], errors: list[str]) -> tuple[TopicView, ...]:
    by_topic: dict[str, list[PartitionView]] = {}
    for p in parts:
        by_topic.setdefault(p.topic, []).append(p)
    out = []
    for o in sorted(objs, key=lambda o: str(o.get("name"))):
        try:
            out.append(topic_view(o, by_topic.get(str(o.get("name")), [])))
        except (SpecError, KeyError, TypeError) as e:
            errors.append(f"topic {o.get('name')}: malformed spec: {e}")
    return tuple(out)


def sc_views(status: Mapping[str, Any]) -> tuple[tuple[ScView, ...], int | None]:
    scs = tuple(ScView(int(s["id"]), str(s.get("admin", "")), bool(s.get("leader")), bool(s.get("reachable")))
                for s in status.get("scs", ()))
    leader = next((s.id for s in scs if s.leader), None)
    return scs, leader


def spu_views(status: Mapping[str, Any], parts: Iterable[PartitionView]) -> tuple[SpuView, ...]:
    parts = list(parts)
    out = []
    for u in status.get("spus", ()):
        i = int(u["id"])
        out.append(SpuView(i, str(u.get("public_address", "")), u.get("rack") or None, bool(u.get("alive")),
                           sum(1 for p in parts if i in p.replicas), sum(1 for p in parts if p.leader == i)))
    return tuple(sorted(out, key=lambda s: s.id))


def module_views(objs: Iterable[Mapping[str, Any]]) -> tuple[ModuleView, ...]:
    """SmartModule objects (``NAME@VERSION``); their wasm bytes are not kept."""
    out = []
    for o in objs:
        name, _, version = str(o.get("name", "")).partition("@")
        spec = o.get("spec") or {}
        kind = spec.get("kind")
        out.append(ModuleView(name, version, kind if isinstance(kind, str) else None, whole(spec.get("size"))))
    return tuple(sorted(out, key=lambda m: (m.name, m.version)))


def policy_view(obj: Mapping[str, Any] | None) -> PolicyView:
    if obj is None:
        return PolicyView(None, None, False)
    spec = obj.get("spec") or {}
    source = spec.get("source")
    return PolicyView(whole(spec.get("version")), source if isinstance(source, str) else None, True)


def group_view(listed: Mapping[str, Any], described: Any | None, error: str | None) -> GroupView:
    """A row of ``group_list`` and its ``group_describe`` (groups_admin.GroupDescription), or why
    it could not be described."""
    members = listed.get("members")
    n = members if isinstance(members, int) else len(members) if isinstance(members, list) else 0
    coord = whole(listed.get("coordinator"))
    if described is None:
        return GroupView(str(listed.get("group")), str(listed.get("state", "?")), n, coord, None, (), error)
    parts = tuple(GroupPartitionView(p.topic, p.partition, p.committed, p.log_end, p.lag) for p in described.partitions)
    lag = None if any(p.lag is None for p in parts) else sum(p.lag for p in parts if p.lag is not None)
    return GroupView(described.group, described.state, len(described.members),
                     described.coordinator if described.coordinator is not None else coord, lag, parts, None)


EMPTY_POLICY = PolicyView(None, None, None)  # the policy could not be read


async def collect_view(client: "AsyncClient", previous: ClusterView | None = None, *,
                       groups: bool = True, denials: bool = True) -> ClusterView:
    """One view of the cluster through ``client`` (core/client/cluster_collect.py), with topic
    rates against ``previous``. ClusterUnavailableError (a KolkError) when no SC answers."""
    from .cluster_collect import collect_view as collect  # the calls; it imports this module

    return await collect(client, previous, groups=groups, denials=denials)


__all__ = ["AUDIT_TOPIC", "ClusterView", "DenialView", "GroupPartitionView", "GroupView", "ModuleView",
           "PartitionView", "PolicyView", "ScView", "SpuView", "TopicView", "collect_view", "newest_denials",
           "parse_denial", "partition_health", "with_rates"]
