"""A follower replica pulls its partition from the leader SPU (DESIGN.md §5).

For each (leader, epoch) the SC names, the follower first asks the leader where its own last
leader epoch ended on the leader's log (``epochEndOffset``, KIP-279) and truncates anything it
has beyond that, so a tail written by a deposed leader never survives. Then it loops: fetch
from its log end offset, append the batches as they are (offsets and epochs kept), fsync, and
fetch again; the next fetch tells the leader how far it has come. The follower's high
watermark is the leader's, capped by its own log end.

Every call has a deadline (the transport cancels a call that misses it), and before touching
the log the loop checks it is still the replica's follower task, so a loop cancelled as a
reply arrived cannot append a deposed leader's batches. A leader that stops answering
(killed, cut off by the network) costs at most ``fetch_wait_ms`` plus ``call_timeout_s``
before the connection is dropped and opened again. Errors back off from 50 ms up to 1 s; a
new epoch from the SC restarts the loop.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from ..protocol.node_auth import NodeCredential
from ..protocol.channel import CallRejected, ConnectionLost
from ..protocol.channel_client import ClientConnection
from ..protocol.errors import KolkError
from ..security.tls import TlsConfig
from ..segments.batch import iter_batches
from ..segments.errors import InvalidBatchError, StorageError
from ..segments.leader_epochs import UNDEFINED_EPOCH
from ..segments.producer_state import ProducerStateTable
from ..transport import SPU, connect
from .disk_faults import is_disk_fault
from .move_throttle import move_throttle
from .replica_store import restore_producers
from .replica_state import (Diverged, LeaderHighWatermark, LeaderStartsPast, LogCut, RefuseTruncation, ResetLog,
                            Truncate)

if TYPE_CHECKING:
    from .replica import Replica
    from .server import SpuServer

log = logging.getLogger("kolk.follower")

BACKOFF_MIN_S = 0.05
BACKOFF_MAX_S = 1.0
CONNECT_TIMEOUT_S = 3.0
EPOCH_ROUNDS_MAX = 1000  # epochEndOffset rounds to find where two logs diverge


class FetchFailed(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class TruncationRefused(Exception):
    """The leader's log ends below this follower's high watermark: following it would cut
    acknowledged records. The leader lost data; the follower refuses and reports it."""


class PeerPool:
    """One connection per leader SPU, shared by every partition it leads here."""

    def __init__(self, tls: TlsConfig | None = None, credential: NodeCredential | None = None) -> None:
        self.tls = tls
        self.credential = credential  # plaintext cluster: proves the cluster secret on connect
        self._conns: dict[str, ClientConnection] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def get(self, address: str) -> ClientConnection:
        """The open connection to ``address``, opened now if there is none; KolkError if it
        cannot be (core/transport.py says why)."""
        conn = self._conns.get(address)
        if conn is not None and not conn.is_closed:
            return conn
        lock = self._locks.setdefault(address, asyncio.Lock())
        async with lock:
            conn = self._conns.get(address)
            if conn is not None and not conn.is_closed:
                return conn
            conn = await connect(SPU, address, self.tls, CONNECT_TIMEOUT_S, self.credential)
            self._conns[address] = conn
            return conn

    def drop(self, address: str, conn: ClientConnection | None = None) -> None:
        """Close and forget the connection to ``address`` (only if it is still ``conn``, when
        given: another task may have opened a fresh one meanwhile)."""
        current = self._conns.get(address)
        if current is not None and (conn is None or current is conn):
            del self._conns[address]
            current.close()

    def close(self) -> None:
        for address in list(self._conns):
            self.drop(address)


async def follow(server: "SpuServer", replica: "Replica", leader: int, epoch: int) -> None:
    """Follow ``leader`` at ``epoch`` until cancelled (the SC changed the leader or epoch)."""
    backoff = BACKOFF_MIN_S
    truncated = False
    reported = False  # a refused truncation is reported to the SC once per (leader, epoch)
    cfg = server.config
    me = asyncio.current_task()
    while True:
        address = server.spu_private_address(leader)
        conn = None
        try:
            if not address:
                raise FetchFailed("notFound", f"SPU {leader} is not known here yet")
            conn = await server.peers.get(address)
            if not truncated:
                await _truncate_divergent(conn, server, replica, leader, epoch, cfg.replica_call_timeout_s, me)
                truncated = True
            await _fetch_once(conn, server, replica, epoch, me)
            backoff = BACKOFF_MIN_S
            continue
        except asyncio.CancelledError:
            raise
        except FetchFailed as e:
            if e.code in ("offsetOutOfRange", "diverged"):
                truncated = False  # the leader's log moved under us: find the divergence again
            log.debug("%s: fetch from SPU %s failed: %s", replica.name, leader, e)
        except (ConnectionLost, OSError, TimeoutError, KolkError) as e:
            # One line per leader address and reason for all the replicas that follow it, at
            # most one per 30 s (core/observe/log_limits.py): after a restart every follower
            # of a leader not back yet retried its old address, each retry a line (issue 21).
            log.warning("connection to leader SPU %s at %s failed: %s (following it for %s; retrying)", leader,
                        address, e, replica.name, extra={"repeat_key": ("follow", leader, address, str(e)),
                                                         "peer": address})
            if address:
                server.peers.drop(address, conn)
        except TruncationRefused as e:
            if not reported:
                log.error("%s: %s; refusing to follow it and reporting it to the SC", replica.name, e)
                reported = await _report_leader_loss(server, replica, leader, epoch, str(e))
        except StorageError as e:
            if is_disk_fault(e):
                server.disk.on_error(replica, e)  # fences the replica and logs it
                return
            log.error("%s: storage error while following SPU %s: %s", replica.name, leader, e)
        await asyncio.sleep(backoff)  # retry backoff, bounded
        backoff = min(backoff * 2, BACKOFF_MAX_S)


def _still_mine(replica: "Replica", me: "asyncio.Task[Any] | None") -> None:
    """Raise CancelledError unless this task is still the replica's follower task: a
    cancellation that raced a finished call must not let an old loop touch the log."""
    if me is None or replica.follower_task is not me:
        raise asyncio.CancelledError()


async def _call(conn: ClientConnection, name: str, timeout_s: float, **fields: Any) -> Any:
    """Call the leader; its response struct. A request the leader refused before handling it
    is a failed fetch (the connection is fine); a lost connection or a missed deadline is
    raised as is (the connection is dropped)."""
    try:
        return await conn.call(name, timeout_s, **fields)
    except CallRejected as e:
        raise FetchFailed(e.error.code, e.error.message) from None


async def _report_leader_loss(server: "SpuServer", replica: "Replica", leader: int, epoch: int, reason: str) -> bool:
    """Tell the SC that ``leader``'s replica lost acknowledged records; True once it heard."""
    try:
        async with asyncio.timeout(server.config.replica_call_timeout_s):
            await server.admin.report_replica_loss(replica.name, leader, reason, epoch)
        return True
    except (KolkError, TimeoutError) as e:
        log.warning("%s: reporting SPU %d's lost records failed (will try again): %s", replica.name, leader, e)
        return False


