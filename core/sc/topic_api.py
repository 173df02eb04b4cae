"""The SC calls of a topic's lifecycle (docs/metadata.md, docs/lifecycle.md): ``alterTopic``
and ``addPartitions`` (action ``alter`` on ``topic:NAME``), ``eraseKey`` (action ``delete`` on
``topic:NAME``; the caller's identity is recorded as ``requested_by``) and ``erasureDone``
(node only). A mixin of :class:`~kolk.sc.api.ScApi`, kept apart so that each file stays about
one thing.

Every erasure request and completion is audited (``_audit``, through the authorizer's record,
as every metadata change is): who, the key's sha256 (never the key, which never reaches the
SC), the topic and partition, and when.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from ..groups.names import OFFSETS_TOPIC
from ..metadata.controllers import place_replicas
from ..metadata.objects import ERASURE, TOPIC
from ..metadata.specs import PARTITIONS_MAX
from ..node.authz import NODE_ONLY
from ..protocol.wire import set_error
from .answers import Encoded, fill_error
from .server import now_ms

log = logging.getLogger("kolk.sc")


def _pairs(entries: Any, what: str) -> dict[str, str] | str:
    """A KeyValue list as a map, or why not (a key given twice)."""
    out: dict[str, str] = {}
    for kv in entries:
        if kv.key in out:
            return f"{what}: config key {kv.key[:200]!r} is given twice"
        out[kv.key] = kv.value
    return out


class TopicLifecycleCalls:
    """alterTopic, addPartitions, eraseKey, erasureDone (mixed into ScApi)."""

    s: Any
    peer: Any

    def _allowed(self, result: Any, action: str, resource: str) -> bool:  # pragma: no cover - ScApi's
        raise NotImplementedError

    def _changed(self, action: str, resource: str) -> None:  # pragma: no cover - ScApi's
        raise NotImplementedError

    def _fill_topic(self, out: Any, name: str) -> None:
        topic = self.s.sm.state.get(TOPIC, name)
        if topic is not None:
            Encoded.of(topic).fill(out.topic)

    async def alterTopic(self, req: Any, out: Any) -> None:  # noqa: N802
        name = req.name
        if not self._allowed(out.result, "alter", f"topic:{name}"):
            return
        changes = _pairs(req.set, f"topic {name}")
        if isinstance(changes, str):
            set_error(out.result, "invalidArgument", changes)
            return
        cmd: dict[str, Any] = {"op": "alter_topic", "name": name, "set": changes, "delete": list(req.delete),
                               "ts": now_ms()}
        if req.hasExpected:
            cmd["expected_version"] = int(req.expectedVersion)
        if fill_error(out.result, await self.s.propose(cmd), self.s):
            self._changed("alter", f"topic:{name}")
            self._fill_topic(out, name)

    async def addPartitions(self, req: Any, out: Any) -> None:  # noqa: N802
        name, count = req.name, int(req.count)
        if name == OFFSETS_TOPIC:
            set_error(out.result, "invalidArgument", f"{OFFSETS_TOPIC} keeps its partition count: a group's "
                      "coordinator is chosen by its name modulo that count")
            return
        if not self._allowed(out.result, "alter", f"topic:{name}"):
            return
        state = self.s.sm.state
        topic = state.get(TOPIC, name)
        assignment: list[list[int]] = []
        # Placed as create places (least loaded, racks, leaders spread); apply re-checks it and
        # refuses a shrink, a missing topic or too many partitions with its own message.
        if topic is not None and topic.spec["partitions"] < count <= PARTITIONS_MAX:
            try:
                assignment = place_replicas(state, count - topic.spec["partitions"], topic.spec["replication_factor"])
            except ValueError as e:
                set_error(out.result, "replicationFactorTooHigh", f"topic {name}: {e}")
                return
        cmd: dict[str, Any] = {"op": "add_partitions", "name": name, "count": count, "assignment": assignment,
                               "ts": now_ms()}
        if req.hasExpected:
            cmd["expected_version"] = int(req.expectedVersion)
        if fill_error(out.result, await self.s.propose(cmd), self.s):
            self._changed("alter", f"topic:{name} partitions {count}")
            self._fill_topic(out, name)

    async def eraseKey(self, req: Any, out: Any) -> None:  # noqa: N802
        topic, partition, sha, offset = req.topic, int(req.partition), req.keySha256, int(req.offset)
        if not self._allowed(out.result, "delete", f"topic:{topic}"):
            return
        ts = now_ms()
        outcome = await self.s.propose({"op": "erase_key", "topic": topic, "partition": partition,
                                        "key_sha256": sha, "offset": offset,
                                        "requested_by": self.peer.identity, "ts": ts})
        if not fill_error(out.result, outcome, self.s):
            return
        name = outcome["value"]["name"]
        if not outcome["value"].get("existing"):
            log.info("erasure %s requested by %s (key sha256 %s)", name, self.peer.identity, sha)
            self.s.authz.record(self.peer, "delete", f"topic:{topic}", "allow", None,
                                f"erasure {name} requested at {ts} ms: key sha256 {sha}, partition {partition}, "
                                f"records up to offset {offset}")
        obj = self.s.sm.state.get(ERASURE, name)
        if obj is not None:
            Encoded.of(obj).fill(out.erasure)

    async def erasureDone(self, req: Any, out: Any) -> None:  # noqa: N802
        if not self._allowed(out.result, NODE_ONLY, "erasureDone"):
            return
        name, spu_id = req.name, int(req.spuId)
        caller = re.fullmatch(r"spu-(\d+)", self.peer.identity or "")
        if caller is not None and int(caller.group(1)) != spu_id:
            # A node that proved it is SPU N (the cluster secret names it) speaks only for itself.
            set_error(out.result, "denied", f"{self.peer.identity} may report only its own part of erasure "
                                            f"{name[:200]}, not SPU {spu_id}'s")
            return
        ts = now_ms()
        cmd = {"op": "erasure_done", "name": name, "spu": spu_id, "found": bool(req.found), "ts": ts}
        if req.note:
            cmd["note"] = req.note
        outcome = await self.s.propose(cmd)
        if fill_error(out.result, outcome, self.s) and outcome["value"].get("completed"):
            obj = self.s.sm.state.get(ERASURE, name)
            spec = dict(obj.spec) if obj is not None else {}
            log.info("erasure %s completed: no replica holds the key any more", name)
            self.s.authz.record(self.peer, "delete", f"topic:{spec.get('topic', '?')}", "allow", None,
                                f"erasure {name} completed at {ts} ms: no replica of partition "
                                f"{spec.get('partition', '?')} holds key sha256 {spec.get('key_sha256', '?')} "
                                f"(requested by {spec.get('requested_by', '?')})")

    def audit_ended_erasures(self, topic: str, outcome: dict[str, Any]) -> None:
        """A deleted topic's pending erasures end with it: audited as completed."""
        for e in (outcome.get("value") or {}).get("erasures_ended", []):
            self.s.authz.record(self.peer, "delete", f"topic:{topic}", "allow", None,
                                f"erasure {e['name']} completed at {now_ms()} ms: topic deleted, with every record "
                                f"of key sha256 {e['key_sha256']} (requested by {e['requested_by']})")
