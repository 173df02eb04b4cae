"""Fair use of an SPU (issue 17 item 5) and no remote traceback (item 7), through a real SC and
SPU over mutual TLS with client identities alice and bob (docs/security.md "Fair use").

* alice opens streams on several connections until the SPU refuses: ``tooManyStreams``, one
  line naming the limit, the count and whose; her consumer and ``kolk consume`` say the same
  line at once (no hang, exit 1); bob still streams, with the client library and the CLI;
  when one of alice's connections closes she streams again.
* One connection: the 65th stream is refused with the per-connection line; alice's 257th
  connection is told ``tooManyConnections`` on its first request (and by ``kolk consume``).
* Streams that never read (raw TLS sockets that never read a byte): the SPU's RSS stays within
  the identity's held-bytes limit, the data the streams read and a fixed allowance, with 100
  streams and with alice's maximum (``STREAMS_PER_IDENTITY_MAX``); bob still streams meanwhile.
* Malformed requests on the real SPU are answered with one line, never a traceback.
"""

from __future__ import annotations

import asyncio
import struct
import subprocess
import sys
import time
from typing import Any

import pytest

from dataplane_cluster import DataPlaneCluster, read_all, run_async, wait_committed
from kolk.client.consumer import Offset
from kolk.protocol import limits as L
from kolk.protocol.channel import CallRejected
from kolk.protocol.channel_client import ClientConnection
from kolk.protocol.errors import TooManyStreamsError
from kolk.protocol.framing import Frame, FrameDecoder, Kind, encode_frame
from kolk.protocol.messages import decode, encode, schema, which
from kolk.security.tls import server_hostname
from kolk.transport import SPU, connect

TOPIC = "fair"
RECORDS = 8000
VALUE = b"v" * 1000
WAIT_S = 20.0
ALICE_FULL = (f"identity alice already holds {L.STREAMS_PER_IDENTITY_MAX} of {L.STREAMS_PER_IDENTITY_MAX} streams "
              "on SPU 1; close one first")
# What the SPU may grow by beyond the bytes its slow readers hold and the log pages the
# streams read: per connection (a TLS connection with a stream costs ~0.3 MiB in asyncio and
# OpenSSL buffers, docs/security.md), and the allocator's slack.
RSS_PER_CONNECTION_MIB = 0.5
RSS_SLACK_MIB = 32


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: Any) -> Any:
    c = DataPlaneCluster(str(tmp_path_factory.mktemp("fair")), spus=1, tls=True, clients=("admin", "alice", "bob"))
    try:
        c.start()

        async def fill() -> None:
            client = c.client(as_="admin")
            await client.create_topic(TOPIC, 1, 1)
            producer = client.producer(TOPIC)
            for _ in range(RECORDS):
                await producer.send(VALUE)
            await producer.flush()
            await wait_committed(client, TOPIC)
            await client.close()
        run_async(fill)
        yield c
    finally:
        c.close()


async def _open(conn: ClientConnection, window: int = 64 << 10) -> Any:
    out, stream = await conn.open_stream("stream", window, WAIT_S, topic=TOPIC, partition=0, offset=0)
    assert out.result.ok, out.result.error.message
    return stream


async def _connections(c: DataPlaneCluster, who: str, n: int) -> list[ClientConnection]:
    return [await connect(SPU, c.spus[1].address, c.tls_for(who), WAIT_S) for _ in range(n)]


def _kolk_consume(c: DataPlaneCluster, who: str) -> subprocess.CompletedProcess[str]:
    p = c.pki[who]
    args = [sys.executable, "-m", "kolk", "consume", TOPIC, "-B", "-d", "--output", "raw", "--sc",
            ",".join(c.sc_addresses), "--tls-ca", p["ca"], "--tls-cert", p["cert"], "--tls-key", p["key"]]
    return subprocess.run(args, capture_output=True, text=True, timeout=120)


async def _consumer_error(c: DataPlaneCluster, who: str) -> BaseException:
    """What a public consumer of ``who`` raises (within a deadline: it must not hang)."""
    client = c.client(as_=who)
    consumer = client.consumer(TOPIC, partition=0, start=Offset.beginning(), stop_at_end=True)
    try:
        async with asyncio.timeout(WAIT_S):
            async for _ in consumer:
                pass
    except TooManyStreamsError as e:
        return e
    finally:
        await consumer.close()
        await client.close()
    raise AssertionError(f"{who}'s consumer read to the end instead of being refused")


