"""The Cap'n Proto schema, loaded once, and one message to and from a frame body.

Bodies use Cap'n Proto's standard serialization (a segment table, then the segments). Decoding
reads the segment table itself and hands the segments to pycapnp without copying them, with a
traversal limit proportional to the body's size, so a small message cannot make the reader
walk a large amount of data.
"""

from __future__ import annotations

import os
import struct
from typing import Any

import capnp

from .limits import NESTING_MAX, TRAVERSAL_WORDS_MIN, TRAVERSAL_WORDS_PER_BODY_WORD

SCHEMA_PATH = os.path.join(os.path.dirname(__file__), "kolk.capnp")
schema = capnp.load(SCHEMA_PATH)

SEGMENTS_MAX = 512
_U32 = struct.Struct("<I")


class MalformedMessage(ValueError):
    """A frame body that is not one well-formed Cap'n Proto message."""


def encode(message: Any) -> bytes:
    """A message builder's bytes (standard serialization)."""
    return message.to_bytes()


def segments_of(body: bytes) -> list[memoryview]:
    """The segments of a standard-serialization message, as views into ``body``."""
    n = len(body)
    if n < 8:
        raise MalformedMessage(f"a message needs at least 8 bytes, this one has {n}")
    count = _U32.unpack_from(body, 0)[0] + 1
    if count > SEGMENTS_MAX:
        raise MalformedMessage(f"a message announces {count} segments, more than {SEGMENTS_MAX}")
    table = 4 + 4 * count
    table += table % 8
    if n < table:
        raise MalformedMessage("the segment table is cut short")
    sizes = struct.unpack_from(f"<{count}I", body, 4)
    view = memoryview(body)
    out = []
    pos = table
    for words in sizes:
        end = pos + 8 * words
        if end > n:
            raise MalformedMessage(f"a segment of {words} words runs past the end of the {n}-byte message")
        out.append(view[pos:end])
        pos = end
    if pos != n:
        raise MalformedMessage(f"{n - pos} bytes follow the message's last segment")
    return out


def decode(struct_type: Any, body: bytes) -> Any:
    """The root ``struct_type`` reader of ``body``; MalformedMessage if it is not one."""
    segments = segments_of(body)
    try:
        return struct_type.from_segments(segments, traversal_limit_in_words=max(TRAVERSAL_WORDS_MIN, len(body) // 8 *
                                                                                TRAVERSAL_WORDS_PER_BODY_WORD),
                                         nesting_limit=NESTING_MAX)
    except capnp.KjException as e:
        raise MalformedMessage(f"not a well-formed message: {str(e).splitlines()[0]}") from None


def which(reader: Any) -> str:
    """The name of a union's member that is set; MalformedMessage for one this schema lacks."""
    try:
        return reader._which_str()
    except (capnp.KjException, ValueError) as e:
        raise MalformedMessage(f"unknown call or push: {str(e).splitlines()[0]}") from None


def member(reader: Any, name: str) -> Any:
    """A union's member ``name`` (see :func:`which`); MalformedMessage if its pointer is not
    well formed (pycapnp reads pointers lazily, so ``decode`` cannot have checked it)."""
    try:
        return getattr(reader, name)
    except capnp.KjException as e:
        raise MalformedMessage(f"{name} cannot be read: {str(e).splitlines()[0]}") from None
