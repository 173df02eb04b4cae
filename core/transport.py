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

from .protocol.node_auth import AuthenticationRefused, NodeCredential, authenticate
from .protocol.channel import SC, SPU, CallRejected, ConnectionLost, Service
from .protocol.channel_client import ClientConnection
from .protocol.channel_server import serve as serve_channel
from .protocol.errors import ClusterUnavailableError
from .security.tls import Peer, TlsConfig, explain_ssl_error, peer_of, server_hostname

__all__ = ["SC", "SPU", "ClientConnection", "Service", "connect", "serve"]


async def serve(service: Service, make_handler: Callable[[Peer], Any], host: str, port: int,
                tls: TlsConfig | None, fair_use: Any = None) -> asyncio.base_events.Server:
    """Listen on ``host:port``; each connection is served by ``make_handler(peer)``.
    ``fair_use``: the server's stream ledger (core/protocol/fair_use.py), if it limits streams."""
    return await serve_channel(service, make_handler, host, port,
                               tls.server_context() if tls is not None else None, peer_of, fair_use=fair_use)


async def connect(service: Service, address: str, tls: TlsConfig | None, timeout_s: float,
                  credential: NodeCredential | None = None) -> ClientConnection:
    """A connection to ``address``; ClusterUnavailableError saying why not. ``credential``: a
    node's own connection on a plaintext cluster proves the cluster secret first
    (core/protocol/node_auth.py); with TLS the node certificate is the proof."""
    try:
        if tls is None:
            conn = await ClientConnection.open(service, address, timeout_s)
            if credential is not None:
                await _authenticated(conn, credential, timeout_s)
            return conn
        try:
            context = tls.client_context()
        except OSError as e:  # a TLS file that cannot be read: not the network, so not retriable
            raise ClusterUnavailableError(f"TLS to {address}: cannot read {e.filename or 'the CA, certificate or key'}"
                                          f": {e.strerror or e}", retriable=False) from e
        return await ClientConnection.open(service, address, timeout_s, context, server_hostname(address))
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


async def _authenticated(conn: ClientConnection, credential: NodeCredential, timeout_s: float) -> None:
    """Authenticate a node's fresh plaintext connection; closed and ClusterUnavailableError if not."""
    try:
        await authenticate(conn, credential, timeout_s)
    except AuthenticationRefused as e:
        conn.close()
        raise ClusterUnavailableError(str(e), retriable=False) from None
    except CallRejected as e:
        conn.close()
        raise ClusterUnavailableError(f"{conn.address} cannot authenticate nodes without TLS: {e}",
                                      retriable=False) from None
    except (ConnectionLost, TimeoutError) as e:
        conn.close()
        raise ClusterUnavailableError(f"{conn.address} did not answer the node authentication: "
                                      f"{e or 'timed out'}") from None