async def _truncate_divergent(conn: ClientConnection, server: "SpuServer", replica: "Replica", leader: int, epoch: int,
                              timeout_s: float, me: "asyncio.Task[Any] | None") -> None:
    """Cut our log where it diverges from the leader's (KIP-279): ask where our latest epoch
    ends there; if the leader answers with an epoch we do not have, cut to where that range
    ends here and ask again with our previous epoch, until the epochs agree."""
    lg = replica.log
    query = lg.leader_epochs.latest_epoch
    for _ in range(EPOCH_ROUNDS_MAX):
        if lg.log_end_offset == lg.log_start_offset:
            return
        r = await _call(conn, "epochEndOffset", timeout_s, partition=replica.name, replicaId=server.config.spu_id,
                        epoch=epoch, lastEpoch=query)
        if not r.result.ok:
            raise FetchFailed(r.result.error.code, r.result.error.message)
        _still_mine(replica, me)
        if r.leaderEpoch == UNDEFINED_EPOCH:
            # The leader holds nothing of any epoch we have.
            _truncate(server, replica, lg.log_start_offset, leader, epoch)
            return
        local = lg.end_offset_for_epoch(r.leaderEpoch)
        local_end = lg.log_start_offset if local.epoch == UNDEFINED_EPOCH else local.end_offset
        _truncate(server, replica, min(int(r.endOffset), local_end), leader, epoch)
        if local.epoch == r.leaderEpoch or local.epoch == UNDEFINED_EPOCH:
            return
        query = local.epoch  # we lack the leader's epoch: compare the one before it
    raise FetchFailed("diverged", f"{replica.name}: no common epoch after {EPOCH_ROUNDS_MAX} rounds")