def test_an_identity_at_its_stream_limit_gets_too_many_streams_and_another_identity_still_streams(
        cluster: DataPlaneCluster) -> None:
    per_conn = L.STREAMS_PER_CONNECTION_MAX
    limit = L.STREAMS_PER_IDENTITY_MAX
    conns_needed = -(-limit // per_conn)

    async def body() -> None:
        alice = await _connections(cluster, "alice", conns_needed + 1)
        try:
            started = time.monotonic()
            for i, conn in enumerate(alice[:conns_needed]):
                await asyncio.gather(*(_open(conn) for _ in range(min(per_conn, limit - i * per_conn))))
            # the next stream, on a fresh connection of the same identity, is refused at once
            with pytest.raises(CallRejected) as e:
                await _open(alice[-1])
            assert time.monotonic() - started < WAIT_S
            err = e.value.error
            assert err.code == "tooManyStreams" and err.retriable and err.message == ALICE_FULL
            # alice's public consumer says the same line at once instead of retrying for ever
            refused = await _consumer_error(cluster, "alice")
            assert str(refused) == ALICE_FULL and refused.code == "tooManyStreams"
            # ... and so does `kolk consume`, with exit status 1
            run = await asyncio.to_thread(_kolk_consume, cluster, "alice")
            assert run.returncode == 1 and run.stdout == ""
            assert run.stderr == f"kolk consume: {ALICE_FULL}\n"
            # bob is not starved: the client library and the CLI read everything
            bob = cluster.client(as_="bob")
            records = await read_all(bob, TOPIC, partition=0)
            assert len(records) == RECORDS and all(r.value == VALUE for r in records)
            await bob.close()
            run = await asyncio.to_thread(_kolk_consume, cluster, "bob")
            assert run.returncode == 0, run.stderr
            assert run.stdout.count("\n") == RECORDS
            # one of alice's connections closes: its streams are given back, and she reads again
            alice[0].close()
            client = cluster.client(as_="alice")
            assert len(await read_all(client, TOPIC, partition=0)) == RECORDS
            await client.close()
        finally:
            for conn in alice:
                conn.close()

    run_async(body)


def test_one_connection_past_its_stream_limit_is_refused(cluster: DataPlaneCluster) -> None:
    async def body() -> None:
        [conn] = await _connections(cluster, "bob", 1)
        try:
            streams = [await _open(conn) for _ in range(L.STREAMS_PER_CONNECTION_MAX)]
            with pytest.raises(CallRejected) as e:
                await _open(conn)
            assert e.value.error.code == "tooManyStreams"
            assert e.value.error.message == (f"this connection already holds {L.STREAMS_PER_CONNECTION_MAX} of "
                                             f"{L.STREAMS_PER_CONNECTION_MAX} streams; close one or open another "
                                             "connection")
            streams.pop().close()
            await _open(conn)  # the closed stream's place is free again
        finally:
            conn.close()

    run_async(body)


def test_an_identity_past_its_connection_limit_is_told_so_and_another_identity_still_connects(
        cluster: DataPlaneCluster) -> None:
    limit = L.CONNECTIONS_PER_IDENTITY_MAX
    full = f"identity alice already holds {limit} of {limit} connections to SPU 1; close one first"

    async def body() -> None:
        alice = await _connections(cluster, "alice", limit)
        try:
            [extra] = await _connections(cluster, "alice", 1)
            with pytest.raises(CallRejected) as e:
                await extra.call("offsets", WAIT_S, topic=TOPIC, partition=0)
            assert e.value.error.code == "tooManyConnections" and e.value.error.retriable
            assert e.value.error.message == full
            run = await asyncio.to_thread(_kolk_consume, cluster, "alice")
            assert run.returncode == 1 and run.stderr == f"kolk consume: {full}\n"
            bob = cluster.client(as_="bob")
            assert len(await read_all(bob, TOPIC, partition=0)) == RECORDS
            await bob.close()
        finally:
            for conn in alice:
                conn.close()

    run_async(body)


# ---------------------------------------------------------------- streams that never read


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


async def settled_rss(pid: int, timeout_s: float = 60.0) -> float:
    """The process's RSS once it has stopped growing: two samples a second apart within 1 MiB
    (a condition polled with a deadline)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    last = rss_mib(pid)
    while loop.time() < deadline:
        await asyncio.sleep(1.0)  # sampling interval of a condition with a deadline
        now = rss_mib(pid)
        if abs(now - last) <= 1:
            return now
        last = now
    raise AssertionError(f"the SPU's RSS did not settle within {timeout_s} s (last {last:.0f} MiB)")


async def silent_streams(c: DataPlaneCluster, who: str, count: int) -> asyncio.StreamWriter:
    """A TLS connection of ``who`` that asks for ``count`` streams with the largest window and
    never reads a byte of what comes back."""
    address = c.spus[1].address
    host, port = address.rsplit(":", 1)
    tls = c.tls_for(who)
    _reader, writer = await asyncio.open_connection(host, int(port), ssl=tls.client_context(),
                                                    server_hostname=server_hostname(address))
    for rid in range(1, count + 1):
        env = schema.SpuRequest.new_message()
        req = env.init("stream")
        req.topic, req.partition, req.offset, req.windowBytes = TOPIC, 0, 0, L.STREAM_WINDOW_BYTES_MAX
        writer.write(encode_frame(Kind.REQUEST, rid, encode(env)))
    await writer.drain()
    return writer


@pytest.mark.parametrize("streams, per_connection", [(100, 1), (L.STREAMS_PER_IDENTITY_MAX, 1),
                                                     (L.STREAMS_PER_IDENTITY_MAX, L.STREAMS_PER_CONNECTION_MAX)])
def test_streams_that_never_read_pin_a_bounded_amount_of_the_spu(cluster: DataPlaneCluster, streams: int,
                                                                 per_connection: int) -> None:
    """One stream per connection is the worst case: each connection's write buffer would fill
    to its mark (4 MiB) were it not for the identity's held-bytes limit."""
    pid = cluster.spus[1].pid
    data_mib = RECORDS * len(VALUE) / (1 << 20)
    connections = -(-streams // per_connection)
    bound = (L.HELD_BYTES_PER_IDENTITY_MAX / (1 << 20) + data_mib + connections * RSS_PER_CONNECTION_MIB
             + RSS_SLACK_MIB)

    async def body() -> None:
        before = await settled_rss(pid)
        writers = []
        try:
            left = streams
            while left:
                n = min(left, per_connection)
                writers.append(await silent_streams(cluster, "alice", n))
                left -= n
            after = await settled_rss(pid)
            print(f"SPU RSS with {streams} streams of alice that never read, on {len(writers)} connections: "
                  f"{before:.0f} -> {after:.0f} MiB (+{after - before:.0f}; bound +{bound:.0f})")
            assert after - before <= bound
            # bob still streams while alice's readers hold all they may
            bob = cluster.client(as_="bob")
            assert len(await read_all(bob, TOPIC, partition=0)) == RECORDS
            await bob.close()
        finally:
            for w in writers:
                w.transport.abort()

    run_async(body)


# ---------------------------------------------------------------- no remote traceback


def _bad_bodies() -> dict[str, bytes]:
    env = schema.SpuRequest.new_message()
    s = env.init("stream")
    s.topic = "abcd"
    good = encode(env)
    utf8 = bytearray(good)
    i = utf8.index(b"abcd")
    utf8[i:i + 2] = b"\xff\xfe"
    root = bytearray(good)
    root[24:32] = struct.pack("<Q", (0x1000000 << 2) | (2 << 32))  # the member struct, far past the segment
    union = bytearray(good)
    union[16:24] = struct.pack("<Q", 999)  # a union member the schema lacks
    return {"invalid UTF-8 in the topic": bytes(utf8), "a member pointer out of bounds": bytes(root),
            "an unknown call": bytes(union), "no segment table": b"\x01\x02\x03",
            "random words": b"\0\0\0\0\x02\0\0\0" + b"\xab" * 16}


def test_bad_requests_to_a_real_spu_are_answered_in_one_line_without_a_traceback(cluster: DataPlaneCluster) -> None:
    async def body() -> None:
        address = cluster.spus[1].address
        host, port = address.rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port), ssl=cluster.tls_for("bob").client_context(),
                                                       server_hostname=server_hostname(address))
        decoder = FrameDecoder()
        frames: list[Frame] = []
        try:
            bodies = _bad_bodies()
            for rid, bad in enumerate(bodies.values(), 1):
                writer.write(encode_frame(Kind.REQUEST, rid, bad))
            async with asyncio.timeout(WAIT_S):
                while len(frames) < len(bodies):
                    data = await reader.read(1 << 16)
                    assert data, "the SPU closed the connection"
                    frames.extend(f for f in decoder.feed(data) if isinstance(f, Frame))
            for (what, _), f in zip(bodies.items(), sorted(frames, key=lambda f: f.id)):
                env = decode(schema.SpuResponse, f.body)
                assert which(env) == "rejected", what
                err = env.rejected
                assert err.code in ("malformed", "unknownCall", "tooLarge"), (what, err.code)
                assert err.message and "\n" not in err.message and "Traceback" not in err.message, (what, err.message)
                assert ".py" not in err.message, (what, err.message)
        finally:
            writer.transport.abort()

    run_async(body)


