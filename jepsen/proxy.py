"""A TCP fault-injection proxy for the fault harness (DESIGN.md §9) and tests.

:class:`FaultProxy` listens on 127.0.0.1 (OS-given port) and forwards each connection to one
target ``host:port``. Put it between real processes and switch faults at any time:

* ``cut("reset")``: existing connections are reset (RST both ends); new ones are reset on accept.
* ``cut("blackhole")``: connections stay open, but no byte (nor EOF) flows either way and bytes
  received meanwhile are discarded; new ones are accepted but not connected to the target.
  Bytes were lost, so ``heal()`` resets every connection that lived through the blackhole.
* ``heal()``: new connections are forwarded again.
* ``set_drop_replies(True)``: requests reach the target, but when a connection's first reply
  bytes arrive they are discarded and both ends reset: an ambiguous failure for the client.
* ``set_delay(s)``: each forwarded chunk waits ``s`` seconds (0..10), both directions.

It runs its own asyncio loop in a background thread. Control calls are thread-safe and return
once the fault is in force; never call them from the proxy loop. At most ``max_connections``
client connections are open (more are reset on accept); each direction reads at most 64 KiB
at a time and drains its writer. Counters, written by the proxy loop only:
``connections_total`` (refused ones too), ``connections_refused``, ``bytes_forwarded`` (both
directions) and the ``connections_active`` property.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from typing import Any, Callable, Coroutine

CHUNK = 64 * 1024
MAX_DELAY_S = 10.0
CUT_MODES = ("reset", "blackhole")
_CONTROL_TIMEOUT_S = 10.0
_CONNECT_TIMEOUT_S = 5.0


def _reset(writer: asyncio.StreamWriter | None) -> None:
    """Close ``writer``'s socket at once with an RST (SO_LINGER 0), dropping unsent bytes."""
    if writer is None:
        return
    sock = writer.get_extra_info("socket")
    with contextlib.suppress(OSError, AttributeError):  # no socket any more, or already closed
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _Conn:
    """One client connection and its upstream connection; used on the proxy loop only."""

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.held = False  # lived through a blackhole: never forwards again, reset at heal
        self.aborted = False
        self.done = asyncio.Event()

    def abort(self) -> None:
        self.aborted = True
        _reset(self.client)
        _reset(self.upstream)
        self.done.set()


