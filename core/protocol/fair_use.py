"""Fair use of a server's streams: how many a peer may hold open, and how many pushed bytes
its slow readers may hold. Pure bookkeeping, no I/O; the channel (core/protocol/channel_server.py)
asks it before a stream is opened and as pushes go out and credit comes back.

Who a peer is (:func:`owner_of`): its TLS identity; a peer without one (a plaintext cluster,
where everyone is ``anonymous``) is counted by its network (IPv4 /24, IPv6 /64), so one
anonymous host cannot take the slots of another by binding more addresses of its own network.

* Connections: a client peer holds at most ``connections_per_identity`` connections to the
  server (a node certificate is not limited: nodes are the cluster). Past it the connection
  gets no handler: its first request is answered ``tooManyConnections`` and it is closed.
* Streams: a peer holds at most ``streams_per_identity`` of a server's ``streams_total``
  (the connection's own limit, ``STREAMS_PER_CONNECTION_MAX``, is the channel's). Past a
  limit a stream is refused with ``tooManyStreams``, whose one-line message names the limit,
  the count and whose it is.
* Held bytes: a push's bytes count against its owner from the moment it is written until the
  reader grants them back (or the stream closes). A stream may push only while its owner holds
  less than ``held_bytes_per_identity`` and the server less than ``held_bytes_total``; past
  that it waits (it is not refused) and is woken when bytes come back. A reader that never
  reads thus pins at most its identity's share, and never another identity's.

docs/security.md ("Fair use") and docs/protocol.md (the limits table) have the numbers.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any, Callable

from . import limits as L

ANONYMOUS = "anonymous"


# The network an anonymous peer is counted by: one host can bind many addresses of its
# network (127.0.0.2, 127.0.0.3, ...; a /64 is one IPv6 customer), not of another's.
ANONYMOUS_PREFIX_V4 = 24
ANONYMOUS_PREFIX_V6 = 64


def network_of(address: str) -> str:
    """The network an anonymous peer at ``address`` is counted by: ``a.b.c.0/24`` for IPv4
    (an IPv4-mapped IPv6 address counts as IPv4), ``x:x:x:x::/64`` for IPv6, and the address
    itself when it is not an IP address (a Unix socket, "unknown")."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    prefix = ANONYMOUS_PREFIX_V4 if ip.version == 4 else ANONYMOUS_PREFIX_V6
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


def owner_of(peer: Any) -> str:
    """The key a peer's streams and held bytes count against: its TLS identity, or
    ``anonymous@<network>`` (:func:`network_of`) for a peer without one."""
    identity = getattr(peer, "identity", None)
    if isinstance(identity, str) and identity and identity != ANONYMOUS:
        return identity
    address = getattr(peer, "address", None)
    return f"{ANONYMOUS}@{network_of(str(address)) if address else 'unknown'}"


def _whose(owner: str) -> str:
    return owner if owner.startswith(ANONYMOUS + "@") else f"identity {owner}"


@dataclass(frozen=True)
class FairUseLimits:
    streams_per_identity: int = L.STREAMS_PER_IDENTITY_MAX
    streams_total: int = L.STREAMS_PER_SERVER_MAX
    held_bytes_per_identity: int = L.HELD_BYTES_PER_IDENTITY_MAX
    held_bytes_total: int = L.HELD_BYTES_PER_SERVER_MAX
    connections_per_identity: int = L.CONNECTIONS_PER_IDENTITY_MAX

    def __post_init__(self) -> None:
        if self.connections_per_identity < 1:
            raise ValueError(f"connections per identity must be at least 1, got {self.connections_per_identity}")
        if not 1 <= self.streams_per_identity <= self.streams_total:
            raise ValueError(f"streams per identity must be from 1 to the total ({self.streams_total}), "
                             f"got {self.streams_per_identity}")
        if not 1 << 20 <= self.held_bytes_per_identity <= self.held_bytes_total:
            raise ValueError(f"held bytes per identity must be from 1 MiB to the total "
                             f"({self.held_bytes_total}), got {self.held_bytes_per_identity}")


