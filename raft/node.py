"""A Raft node on pysyncobj, made durable and wired to a state machine given as functions.

What pysyncobj lacks and this module adds (../shared/DESIGN.md §3):

* **Durability.** The journal is :class:`DurableJournal`. Before any message leaves this node
  (an append-entries acknowledgement, a vote, a forwarded command) and at the end of each
  tick in which the leader appended its own entries, the journal is fsynced. So a follower
  acknowledges only what is on its disk, the leader counts its own copy only once it is on
  its disk, and term and vote are stored before a vote is answered (``setCurrentTerm``
  stores synchronously).
* **Snapshots** in a format of ours, fsynced before the journal is trimmed: the state
  machine's bytes (no pickle), the two last applied entries and the cluster members, with a
  CRC, written to a temporary file, fsynced, renamed and the directory fsynced.
* **A cluster secret is required**: pysyncobj unpickles what arrives on its port, and with a
  password it encrypts and authenticates every message (Fernet, from ``cryptography``).
* Commands are plain ``bytes``; the state machine is ``apply(bytes) -> result``,
  ``snapshot() -> bytes`` and ``restore(bytes)``, called on pysyncobj's thread.
* **The listener binds the address it is given, at once.** pysyncobj binds ``0.0.0.0`` when
  no bind address is set, and binds on its own thread, retrying every second without end: a
  taken port left a node running that never listened. :class:`RaftNode` binds the bind
  address (else the node's own address) before it touches the disk, raises
  :class:`RaftListenError` when it cannot, and hands that socket to the tunnel.
* **pysyncobj never faces the network** (issue 17): it trusts a frame's announced length
  before authenticating it. It listens on an AF_UNIX socket in a private (0700) directory,
  accepts only connections from this very process (``SO_PEERCRED``), and reaches a peer
  through a socketpair whose other end the tunnel (raft/tunnel.py) carries over mutual TLS
  and the secret's challenge-response, with a frame-size cap. Node identities stay the
  public host:port strings. pysyncobj's own encryption with the secret stays, as a second
  layer.

pysyncobj forwards a command proposed on a follower to the leader by itself; this module
answers who the leader is, proposes with a deadline, reads linearizably through the log, and
changes membership one node at a time.
"""

from __future__ import annotations

import _socket
import functools
import json
import logging
import os
import socket
import struct
import threading
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import crc32c as _crc32c
import pysyncobj.syncobj as _pso
from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, replicated
from pysyncobj.node import TCPNode
from pysyncobj.transport import TCPTransport

from .journal import DurableJournal, _replace_file, fsync_directory
from .limits import APPEND_BATCH_BYTES, COMMAND_BYTES_MAX_DEFAULT, frame_bytes_max
# RaftListenError is part of this module's interface (core/sc/main.py catches it).
from .sockets import (LOCAL_DIR_PARENT, RaftListenError, _listen, _listen_local, _ListeningServer, _remove_local,
                      _TunnelConnection)
from .tunnel import RaftTunnel, TunnelTls

# Importing pysyncobj (its tcp_connection imports win_inet_pton) replaces socket.inet_ntop,
# on every platform, with a Windows-only function that raises: put the real one back.
if os.name != "nt":
    socket.inet_ntop = _socket.inet_ntop

log = logging.getLogger("kolk.raft")

SNAPSHOT_MAGIC = b"KOLKSNAP"
_SNAP_HEAD = struct.Struct("<8sIII")  # magic, crc of the rest, header length, state length


class StateMachine(Protocol):
    def apply(self, command: bytes) -> Any: ...

    def snapshot(self) -> bytes: ...

    def restore(self, data: bytes) -> None: ...


