"""The addresses a node is given, checked at start (docs/configuration.md, "Addresses").

Two kinds, one parser (:func:`kolk.transport.parse_address`):

- An *advertised* address (SC ``--raft``, ``--admin``, ``--peer``; SPU ``--public``,
  ``--private``, ``--sc``) is what others dial. It must be ``host:port`` with a port of
  1-65535, and its host must not be the unspecified address (``0.0.0.0``, ``::``): that one
  means "every interface" to a listener and "this very host" to whoever dials it, so a node
  that advertised it sent every other node to itself. A host name is allowed (Kubernetes
  gives pods stable names) and is not resolved here: the peers it names may not exist yet,
  and a name may resolve later; whoever dials it resolves it then.
- A *listen* address (SC ``--bind-raft``, ``--bind-admin``; SPU ``--bind``) is bound by this
  node. Port 0 (any free port) and the unspecified host are allowed; a host name must resolve
  now, since a listener cannot wait for DNS. Whether it can be bound is learnt by binding it
  (core/sc/main.py, core/spu/server.py), which names the address and the OS error.

Each check raises ValueError with one line that starts with the flag.
"""

from __future__ import annotations

import ipaddress
import socket

from ..observe.http import parse_listen_address
from ..transport import parse_address


def _unspecified(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False  # a name


def check_advertised(flag: str, address: str, bind_flag: str | None) -> tuple[str, int]:
    """``(host, port)`` of an address others dial; ValueError naming ``flag`` if it cannot be one.
    ``bind_flag`` is the flag that binds every interface instead, when the command has one."""
    try:
        host, port = parse_address(address)
    except ValueError as e:
        raise ValueError(f"{flag}: {e}") from None
    if _unspecified(host):
        hint = (f"bind with {bind_flag} {address} and advertise this host's name or address" if bind_flag
                else "give an address of the other node, as it advertises itself")
        raise ValueError(f"{flag} {address}: an advertised address must be one that others can reach; {hint}")
    return host, port


def check_listen(flag: str, address: str) -> tuple[str, int]:
    """``(host, port)`` of an address this node binds (port 0: any free one); ValueError naming
    ``flag`` when it is malformed or its host name does not resolve now."""
    try:
        host, port = parse_listen_address(address)
    except ValueError as e:
        raise ValueError(f"{flag}: {e}") from None
    try:
        ipaddress.ip_address(host)
    except ValueError:  # a name: a listener needs its address now
        try:
            socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        except socket.gaierror as e:
            raise ValueError(f"{flag} {address}: cannot resolve {host!r} ({e.strerror}); a bind address must "
                             "name this host") from None
    return host, port


def check_sc_addresses(raft: str, admin: str, bind_raft: str | None, bind_admin: str | None,
                       peers: list[tuple[str, str]]) -> None:
    """``kolk sc``'s addresses (``peers``: each --peer's Raft and admin address)."""
    check_advertised("--raft", raft, "--bind-raft")
    check_advertised("--admin", admin, "--bind-admin")
    for peer_raft, peer_admin in peers:
        check_advertised("--peer", peer_raft, None)
        check_advertised("--peer", peer_admin, None)
    check_listen("--bind-raft", bind_raft) if bind_raft is not None else check_listen("--raft", raft)
    check_listen("--bind-admin", bind_admin) if bind_admin is not None else check_listen("--admin", admin)


def check_spu_addresses(public: str, private: str | None, bind: str | None, sc: list[str]) -> None:
    """``kolk spu``'s addresses (``sc``: the --sc list)."""
    check_advertised("--public", public, "--bind")
    if private is not None:
        check_advertised("--private", private, "--bind")
    for address in sc:
        check_advertised("--sc", address, None)
    check_listen("--bind" if bind is not None else "--public", bind if bind is not None else public)