class FaultProxy:
    """Forward 127.0.0.1:<port> to ``target`` ("host:port") with switchable faults."""

    def __init__(self, target: str, max_connections: int = 256) -> None:
        host, sep, port = target.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"target must be 'host:port', got {target!r}")
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.target = target
        self.max_connections = max_connections
        self._target = (host.strip("[]"), int(port))
        self._lock = threading.Lock()  # fault settings, shared with the loop
        self._control = threading.Lock()  # one control call at a time; the loop never takes it
        self._mode: str | None = None  # None (forwarding), "reset" or "blackhole"
        self._drop_replies, self._delay = False, 0.0
        self.connections_total = self.connections_refused = self.bytes_forwarded = 0
        self.replies_dropped = 0  # replies discarded (and their connections reset) by set_drop_replies
        self._conns: set[_Conn] = set()  # proxy loop only
        self._closing = self._stopped = False  # _closing: proxy loop only
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None
        self._port: int | None = None

    def start(self) -> FaultProxy:
        with self._control:
            if self._thread is not None or self._stopped:
                raise RuntimeError("a FaultProxy can be started only once")
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=self._run, name=f"FaultProxy->{self.target}", daemon=True)
            self._thread.start()
            try:
                self._server = self._submit(asyncio.start_server(self._handle, "127.0.0.1", 0, limit=CHUNK))
            except BaseException:
                self._stopped = True
                self._halt()
                raise
            self._port = self._server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        """Close the listener and every connection (with RST) and join the thread. Idempotent."""
        with self._control:
            if self._stopped:
                return
            self._stopped = True
            if self._thread is None:
                return
            try:
                self._submit(self._shutdown())
            finally:
                self._halt()

    def _halt(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(_CONTROL_TIMEOUT_S)

    def __enter__(self) -> FaultProxy:
        if self._thread is None:
            self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def connections_active(self) -> int:
        return len(self._conns)

    @property
    def address(self) -> str:
        if self._port is None:
            raise RuntimeError("FaultProxy not started")
        return f"127.0.0.1:{self._port}"

    def cut(self, mode: str = "reset") -> None:
        if mode not in CUT_MODES:
            raise ValueError(f"cut mode must be one of {CUT_MODES}, got {mode!r}")
        with self._control:
            with self._lock:
                self._mode = mode
            self._on_loop(lambda: self._abort(lambda c: True) if mode == "reset" else self._hold_all())

    def heal(self) -> None:
        """Forward again; connections that lived through a blackhole are reset now."""
        with self._control:
            with self._lock:
                self._mode = None
            self._on_loop(lambda: self._abort(lambda c: c.held))

    def set_drop_replies(self, drop: bool) -> None:
        with self._lock:
            self._drop_replies = bool(drop)

    def set_delay(self, seconds: float) -> None:
        if not 0 <= seconds <= MAX_DELAY_S:
            raise ValueError(f"delay must be within [0, {MAX_DELAY_S}] s, got {seconds}")
        with self._lock:
            self._delay = float(seconds)

    def _run(self) -> None:
        loop = self._loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        finally:
            loop.close()

    def _submit(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(_CONTROL_TIMEOUT_S)

    def _on_loop(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the loop and wait until the sockets it aborted are closed."""
        if self._thread is None or self._stopped:
            return

        async def job() -> None:
            fn()
            await asyncio.sleep(0)  # the transports' connection_lost callbacks close the sockets

        self._submit(job())

    def _abort(self, which: Callable[[_Conn], bool]) -> None:
        for conn in [c for c in self._conns if which(c)]:
            conn.abort()

    def _hold_all(self) -> None:
        for conn in self._conns:
            conn.held = True

    async def _shutdown(self) -> None:
        self._closing = True
        self._server.close()
        self._abort(lambda c: True)
        await asyncio.sleep(0)
        await self._server.wait_closed()

    def _verdict(self, conn: _Conn, reply: bool) -> str:
        """What to do with a chunk (or EOF) now: "forward", "discard" or "reset"."""
        with self._lock:
            mode, drop = self._mode, self._drop_replies
        if mode == "reset" or conn.aborted:
            return "reset"
        if mode == "blackhole" or conn.held:
            return "discard"
        if reply and drop:
            self.replies_dropped += 1
            return "reset"
        return "forward"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with self._lock:
            mode = self._mode
        self.connections_total += 1
        refuse = self._closing or mode == "reset" or len(self._conns) >= self.max_connections
        self.connections_refused += refuse
        if refuse:
            _reset(writer)
            return
        conn = _Conn(writer)
        conn.held = mode == "blackhole"
        self._conns.add(conn)
        try:
            if conn.held:  # a cut link: no connection to the target, nothing flows
                await self._pump(conn, reader, None, reply=False)
                return
            try:
                up_reader, conn.upstream = await asyncio.wait_for(
                    asyncio.open_connection(*self._target, limit=CHUNK), _CONNECT_TIMEOUT_S)
            except (OSError, asyncio.TimeoutError):
                conn.abort()
                return
            if conn.aborted:  # reset or stopped while connecting
                conn.abort()
                return
            await asyncio.gather(self._pump(conn, reader, conn.upstream, reply=False),
                                 self._pump(conn, up_reader, writer, reply=True))
        finally:
            self._conns.discard(conn)
            conn.client.close()
            if conn.upstream is not None:
                conn.upstream.close()

    async def _pump(self, conn: _Conn, src: asyncio.StreamReader, dst: asyncio.StreamWriter | None,
                    reply: bool) -> None:
        try:
            while True:
                data = await src.read(CHUNK)
                if not data or conn.aborted:
                    break
                with self._lock:
                    delay = self._delay
                if delay:
                    await asyncio.sleep(delay)
                verdict = self._verdict(conn, reply)
                if verdict == "reset":
                    conn.abort()
                    return
                if verdict == "forward":
                    dst.write(data)
                    await dst.drain()
                    self.bytes_forwarded += len(data)
            verdict = self._verdict(conn, reply=False)  # EOF: half-close unless cut
            if verdict == "reset":
                conn.abort()
            elif verdict == "discard":
                await conn.done.wait()  # a cut link delivers no EOF either; wait for heal/stop
            elif dst.can_write_eof():
                dst.write_eof()
        except (ConnectionError, OSError):
            conn.abort()  # one end reset: reset the other too
