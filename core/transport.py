"""Kolk's listeners and connections, with or without TLS: the one way they are opened.

``serve`` starts a listener for a service (core/protocol/channel.py) and hands every
connection's handler factory the :class:`~kolk.security.tls.Peer` on the other end (identity,
address, node or client). ``connect`` opens a client connection, checking the server's
certificate when TLS is configured; its errors say what went wrong in words a user can act on
(nothing listening, plaintext against TLS, unknown CA, expired, no certificate).
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any, Callable

from .protocol.channel import SC, SPU, ClientConnection, Service
from .protocol.channel import serve as serve_channel
from .protocol.errors import ClusterUnavailableError
from .security.tls import Peer, TlsConfig, explain_ssl_error, peer_of, server_hostname

__all__ = ["SC", "SPU", "ClientConnection", "Service", "connect", "serve"]


async def serve(service: Service, make_handler: Callable[[Peer], Any], host: str, port: int,
                tls: TlsConfig | None) -> asyncio.base_events.Server:
    """Listen on ``host:port``; each connection is served by ``make_handler(peer)``."""
    return await serve_channel(service, make_handler, host, port,
                               tls.server_context() if tls is not None else None, peer_of)


async def connect(service: Service, address: str, tls: TlsConfig | None, timeout_s: float) -> ClientConnection:
    """A connection to ``address``; ClusterUnavailableError saying why not."""
    try:
        if tls is None:
            return await ClientConnection.open(service, address, timeout_s)
        return await ClientConnection.open(service, address, timeout_s, tls.client_context(),
                                           server_hostname(address))
    except ssl.SSLError as e:
        raise ClusterUnavailableError(f"TLS to {address} failed: {explain_ssl_error(e)}", retriable=False) from e
    except (ConnectionResetError, ConnectionAbortedError, EOFError) as e:
        if tls is None:
            raise ClusterUnavailableError(f"{address} closed the connection: {e or 'reset'}") from e
        why = ("this client sent no certificate, and the server requires one" if not tls.cert else
               "the server refused this client's certificate (another CA, expired, or revoked?)")
        raise ClusterUnavailableError(f"TLS to {address} failed: the server closed the connection during the "
                                      f"handshake: {why}", retriable=False) from e
    except ConnectionRefusedError as e:
        raise ClusterUnavailableError(f"nothing is listening at {address} (connection refused)") from e
    except (OSError, TimeoutError) as e:
        hint = "" if tls is None else " (with TLS)"
        raise ClusterUnavailableError(f"{address} cannot be reached{hint}: {e or 'timed out'}") from e