class RaftError(Exception):
    """A proposal failed; ``reason`` says why and whether a retry can help."""

    def __init__(self, reason: str, retriable: bool, leader: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retriable = retriable
        self.leader = leader


_FAIL_TEXT = {
    FAIL_REASON.QUEUE_FULL: ("the command queue is full", True),
    FAIL_REASON.MISSING_LEADER: ("no leader is known yet", True),
    FAIL_REASON.DISCARDED: ("the command was discarded by a leader change", True),
    FAIL_REASON.NOT_LEADER: ("this node is not the leader", True),
    FAIL_REASON.LEADER_CHANGED: ("the leader changed before the command committed; it may or may not "
                                 "have been applied", True),
    FAIL_REASON.REQUEST_DENIED: ("the request was denied", False),
}


@dataclass(frozen=True)
class RaftConfig:
    self_address: str  # host:port this node is known by (and binds, without bind_address)
    peers: tuple[str, ...]  # the other nodes' host:port
    data_dir: str
    secret: str
    bind_address: str | None = None  # host:port to bind when others reach this node another way
    election_timeout_min_s: float = 0.3
    election_timeout_max_s: float = 0.9
    snapshot_min_entries: int = 5000  # compact the journal past this many entries
    commands_queue_max: int = 10_000
    on_sync: Callable[[str, int], None] | None = None  # test hook: (path, durable size)
    tls: TunnelTls | None = None  # mutual TLS between nodes (else the secret's challenge alone)
    command_bytes_max: int = COMMAND_BYTES_MAX_DEFAULT  # larger proposals are refused; sets the frame cap

    def __post_init__(self) -> None:
        if not self.secret or len(self.secret) < 16:
            raise ValueError("a Raft cluster secret of at least 16 characters is required: without one, "
                             "anyone who reaches the Raft port can run code on the node")
        if not 0 < self.election_timeout_min_s < self.election_timeout_max_s:
            raise ValueError("election_timeout_min_s must be positive and below election_timeout_max_s")
        if self.self_address in self.peers:
            raise ValueError(f"peers must not include this node ({self.self_address})")
        if self.command_bytes_max < 1:
            raise ValueError("command_bytes_max must be at least 1")


_journals_lock = threading.Lock()
_pending_journals: dict[str, DurableJournal] = {}
_original_create_journal = _pso.createJournal


def _create_journal(path: str | None):  # noqa: ANN202 - pysyncobj's factory
    journal = _pending_journals.pop(path, None) if path else None
    return journal if journal is not None else _original_create_journal(path)


_pso.createJournal = _create_journal

@dataclass(frozen=True)
class RaftProgress:
    """Where this node's Raft stands (RaftNode.progress): what metrics and health read."""

    term: int
    commit_index: int
    last_applied: int
    is_leader: bool
    leader: str | None  # the leader's Raft address, None when none is known
    has_quorum: bool  # connected to a majority, as this node sees it
    ready: bool  # has applied what the leader had committed when this node joined


class _Replica(SyncObj):
    def __init__(self, node: "RaftNode", conf: RaftConfig, journal: DurableJournal, listener: socket.socket,
                 tunnel: RaftTunnel) -> None:
        self._node = node
        self._journal = journal
        snap_path = os.path.join(conf.data_dir, "snapshot")
        so_conf = SyncObjConf(
            password=conf.secret,
            journalFile=journal.path,
            fullDumpFile=snap_path,
            serializer=self._write_snapshot,
            deserializer=self._read_snapshot,
            dynamicMembershipChange=True,
            appendEntriesUseBatch=False,
            # The sizes the frame cap is derived from (raft/limits.py).
            appendEntriesBatchSizeBytes=APPEND_BATCH_BYTES,
            logCompactionBatchSize=APPEND_BATCH_BYTES,
            raftMinTimeout=conf.election_timeout_min_s,
            raftMaxTimeout=conf.election_timeout_max_s,
            appendEntriesPeriod=min(0.05, conf.election_timeout_min_s / 4),  # pysyncobj wants < a third
            # The tick also waits this long for network events; a single node has none, so
            # its commits would wait a whole period (measured: 52 ms per command at 0.05 s).
            autoTickPeriod=0.01,
            connectionRetryTime=0.5,
            connectionTimeout=2.0,
            # A peer named by DNS (Kubernetes: kolk-sc-1.kolk-sc.<ns>.svc...) may not resolve
            # until its pod exists; pysyncobj would then not dial it for 30 s (its default).
            # The tunnel resolves the name itself on every connection (raft/sockets.py), so
            # pysyncobj's lookup only decides whether to try: try again soon.
            dnsFailCacheTime=1.0,
            leaderFallbackTimeout=max(2.0, conf.election_timeout_max_s * 2),
            logCompactionMinEntries=conf.snapshot_min_entries,
            logCompactionMinTime=3600,
            commandsQueueSize=conf.commands_queue_max,
            # Without a leader a command fails at once (MISSING_LEADER) instead of waiting
            # without a deadline; callers retry.
            commandsWaitLeader=False,
        )
        class DurableTransport(TCPTransport):
            def send(self, node, message):  # noqa: ANN001, ANN202
                # Nothing leaves this node before the journal state it reflects is on disk.
                journal.sync()
                return super().send(node, message)

            def _createServer(self):  # noqa: ANN202, N802 - pysyncobj's hook
                # The private socket RaftNode bound, instead of a TcpServer that binds later
                # (and binds 0.0.0.0 when no bind address is configured).
                self._server = _ListeningServer(listener, self._syncObj._poller, self._onNewIncomingConnection,
                                                self._syncObj.conf)

            def addNode(self, node):  # noqa: ANN001, ANN202, N802 - TCPTransport.addNode, tunnelled
                super().addNode(node)
                if node not in self._connections:
                    return
                c = self._syncObj.conf
                conn = _TunnelConnection(tunnel, node, poller=self._syncObj._poller, timeout=c.connectionTimeout,
                                         sendBufferSize=c.sendBufferSize, recvBufferSize=c.recvBufferSize)
                conn.encryptor = self._syncObj.encryptor
                conn.setOnConnectedCallback(functools.partial(self._onOutgoingConnected, conn))
                conn.setOnMessageReceivedCallback(functools.partial(self._onMessageReceived, node))
                conn.setOnDisconnectedCallback(functools.partial(self._onDisconnected, conn))
                self._connections[node] = conn

        with _journals_lock:
            _pending_journals[journal.path] = journal
            try:
                super().__init__(conf.self_address, list(conf.peers), so_conf, transportClass=DurableTransport)
            finally:
                _pending_journals.pop(journal.path, None)

    def _onTick(self, timeToWait: float = 0.0) -> None:  # noqa: N802 - pysyncobj's tick
        if not self._node._campaigning:
            # Not a voting member yet (joining) or no longer one (removed): this node answers
            # votes and appends but never starts an election (RaftNode.set_campaigning).
            self._SyncObj__raftElectionDeadline = _pso.monotonicTime() + self.conf.raftMaxTimeout
        super()._onTick(timeToWait)

    def _checkCommandsToApply(self) -> None:  # noqa: N802 - pysyncobj's hook
        super()._checkCommandsToApply()
        # The leader appended its own new entries in this call; they must be on disk before
        # the next tick counts this node towards a majority.
        self._journal.sync()

    @replicated
    def _apply(self, command: bytes) -> Any:
        return self._node._state_machine.apply(command)

    # Snapshot files: header JSON + state bytes, CRC'd, written atomically and durably.
    def _write_snapshot(self, path: str, raft_data) -> None:  # noqa: ANN001
        last, prelast, cluster = raft_data
        header = json.dumps({
            "last": [last[0].hex(), last[1], last[2]],
            "prelast": [prelast[0].hex(), prelast[1], prelast[2]],
            "cluster": sorted(n.id if hasattr(n, "id") else str(n) for n in cluster),
        }).encode()
        state = self._node._state_machine.snapshot()
        body = header + state
        blob = _SNAP_HEAD.pack(SNAPSHOT_MAGIC, _crc32c.crc32c(body), len(header), len(state)) + body
        # pysyncobj hands a temporary name and renames it itself (without fsync); write it
        # durably, then make the final name durable too.
        final = path[: -len(".tmp")] if path.endswith(".tmp") else path
        _replace_file(final, blob)
        _replace_file(path, blob)
        if self._node.config.on_sync is not None:
            self._node.config.on_sync(final, len(blob))

    def _read_snapshot(self, path: str):  # noqa: ANN202
        # A snapshot received from the leader was written and renamed by pysyncobj without
        # fsync, and right after this pysyncobj clears the journal (durably): make the
        # snapshot durable first.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_directory(os.path.dirname(path) or ".")
        header, state = read_snapshot_file(path)
        if self._node.config.on_sync is not None:
            self._node.config.on_sync(path, os.path.getsize(path))
        self._node._state_machine.restore(state)

        def entry(e):  # noqa: ANN001, ANN202
            return (bytes.fromhex(e[0]), e[1], e[2])

        return entry(header["last"]), entry(header["prelast"]), {TCPNode(a) for a in header["cluster"]}


def read_snapshot_file(path: str) -> tuple[dict[str, Any], bytes]:
    """The header and state bytes of a snapshot file; raises RuntimeError if it is damaged."""
    with open(path, "rb") as f:
        blob = f.read()
    if len(blob) < _SNAP_HEAD.size:
        raise RuntimeError(f"snapshot {path} is damaged: {len(blob)} bytes, shorter than its header")
    magic, crc, hlen, slen = _SNAP_HEAD.unpack_from(blob)
    body = blob[_SNAP_HEAD.size :]
    if magic != SNAPSHOT_MAGIC or len(body) != hlen + slen or _crc32c.crc32c(body) != crc:
        raise RuntimeError(f"snapshot {path} is damaged (magic, length or CRC do not match)")
    return json.loads(body[:hlen]), body[hlen:]


class RaftNode:
    """One member of a Raft group. Start it, propose commands, read, change membership."""

    def __init__(self, config: RaftConfig, state_machine: StateMachine) -> None:
        self.config = config
        self._state_machine = state_machine
        # Bind first, here and not in pysyncobj: its TcpServer binds lazily on its own thread
        # and retries a failed bind every second forever, so a taken port went unnoticed. A
        # check (bind, close, let pysyncobj bind again) would leave a window in which another
        # process takes the port; handing pysyncobj this very socket leaves none. And before
        # the data directory is created, so a node that cannot listen leaves nothing behind.
        listener = _listen(config.bind_address or config.self_address)
        try:
            local, local_path = _listen_local()
        except OSError as e:
            listener.close()
            raise RuntimeError(f"cannot make pysyncobj's private socket under {LOCAL_DIR_PARENT}: {e}") from None
        self._local_path = local_path
        self._campaigning = True  # False: never start an election (set_campaigning)
        self._tunnel = RaftTunnel(listener, local_path, config.secret, config.tls,
                                  frame_bytes_max(config.command_bytes_max))
        try:
            self._tunnel.start()
            os.makedirs(config.data_dir, exist_ok=True)
            self.journal = DurableJournal(os.path.join(config.data_dir, "journal.log"), on_sync=config.on_sync)
            snapshot = os.path.join(config.data_dir, "snapshot")
            if len(self.journal) and self.journal[0][1] > 1:
                # The journal was compacted: its start lives only in the snapshot. pysyncobj would
                # swallow a load error and run with an empty state, so check here and refuse.
                if not os.path.exists(snapshot):
                    self.journal._destroy()
                    raise RuntimeError(f"{config.data_dir}: the journal starts at entry {self.journal[0][1]} but "
                                       "the snapshot is missing; restore it, or wipe this node's data and re-add it")
                try:
                    read_snapshot_file(snapshot)
                except RuntimeError:
                    self.journal._destroy()
                    raise
            self._replica = _Replica(self, config, self.journal, local, self._tunnel)
        except BaseException:
            self._tunnel.stop()
            local.close()
            _remove_local(local_path)
            raise

    @property
    def listen_address(self) -> str:
        """The address the Raft listener is bound to (host:port)."""
        return self.config.bind_address or self.config.self_address

    @property
    def tunnel(self) -> RaftTunnel:
        """The tunnel carrying this node's Raft traffic (its counters are for tests and status)."""
        return self._tunnel

    # -- who leads

    @property
    def address(self) -> str:
        return self.config.self_address

    def leader(self) -> str | None:
        node = self._replica._getLeader()
        return None if node is None else str(node.id if hasattr(node, "id") else node)

    def is_leader(self) -> bool:
        return self._replica._isLeader()

    def is_ready(self) -> bool:
        return self._replica.isReady()

    def progress(self) -> RaftProgress:
        """Term, indexes, leadership and readiness: plain attribute reads, safe from any thread
        (the SC's metrics collector runs in a worker thread while pysyncobj's thread writes)."""
        r = self._replica
        return RaftProgress(r.raftCurrentTerm, r.raftCommitIndex, r.raftLastApplied, r._isLeader(), self.leader(),
                            r.hasQuorum, r.isReady())

    def status(self) -> dict[str, Any]:
        s = self._replica.getStatus()
        return {
            "self": str(s["self"]),
            "leader": self.leader(),
            "state": {0: "follower", 1: "candidate", 2: "leader"}.get(s["state"], str(s["state"])),
            "term": s["raft_term"],
            "commit_index": s["commit_idx"],
            "last_applied": s["last_applied"],
            "journal_entries": s["log_len"],
            "has_quorum": s["has_quorum"],
            "peers": {k[len("partner_node_status_server_"):]: v == 2 for k, v in s.items()
                      if k.startswith("partner_node_status_server_")},
            "journal_syncs": self.journal.syncs,
        }

    # -- proposing

    def propose(self, command: bytes, callback: Callable[[Any, RaftError | None], None]) -> None:
        """Replicate ``command``; ``callback(result, error)`` runs on pysyncobj's thread once it
        is applied on this node (or failed). A follower forwards to the leader."""
        def done(result, err):  # noqa: ANN001, ANN202
            if err == FAIL_REASON.SUCCESS:
                callback(result, None)
            else:
                text, retriable = _FAIL_TEXT.get(err, (f"failed with pysyncobj reason {err}", False))
                callback(None, RaftError(text, retriable, self.leader()))

        if len(command) > self.config.command_bytes_max:
            # Never into the log: a committed entry too large for the frame cap would stop
            # replication for good.
            callback(None, RaftError(f"the command is {len(command)} bytes, over the limit of "
                                     f"{self.config.command_bytes_max}", False))
            return
        self._replica._apply(bytes(command), callback=done)

    def propose_sync(self, command: bytes, timeout_s: float = 5.0) -> Any:
        """Blocking :meth:`propose` (for tools and tests; servers use the callback form)."""
        box: dict[str, Any] = {}
        event = threading.Event()

        def cb(result, err):  # noqa: ANN001, ANN202
            box["result"], box["error"] = result, err
            event.set()

        self.propose(command, cb)
        if not event.wait(timeout_s):
            raise RaftError(f"no answer within {timeout_s} s; the command may or may not be applied", True,
                            self.leader())
        if box["error"] is not None:
            raise box["error"]
        return box["result"]

    # -- membership

    def add_node(self, address: str, callback: Callable[[RaftError | None], None]) -> None:
        """Add one node; wait for the callback before adding the next."""
        def done(result, err):  # noqa: ANN001, ANN202
            callback(None if err == FAIL_REASON.SUCCESS else RaftError(f"adding {address} failed ({err})", True))
        self._replica.addNodeToCluster(address, callback=done)

    def remove_node(self, address: str, callback: Callable[[RaftError | None], None]) -> None:
        def done(result, err):  # noqa: ANN001, ANN202
            callback(None if err == FAIL_REASON.SUCCESS else RaftError(f"removing {address} failed ({err})", True))
        self._replica.removeNodeFromCluster(address, callback=done)

    def set_campaigning(self, on: bool) -> None:
        """Whether this node may start elections. Off for an SC that is joining (not yet a
        member: its votes would only disturb the cluster) or was removed (core/sc/sc_membership.py)."""
        self._campaigning = on

    def transfer_leadership(self, callback: Callable[[RaftError | None], None]) -> None:
        """Hand leadership to the most caught-up connected follower (Raft's TimeoutNow)."""
        def done(result, err):  # noqa: ANN001, ANN202
            callback(None if err == FAIL_REASON.SUCCESS else RaftError(f"no follower can take over ({err})", True))
        self._replica.transferLeadership(None, callback=done)

    def match_index(self, address: str) -> int:
        """On the leader: the last log index known replicated on ``address`` (0: none or unknown)."""
        for node, index in list(self._replica._SyncObj__raftMatchIndex.items()):
            if str(node.id if hasattr(node, "id") else node) == address:
                return int(index)
        return 0

    def force_snapshot(self) -> None:
        """Compact the journal at the next tick (tests and operators)."""
        self._replica.forceLogCompaction()

    # -- stopping

    def stop(self) -> None:
        self._replica.destroy_synchronous()
        self._tunnel.stop()
        _remove_local(self._local_path)
        self.journal._destroy()
