"""Kolk's listeners and connections, with or without TLS: the one way they are opened.

``serve`` starts a listener for a service (core/protocol/channel.py) and hands every
connection's handler factory the :class:`~kolk.security.tls.Peer` on the other end (identity,
address, node or client). ``connect`` opens a client connection, checking the server's
certificate when TLS is configured; its errors say what went wrong in words a user can act on
(nothing listening, plaintext against TLS, unknown CA, expired, no certificate).
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import ssl
from typing import Any, Callable

from .protocol.node_auth import AuthenticationRefused, NodeCredential, authenticate
from .protocol.channel import SC, SPU, CallRejected, ConnectionLost, Service
from .protocol.channel_client import ClientConnection
from .protocol.accept import Listener
from .protocol.channel_server import serve as serve_channel
from .protocol.errors import ClusterUnavailableError, InvalidRequestError
from .security.tls import Peer, TlsConfig, explain_ssl_error, peer_of, server_hostname

__all__ = ["SC", "SPU", "ClientConnection", "InvalidAddressError", "Service", "connect", "parse_address", "serve"]

ADDRESS_CHARS_MAX = 300  # host (at most 253) and port, with brackets and colon
_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")  # "_": container names
_DOTTED_NUMBERS = re.compile(r"[0-9.]+")


class InvalidAddressError(InvalidRequestError, ValueError):
    """An address that is not ``host:port``: nothing was connected to."""


def parse_address(address: str) -> tuple[str, int]:
    """``(host, port)`` of ``host:port``, ``[ipv6]:port`` or ``a.b.c.d:port``, checked before
    any connection or name lookup: the port is 1-65535, an IP literal is a valid one (an IPv6
    one in brackets), a name is a DNS name (labels of letters, digits, underscores and inner
    hyphens, at most 253 characters). InvalidAddressError (one line) if not."""
    def bad(why: str) -> InvalidAddressError:
        shown = address if len(address) <= 80 else address[:80] + "..."
        return InvalidAddressError(f"invalid address {shown!r}: {why}")

    if not isinstance(address, str) or not address:
        raise InvalidAddressError("invalid address '': expected HOST:PORT, such as 127.0.0.1:9003")
    if len(address) > ADDRESS_CHARS_MAX:
        raise bad(f"longer than {ADDRESS_CHARS_MAX} characters")
    if ":" not in address:
        raise bad("expected HOST:PORT, such as 127.0.0.1:9003 (no port)")
    host, port_text = address.rsplit(":", 1)
    if not port_text.isascii() or not port_text.isdigit():
        raise bad(f"the port must be a number from 1 to 65535, not {port_text!r}")
    if len(port_text) > 5 or not 1 <= int(port_text) <= 65535:
        raise bad(f"the port must be a number from 1 to 65535, not {port_text[:12]}")
    port = int(port_text)
    if not host:
        raise bad("no host before the port")
    if host.startswith("[") or host.endswith("]"):
        if not (host.startswith("[") and host.endswith("]")):
            raise bad("unbalanced brackets around the IPv6 host")
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise bad(f"{host[1:-1]!r} is not an IPv6 address") from None
        return host[1:-1], port
    if ":" in host:
        raise bad("an IPv6 host must be in brackets, as [::1]:9003")
    if _DOTTED_NUMBERS.fullmatch(host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise bad(f"{host!r} is not an IPv4 address") from None
        return host, port
    name = host[:-1] if host.endswith(".") else host
    if len(name) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in name.split(".")):
        raise bad(f"{host[:80]!r} is not a host name (letters, digits, hyphens, underscores and dots)")
    return host, port



async def serve(service: Service, make_handler: Callable[[Peer], Any], host: str, port: int,
                tls: TlsConfig | None, fair_use: Any = None) -> asyncio.base_events.Server | Listener:
    """Listen on ``host:port``; each connection is served by ``make_handler(peer)``. With TLS at
    most limits.TLS_HANDSHAKES_MAX connections are in their handshake at once, counted from
    accept (core/protocol/accept.py).
    ``fair_use``: the server's stream ledger (core/protocol/fair_use.py), if it limits streams."""
    return await serve_channel(service, make_handler, host, port,
                               tls.server_context() if tls is not None else None, peer_of, fair_use=fair_use)


async def connect(service: Service, address: str, tls: TlsConfig | None, timeout_s: float,
                  credential: NodeCredential | None = None) -> ClientConnection:
    """A connection to ``address``; ClusterUnavailableError saying why not. ``credential``: a
    node's own connection on a plaintext cluster proves the cluster secret first
    (core/protocol/node_auth.py); with TLS the node certificate is the proof."""
    host, _ = parse_address(address)
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
               "the server refused this client's certificate (another CA, expired, or revoked?), "
               "or it is at its limit of connections in their TLS handshake (a flood?)")
        raise ClusterUnavailableError(f"TLS to {address} failed: the server closed the connection during the "
                                      f"handshake: {why}", retriable=False) from e
    except ConnectionRefusedError as e:
        raise ClusterUnavailableError(f"nothing is listening at {address} (connection refused)") from e
    except socket.gaierror as e:
        # A name that does not exist will not exist on a retry; a lookup that failed for now may.
        permanent = e.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME))
        raise ClusterUnavailableError(f"{address}: cannot resolve host {host!r}: {e.strerror or e}",
                                      retriable=not permanent) from e
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