@dataclass
class FairUse:
    """One server's ledger of open streams and held bytes, by owner. ``where`` names the
    server in messages ("SPU 1")."""

    where: str
    limits: FairUseLimits = field(default_factory=FairUseLimits)
    streams: dict[str, int] = field(default_factory=dict)
    connections: dict[str, int] = field(default_factory=dict)
    held: dict[str, int] = field(default_factory=dict)
    streams_total: int = 0
    held_total: int = 0
    # Callbacks of streams waiting for held bytes to come back, by owner.
    _waiting: dict[str, dict[int, Callable[[], None]]] = field(default_factory=dict)

    # ---- connections
    def connection_refusal(self, owner: str) -> str | None:
        """Why ``owner`` may not hold another connection (one line); None if it may."""
        have = self.connections.get(owner, 0)
        if have >= self.limits.connections_per_identity:
            return (f"{_whose(owner)} already holds {have} of {self.limits.connections_per_identity} connections to "
                    f"{self.where}; close one first")
        return None

    def connect(self, owner: str) -> None:
        self.connections[owner] = self.connections.get(owner, 0) + 1

    def disconnect(self, owner: str) -> None:
        n = self.connections.get(owner, 0) - 1
        if n > 0:
            self.connections[owner] = n
        else:
            self.connections.pop(owner, None)

    # ---- streams
    def refusal(self, owner: str) -> str | None:
        """Why ``owner`` may not open another stream now (one line); None if it may."""
        lim = self.limits
        have = self.streams.get(owner, 0)
        if have >= lim.streams_per_identity:
            return (f"{_whose(owner)} already holds {have} of {lim.streams_per_identity} streams on {self.where}; "
                    "close one first")
        if self.streams_total >= lim.streams_total:
            return (f"{self.where} already serves {self.streams_total} of {lim.streams_total} streams; "
                    "try again when some close")
        return None

    def open(self, owner: str) -> None:
        """Count a stream of ``owner`` (after :meth:`refusal` said None)."""
        self.streams[owner] = self.streams.get(owner, 0) + 1
        self.streams_total += 1

    def close(self, owner: str) -> None:
        n = self.streams.get(owner, 0) - 1
        if n > 0:
            self.streams[owner] = n
        else:
            self.streams.pop(owner, None)
        self.streams_total -= 1

    # ---- held bytes
    def room(self, owner: str) -> int:
        """Bytes ``owner`` may still push before its readers take some (may be <= 0)."""
        return min(self.limits.held_bytes_per_identity - self.held.get(owner, 0),
                   self.limits.held_bytes_total - self.held_total)

    def take(self, owner: str, n: int) -> None:
        """``n`` bytes of ``owner`` were pushed."""
        self.held[owner] = self.held.get(owner, 0) + n
        self.held_total += n

    def give_back(self, owner: str, n: int) -> None:
        """``n`` bytes of ``owner`` were taken by its reader (or dropped with its stream); wake
        the streams waiting for room."""
        if n <= 0:
            return
        server_was_full = self.held_total >= self.limits.held_bytes_total
        left = self.held.get(owner, 0) - n
        if left > 0:
            self.held[owner] = left
        else:
            self.held.pop(owner, None)
        self.held_total -= n
        woken = [self._waiting.pop(owner, {})]
        if server_was_full:  # every owner may have been waiting on the server's limit
            woken += [self._waiting.pop(o) for o in list(self._waiting)]
        for callbacks in woken:
            for wake in callbacks.values():
                wake()

    def wait_for_room(self, owner: str, key: int, wake: Callable[[], None]) -> None:
        """Call ``wake`` once (the next time ``owner`` or the server gets bytes back)."""
        self._waiting.setdefault(owner, {})[key] = wake

    def forget(self, owner: str, key: int) -> None:
        """A stream that was waiting closed."""
        waiting = self._waiting.get(owner)
        if waiting is not None:
            waiting.pop(key, None)
            if not waiting:
                del self._waiting[owner]
