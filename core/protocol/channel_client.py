"""The client side of the transport (core/protocol/channel.py): :class:`ClientConnection`
calls a service and opens streams; :class:`ClientStream` hands out pushes and grants credit back
as they are taken."""

from __future__ import annotations

import asyncio
import collections
import logging
import ssl
from typing import Any

from . import limits as L
from .bounds import check, plan_for
from .channel import TLS_HANDSHAKE_TIMEOUT_S, CallRejected, ConnectionLost, Service, StreamEnded
from .framing import FrameDecoder, Kind, OversizedFrame, ProtocolError, encode_frame
from .messages import MalformedMessage, decode, encode, schema, which
from .messages import member as _member

log = logging.getLogger("kolk.channel")


_PUSH_PLANS = {f.proto.name: plan_for(f.schema) for f in schema.Push.schema.fields_list}


class ClientStream:
    """The client's end of a stream. ``await next()`` returns the next push's struct (a
    ``StreamPush`` or ``WatchPush``); it grants the credit back as pushes are taken, so at most
    the window and one push wait here. ``StreamEnded`` when the server ends it."""

    def __init__(self, conn: "ClientConnection", request_id: int, window: int) -> None:
        self._conn = conn
        self.id = request_id
        self.window = window
        self._items: collections.deque[Any] = collections.deque()
        self._arrived = asyncio.Event()
        self._outstanding = 0  # body bytes received and not yet granted back
        self._end: BaseException | None = None
        self.closed = False

    def _on_push(self, body: bytes) -> bool:
        self._outstanding += len(body)
        if self._outstanding > self.window + L.FRAME_BODY_BYTES_MAX:
            return False
        self._items.append(body)
        self._arrived.set()
        return True

    def _on_end(self, error: BaseException) -> None:
        self._end = error
        self._arrived.set()

    def pending(self) -> int:
        """Pushes received and not taken yet."""
        return len(self._items)

    async def next(self, timeout_s: float | None = None) -> Any:
        """The next push (its union member's struct). TimeoutError after ``timeout_s``."""
        while not self._items:
            if self._end is not None:
                raise self._end
            self._arrived.clear()
            if timeout_s is None:
                await self._arrived.wait()
            else:
                async with asyncio.timeout(timeout_s):
                    await self._arrived.wait()
        body = self._items.popleft()
        push = decode(schema.Push, body)
        member = which(push)
        item = _member(push, member)
        check(item, _PUSH_PLANS[member])
        if not self.closed:
            self._outstanding -= len(body)
            self._conn._grant(self.id, len(body))
        return item

    def close(self) -> None:
        """Stop the stream (a CANCEL to the server); safe to call more than once."""
        if self.closed:
            return
        self.closed = True
        self._items.clear()
        self._conn._close_stream(self.id)
        if self._end is None:
            self._end = StreamEnded(None)
        self._arrived.set()