def _truncate(server: "SpuServer", replica: "Replica", target: int, leader: int, epoch: int) -> None:
    """Cut the log at ``target`` before following ``leader``, as the replica's state decides:
    never below the high watermark (acknowledged records) unless an operator's unclean election
    came after every batch this log holds (ReplicaState.may_truncate_acknowledged)."""
    lg = replica.log
    event = Diverged(target, lg.log_start_offset, lg.log_end_offset, lg.leader_epochs.latest_epoch, leader, epoch)
    for effect in server.step(replica, event):
        if isinstance(effect, RefuseTruncation):
            raise TruncationRefused(effect.message)
        if isinstance(effect, Truncate):
            size_before, our_epoch = lg.size_bytes, lg.leader_epochs.latest_epoch
            lg.truncate_to(effect.offset)
            # After the cut, so the line says what was removed (offsets: records, give or take
            # the gaps compaction leaves; bytes: on disk).
            log.warning("%s: truncated %d offset(s), %d bytes, from offset %d (log end was %d, high watermark %d): "
                        "leader SPU %d at epoch %d holds nothing there of our latest epoch %d",
                        replica.name, effect.log_end - effect.offset, max(0, size_before - lg.size_bytes),
                        effect.offset, effect.log_end, effect.high_watermark, leader, epoch, our_epoch)
            replica.producers = ProducerStateTable.rebuild(lg.batch_headers())
            restore_producers(server.store, replica)
            server.step(replica, LogCut(lg.high_watermark, lg.durable_offset))
            replica.wake()


async def _fetch_once(conn: ClientConnection, server: "SpuServer", replica: "Replica", epoch: int,
                      me: "asyncio.Task[Any] | None") -> None:
    cfg = server.config
    lg = replica.log
    offset = lg.log_end_offset
    throttle = move_throttle(replica.meta, cfg.spu_id)  # a replica a move adds copies at this rate
    await replica.group.wait_durable(offset)  # the fetch offset must be durable here: it is our ack
    r = await _call(conn, "replicaFetch", cfg.replica_fetch_wait_ms / 1000 + cfg.replica_call_timeout_s,
                    partition=replica.name, replicaId=cfg.spu_id, epoch=epoch, offset=offset,
                    maxBytes=min(cfg.replica_fetch_bytes, throttle) if throttle else cfg.replica_fetch_bytes,
                    maxWaitMs=cfg.replica_fetch_wait_ms)
    _still_mine(replica, me)
    if not r.result.ok:
        code = r.result.error.code
        if code == "offsetOutOfRange" and offset < r.logStartOffset:
            # The leader no longer has what we need (retention, or we are new): start at its
            # log start; the batches before it are gone everywhere.
            for effect in server.step(replica, LeaderStartsPast(int(r.logStartOffset), offset)):
                if isinstance(effect, ResetLog):
                    log.info("%s: leader starts at %d, past our end %d: resetting", replica.name, effect.offset,
                             offset)
                    lg.reset_to(effect.offset)
                    replica.producers = ProducerStateTable()
                    server.step(replica, LogCut(lg.high_watermark, lg.durable_offset))
            return
        raise FetchFailed(code, r.result.error.message)
    data = r.records
    if not data and offset < int(r.logEndOffset) and lg.log_end_offset == offset:
        # The leader holds no record in [offset, its log end): its cleaner removed them (a
        # read there returns the next batch, and there is none). Our log end jumps there.
        lg.skip_to(int(r.logEndOffset))
        server.lifecycle.after_append(replica)
    if data:
        if lg.log_end_offset != offset:
            return  # truncated while the fetch was in flight; fetch again from the new end
        try:
            info = lg.append_replicated(data)
        except InvalidBatchError as e:
            raise FetchFailed("diverged", str(e)) from None  # find the divergence again
        for _, h in iter_batches(data, lg.config.batch_bytes_max):
            replica.producers.record_header(h)
        server.lifecycle.after_append(replica)
        await replica.group.wait_durable(info.next_offset)
        wait_s = server.move_throttle.delay(len(data), throttle) if throttle else 0.0
        if wait_s:
            await asyncio.sleep(wait_s)  # the move's copy rate (core/spu/move_throttle.py), not synchronisation
    leader_start = int(r.logStartOffset)
    if leader_start > lg.log_start_offset:
        # The leader's retention moved its log start: ours follows, so no replica serves
        # below what consumers see, and one that leads later starts there too.
        if lg.advance_log_start(leader_start):
            log.info("%s: the leader's log starts at %d; ours does too now", replica.name, lg.log_start_offset)
    server.step(replica, LeaderHighWatermark(int(r.highWatermark), lg.log_end_offset))  # capped by our end
    replica.wake()
