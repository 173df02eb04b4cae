"""The server side of the transport (core/protocol/channel.py): :func:`serve` and the
per-connection protocol that decodes, bounds and dispatches requests, feeds streams within
their credit, and holds the per-connection and fair-use limits (core/protocol/fair_use.py)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import ssl
from typing import Any, Callable, Coroutine

from . import limits as L
from .accept import Listener, listen
from .bounds import BoundsError, check
from .channel import STREAM_CALLS, TLS_HANDSHAKE_TIMEOUT_S, ConnectionLost, Service
from .errors import one_line
from .fair_use import FairUse, owner_of
from .framing import Frame, FrameDecoder, Kind, OversizedFrame, ProtocolError, encode_frame
from .messages import MalformedMessage, decode, encode, schema, which
from .messages import member as _member

log = logging.getLogger("kolk.channel")

COALESCE_BYTES_MAX = 64 << 10  # frames up to this size wait for the end of the loop's turn (write())

# Request lines (docs/operations.md, Logs): a request refused unread, answered with an error
# the client cannot retry, or slower than SLOW_REQUEST_S is logged at WARNING (a retriable
# error at INFO) with its id ``req`` = "<connection>-<request id>" and ``peer`` =
# "identity@host:port", at most one line per (peer, call, code) per 30 s (the node's
# RepeatFilter, core/observe/log_limits.py, keyed by the record's ``repeat_key``); a served
# request only at DEBUG. 10 s: twice the longest wait any call holds by design (a group
# heartbeat or a follower's fetch, 5 s).
SLOW_REQUEST_S = 10.0
REQUEST_LINE_CHARS_MAX = 300  # an error message as a request line quotes it
_connection_ids = itertools.count(1)  # this process's connections, numbered as they open


def _rejected_body(service: Service, code: str, message: str, retriable: bool = False) -> bytes:
    env = service.response.new_message()
    err = env.init("rejected")
    err.code = code
    err.message = one_line(message)
    err.retriable = retriable
    return encode(env)


def _internal(service: Service, what: str, e: BaseException, extra: dict[str, Any] | None = None) -> str:
    """Log a handler's unexpected exception with its traceback under a reference (and the
    request's ``req`` and ``peer`` in ``extra``); the one line the client gets instead (never
    the traceback or the exception's text)."""
    ref = os.urandom(4).hex()
    log.error("%s: %s failed [ref %s]", service.name, what, ref, exc_info=e, extra=extra)
    return f"internal error in {what}: {type(e).__name__} (ref {ref}; the {service.name}'s log has the details)"


# ---------------------------------------------------------------- server side


