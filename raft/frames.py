"""A pure checker of pysyncobj's frames: a 4-byte length (struct ``'i'``, native order) and
that many bytes. Fed the byte stream in pieces split anywhere, it raises as soon as a frame's
length prefix is complete and announces a size outside 1..cap, before any byte of the frame
is kept. It keeps no bytes itself: at most the 3 bytes of an unfinished prefix."""

from __future__ import annotations

import struct

from .limits import FRAME_HEADER_BYTES

_LENGTH = struct.Struct("i")  # pysyncobj's TcpConnection: struct.pack('i', len(data))
assert _LENGTH.size == FRAME_HEADER_BYTES


class BadFrame(Exception):
    """A frame whose announced size is not in 1..cap."""

    def __init__(self, announced: int, cap: int) -> None:
        what = "larger than the cap" if announced > cap else "not a positive size"
        super().__init__(f"a frame announced {announced} bytes, {what} of {cap}")
        self.announced = announced
        self.cap = cap


class FrameChecker:
    """Checks one direction of one connection. ``feed`` each piece as it arrives."""

    def __init__(self, cap: int) -> None:
        if cap < 1:
            raise ValueError("the frame cap must be at least 1 byte")
        self.cap = cap
        self.frames = 0  # frames seen whole
        self._prefix = b""  # an unfinished length prefix
        self._body_left = 0  # bytes of the current frame still to come

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Account for ``data``; raises :class:`BadFrame` at the first bad length prefix."""
        n = len(data)
        pos = 0
        while pos < n:
            if self._body_left:
                take = min(self._body_left, n - pos)
                pos += take
                self._body_left -= take
                if not self._body_left:
                    self.frames += 1
                continue
            take = min(FRAME_HEADER_BYTES - len(self._prefix), n - pos)
            self._prefix += bytes(data[pos:pos + take])
            pos += take
            if len(self._prefix) < FRAME_HEADER_BYTES:
                return
            (announced,) = _LENGTH.unpack(self._prefix)
            self._prefix = b""
            if not 1 <= announced <= self.cap:
                raise BadFrame(announced, self.cap)
            self._body_left = announced

    @property
    def in_frame(self) -> bool:
        """Whether the stream stopped inside a frame or its prefix."""
        return bool(self._body_left or self._prefix)
