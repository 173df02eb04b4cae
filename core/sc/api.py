"""The SC's wire surface: one :class:`ScApi` per admin connection, serving the ``ScRequest``
calls of core/protocol/kolk.capnp (docs/protocol.md).

A thin adapter between the framed transport (core/protocol/channel.py) and the server
(core/sc/server.py): it checks the caller's rights, turns a request into a Raft command or a read of
the state, and fills the response struct; errors become ``Result`` values, never exceptions.
The transport has checked every list and text of a request against core/protocol/limits.py
before a method here runs, so what is checked here is meaning: kinds, names, values.

``watch`` is a stream: the answer says whether the watch is accepted, then a feed pushes the
changes in order as the watcher's credit allows, until the watcher cancels or goes away.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Coroutine, Iterator

from ..groups.names import OFFSETS_TOPIC
from ..metadata.controllers import choose_leader, place_replicas
from ..metadata.objects import KINDS, State
from ..metadata.specs import PARTITIONS_MAX, REASON_CHARS_MAX, PartitionStatus
from .spec_json import SpecJsonError, parse_spec_json
from ..node.authz import INSECURE_POLICY_FLAG, NODE_ONLY, POLICY_NEEDS_TLS, Denied
from ..node.identity import NodeAuthCalls
from ..observe.node_diagnostics import answer_node_diagnostics
from ..protocol.channel_server import ServerStream
from ..protocol.limits import FRAME_BODY_BYTES_MAX
from ..protocol.wire import WATCH_EVENTS_PER_PUSH_MAX, config_map, schema, set_error
from ..security.policy import Policy, PolicyError, policy_from_spec
from ..security.tls import Peer
from ..protocol.fair_use import owner_of
from .module_check import check_smartmodule
from .policy_access import hidden_policies, hidden_policy, lockout, lockout_accepted
from .server import OFFSETS_TOPIC_CONFIG, ScServer, WatcherSlot, now_ms
from .change_log import admin_change_line
from .answers import OBJECT_WIRE_OVERHEAD, Encoded as _Encoded, fill_error as _fill_error
from .topic_api import TopicLifecycleCalls
from .sc_member_api import ScMemberCalls
from .move_api import MoveCalls

log = logging.getLogger("kolk.sc")

LOST_LOGGED_MAX = 20  # lost replicas named in the log per registration
STORAGE_ID_CHARS = 32
# An answer or a push is one frame: what it carries must leave room for its envelope.
ANSWER_BYTES_MAX = FRAME_BODY_BYTES_MAX - (64 << 10)
# Deltas go out in pushes of about this size (an object larger than it goes alone), so one
# large SmartModule does not hold back the changes behind it for long.
WATCH_PUSH_BYTES = 1 << 20
# The topic defaults follow the SC leader's flags (core/sc/topic_defaults.py), not a client's put.
CONFIG_FROM_FLAGS = ("config objects are set by the SC leader from its --topic-default KEY=VALUE flags "
                     "(docs/metadata.md, \"Topic config\"); they cannot be put or deleted by a client")

Feed = Coroutine[Any, Any, "tuple[str, str] | None"]


# ---------------------------------------------------------------- objects on the wire


@dataclass(frozen=True)
class _Change:
    """One event of a watch push: an object at a version, or its deletion (``obj`` None)."""

    version: int
    kind: str
    name: str
    obj: _Encoded | None

    @property
    def size(self) -> int:
        return self.obj.size if self.obj is not None else len(self.kind) + len(self.name) + OBJECT_WIRE_OVERHEAD


def _watch_push(full: bool, version: int, changes: list[_Change]) -> Any:
    msg = schema.Push.new_message()
    w = msg.init("watch")
    w.fullSync = full
    w.version = version
    events = w.init("events", len(changes))
    for i, c in enumerate(changes):
        ev = events[i]
        ev.version = c.version
        ev.kind = c.kind
        ev.name = c.name
        ev.deleted = c.obj is None
        if c.obj is not None:
            c.obj.fill(ev.object)
    return msg


def _chunks(changes: list[_Change]) -> Iterator[list[_Change]]:
    """Deltas cut into pushes of at most WATCH_EVENTS_PER_PUSH_MAX events and about
    WATCH_PUSH_BYTES each."""
    chunk: list[_Change] = []
    size = 0
    for c in changes:
        if chunk and (len(chunk) >= WATCH_EVENTS_PER_PUSH_MAX or size + c.size > WATCH_PUSH_BYTES):
            yield chunk
            chunk, size = [], 0
        chunk.append(c)
        size += c.size
    if chunk:
        yield chunk


async def _send(stream: ServerStream, full: bool, version: int, changes: list[_Change]) -> bool:
    """One push, once the watcher has credit; False when the stream has closed."""
    while stream.credit <= 0 and not stream.closed:
        stream.granted.clear()
        await stream.granted.wait()
    if stream.closed:
        return False
    await stream.push(_watch_push(full, version, changes))
    return True


# ---------------------------------------------------------------- helpers


def _newly_lost(before: State, after: State, spu_id: int) -> list[tuple[str, str]]:
    """Partitions whose replica on ``spu_id`` a registration marked lost: (name, reason)."""
    out = []
    for p in after.all("partition"):
        if "lost" not in p.status:
            continue  # nothing lost: no need to read the rest
        entry = next((e for e in PartitionStatus.from_dict(p.status).lost if e.spu == spu_id), None)
        old = before.get("partition", p.name)
        if entry is not None and (old is None or entry not in PartitionStatus.from_dict(old.status).lost):
            out.append((p.name, entry.reason))
    return sorted(out)


def _blob_check(kind: str, name: str, action: str) -> tuple[str, str]:
    """What a put or delete of a stored object needs: create/delete on the module, or admin
    on the cluster for a policy."""
    if kind == "smartmodule":
        return action, f"smartmodule:{name.split('@')[0]}"
    return "admin", "cluster"


def _parsed_policy(spec: Any) -> Policy | str:
    """The policy a spec holds, or why it cannot be stored (it must parse here, so every node
    can enforce it)."""
    if not isinstance(spec, dict):
        return "a policy spec is an object with version, source and sha256"
    try:
        return policy_from_spec(spec)  # parses, sha256 and version match (apply checks it goes forward)
    except PolicyError as e:
        return str(e)


def _unknown_kind(result: Any, kind: str) -> bool:
    if kind in KINDS:
        return False
    set_error(result, "invalidArgument", f"unknown kind {kind!r}; known: {', '.join(KINDS)}")
    return True


# ---------------------------------------------------------------- the handler


class ScApi(TopicLifecycleCalls, MoveCalls, ScMemberCalls, NodeAuthCalls):
    """Serves one admin connection: ``await api.<call>(req, out)`` for every ``ScRequest``
    member (the transport dispatches by name), ``watch(req, out, stream)`` for the stream;
    ``challenge`` and ``authenticate`` come from :class:`NodeAuthCalls`, the calls of a
    topic's lifecycle (alterTopic, addPartitions, eraseKey, erasureDone) from
    :class:`TopicLifecycleCalls` (core/sc/topic_api.py)."""

    def __init__(self, server: ScServer, peer: Peer) -> None:
        self.s = server
        self.peer = peer

    def answered(self, call: str, result: str) -> None:
        """The transport's word on how a call ended ("ok" or the error code): counted in
        kolk_sc_admin_requests_total (core/sc/metrics.py)."""
        self.s.counters.answered(call, result)

    def _allowed(self, result: Any, action: str, resource: str) -> bool:
        try:
            self.s.authorize(self.peer, action, resource)
            return True
        except Denied as e:
            set_error(result, "denied", str(e))
            return False

    def _node_or_admin(self, result: Any, call: str, spu_id: int) -> bool:
        """Membership calls: a node; with TLS also an identity the policy lets administer the
        cluster (an operator's `kolk cluster spu register`). Without TLS only a node: anonymous
        callers could otherwise take an SPU's place. A refusal is audited as the call on the
        SPU it was about."""
        authz = self.s.authz
        self.s.sync_policy()
        if self.peer.node or (self.s.config.tls is not None and authz.allowed(self.peer, "admin", "cluster")):
            return True
        why = (f"{call} is for cluster nodes only: {authz.not_a_node(self.peer)}" if self.s.config.tls is None else
               f"{self.peer.identity} is not a node and may not admin cluster (policy version {authz.version})")
        authz.record(self.peer, call, f"spu:{spu_id}", "deny", None, why)
        set_error(result, "denied", f"{self.peer.identity} from {self.peer.address or '?'} may not {call} SPU "
                                    f"{spu_id}: {why}")
        return False

    def _policy_denied(self, result: Any, line: Any) -> bool:
        """Answer a read of policy objects the caller may not read with ``line(denial)`` (code
        ``denied``, audited); False if the policy in force now allows it after all."""
        try:
            self.s.authorize(self.peer, "admin", "cluster")
            return False
        except Denied as e:
            set_error(result, "denied", line(str(e)))
            return True

    def _changed(self, action: str, resource: str, logged_as: tuple[str, str] | None = None) -> None:
        """Audit a committed change and log its INFO line (core/sc/change_log.py);
        ``logged_as``: (action, object) for the line when the audited resource does not name
        the object (a policy's delete is audited as admin on cluster)."""
        self.s.authz.record(self.peer, action, resource, "allow", None, "metadata change")
        shown_action, shown = logged_as or (action, resource)
        log.info("%s", admin_change_line(shown_action, shown, self.peer.identity, self.peer.address,
                                         self.s.sm.state.version))

    def _may_see(self, kind: str, name: str) -> bool:
        """describe, or anything that implies it (produce, consume on a topic; use a module)."""
        authz = self.s.authz
        if kind in ("topic", "partition", "erasure"):
            topic = name if kind == "topic" else name.split("@")[0].rsplit("-", 1)[0]
            if topic == OFFSETS_TOPIC and kind == "partition":
                return True  # where the group coordinators are: every group client needs it (docs/policy.md)
            return any(authz.allowed(self.peer, a, f"topic:{topic}") for a in ("describe", "produce", "consume"))
        if kind == "smartmodule":
            return any(authz.allowed(self.peer, a, f"smartmodule:{name.split('@')[0]}") for a in ("describe", "use"))
        if kind == "policy":
            self.s.sync_policy()  # the same policy version _policy_denied decides with
            return self.peer.node or authz.allowed(self.peer, "admin", "cluster")
        return True  # SPUs: their addresses are what every client needs

    # ---- topics

    async def createTopic(self, req: Any, out: Any) -> None:  # noqa: N802
        name, partitions, rf = req.name, int(req.partitions), int(req.replicationFactor)
        if name == OFFSETS_TOPIC:
            await self._create_offsets_topic(out)
            return
        if not self._allowed(out.result, "create", f"topic:{name}"):
            return
        try:
            # Above PARTITIONS_MAX apply refuses the command with its own message.
            assignment = place_replicas(self.s.sm.state, partitions, rf) if partitions <= PARTITIONS_MAX else []
        except ValueError as e:
            set_error(out.result, "replicationFactorTooHigh", f"topic {name}: {e}")
            return
        cmd = {"op": "create_topic", "name": name, "partitions": partitions, "replication_factor": rf,
               "config": dict(config_map(req.config)), "assignment": assignment, "ts": now_ms()}
        if _fill_error(out.result, await self.s.propose(cmd), self.s):
            self._changed("create", f"topic:{name}")
            self._fill_topic(out, name)

    async def _create_offsets_topic(self, out: Any) -> None:
        """A client that needs a group's coordinator asks for ``_consumer_offsets`` (as Kafka
        creates __consumer_offsets on the first FindCoordinator): the SC creates it with its own
        settings whatever the request says, for any caller (it only makes groups possible), on
        ``--offsets-replication-factor`` SPUs or as many as are alive. docs/consumers.md "Storage"."""
        state = self.s.sm.state
        if state.get("topic", OFFSETS_TOPIC) is not None:
            set_error(out.result, "alreadyExists", f"topic {OFFSETS_TOPIC} already exists")
            return
        alive = [o.spec["id"] for o in state.all("spu") if o.status.get("alive")]
        if not alive:
            set_error(out.result, "unavailable", f"{OFFSETS_TOPIC} needs an SPU alive to be placed on; none is",
                      None, True)
            return
        cfg = self.s.config
        rf = min(cfg.offsets_replication_factor, len(alive))
        try:
            assignment = place_replicas(state, cfg.offsets_partitions, rf)
        except ValueError as e:
            set_error(out.result, "unavailable", f"{OFFSETS_TOPIC}: {e}", None, True)
            return
        cmd = {"op": "create_topic", "name": OFFSETS_TOPIC, "partitions": cfg.offsets_partitions,
               "replication_factor": rf, "config": dict(OFFSETS_TOPIC_CONFIG), "assignment": assignment,
               "ts": now_ms()}
        if _fill_error(out.result, await self.s.propose(cmd), self.s):
            log.info("created the internal topic %s for consumer groups: %d partition(s), replication factor %d",
                     OFFSETS_TOPIC, cfg.offsets_partitions, rf)
            self._changed("create", f"topic:{OFFSETS_TOPIC}")
            self._fill_topic(out, OFFSETS_TOPIC)

    async def deleteTopic(self, req: Any, out: Any) -> None:  # noqa: N802
        name = req.name
        if name == OFFSETS_TOPIC:
            set_error(out.result, "invalidArgument", f"{OFFSETS_TOPIC} is internal: deleting it would lose every "
                      "consumer group's committed offsets (delete groups with `kolk consumer delete`)")
            return
        if not self._allowed(out.result, "delete", f"topic:{name}"):
            return
        outcome = await self.s.propose({"op": "delete_topic", "name": name, "ts": now_ms()})
        if _fill_error(out.result, outcome, self.s):
            self._changed("delete", f"topic:{name}")
            self.audit_ended_erasures(name, outcome)

    # ---- reads

    async def listObjects(self, req: Any, out: Any) -> None:  # noqa: N802
        kind = req.kind
        if _unknown_kind(out.result, kind):
            return
        state = await self.s.read_state(req.stale)
        if isinstance(state, dict):
            _fill_error(out.result, state, self.s)
            return
        every = sorted(state.all(kind), key=lambda o: o.name)
        objs = [_Encoded.of(o) for o in every if self.peer.node or self._may_see(kind, o.name)]
        hidden = len(every) - len(objs) if kind == "policy" else 0
        if hidden and self._policy_denied(out.result, lambda denied: hidden_policies(hidden, self.peer.identity,
                                                                                     denied)):
            return  # never an empty list: that would say no policy is in force
        size = sum(e.size for e in objs)
        if size > ANSWER_BYTES_MAX:
            set_error(out.result, "tooLarge", f"the {len(objs)} {kind} objects take {size} bytes, more than one "
                                              f"answer may carry ({ANSWER_BYTES_MAX}); get them by name")
            return
        entries = out.init("objects", len(objs))
        for i, e in enumerate(objs):
            e.fill(entries[i])
        out.version = state.version
        out.result.ok = True

    async def getObject(self, req: Any, out: Any) -> None:  # noqa: N802
        kind, name = req.kind, req.name
        if _unknown_kind(out.result, kind):
            return
        state = await self.s.read_state(req.stale)
        if isinstance(state, dict):
            _fill_error(out.result, state, self.s)
            return
        obj = state.get(kind, name)
        if obj is not None and not self.peer.node and not self._may_see(kind, name):
            # A policy the caller may not read is not "no policy" (which would mean everything
            # is allowed): say it exists, never its source. Other objects seem not to exist.
            if kind != "policy":
                obj = None  # as if it did not exist: its existence is not this identity's to know
            elif self._policy_denied(out.result, lambda denied: hidden_policy(name, self.peer.identity, denied)):
                return
        out.found = obj is not None
        if obj is not None:
            _Encoded.of(obj).fill(out.object)
        out.result.ok = True

    async def clusterStatus(self, req: Any, out: Any) -> None:  # noqa: N802
        """This SC's own view, leader or not: also the liveness probe of SPUs and tools."""
        if not self.peer.node and not self._allowed(out.result, "describe", "cluster"):
            return
        out.statusJson = json.dumps(self.s.status())
        out.result.ok = True

    async def nodeDiagnostics(self, req: Any, out: Any) -> None:  # noqa: N802
        """What a bug report needs from this SC (docs/operations.md "Diagnostics"): admin on
        cluster, and audited like the other operator calls."""
        if not self._allowed(out.result, "admin", "cluster"):
            return
        await answer_node_diagnostics(f"sc-{self.s.config.node_id}", self.s.config, self.s.registry, req.logLines,
                                      out, lambda *a: self.s.authz.record(self.peer, *a))

    # ---- stored objects

    async def putObject(self, req: Any, out: Any) -> None:  # noqa: N802
        kind, name = req.kind, req.name
        try:
            spec = parse_spec_json(req.specJson)
        except SpecJsonError as e:
            set_error(out.result, "invalidArgument", str(e))
            return
        if not isinstance(spec, dict):
            set_error(out.result, "invalidArgument", f"specJson must be a JSON object, not {type(spec).__name__}")
            return
        action, resource = _blob_check(kind, name, "create")
        if not self._allowed(out.result, action, resource):
            return
        if kind == "config":
            set_error(out.result, "invalidArgument", CONFIG_FROM_FLAGS)
            return
        if kind == "smartmodule":
            refused = await check_smartmodule(name, spec, owner_of(self.peer))
            if refused is not None:
                code, message = refused
                set_error(out.result, code, message, None, code == "overloaded")
                return
        # The policy in force is policy/active (core/node/authz.py): without TLS it protects nothing.
        plaintext_policy = kind == "policy" and name == "active" and self.s.config.tls is None
        if plaintext_policy and not self.s.config.insecure_allow_plaintext_policy:
            log.warning("refused to store policy/%s from %s: the cluster runs without TLS", name, self.peer.identity)
            set_error(out.result, "denied", POLICY_NEEDS_TLS)
            return
        lockout_accepted_by = None
        if kind == "policy" and name == "active":
            parsed = _parsed_policy(spec)
            if isinstance(parsed, str):
                set_error(out.result, "invalidArgument", parsed)
                return
            # The same engine every node enforces: would the applier keep admin on cluster?
            locked_out = lockout(parsed, self.peer.identity, self.peer.address)
            if locked_out and not req.allowLockout:
                set_error(out.result, "invalidArgument", locked_out)
                return
            lockout_accepted_by = locked_out and self.peer.identity
        cmd = {"op": "put_object", "kind": kind, "name": name, "spec": spec, "ts": now_ms()}
        if req.hasExpected:
            cmd["expected_version"] = int(req.expectedVersion)
        outcome = await self.s.propose(cmd)
        if _fill_error(out.result, outcome, self.s):
            out.version = outcome["value"]["version"]
            self._changed(action, resource if kind != "policy" else f"policy:{name} v{spec.get('version')}",
                          ("put", f"{kind}:{name}" + (f" v{spec.get('version')}" if kind == "policy" else "")))
            if lockout_accepted_by:
                log.warning("policy/%s v%s applied by %s, which may no longer change it", name, spec.get("version"),
                            lockout_accepted_by)
                self.s.authz.record(self.peer, "admin", f"policy:{name} v{spec.get('version')}", "allow", None,
                                    lockout_accepted(lockout_accepted_by), always=True)
            if plaintext_policy:
                log.warning("policy/%s stored on a cluster without TLS (%s)", name, INSECURE_POLICY_FLAG)
                self.s.authz.record(self.peer, "admin", f"policy:{name} v{spec.get('version')}", "allow", None,
                                    f"applied without TLS ({INSECURE_POLICY_FLAG}): every client is anonymous",
                                    always=True)

    async def deleteObject(self, req: Any, out: Any) -> None:  # noqa: N802
        kind, name = req.kind, req.name
        action, resource = _blob_check(kind, name, "delete")
        if not self._allowed(out.result, action, resource):
            return
        if kind == "config":
            set_error(out.result, "invalidArgument", CONFIG_FROM_FLAGS)
            return
        cmd = {"op": "delete_object", "kind": kind, "name": name, "ts": now_ms()}
        if req.hasExpected:
            cmd["expected_version"] = int(req.expectedVersion)
        if _fill_error(out.result, await self.s.propose(cmd), self.s):
            self._changed(action, resource, ("delete", f"{kind}:{name}"))

    # ---- SPUs

    async def registerSpu(self, req: Any, out: Any) -> None:  # noqa: N802
        spu_id, storage_id = int(req.id), req.storageId
        if not self._node_or_admin(out.result, "registerSpu", spu_id):
            return
        if len(storage_id) > STORAGE_ID_CHARS:
            set_error(out.result, "invalidArgument", f"registerSpu: storageId of {len(storage_id)} characters; a "
                                                     f"storage id is {STORAGE_ID_CHARS} hex digits")
            return
        cmd: dict[str, Any] = {"op": "register_spu", "id": spu_id, "rack": req.rack or None,
                               "public_address": req.publicAddress, "private_address": req.privateAddress,
                               "ts": now_ms()}
        if not self.s.config.ignore_storage_id_for_tests:
            if storage_id:
                cmd["storage_id"] = storage_id
            if len(req.lost):
                cmd["lost"] = [{"partition": e.partition, "reason": e.reason[:REASON_CHARS_MAX]} for e in req.lost]
        before = self.s.sm.state
        outcome = await self.s.propose(cmd)
        if outcome.get("ok"):
            self.s.heartbeat(spu_id)
            out.version = int(outcome["value"]["version"])
            log.info("SPU %s registered at %s (storage %s) by %s (metadata version %s)", spu_id, req.publicAddress,
                     storage_id[:8] or "unknown", self.peer.identity, out.version)
            for name, why in _newly_lost(before, self.s.sm.state, spu_id)[:LOST_LOGGED_MAX]:
                log.warning("%s: the replica on SPU %s lost data and left the in-sync set: %s", name, spu_id, why)
        self._membership_audited("registerSpu", spu_id, outcome,
                                 f"public {req.publicAddress}, private {req.privateAddress or req.publicAddress}, "
                                 f"storage {storage_id[:8] or 'unknown'}")
        _fill_error(out.result, outcome, self.s)

    async def unregisterSpu(self, req: Any, out: Any) -> None:  # noqa: N802
        spu_id = int(req.id)
        if not self._node_or_admin(out.result, "unregisterSpu", spu_id):
            return
        outcome = await self.s.propose({"op": "unregister_spu", "id": spu_id, "ts": now_ms()})
        if outcome.get("ok"):
            log.info("SPU %s unregistered by %s (metadata version %s)", spu_id, self.peer.identity,
                     self.s.sm.state.version)
        self._membership_audited("unregisterSpu", spu_id, outcome, "")
        _fill_error(out.result, outcome, self.s)

    def _membership_audited(self, call: str, spu_id: int, outcome: dict[str, Any], detail: str) -> None:
        """Audit a registration or unregistration: who, from where (the event's identity and
        address), which SPU, accepted or refused and why. A retriable refusal (not the leader,
        no commit yet) is not a decision: the SPU asks again."""
        if outcome.get("ok"):
            self.s.authz.record(self.peer, call, f"spu:{spu_id}", "allow", None,
                                f"{call} of SPU {spu_id} accepted" + (f": {detail}" if detail else ""))
        elif not outcome.get("retriable"):
            self.s.authz.record(self.peer, call, f"spu:{spu_id}", "deny", None,
                                f"{call} of SPU {spu_id} refused: {outcome.get('message', '')}")

    async def heartbeat(self, req: Any, out: Any) -> None:
        if not self._allowed(out.result, NODE_ONLY, "heartbeat"):
            return
        if not self.s.raft.is_leader():
            set_error(out.result, "notLeader", "heartbeats go to the SC leader", self.s.leader_admin(), True)
            return
        self.s.heartbeat(int(req.spuId), leaving=bool(req.leaving))
        out.result.ok = True

    # ---- partitions

    async def updateIsr(self, req: Any, out: Any) -> None:  # noqa: N802
        if not self._allowed(out.result, NODE_ONLY, "updateIsr"):
            return
        cmd: dict[str, Any] = {"op": "update_isr", "partition": req.partition, "isr": [int(x) for x in req.isr],
                               "epoch": int(req.epoch), "leader": int(req.leader), "ts": now_ms()}
        if len(req.basedOn):
            cmd["based_on"] = [int(x) for x in req.basedOn]
        _fill_error(out.result, await self.s.propose(cmd), self.s)

    async def reportReplicaLoss(self, req: Any, out: Any) -> None:  # noqa: N802
        if not self._allowed(out.result, NODE_ONLY, "reportReplicaLoss"):
            return
        partition, spu_id, reason = req.partition, int(req.spuId), req.reason[:REASON_CHARS_MAX]
        cmd: dict[str, Any] = {"op": "fence_replica", "partition": partition, "id": spu_id, "reason": reason,
                               "ts": now_ms()}
        if int(req.epoch) >= 0:
            cmd["epoch"] = int(req.epoch)
        if req.keepLastInSync:
            cmd["keep_last"] = True
        outcome = await self.s.propose(cmd)
        if outcome.get("ok"):
            log.warning("%s: the replica on SPU %s is fenced: %s", partition, spu_id, reason)
            self.s.authz.record(self.peer, "admin", f"partition:{partition}", "allow", None,
                                f"replica on SPU {spu_id} fenced: {reason}")
        _fill_error(out.result, outcome, self.s)

    async def electLeader(self, req: Any, out: Any) -> None:  # noqa: N802
        if not self._allowed(out.result, "admin", "cluster"):
            return
        state = self.s.sm.state
        p = state.get("partition", req.partition)
        if p is None:
            set_error(out.result, "notFound", f"partition {req.partition} does not exist")
            return
        unclean = bool(req.unclean)
        choice = choose_leader(state, p, None if req.leader < 0 else int(req.leader), unclean)
        if isinstance(choice, str):
            set_error(out.result, "invalidArgument", choice)
            return
        cmd: dict[str, Any] = {"op": "elect_leader", "partition": p.name, "leader": choice,
                               "epoch": p.status["epoch"], "ts": now_ms()}
        if unclean:
            cmd["unclean"] = True
        outcome = await self.s.propose(cmd)
        if _fill_error(out.result, outcome, self.s):
            epoch = int(outcome["value"]["epoch"])
            out.leader = choice
            out.epoch = epoch
            what = "unclean election" if unclean else "election"
            log.warning("%s: %s of SPU %d at epoch %d by %s", p.name, what, choice, epoch, self.peer.identity)
            self.s.authz.record(self.peer, "admin", f"partition:{p.name}", "allow", None,
                                f"{what}: SPU {choice} leads at epoch {epoch}")

    # ---- node identity without TLS (core/node/identity.py)

    def _node_auth(self) -> tuple[str, str | None, bool, Any]:
        return "SC", self.s.config.secret, self.s.config.tls is not None, self.s.authz

    # ---- producers

    async def allocateProducerIds(self, req: Any, out: Any) -> None:  # noqa: N802
        outcome = await self.s.propose({"op": "allocate_producer_ids", "count": int(req.count), "ts": now_ms()})
        if _fill_error(out.result, outcome, self.s):
            out.firstId = outcome["value"]["first"]
            out.count = outcome["value"]["count"]

    # ---- watch

    async def watch(self, req: Any, out: Any, stream: ServerStream) -> Feed | None:
        """Accept a watch (node-only; at most ScConfig.watchers_max per SC) and return its feed."""
        if not self._allowed(out.result, NODE_ONLY, "watch"):
            return None
        slot = self.s.watchers.take()
        if slot is None:
            set_error(out.result, "limitExceeded", f"this SC already serves {self.s.watchers.limit} watchers; try "
                                                   "again when one has closed", None, True)
            return None
        out.result.ok = True
        return slot.bind(self._feed_watch(stream, int(req.fromVersion), slot))

    async def _feed_watch(self, stream: ServerStream, version: int, slot: WatcherSlot) -> tuple[str, str] | None:
        """Push every change after ``version``, in order, as the watcher's credit allows; a full
        sync first when the change log no longer reaches back that far. It runs until the
        watcher cancels or goes away (the transport cancels it); its place is given back then."""
        sm = self.s.sm
        try:
            while True:
                changed = sm.changed
                events = sm.changelog.since(version)
                if events is None:
                    state = sm.state
                    changes = [_Change(o.version, o.kind, o.name, _Encoded.of(o)) for k in KINDS for o in state.all(k)]
                    size = sum(c.size for c in changes)
                    if size > ANSWER_BYTES_MAX:  # a full sync is one push: the watcher replaces its state with it
                        log.error("a full sync of %d bytes is more than one push may carry; the watch ends", size)
                        return ("tooLarge", f"the metadata ({size} bytes) is more than one push may carry "
                                            f"({ANSWER_BYTES_MAX})")
                    if not await _send(stream, True, state.version, changes):
                        return None
                    version = state.version
                elif events:
                    changes = [_Change(e.version, e.kind, e.name, None if e.obj is None else _Encoded.of(e.obj))
                               for e in events]
                    for chunk in _chunks(changes):
                        if not await _send(stream, False, chunk[-1].version, chunk):
                            return None
                    version = events[-1].version
                else:
                    await changed.wait()
        finally:
            slot.release()