class ServerStream:
    """The server's end of one stream: credit from the client, and pushes to it.

    ``credit`` is in body bytes: the server sends a push only while its credit is positive and
    each push uses up its body's length, so a client holds at most its window and one push.
    With a :class:`~kolk.protocol.fair_use.FairUse` ledger the stream also counts against its
    owner: pushed bytes are held until credit brings them back, and :meth:`room` is what the
    owner's and the server's held-bytes limits still allow.
    """

    def __init__(self, conn: "_ServerConnection", request_id: int, credit: int) -> None:
        self._conn = conn
        self.id = request_id
        self.credit = credit
        self.granted = asyncio.Event()  # set when credit arrives, room frees, or the stream closes
        self.closed = False
        self._granted_total = credit
        self.held = 0  # pushed bytes not granted back yet
        self._counted = conn.fair_use is not None  # holds one of its owner's stream slots

    @property
    def owner(self) -> str:
        return self._conn.owner

    def log_extra(self, code: str) -> dict[str, Any]:
        """``extra=`` for a line about this stream: its request id and peer, rate-limited per
        (peer, code) like the request lines (SLOW_REQUEST_S)."""
        conn = self._conn
        return {"req": f"{conn.cid}-{self.id}", "peer": conn.peer_text, "call": "stream", "code": code,
                "repeat_key": ("stream", conn.peer_key, code)}

    def grant(self, n: int) -> bool:
        """Add credit; False when the client grants more than it could ever have been owed."""
        self._granted_total += n
        self.credit += n
        self._give_back(min(n, self.held))
        self.granted.set()
        return self.credit <= L.STREAM_WINDOW_BYTES_MAX

    def _give_back(self, n: int) -> None:
        if n <= 0:
            return
        self.held -= n
        fair = self._conn.fair_use
        if fair is not None and self._counted:
            fair.give_back(self.owner, n)

    def release(self) -> None:
        """Give back the stream's slot and the bytes it holds (once; the stream is over)."""
        if not self._counted:
            return
        self._give_back(self.held)
        fair = self._conn.fair_use
        assert fair is not None
        self._counted = False
        fair.forget(self.owner, self.id)
        fair.close(self.owner)

    def close(self) -> None:
        self.closed = True
        self.release()
        self.granted.set()

    def room(self) -> int:
        """Bytes this stream may push now: its credit, within what its owner's and the
        server's held-bytes limits leave (may be <= 0)."""
        fair = self._conn.fair_use
        if fair is None or not self._counted:
            return self.credit
        return min(self.credit, fair.room(self.owner))

    def shared_room(self) -> int | None:
        """What the held-bytes limits leave this stream's owner; None without a ledger."""
        fair = self._conn.fair_use
        return fair.room(self.owner) if fair is not None and self._counted else None

    async def wait_for_room(self, timeout_s: float) -> None:
        """Wait until credit arrives, the owner's readers take bytes, or ``timeout_s`` passes."""
        self.granted.clear()
        fair = self._conn.fair_use
        if fair is not None and self._counted:
            fair.wait_for_room(self.owner, self.id, self.granted.set)
        try:
            async with asyncio.timeout(timeout_s):
                await self.granted.wait()
        except TimeoutError:
            pass
        finally:
            if fair is not None and self._counted:
                fair.forget(self.owner, self.id)

    async def writable(self) -> None:
        """Wait while the connection's write buffer is over its mark (read nothing before)."""
        await self._conn.writable()
        if self.closed:
            raise ConnectionLost("the stream was closed")

    async def push(self, message: Any) -> int:
        """Send one Push message (waits while the connection's write buffer is full). Its size."""
        body = encode(message)
        await self._conn.writable()
        if self.closed:
            raise ConnectionLost("the stream was closed")
        self.credit -= len(body)
        self.held += len(body)
        fair = self._conn.fair_use
        if fair is not None and self._counted:
            fair.take(self.owner, len(body))
        self._conn.write(Kind.PUSH, self.id, body)
        return len(body)


