"""The audit log: every denial and every metadata change, as JSON records in topic ``_audit``.

Each node (SC or SPU) queues its events (bounded: when full the oldest go, and the count of
dropped events travels in the next record) and a background task produces them, in order,
to ``_audit`` through the ordinary client with the node's own certificate. The SC creates the
topic once SPUs exist. Reading it is an ordinary consume, allowed by the policy like any other
(``consume`` on ``topic:_audit``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from typing import Any

from ..protocol.errors import KolkError
from ..security.tls import TlsConfig

log = logging.getLogger("kolk.audit")

AUDIT_TOPIC = "_audit"
QUEUE_MAX = 10_000
BATCH_MAX = 500


class AuditLog:
    def __init__(self, node: str, sc_addresses: list[str], tls: TlsConfig | None) -> None:
        self.node = node
        self.sc_addresses = sc_addresses
        self.tls = tls
        self._queue: deque[dict[str, Any]] = deque(maxlen=QUEUE_MAX)
        self._dropped = 0
        self._seq = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[Any] | None = None
        self.written = 0

    def record(self, event: dict[str, Any]) -> None:
        """Queue one event (never blocks the request that caused it)."""
        if len(self._queue) == QUEUE_MAX:
            self._dropped += 1
        self._seq += 1
        self._queue.append({"ts": time.time_ns() // 1_000_000, "node": self.node, "seq": self._seq, **event})
        self._wake.set()
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        from ..client.client import AsyncClient

        client = AsyncClient(self.sc_addresses, timeout_s=10, tls=self.tls)
        backoff = 0.1
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
            events = [self._queue[i] for i in range(min(BATCH_MAX, len(self._queue)))]
            if self._dropped:
                events[-1] = {**events[-1], "dropped_before": self._dropped}
            try:
                producer = client.producer(AUDIT_TOPIC, acks="leader", idempotent=False, linger_ms=0, retries=3)
                futures = [await producer.send(json.dumps(e, sort_keys=True).encode(), key=self.node.encode())
                           for e in events]
                await producer.flush()
                for f in futures:
                    await f
            except (KolkError, OSError) as e:
                log.info("audit events not written yet (%d queued): %s", len(self._queue), e)
                await asyncio.sleep(backoff)  # retry backoff, bounded
                backoff = min(backoff * 2, 5.0)
                client.forget_leaders(AUDIT_TOPIC)
                continue
            backoff = 0.1
            last = events[-1]["seq"]
            while self._queue and self._queue[0]["seq"] <= last:  # the head may have moved if it overflowed
                self._queue.popleft()
            self._dropped = 0
            self.written += len(events)
