"""The asyncio edge of Kolk's transport: serve a service, or call one, over TCP or TLS.

The frame format and its limits live in ``framing`` (sans-IO); this module only moves frames
between sockets and coroutines:

* :func:`serve` listens; each connection gets a handler object from the caller's factory
  (which is told the :class:`~kolk.security.tls.Peer`). A REQUEST is decoded, bounded
  (``bounds.check``) and handed to the handler's method of the same name as ``method(req,
  out)``, where ``out`` is the response struct to fill. A stream call (``STREAM_CALLS``) is
  handed ``method(req, out, stream)`` and returns the coroutine that feeds the stream.
* :class:`ClientConnection` calls: ``await conn.call("produce", timeout_s, topic=..., ...)``
  returns the response struct; ``await conn.open_stream(...)`` returns a
  :class:`ClientStream` that grants credit back as its pushes are taken.

Per connection the server bounds the requests in flight (past the limit it stops reading the
socket), the open streams, and the bytes waiting to be written (past the high-water mark it
stops taking requests and pushes wait). Nothing here needs an event loop other than asyncio's.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import ssl
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Coroutine

from . import limits as L
from .bounds import BoundsError, check, plan_for
from .framing import Frame, FrameDecoder, Kind, OversizedFrame, ProtocolError, encode_frame
from .messages import MalformedMessage, decode, encode, schema, which
from .messages import member as _member

log = logging.getLogger("kolk.channel")

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
_PUSH_PLANS = {f.proto.name: plan_for(f.schema) for f in schema.Push.schema.fields_list}
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


def _rejected_body(service: Service, code: str, message: str, retriable: bool = False) -> bytes:
    env = service.response.new_message()
    err = env.init("rejected")
    err.code = code
    err.message = message[:L.TEXT_CHARS_MAX]
    err.retriable = retriable
    return encode(env)


# ---------------------------------------------------------------- server side


class ServerStream:
    """The server's end of one stream: credit from the client, and pushes to it.

    ``credit`` is in body bytes: the server sends a push only while its credit is positive and
    each push uses up its body's length, so a client holds at most its window and one push.
    """

    def __init__(self, conn: "_ServerConnection", request_id: int, credit: int) -> None:
        self._conn = conn
        self.id = request_id
        self.credit = credit
        self.granted = asyncio.Event()  # set when credit arrives or the stream closes
        self.closed = False
        self._granted_total = credit

    def grant(self, n: int) -> bool:
        """Add credit; False when the client grants more than it could ever have been owed."""
        self._granted_total += n
        self.credit += n
        self.granted.set()
        return self.credit <= L.STREAM_WINDOW_BYTES_MAX

    def close(self) -> None:
        self.closed = True
        self.granted.set()

    async def push(self, message: Any) -> int:
        """Send one Push message (waits while the connection's write buffer is full). Its size."""
        body = encode(message)
        await self._conn.writable()
        if self.closed:
            raise ConnectionLost("the stream was closed")
        self.credit -= len(body)
        self._conn.write(Kind.PUSH, self.id, body)
        return len(body)


class _ServerConnection(asyncio.Protocol):
    def __init__(self, service: Service, make_handler: Callable[[Any], Any], peer_of: Callable[[Any], Any]) -> None:
        self.service = service
        self._make_handler = make_handler
        self._peer_of = peer_of
        self.handler: Any = None
        self.transport: Any = None
        self._decoder = FrameDecoder()
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._streams: dict[int, tuple[ServerStream, asyncio.Task[None] | None]] = {}
        self._opening = 0  # stream requests counted against the limit whose handler has not answered yet
        self._reading = True
        self._writing_paused = False
        self._drained = asyncio.Event()
        self._drained.set()
        self._lost = False

    # ---- asyncio.Protocol
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(high=L.WRITE_BUFFER_HIGH_BYTES)
        try:
            self.handler = self._make_handler(self._peer_of(transport))
        except Exception:  # noqa: BLE001 - a handler that cannot start refuses only this connection
            log.exception("refusing a connection: its handler could not be made")
            transport.abort()

    def data_received(self, data: bytes) -> None:
        try:
            frames = self._decoder.feed(data)
        except ProtocolError as e:
            log.info("closing a connection that broke the framing: %s", e)
            self.transport.abort()
            return
        for frame in frames:
            self._on_frame(frame)
            if self._lost:
                return

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: BaseException | None) -> None:
        self._lost = True
        self._drained.set()
        for task in list(self._tasks.values()):
            task.cancel()
        for stream, task in list(self._streams.values()):
            stream.close()
            if task is not None:
                task.cancel()
        self._streams.clear()
        close = getattr(self.handler, "connection_closed", None)
        if close is not None:
            close()

    def pause_writing(self) -> None:
        self._writing_paused = True
        self._drained.clear()
        self._update_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._drained.set()
        self._update_reading()

    # ---- frames
    def _on_frame(self, frame: Frame | OversizedFrame) -> None:
        if isinstance(frame, OversizedFrame):
            if frame.kind == Kind.REQUEST:
                self.write(Kind.RESPONSE, frame.id, _rejected_body(
                    self.service, "tooLarge", f"a request of {frame.length} bytes is more than the limit of "
                                              f"{L.FRAME_BODY_BYTES_MAX}"))
            return
        kind = frame.kind
        if kind == Kind.REQUEST:
            if frame.id in self._tasks or frame.id in self._streams:
                self._protocol_error(f"request id {frame.id} is already in use on this connection")
                return
            # A Task per request: handlers use asyncio.timeout, which on Python 3.11 needs one
            # (an eager first step outside a Task, tried here, broke every produce with acks).
            task = asyncio.get_running_loop().create_task(self._serve(frame.id, frame.body))
            self._tasks[frame.id] = task
            self._update_reading()
        elif kind == Kind.CANCEL:
            task = self._tasks.get(frame.id)
            if task is not None:
                task.cancel()
            entry = self._streams.pop(frame.id, None)
            if entry is not None:
                entry[0].close()
                if entry[1] is not None:
                    entry[1].cancel()
        elif kind == Kind.CREDIT:
            entry = self._streams.get(frame.id)
            if entry is not None and not entry[0].grant(frame.credit):
                self._protocol_error(f"stream {frame.id} was granted more than {L.STREAM_WINDOW_BYTES_MAX} bytes "
                                     "of credit")
        else:
            self._protocol_error(f"a client sent a {kind.name} frame")

    def _protocol_error(self, why: str) -> None:
        log.info("closing a connection: %s", why)
        self.transport.abort()

    def _update_reading(self) -> None:
        if self._lost:
            return
        want = not self._writing_paused and len(self._tasks) < L.REQUESTS_IN_FLIGHT_MAX
        if want != self._reading:
            self._reading = want
            if want:
                self.transport.resume_reading()
            else:
                self.transport.pause_reading()

    def write(self, kind: Kind, request_id: int, body: bytes) -> None:
        if not self._lost:
            self.transport.write(encode_frame(kind, request_id, body))

    async def writable(self) -> None:
        if self._writing_paused:
            await self._drained.wait()
        if self._lost:
            raise ConnectionLost("the connection closed")

    async def _serve(self, request_id: int, body: bytes) -> None:
        service = self.service
        try:
            try:
                env = decode(service.request, body)
                name = which(env)
                req = _member(env, name)
                check(req, service.request_plan(name))
            except (MalformedMessage, BoundsError) as e:
                code = "tooLarge" if isinstance(e, BoundsError) else "malformed"
                self.write(Kind.RESPONSE, request_id, _rejected_body(service, code, str(e)))
                return
            method = getattr(self.handler, name, None)
            if method is None:
                self.write(Kind.RESPONSE, request_id, _rejected_body(
                    service, "unknownCall", f"the {service.name} does not serve {name}"))
                return
            resp = service.response.new_message()
            out = resp.init(name)
            if name not in STREAM_CALLS:
                await method(req, out)
                self.write(Kind.RESPONSE, request_id, encode(resp))
                return
            if len(self._streams) + self._opening >= L.STREAMS_PER_CONNECTION_MAX:
                self.write(Kind.RESPONSE, request_id, _rejected_body(
                    service, "limitExceeded", f"this connection already has {L.STREAMS_PER_CONNECTION_MAX} open "
                                              "streams; close one or open another connection", True))
                return
            stream = ServerStream(self, request_id, min(int(req.windowBytes), L.STREAM_WINDOW_BYTES_MAX))
            self._opening += 1  # held across the handler's awaits, so streams opened at once count too
            try:
                feed = await method(req, out, stream)
            finally:
                self._opening -= 1
            self.write(Kind.RESPONSE, request_id, encode(resp))
            if feed is None:
                return
            if not out.result.ok or self._lost:
                feed.close()
                return
            task = asyncio.get_running_loop().create_task(self._run_stream(stream, feed))
            self._streams[request_id] = (stream, task)
        except asyncio.CancelledError:
            pass  # the client cancelled the request, or the connection closed
        except Exception as e:  # noqa: BLE001 - one failing request answers internal, the rest go on
            log.exception("%s request %s failed", service.name, request_id)
            self.write(Kind.RESPONSE, request_id, _rejected_body(service, "internal", f"internal error: {e}"))
        finally:
            self._tasks.pop(request_id, None)
            self._update_reading()

    async def _run_stream(self, stream: ServerStream, feed: Coroutine[Any, Any, Any]) -> None:
        error: tuple[str, str] | None = None
        try:
            error = await feed
        except (asyncio.CancelledError, ConnectionLost):
            return
        except Exception as e:  # noqa: BLE001 - the stream ends with the error; the connection goes on
            log.exception("stream %s failed", stream.id)
            error = ("internal", f"internal error: {e}")
        finally:
            if self._streams.get(stream.id, (None,))[0] is stream:
                self._streams.pop(stream.id, None)
        if stream.closed or self._lost:
            return
        end = schema.StreamEnd.new_message()
        end.result.ok = error is None
        if error is not None:
            end.result.error.code = error[0]
            end.result.error.message = error[1][:L.TEXT_CHARS_MAX]
        self.write(Kind.END, stream.id, encode(end))


def _no_peer(transport: Any) -> Any:
    return None


async def serve(service: Service, make_handler: Callable[[Any], Any], host: str, port: int,
                ssl_context: ssl.SSLContext | None = None,
                peer_of: Callable[[Any], Any] = _no_peer) -> asyncio.base_events.Server:
    """Listen on ``host:port`` for ``service``; the asyncio server (close it to stop)."""
    kwargs: dict[str, Any] = {}
    if ssl_context is not None:
        kwargs = {"ssl": ssl_context, "ssl_handshake_timeout": TLS_HANDSHAKE_TIMEOUT_S}
    return await asyncio.get_running_loop().create_server(
        lambda: _ServerConnection(service, make_handler, peer_of), host, port, **kwargs)


# ---------------------------------------------------------------- client side


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


Handler = Callable[..., Awaitable[Any]]
