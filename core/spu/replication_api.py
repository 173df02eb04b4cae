"""The SPU's calls for other nodes and operators: replication (``replicaFetch``,
``epochEndOffset``, docs/replication.md), ``partitionStatus`` for ``kolk partition list``,
``identify`` for the private-address check (core/spu/private_address.py), ``nodeDiagnostics``
for ``kolk cluster diagnostics`` (core/observe/node_diagnostics.py); ``challenge`` and
``authenticate``, by which a node proves the cluster secret on a plaintext cluster
(core/node/identity.py), and the check of what a node writes to ``_audit``.

:class:`ReplicationCalls` is a part of the SPU's per-connection handler (core/spu/api.py):
the channel calls ``handler.replicaFetch(req, out)`` with the request's reader and the
response to fill. Lists and texts are bounded before a handler runs (core/protocol/bounds.py).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING, Any

from ..node.audit import forged_audit_records
from ..node.authz import AUDIT_TOPIC, NODE_ONLY, Denied
from ..node.identity import NodeAuthCalls
from ..observe.node_diagnostics import answer_node_diagnostics
from ..protocol.wire import set_error
from ..security.tls import Peer
from ..segments.errors import StorageError
from .errors import storage_error
from .replica_state import FollowerCall, FollowerFetched, Refuse

if TYPE_CHECKING:
    from .replica import Replica
    from .server import SpuServer

REPLICA_FETCH_WAIT_MS_MAX = 5_000  # a follower's fetch is held at most this long when there is nothing new


def now_ms() -> int:
    return time.monotonic_ns() // 1_000_000


class ReplicationCalls(NodeAuthCalls):
    """The node-to-node calls of one connection (mixed into the SPU's handler)."""

    s: "SpuServer"
    peer: Peer

    def _node_only(self, result: Any, call: str) -> bool:
        """With TLS on, only a node certificate may make ``call``; else fill ``result``."""
        try:
            self.s.authz.check(self.peer, NODE_ONLY, call)
            return True
        except Denied as e:
            set_error(result, "denied", str(e))
            return False

    def _replica_call(self, result: Any, name: str, replica_id: int, epoch: int) -> "Replica | None":
        """The replica a follower's call is about, when this SPU leads it at ``epoch`` and the
        caller is one of its followers; else fill ``result`` and return None."""
        s = self.s
        replica = s.led_replica(name, result)
        if replica is None:
            return None
        # The replica's state checks the caller and the epoch; a follower at a newer epoch
        # than ours means we are a deposed leader: it fences itself.
        for effect in s.step(replica, FollowerCall(replica_id, epoch)):
            if isinstance(effect, Refuse):
                set_error(result, effect.code, effect.message, None, True)
                return None
        return replica

    async def replicaFetch(self, req: Any, out: Any) -> None:  # noqa: N802 - the wire name
        """A follower pulls from its log end offset, which also reports how far it has come
        (everything below it is fsynced there); held while there is nothing new."""
        if not self._node_only(out.result, "replicaFetch"):
            return
        follower, epoch, offset = int(req.replicaId), int(req.epoch), int(req.offset)
        replica = self._replica_call(out.result, req.partition, follower, epoch)
        if replica is None:
            return
        lg = replica.log
        out.logStartOffset = lg.log_start_offset
        out.logEndOffset = lg.log_end_offset
        if not lg.log_start_offset <= offset <= lg.log_end_offset:
            set_error(out.result, "offsetOutOfRange", f"{replica.name}: follower SPU {follower} fetches from "
                      f"{offset}, outside [{lg.log_start_offset}, {lg.log_end_offset}]")
            return
        self.s.step(replica, FollowerFetched(follower, offset, lg.log_end_offset, lg.durable_offset, now_ms()))
        if offset == lg.log_end_offset and req.maxWaitMs:
            await _wait_for_more(replica, offset, epoch, min(int(req.maxWaitMs), REPLICA_FETCH_WAIT_MS_MAX))
        try:
            res = lg.read(offset, max(1, min(int(req.maxBytes), self.s.config.fetch_bytes_max)))
        except StorageError as e:
            self.s.disk.on_error(replica, e)
            storage_error(out.result, e)
            return
        out.records = res.data
        out.highWatermark = lg.high_watermark
        out.logEndOffset = lg.log_end_offset
        out.result.ok = True

    async def epochEndOffset(self, req: Any, out: Any) -> None:  # noqa: N802 - the wire name
        """Where the leader's log ends the largest epoch <= ``lastEpoch`` (KIP-279)."""
        if not self._node_only(out.result, "epochEndOffset"):
            return
        replica = self._replica_call(out.result, req.partition, int(req.replicaId), int(req.epoch))
        if replica is None:
            return
        end = replica.log.end_offset_for_epoch(int(req.lastEpoch))
        out.leaderEpoch = end.epoch
        out.endOffset = end.end_offset
        out.result.ok = True

    async def partitionStatus(self, req: Any, out: Any) -> None:  # noqa: N802 - the wire name
        """Offsets, bytes on disk and (as leader) follower progress of every asked partition
        this SPU holds a replica of, as JSON."""
        if not self.peer.node:
            try:
                self.s.authz.check(self.peer, "describe", "cluster")  # audited when denied
            except Denied as e:
                set_error(out.result, "denied", str(e))
                return
        now = now_ms()
        led = (self.s.replicas.get(name) for name in req.partitions)
        out.statusJson = json.dumps([rep.status_json(now) for rep in led if rep is not None])
        out.result.ok = True

    async def nodeDiagnostics(self, req: Any, out: Any) -> None:  # noqa: N802 - the wire name
        """What a bug report needs from this SPU (docs/operations.md "Diagnostics"): admin on
        cluster, and audited like the other operator calls."""
        try:
            self.s.authz.check(self.peer, "admin", "cluster")  # audited when denied
        except Denied as e:
            set_error(out.result, "denied", str(e))
            return
        await answer_node_diagnostics(f"spu-{self.s.config.spu_id}", self.s.config, self.s.registry, req.logLines,
                                      out, lambda *a: self.s.authz.record(self.peer, *a))

    async def identify(self, req: Any, out: Any) -> None:
        """Which SPU process answers here (an SPU checks its own private address at start)."""
        if not self._node_only(out.result, "identify"):
            return
        out.spuId = self.s.config.spu_id
        out.instanceId = self.s.instance_id
        out.result.ok = True

    # ---- node identity without TLS (core/node/identity.py)

    def _node_auth(self) -> tuple[str, str | None, bool, Any]:
        return "SPU", self.s.config.secret, self.s.config.tls is not None, self.s.authz

    # ---- the audit log

    def _audit_write_refused(self, result: Any, req: Any) -> bool:
        """A produce to ``_audit`` (only node peers get here, core/node/authz.py) is refused
        unless every record's ``node`` is the writer's own identity and no SmartModule would
        rewrite them; the refusal is audited. True when refused (``result`` filled)."""
        if req.topic != AUDIT_TOPIC:
            return False
        why = ("a SmartModule may not rewrite audit records" if len(req.smartmodules)
               else forged_audit_records(req.records, self.peer.identity))
        if why is None:
            return False
        self.s.authz.record(self.peer, "produce", f"topic:{AUDIT_TOPIC}", "deny", None, why)
        set_error(result, "denied", f"{self.peer.identity} from {self.peer.address or '?'} may not produce "
                                    f"topic:{AUDIT_TOPIC}: {why}")
        return True


async def _wait_for_more(replica: "Replica", offset: int, epoch: int, wait_ms: int) -> None:
    """Hold a caught-up follower's fetch until the log grows past ``offset``, leadership or
    the epoch changes, or ``wait_ms`` passes (then it is answered empty and asks again)."""
    lg = replica.log
    try:
        async with asyncio.timeout(wait_ms / 1000):
            while offset == lg.log_end_offset and replica.is_leader and replica.epoch == epoch:
                await replica.changed.wait()
    except TimeoutError:
        pass
