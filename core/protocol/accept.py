"""Accepting TLS connections with a cap counted from accept, before the handshake.

asyncio's own listener (``loop.create_server(ssl=...)``) accepts every connection and gives it
a TLS buffer of 256 KiB for the whole handshake timeout, with no limit: 3,000 silent
connections (TCP connect, never a ClientHello) took an SPU from 62 to 436 MiB and 1,148 open
files. A listener here accepts its sockets itself (:func:`accept_connections`), counts a TLS
connection as soon as it is accepted, and closes at once one that arrives over its cap, before
asyncio allocates anything for it. Two listeners share this: the framed Cap'n Proto one
(:func:`listen`, used by core/protocol/channel_server.py for the SC's admin port and the SPU's
client port) and the HTTP one (core/observe/http.py).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from typing import Any, Callable

log = logging.getLogger("kolk.accept")

ACCEPT_BACKLOG = 100  # as asyncio.start_server's
ACCEPT_RETRY_S = 0.1  # after accept failed (e.g. the process is out of files), before trying again


async def accept_connections(sock: socket.socket, name: str, refusal: Callable[[], str | None],
                             on_accept: Callable[[socket.socket], None]) -> None:
    """Accept connections on the listening ``sock`` until cancelled. Each is closed at once if
    ``refusal()`` says why (one WARNING line per listener per 30 s, core/observe/log_limits.py),
    else handed to ``on_accept``, which must count it before returning: a burst of accepts runs
    before any task it starts does."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            conn, _ = await loop.sock_accept(sock)
        except OSError as e:  # out of files (EMFILE) or an aborted connection: try again shortly
            log.warning("%s: cannot accept a connection: %s", name, e.strerror or e,
                        extra={"repeat_key": ("accept failed", name, e.errno)})
            await asyncio.sleep(ACCEPT_RETRY_S)
            continue
        why = refusal()
        if why is not None:
            log.warning("%s: %s: a connection closed before its TLS handshake",
                        name, why, extra={"repeat_key": ("over the handshake cap", name)})
            conn.close()
            continue
        on_accept(conn)


def _bound_sockets(infos: list[Any]) -> list[socket.socket]:
    """A listening socket for each address of ``infos`` (as asyncio's create_server binds them)."""
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, sockaddr in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(sockaddr)
            sock.listen(ACCEPT_BACKLOG)
            sock.setblocking(False)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class Listener:
    """A TLS listener for a protocol (an :class:`asyncio.Protocol` factory) with a cap on the
    connections in their handshake. It stands in for the :class:`asyncio.Server` it replaces
    where Kolk uses one: :attr:`sockets`, :meth:`close` (stops listening and cuts the
    handshakes still under way; established connections are left to their owners, as
    asyncio's) and :meth:`wait_closed`."""

    def __init__(self, sockets: list[socket.socket], protocol_factory: Callable[[], asyncio.Protocol],
                 context: ssl.SSLContext, name: str, handshakes_max: int, handshake_timeout_s: float) -> None:
        if handshakes_max < 1 or not handshake_timeout_s > 0:
            raise ValueError(f"a TLS listener needs handshakes_max >= 1 and handshake_timeout_s > 0, not "
                             f"{handshakes_max} and {handshake_timeout_s}")
        self.sockets = tuple(sockets)
        self._factory = protocol_factory
        self._context = context
        self.name = name
        self.handshakes_max = handshakes_max
        self.handshake_timeout_s = handshake_timeout_s
        self.handshaking = 0  # connections accepted and still in their TLS handshake
        self._handshakes: set[asyncio.Task[None]] = set()
        loop = asyncio.get_running_loop()
        self._accepting = [loop.create_task(accept_connections(s, name, self._refusal, self._start))
                           for s in self.sockets]

    def _refusal(self) -> str | None:
        if self.handshaking >= self.handshakes_max:
            return f"{self.handshakes_max} connections are in their TLS handshake already (the limit)"
        return None

    def _start(self, conn: socket.socket) -> None:
        self.handshaking += 1
        task = asyncio.get_running_loop().create_task(self._handshake(conn))
        self._handshakes.add(task)
        task.add_done_callback(self._handshakes.discard)

    async def _handshake(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.connect_accepted_socket(self._factory, conn, ssl=self._context,
                                               ssl_handshake_timeout=self.handshake_timeout_s)
        except ssl.SSLError:  # a refused certificate, plaintext: the context logs it (security/tls.py)
            conn.close()
        except (OSError, TimeoutError) as e:  # a silent client, a reset
            log.debug("%s: a TLS connection was not established: %s", self.name, e)
            conn.close()
        except asyncio.CancelledError:  # the listener is closing
            conn.close()
            raise
        finally:
            self.handshaking -= 1

    def close(self) -> None:
        """Stop accepting, close the listening sockets and the connections still in a handshake."""
        for task in self._accepting:
            task.cancel()
        for sock in self.sockets:
            sock.close()
        for task in list(self._handshakes):
            task.cancel()

    async def wait_closed(self) -> None:
        await asyncio.gather(*self._accepting, *self._handshakes, return_exceptions=True)


async def listen(host: str | None, port: int, protocol_factory: Callable[[], asyncio.Protocol],
                 context: ssl.SSLContext, name: str, handshakes_max: int, handshake_timeout_s: float) -> Listener:
    """Listen with TLS on ``host:port`` (every address the host resolves to, as asyncio does;
    port 0 for a free one), with at most ``handshakes_max`` connections in their handshake."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    if not infos:
        raise OSError(f"getaddrinfo({host!r}) returned no addresses")
    return Listener(_bound_sockets(infos), protocol_factory, context, name, handshakes_max, handshake_timeout_s)
