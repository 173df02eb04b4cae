"""The console's JSON API (pure): the same data as the pages, as plain JSON values.

Every answer is an object with ``taken_at_ms`` (when the view was collected) and ``viewer``
(the identity it was cut down for); each field below keeps the cluster view's names
(core/client/cluster_view.py), tuples become lists. Parts the viewer may not see are left out
and named in ``hidden`` (``cluster``, ``policy_source``, ``denials``). Errors are
``{"error": "one line"}`` with the HTTP status of the matching page.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from ..client.cluster_view import HEALTH_OFFLINE, HEALTH_UNDER_REPLICATED, GroupView, TopicView
from .access import Shown


def _base(shown: Shown) -> dict[str, Any]:
    hidden = [name for name, seen in (("cluster", shown.cluster), ("policy_source", shown.policy_source),
                                      ("denials", shown.denials)) if not seen]
    return {"taken_at_ms": shown.view.taken_at_ms, "viewer": shown.viewer, "hidden": hidden}


def overview(shown: Shown) -> dict[str, Any]:
    v = shown.view
    return {**_base(shown), "scs": [asdict(s) for s in v.scs], "leader_sc": v.leader_sc,
            "spus": [asdict(s) for s in v.spus], "spus_alive": sum(1 for s in v.spus if s.alive), "racks": list(v.racks),
            "topics": len(v.topics), "partitions": len(v.partitions),
            "under_replicated": v.count(HEALTH_UNDER_REPLICATED), "offline": v.count(HEALTH_OFFLINE),
            "groups": len(v.groups), "smartmodules": len(v.modules), "errors": list(v.errors)}


def _topic(t: TopicView) -> dict[str, Any]:
    d = asdict(t)
    d.pop("high_watermarks", None)  # the rate's input; the partitions carry each HW
    return d


def topics(shown: Shown) -> dict[str, Any]:
    return {**_base(shown), "topics": [_topic(t) for t in shown.view.topics]}


def topic(shown: Shown, t: TopicView) -> dict[str, Any]:
    parts = sorted((p for p in shown.view.partitions if p.topic == t.name), key=lambda p: p.partition)
    return {**_base(shown), "topic": _topic(t), "partitions": [asdict(p) for p in parts]}


def smartmodules(shown: Shown) -> dict[str, Any]:
    return {**_base(shown), "smartmodules": [asdict(m) for m in shown.view.modules]}


def groups(shown: Shown) -> dict[str, Any]:
    return {**_base(shown), "groups": [{k: val for k, val in asdict(g).items() if k != "partitions"}
                                       for g in shown.view.groups]}


def group(shown: Shown, g: GroupView) -> dict[str, Any]:
    return {**_base(shown), "group": asdict(g)}


def policy(shown: Shown) -> dict[str, Any]:
    return {**_base(shown), "policy": asdict(shown.view.policy), "denials": [asdict(d) for d in shown.view.denials]}


def encode(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def error(line: str) -> bytes:
    return encode({"error": line})
