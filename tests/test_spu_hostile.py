"""Hostile requests on an SPU's port, against real SC and SPU processes (tests/dataplane_cluster.py).

Each is refused for what it is, without the SPU spending memory or time on it, and hurts
nobody else: a tiny message claiming a million-entry list, a SmartModule chain over the
limit, a frame announcing a 1 GiB body, and bytes that are not Kolk's framing. Every check
ends with the SPU alive and other connections served.
"""

from __future__ import annotations

import asyncio
import os
import struct
import sys
import time
from typing import Any

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from dataplane_cluster import DataPlaneCluster, rss_bytes, run_async, wait_until  # noqa: E402
from kolk.client.admin import AdminClient  # noqa: E402
from kolk.protocol.channel import CallRejected  # noqa: E402
from kolk.protocol.channel_client import ClientConnection  # noqa: E402
from kolk.protocol.framing import HEADER, Frame, FrameDecoder, Kind, encode_frame  # noqa: E402
from kolk.protocol.limits import CHAIN_STAGES_MAX, PARTITION_STATUS_MAX  # noqa: E402
from kolk.protocol.messages import decode, which  # noqa: E402
from kolk.segments import build_batch  # noqa: E402
from kolk.transport import SPU, connect  # noqa: E402
from kolk.protocol.wire import schema  # noqa: E402

TOPIC = "hostile"
GIB = 1 << 30
MIB = 1 << 20


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One SC and one SPU leading ``hostile-0``, shared by the tests (none of them kills anything)."""
    c = DataPlaneCluster(str(tmp_path_factory.mktemp("hostile")), spus=1)
    try:
        c.start()
        run_async(lambda: _create_topic(c))
        yield c
    finally:
        c.close()


async def _create_topic(c: DataPlaneCluster) -> None:
    admin = AdminClient(c.sc_addresses, timeout_s=20)
    try:
        await admin.create_topic(TOPIC, 1, 1)
    finally:
        await admin.close()
    conn = await connect(SPU, c.spus[1].address, None, 5)
    try:
        await wait_until(lambda: _offsets_ok(conn), 20, f"SPU 1 to lead {TOPIC}-0")
    finally:
        conn.close()


async def _offsets_ok(conn: ClientConnection) -> bool:
    return bool((await conn.call("offsets", 5, topic=TOPIC, partition=0)).result.ok)


async def produce(conn: ClientConnection, value: bytes, **fields: Any) -> Any:
    return await conn.call("produce", 10, topic=TOPIC, partition=0, acks="leader",
                           records=build_batch([(None, value)]), timeoutMs=5000, **fields)


class RawConnection:
    """A bare TCP connection speaking the framing by hand, to send what no client would."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = FrameDecoder()
        self.pending: list[Frame] = []

    @classmethod
    async def open(cls, port: int) -> "RawConnection":
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def answer(self, request_id: int, timeout_s: float = 5.0) -> tuple[str, Any]:
        """The RESPONSE to ``request_id``: (SpuResponse member, its struct)."""
        async with asyncio.timeout(timeout_s):
            while True:
                for f in self.pending:
                    if f.kind == Kind.RESPONSE and f.id == request_id:
                        self.pending.remove(f)
                        env = decode(schema.SpuResponse, f.body)
                        member = which(env)
                        return member, getattr(env, member)
                data = await self.reader.read(1 << 16)
                assert data, "the SPU closed the connection instead of answering"
                self.pending.extend(f for f in self.decoder.feed(data) if isinstance(f, Frame))

    async def closed_by_server(self, timeout_s: float = 5.0) -> bool:
        """True once the server has closed this connection (EOF or reset)."""
        async with asyncio.timeout(timeout_s):
            while True:
                try:
                    if not await self.reader.read(1 << 16):
                        return True
                except ConnectionError:
                    return True

    def close(self) -> None:
        self.writer.close()


def offsets_request(topic: str) -> bytes:
    env = schema.SpuRequest.new_message()
    env.init("offsets").topic = topic
    return env.to_bytes()