# ---------------------------------------------------------------- anonymous peers (plaintext)


@pytest.fixture(scope="module")
def plain_cluster(tmp_path_factory: Any) -> Any:
    c = DataPlaneCluster(str(tmp_path_factory.mktemp("fair-plain")), spus=1)
    try:
        c.start()

        async def fill() -> None:
            client = c.client()
            await client.create_topic(TOPIC, 1, 1)
            producer = client.producer(TOPIC)
            for _ in range(10):
                await producer.send(VALUE)
            await producer.flush()
            await wait_committed(client, TOPIC)
            await client.close()
        run_async(fill)
        yield c
    finally:
        c.close()


async def _connect_from(address: str, source_ip: str) -> ClientConnection:
    """A plaintext connection to ``address`` whose source address is ``source_ip`` (all of
    127.0.0.0/8 is this host's loopback)."""
    host, port = address.rsplit(":", 1)
    async with asyncio.timeout(WAIT_S):
        _, conn = await asyncio.get_running_loop().create_connection(
            lambda: ClientConnection(SPU, address), host, int(port), local_addr=(source_ip, 0))
    return conn


def test_anonymous_peers_of_one_network_count_as_one_owner_and_leave_room_for_others(
        plain_cluster: DataPlaneCluster) -> None:
    """Issue 17 probe: one host bound 127.0.0.2-.5 and took every stream slot of the SPU. The
    four addresses are one owner (their /24): together they get one identity's share, which
    leaves room for seven more such networks."""
    limit = L.STREAMS_PER_IDENTITY_MAX
    assert limit * 8 <= L.STREAMS_PER_SERVER_MAX
    address = plain_cluster.spus[1].address
    sources = [f"127.0.0.{i}" for i in range(2, 6)]
    full = f"anonymous@127.0.0.0/24 already holds {limit} of {limit} streams on SPU 1; close one first"

    async def body() -> None:
        conns: list[ClientConnection] = []
        try:
            # spread the identity's share over the four source addresses, round robin
            per_conn = L.STREAMS_PER_CONNECTION_MAX
            per_source = -(-limit // len(sources))
            for ip in sources:
                for _ in range(-(-per_source // per_conn)):
                    conns.append(await _connect_from(address, ip))
            opened = 0
            while opened < limit:
                await _open(conns[opened % len(conns)])
                opened += 1
            for ip in sources:  # every one of the four addresses is now refused: they are one owner
                fresh = await _connect_from(address, ip)
                conns.append(fresh)
                with pytest.raises(CallRejected) as e:
                    await _open(fresh)
                assert e.value.error.code == "tooManyStreams" and e.value.error.message == full
            # another network (127.0.1.0/24) still streams, and the SPU has room for more
            other = await _connect_from(address, "127.0.1.1")
            conns.append(other)
            streams = [await _open(other) for _ in range(8)]
            assert len(streams) == 8
        finally:
            for conn in conns:
                conn.close()

    run_async(body)
