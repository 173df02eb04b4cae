"""The audit log: every denial and every metadata change, as JSON records in topic ``_audit``.

Each node (SC or SPU) queues its events (bounded: when full the oldest go, and the count of
dropped events travels in the next record) and a background task produces them, in order,
to ``_audit`` through the ordinary client with the node's own certificate. The SC creates the
topic once SPUs exist. Reading it is an ordinary consume, allowed by the policy like any other
(``consume`` on ``topic:_audit``).

Records cannot be forged (docs/security.md, "Audit"): only node peers may produce to
``_audit`` (core/node/authz.py), and the SPU leading it accepts a produce only when every record
is a JSON object whose ``node`` is the writing connection's own identity
(:func:`forged_audit_records`): the node name it proved with the cluster secret on a plaintext
cluster, or its node certificate's identity with TLS. ``process`` is the writer's own name for
itself (``spu-<id>``, ``sc-<id>``), the same as ``node`` on a plaintext cluster.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from typing import Any

from ..protocol.errors import KolkError
from ..protocol.limits import PRODUCE_BYTES_MAX
from ..security.tls import TlsConfig
from ..segments.batch import iter_batches
from ..segments.records import decode_records
from ..protocol.node_auth import NodeCredential

log = logging.getLogger("kolk.audit")

AUDIT_TOPIC = "_audit"
QUEUE_MAX = 10_000
BATCH_MAX = 500


class AuditLog:
    def __init__(self, node: str, sc_addresses: list[str], tls: TlsConfig | None,
                 credential: NodeCredential | None = None) -> None:
        self.node = node
        self.sc_addresses = sc_addresses
        self.tls = tls
        self.credential = credential
        # What the SPU leading _audit sees this writer as, and so what every record's node is.
        self.identity = credential.node if credential is not None else (
            _certificate_identity(tls.cert) if tls is not None and tls.cert else node)
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
        self._queue.append({"ts": time.time_ns() // 1_000_000, **event, "node": self.identity, "process": self.node,
                            "seq": self._seq})
        self._wake.set()
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        from ..client.client import AsyncClient

        client = AsyncClient(self.sc_addresses, timeout_s=10, tls=self.tls, credential=self.credential)
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


def _certificate_identity(path: str) -> str:
    """The identity a server sees for the certificate in ``path`` (core/security/tls.py)."""
    from cryptography import x509

    from ..security.certs import identity_of

    with open(path, "rb") as f:
        return identity_of(x509.load_pem_x509_certificate(f.read()))


def forged_audit_records(records: bytes, identity: str) -> str | None:
    """Why a produce of ``records`` to ``_audit`` by ``identity`` is refused (one line), or None
    when every record is a JSON object whose ``node`` is ``identity``."""
    try:
        for pos, header in iter_batches(records, PRODUCE_BYTES_MAX):
            if header.is_control:
                return f"a control batch at byte {pos}: audit records are ordinary records"
            for i, (_off, _ts, _key, value, _headers) in enumerate(
                    decode_records(records, pos, records_bytes_max=PRODUCE_BYTES_MAX)):
                try:
                    event = json.loads(value) if value is not None else None
                except ValueError:
                    return f"record {i} of the batch at byte {pos} is not JSON"
                if not isinstance(event, dict):
                    return f"record {i} of the batch at byte {pos} is not a JSON object"
                node = event.get("node")
                if node != identity:
                    shown = str(node)[:64]
                    return (f"record {i} of the batch at byte {pos} names node {shown!r}; a node writes audit "
                            f"records only as itself ({identity!r})")
    except Exception as e:  # noqa: BLE001 - whatever the bytes, the produce is refused with a reason
        return f"the batches cannot be read: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return None
