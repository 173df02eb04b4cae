"""The SC (stream controller): cluster metadata on durable Raft, and the controllers.

One process: the asyncio loop serves the SC's wire surface (core/sc/api.py: the ``ScRequest``
calls of core/protocol/kolk.capnp over Kolk's framed transport) and runs the controllers;
pysyncobj runs Raft on its own thread. Writes become commands proposed through Raft (a
follower's pysyncobj forwards them to the leader); reads are linearizable by default (a
``barrier`` command goes through the log first) and local when ``stale`` is asked for.
Controllers run only on the leader; SPU heartbeats go to the leader and live in its memory,
so only liveness *changes* go through Raft.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

from prometheus_client import CollectorRegistry

from .. import __version__
from ..metadata.apply import encode_command
from .move_control import MoveControl, moving
from ..metadata.controllers import place_replicas, reconcile_leaders, reconcile_liveness, reconcile_replicas
from ..metadata.objects import TOPIC, State
from ..metadata.specs import SpuSpec, SpuStatus
from ..groups.names import OFFSETS_PARTITIONS_DEFAULT
from ..node.audit import AUDIT_TOPIC, AuditLog
from ..node.authz import Authorizer
from ..observe.metrics_server import NodeMetrics
from ..observe.http import parse_listen_address
from ..protocol.node_auth import NodeCredential
from ..protocol.limits import FRAME_BODY_BYTES_MAX
from ..raft.node import RaftConfig, RaftError, RaftNode
from ..raft.tunnel import TunnelTls
from ..security.tls import Peer, TlsConfig
from ..transport import SC, serve
from .change_log import controller_line
from .metrics import INTERNAL_TOPICS, LEADERS, LIVENESS, REPLICAS, TOPIC_DEFAULTS, ScCollector, ScCounters
from .state import MetadataStateMachine
from .sc_membership import ScMembership
from .leaving import heard_from, leaving_spus, note_heartbeat
from .topic_defaults import defaults_command

log = logging.getLogger("kolk.sc")

IGNORE_STORAGE_ID_ENV = "KOLK_TEST_IGNORE_STORAGE_ID"
F = TypeVar("F")


SOLO_ELECTION_TIMEOUT_S = (0.02, 0.05)


CHANGELOG_EVENTS_MAX = 10_000_000  # --changelog-events: changes kept for watchers, at most


@dataclass(frozen=True)
class ScPeer:
    node_id: int
    raft_address: str
    admin_address: str


# Compacted: the newest commit per group and partition survives (docs/consumers.md "Storage").
OFFSETS_TOPIC_CONFIG = {"cleanup_policy": "compact", "segment_bytes": str(16 << 20), "min_compaction_lag_ms": "0"}


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
    # Rebalance (docs/rebalance.md, core/sc/move_control.py): plan and execute moves on the
    # leader by itself (--auto-rebalance); elect preferred leaders this often (0: never).
    auto_rebalance: bool = False
    leader_rebalance_interval_ms: int = 30_000
    controller_interval_ms: int = 200
    request_timeout_s: float = 5.0
    watchers_max: int = 1_000
    election_timeout_min_s: float = 0.3
    election_timeout_max_s: float = 0.9
    snapshot_min_entries: int = 5_000
    on_sync: Any = None  # test hook passed to the Raft journal
    ready_file: str | None = None  # written with the bound admin address once serving
    metrics_address: str | None = None  # --metrics: serve /metrics and /health here (off when None)
    console_address: str | None = None  # --console: serve the web console here (off when None; docs/console.md)
    tls: TlsConfig | None = None  # TLS on the admin listener (mutual: clients need certificates)
    changelog_events: int = 10_000  # changes kept for watchers
    # An operator's decision (kolk sc --insecure-allow-plaintext-policy): store a policy on a
    # cluster without TLS anyway, audited (core/sc/api.py putObject; docs/security.md).
    insecure_allow_plaintext_policy: bool = False
    # --topic-default KEY=VALUE: the cluster's topic config defaults, as the leader sets them
    # (core/sc/topic_defaults.py).
    topic_defaults: dict[str, str] = field(default_factory=dict)
    # _consumer_offsets (docs/consumers.md "Storage"): created when a client first needs a group's
    # coordinator, on this many SPUs or as many as are alive then.
    offsets_partitions: int = OFFSETS_PARTITIONS_DEFAULT
    offsets_replication_factor: int = 3
    # --join: a new SC that waits, without starting elections, until `kolk cluster sc add` lists it
    # (core/sc/sc_membership.py).
    join: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    # TEST ONLY (KOLK_TEST_IGNORE_STORAGE_ID=1): forget SPUs' storage ids and lost replicas, the
    # data-losing behaviour before issue 15; the fault harness must catch it under disk-wipe.
    ignore_storage_id_for_tests: bool = field(
        default_factory=lambda: os.environ.get(IGNORE_STORAGE_ID_ENV) == "1")

    def __post_init__(self) -> None:
        if self.node_id not in self.peers:
            raise ValueError(f"--id {self.node_id} is not among the peers {sorted(self.peers)}")
        if not 1 <= self.changelog_events <= CHANGELOG_EVENTS_MAX:  # a huge one was a traceback (deque's maxlen)
            raise ValueError(f"--changelog-events must be 1-{CHANGELOG_EVENTS_MAX}, got {self.changelog_events}")
        if self.watchers_max < 1:
            raise ValueError("watchers_max must be at least 1")
        if self.heartbeat_timeout_ms <= self.controller_interval_ms:
            raise ValueError("heartbeat_timeout_ms must be longer than controller_interval_ms")
        if not 1 <= self.offsets_partitions <= 1000:
            raise ValueError(f"--offsets-partitions must be 1-1000, got {self.offsets_partitions}")
        if not 1 <= self.offsets_replication_factor <= 7:
            raise ValueError(f"--offsets-replication-factor must be 1-7, got {self.offsets_replication_factor}")
        if self.leader_rebalance_interval_ms < 0:
            raise ValueError(f"--leader-rebalance-interval-ms must be 0 (off) or more, got "
                             f"{self.leader_rebalance_interval_ms}")
        if self.replica_move_after_ms < self.heartbeat_timeout_ms:
            raise ValueError("replica_move_after_ms must be at least heartbeat_timeout_ms")
        if self.metrics_address is not None:
            parse_listen_address(self.metrics_address)  # InvalidAddressError (a ValueError) names it
        if self.console_address is not None:
            try:
                parse_listen_address(self.console_address)
            except ValueError as e:
                raise ValueError(f"--console: {e}") from None

    @property
    def me(self) -> ScPeer:
        return self.peers[self.node_id]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class WatcherSlot:
    """One of the SC's watcher places, given back exactly once however its watch ends."""

    def __init__(self, slots: "WatcherSlots") -> None:
        self._slots: WatcherSlots | None = slots

    def release(self) -> None:
        if self._slots is not None:
            self._slots.used -= 1
            self._slots = None

    def bind(self, feed: F) -> F:
        """Also give the place back when ``feed`` (the watch's coroutine) is freed: the
        transport may drop a feed it never started (its connection closed first), and then
        the feed's own ``finally`` never runs."""
        weakref.finalize(feed, self.release)
        return feed


