"""The Raft tunnel: the only way in or out of this node's pysyncobj (docs/security.md, "Raft").

pysyncobj trusts a frame's announced length before it authenticates anything and copies its
receive buffer on every read, so it never faces the network. It listens on an AF_UNIX socket
in a private directory (raft/node.py) and reaches each peer through a socketpair handed to
this tunnel. The tunnel runs its own asyncio loop on its own thread (the SC's serving loop is
not involved) and, for every connection in either direction:

1. with cluster TLS, runs mutual TLS: a certificate signed by the cluster CA on both sides,
   and ``TunnelTls.check_peer`` (the SC: a *node* certificate) on the other side's;
2. always, the cluster secret's challenge-response (raft/handshake.py), so even a node
   certificate (SPUs have them too) does not open the Raft port without the secret;
3. only then connects the two sides, checking every frame pysyncobj will read
   (raft/frames.py) against the frame cap from its 4-byte prefix, before a byte of the frame
   reaches pysyncobj; and copying with bounded buffers (a side's reader waits while the other
   side's writer holds more than ``WRITE_HIGH_BYTES``).

All of 1 and 2 happen within ``HANDSHAKE_TIMEOUT_S`` of the accept; at most
``INBOUND_CONNECTIONS_MAX`` accepted connections exist at once, counted from the accept (before
TLS). When they are all open, a new one evicts the oldest that has not finished its handshake
(a slowloris cannot keep a peer out: a peer's handshake takes milliseconds); only when every
one is authenticated is the new one refused. Refusals are logged in one line naming the peer
and the reason, at most ``REFUSAL_LOG_LINES_PER_WINDOW`` of each kind per window (then counted).
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import ssl
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable

from . import limits as L
from .frames import BadFrame, FrameChecker
from .handshake import (CHALLENGE_BYTES, HELLO_BYTES, PROOF_BYTES, ClientHandshake, HandshakeError,
                        ServerHandshake, tunnel_key)

log = logging.getLogger("kolk.raft.tunnel")


@dataclass(frozen=True)
class TunnelTls:
    """Mutual TLS for the tunnel, built by the embedder (the SC: core/sc/server.py)."""

    server: ssl.SSLContext  # requires a client certificate signed by the cluster CA
    client: ssl.SSLContext  # presents this node's certificate, verifies the peer's
    # The DER of the other side's certificate -> None if it may speak Raft, else why not.
    check_peer: Callable[[bytes], str | None]


class Refused(Exception):
    """A connection the tunnel will not carry; the message says why, in a few words."""


class _RefusalLog:
    """One warning per refusal, at most ``lines`` per kind of refusal (its text with numbers
    taken out) per ``window_s``; the rest are counted and reported when the window ends."""

    KINDS_MAX = 32  # kinds tracked in one window; more are counted under one

    def __init__(self, template: str, lines: int = L.REFUSAL_LOG_LINES_PER_WINDOW,
                 window_s: float = L.REFUSAL_LOG_WINDOW_S) -> None:
        self._template = template  # "... %s ... %s": the peer, the reason
        self._lines, self._window_s = lines, window_s
        self._start = 0.0
        self._kinds: dict[str, list[Any]] = {}  # kind -> [logged, dropped, latest peer, latest reason]
        self.total = 0

    def __call__(self, peer: str, reason: str) -> None:
        self.total += 1
        now = time.monotonic()
        if now - self._start >= self._window_s:
            for logged, dropped, last_peer, last_reason in self._kinds.values():
                if dropped:
                    log.warning("raft: %d more like this in the last %.0f s (not logged one by one): "
                                + self._template, dropped, self._window_s, last_peer, last_reason)
            self._start, self._kinds = now, {}
        kind = re.sub(r"[0-9]+", "N", reason)
        if kind not in self._kinds and len(self._kinds) >= self.KINDS_MAX:
            kind = "other"
        entry = self._kinds.setdefault(kind, [0, 0, peer, reason])
        if entry[0] < self._lines:
            entry[0] += 1
            log.warning(self._template, peer, reason)
        else:
            entry[1] += 1
            entry[2], entry[3] = peer, reason


def _no_delay(writer: asyncio.StreamWriter) -> None:
    """TCP_NODELAY, as pysyncobj sets it: asyncio sets it only on sockets made with proto
    IPPROTO_TCP, and the node's listener is not; without it a Raft round trip over TLS waited
    out the peer's delayed ACK (40 ms)."""
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _forget(e: BaseException) -> None:
    """Break the cycle a failed TLS handshake leaves (the exception's traceback holds asyncio's
    frames, which hold the exception and the SSL protocol with its 256 KiB read buffer). Left
    to the cyclic GC, refused handshakes piled up: +150 MiB in an SC under a TLS flood."""
    seen = 0
    cur: BaseException | None = e
    while cur is not None and seen < 8:
        traceback.clear_frames(cur.__traceback__)
        cur.__traceback__ = None
        cur, seen = cur.__context__, seen + 1


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close a connection at once, whatever state asyncio left its transport in."""
    transport = writer.transport
    if transport is not None and not transport.is_closing():
        try:
            transport.abort()
        except (AttributeError, RuntimeError, OSError):  # a transport torn down under it
            return


def _address(peername: Any) -> str:
    if not peername:
        return "?"
    if isinstance(peername, tuple):
        host, port = peername[0], peername[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(peername)


class RaftTunnel:
    """Serves the public Raft listener and forwards pysyncobj's outgoing connections.

    ``listener`` is the bound, listening TCP socket of the node's Raft address; ``local_path``
    the AF_UNIX path pysyncobj listens on. :meth:`forward` may be called from any thread."""

    def __init__(self, listener: socket.socket, local_path: str, secret: str, tls: TunnelTls | None,
                 frame_cap: int) -> None:
        self._listener = listener
        self._local_path = local_path
        self._key = tunnel_key(secret)
        self._tls = tls
        self.frame_cap = frame_cap
        self.refused = _RefusalLog("raft: refused connection from %s: %s")
        self._unreachable = _RefusalLog("raft: cannot reach peer %s: %s")
        self.inbound = 0  # accepted connections open now (read on the tunnel's thread)
        self._handshaking: dict[asyncio.StreamWriter, None] = {}  # oldest first
        self._evicted: set[asyncio.StreamWriter] = set()
        self.outbound = 0
        self.carried = 0  # connections authenticated and connected to pysyncobj, in all
        self._loop = asyncio.new_event_loop()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._accepting = False
        self._tokens = 0.0
        self._refilled = 0.0
        self._thread = threading.Thread(target=self._run, name="kolk-raft-tunnel", daemon=True)
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self._stopping = False

    # ------------------------------------------------------------ lifecycle (any thread)

    def start(self) -> None:
        self._thread.start()
        if not self._started.wait(L.STOP_TIMEOUT_S):
            raise RuntimeError("the Raft tunnel did not start")
        if self._start_error is not None:
            raise RuntimeError(f"the Raft tunnel did not start: {self._start_error}") from self._start_error

    def stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        if self._thread.is_alive():
            try:
                asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(L.STOP_TIMEOUT_S)
            except Exception as e:  # noqa: BLE001 - stopping anyway; say so
                log.warning("raft: the tunnel did not close cleanly: %s", e)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(L.STOP_TIMEOUT_S)
        self._listener.close()

    def forward(self, local: socket.socket, host: str, port: int) -> None:
        """Carry ``local`` (pysyncobj's end is the other end of this socketpair) to the peer at
        host:port; the tunnel owns ``local`` from here and closes it when it cannot."""
        def spawn() -> None:
            if self._stopping:
                local.close()
            else:
                self._spawn(self._outbound(local, host, port))
        try:
            if self._stopping:
                raise RuntimeError("stopping")
            self._loop.call_soon_threadsafe(spawn)
        except RuntimeError:  # the loop is closed or stopping
            local.close()

    # ------------------------------------------------------------ the tunnel's thread

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as e:  # noqa: BLE001 - reported by start()
            self._start_error = e
            self._started.set()
            self._loop.close()
            return
        self._started.set()
        try:
            self._loop.run_forever()
        finally:
            pending = asyncio.all_tasks(self._loop)
            for t in pending:
                t.cancel()
            if pending:
                self._loop.run_until_complete(asyncio.wait(pending, timeout=L.STOP_TIMEOUT_S / 2))
            self._loop.close()

    async def _serve(self) -> None:
        # Our own accept loop instead of asyncio.start_server: new connections are admitted at
        # most ACCEPT_RATE_PER_S (burst ACCEPT_BURST). Past that the listener is not read until
        # the bucket refills, so a connect flood waits in (and overflows) the kernel's backlog
        # instead of costing this thread a TLS handshake each: that work, on the GIL pysyncobj
        # needs for its heartbeats, cost a 3-SC TLS cluster its leader for as long as a flood
        # lasted. Connections already authenticated are never touched.
        self._listener.setblocking(False)
        self._tokens = float(L.ACCEPT_BURST)
        self._refilled = self._loop.time()
        self._loop.add_reader(self._listener.fileno(), self._on_acceptable)
        self._accepting = True

    def _refill(self) -> None:
        now = self._loop.time()
        self._tokens = min(float(L.ACCEPT_BURST), self._tokens + (now - self._refilled) * L.ACCEPT_RATE_PER_S)
        self._refilled = now

    def _on_acceptable(self) -> None:
        for _ in range(L.ACCEPT_BURST):
            self._refill()
            if self._tokens < 1:
                self._pause_accepting((1 - self._tokens) / L.ACCEPT_RATE_PER_S)
                return
            try:
                conn, _addr = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # EMFILE and the like: back off rather than spin
                self.refused("?", f"accept failed: {e.strerror or e}")
                self._pause_accepting(L.ACCEPT_BACKOFF_S)
                return
            self._tokens -= 1
            self._spawn(self._accepted(conn))

    def _pause_accepting(self, delay_s: float) -> None:
        if self._accepting:
            self._loop.remove_reader(self._listener.fileno())
            self._accepting = False
            self._loop.call_later(max(delay_s, L.ACCEPT_PAUSE_MIN_S), self._resume_accepting)

    def _resume_accepting(self) -> None:
        if not self._accepting and not self._stopping and self._listener.fileno() >= 0:
            self._loop.add_reader(self._listener.fileno(), self._on_acceptable)
            self._accepting = True

    async def _accepted(self, conn: socket.socket) -> None:
        # As start_server wires a connection: a protocol with a "client connected" callback,
        # which also tells StreamWriter.start_tls that this is the server's side.
        def protocol() -> asyncio.StreamReaderProtocol:
            return asyncio.StreamReaderProtocol(asyncio.StreamReader(limit=L.STREAM_BUFFER_BYTES), self._inbound)
        try:
            conn.setblocking(False)
            await self._loop.connect_accepted_socket(protocol, sock=conn)
        except (ConnectionError, OSError) as e:
            conn.close()
            log.debug("raft: an accepted connection closed at once: %s", e)

    async def _close(self) -> None:
        if self._accepting:
            self._loop.remove_reader(self._listener.fileno())
            self._accepting = False
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=L.STOP_TIMEOUT_S / 2)

    def _spawn(self, coro: Any) -> None:
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------ inbound

    async def _inbound(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        peer = _address(writer.get_extra_info("peername"))
        if self.inbound >= L.INBOUND_CONNECTIONS_MAX:
            if not self._handshaking:
                self.refused(peer, f"{L.INBOUND_CONNECTIONS_MAX} authenticated connections are open already")
                _abort(writer)
                return
            oldest = next(iter(self._handshaking))
            del self._handshaking[oldest]
            self._evicted.add(oldest)
            self.refused(_address(oldest.get_extra_info("peername")),
                         f"evicted before finishing its handshake: {L.INBOUND_CONNECTIONS_MAX} connections are open")
            _abort(oldest)
        self.inbound += 1
        self._handshaking[writer] = None
        try:
            _no_delay(writer)
            try:
                async with asyncio.timeout(L.HANDSHAKE_TIMEOUT_S):
                    if self._tls is not None:
                        await self._tls_handshake(writer, server_side=True)
                    hs = ServerHandshake(self._key)
                    hello = await reader.readexactly(HELLO_BYTES)
                    writer.write(hs.challenge(hello))
                    proof = await reader.readexactly(PROOF_BYTES)
                    hs.check(proof)
                if writer in self._evicted:
                    return  # evicted as its handshake finished
                del self._handshaking[writer]
            except TimeoutError as e:
                _forget(e)
                raise Refused(f"no handshake within {L.HANDSHAKE_TIMEOUT_S} s") from None
            except (asyncio.IncompleteReadError, ConnectionError) as e:
                _forget(e)
                n = len(e.partial) if isinstance(e, asyncio.IncompleteReadError) else 0
                raise Refused(f"closed during the handshake after {n} bytes") from None
            except HandshakeError as e:
                raise Refused(str(e)) from None
            try:
                async with asyncio.timeout(L.CONNECT_TIMEOUT_S):  # pysyncobj's backlog may be full
                    local_reader, local_writer = await asyncio.open_unix_connection(self._local_path,
                                                                                    limit=L.STREAM_BUFFER_BYTES)
            except TimeoutError:
                raise OSError(f"pysyncobj did not accept within {L.CONNECT_TIMEOUT_S} s") from None
            self.carried += 1
            await self._pump(peer, reader, writer, local_reader, local_writer)
        except Refused as e:
            if writer not in self._evicted:  # an evicted one was logged then
                self.refused(peer, str(e))
        except (ConnectionError, OSError) as e:
            log.info("raft: connection from %s ended: %s", peer, e)
        except Exception as e:  # noqa: BLE001 - e.g. asyncio on a transport aborted mid-handshake
            # Never a traceback per connection (a flood would fill the disk): one counted line.
            _forget(e)
            self.refused(peer, f"dropped: {type(e).__name__} during the handshake")
        finally:
            self.inbound -= 1
            self._handshaking.pop(writer, None)
            self._evicted.discard(writer)
            _abort(writer)

    async def _tls_handshake(self, writer: asyncio.StreamWriter, server_side: bool,
                             server_hostname: str | None = None) -> None:
        assert self._tls is not None
        ctx = self._tls.server if server_side else self._tls.client
        plain = writer.transport
        try:
            await writer.start_tls(ctx, server_hostname=server_hostname, ssl_handshake_timeout=L.HANDSHAKE_TIMEOUT_S)
            if writer.transport is None:
                raise Refused("TLS handshake failed: the connection closed")
        except ssl.SSLError as e:
            _forget(e)
            raise Refused(f"TLS handshake failed: {e.reason or e}") from None
        except (ConnectionError, asyncio.IncompleteReadError) as e:
            _forget(e)
            raise Refused(f"TLS handshake failed: the connection closed ({e})") from None
        finally:
            if writer.transport is None:
                # asyncio (3.11) leaves the writer without a transport when the peer vanished
                # mid-handshake, and its __del__ then raises; give it back the plain one to abort.
                writer._transport = plain  # noqa: SLF001
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if not der:
            raise Refused("TLS without a certificate")
        why = self._tls.check_peer(der)
        if why is not None:
            raise Refused(why)

    # ------------------------------------------------------------ outbound

    async def _outbound(self, local: socket.socket, host: str, port: int) -> None:
        peer = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if self.outbound >= L.OUTBOUND_CONNECTIONS_MAX:
            log.warning("raft: not connecting to %s: %d forwarders are open already", peer, L.OUTBOUND_CONNECTIONS_MAX)
            local.close()
            return
        self.outbound += 1
        writer: asyncio.StreamWriter | None = None
        try:
            try:
                async with asyncio.timeout(L.CONNECT_TIMEOUT_S + L.HANDSHAKE_TIMEOUT_S):
                    reader, writer = await asyncio.open_connection(host, port, limit=L.STREAM_BUFFER_BYTES)
                    _no_delay(writer)
                    if self._tls is not None:
                        await self._tls_handshake(writer, server_side=False, server_hostname=host)
                    hs = ClientHandshake(self._key)
                    writer.write(hs.hello())
                    writer.write(hs.answer(await reader.readexactly(CHALLENGE_BYTES)))
            except TimeoutError as e:
                _forget(e)
                raise Refused(f"no connection and handshake within "
                              f"{L.CONNECT_TIMEOUT_S + L.HANDSHAKE_TIMEOUT_S} s") from None
            except asyncio.IncompleteReadError as e:
                raise Refused(f"closed during the handshake after {len(e.partial)} bytes") from None
            except HandshakeError as e:
                raise Refused(str(e)) from None
            local_reader, local_writer = await asyncio.open_unix_connection(sock=local, limit=L.STREAM_BUFFER_BYTES)
            self.carried += 1
            await self._pump(peer, reader, writer, local_reader, local_writer)
        except Refused as e:
            self._unreachable(peer, str(e))
        except (ConnectionError, OSError) as e:
            # A peer that is down: pysyncobj retries every connectionRetryTime. Said once per
            # peer and reason, then at most once per 30 s with a count: the record's
            # ``repeat_key`` is what the SC's log set-up rate-limits (core/observe/log_limits.py;
            # raft/ imports nothing of kolk, so it marks the line instead of limiting it).
            if isinstance(e, ConnectionRefusedError):
                reason = "connection refused: nothing listens there (the SC is down or starting)"
            else:
                reason = e.strerror if isinstance(e, OSError) and e.strerror else (str(e) or type(e).__name__)
            log.warning("raft: cannot reach peer %s: %s (retrying)", peer, reason,
                        extra={"repeat_key": ("raft", peer, reason), "peer": peer})
        finally:
            self.outbound -= 1
            local.close()
            if writer is not None:
                _abort(writer)

    # ------------------------------------------------------------ both

    async def _pump(self, peer: str, net_reader: asyncio.StreamReader, net_writer: asyncio.StreamWriter,
                    local_reader: asyncio.StreamReader, local_writer: asyncio.StreamWriter) -> None:
        """Copy both ways until either side ends; what comes from the network is frame-checked.

        The handshake used streams; from here each transport gets a :class:`_Forward`
        protocol that writes what it receives straight to the other transport (one loop
        iteration per hop instead of a task wake-up per read: a Raft round trip crosses four)."""
        done = asyncio.get_running_loop().create_future()
        checker = FrameChecker(self.frame_cap)

        def on_bad(e: BadFrame) -> None:
            self.refused(peer, f"{e}; connection closed")

        net, local = net_writer.transport, local_writer.transport
        inbound = _Forward(local, checker, on_bad, done)
        outbound = _Forward(net, None, on_bad, done)
        try:
            # Bytes the streams read past the handshake go first, checked like the rest.
            for reader, half in ((net_reader, inbound), (local_reader, outbound)):
                pending = bytes(reader._buffer)  # noqa: SLF001 - what the stream holds already
                reader._buffer.clear()  # noqa: SLF001
                if pending:
                    half.data_received(pending)
            if not done.done():
                net.set_protocol(inbound)
                local.set_protocol(outbound)
                for t, half in ((net, inbound), (local, outbound)):
                    half.transport = t
                    t.set_write_buffer_limits(high=L.WRITE_HIGH_BYTES)
                    if not t.is_reading():
                        t.resume_reading()
                for reader, half in ((net_reader, inbound), (local_reader, outbound)):
                    if reader.at_eof():
                        half.eof_received()
            await done
        finally:
            local.abort()
            net.abort()


class _Forward(asyncio.Protocol):
    """One direction of a tunnelled connection: what its transport receives is (checked and)
    written to ``to``; reading pauses while ``to`` holds more than WRITE_HIGH_BYTES."""

    def __init__(self, to: asyncio.BaseTransport, checker: FrameChecker | None,
                 on_bad: Callable[[BadFrame], None], done: asyncio.Future[None]) -> None:
        self.to: Any = to
        self.transport: Any = None
        self._checker = checker
        self._on_bad = on_bad
        self._done = done

    def _end(self) -> None:
        if not self._done.done():
            self._done.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self._done.done():
            return
        if self._checker is not None:
            try:
                self._checker.feed(data)
            except BadFrame as e:
                self._on_bad(e)
                self._end()
                return
        self.to.write(data)
        if self.transport is not None and self.to.get_write_buffer_size() > L.WRITE_HIGH_BYTES:
            self.transport.pause_reading()
            self.to.get_protocol()._resume_on_drain = self.transport  # noqa: SLF001

    _resume_on_drain: Any = None

    def pause_writing(self) -> None:
        pass  # data_received pauses the reader that fills this transport

    def resume_writing(self) -> None:
        t, self._resume_on_drain = self._resume_on_drain, None
        if t is not None and not t.is_closing():
            t.resume_reading()

    def eof_received(self) -> bool:
        self._end()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._end()
