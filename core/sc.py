"""The SC (stream controller): cluster metadata on durable Raft, controllers, and the admin API.

One process: the asyncio loop serves Cap'n Proto (``ScAdmin`` in kolk.capnp) and runs the
controllers; pysyncobj runs Raft on its own thread. Writes become commands proposed through
Raft (a follower's pysyncobj forwards them to the leader); reads are linearizable by default
(a ``barrier`` command goes through the log first) and local when ``stale`` is asked for.
Controllers run only on the leader; SPU heartbeats go to the leader and live in its memory,
so only liveness *changes* go through Raft.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

import capnp

from .metadata.apply import encode_command
from .metadata.controllers import (choose_leader, place_replicas, reconcile_leaders, reconcile_liveness,
                                   reconcile_replicas)
from .metadata.objects import KINDS, TOPIC, State
from .raft.node import RaftConfig, RaftError, RaftNode
from .sc_state import MetadataStateMachine
from .audit import AUDIT_TOPIC, AuditLog
from .authz import NODE_ONLY, Authorizer, Denied
from .security.policy import PolicyError, policy_from_spec
from .security.tls import Peer, TlsConfig
from .transport import serve
from .wire import WATCH_EVENTS_PER_PUSH_MAX, camel, config_map, schema, set_error, set_object

log = logging.getLogger("kolk.sc")

IGNORE_STORAGE_ID_ENV = "KOLK_TEST_IGNORE_STORAGE_ID"
LOST_REPLICAS_MAX = 10_000  # entries of one registerSpu's lost list
LOST_LOGGED_MAX = 20  # lost replicas named in the log per registration
REASON_CHARS_MAX = 300
PARTITION_NAME_CHARS_MAX = 210  # a topic name (200) and "-<index>"
STORAGE_ID_CHARS = 32


@dataclass(frozen=True)
class ScPeer:
    node_id: int
    raft_address: str
    admin_address: str


@dataclass
class ScConfig:
    node_id: int
    data_dir: str
    peers: dict[int, ScPeer]  # every SC, this one included
    secret: str
    bind_raft: str | None = None  # default: the advertised raft address
    bind_admin: str | None = None  # default: the advertised admin address
    heartbeat_timeout_ms: int = 3_000
    # An SPU dead this long has its replicas moved to other SPUs (self-healing).
    replica_move_after_ms: int = 300_000
    controller_interval_ms: int = 200
    request_timeout_s: float = 5.0
    watchers_max: int = 1_000
    election_timeout_min_s: float = 0.3
    election_timeout_max_s: float = 0.9
    snapshot_min_entries: int = 5_000
    on_sync: Any = None  # test hook passed to the Raft journal
    ready_file: str | None = None  # written with the bound admin address once serving
    tls: TlsConfig | None = None  # TLS on the admin listener (mutual: clients need certificates)
    changelog_events: int = 10_000  # changes kept for watchers
    extra: dict[str, Any] = field(default_factory=dict)
    # TEST ONLY (KOLK_TEST_IGNORE_STORAGE_ID=1): forget SPUs' storage ids and lost replicas, the
    # data-losing behaviour before issue 15; the fault harness must catch it under disk-wipe.
    ignore_storage_id_for_tests: bool = field(
        default_factory=lambda: os.environ.get(IGNORE_STORAGE_ID_ENV) == "1")

    def __post_init__(self) -> None:
        if self.node_id not in self.peers:
            raise ValueError(f"--id {self.node_id} is not among the peers {sorted(self.peers)}")
        if self.changelog_events < 1:
            raise ValueError("changelog_events must be at least 1")
        if self.heartbeat_timeout_ms <= self.controller_interval_ms:
            raise ValueError("heartbeat_timeout_ms must be longer than controller_interval_ms")
        if self.replica_move_after_ms < self.heartbeat_timeout_ms:
            raise ValueError("replica_move_after_ms must be at least heartbeat_timeout_ms")

    @property
    def me(self) -> ScPeer:
        return self.peers[self.node_id]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class ScServer:
    def __init__(self, config: ScConfig) -> None:
        self.config = config
        self.loop = asyncio.get_running_loop()
        self.sm = MetadataStateMachine(self.loop, config.changelog_events)
        me = config.me
        raft_cfg = RaftConfig(
            self_address=me.raft_address,
            peers=tuple(p.raft_address for i, p in sorted(config.peers.items()) if i != config.node_id),
            data_dir=os.path.join(config.data_dir, "raft"),
            secret=config.secret,
            bind_address=config.bind_raft,
            election_timeout_min_s=config.election_timeout_min_s,
            election_timeout_max_s=config.election_timeout_max_s,
            snapshot_min_entries=config.snapshot_min_entries,
            on_sync=config.on_sync,
        )
        self.raft = RaftNode(raft_cfg, self.sm)
        self._admin_by_raft = {p.raft_address: p.admin_address for p in config.peers.values()}
        self._heartbeats: dict[int, int] = {}
        self._leader_since_ms: int | None = None
        self._watchers = 0
        self._server: Any = None
        self._tasks: list[asyncio.Task[Any]] = []
        self.admin_address = me.admin_address
        self.audit: AuditLog | None = None
        self.authz = Authorizer(f"sc-{config.node_id}", config.tls is not None, self._audit)

    def _audit(self, event: dict[str, Any]) -> None:
        if self.audit is None:
            self.audit = AuditLog(f"sc-{self.config.node_id}", [self.admin_address], self.config.tls)
        self.audit.record(event)

    def authorize(self, peer: Peer, action: str, resource: str) -> None:
        """The policy check of every admin call; the policy in force is the state's."""
        obj = self.sm.state.get("policy", "active")
        version = int(obj.spec.get("version", 0)) if obj is not None else 0
        if version != self.authz.version or (obj is None) != (self.authz.policy is None):
            self.authz.on_policy(obj.to_json() if obj is not None else None)
        self.authz.check(peer, action, resource)

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        listen = self.config.bind_admin or self.config.me.admin_address
        host, port = listen.rsplit(":", 1)
        try:
            self._server = await serve(lambda peer: AdminImpl(self, peer), host, int(port), self.config.tls)
        except OSError as e:
            # `kolk sc` checked this port before Raft started (core/sc_main.py); it was taken
            # since. Stop Raft and exit with the same one line (the process cannot serve).
            await asyncio.get_running_loop().run_in_executor(None, self.raft.stop)
            reason = os.strerror(e.errno).lower() if e.errno else str(e)
            raise SystemExit(f"kolk sc: cannot listen for admin on {listen}: {reason}") from None
        bound = self._server.sockets[0].getsockname()
        self.admin_address = f"{bound[0]}:{bound[1]}"
        self._tasks.append(asyncio.ensure_future(self._controller_loop()))
        self._tasks.append(asyncio.ensure_future(self._audit_topic_loop()))
        if self.config.ready_file:
            tmp = self.config.ready_file + ".tmp"
            with open(tmp, "w") as f:
                json.dump({"admin": self.admin_address, "pid": os.getpid()}, f)
            os.replace(tmp, self.config.ready_file)
        log.info("SC %d serving admin on %s, raft on %s (listening on %s)", self.config.node_id, self.admin_address,
                 self.config.me.raft_address, self.raft.listen_address)

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        if self.audit is not None:
            self.audit.stop()
        if self._server is not None:
            self._server.close()
        await asyncio.get_running_loop().run_in_executor(None, self.raft.stop)

    # ---------------------------------------------------------------- raft edge

    def leader_admin(self) -> str | None:
        raft_leader = self.raft.leader()
        return self._admin_by_raft.get(raft_leader) if raft_leader else None

    async def propose(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Propose through Raft; returns the outcome dict, or an error outcome on failure."""
        fut: asyncio.Future[tuple[Any, RaftError | None]] = self.loop.create_future()

        def done(result: Any, err: RaftError | None) -> None:
            self.loop.call_soon_threadsafe(lambda: fut.done() or fut.set_result((result, err)))

        self.raft.propose(encode_command(cmd), done)
        try:
            result, err = await asyncio.wait_for(fut, self.config.request_timeout_s)
        except asyncio.TimeoutError:
            return {"ok": False, "code": "timeout", "retriable": True,
                    "message": f"no commit within {self.config.request_timeout_s} s (leader: "
                               f"{self.leader_admin() or 'unknown'}); the change may or may not be applied"}
        if err is not None:
            code = "noLeader" if self.raft.leader() is None else "timeout"
            return {"ok": False, "code": code, "retriable": err.retriable, "message": err.reason}
        return result

    async def read_state(self, stale: bool) -> State | dict[str, Any]:
        """The state for a read: after a barrier through the log unless ``stale``."""
        if stale:
            return self.sm.state
        outcome = await self.propose({"op": "barrier", "ts": now_ms()})
        if not outcome.get("ok"):
            return outcome
        return self.sm.state

    # ---------------------------------------------------------------- controllers

    async def _controller_loop(self) -> None:
        interval = self.config.controller_interval_ms / 1000
        while True:
            await asyncio.sleep(interval)  # a period, not synchronisation
            try:
                await self._reconcile_once()
            except Exception:  # noqa: BLE001 - a failed round must not stop the controllers
                log.exception("controller round failed")

    async def _reconcile_once(self) -> None:
        if not self.raft.is_leader():
            self._leader_since_ms = None
            return
        now = now_ms()
        if self._leader_since_ms is None:
            self._leader_since_ms = now
            self._heartbeats.clear()
        state = self.sm.state
        seen = {spu.spec["id"]: self._heartbeats.get(spu.spec["id"], self._leader_since_ms)
                for spu in state.all("spu")}
        for cmd in reconcile_liveness(state, seen, now, self.config.heartbeat_timeout_ms):
            await self.propose(cmd)
        for cmd in reconcile_leaders(self.sm.state, now_ms()):
            await self.propose(cmd)
        for cmd in reconcile_replicas(self.sm.state, now_ms(), self.config.replica_move_after_ms):
            outcome = await self.propose(cmd)
            log.info("moving replicas of %s to %s: %s", cmd["partition"], cmd["replicas"],
                     "done" if outcome.get("ok") else outcome.get("message"))

    async def _audit_topic_loop(self) -> None:
        """The leader creates the audit topic once SPUs exist (replicated on up to 3 of them)."""
        while True:
            await asyncio.sleep(1.0)  # a period, not synchronisation
            state = self.sm.state
            if not self.raft.is_leader() or state.get(TOPIC, AUDIT_TOPIC) is not None:
                continue
            if self.config.tls is None and state.get("policy", "active") is None:
                continue  # no audit log on a plaintext cluster without a policy (core/authz.py)
            spus = state.spu_ids()
            if not spus:
                continue
            rf = min(3, len(spus))
            try:
                assignment = place_replicas(state, 1, rf)
            except ValueError:
                continue
            await self.propose({"op": "create_topic", "name": AUDIT_TOPIC, "partitions": 1, "replication_factor": rf,
                                "config": {}, "assignment": assignment, "ts": now_ms()})

    def heartbeat(self, spu_id: int) -> None:
        self._heartbeats[spu_id] = now_ms()

    # ---------------------------------------------------------------- status

    def status(self) -> dict[str, Any]:
        raft = self.raft.status()
        leader_raft = raft["leader"]
        scs = []
        for p in sorted(self.config.peers.values(), key=lambda p: p.node_id):
            if p.node_id == self.config.node_id:
                reachable = True
            else:
                reachable = raft["peers"].get(p.raft_address, False)
            scs.append({"id": p.node_id, "raft": p.raft_address, "admin": p.admin_address,
                        "leader": p.raft_address == leader_raft, "reachable": reachable})
        state = self.sm.state
        spus = [{"id": o.spec["id"], "rack": o.spec.get("rack"), "public_address": o.spec["public_address"],
                 "alive": o.status.get("alive", False)} for o in sorted(state.all("spu"), key=lambda o: o.spec["id"])]
        return {"self": self.config.node_id, "leader": self.leader_admin(), "scs": scs, "spus": spus,
                "metadata_version": state.version, "raft": {k: raft[k] for k in
                                                            ("term", "commit_index", "last_applied", "state",
                                                             "journal_entries", "has_quorum")}}


def _newly_lost(before: State, after: State, spu_id: int) -> list[tuple[str, str]]:
    """Partitions whose replica on ``spu_id`` a registration marked lost: (name, reason)."""
    out = []
    for p in after.all("partition"):
        entry = next((e for e in p.status.get("lost", []) if e["spu"] == spu_id), None)
        old = before.get("partition", p.name)
        if entry is not None and (old is None or entry not in old.status.get("lost", [])):
            out.append((p.name, entry["reason"]))
    return sorted(out)


def _blob_check(kind: str, name: str, action: str) -> tuple[str, str]:
    """What a put or delete of a stored object needs: create/delete on the module, or admin
    on the cluster for a policy."""
    if kind == "smartmodule":
        return action, f"smartmodule:{name.split('@')[0]}"
    return "admin", "cluster"


def _policy_problem(spec: Any) -> str | None:
    """Why a policy spec cannot be stored (it must parse here, so every node can enforce it)."""
    if not isinstance(spec, dict):
        return "a policy spec is an object with version, source and sha256"
    try:
        policy_from_spec(spec)  # parses, sha256 and version match (apply checks it goes forward)
    except PolicyError as e:
        return str(e)
    return None


def _fill_error(result: Any, outcome: dict[str, Any], server: ScServer) -> bool:
    if outcome.get("ok"):
        result.ok = True
        return True
    code = outcome.get("code", "internal")
    wire_code = code if code in ("noLeader", "timeout") else camel(code)
    set_error(result, wire_code, outcome.get("message", ""), server.leader_admin(),
              bool(outcome.get("retriable", False)))
    return False


class WatchHandleImpl(schema.WatchHandle.Server):
    def __init__(self, task: asyncio.Task[Any]) -> None:
        self._task = task

    async def cancel(self, _context: Any, **kwargs: Any) -> None:
        self._task.cancel()


class AdminImpl(schema.ScAdmin.Server):
    """Thin adapter: decode, call the server, encode. Errors become Result values."""

    def __init__(self, server: ScServer, peer: Peer) -> None:
        self.s = server
        self.peer = peer

    def _allowed(self, result: Any, action: str, resource: str) -> bool:
        try:
            self.s.authorize(self.peer, action, resource)
            return True
        except Denied as e:
            set_error(result, "denied", str(e))
            return False

    def _changed(self, action: str, resource: str) -> None:
        self.s.authz.record(self.peer, action, resource, "allow", None, "metadata change")

    def _may_see(self, kind: str, name: str) -> bool:
        """describe, or anything that implies it (produce, consume on a topic; use a module)."""
        authz = self.s.authz
        if kind in ("topic", "partition"):
            topic = name if kind == "topic" else name.rsplit("-", 1)[0]
            return any(authz.allowed(self.peer, a, f"topic:{topic}") for a in ("describe", "produce", "consume"))
        if kind == "smartmodule":
            return any(authz.allowed(self.peer, a, f"smartmodule:{name.split('@')[0]}") for a in ("describe", "use"))
        if kind == "policy":
            return self.peer.node or authz.allowed(self.peer, "admin", "cluster")
        return True  # SPUs: their addresses are what every client needs

    async def createTopic(self, name, partitions, replicationFactor, config, _context, **kwargs):  # noqa: N802, ANN001
        r = _context.results
        if not self._allowed(r.result, "create", f"topic:{name}"):
            return
        state = self.s.sm.state
        try:
            assignment = place_replicas(state, int(partitions), int(replicationFactor)) if partitions <= 1000 else []
        except ValueError as e:
            set_error(r.result, "replicationFactorTooHigh", f"topic {name}: {e}")
            return
        cmd = {"op": "create_topic", "name": name, "partitions": int(partitions),
               "replication_factor": int(replicationFactor), "config": dict(config_map(config)),
               "assignment": assignment, "ts": now_ms()}
        if _fill_error(r.result, await self.s.propose(cmd), self.s):
            self._changed("create", f"topic:{name}")
            topic = self.s.sm.state.get(TOPIC, name)
            if topic is not None:
                set_object(r.topic, topic)

    async def deleteTopic(self, name, _context, **kwargs):  # noqa: N802, ANN001
        r = _context.results
        if not self._allowed(r.result, "delete", f"topic:{name}"):
            return
        if _fill_error(r.result, await self.s.propose({"op": "delete_topic", "name": name, "ts": now_ms()}), self.s):
            self._changed("delete", f"topic:{name}")

    async def listObjects(self, kind, stale, _context, **kwargs):  # noqa: N802, ANN001
        r = _context.results
        if kind not in KINDS:
            set_error(r.result, "invalidArgument", f"unknown kind {kind!r}; known: {', '.join(KINDS)}")
            return
        state = await self.s.read_state(stale)
        if isinstance(state, dict):
            _fill_error(r.result, state, self.s)
            return
        objs = sorted((o for o in state.all(kind) if self.peer.node or self._may_see(kind, o.name)),
                      key=lambda o: o.name)
        out = r.init("objects", len(objs))
        for i, o in enumerate(objs):
            set_object(out[i], o)
        r.version = state.version
        r.result.ok = True

    async def getObject(self, kind, name, stale, _context, **kwargs):  # noqa: N802, ANN001
        r = _context.results
        if kind not in KINDS:
            set_error(r.result, "invalidArgument", f"unknown kind {kind!r}; known: {', '.join(KINDS)}")
            return
        state = await self.s.read_state(stale)
        if isinstance(state, dict):
            _fill_error(r.result, state, self.s)
            return
        obj = state.get(kind, name)
        if obj is not None and not self.peer.node and not self._may_see(kind, name):
            obj = None  # as if it did not exist: its existence is not this identity's to know
        r.found = obj is not None
        if obj is not None:
            set_object(r.object, obj)
        r.result.ok = True

    async def putObject(self, kind, name, specJson, hasExpected, expectedVersion, _context, **kwargs):  # noqa: N802, N803, ANN001
        r = _context.results
        try:
            spec = json.loads(specJson)
        except ValueError as e:
            set_error(r.result, "invalidArgument", f"specJson is not JSON: {e}")
            return
        action, resource = _blob_check(kind, name, "create")
        if not self._allowed(r.result, action, resource):
            return
        if kind == "policy" and name == "active":
            problem = _policy_problem(spec)
            if problem:
                set_error(r.result, "invalidArgument", problem)
                return
        cmd = {"op": "put_object", "kind": kind, "name": name, "spec": spec, "ts": now_ms()}
        if hasExpected:
            cmd["expected_version"] = int(expectedVersion)
        outcome = await self.s.propose(cmd)
        if _fill_error(r.result, outcome, self.s):
            r.version = outcome["value"]["version"]
            self._changed(action, resource if kind != "policy" else f"policy:{name} v{spec.get('version')}")

    async def deleteObject(self, kind, name, hasExpected, expectedVersion, _context, **kwargs):  # noqa: N802, N803, ANN001
        r = _context.results
        action, resource = _blob_check(kind, name, "delete")
        if not self._allowed(r.result, action, resource):
            return
        cmd = {"op": "delete_object", "kind": kind, "name": name, "ts": now_ms()}
        if hasExpected:
            cmd["expected_version"] = int(expectedVersion)
        if _fill_error(r.result, await self.s.propose(cmd), self.s):
            self._changed(action, resource)

    async def registerSpu(self, id, rack, publicAddress, privateAddress, storageId, lost, _context, **kwargs):  # noqa: A002, N802, N803, ANN001, E501
        r = _context.results
        if not self.peer.node and not self._allowed(r.result, "admin", "cluster"):
            return
        if len(lost) > LOST_REPLICAS_MAX:  # checked before a single entry is read
            set_error(r.result, "tooLarge", f"registerSpu: {len(lost)} lost replicas, more than {LOST_REPLICAS_MAX}")
            return
        if len(storageId) > STORAGE_ID_CHARS:
            set_error(r.result, "invalidArgument", f"registerSpu: storageId of {len(storageId)} characters; a storage "
                      f"id is {STORAGE_ID_CHARS} hex digits")
            return
        if any(len(e.partition) > PARTITION_NAME_CHARS_MAX for e in lost):
            set_error(r.result, "invalidArgument", f"registerSpu: a lost partition name is longer than "
                      f"{PARTITION_NAME_CHARS_MAX} characters")
            return
        cmd: dict[str, Any] = {"op": "register_spu", "id": int(id), "rack": rack or None,
                               "public_address": publicAddress, "private_address": privateAddress, "ts": now_ms()}
        if not self.s.config.ignore_storage_id_for_tests:
            if storageId:
                cmd["storage_id"] = str(storageId)
            if len(lost):
                cmd["lost"] = [{"partition": str(e.partition), "reason": str(e.reason)[:REASON_CHARS_MAX]}
                               for e in lost]
        before = self.s.sm.state
        outcome = await self.s.propose(cmd)
        if outcome.get("ok"):
            self.s.heartbeat(int(id))
            r.version = int(outcome["value"]["version"])
            log.info("SPU %s registered (storage %s)", id, str(storageId)[:8] or "unknown")
            for name, why in _newly_lost(before, self.s.sm.state, int(id))[:LOST_LOGGED_MAX]:
                log.warning("%s: the replica on SPU %s lost data and left the in-sync set: %s", name, id, why)
        _fill_error(r.result, outcome, self.s)

    async def reportReplicaLoss(self, partition, spuId, reason, epoch, keepLastInSync, _context, **kwargs):  # noqa: N802, N803, ANN001, E501
        r = _context.results
        if not self._allowed(r.result, NODE_ONLY, "reportReplicaLoss"):
            return
        if len(partition) > PARTITION_NAME_CHARS_MAX:
            set_error(r.result, "invalidArgument", f"reportReplicaLoss: partition name of {len(partition)} characters, "
                      f"more than {PARTITION_NAME_CHARS_MAX}")
            return
        reason = str(reason)[:REASON_CHARS_MAX]
        cmd: dict[str, Any] = {"op": "fence_replica", "partition": str(partition), "id": int(spuId),
                               "reason": reason, "ts": now_ms()}
        if int(epoch) >= 0:
            cmd["epoch"] = int(epoch)
        if keepLastInSync:
            cmd["keep_last"] = True
        outcome = await self.s.propose(cmd)
        if outcome.get("ok"):
            log.warning("%s: the replica on SPU %s is fenced: %s", partition, spuId, reason)
            self.s.authz.record(self.peer, "admin", f"partition:{partition}", "allow", None,
                                f"replica on SPU {spuId} fenced: {reason}")
        _fill_error(r.result, outcome, self.s)

    async def electLeader(self, partition, leader, unclean, _context, **kwargs):  # noqa: N802, ANN001
        r = _context.results
        if not self._allowed(r.result, "admin", "cluster"):
            return
        state = self.s.sm.state
        p = state.get("partition", str(partition))
        if p is None:
            set_error(r.result, "notFound", f"partition {partition} does not exist")
            return
        choice = choose_leader(state, p, None if int(leader) < 0 else int(leader), bool(unclean))
        if isinstance(choice, str):
            set_error(r.result, "invalidArgument", choice)
            return
        cmd: dict[str, Any] = {"op": "elect_leader", "partition": p.name, "leader": choice,
                               "epoch": p.status["epoch"], "ts": now_ms()}
        if unclean:
            cmd["unclean"] = True
        outcome = await self.s.propose(cmd)
        if _fill_error(r.result, outcome, self.s):
            r.leader = choice
            r.epoch = int(outcome["value"]["epoch"])
            what = "unclean election" if unclean else "election"
            log.warning("%s: %s of SPU %d at epoch %d by %s", p.name, what, choice, r.epoch, self.peer.identity)
            self.s.authz.record(self.peer, "admin", f"partition:{p.name}", "allow", None,
                                f"{what}: SPU {choice} leads at epoch {r.epoch}")

    async def unregisterSpu(self, id, _context, **kwargs):  # noqa: A002, N802, ANN001
        r = _context.results
        if not self._allowed(r.result, "admin", "cluster"):
            return
        if _fill_error(r.result, await self.s.propose({"op": "unregister_spu", "id": int(id), "ts": now_ms()}), self.s):
            self._changed("admin", f"spu:{id}")

    async def heartbeat(self, spuId, _context, **kwargs):  # noqa: N803, ANN001
        r = _context.results
        if not self._allowed(r.result, NODE_ONLY, "heartbeat"):
            return
        if not self.s.raft.is_leader():
            set_error(r.result, "notLeader", "heartbeats go to the SC leader", self.s.leader_admin(), True)
            return
        self.s.heartbeat(int(spuId))
        r.result.ok = True

    async def updateIsr(self, partition, isr, epoch, leader, basedOn, _context, **kwargs):  # noqa: N802, N803, ANN001
        if not self._allowed(_context.results.result, NODE_ONLY, "updateIsr"):
            return
        cmd = {"op": "update_isr", "partition": partition, "isr": [int(x) for x in isr], "epoch": int(epoch),
               "leader": int(leader), "ts": now_ms()}
        if len(basedOn):
            cmd["based_on"] = [int(x) for x in basedOn]
        _fill_error(_context.results.result, await self.s.propose(cmd), self.s)

    async def allocateProducerIds(self, count, _context, **kwargs):  # noqa: N802, ANN001
        r = _context.results
        outcome = await self.s.propose({"op": "allocate_producer_ids", "count": int(count), "ts": now_ms()})
        if _fill_error(r.result, outcome, self.s):
            r.firstId = outcome["value"]["first"]
            r.count = outcome["value"]["count"]

    async def clusterStatus(self, _context, **kwargs):  # noqa: N802, ANN001
        r = _context.results
        if not self.peer.node and not self._allowed(r.result, "describe", "cluster"):
            return
        r.statusJson = json.dumps(self.s.status())
        r.result.ok = True

    async def watch(self, fromVersion, watcher, _context, **kwargs):  # noqa: N803, ANN001
        r = _context.results
        if not self._allowed(r.result, NODE_ONLY, "watch"):
            return
        if self.s._watchers >= self.s.config.watchers_max:
            set_error(r.result, "tooLarge", f"this SC already serves {self.s.config.watchers_max} watchers", None, True)
            return
        task = asyncio.ensure_future(self._watch_loop(int(fromVersion), watcher))
        r.handle = WatchHandleImpl(task)
        r.result.ok = True

    async def _watch_loop(self, version: int, watcher: Any) -> None:
        sm = self.s.sm
        self.s._watchers += 1
        try:
            while True:
                changed = sm.changed
                events = sm.changelog.since(version)
                if events is None:
                    state = sm.state
                    objs = [o for k in KINDS for o in state.all(k)]
                    await self._push(watcher, True, state.version, [(o.version, o.kind, o.name, o) for o in objs])
                    version = state.version
                    continue
                if events:
                    for i in range(0, len(events), WATCH_EVENTS_PER_PUSH_MAX):
                        chunk = events[i : i + WATCH_EVENTS_PER_PUSH_MAX]
                        await self._push(watcher, False, chunk[-1].version,
                                         [(e.version, e.kind, e.name, e.obj) for e in chunk])
                    version = events[-1].version
                    continue
                await changed.wait()
        except (asyncio.CancelledError, capnp.KjException):
            pass  # cancelled, or the watcher went away
        finally:
            self.s._watchers -= 1

    @staticmethod
    async def _push(watcher: Any, full: bool, version: int, items: list[tuple[int, str, str, Any]]) -> None:
        msg = watcher.push_request()
        msg.fullSync = full
        msg.version = version
        evs = msg.init("events", len(items))
        for i, (v, kind, name, obj) in enumerate(items):
            evs[i].version = v
            evs[i].kind = kind
            evs[i].name = name
            evs[i].deleted = obj is None
            if obj is not None:
                set_object(evs[i].object, obj)
        await msg.send()