class WatcherSlots:
    """At most ``limit`` (ScConfig.watchers_max) watches at once on this SC: a place is taken
    when a watch is accepted, before its stream starts, so no burst of requests gets past."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self) -> WatcherSlot | None:
        if self.used >= self.limit:
            return None
        self.used += 1
        return WatcherSlot(self)


def raft_tls(tls: TlsConfig | None) -> TunnelTls | None:
    """Mutual TLS for Raft from the SC's TLS files: the peer must present a *node* certificate
    signed by the cluster CA, both ways (a client certificate never speaks Raft)."""
    if tls is None:
        return None
    # cryptography is loaded only by processes that run TLS (footprint: DESIGN.md §11).
    import ssl

    from ..security.certs import NODE, peer_kind

    def check_peer(der: bytes) -> str | None:
        return None if peer_kind(der) == NODE else "its certificate is a client certificate, not a node certificate"

    server = tls.server_context()
    server.sslobject_class = ssl.SSLObject  # the tunnel logs each refusal itself, once
    return TunnelTls(server, tls.client_context(), check_peer)


# Makes the handler that serves one admin connection: (server, the peer on the other end).
HandlerFactory = Callable[["ScServer", Peer], Any]


class ScServer:
    """The SC's state and duties: Raft, the controllers, SPU liveness, and the admin listener
    whose connections ``make_handler`` serves (core/sc/api.py's ``ScApi``, passed in by
    core/sc/main.py so that this module does not depend on the wire surface)."""

    def __init__(self, config: ScConfig, make_handler: HandlerFactory) -> None:
        self.config = config
        self._make_handler = make_handler
        # What /metrics serves (docs/metrics.md): every SC collector registers here.
        self.registry = CollectorRegistry()
        self.node_metrics = NodeMetrics(self.registry, __version__)
        self.counters = ScCounters(self.registry)
        self.registry.register(ScCollector(self))
        self.loop = asyncio.get_running_loop()
        self.sm = MetadataStateMachine(self.loop, config.changelog_events)
        me = config.me
        alone = len(config.peers) == 1
        raft_cfg = RaftConfig(
            self_address=me.raft_address,
            peers=tuple(p.raft_address for i, p in sorted(config.peers.items()) if i != config.node_id),
            data_dir=os.path.join(config.data_dir, "raft"),
            secret=config.secret,
            bind_address=config.bind_raft,
            # A lone SC cannot split a vote: it need not wait out a randomized timeout to lead
            # (a local cluster serves ~0.5 s sooner). With peers, the configured timeouts hold.
            election_timeout_min_s=SOLO_ELECTION_TIMEOUT_S[0] if alone else config.election_timeout_min_s,
            election_timeout_max_s=SOLO_ELECTION_TIMEOUT_S[1] if alone else config.election_timeout_max_s,
            snapshot_min_entries=config.snapshot_min_entries,
            on_sync=config.on_sync,
            # Raft is mutual TLS whenever the cluster is (docs/security.md, "Raft").
            tls=raft_tls(config.tls),
            # No command is larger than the request that makes it.
            command_bytes_max=FRAME_BODY_BYTES_MAX,
        )
        self.raft = RaftNode(raft_cfg, self.sm)
        self._admin_by_raft = {p.raft_address: p.admin_address for p in config.peers.values()}
        self._id_by_raft = {p.raft_address: p.node_id for p in config.peers.values()}
        self.sc_members = ScMembership(self)  # the replicated SC member list; sc add|remove
        self._heartbeats: dict[int, int] = {}
        # SPUs stopping (a heartbeat with leaving set: controlled shutdown), by the time of their
        # last such heartbeat; a regular heartbeat or a registration ends it (core/sc/leaving.py).
        self._leaving: dict[int, int] = {}
        self._wake_controllers = asyncio.Event()  # set: run a controller round now, not at the next tick
        self._leader_since_ms: int | None = None
        self.moves = MoveControl(self)  # moves, preferred leaders, auto rebalance (core/sc/move_control.py)
        self.watchers = WatcherSlots(config.watchers_max)
        self._server: Any = None
        self._tasks: list[asyncio.Task[Any]] = []
        self.admin_address = me.admin_address
        self.console: Any = None  # the web console (core/sc/console.py), when --console is given
        self.audit: AuditLog | None = None
        self.authz = Authorizer(f"sc-{config.node_id}", config.tls is not None, self._audit)
        self._defaults_refused: str | None = None  # the last refusal of this SC's topic defaults, logged once

    def _audit(self, event: dict[str, Any]) -> None:
        if self.audit is None:
            credential = NodeCredential(f"sc-{self.config.node_id}", self.config.secret) \
                if self.config.tls is None else None  # plaintext: it proves the secret to the SPUs
            self.audit = AuditLog(f"sc-{self.config.node_id}", [self.admin_address], self.config.tls, credential)
        self.audit.record(event)

    def authorize(self, peer: Peer, action: str, resource: str) -> None:
        """The policy check of every admin call; the policy in force is the state's."""
        self.sync_policy()
        self.authz.check(peer, action, resource)

    def sync_policy(self) -> None:
        """Make the authorizer enforce the state's policy (before a check that does not raise)."""
        obj = self.sm.state.get("policy", "active")
        version = int(obj.spec.get("version", 0)) if obj is not None else 0
        if version != self.authz.version or (obj is None) != (self.authz.policy is None):
            self.authz.on_policy(obj.to_json() if obj is not None else None)

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        listen = self.config.bind_admin or self.config.me.admin_address
        host, port = listen.rsplit(":", 1)
        try:
            self._server = await serve(SC, lambda peer: self._make_handler(self, peer), host, int(port),
                                       self.config.tls)
        except OSError as e:
            # `kolk sc` checked this port before Raft started (core/sc/main.py); it was taken
            # since. Stop Raft and exit with the same one line (the process cannot serve).
            await asyncio.get_running_loop().run_in_executor(None, self.raft.stop)
            reason = os.strerror(e.errno).lower() if e.errno else str(e)
            raise SystemExit(f"kolk sc: cannot listen for admin on {listen}: {reason}") from None
        bound = self._server.sockets[0].getsockname()
        self.admin_address = f"{bound[0]}:{bound[1]}"
        self._tasks.append(asyncio.ensure_future(self._controller_loop()))
        self._tasks.append(asyncio.ensure_future(self._audit_topic_loop()))
        try:
            await self.node_metrics.start(self.config.metrics_address, self.config.tls, self.health,
                                     f"sc-{self.config.node_id}")
        except OSError as e:
            await self.stop()
            reason = os.strerror(e.errno).lower() if e.errno else str(e)
            raise SystemExit(f"kolk sc: cannot listen for metrics on {self.config.metrics_address}: {reason}") from None
        if self.config.console_address is not None:
            from .console import start_sc_console  # the console's modules load only when it is on
            try:
                self.console = await start_sc_console(self, self.config.console_address)
            except OSError as e:
                await self.stop()
                reason = os.strerror(e.errno).lower() if e.errno else str(e)
                raise SystemExit(f"kolk sc: cannot listen for console on {self.config.console_address}: "
                                 f"{reason}") from None
        if self.config.ready_file:
            tmp = self.config.ready_file + ".tmp"
            ready = {"admin": self.admin_address, "pid": os.getpid()}
            if self.node_metrics.address is not None:
                ready["metrics"] = self.node_metrics.address
            if self.console is not None:
                ready["console"] = self.console.address
            with open(tmp, "w") as f:
                json.dump(ready, f)
            os.replace(tmp, self.config.ready_file)
        log.info("SC %d serving admin on %s, raft on %s (listening on %s)", self.config.node_id, self.admin_address,
                 self.config.me.raft_address, self.raft.listen_address)

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await self.node_metrics.stop()
        if self.console is not None:
            await self.console.close()
        if self.audit is not None:
            self.audit.stop()
        if self._server is not None:
            self._server.close()
        await asyncio.get_running_loop().run_in_executor(None, self.raft.stop)

    # ---------------------------------------------------------------- raft edge

    def leader_id(self, raft_address: str | None) -> int | None:
        """The id of the SC at ``raft_address`` (the Raft leader's, say); None if unknown."""
        return self._id_by_raft.get(raft_address) if raft_address else None

    def health(self) -> tuple[bool, str]:
        """/health: part of a Raft quorum that has a leader, and caught up with its log."""
        p = self.raft.progress()
        if self.sc_members.removed:
            return False, f"SC {self.config.node_id} was removed from the SC group"
        if p.leader is None:
            return False, f"SC {self.config.node_id} knows no Raft leader (term {p.term})"
        if not p.has_quorum:
            return False, f"SC {self.config.node_id} is not connected to a majority of the SCs"
        if not p.ready:
            return False, (f"SC {self.config.node_id} has not caught up with the Raft log yet (applied "
                           f"{p.last_applied}, committed {p.commit_index})")
        return True, "ok"

    def leader_admin(self) -> str | None:
        raft_leader = self.raft.leader()
        return self._admin_by_raft.get(raft_leader) if raft_leader else None

    async def propose(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Propose through Raft; returns the outcome dict, or an error outcome on failure."""
        fut: asyncio.Future[tuple[Any, RaftError | None]] = self.loop.create_future()

        def done(result: Any, err: RaftError | None) -> None:
            self.loop.call_soon_threadsafe(lambda: fut.done() or fut.set_result((result, err)))

        if (refused := self.sc_members.refusal()) is not None:
            return refused  # removed from the SC group: no longer a member that may write
        leading, started = self.raft.is_leader(), time.monotonic()
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
        if leading:
            self.counters.commit_seconds.observe(time.monotonic() - started)
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
            try:  # a period, or at once when woken (an SPU leaving: core/sc/leaving.py)
                await asyncio.wait_for(self._wake_controllers.wait(), interval)
            except asyncio.TimeoutError:
                pass
            self._wake_controllers.clear()
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
            # What a past term heard of stopping SPUs is stale: one may have restarted since.
            self._leaving.clear()
        state = self.sm.state
        leaving = leaving_spus(self._leaving, now, self.config.heartbeat_timeout_ms)
        for gone in set(self._leaving) - leaving:  # stopped heart-beating: an SPU down like any other
            del self._leaving[gone]
        seen = heard_from(((spu.spec["id"], bool(spu.status.get("alive"))) for spu in state.all("spu")),
                          self._heartbeats, self._leader_since_ms, leaving)
        for cmd in reconcile_liveness(state, seen, now, self.config.heartbeat_timeout_ms):
            self.counters.acted(LIVENESS)
            await self._propose_logged(cmd)
        for cmd in reconcile_leaders(self.sm.state, now_ms(), leaving):
            self.counters.acted(LEADERS)
            await self._propose_logged(cmd)
        for cmd in reconcile_replicas(self.sm.state, now_ms(), self.config.replica_move_after_ms):
            self.counters.acted(REPLICAS)
            outcome = await self.propose(cmd)
            log.info("moving replicas of %s to %s: %s", cmd["partition"], cmd["replicas"],
                     "done" if outcome.get("ok") else outcome.get("message"))
        await self._reconcile_topic_defaults()
        await self.sc_members.reconcile()
        await self.moves.round(now_ms())

    async def _propose_logged(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Propose a controller's command and log the change it made (core/sc/change_log.py)."""
        before = self.sm.state
        outcome = await self.propose(cmd)
        line = controller_line(before, cmd, outcome, self.sm.state.version)
        if line is not None:
            (log.info if outcome.get("ok") else log.warning)("%s", line)
        return outcome

    async def _reconcile_topic_defaults(self) -> None:
        """The leader's --topic-default flags become the cluster's topic defaults."""
        cmd = defaults_command(self.sm.state, self.config.topic_defaults, now_ms())
        if cmd is None:
            return
        self.counters.acted(TOPIC_DEFAULTS)
        outcome = await self.propose(cmd)
        if outcome.get("ok"):
            self._defaults_refused = None
            log.info("topic defaults set from --topic-default: %s", self.config.topic_defaults or "none")
        elif not outcome.get("retriable") and outcome.get("message") != self._defaults_refused:
            self._defaults_refused = outcome.get("message")
            log.error("the topic defaults of this SC's --topic-default flags are refused: %s", outcome.get("message"))

    async def _audit_topic_loop(self) -> None:
        """The leader creates the audit topic once SPUs exist (replicated on up to 3 of them).
        (``_consumer_offsets`` is created when a client first needs a group's coordinator:
        core/sc/api.py ``_create_offsets_topic``.)"""
        while True:
            await asyncio.sleep(1.0)  # a period, not synchronisation
            state = self.sm.state
            if not self.raft.is_leader() or state.get(TOPIC, AUDIT_TOPIC) is not None:
                continue
            if self.config.tls is None and state.get("policy", "active") is None:
                continue  # no audit log on a plaintext cluster without a policy (core/node/authz.py)
            spus = state.spu_ids()
            if not spus:
                continue
            await self._create_internal(AUDIT_TOPIC, 1, min(3, len(spus)), {})

    async def _create_internal(self, name: str, partitions: int, rf: int, config: dict[str, str]) -> None:
        try:
            assignment = place_replicas(self.sm.state, partitions, rf)
        except ValueError:
            return
        self.counters.acted(INTERNAL_TOPICS)
        outcome = await self.propose({"op": "create_topic", "name": name, "partitions": partitions,
                                      "replication_factor": rf, "config": config, "assignment": assignment,
                                      "ts": now_ms()})
        if outcome.get("ok"):
            log.info("created the internal topic %s: %d partition(s), replication factor %d", name, partitions, rf)

    def heartbeat(self, spu_id: int, leaving: bool = False) -> None:
        self._heartbeats[spu_id] = now_ms()
        if note_heartbeat(self._leaving, spu_id, leaving, self._heartbeats[spu_id]):
            log.info("SPU %s is stopping (controlled shutdown): moving its leaderships", spu_id)
        if leaving:
            self._wake_controllers.set()

    # ---------------------------------------------------------------- status

    def status(self) -> dict[str, Any]:
        raft = self.raft.status()
        leader_raft = raft["leader"]
        scs = []
        for m in self.sc_members.members():  # the replicated list (core/sc/sc_membership.py)
            reachable = m.id == self.config.node_id or raft["peers"].get(m.raft, False)
            scs.append({"id": m.id, "raft": m.raft, "admin": m.admin, "leader": m.raft == leader_raft,
                        "reachable": reachable})
        state = self.sm.state
        spus = []
        for o in sorted(state.all("spu"), key=lambda o: o.spec["id"]):
            spec, status = SpuSpec.from_dict(o.spec), SpuStatus.from_dict(o.status)
            spus.append({"id": spec.id, "rack": spec.rack, "public_address": spec.public_address,
                         "alive": status.alive, "draining": spec.draining})
        return {"self": self.config.node_id, "leader": self.leader_admin(), "scs": scs, "spus": spus,
                "member": not self.sc_members.removed and (self.sc_members.listed or not self.config.join),
                "moving": moving(self),  # replica moves in progress (docs/rebalance.md)
                "metadata_version": state.version, "raft": {k: raft[k] for k in
                                                            ("term", "commit_index", "last_applied", "state",
                                                             "journal_entries", "has_quorum")}}
