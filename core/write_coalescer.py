"""One socket write per loop pass instead of one per Cap'n Proto message piece.

pycapnp hands its asyncio transport every piece of a message as its own ``write``: the
segment table (8 bytes for a one-segment message), then each segment. asyncio sends each at
once, so every request and every response cost two ``send`` calls and two TCP segments on
loopback, each delivered to the peer in the sender's time. :class:`WriteCoalescer` stands
between the two: small pieces wait until the end of the current loop pass (``call_soon``)
and leave as one ``write``; a large piece, or enough small ones, goes at once, so big
payloads are never copied into a join and what waits is bounded by ``flush_bytes``.
Measured on the produce path in docs/benchmarks.md ("Reading the peer comparison").
"""

from __future__ import annotations

import asyncio
from typing import Any

FLUSH_BYTES = 64 << 10  # a piece this large, or this much waiting, is written at once


class WriteCoalescer:
    """Wraps an asyncio transport; every other attribute is the transport's own."""

    def __init__(self, transport: Any, loop: asyncio.AbstractEventLoop, flush_bytes: int = FLUSH_BYTES) -> None:
        if flush_bytes <= 0:
            raise ValueError(f"flush_bytes must be positive, not {flush_bytes}")
        self._transport = transport
        self._loop = loop
        self._flush_bytes = flush_bytes
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._scheduled = False

    def write(self, data: bytes) -> None:
        if len(data) >= self._flush_bytes:
            self.flush()
            self._transport.write(data)
            return
        self._pending.append(data)
        self._pending_bytes += len(data)
        if self._pending_bytes >= self._flush_bytes:
            self.flush()
        elif not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush_soon)

    def _flush_soon(self) -> None:
        self._scheduled = False
        self.flush()

    def flush(self) -> None:
        """Write what waits, as one piece (dropped if the transport is already closing)."""
        if not self._pending:
            return
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending.clear()
        self._pending_bytes = 0
        if not self._transport.is_closing():
            self._transport.write(data)

    @property
    def pending_bytes(self) -> int:
        return self._pending_bytes

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def coalesce_writes(protocol: Any) -> None:
    """Put a :class:`WriteCoalescer` in front of a connected pycapnp protocol's transport."""
    transport = protocol.transport
    if transport is not None and not isinstance(transport, WriteCoalescer):
        protocol.transport = WriteCoalescer(transport, asyncio.get_running_loop())
