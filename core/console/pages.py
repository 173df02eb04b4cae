"""The console's HTML pages (pure): a :class:`~kolk.console.access.Shown` in, a document out.

Each table has an ``id`` and each row a ``data-key`` (a topic's name, a partition's number, …);
each cell names its column in ``data-col`` and, when its text is formatted for people (sizes,
thousands separators), carries the raw value in ``data-value``: the browser test and anyone
scraping the page read those rather than the text.
"""

from __future__ import annotations

from html import escape

from ..client.cluster_view import AUDIT_TOPIC, HEALTH_OFFLINE, HEALTH_UNDER_REPLICATED, GroupView, TopicView
from . import layout as L
from .access import Shown


def _errors(shown: Shown) -> str:
    if not shown.view.errors:
        return ""
    items = "".join(f"<li>{escape(e)}</li>" for e in shown.view.errors)
    return f'<h2>Not collected</h2><ul class="errors" id="errors">{items}</ul>'


def overview(shown: Shown) -> str:
    v = shown.view
    alive = sum(1 for s in v.spus if s.alive)
    under, offline = v.count(HEALTH_UNDER_REPLICATED), v.count(HEALTH_OFFLINE)
    items: list[tuple[str, str, object, str]] = []
    if shown.cluster:
        leader = next((s for s in v.scs if s.leader), None)
        items += [("scs", "SCs", len(v.scs), ""),
                  ("leader", "SC leader", f"SC {leader.id}" if leader else "none", "" if leader else "bad"),
                  ("spus", "SPUs alive", f"{alive} of {len(v.spus)}", "" if alive == len(v.spus) else "warn"),
                  ("racks", "Racks", len(v.racks), "")]
    items += [("topics", "Topics", len(v.topics), ""), ("partitions", "Partitions", len(v.partitions), ""),
              ("under-replicated", "Under-replicated", under, "warn" if under else "ok"),
              ("offline", "Offline", offline, "bad" if offline else "ok"),
              ("groups", "Consumer groups", len(v.groups), ""), ("smartmodules", "SmartModules", len(v.modules), "")]
    body = [L.cards(items)]
    if shown.cluster:
        body.append("<h2>SCs</h2>" + L.table(
            "scs", [("id", "SC"), ("admin", "Admin address"), ("role", "Role"), ("reachable", "Reachable")],
            ((str(s.id), [L.text(s.id, "id"), L.text(s.admin, "admin"),
                          L.text("leader" if s.leader else "follower", "role", "ok" if s.leader else ""),
                          L.text("yes" if s.reachable else "no", "reachable", "" if s.reachable else "bad")])
             for s in v.scs), "No SC answered."))
        body.append("<h2>SPUs</h2>" + L.table(
            "spus", [("id", "SPU"), ("address", "Address"), ("rack", "Rack"), ("alive", "Alive"),
                     ("replicas", "Replicas"), ("leaders", "Leaders")],
            ((str(s.id), [L.text(s.id, "id"), L.text(s.address, "address"), L.text(s.rack, "rack"),
                          L.text("yes" if s.alive else "no", "alive", "ok" if s.alive else "bad"),
                          L.num(s.replicas, "replicas"), L.num(s.leaders, "leaders")])
             for s in v.spus), "No SPU is registered yet."))
        if v.racks:
            body.append(f'<p>Racks: <span id="racks">{escape(", ".join(v.racks))}</span></p>')
    else:
        body.append(f'<p class="muted" id="cluster-hidden">{escape(shown.viewer)} may not describe the cluster: '
                    "its SCs and SPUs are not shown.</p>")
    body.append(_errors(shown))
    return L.page("Cluster overview", "overview", shown.viewer, "".join(body), v.taken_at_ms)


def _topic_row(t: TopicView) -> tuple[str, list[L.Cell]]:
    name = L.Cell(L.link("/topics", t.name) + ('<span class="badge">internal</span>' if t.internal else ""), "name",
                  t.name)
    return t.name, [name, L.num(t.partitions, "partitions"), L.num(t.replication_factor, "rf"),
                    L.size(t.size_bytes, "size"), L.num(t.records, "records"), L.rate(t.in_records_per_s, "rate")]


def topics(shown: Shown) -> str:
    v = shown.view
    body = L.table("topics", [("name", "Topic"), ("partitions", "Partitions"), ("rf", "Replication factor"),
                              ("size", "Size"), ("records", "Records"), ("rate", "In (records/s)")],
                   # users' topics first, internal ones last, as `kolk top` lists them
                   (_topic_row(t) for t in sorted(v.topics, key=lambda t: (t.internal, t.name))),
                   "No topics yet (or none this identity may describe).")
    return L.page("Topics", "topics", shown.viewer, body + _errors(shown), v.taken_at_ms)