class ClientConnection(asyncio.Protocol):
    """One connection to an SC or an SPU; calls on it are multiplexed by request id."""

    def __init__(self, service: Service, address: str) -> None:
        self.service = service
        self.address = address
        self.transport: Any = None
        self._decoder = FrameDecoder()
        self._next_id = 1
        self._pending: dict[int, asyncio.Future[bytes]] = {}
        self._streams: dict[int, ClientStream] = {}
        self._closed: BaseException | None = None
        self._drained = asyncio.Event()
        self._drained.set()

    @classmethod
    async def open(cls, service: Service, address: str, timeout_s: float,
                   ssl_context: ssl.SSLContext | None = None, server_hostname: str | None = None) -> "ClientConnection":
        """Connect to ``address`` (host:port); OSError, ssl.SSLError or TimeoutError if not."""
        host, port = address.rsplit(":", 1)
        kwargs: dict[str, Any] = {}
        if ssl_context is not None:
            kwargs = {"ssl": ssl_context, "server_hostname": server_hostname,
                      "ssl_handshake_timeout": TLS_HANDSHAKE_TIMEOUT_S}
        async with asyncio.timeout(timeout_s):
            _, conn = await asyncio.get_running_loop().create_connection(
                lambda: cls(service, address), host.strip("[]"), int(port), **kwargs)
        return conn

    @property
    def is_closed(self) -> bool:
        return self._closed is not None

    # ---- asyncio.Protocol
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(high=L.WRITE_BUFFER_HIGH_BYTES)

    def data_received(self, data: bytes) -> None:
        try:
            frames = self._decoder.feed(data)
        except ProtocolError as e:
            self._fail(ConnectionLost(f"{self.address} broke the framing: {e}"))
            return
        for f in frames:
            if isinstance(f, OversizedFrame):
                self._fail(ConnectionLost(f"{self.address} sent a frame of {f.length} bytes, more than the limit "
                                          f"of {L.FRAME_BODY_BYTES_MAX}"))
                return
            if f.kind == Kind.RESPONSE:
                fut = self._pending.pop(f.id, None)
                if fut is not None and not fut.done():
                    fut.set_result(f.body)
            elif f.kind == Kind.PUSH:
                stream = self._streams.get(f.id)
                if stream is not None and not stream._on_push(f.body):
                    self._fail(ConnectionLost(f"{self.address} pushed past the stream's credit"))
                    return
            elif f.kind == Kind.END:
                stream = self._streams.pop(f.id, None)
                if stream is not None:
                    stream._on_end(_end_error(f.body))
            else:
                self._fail(ConnectionLost(f"{self.address} sent a {f.kind.name} frame to a client"))
                return

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: BaseException | None) -> None:
        why = f": {exc}" if exc else ""
        self._fail(ConnectionLost(f"the connection to {self.address} closed{why}"), abort=False)

    def pause_writing(self) -> None:
        self._drained.clear()

    def resume_writing(self) -> None:
        self._drained.set()

    def _fail(self, error: BaseException, abort: bool = True) -> None:
        if self._closed is None:
            self._closed = error
        self._drained.set()
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(error)
                fut.exception()  # retrieved: a waiter that gave up must not log it
        streams, self._streams = self._streams, {}
        for stream in streams.values():
            stream._on_end(error)
        if abort and self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        """Close now; waiting calls fail with ConnectionLost."""
        self._fail(ConnectionLost(f"the connection to {self.address} was closed"))

    # ---- calls
    def _new_id(self) -> int:
        rid = self._next_id
        self._next_id = rid + 1 if rid < 0xFFFFFFFF else 1
        return rid

    def _grant(self, request_id: int, n: int) -> None:
        if self._closed is None and request_id in self._streams:
            self.transport.write(encode_frame(Kind.CREDIT, request_id, b"", n))

    def _close_stream(self, request_id: int) -> None:
        if self._streams.pop(request_id, None) is not None and self._closed is None:
            self.transport.write(encode_frame(Kind.CANCEL, request_id))

    def request(self, name: str) -> tuple[Any, Any]:
        """A new request envelope and its ``name`` member to fill: (envelope, member)."""
        env = self.service.request.new_message()
        return env, env.init(name)

    async def call(self, name: str, timeout_s: float, /, **fields: Any) -> Any:
        """Send request ``name`` with ``fields``; its response struct. TimeoutError past the
        deadline (the request is then cancelled on the server), ConnectionLost, CallRejected."""
        env, member = self.request(name)
        for k, v in fields.items():
            setattr(member, k, v)
        return await self.send(env, timeout_s)

    def _unsent(self) -> ConnectionLost:
        return ConnectionLost(str(self._closed), sent=False)

    async def send(self, env: Any, timeout_s: float, stream: ClientStream | None = None) -> Any:
        """Send a filled request envelope; its response struct (see :meth:`call`)."""
        if self._closed is not None:
            raise self._unsent()
        rid = stream.id if stream is not None else self._new_id()
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        try:
            if self.transport.get_write_buffer_size() > L.WRITE_BUFFER_HIGH_BYTES:
                async with asyncio.timeout(timeout_s):
                    await self._drained.wait()
            if self._closed is not None:
                raise self._unsent()
            self.transport.write(encode_frame(Kind.REQUEST, rid, encode(env)))
            async with asyncio.timeout(timeout_s):
                body = await fut
        except BaseException:
            if self._pending.pop(rid, None) is not None and self._closed is None:
                self.transport.write(encode_frame(Kind.CANCEL, rid))
            raise
        resp = decode(self.service.response, body)
        member = which(resp)
        out = _member(resp, member)
        if member == "rejected":
            raise CallRejected(out)
        check(out, self.service.response_plan(member))
        return out

    async def open_stream(self, name: str, window: int, timeout_s: float, /, **fields: Any) -> tuple[Any, ClientStream]:
        """Open stream ``name`` with ``window`` bytes of credit: (response struct, stream). The
        stream is open only if the response's result is ok."""
        if self._closed is not None:
            raise self._unsent()
        env, member = self.request(name)
        for k, v in fields.items():
            setattr(member, k, v)
        member.windowBytes = window
        stream = ClientStream(self, self._new_id(), window)
        self._streams[stream.id] = stream
        try:
            out = await self.send(env, timeout_s, stream)
        except BaseException:
            self._streams.pop(stream.id, None)
            raise
        if not out.result.ok:
            self._streams.pop(stream.id, None)
        return out, stream


def _end_error(body: bytes) -> StreamEnded:
    try:
        end = decode(schema.StreamEnd, body)
        return StreamEnded(None if end.result.ok else end.result.error)
    except MalformedMessage as e:
        return StreamEnded(None) if not body else StreamEnded(_plain_error("malformed", str(e)))


def _plain_error(code: str, message: str) -> Any:
    e = schema.Error.new_message()
    e.code = code
    e.message = message
    return e.as_reader()
