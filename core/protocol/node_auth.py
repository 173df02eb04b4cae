"""Node identity without TLS, the part both sides share: the credential, the token, the
server's per-connection nonce and the client's side of ``challenge``/``authenticate``
(docs/security.md "Node identity without TLS").

On a plaintext cluster nothing on the wire tells a node from a client, so node-only calls
(registration, heartbeats, the metadata watch, in-sync set changes, replication) need proof
that the caller holds the cluster secret. The server hands each connection a random nonce
(``challenge``); the node answers with ``authenticate(node, token)`` where the token is an
HMAC-SHA256 of the secret over a fixed context, the service, the node's name and the nonce.
The secret never travels, a token is good for one connection's one nonce, and the comparison
is in constant time. The server's calls live in core/node/identity.py; :func:`authenticate`
is called by core/transport.py ``connect`` for every node-side connection of a plaintext cluster.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from dataclasses import dataclass
from typing import Any

from . import limits as L

CONTEXT = b"kolk-node-auth-v1"
NODE_NAME = re.compile(r"(sc|spu)-[0-9]{1,10}")  # whole name: fullmatch


@dataclass(frozen=True)
class NodeCredential:
    """What a node's own connections authenticate with on a plaintext cluster."""

    node: str  # "spu-<id>" or "sc-<id>"
    secret: str

    def __repr__(self) -> str:  # never print the secret
        return f"NodeCredential(node={self.node!r})"


def token(secret: str, service: str, node: str, nonce: bytes) -> bytes:
    msg = CONTEXT + b"\0" + service.encode() + b"\0" + node.encode() + b"\0" + nonce
    return hmac.new(secret.encode("utf-8"), msg, hashlib.sha256).digest()


class Challenge:
    """The server's side for one connection: a nonce, used at most once."""

    def __init__(self) -> None:
        self._nonce: bytes | None = None

    def issue(self) -> bytes:
        self._nonce = os.urandom(L.AUTH_NONCE_BYTES)
        return self._nonce

    def verify(self, secret: str | None, service: str, node: str, given: bytes) -> str | None:
        """None if ``given`` proves the secret for ``node``; else why not (one line). The
        nonce is spent either way: every attempt needs a fresh challenge."""
        nonce, self._nonce = self._nonce, None
        if not NODE_NAME.fullmatch(node):
            return f"node name {node[:L.NODE_NAME_CHARS_MAX]!r} is not sc-<id> or spu-<id>"
        if nonce is None:
            return f"{node} authenticated without asking for a challenge first"
        if not secret:
            return "this node has no cluster secret to check a token against"
        if not hmac.compare_digest(token(secret, service, node, nonce), bytes(given)):
            return f"wrong token for {node}: it does not prove the cluster secret"
        return None


class AuthenticationRefused(Exception):
    """The server refused this node's token (wrong secret?)."""


async def authenticate(conn: Any, credential: NodeCredential, timeout_s: float) -> None:
    """Prove ``credential`` on a fresh client connection (core/protocol/channel_client.py)."""
    service = conn.service.name
    challenge = await conn.call("challenge", timeout_s)
    if not challenge.result.ok:
        raise AuthenticationRefused(f"{conn.address} gave no challenge: {challenge.result.error.message}")
    answer = await conn.call("authenticate", timeout_s, node=credential.node,
                             token=token(credential.secret, service, credential.node, bytes(challenge.nonce)))
    if not answer.result.ok:
        raise AuthenticationRefused(f"{conn.address} refused {credential.node}'s cluster secret: "
                                    f"{answer.result.error.message}")
