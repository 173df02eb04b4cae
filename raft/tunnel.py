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
        self._server: asyncio.base_events.Server | None = None
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
        self._server = await asyncio.start_server(self._inbound, sock=self._listener, limit=L.STREAM_BUFFER_BYTES)

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
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
                writer.transport.abort()
                return
            oldest = next(iter(self._handshaking))
            del self._handshaking[oldest]
            self._evicted.add(oldest)
            self.refused(_address(oldest.get_extra_info("peername")),
                         f"evicted before finishing its handshake: {L.INBOUND_CONNECTIONS_MAX} connections are open")
            oldest.transport.abort()
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
        finally:
            self.inbound -= 1
            self._handshaking.pop(writer, None)
            self._evicted.discard(writer)
            writer.transport.abort()

    async def _tls_handshake(self, writer: asyncio.StreamWriter, server_side: bool,
                             server_hostname: str | None = None) -> None:
        assert self._tls is not None
        ctx = self._tls.server if server_side else self._tls.client
        try:
            await writer.start_tls(ctx, server_hostname=server_hostname, ssl_handshake_timeout=L.HANDSHAKE_TIMEOUT_S)
        except ssl.SSLError as e:
            _forget(e)
            raise Refused(f"TLS handshake failed: {e.reason or e}") from None
        except (ConnectionError, asyncio.IncompleteReadError) as e:
            _forget(e)
            raise Refused(f"TLS handshake failed: the connection closed ({e})") from None
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
            # A peer that is down: pysyncobj retries every connectionRetryTime; not news.
            log.debug("raft: connection to %s ended: %s", peer, e)
        finally:
            self.outbound -= 1
            local.close()
            if writer is not None:
                writer.transport.abort()

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