def topic(shown: Shown, t: TopicView) -> str:
    v = shown.view
    parts = sorted((p for p in v.partitions if p.topic == t.name), key=lambda p: p.partition)
    summary = L.cards([("partitions", "Partitions", t.partitions, ""), ("rf", "Replication factor",
                                                                        t.replication_factor, ""),
                       ("size", "Size", L.human_bytes(t.size_bytes), ""), ("records", "Records", t.records, ""),
                       ("rate", "In (records/s)", None if t.in_records_per_s is None else
                        f"{t.in_records_per_s:,.1f}", "")])
    rows = ((str(p.partition), [
        L.num(p.partition, "partition"), L.text(p.leader, "leader"), L.ids(p.replicas, "replicas"),
        L.ids(p.isr, "isr"), L.num(p.high_watermark, "hw"), L.num(p.log_end_offset, "leo"),
        L.num(p.log_start_offset, "start"), L.size(p.size_bytes, "size"), L.num(p.lag_max, "lag"),
        L.text(p.health + (f": {p.error}" if p.error else ""), "health", p.health)]) for p in parts)
    table = L.table("partitions", [("partition", "Partition"), ("leader", "Leader SPU"), ("replicas", "Replicas"),
                                   ("isr", "In-sync replicas"), ("hw", "High watermark"),
                                   ("leo", "Log end offset"), ("start", "Log start offset"), ("size", "Size"),
                                   ("lag", "Follower lag (records)"), ("health", "Health")],
                    rows, "No partition status was collected.")
    config = ("<h2>Configuration</h2><dl id=\"config\">" + "".join(
        f"<dt>{escape(k)}</dt><dd>{escape(val)}</dd>" for k, val in sorted(t.config.items())) + "</dl>"
              if t.config else '<p class="muted" id="config-empty">No settings of its own: the cluster defaults '
                               "apply.</p>")
    body = summary + "<h2>Partitions</h2>" + table + config
    return L.page(f"Topic {t.name}", "topics", shown.viewer, body, v.taken_at_ms)


def smartmodules(shown: Shown) -> str:
    v = shown.view
    body = L.table("smartmodules", [("name", "SmartModule"), ("version", "Version"), ("kind", "Kind"),
                                    ("size", "Size")],
                   ((f"{m.name}@{m.version}", [L.text(m.name, "name"), L.text(m.version, "version"),
                                               L.text(m.kind, "kind"), L.size(m.size_bytes, "size")])
                    for m in v.modules), "No SmartModules stored (or none this identity may describe).")
    return L.page("SmartModules", "smartmodules", shown.viewer, body, v.taken_at_ms)


def _state(g: GroupView) -> L.Cell:
    return L.text(g.state + (f" ({g.error})" if g.error else ""), "state", "bad" if g.error else "")


def groups(shown: Shown) -> str:
    v = shown.view
    body = L.table("groups", [("name", "Group"), ("state", "State"), ("members", "Members"),
                              ("coordinator", "Coordinator SPU"), ("lag", "Lag (records)")],
                   ((g.name, [L.Cell(L.link("/groups", g.name), "name", g.name), _state(g),
                              L.num(g.members, "members"), L.text(g.coordinator, "coordinator"),
                              L.num(g.lag, "lag")]) for g in v.groups),
                   "No consumer groups (or none this identity may describe).")
    return L.page("Consumer groups", "groups", shown.viewer, body, v.taken_at_ms)


def group(shown: Shown, g: GroupView) -> str:
    summary = L.cards([("state", "State", g.state, "bad" if g.error else ""), ("members", "Members", g.members, ""),
                       ("coordinator", "Coordinator SPU", g.coordinator, ""), ("lag", "Lag (records)", g.lag, "")])
    rows = ((f"{p.topic}-{p.partition}", [L.text(p.topic, "topic"), L.num(p.partition, "partition"),
                                          L.num(p.committed, "committed"), L.num(p.high_watermark, "hw"),
                                          L.num(p.lag, "lag")]) for p in g.partitions)
    table = L.table("group-partitions", [("topic", "Topic"), ("partition", "Partition"),
                                         ("committed", "Committed offset"), ("hw", "High watermark"),
                                         ("lag", "Lag (records)")], rows, "No committed offsets.")
    error = f'<p class="bad" id="group-error">{escape(g.error)}</p>' if g.error else ""
    return L.page(f"Consumer group {g.name}", "groups", shown.viewer, summary + error + "<h2>Partitions</h2>" + table,
                  shown.view.taken_at_ms)


def policy(shown: Shown) -> str:
    v = shown.view
    p = v.policy
    if p.in_force is False:
        head = '<p id="policy-state">No policy is in force: every request is allowed.</p>'
    elif p.in_force is None:
        head = '<p class="warn" id="policy-state">Whether a policy is in force could not be read.</p>'
    else:
        head = f'<p id="policy-state">Policy version <strong id="policy-version">{p.version}</strong> is in force.</p>'
    if p.source is not None:
        source = f'<h2>Source</h2><pre id="policy-source">{escape(p.source)}</pre>'
    elif p.in_force and not shown.policy_source:
        source = (f'<p class="muted" id="policy-hidden">{escape(shown.viewer)} may not read the policy\'s source '
                  "(it needs admin on cluster).</p>")
    else:
        source = ""
    if shown.denials and not any(t.name == AUDIT_TOPIC for t in v.topics):
        denials = ('<h2>Recent denials</h2><p class="muted" id="denials-none">This cluster keeps no audit log: it '
                   "runs without TLS and without a policy, where every client is anonymous and allowed.</p>")
    elif shown.denials:
        denials = "<h2>Recent denials</h2>" + L.table(
            "denials", [("time", "Time"), ("identity", "Identity"), ("action", "Action"), ("resource", "Resource"),
                        ("node", "Node"), ("reason", "Reason")],
            ((f"{d.ts_ms}-{i}", [L.text(L.utc_time(d.ts_ms), "time"), L.text(d.identity, "identity"),
                                 L.text(d.action, "action"), L.text(d.resource, "resource"), L.text(d.node, "node"),
                                 L.text(d.reason, "reason")]) for i, d in enumerate(v.denials)),
            "No denials in the audit log's newest records.")
    else:
        denials = (f'<p class="muted" id="denials-hidden">{escape(shown.viewer)} may not read the audit log '
                   "(consume on topic:_audit): recent denials are not shown.</p>")
    return L.page("Policy", "policy", shown.viewer, head + source + denials, v.taken_at_ms)
