"""Kolk's asyncio transport (core/protocol/channel.py) end to end on 127.0.0.1, with a small
test handler behind ``channel_server.serve`` and ``ClientConnection`` (or raw frames) in front.

Covered: a round trip; 100 calls multiplexed on one connection and answered out of order; a
deadline that cancels the server's handler; a stream's pushes in order, its credit window and
its END with an error; closing a stream stops the server's feed; a connection lost mid-call;
requests refused before any handler (unknown call, a union member the schema lacks, malformed
bodies, a tiny message claiming a huge list, an oversized frame) with the connection going
on; the per-connection stream limit, also under concurrent opens; and bytes that are not the
framing, which close that connection only. Fair use (core/protocol/fair_use.py): the stream
limits per identity (on every connection of it) and per server, anonymous peers counted by
address, slots and bytes given back however a stream ends, and an identity's unread bytes
bounded while another identity's stream runs. No remote traceback: a handler or feed that
raises is answered ``internal`` in one line with a reference the server's log has. Every test
runs under plain ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import re
import struct
from typing import Any, AsyncIterator, Awaitable, Callable

import pytest

from kolk.protocol import limits as L
from kolk.protocol.channel import SPU, CallRejected, ConnectionLost, StreamEnded
from kolk.protocol.channel_client import ClientConnection, ClientStream
from kolk.protocol.channel_server import ServerStream, serve
from kolk.protocol.fair_use import FairUse, FairUseLimits
from kolk.protocol.framing import HEADER, Frame, FrameDecoder, Kind, OversizedFrame, encode_frame
from kolk.protocol.messages import decode, encode, schema, which

BOOM = "it broke\nTraceback (most recent call last):\n  File \"secret.py\", line 1, in <module>"
TEST_TIMEOUT_S = 15.0
WAIT_S = 5.0  # how long a test waits for something that should happen at once


def run(test: Callable[[], Awaitable[None]]) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(TEST_TIMEOUT_S):
            await test()

    asyncio.run(bounded())


async def until(event: asyncio.Event, what: str) -> None:
    try:
        async with asyncio.timeout(WAIT_S):
            await event.wait()
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


# ---------------------------------------------------------------- the test handler


class Handler:
    """One per connection. ``produce`` answers len(records) (``topic="park"``: only once
    ``timeoutMs`` requests are parked and the test releases them); ``fetch`` waits until
    released; ``stream`` feeds ``offset`` pushes of ``partition`` bytes each within its
    credit, then ends with a smartModule error. No ``offsets``: that call is unknown here."""

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.closed = asyncio.Event()
        # produce
        self.parked: dict[int, asyncio.Future[None]] = {}
        self.all_parked = asyncio.Event()
        # fetch
        self.fetch_entered = asyncio.Event()
        self.release_fetch = asyncio.Event()
        self.fetch_finished = asyncio.Event()
        self.fetch_cancelled = False
        # stream
        self.stream_gate: asyncio.Event | None = None
        self.streams_entered = 0
        self.starved = asyncio.Event()
        self.credit_when_starved: list[int] = []
        self.pushed = 0
        self.push_sizes: list[int] = []
        self.feed_stopped = asyncio.Event()
        self.feed_cancelled = False
        self.streams: list[ServerStream] = []

    def connection_closed(self) -> None:
        self.closed.set()

    async def produce(self, req: Any, out: Any) -> None:
        n = len(req.records)
        if req.topic == "park":
            fut = asyncio.get_running_loop().create_future()
            self.parked[n] = fut
            if len(self.parked) == req.timeoutMs:
                self.all_parked.set()
            await fut
        if req.topic == "boom":
            raise RuntimeError(BOOM)
        if req.topic == "timed":
            # What the SPU's produce does while it waits for acks: asyncio.timeout needs the
            # handler to run inside a Task on Python 3.11.
            async with asyncio.timeout(WAIT_S):
                await asyncio.sleep(0)
        out.baseOffset = n
        out.lastOffset = req.partition
        out.result.ok = True

    async def fetch(self, req: Any, out: Any) -> None:
        self.fetch_entered.set()
        try:
            await self.release_fetch.wait()
            out.records = b"released"
            out.result.ok = True
        except asyncio.CancelledError:
            self.fetch_cancelled = True
            raise
        finally:
            self.fetch_finished.set()

    async def stream(self, req: Any, out: Any, stream: ServerStream) -> Any:
        self.streams_entered += 1
        self.streams.append(stream)
        if self.stream_gate is not None:
            await self.stream_gate.wait()
        out.result.ok = True
        if req.topic == "idle":
            return self._idle()
        if req.topic == "boom":
            return self._boom()
        if req.topic == "room":
            return self._roomy(stream, int(req.offset), int(req.partition))
        return self._feed(stream, int(req.offset), int(req.partition))

    async def _idle(self) -> None:
        await asyncio.Event().wait()  # a stream that stays open and pushes nothing

    async def _boom(self) -> None:
        await asyncio.sleep(0)
        raise KeyError(BOOM)

    async def _roomy(self, stream: ServerStream, count: int, size: int) -> None:
        """What the SPU's feed does: push only within room (credit and held-bytes limits)."""
        for i in range(count):
            while stream.room() < size + 64:
                self.starved.set()
                await stream.wait_for_room(WAIT_S)
            push = schema.Push.new_message()
            push.init("stream").records = b"r" * size
            self.push_sizes.append(await stream.push(push))
            self.pushed += 1
        await asyncio.Event().wait()

    async def _feed(self, stream: ServerStream, count: int, size: int) -> tuple[str, str]:
        try:
            for i in range(count):
                while stream.credit <= 0:
                    self.credit_when_starved.append(stream.credit)
                    self.starved.set()
                    stream.granted.clear()
                    await stream.granted.wait()
                push = schema.Push.new_message()
                item = push.init("stream")
                item.records = bytes([i % 256]) * size
                item.nextOffset = i + 1
                self.push_sizes.append(await stream.push(push))
                self.pushed += 1
            return ("smartModule", "boom")
        except asyncio.CancelledError:
            self.feed_cancelled = True
            raise
        finally:
            self.feed_stopped.set()


