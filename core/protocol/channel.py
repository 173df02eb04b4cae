"""The asyncio edge of Kolk's transport: serve a service, or call one, over TCP or TLS.

The frame format and its limits live in ``framing`` (sans-IO); this module only moves frames
between sockets and coroutines:

The server side is ``channel_server`` and the client side ``channel_client``; this module
holds what both share: the two services of the schema and the exceptions a call can end in.

* :func:`~kolk.protocol.channel_server.serve` listens; each connection gets a handler object from the caller's factory
  (which is told the :class:`~kolk.security.tls.Peer`). A REQUEST is decoded, bounded
  (``bounds.check``) and handed to the handler's method of the same name as ``method(req,
  out)``, where ``out`` is the response struct to fill. A stream call (``STREAM_CALLS``) is
  handed ``method(req, out, stream)`` and returns the coroutine that feeds the stream.
* :class:`~kolk.protocol.channel_client.ClientConnection` calls: ``await conn.call("produce", timeout_s, topic=..., ...)``
  returns the response struct; ``await conn.open_stream(...)`` returns a
  ``ClientStream`` that grants credit back as its pushes are taken.

Per connection the server bounds the requests in flight (past the limit it stops reading the
socket), the open streams, and the bytes waiting to be written (past the high-water mark it
stops taking requests and pushes wait). Nothing here needs an event loop other than asyncio's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from .bounds import plan_for
from .messages import schema

TLS_HANDSHAKE_TIMEOUT_S = 10.0
STREAM_CALLS = frozenset({"stream", "watch"})


@dataclass(frozen=True)
class Service:
    """One side of the schema: the request and response envelopes a listener speaks."""

    name: str
    request: Any
    response: Any

    def __post_init__(self) -> None:
        # The bounds plan of every request and response member, built once.
        plans = {}
        for envelope in (self.request, self.response):
            for field in envelope.schema.fields_list:
                plans[(envelope.schema.node.id, field.proto.name)] = plan_for(field.schema)
        object.__setattr__(self, "plans", plans)

    def request_plan(self, name: str) -> Any:
        return self.plans[(self.request.schema.node.id, name)]

    def response_plan(self, name: str) -> Any:
        return self.plans[(self.response.schema.node.id, name)]


SC = Service("SC", schema.ScRequest, schema.ScResponse)
SPU = Service("SPU", schema.SpuRequest, schema.SpuResponse)


class ConnectionLost(Exception):
    """The connection closed. ``sent``: the request had left before it did (so a write may
    have happened); False when it was refused before anything was sent."""

    def __init__(self, message: str, sent: bool = True) -> None:
        super().__init__(message)
        self.sent = sent


class StreamEnded(Exception):
    """The server ended a stream; ``error`` is its Error struct (None when it ended normally)."""

    def __init__(self, error: Any | None) -> None:
        super().__init__(error.message if error is not None else "the stream ended")
        self.error = error


class CallRejected(Exception):
    """The server refused a request before any handler saw it (the ``rejected`` answer)."""

    def __init__(self, error: Any) -> None:
        super().__init__(error.message)
        self.error = error


Handler = Callable[..., Awaitable[Any]]
