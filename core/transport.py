"""Cap'n Proto over TCP, with or without TLS: the one way Kolk opens listeners and connections.

``serve`` starts a listener and hands every connection's bootstrap factory the
:class:`~kolk.security.tls.Peer` on the other end (identity, address, node or client), which
pycapnp's own ``create_server`` does not expose. ``connect`` opens a client connection,
checking the server's certificate when TLS is configured; its errors say what went wrong in
words a user can act on (plaintext against TLS, unknown CA, expired, no certificate).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import weakref
from typing import Any, Callable

import capnp

from .errors import ClusterUnavailableError
from .security.tls import Peer, TlsConfig, explain_ssl_error, peer_of, server_hostname
from .write_coalescer import coalesce_writes

log = logging.getLogger("kolk.transport")

TLS_HANDSHAKE_TIMEOUT_S = 10.0

# Client TLS transports still open. pycapnp's loop teardown closes transports gracefully, and a
# TLS close then reads the peer's close_notify into pycapnp's protocol while pycapnp is being
# torn down, which can crash the process. abort_tls() drops them first (see admin.run).
_tls_transports: "weakref.WeakSet[Any]" = weakref.WeakSet()


def abort_tls() -> None:
    """Abort (no TLS shutdown exchange) every client TLS connection still open."""
    for transport in list(_tls_transports):
        if not transport.is_closing():
            transport.abort()


async def serve(bootstrap: Callable[[Peer], Any], host: str, port: int, tls: TlsConfig | None) -> Any:
    """Listen on ``host:port``; each connection serves ``bootstrap(peer)``. The asyncio server."""
    capnp.AsyncIoStream.create_server  # noqa: B018 - fails early if the kj loop is not running
    loop = asyncio.get_running_loop()

    def factory() -> Any:
        box: dict[str, Any] = {}

        async def on_connection(stream: Any) -> None:
            peer = peer_of(box["protocol"].transport)
            coalesce_writes(box["protocol"])
            box.clear()
            try:
                await capnp.TwoPartyServer(stream, bootstrap=bootstrap(peer)).on_disconnect()
            except Exception as e:  # one broken client ends only its own connection
                log.info("connection from %s (%s) ended: %s", peer.address, peer.identity, e)

        protocol = capnp.AsyncIoStream._connect(on_connection)
        box["protocol"] = protocol
        return protocol

    kwargs: dict[str, Any] = {}
    if tls is not None:
        kwargs = {"ssl": tls.server_context(), "ssl_handshake_timeout": TLS_HANDSHAKE_TIMEOUT_S}
    return await loop.create_server(factory, host, port, **kwargs)


async def connect(address: str, tls: TlsConfig | None, timeout_s: float) -> Any:
    """A Cap'n Proto stream to ``address``; ClusterUnavailableError saying why not."""
    host, port = address.rsplit(":", 1)
    kwargs: dict[str, Any] = {}
    if tls is not None:
        kwargs = {"ssl": tls.client_context(), "server_hostname": server_hostname(address),
                  "ssl_handshake_timeout": TLS_HANDSHAKE_TIMEOUT_S}
    try:
        async with asyncio.timeout(timeout_s):
            box: dict[str, Any] = {}
            transport, protocol = await asyncio.get_running_loop().create_connection(
                lambda: capnp.AsyncIoStream._connect(lambda stream: box.setdefault("stream", stream)),
                host.strip("[]"), int(port), **kwargs)
            coalesce_writes(protocol)
            if tls is not None:
                _tls_transports.add(transport)
            return box["stream"]
    except ssl.SSLError as e:
        raise ClusterUnavailableError(f"TLS to {address} failed: {explain_ssl_error(e)}", retriable=False) from e
    except (ConnectionResetError, ConnectionAbortedError, EOFError) as e:
        if tls is None:
            raise ClusterUnavailableError(f"{address} closed the connection: {e or 'reset'}") from e
        why = ("this client sent no certificate, and the server requires one" if not tls.cert else
               "the server refused this client's certificate (another CA, expired, or revoked?)")
        raise ClusterUnavailableError(f"TLS to {address} failed: the server closed the connection during the "
                                      f"handshake: {why}", retriable=False) from e
    except (OSError, TimeoutError) as e:
        hint = "" if tls is None else " (with TLS)"
        raise ClusterUnavailableError(f"{address} cannot be reached{hint}: {e or 'timed out'}") from e
