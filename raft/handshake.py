"""The Raft tunnel's challenge-response on the cluster secret (pure; raft/tunnel.py does I/O).

Both sides prove they hold the secret, and it never travels: ::

    client -> server   HELLO    = MAGIC || client_nonce                  (40 bytes)
    server -> client   CHALLENGE = server_nonce || HMAC(k, "server" || cn || sn)   (64 bytes)
    client -> server   PROOF    = HMAC(k, "client" || cn || sn)            (32 bytes)

``k = HMAC-SHA256(secret, KEY_LABEL)``: a key for this use only, so a token derived from the
same secret for another purpose (SPUs' node tokens) can never open the Raft port. The two
labels stop a proof being reflected back at its sender; fresh nonces on both sides stop
replays. Comparisons are constant-time. The server reads nothing but these fixed sizes
before the client's proof checks, so nothing a stranger sends is buffered or forwarded.
"""

from __future__ import annotations

import hashlib
import hmac
import os

MAGIC = b"KOLKRFT1"
NONCE_BYTES = 32
MAC_BYTES = 32
HELLO_BYTES = len(MAGIC) + NONCE_BYTES
CHALLENGE_BYTES = NONCE_BYTES + MAC_BYTES
PROOF_BYTES = MAC_BYTES
KEY_LABEL = b"kolk raft tunnel key v1"


class HandshakeError(Exception):
    """The other side does not speak the tunnel's handshake or does not hold the secret."""


def tunnel_key(secret: str) -> bytes:
    return hmac.new(secret.encode(), KEY_LABEL, hashlib.sha256).digest()


def _mac(key: bytes, label: bytes, client_nonce: bytes, server_nonce: bytes) -> bytes:
    return hmac.new(key, label + client_nonce + server_nonce, hashlib.sha256).digest()


class ClientHandshake:
    def __init__(self, key: bytes, nonce: bytes | None = None) -> None:
        self._key = key
        self.nonce = nonce if nonce is not None else os.urandom(NONCE_BYTES)

    def hello(self) -> bytes:
        return MAGIC + self.nonce

    def answer(self, challenge: bytes) -> bytes:
        """The proof to send, once the server proved it holds the secret; HandshakeError if not."""
        if len(challenge) != CHALLENGE_BYTES:
            raise HandshakeError(f"the server's challenge is {len(challenge)} bytes, not {CHALLENGE_BYTES}")
        server_nonce, mac = challenge[:NONCE_BYTES], challenge[NONCE_BYTES:]
        if not hmac.compare_digest(mac, _mac(self._key, b"server", self.nonce, server_nonce)):
            raise HandshakeError("the server does not hold the cluster secret")
        return _mac(self._key, b"client", self.nonce, server_nonce)


class ServerHandshake:
    def __init__(self, key: bytes, nonce: bytes | None = None) -> None:
        self._key = key
        self.nonce = nonce if nonce is not None else os.urandom(NONCE_BYTES)
        self._client_nonce: bytes | None = None

    def challenge(self, hello: bytes) -> bytes:
        if len(hello) != HELLO_BYTES or not hmac.compare_digest(hello[:len(MAGIC)], MAGIC):
            raise HandshakeError("the first bytes are not the Raft tunnel's hello (not a Kolk SC?)")
        self._client_nonce = hello[len(MAGIC):]
        return self.nonce + _mac(self._key, b"server", self._client_nonce, self.nonce)

    def check(self, proof: bytes) -> None:
        if self._client_nonce is None:
            raise HandshakeError("a proof before the hello")
        expected = _mac(self._key, b"client", self._client_nonce, self.nonce)
        if len(proof) != PROOF_BYTES or not hmac.compare_digest(proof, expected):
            raise HandshakeError("the client does not hold the cluster secret")
