"""Kolk's framed, multiplexed transport, sans-IO: bytes in, frames out (docs/protocol.md).

A frame is a 16-byte little-endian header and a body::

    u32 body length | u32 request id | u8 kind | u8 flags (0) | u16 reserved (0) | u32 credit

then ``body length`` bytes. ``credit`` is used by CREDIT frames only (bytes granted to a
stream); the body of REQUEST, RESPONSE, PUSH and END frames is one Cap'n Proto message.

:class:`FrameDecoder` turns any split of the byte stream into whole frames. It checks a body's
announced length against the limit before it buffers a byte of the body: a too-large frame is
skipped as it arrives and reported as :class:`OversizedFrame`, so the server can refuse that
one request and keep the connection.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from .limits import FRAME_BODY_BYTES_MAX, FRAME_HEADER_BYTES

HEADER = struct.Struct("<IIBBHI")
assert HEADER.size == FRAME_HEADER_BYTES
ID_MAX = (1 << 32) - 1
CREDIT_MAX = (1 << 32) - 1


class Kind(enum.IntEnum):
    REQUEST = 1   # client -> server: a request (ScRequest / SpuRequest)
    RESPONSE = 2  # server -> client: the answer to request `id` (ScResponse / SpuResponse)
    PUSH = 3      # server -> client: one item of stream `id` (Push)
    END = 4       # server -> client: stream `id` stopped (StreamEnd); no push follows
    CANCEL = 5    # client -> server: forget request `id`, or stop stream `id`; no body
    CREDIT = 6    # client -> server: stream `id` may receive `credit` more bytes; no body


BODYLESS = frozenset({Kind.CANCEL, Kind.CREDIT})


class ProtocolError(Exception):
    """The byte stream is not Kolk's framing: the connection cannot go on."""


@dataclass(frozen=True, slots=True)
class Frame:
    kind: Kind
    id: int
    body: bytes = b""
    credit: int = 0


@dataclass(frozen=True, slots=True)
class OversizedFrame:
    """A frame whose body was longer than the limit; its body was skipped unread."""

    kind: Kind
    id: int
    length: int


def encode_frame(kind: Kind, request_id: int, body: bytes = b"", credit: int = 0) -> bytes:
    """One frame's bytes."""
    return HEADER.pack(len(body), request_id, kind, 0, 0, credit) + body


class FrameDecoder:
    """Feed it bytes as they arrive; it returns the frames completed so far, in order."""

    def __init__(self, body_bytes_max: int = FRAME_BODY_BYTES_MAX) -> None:
        self.body_bytes_max = body_bytes_max
        self._buf = bytearray()
        self._skip = 0  # bytes of an oversized body still to discard

    @property
    def buffered(self) -> int:
        """Bytes held for a frame not yet complete (at most a header and a body's limit)."""
        return len(self._buf)

    def feed(self, data: bytes, max_frames: int | None = None) -> list[Frame | OversizedFrame]:
        """The frames completed so far; with ``max_frames``, at most that many, the rest stay
        buffered for the next call (``feed(b"", n)`` goes on with them)."""
        if self._skip:
            n = min(self._skip, len(data))
            self._skip -= n
            data = data[n:]
        if self._buf:
            self._buf += data
            buf: bytes | bytearray = self._buf
        else:
            buf = data  # the common case: parse the bytes as they came, no copy into the buffer
        out: list[Frame | OversizedFrame] = []
        pos = 0
        size = len(buf)
        while size - pos >= FRAME_HEADER_BYTES and (max_frames is None or len(out) < max_frames):
            length, rid, kind, flags, reserved, credit = HEADER.unpack_from(buf, pos)
            try:
                k = Kind(kind)
            except ValueError:
                raise ProtocolError(f"unknown frame kind {kind}") from None
            if flags or reserved:
                raise ProtocolError(f"frame flags {flags} and reserved {reserved} must be 0")
            if k in BODYLESS and length:
                raise ProtocolError(f"a {k.name} frame has no body, this one announces {length} bytes")
            if length > self.body_bytes_max:
                out.append(OversizedFrame(k, rid, length))
                pos += FRAME_HEADER_BYTES
                available = size - pos
                if available >= length:
                    pos += length
                    continue
                self._skip = length - available
                pos = size
                break
            end = pos + FRAME_HEADER_BYTES + length
            if size < end:
                break
            out.append(Frame(k, rid, bytes(buf[pos + FRAME_HEADER_BYTES:end]), credit))
            pos = end
        if buf is self._buf:
            if pos:
                del self._buf[:pos]
        elif pos < size:
            self._buf = bytearray(buf[pos:])
        return out
