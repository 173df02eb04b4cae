"""WriteCoalescer: pycapnp's per-piece writes leave as one write per loop pass, bounded."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kolk.write_coalescer import WriteCoalescer


class RecordingTransport:
    """The transport end of the wrapper: keeps what was written, in order."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closing = False
        self.eof = False

    def write(self, data: bytes) -> None:
        assert not self.closing, "write after close"
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def write_eof(self) -> None:
        self.eof = True

    def get_extra_info(self, name: str) -> Any:
        return {"peername": ("127.0.0.1", 1)}.get(name)


async def one_pass() -> None:
    await asyncio.sleep(0)  # lets the loop run what call_soon scheduled


def test_pieces_written_in_one_pass_leave_as_one_write() -> None:
    async def body() -> None:
        t = RecordingTransport()
        w = WriteCoalescer(t, asyncio.get_running_loop())
        w.write(b"\x00" * 8)  # a segment table
        w.write(b"segment")
        assert t.writes == [] and w.pending_bytes == 15
        await one_pass()
        assert t.writes == [b"\x00" * 8 + b"segment"]
        assert w.pending_bytes == 0

    asyncio.run(body())


@given(st.lists(st.binary(min_size=1, max_size=300), min_size=1, max_size=60), st.integers(min_value=1, max_value=1000))
def test_bytes_arrive_in_order_and_what_waits_stays_under_the_bound(pieces: list[bytes], bound: int) -> None:
    async def body() -> None:
        t = RecordingTransport()
        w = WriteCoalescer(t, asyncio.get_running_loop(), flush_bytes=bound)
        for p in pieces:
            w.write(p)
            assert w.pending_bytes < bound
        await one_pass()
        assert b"".join(t.writes) == b"".join(pieces)

    asyncio.run(body())


def test_a_large_piece_goes_at_once_after_what_waited() -> None:
    async def body() -> None:
        t = RecordingTransport()
        w = WriteCoalescer(t, asyncio.get_running_loop(), flush_bytes=1024)
        w.write(b"head")
        w.write(b"x" * 4096)
        assert t.writes == [b"head", b"x" * 4096]  # not joined: a large payload is never copied

    asyncio.run(body())


def test_close_and_eof_write_what_waits_first() -> None:
    async def body() -> None:
        t = RecordingTransport()
        w = WriteCoalescer(t, asyncio.get_running_loop())
        w.write(b"last words")
        w.write_eof()
        assert t.writes == [b"last words"] and t.eof
        w.write(b"bye")
        w.close()
        assert t.writes == [b"last words", b"bye"] and t.closing
        await one_pass()  # the scheduled flush finds nothing left and writes nothing
        assert t.writes == [b"last words", b"bye"]

    asyncio.run(body())


def test_nothing_is_written_to_a_transport_already_closing() -> None:
    async def body() -> None:
        t = RecordingTransport()
        w = WriteCoalescer(t, asyncio.get_running_loop())
        w.write(b"late")
        t.closing = True  # the connection was lost before the loop pass ended
        await one_pass()
        assert t.writes == []

    asyncio.run(body())


def test_other_attributes_are_the_transports_own() -> None:
    async def body() -> None:
        t = RecordingTransport()
        w = WriteCoalescer(t, asyncio.get_running_loop())
        assert w.get_extra_info("peername") == ("127.0.0.1", 1)
        assert w.is_closing() is False

    asyncio.run(body())


def test_a_bound_that_is_not_positive_is_refused() -> None:
    async def body() -> None:
        with pytest.raises(ValueError, match="flush_bytes must be positive, not 0"):
            WriteCoalescer(RecordingTransport(), asyncio.get_running_loop(), flush_bytes=0)

    asyncio.run(body())