def partition_status_claiming(entries: int) -> bytes:
    """An SpuRequest.partitionStatus (48 bytes) whose ``partitions`` list claims ``entries``
    elements of zero words each: an INLINE_COMPOSITE list whose tag announces that many
    structs with no data and no pointers, so the message need not carry any of them."""
    words = [
        struct.pack("<iHH", 0, 1, 1),                # root: SpuRequest, 1 data word, 1 pointer
        struct.pack("<HHI", 7, 0, 0),                # the union's discriminant: partitionStatus @7
        struct.pack("<iHH", 0, 0, 1),                # -> PartitionStatusRequest, 0 data, 1 pointer
        struct.pack("<iI", 1, (0 << 3) | 7),         # partitions: INLINE_COMPOSITE list of 0 words
        struct.pack("<iHH", entries << 2, 0, 0),     # its tag: `entries` structs of 0 + 0 words
    ]
    segment = b"".join(words)
    return struct.pack("<II", 0, len(segment) // 8) + segment


def test_tiny_partition_status_claiming_a_million_entries_is_refused_at_once(cluster: DataPlaneCluster) -> None:
    """A 48-byte partitionStatus whose list claims 1,000,000 entries (the limit is
    PARTITION_STATUS_MAX), sent 50 times back to back: each is answered ``rejected`` tooLarge
    naming the field, all within a second, while a produce on another connection succeeds."""
    body = partition_status_claiming(1_000_000)
    assert len(body) <= 200

    async def hostile() -> float:
        raw = await RawConnection.open(cluster.spus[1].port)
        try:
            start = time.monotonic()
            await raw.send(b"".join(encode_frame(Kind.REQUEST, rid, body) for rid in range(1, 51)))
            for rid in range(1, 51):
                member, error = await raw.answer(rid)
                assert member == "rejected", (member, error)
                assert error.code == "tooLarge" and "PartitionStatusRequest.partitions" in error.message, error
                assert not error.retriable
            return time.monotonic() - start
        finally:
            raw.close()

    async def body_() -> None:
        conn = await connect(SPU, cluster.spus[1].address, None, 5)
        try:
            elapsed, produced = await asyncio.gather(hostile(), produce(conn, b"beside the hostile requests"))
            assert elapsed < 1.0, f"50 refusals took {elapsed:.2f} s"
            assert produced.result.ok, produced.result
            # A list just over the limit, sent for real, is refused the same way.
            names = [f"{TOPIC}-{i}" for i in range(PARTITION_STATUS_MAX + 1)]
            with pytest.raises(CallRejected) as info:
                await conn.call("partitionStatus", 10, partitions=names)
            assert info.value.error.code == "tooLarge"
            assert f"more than the limit of {PARTITION_STATUS_MAX}" in info.value.error.message
            ok = await conn.call("partitionStatus", 10, partitions=[f"{TOPIC}-0"])
            assert ok.result.ok and f'"{TOPIC}-0"' in ok.statusJson
        finally:
            conn.close()
        assert cluster.spus[1].alive

    run_async(body_)


def test_produce_with_too_many_smartmodules_is_refused_naming_the_limit(cluster: DataPlaneCluster) -> None:
    """A produce with CHAIN_STAGES_MAX + 1 SmartModule invocations is refused before the SPU
    looks anything up or writes anything; the connection goes on serving."""
    async def body() -> None:
        conn = await connect(SPU, cluster.spus[1].address, None, 5)
        try:
            before = await conn.call("offsets", 5, topic=TOPIC, partition=0)
            chain = [{"name": f"stage-{i}"} for i in range(CHAIN_STAGES_MAX + 1)]
            with pytest.raises(CallRejected) as info:
                await produce(conn, b"never stored", smartmodules=chain)
            error = info.value.error
            assert error.code == "tooLarge" and not error.retriable, error
            assert "ProduceRequest.smartmodules" in error.message
            assert f"{CHAIN_STAGES_MAX + 1} entries, more than the limit of {CHAIN_STAGES_MAX}" in error.message
            after = await conn.call("offsets", 5, topic=TOPIC, partition=0)
            assert after.logEndOffset == before.logEndOffset, "the refused produce wrote something"
            assert (await produce(conn, b"after the refusal")).result.ok
        finally:
            conn.close()

    run_async(body)


def test_frame_announcing_a_gibibyte_is_refused_without_buffering_it(cluster: DataPlaneCluster) -> None:
    """A REQUEST frame announcing a 1 GiB body is refused (tooLarge, naming the limit) as soon
    as its header arrives; the SPU then skips the body as it streams in, so its memory does
    not grow by anything like the body, and the same connection's next request is answered."""
    pid = cluster.spus[1].pid

    async def body() -> None:
        raw = await RawConnection.open(cluster.spus[1].port)
        try:
            rss_before = rss_bytes(pid)
            await raw.send(HEADER.pack(GIB, 7, Kind.REQUEST, 0, 0, 0))
            member, error = await raw.answer(7)
            assert member == "rejected" and error.code == "tooLarge", (member, error)
            assert str(GIB) in error.message and "limit" in error.message
            peak = rss_before
            chunk = bytes(4 * MIB)
            for sent in range(0, GIB, len(chunk)):
                await raw.send(chunk)
                if sent % (64 * MIB) == 0:
                    peak = max(peak, rss_bytes(pid))
            await raw.send(encode_frame(Kind.REQUEST, 8, offsets_request(TOPIC)))
            member, answer = await raw.answer(8, timeout_s=30)
            assert member == "offsets" and answer.result.ok, (member, answer)
            peak = max(peak, rss_bytes(pid))
            assert peak - rss_before < 64 * MIB, f"the SPU grew by {(peak - rss_before) // MIB} MiB"
        finally:
            raw.close()
        assert cluster.spus[1].alive

    run_async(body)


def test_bad_frame_kind_closes_only_that_connection(cluster: DataPlaneCluster) -> None:
    """A frame of an unknown kind (and, on another connection, a frame kind only servers send)
    closes that connection at once; a connection opened before goes on, the SPU stays up."""
    async def body() -> None:
        conn = await connect(SPU, cluster.spus[1].address, None, 5)
        try:
            for garbage in (HEADER.pack(0, 1, 99, 0, 0, 0) + b"garbage",
                            encode_frame(Kind.RESPONSE, 1, offsets_request(TOPIC))):
                raw = await RawConnection.open(cluster.spus[1].port)
                try:
                    await raw.send(garbage)
                    assert await raw.closed_by_server(), "the SPU kept a connection that broke the framing"
                finally:
                    raw.close()
                assert (await produce(conn, b"still served")).result.ok
            assert cluster.spus[1].alive
        finally:
            conn.close()

    run_async(body)