class Server:
    def __init__(self, port: int, handlers: list[Handler]) -> None:
        self.port = port
        self.handlers = handlers
        self.address = f"127.0.0.1:{port}"

    async def connect(self) -> tuple[ClientConnection, Handler]:
        """A client connection and the server's handler for it (known after one round trip)."""
        conn = await ClientConnection.open(SPU, self.address, 2)
        await conn.call("produce", WAIT_S, records=b"ping")
        return conn, self.handlers[-1]


@dataclasses.dataclass
class GivenPeer:
    """What ``peer_of`` tells the handler factory here: the transport, and the identity the
    test gives the next connection (as a TLS identity would be)."""

    transport: Any
    identity: str
    address: str = "127.0.0.1"
    node: bool = False


@contextlib.asynccontextmanager
async def spu_server(fair_use: FairUse | None = None, identities: list[str] | None = None) -> AsyncIterator[Server]:
    """A test server; with ``identities``, each new connection takes the next one as its peer's identity."""
    handlers: list[Handler] = []
    names = collections.deque(identities or [])

    def make_handler(peer: GivenPeer) -> Handler:
        h = Handler(peer.transport)
        handlers.append(h)
        return h

    def peer_of(transport: Any) -> GivenPeer:
        return GivenPeer(transport, names.popleft() if names else "anonymous")

    server = await serve(SPU, make_handler, "127.0.0.1", 0, peer_of=peer_of, fair_use=fair_use)
    try:
        yield Server(server.sockets[0].getsockname()[1], handlers)
    finally:
        server.close()
        for h in handlers:
            h.transport.abort()
        await server.wait_closed()


