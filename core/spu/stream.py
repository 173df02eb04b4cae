"""What feeds a consumer's stream on the SPU (``stream`` in core/protocol/kolk.capnp).

After the SPU has answered a ``StreamRequest`` the channel (core/protocol/channel_server.py) runs
:meth:`StreamFeed.run` until it returns, or until the consumer cancels or disconnects (then it
is cancelled). The feed reads whole batches from the leader's log and pushes them while the
consumer's credit lasts: credit is counted in pushed bytes, the channel takes each push's size
off it, and the consumer grants it back as it takes pushes. A batch goes only if it fits what
is left of the window (a batch larger than the whole window goes once the window is empty),
so the consumer holds at most its window plus one batch. Pushes are plain writes on the
connection: no answer is awaited between them. A stream with nothing new for a while sends an
empty push (a keepalive, docs/protocol.md): the consumer learns the high watermark, and the
write fails on a connection whose peer vanished without closing it, which ends the stream.

The stream ends normally when this SPU no longer leads the partition (the consumer reopens at
the new leader), and with an error when a SmartModule fails, the policy stops allowing the
read, or the log fails.
"""

from __future__ import annotations

import asyncio
import time
import logging
import weakref
from typing import TYPE_CHECKING, Any

from ..node.authz import Denied
from ..protocol.channel_server import ServerStream
from ..protocol.codes import ErrorCode, Isolation
from ..protocol.errors import KolkError
from ..protocol.fair_use import owner_of
from ..security.masking import MASK_BYTES_PER_RESPONSE_MAX
from ..protocol.wire import schema
from ..security.masking import UnmaskableBatchError, mask_read
from ..security.tls import Peer
from ..segments.batch import parse_header
from ..segments.errors import StorageError
from ..smartmodule.chain import Chain, ChainError
from .errors import storage_failure
from .module_pool import PoolOverloaded
from .smartmodules import checked_accumulators

if TYPE_CHECKING:
    from .replica import Replica
    from .server import SpuServer

log = logging.getLogger("kolk.spu")