class _ServerConnection(asyncio.Protocol):
    def __init__(self, service: Service, make_handler: Callable[[Any], Any], peer_of: Callable[[Any], Any],
                 fair_use: FairUse | None = None) -> None:
        self.service = service
        self._make_handler = make_handler
        self._peer_of = peer_of
        self.fair_use = fair_use
        self.owner = ""  # whose streams these are (fair_use.owner_of the peer)
        self._connected = False  # counted in fair_use's connections of the owner
        self._refused: str | None = None  # why the connection was refused (fair use): no handler
        self.cid = next(_connection_ids)  # the first half of a request line's ``req``
        self.peer_text = "?"  # identity@host:port, for request lines
        self.peer_key = "?"  # identity@host: the rate limit's key (a reconnection keeps it)
        self.handler: Any = None
        self.transport: Any = None
        self._decoder = FrameDecoder()
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._streams: dict[int, tuple[ServerStream, asyncio.Task[None] | None]] = {}
        self._opening = 0  # stream requests counted against the limit whose handler has not answered yet
        self._reading = True
        self._backlog = False  # frames left in the decoder for the next turn of the loop (_pump)
        self._writing_paused = False
        self._drained = asyncio.Event()
        self._drained.set()
        self._lost = False
        # Small frames written in one turn of the loop leave in one send (one syscall instead of
        # one per answer); see write().
        self._out: list[bytes] | None = None

    # ---- asyncio.Protocol
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(high=L.WRITE_BUFFER_HIGH_BYTES)
        try:
            peer = self._peer_of(transport)
            self._name_peer(peer)
            self.owner = owner_of(peer)
            if self.fair_use is not None and not getattr(peer, "node", False):
                self._refused = self.fair_use.connection_refusal(self.owner)
                if self._refused is not None:
                    # No handler: the first request is answered with why, then the connection
                    # closes (or after a while, if none comes).
                    log.info("refusing a connection: %s", self._refused)
                    asyncio.get_running_loop().call_later(L.REFUSED_CONNECTION_LINGER_S, transport.abort)
                    return
                self.fair_use.connect(self.owner)
                self._connected = True
            self.handler = self._make_handler(peer)
        except Exception:  # noqa: BLE001 - a handler that cannot start refuses only this connection
            log.exception("refusing a connection: its handler could not be made")
            transport.abort()

    def _name_peer(self, peer: Any) -> None:
        name = self.transport.get_extra_info("peername")
        host, port = (str(name[0]), name[1]) if isinstance(name, tuple) and len(name) >= 2 else ("?", "?")
        identity = getattr(peer, "identity", None)
        self.peer_key = f"{identity}@{host}" if identity else host
        self.peer_text = f"{self.peer_key}:{port}"

    def request_line(self, level: int, request_id: int, call: str, code: str, text: str, *args: Any) -> None:
        """Log one request line (see SLOW_REQUEST_S), rate-limited per (peer, call, code)."""
        log.log(level, "%s " + text, call, *args, extra={
            "req": f"{self.cid}-{request_id}", "peer": self.peer_text, "call": call, "code": code,
            "repeat_key": ("request", self.peer_key, call, code)})

    def data_received(self, data: bytes) -> None:
        # At most FRAMES_PER_TURN_MAX frames per turn of the loop: a flood of tiny frames
        # (16-byte CREDIT or CANCEL frames, 16k of them per read) must not hold the loop from
        # every other connection. The rest wait in the decoder, reading paused, for _pump.
        try:
            frames = self._decoder.feed(data, 0 if self._backlog else L.FRAMES_PER_TURN_MAX)
        except ProtocolError as e:
            log.info("closing a connection that broke the framing: %s", e)
            self.transport.abort()
            return
        for frame in frames:
            self._on_frame(frame)
            if self._lost:
                return
        if len(frames) == L.FRAMES_PER_TURN_MAX and not self._backlog:
            self._backlog = True
            self._update_reading()
            asyncio.get_running_loop().call_soon(self._pump)

    def _pump(self) -> None:
        self._backlog = False
        if self._lost or self.transport.is_closing():
            return
        self.data_received(b"")
        if not self._backlog:
            self._update_reading()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: BaseException | None) -> None:
        self._lost = True
        self._drained.set()
        if self._connected and self.fair_use is not None:
            self._connected = False
            self.fair_use.disconnect(self.owner)
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
        if self._refused is not None:
            if kind == Kind.REQUEST:
                self.write(Kind.RESPONSE, frame.id, _rejected_body(self.service, "tooManyConnections", self._refused,
                                                                  True))
                self.flush()
                self.transport.close()  # after the answer is written
                self._lost = True  # nothing more is read from it
            return
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
        want = not self._writing_paused and len(self._tasks) < L.REQUESTS_IN_FLIGHT_MAX and not self._backlog
        if want != self._reading:
            self._reading = want
            if want:
                self.transport.resume_reading()
            else:
                self.transport.pause_reading()

    def write(self, kind: Kind, request_id: int, body: bytes) -> None:
        """Queue a frame. Frames of one turn of the loop go out together at its end, in order;
        a large one flushes what is queued and goes at once (no copy of big pushes)."""
        if self._lost:
            return
        frame = encode_frame(kind, request_id, body)
        if len(frame) > COALESCE_BYTES_MAX:
            self.flush()
            self.transport.write(frame)
        elif self._out is None:
            self._out = [frame]
            asyncio.get_running_loop().call_soon(self.flush)
        else:
            self._out.append(frame)

    def flush(self) -> None:
        out, self._out = self._out, None
        if out and not self._lost:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    async def writable(self) -> None:
        # A loop: every waiter wakes when the buffer drains, and the first to write may fill it again.
        while self._writing_paused and not self._lost:
            await self._drained.wait()
        if self._lost:
            raise ConnectionLost("the connection closed")

    async def _serve(self, request_id: int, body: bytes) -> None:
        service = self.service
        name = "a request"
        try:
            try:
                env = decode(service.request, body)
                name = which(env)
                req = _member(env, name)
                check(req, service.request_plan(name))
            except (MalformedMessage, BoundsError) as e:
                code = "tooLarge" if isinstance(e, BoundsError) else "malformed"
                self.write(Kind.RESPONSE, request_id, _rejected_body(service, code, str(e)))
                self.request_line(logging.WARNING, request_id, name, code, "refused unread (%s): %s", code,
                                  one_line(str(e), REQUEST_LINE_CHARS_MAX))
                return
            method = getattr(self.handler, name, None)
            if method is None:
                self.write(Kind.RESPONSE, request_id, _rejected_body(
                    service, "unknownCall", f"the {service.name} does not serve {name}"))
                self.request_line(logging.WARNING, request_id, name, "unknownCall", "refused: the %s does not serve it",
                                  service.name)
                return
            resp = service.response.new_message()
            out = resp.init(name)
            if name not in STREAM_CALLS:
                # A reader that does not read stops its own calls: no answer is computed while
                # the connection's write buffer is over its mark.
                await self.writable()
                started = asyncio.get_running_loop().time()
                await method(req, out)
                self.write(Kind.RESPONSE, request_id, encode(resp))
                self._log_answer(request_id, name, out.result, asyncio.get_running_loop().time() - started)
                self._answered(name, "ok" if out.result.ok else out.result.error.code)
                return
            await self._open_stream(request_id, name, req, method, resp, out)
        except (asyncio.CancelledError, ConnectionLost):
            pass  # the client cancelled the request, or the connection closed
        except Exception as e:  # noqa: BLE001 - one failing request answers internal, the rest go on
            message = _internal(service, f"{name} (request {request_id})", e,
                                {"req": f"{self.cid}-{request_id}", "peer": self.peer_text, "call": name})
            self.write(Kind.RESPONSE, request_id, _rejected_body(service, "internal", message))
            self._answered(name, "internal")
        finally:
            self._tasks.pop(request_id, None)
            self._update_reading()

    def _answered(self, call: str, result: str) -> None:
        """Tell the handler how a call it served ended (``answered(call, result)``, if it has
        one: "ok", the error code, or "internal"); the SC counts them (core/sc/metrics.py)."""
        answered = getattr(self.handler, "answered", None)
        if answered is not None:
            answered(call, result)

    def _log_answer(self, request_id: int, call: str, result: Any, seconds: float) -> None:
        """The request line for an answered call: an error the client cannot retry (its own
        fault: bad input, denied) or a slow answer at WARNING; a retriable one (not the
        leader, a rebalance under way, a topic the SPU's metadata lacks yet: the protocol at
        work) at INFO; else DEBUG."""
        if not result.ok:
            err = result.error
            self.request_line(logging.INFO if err.retriable else logging.WARNING, request_id, call, err.code,
                              "answered %s: %s", err.code, one_line(err.message, REQUEST_LINE_CHARS_MAX))
        elif seconds >= SLOW_REQUEST_S:
            self.request_line(logging.WARNING, request_id, call, "slow", "answered in %.1f s (slow: %.0f s or more)",
                              seconds, SLOW_REQUEST_S)
        elif log.isEnabledFor(logging.DEBUG):
            log.debug("%s answered in %.1f ms", call, seconds * 1000,
                      extra={"req": f"{self.cid}-{request_id}", "peer": self.peer_text, "call": call})

    def _stream_refusal(self) -> str | None:
        """Why this connection's peer may not open another stream now (one line), or None."""
        have = len(self._streams) + self._opening
        if have >= L.STREAMS_PER_CONNECTION_MAX:
            return (f"this connection already holds {have} of {L.STREAMS_PER_CONNECTION_MAX} streams; close one or "
                    "open another connection")
        return self.fair_use.refusal(self.owner) if self.fair_use is not None else None

    async def _open_stream(self, request_id: int, name: str, req: Any, method: Any, resp: Any, out: Any) -> None:
        """Admit a stream call (the connection's, the owner's and the server's stream limits,
        counted before any await so streams opened at once count too), run its handler, and
        start its feed."""
        refusal = self._stream_refusal()
        if refusal is not None:
            self.write(Kind.RESPONSE, request_id, _rejected_body(self.service, "tooManyStreams", refusal, True))
            return
        if self.fair_use is not None:
            self.fair_use.open(self.owner)  # the stream below gives it back (release)
        stream = ServerStream(self, request_id, min(int(req.windowBytes), L.STREAM_WINDOW_BYTES_MAX))
        self._opening += 1  # held across the handler's awaits
        started = False
        try:
            feed = await method(req, out, stream)
            self.write(Kind.RESPONSE, request_id, encode(resp))
            if not out.result.ok:
                self._log_answer(request_id, name, out.result, 0.0)
            self._answered(name, "ok" if out.result.ok else out.result.error.code)
            if feed is None:
                return
            if not out.result.ok or self._lost:
                feed.close()
                return
            task = asyncio.get_running_loop().create_task(self._run_stream(stream, feed))
            self._streams[request_id] = (stream, task)
            started = True
        finally:
            self._opening -= 1
            if not started:
                stream.release()

    async def _run_stream(self, stream: ServerStream, feed: Coroutine[Any, Any, Any]) -> None:
        error: tuple[str, str] | None = None
        try:
            error = await feed
        except (asyncio.CancelledError, ConnectionLost):
            return
        except Exception as e:  # noqa: BLE001 - the stream ends with the error; the connection goes on
            error = ("internal", _internal(self.service, f"stream {stream.id}", e))
        finally:
            stream.release()
            if self._streams.get(stream.id, (None,))[0] is stream:
                self._streams.pop(stream.id, None)
        if stream.closed or self._lost:
            return
        end = schema.StreamEnd.new_message()
        end.result.ok = error is None
        if error is not None:
            end.result.error.code = error[0]
            end.result.error.message = one_line(error[1])
        self.write(Kind.END, stream.id, encode(end))


def _no_peer(transport: Any) -> Any:
    return None


async def serve(service: Service, make_handler: Callable[[Any], Any], host: str, port: int,
                ssl_context: ssl.SSLContext | None = None,
                peer_of: Callable[[Any], Any] = _no_peer,
                fair_use: FairUse | None = None) -> asyncio.base_events.Server | Listener:
    """Listen on ``host:port`` for ``service``; the server (close it to stop). With
    ``ssl_context`` it accepts its own sockets and closes at once a connection that arrives while
    L.TLS_HANDSHAKES_MAX are in their handshake (core/protocol/accept.py); plaintext, it is
    asyncio's. ``fair_use``: the server's ledger of streams and held bytes by owner
    (core/protocol/fair_use.py)."""
    def factory() -> _ServerConnection:
        return _ServerConnection(service, make_handler, peer_of, fair_use)

    if ssl_context is None:
        return await asyncio.get_running_loop().create_server(factory, host, port)
    return await listen(host, port, factory, ssl_context, f"{service.name} listener", L.TLS_HANDSHAKES_MAX,
                        TLS_HANDSHAKE_TIMEOUT_S)