class Raw:
    """A client that speaks frames by hand."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = FrameDecoder()
        self.frames: collections.deque[Frame | OversizedFrame] = collections.deque()

    @classmethod
    async def open(cls, port: int) -> "Raw":
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    def send(self, kind: Kind, rid: int, body: bytes = b"", credit: int = 0) -> None:
        self.writer.write(encode_frame(kind, rid, body, credit))

    async def frame(self) -> Frame | OversizedFrame:
        async with asyncio.timeout(WAIT_S):
            while not self.frames:
                data = await self.reader.read(1 << 16)
                if not data:
                    raise EOFError("the server closed the connection")
                self.frames.extend(self.decoder.feed(data))
        return self.frames.popleft()

    async def response(self, rid: int) -> tuple[str, Any]:
        """The next frame, which must answer ``rid``: (its member's name, the member)."""
        f = await self.frame()
        assert isinstance(f, Frame) and f.kind == Kind.RESPONSE and f.id == rid, f
        env = decode(schema.SpuResponse, f.body)
        name = which(env)
        return name, getattr(env, name)

    async def call_produce(self, rid: int, records: bytes) -> int:
        self.send(Kind.REQUEST, rid, produce_body(records))
        name, out = await self.response(rid)
        assert name == "produce" and out.result.ok
        return int(out.baseOffset)

    async def closed_by_server(self) -> bool:
        """True once the server has closed this connection (EOF or reset)."""
        try:
            async with asyncio.timeout(WAIT_S):
                while await self.reader.read(1 << 16):
                    pass
        except (ConnectionResetError, BrokenPipeError):
            pass
        return True

    def close(self) -> None:
        self.writer.close()


def produce_body(records: bytes, topic: str = "t") -> bytes:
    env = schema.SpuRequest.new_message()
    p = env.init("produce")
    p.topic = topic
    p.records = records
    return encode(env)


def rejected(exc_info: pytest.ExceptionInfo[CallRejected]) -> str:
    return str(exc_info.value.error.code)


# ---------------------------------------------------------------- calls


def test_a_call_round_trip() -> None:
    async def test() -> None:
        async with spu_server() as srv:
            conn = await ClientConnection.open(SPU, srv.address, 2)
            out = await conn.call("produce", WAIT_S, topic="t", partition=7, records=b"abc")
            assert out.result.ok and out.baseOffset == 3 and out.lastOffset == 7
            conn.close()

    run(test)


def test_a_handler_may_use_asyncio_timeout() -> None:
    async def test() -> None:
        async with spu_server() as srv:
            conn = await ClientConnection.open(SPU, srv.address, 2)
            out = await conn.call("produce", WAIT_S, topic="timed", partition=1, records=b"abcd")
            assert out.result.ok and out.baseOffset == 4
            conn.close()

    run(test)


def test_100_concurrent_calls_on_one_connection_get_their_own_answers() -> None:
    async def test() -> None:
        async with spu_server() as srv:
            conn, handler = await srv.connect()
            done_order: list[int] = []

            async def one(i: int) -> int:
                out = await conn.call("produce", WAIT_S, topic="park", records=b"r" * i, partition=i, timeoutMs=100)
                done_order.append(i)
                assert out.lastOffset == i
                return int(out.baseOffset)

            calls = [asyncio.create_task(one(i)) for i in range(100)]
            await until(handler.all_parked, "100 requests in the handler at once")
            assert not any(c.done() for c in calls)
            for i in reversed(range(100)):  # answer them in the reverse order
                handler.parked[i].set_result(None)
            assert await asyncio.gather(*calls) == list(range(100))
            assert sorted(done_order) == list(range(100)) and done_order != sorted(done_order)
            conn.close()

    run(test)


def test_a_call_past_its_deadline_times_out_and_cancels_the_handler() -> None:
    async def test() -> None:
        async with spu_server() as srv:
            conn, handler = await srv.connect()
            with pytest.raises(TimeoutError):
                await conn.call("fetch", 0.2, topic="t")
            assert handler.fetch_entered.is_set()
            await until(handler.fetch_finished, "the slow fetch to be cancelled")
            assert handler.fetch_cancelled
            assert not handler.release_fetch.is_set()
            out = await conn.call("produce", WAIT_S, records=b"12345")
            assert out.baseOffset == 5
            conn.close()

    run(test)


def test_a_connection_lost_mid_call_fails_the_call() -> None:
    async def test() -> None:
        async with spu_server() as srv:
            conn, handler = await srv.connect()
            call = asyncio.create_task(conn.call("fetch", 30, topic="t"))
            await until(handler.fetch_entered, "the fetch to reach the handler")
            handler.transport.close()
            with pytest.raises(ConnectionLost) as e:
                await call
            assert e.value.sent
            await until(handler.fetch_finished, "the server to stop the fetch")
            assert handler.fetch_cancelled and handler.closed.is_set()
            assert conn.is_closed
            with pytest.raises(ConnectionLost) as e:
                await conn.call("produce", WAIT_S, records=b"x")
            assert not e.value.sent

    run(test)


def test_an_unknown_call_is_rejected_and_the_connection_goes_on() -> None:
    async def test() -> None:
        async with spu_server() as srv:
            conn, _ = await srv.connect()
            with pytest.raises(CallRejected) as e:
                await conn.call("offsets", WAIT_S, topic="t")
            assert rejected(e) == "unknownCall"
            assert "offsets" in e.value.error.message
            assert (await conn.call("produce", WAIT_S, records=b"xy")).baseOffset == 2
            conn.close()

    run(test)


def test_a_union_member_the_schema_lacks_is_rejected_malformed() -> None:
    async def test() -> None:
        async with spu_server() as srv:
            raw = await Raw.open(srv.port)
            env = schema.SpuRequest.new_message()
            env.init("identify")
            body = bytearray(encode(env))
            struct.pack_into("<H", body, 16, 99)  # the discriminant, in the root's data word
            raw.send(Kind.REQUEST, 1, bytes(body))
            name, err = await raw.response(1)
            assert name == "rejected" and err.code == "malformed"
            assert await raw.call_produce(2, b"abc") == 3
            raw.close()

    run(test)


def _bad_bodies() -> dict[str, bytes]:
    good = produce_body(b"data", topic="abcd")
    utf8 = bytearray(good)
    i = utf8.index(b"abcd")
    utf8[i:i + 2] = b"\xff\xfe"
    root = bytearray(good)
    root[24:32] = struct.pack("<Q", (0x1000000 << 2) | (2 << 32))  # the produce struct, far past the segment
    return {"invalid UTF-8 in the topic": bytes(utf8), "a member pointer out of bounds": bytes(root),
            "no segment table": b"\x01\x02\x03", "random words": b"\0\0\0\0\x02\0\0\0" + b"\xab" * 16}


@pytest.mark.parametrize("what", list(_bad_bodies()))
def test_a_malformed_body_is_rejected_malformed_and_the_connection_goes_on(what: str) -> None:
    async def test() -> None:
        async with spu_server() as srv:
            raw = await Raw.open(srv.port)
            raw.send(Kind.REQUEST, 9, _bad_bodies()[what])
            name, err = await raw.response(9)
            assert name == "rejected" and err.code == "malformed", (name, err)
            assert await raw.call_produce(10, b"ab") == 2
            raw.close()

    run(test)


def _claiming_chain(count: int) -> bytes:
    """A SpuRequest.produce whose smartmodules list claims ``count`` zero-size entries."""
    node = schema.SpuRequest.schema.node.struct
    field = schema.SpuRequest.schema.fields["produce"]
    inner = field.schema.node.struct
    chain_slot = field.schema.fields["smartmodules"].proto.slot.offset
    assert node.dataWordCount == 1 and node.pointerCount == 1 and node.discriminantOffset == 0
    words = [struct.pack("<Q", (1 << 32) | (1 << 48)), struct.pack("<Q", field.proto.discriminantValue),
             struct.pack("<Q", (inner.dataWordCount << 32) | (inner.pointerCount << 48))]
    words += [bytes(8)] * inner.dataWordCount
    for slot in range(inner.pointerCount):
        left = inner.pointerCount - slot - 1  # pointers after this one; the tag follows them
        words.append(struct.pack("<Q", 1 | (left << 2) | (7 << 32)) if slot == chain_slot else bytes(8))
    words.append(struct.pack("<Q", count << 2))
    seg = b"".join(words)
    return struct.pack("<II", 0, len(seg) // 8) + seg


def test_a_tiny_message_claiming_a_huge_list_is_rejected_too_large() -> None:
    async def test() -> None:
        async with spu_server() as srv:
            raw = await Raw.open(srv.port)
            for rid, count in ((1, 3), (2, 1_000_000), (3, 100_000)):
                body = _claiming_chain(count)
                assert len(body) < 300
                raw.send(Kind.REQUEST, rid, body)
                name, out = await raw.response(rid)
                if count == 3:  # small enough: the encoding is right, the handler ran
                    assert name == "produce" and out.result.ok
                    continue
                assert name == "rejected" and out.code == "tooLarge", (name, out)
                assert "ProduceRequest.smartmodules" in out.message and str(L.CHAIN_STAGES_MAX) in out.message
                if count == 100_000:
                    assert "100000" in out.message
            assert await raw.call_produce(4, b"abcd") == 4
            raw.close()

    run(test)


def test_an_oversized_frame_is_rejected_and_the_connection_goes_on() -> None:
    async def test() -> None:
        async with spu_server() as srv:
            raw = await Raw.open(srv.port)
            length = L.FRAME_BODY_BYTES_MAX + 1
            raw.writer.write(HEADER.pack(length, 5, Kind.REQUEST, 0, 0, 0))
            # answered on its header alone, before its body is sent
            name, err = await raw.response(5)
            assert name == "rejected" and err.code == "tooLarge"
            assert str(length) in err.message
            chunk = b"\x99" * (1 << 20)  # bytes that would break the framing if they were parsed
            sent = 0
            while sent < length:
                n = min(len(chunk), length - sent)
                raw.writer.write(chunk[:n])
                await raw.writer.drain()
                sent += n
            assert await raw.call_produce(6, b"after") == 5
            raw.close()

    run(test)


# ---------------------------------------------------------------- streams


def test_a_stream_delivers_pushes_in_order_and_ends_with_its_error() -> None:
    async def test() -> None:
        async with spu_server() as srv:
            conn, handler = await srv.connect()
            out, stream = await conn.open_stream("stream", 1 << 20, WAIT_S, topic="t", offset=50, partition=100)
            assert out.result.ok
            got = []
            with pytest.raises(StreamEnded) as e:
                while True:
                    push = await stream.next(WAIT_S)
                    got.append(int(push.nextOffset))
                    assert push.records == bytes([len(got) - 1]) * 100
            assert got == list(range(1, 51))
            assert e.value.error is not None
            assert e.value.error.code == "smartModule" and e.value.error.message == "boom"
            with pytest.raises(StreamEnded):  # and it stays ended
                await stream.next(WAIT_S)
            assert (await conn.call("produce", WAIT_S, records=b"x")).baseOffset == 1
            conn.close()

    run(test)


def test_a_consumer_that_does_not_read_holds_at_most_its_window_and_one_push() -> None:
    async def test() -> None:
        async with spu_server() as srv:
            conn, handler = await srv.connect()
            window, count = 1000, 40
            out, stream = await conn.open_stream("stream", window, WAIT_S, topic="t", offset=count, partition=200)
            assert out.result.ok
            await until(handler.starved, "the server to run out of credit")
            # a round trip: its answer was written after every push sent so far
            await conn.call("produce", WAIT_S, records=b"")
            size = handler.push_sizes[0]
            assert set(handler.push_sizes) == {size} and size > 200
            assert stream.pending() == handler.pushed
            assert window <= handler.pushed * size <= window + size
            assert handler.credit_when_starved and all(c <= 0 for c in handler.credit_when_starved)
            # the server waits: another round trip, and nothing more was pushed
            held = handler.pushed
            await conn.call("produce", WAIT_S, records=b"")
            assert handler.pushed == held and stream.pending() == held
            # taking pushes grants credit back, and the stream runs to its end within the window
            got = 0
            with pytest.raises(StreamEnded) as e:
                while True:
                    await stream.next(WAIT_S)
                    got += 1
                    assert stream.pending() * size <= window + size
            assert got == count and e.value.error.code == "smartModule"
            conn.close()

    run(test)


def test_closing_a_stream_cancels_the_servers_feed() -> None:
    async def test() -> None:
        async with spu_server() as srv:
            conn, handler = await srv.connect()
            out, stream = await conn.open_stream("stream", 1, WAIT_S, topic="t", offset=1000, partition=10)
            assert out.result.ok
            await until(handler.starved, "the feed to wait for credit")
            stream.close()
            await until(handler.feed_stopped, "the server to stop the feed")
            assert handler.feed_cancelled
            with pytest.raises(StreamEnded) as e:
                await stream.next(WAIT_S)
            assert e.value.error is None
            stream.close()  # twice is fine
            assert (await conn.call("produce", WAIT_S, records=b"ok")).baseOffset == 2
            conn.close()

    run(test)


def test_a_connection_lost_ends_its_streams() -> None:
    async def test() -> None:
        async with spu_server() as srv:
            conn, handler = await srv.connect()
            _, stream = await conn.open_stream("stream", 1, WAIT_S, topic="t", offset=1000, partition=10)
            await until(handler.starved, "the feed to wait for credit")
            handler.transport.abort()
            await until(handler.feed_stopped, "the server to stop the feed")
            with pytest.raises(Exception) as e:
                while True:
                    await stream.next(WAIT_S)
            assert isinstance(e.value, ConnectionLost)

    run(test)


async def _open_parked(conn: ClientConnection) -> tuple[Any, ClientStream]:
    # window 1: one push, then the feed waits for credit for good
    return await conn.open_stream("stream", 1, WAIT_S, topic="t", offset=1000, partition=10)


def test_more_streams_than_the_limit_are_refused() -> None:
    async def test() -> None:
        async with spu_server() as srv:
            conn, handler = await srv.connect()
            streams = []
            for _ in range(L.STREAMS_PER_CONNECTION_MAX):
                out, s = await _open_parked(conn)
                assert out.result.ok
                streams.append(s)
            with pytest.raises(CallRejected) as e:
                await _open_parked(conn)
            assert rejected(e) == "tooManyStreams" and e.value.error.retriable
            assert e.value.error.message == (f"this connection already holds {L.STREAMS_PER_CONNECTION_MAX} of "
                                             f"{L.STREAMS_PER_CONNECTION_MAX} streams; close one or open another "
                                             "connection")
            # calls still work, and closing a stream frees its place
            assert (await conn.call("produce", WAIT_S, records=b"abc")).baseOffset == 3
            streams.pop().close()
            out, s = await _open_parked(conn)
            assert out.result.ok
            with pytest.raises(CallRejected):
                await _open_parked(conn)
            # another connection has its own streams
            other, _ = await srv.connect()
            out, _ = await _open_parked(other)
            assert out.result.ok
            conn.close()
            other.close()

    run(test)


def test_the_stream_limit_holds_for_streams_opened_at_once() -> None:
    async def test() -> None:
        async with spu_server() as srv:
            conn, handler = await srv.connect()
            handler.stream_gate = asyncio.Event()  # the handler answers only when the test says
            extra = 6
            opens = [asyncio.create_task(_open_parked(conn)) for _ in range(L.STREAMS_PER_CONNECTION_MAX + extra)]
            # the ones over the limit are refused at once, while the others are still being opened
            refused: set[asyncio.Task[Any]] = set()
            try:
                async with asyncio.timeout(WAIT_S):
                    while len(refused) < extra:
                        done, _ = await asyncio.wait(set(opens) - refused, return_when=asyncio.FIRST_COMPLETED)
                        refused |= done
            except TimeoutError:
                raise AssertionError(f"{handler.streams_entered} streams reached the handler, "
                                     f"{len(refused)} were refused") from None
            assert len(refused) == extra
            for t in refused:
                assert isinstance(t.exception(), CallRejected)
                assert t.exception().error.code == "tooManyStreams"
            assert handler.streams_entered == L.STREAMS_PER_CONNECTION_MAX
            handler.stream_gate.set()
            results = await asyncio.gather(*(t for t in opens if t not in refused))
            assert all(out.result.ok for out, _ in results)
            with pytest.raises(CallRejected):
                await _open_parked(conn)
            conn.close()

    run(test)


def test_credit_past_the_window_limit_closes_the_connection() -> None:
    async def test() -> None:
        async with spu_server() as srv:
            raw = await Raw.open(srv.port)
            env = schema.SpuRequest.new_message()
            s = env.init("stream")
            s.topic, s.windowBytes = "idle", L.STREAM_WINDOW_BYTES_MAX
            raw.send(Kind.REQUEST, 1, encode(env))
            name, out = await raw.response(1)
            assert name == "stream" and out.result.ok
            raw.send(Kind.CREDIT, 1, b"", 1)
            assert await raw.closed_by_server()

    run(test)


# ---------------------------------------------------------------- not the framing


def _violations() -> dict[str, Callable[[Raw], None]]:
    def garbage(raw: Raw) -> None:
        raw.writer.write(HEADER.pack(0, 1, 0x99, 0, 0, 0) + b"\xde\xad\xbe\xef" * 8)

    def flags(raw: Raw) -> None:
        raw.writer.write(HEADER.pack(0, 1, Kind.CANCEL, 1, 0, 0))

    def cancel_with_body(raw: Raw) -> None:
        raw.writer.write(HEADER.pack(4, 1, Kind.CANCEL, 0, 0, 0) + b"abcd")

    def response_from_client(raw: Raw) -> None:
        raw.send(Kind.RESPONSE, 1, produce_body(b""))

    def reused_id(raw: Raw) -> None:
        env = schema.SpuRequest.new_message()
        env.init("fetch")
        body = encode(env)
        raw.send(Kind.REQUEST, 7, body)  # waits in the handler
        raw.send(Kind.REQUEST, 7, body)

    return {"garbage": garbage, "flags": flags, "cancel with a body": cancel_with_body,
            "a RESPONSE from a client": response_from_client, "a reused request id": reused_id}


@pytest.mark.parametrize("what", list(_violations()))
def test_bytes_that_are_not_the_framing_close_that_connection_only(what: str) -> None:
    async def test() -> None:
        async with spu_server() as srv:
            conn, _ = await srv.connect()
            raw = await Raw.open(srv.port)
            assert await raw.call_produce(1, b"abc") == 3
            _violations()[what](raw)
            assert await raw.closed_by_server()
            raw.close()
            assert not conn.is_closed
            assert (await conn.call("produce", WAIT_S, records=b"still")).baseOffset == 5
            conn.close()

    run(test)


def test_a_client_that_gets_garbage_fails_its_calls() -> None:
    async def test() -> None:
        async def fake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(16)
            writer.write(b"\xff" * 16)
            await writer.drain()

        server = await asyncio.start_server(fake, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        conn = await ClientConnection.open(SPU, f"127.0.0.1:{port}", 2)
        with pytest.raises(ConnectionLost, match="framing"):
            await conn.call("produce", WAIT_S, records=b"x")
        assert conn.is_closed
        server.close()
        await server.wait_closed()

    run(test)


# ---------------------------------------------------------------- fair use (core/protocol/fair_use.py)


def _fair(per_identity: int = 3, total: int = 5, held_per_identity: int = 1 << 20,
          held_total: int = 4 << 20) -> FairUse:
    return FairUse("SPU 9", FairUseLimits(per_identity, total, held_per_identity, held_total))


async def eventually(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` until it holds (a deadline of WAIT_S)."""
    try:
        async with asyncio.timeout(WAIT_S):
            while not condition():
                await asyncio.sleep(0.005)  # polling interval of a condition with a deadline
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def test_the_owner_of_a_peer_is_its_tls_identity_or_its_network() -> None:
    from kolk.protocol.fair_use import owner_of
    from kolk.security.tls import Peer

    assert owner_of(Peer("alice", "10.0.0.7", tls=True)) == "alice"
    assert owner_of(Peer("anonymous", "10.0.0.7")) == "anonymous@10.0.0.0/24"
    assert owner_of(Peer("anonymous", "10.0.0.8", tls=True)) == "anonymous@10.0.0.0/24"  # TLS without a certificate
    assert owner_of(Peer("anonymous", "10.0.1.8")) == "anonymous@10.0.1.0/24"
    assert owner_of(Peer("anonymous", "::ffff:10.0.0.9")) == "anonymous@10.0.0.0/24"  # IPv4-mapped
    assert owner_of(Peer("anonymous", "2001:db8:1:2:aaaa::1")) == "anonymous@2001:db8:1:2::/64"
    assert owner_of(Peer("anonymous", "fe80::1%lo")) == "anonymous@fe80::/64"
    assert owner_of(Peer("anonymous", "/run/kolk.sock")) == "anonymous@/run/kolk.sock"
    assert owner_of(None) == "anonymous@unknown"


def test_the_stream_limits_take_at_least_eight_identities_to_fill_an_spu() -> None:
    from kolk.protocol import limits as L

    assert L.STREAMS_PER_IDENTITY_MAX * L.IDENTITIES_TO_FILL_A_SERVER_MIN <= L.STREAMS_PER_SERVER_MAX
    assert L.IDENTITIES_TO_FILL_A_SERVER_MIN >= 8
    assert FairUseLimits().streams_per_identity == L.STREAMS_PER_IDENTITY_MAX


@pytest.mark.parametrize("limits, message", [
    ((0, 5, 1 << 20, 4 << 20), "streams per identity must be from 1 to the total (5), got 0"),
    ((6, 5, 1 << 20, 4 << 20), "streams per identity must be from 1 to the total (5), got 6"),
    ((3, 5, 1000, 4 << 20), "held bytes per identity must be from 1 MiB to the total (4194304), got 1000"),
    ((3, 5, 8 << 20, 4 << 20), "held bytes per identity must be from 1 MiB to the total (4194304), got 8388608"),
    ((3, 5, 1 << 20, 4 << 20, 0), "connections per identity must be at least 1, got 0"),
])
def test_fair_use_limits_that_make_no_sense_are_refused(limits: tuple[int, ...], message: str) -> None:
    with pytest.raises(ValueError) as e:
        FairUseLimits(*limits)
    assert str(e.value) == message


def test_an_identity_past_its_stream_limit_is_refused_on_every_connection_and_others_still_stream() -> None:
    async def test() -> None:
        fair = _fair()
        async with spu_server(fair, ["admin", "alice", "alice", "bob", "carol"]) as srv:
            _admin, _ = await srv.connect()
            a1, _ = await srv.connect()
            a2, _ = await srv.connect()
            for conn in (a1, a1, a2):
                out, _ = await _open_parked(conn)
                assert out.result.ok
            with pytest.raises(CallRejected) as e:
                await _open_parked(a2)  # another connection of the same identity does not help
            assert rejected(e) == "tooManyStreams" and e.value.error.retriable
            assert e.value.error.message == "identity alice already holds 3 of 3 streams on SPU 9; close one first"
            bob, _ = await srv.connect()
            for _ in range(2):
                out, _ = await _open_parked(bob)
                assert out.result.ok
            carol, _ = await srv.connect()
            with pytest.raises(CallRejected) as e:
                await _open_parked(carol)
            assert rejected(e) == "tooManyStreams"
            assert e.value.error.message == "SPU 9 already serves 5 of 5 streams; try again when some close"
            assert fair.streams == {"alice": 3, "bob": 2}
            a2.close()  # the streams of a closed connection are given back
            await eventually(lambda: fair.streams.get("alice") == 2, "alice's slot to come back")
            out, _ = await _open_parked(carol)
            assert out.result.ok
            for conn in (_admin, a1, bob, carol):
                conn.close()

    run(test)


def test_anonymous_peers_are_counted_by_address() -> None:
    async def test() -> None:
        fair = _fair(per_identity=2)
        async with spu_server(fair) as srv:  # every peer is anonymous, from 127.0.0.1
            c1, _ = await srv.connect()
            c2, _ = await srv.connect()
            await _open_parked(c1)
            await _open_parked(c2)
            with pytest.raises(CallRejected) as e:
                await _open_parked(c2)
            assert e.value.error.message == ("anonymous@127.0.0.0/24 already holds 2 of 2 streams on SPU 9; "
                                             "close one first")
            c1.close()
            c2.close()

    run(test)


def test_every_way_a_stream_ends_gives_its_slot_and_bytes_back() -> None:
    async def test() -> None:
        fair = _fair(per_identity=5)
        async with spu_server(fair, ["alice"] * 3) as srv:
            conn, handler = await srv.connect()
            # ends by itself (END with an error), after pushes the client took
            _, s = await conn.open_stream("stream", 1 << 20, WAIT_S, topic="t", offset=3, partition=10)
            with pytest.raises(StreamEnded):
                while True:
                    await s.next(WAIT_S)
            # closed by the client, holding unread pushes
            _, s = await conn.open_stream("stream", 4000, WAIT_S, topic="t", offset=1000, partition=100)
            await eventually(lambda: fair.held.get("alice", 0) > 0, "pushes to be held")
            s.close()
            await eventually(lambda: not fair.streams and not fair.held, "the closed stream to be given back")
            # the connection lost, with one stream open and one still being opened
            lost, lost_handler = await srv.connect()
            await _open_parked(lost)
            lost_handler.stream_gate = asyncio.Event()
            opening = asyncio.create_task(_open_parked(lost))
            await eventually(lambda: lost_handler.streams_entered == 2, "the second open to reach the handler")
            assert fair.streams == {"alice": 2}
            lost_handler.transport.abort()
            with pytest.raises(ConnectionLost):
                await opening
            await eventually(lambda: not fair.streams and fair.streams_total == 0, "every slot to come back")
            assert fair.held == {} and fair.held_total == 0 and not fair._waiting
            conn.close()

    run(test)


def test_an_identitys_unread_bytes_are_bounded_and_another_identity_still_gets_its_pushes() -> None:
    async def test() -> None:
        limit, size = 1 << 20, 100_000
        fair = _fair(per_identity=10, total=20, held_per_identity=limit, held_total=4 << 20)
        async with spu_server(fair, ["alice", "alice", "bob"]) as srv:
            a1, h1 = await srv.connect()
            a2, h2 = await srv.connect()
            # alice: two streams on two connections, each with a window of 4 MiB, never read
            _, s1 = await a1.open_stream("stream", 4 << 20, WAIT_S, topic="room", offset=100, partition=size)
            _, s2 = await a2.open_stream("stream", 4 << 20, WAIT_S, topic="room", offset=100, partition=size)
            await eventually(lambda: fair.room("alice") < size + 64 and h1.starved.is_set() and h2.starved.is_set(),
                             "alice's streams to reach her held-bytes limit")
            held = fair.held["alice"]
            push = h1.push_sizes[0]
            assert held == (h1.pushed + h2.pushed) * push and limit - push < held <= limit
            # bob is not held up by alice: his stream runs to its end at once
            bob, hb = await srv.connect()
            _, sb = await bob.open_stream("stream", 4 << 20, WAIT_S, topic="room", offset=30, partition=size)
            for _ in range(30):
                await sb.next(WAIT_S)
            assert hb.pushed == 30
            # alice still waits; once she takes three pushes, her streams push again
            await a1.call("produce", WAIT_S, records=b"")
            assert h1.pushed + h2.pushed == held // push
            for _ in range(3):
                await s1.next(WAIT_S)
            await eventually(lambda: h1.pushed + h2.pushed == held // push + 3, "alice's streams to push again")
            assert fair.held["alice"] <= limit
            for conn in (a1, a2, bob):
                conn.close()

    run(test)


# ---------------------------------------------------------------- no remote traceback


def test_a_handler_that_raises_answers_internal_in_one_line_without_a_traceback(
        caplog: pytest.LogCaptureFixture) -> None:
    pattern = r"internal error in %s: %s \(ref ([0-9a-f]{8}); the SPU's log has the details\)"

    async def test() -> None:
        async with spu_server() as srv:
            conn, _ = await srv.connect()
            with pytest.raises(CallRejected) as e:
                await conn.call("produce", WAIT_S, topic="boom", records=b"x")
            err = e.value.error
            assert err.code == "internal" and not err.retriable
            m = re.fullmatch(pattern % (r"produce \(request \d+\)", "RuntimeError"), err.message)
            assert m, err.message
            refs = [m.group(1)]
            # a stream whose feed raises ends with the same kind of line; the connection goes on
            out, stream = await conn.open_stream("stream", 1000, WAIT_S, topic="boom")
            assert out.result.ok
            with pytest.raises(StreamEnded) as ended:
                await stream.next(WAIT_S)
            assert ended.value.error.code == "internal"
            m = re.fullmatch(pattern % (r"stream \d+", "KeyError"), ended.value.error.message)
            assert m, ended.value.error.message
            refs.append(m.group(1))
            assert (await conn.call("produce", WAIT_S, records=b"ok")).baseOffset == 2
            conn.close()
            # the traceback is in the server's log, under the reference the client got
            for ref in refs:
                records = [r for r in caplog.records if ref in r.getMessage()]
                assert len(records) == 1 and records[0].exc_info is not None

    with caplog.at_level("ERROR", logger="kolk.channel"):
        run(test)


@pytest.mark.parametrize("text, line", [
    ("one line", "one line"),
    ("\n  first\nsecond\n", "first; second"),
    ("it broke\nTraceback (most recent call last):\n  File \"x.py\", line 1\nKeyError: 'secret'", "it broke"),
    ("Traceback (most recent call last):\n  File \"x.py\"", "(no message)"),
    ("x" * 5000, "x" * L.TEXT_CHARS_MAX),
])
def test_an_error_message_travels_as_one_line(text: str, line: str) -> None:
    from kolk.protocol.errors import one_line

    assert one_line(text) == line


def test_a_connection_past_its_identitys_limit_is_told_so_on_its_first_request_and_closed() -> None:
    async def test() -> None:
        fair = FairUse("SPU 9", FairUseLimits(connections_per_identity=2))
        async with spu_server(fair, ["alice", "alice", "alice", "bob", "alice"]) as srv:
            a1, _ = await srv.connect()
            a2, _ = await srv.connect()
            a3 = await ClientConnection.open(SPU, srv.address, WAIT_S)
            with pytest.raises(CallRejected) as e:
                await a3.call("produce", WAIT_S, records=b"x")
            assert rejected(e) == "tooManyConnections" and e.value.error.retriable
            assert e.value.error.message == "identity alice already holds 2 of 2 connections to SPU 9; close one first"
            await eventually(lambda: a3.is_closed, "the refused connection to be closed")
            assert len(srv.handlers) == 2  # it never got a handler
            bob, _ = await srv.connect()  # another identity is not held up
            assert fair.connections == {"alice": 2, "bob": 1}
            a1.close()
            await eventually(lambda: fair.connections.get("alice") == 1, "alice's connection to be given back")
            a4, _ = await srv.connect()  # and alice may connect again
            for conn in (a2, bob, a4):
                conn.close()
            await eventually(lambda: not fair.connections, "every connection to be given back")

    run(test)


def test_node_certificates_are_not_limited_in_connections() -> None:
    async def test() -> None:
        fair = FairUse("SPU 9", FairUseLimits(connections_per_identity=1))
        handlers: list[Handler] = []

        def make_handler(peer: Any) -> Handler:
            handlers.append(Handler(peer.transport))
            return handlers[-1]

        server = await serve(SPU, make_handler, "127.0.0.1", 0, fair_use=fair,
                             peer_of=lambda t: dataclasses.replace(GivenPeer(t, "node"), node=True))
        try:
            port = server.sockets[0].getsockname()[1]
            conns = [await ClientConnection.open(SPU, f"127.0.0.1:{port}", WAIT_S) for _ in range(3)]
            for conn in conns:
                assert (await conn.call("produce", WAIT_S, records=b"ab")).baseOffset == 2
                conn.close()
            assert not fair.connections
        finally:
            server.close()
            for h in handlers:
                h.transport.abort()
            await server.wait_closed()

    run(test)