class _StreamStopped(Exception):
    """The stream must end with this error (code, message)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


async def _wait(event: asyncio.Event, timeout_s: float) -> bool:
    """Wait for ``event`` at most ``timeout_s``; False when the time ran out."""
    try:
        async with asyncio.timeout(timeout_s):
            await event.wait()
        return True
    except TimeoutError:
        return False


class StreamFeed:
    """One consumer's stream from one partition, from ``offset`` on."""

    def __init__(self, server: "SpuServer", peer: Peer, stream: ServerStream, replica: "Replica", topic: str,
                 offset: int, isolation: Isolation, chain: Chain | None) -> None:
        self.s = server
        self.peer = peer
        self.stream = stream
        self.replica = replica
        self.topic = topic
        self.offset = offset
        self.isolation = isolation
        self.chain = chain
        self.window = stream.credit
        if chain is not None:
            # run() closes the chain when it ends; a feed closed before it ever ran never enters
            # run()'s finally, so its chain goes when the feed does (refcounting: at once).
            weakref.finalize(self, chain.close)
        self.accumulators: list[bytes] = []
        self.keepalive_s = server.config.stream_keepalive_ms / 1000

    def _serving(self) -> bool:
        """Still open, and this SPU still leads the replica it streams from."""
        r = self.replica
        return not self.stream.closed and self.s.replicas.get(r.name) is r and r.is_leader

    async def run(self) -> tuple[str, str] | None:
        """Push until the stream is closed or leadership moves (None), or until an error
        ends it (``(code, message)``, sent to the consumer in the stream's END frame)."""
        self.s.streams += 1
        try:
            while self._serving():
                await self._step()
            return None
        except (ChainError, Denied, _StreamStopped) as e:
            code = e.code if isinstance(e, _StreamStopped) else "denied" if isinstance(e, Denied) else "smartModule"
            log.info("stream on %s ended: %s", self.replica.name, e, extra=self.stream.log_extra(code))
            return code, str(e)
        except StorageError as e:
            self.s.disk.on_error(self.replica, e)
            code, message, _retriable = storage_failure(e, self.replica.name)
            log.warning("stream on %s ended: %s", self.replica.name, e, extra=self.stream.log_extra(code))
            return code, message
        except KolkError as e:  # the SmartModule pool is overloaded
            log.info("stream on %s ended: %s", self.replica.name, e, extra=self.stream.log_extra(e.code))
            return e.code, str(e)
        finally:
            self.s.streams -= 1
            if self.chain is not None:
                self.chain.close()  # its instances' memory goes now (or when a running call returns)

    async def _step(self) -> None:
        """Push the next batches, or wait for records, credit or room."""
        stream, lg = self.stream, self.replica.log
        changed = self.replica.changed
        upto = lg.high_watermark if self.isolation == Isolation.COMMITTED else lg.log_end_offset
        if self.offset >= upto:
            await self._idle(changed)
            return
        # Nothing is read while the connection's write buffer is full (a reader that does not
        # read pins no batches here), nor past the credit or the held-bytes limits of the
        # stream's owner and of this SPU (core/protocol/fair_use.py).
        await stream.writable()
        room = stream.room()
        if room <= 0:
            await self._wait_for_credit()
            return
        # Checked again on every read: a newer policy that revokes access ends the stream.
        self.s.authz.check(self.peer, "consume", f"topic:{self.topic}")
        # The masks are read per push, so a new policy version applies to open streams too; a
        # masked push is bounded by the masking it costs (docs/security.md "Masking fails closed").
        masks = self.s.authz.masks(self.peer, self.topic)
        push_max = min(room, self.s.config.stream_push_bytes_max)
        started = time.perf_counter()
        res = lg.read(self.offset, min(push_max, MASK_BYTES_PER_RESPONSE_MAX) if masks else push_max, upto)
        if not res.data:
            if res.next_offset > self.offset:
                # [offset, next_offset) holds no record (the cleaner removed them): the consumer
                # learns where to go on, as from a push of records.
                await stream.push(self._push(b"", res.high_watermark, res.next_offset))
                self._moved(res.next_offset, 0)
                return
            await self._idle(changed)
            return
        shared = stream.shared_room()
        if len(res.data) > stream.credit and stream.credit < self.window or \
                shared is not None and len(res.data) > shared:
            # The next batch does not fit what is left of the window (a batch larger than the
            # whole window goes once the window is empty), or of the held-bytes limits: wait.
            await self._wait_for_credit()
            return
        # Masking before SmartModules: a module sees only what this reader may see.
        next_offset = res.next_offset
        try:
            masked = await mask_read(res.data, masks)  # hands the loop back while it masks
            data = masked.data
            if masked.stopped_at is not None:
                next_offset = masked.stopped_at
        except UnmaskableBatchError as e:  # withheld, never sent unmasked: push what precedes it, then end
            if not e.masked_before:
                raise _StreamStopped(ErrorCode.CORRUPT_BATCH.value, f"{self.replica.name}: {e}") from None
            data, next_offset = e.masked_before, e.offset
        if self.chain is not None:
            data, next_offset = await self._run_chain(data, next_offset)
            if not data and next_offset < upto:
                self._moved(next_offset, 0)  # all filtered out: read on before telling the consumer
                await asyncio.sleep(0)  # without holding the loop: other streams and requests go first
                return
        await stream.push(self._push(data, res.high_watermark, next_offset))
        self.s.metrics.stream_push_seconds.observe(time.perf_counter() - started)
        self._moved(next_offset, len(data))
        await asyncio.sleep(0)  # a push need not wait: let other streams and requests run between pushes

    def _moved(self, next_offset: int, sent_bytes: int) -> None:
        """The consumer is past ``next_offset``, having been sent ``sent_bytes`` of records
        (counted once per push: core/spu/metrics.py ``Traffic``)."""
        traffic = self.replica.traffic
        traffic.records_out += max(0, next_offset - self.offset)
        traffic.bytes_out += sent_bytes
        self.offset = next_offset

    async def _run_chain(self, data: bytes, next_offset: int) -> tuple[bytes, int]:
        """The chain's output for ``data``, run on the SmartModule pool for one time slice:
        when the slice ends before the last batch, the output so far and the offset to read
        on from (the first batch not run)."""
        assert self.chain is not None
        sm = self.s.smartmodules
        try:
            out, stopped = await sm.pool.run(owner_of(self.peer), self.chain.run, data,
                                             self.replica.log.config.batch_bytes_max, False, True, 0,
                                             sm.config.slice_s)  # verified: the reader checked CRCs
        except PoolOverloaded as e:
            raise KolkError(str(e), code=ErrorCode.OVERLOADED.value) from None
        self.accumulators = checked_accumulators(self.chain)
        if stopped is not None:
            next_offset = parse_header(data, stopped).base_offset
        return out, next_offset

    async def _idle(self, changed: asyncio.Event) -> None:
        """Wait for new records (or a change of leadership); after ``keepalive_s`` without,
        send an empty push if the credit allows."""
        if not await _wait(changed, self.keepalive_s) and self.stream.room() > 0:
            await self.stream.push(self._push(b"", self.replica.log.high_watermark, self.offset))

    async def _wait_for_credit(self) -> None:
        """Wait for the consumer to grant credit, or for its owner's readers to take bytes
        (looking again now and then regardless)."""
        await self.stream.wait_for_room(self.keepalive_s)

    def _push(self, data: bytes, high_watermark: int, next_offset: int) -> Any:
        msg = schema.Push.new_message()
        p = msg.init("stream")
        p.records = data
        p.highWatermark = high_watermark
        p.nextOffset = next_offset
        accs = p.init("accumulators", len(self.accumulators))
        for i, acc in enumerate(self.accumulators):
            accs[i] = acc
        return msg
