"""A flood of silent TCP connections (connect, never send a ClientHello) against an SPU's TLS
client port: the listener caps the connections in their handshake from accept
(limits.TLS_HANDSHAKES_MAX, core/protocol/accept.py), so the SPU's memory and files stay bounded
and clients already connected keep producing and consuming. Before the cap, 3,000 such
connections took an SPU from 62 to 436 MiB and 1,148 open files."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import threading
from typing import Any

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from dataplane_cluster import DataPlaneCluster, open_fds, rss_bytes, run_async, wait_until  # noqa: E402
from kolk.client.consumer import Offset  # noqa: E402
from kolk.protocol import limits as L  # noqa: E402

TOPIC = "flood"
SILENT = 2000
RSS_GROWTH_MAX = 60 << 20
OVER_CAP_LINE = "connections are in their TLS handshake already"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Any:
    c = DataPlaneCluster(str(tmp_path_factory.mktemp("flood")), spus=1, tls=True)
    try:
        c.start()
        yield c
    finally:
        c.close()


def _silent_connections(address: str, n: int) -> list[socket.socket]:
    host, port = address.rsplit(":", 1)
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            socks.append(socket.create_connection((host, int(port)), timeout=5))
    except BaseException:
        for s in socks:
            s.close()
        raise
    return socks


def test_silent_connections_do_not_grow_the_spu(cluster: DataPlaneCluster) -> None:
    pid = cluster.spus[1].pid
    address = cluster.spus[1].address

    async def body() -> None:
        client = cluster.client()
        await client.create_topic(TOPIC, 1, 1)
        producer = client.producer(TOPIC)
        consumer = client.consumer(TOPIC, partition=0, start=Offset.beginning())
        records = consumer.__aiter__()

        async def round_trip(value: bytes) -> None:
            await (await producer.send(value))
            record = await asyncio.wait_for(records.__anext__(), 10)
            assert record.value == value

        socks: list[socket.socket] = []
        try:
            await round_trip(b"before")
            rss0, fds0 = rss_bytes(pid), open_fds(pid)
            # The SPU's open files, sampled while the flood goes on: on a loaded machine the
            # 2,000 connects can take longer than a handshake's 10 s timeout, so the first
            # handshakes may have timed out by the time the flood ends.
            peak, done = [fds0], threading.Event()

            def sample() -> None:
                while not done.wait(0.02):
                    peak[0] = max(peak[0], open_fds(pid))

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            try:
                socks = await asyncio.to_thread(_silent_connections, address, SILENT)
                # The listener holds at most the cap; every connection over it is closed at once,
                # which its log says (once: the line is rate-limited).
                await wait_until(lambda: OVER_CAP_LINE in cluster.spu_log(1), 10,
                                 lambda: "the SPU to log its handshake cap:\n" + cluster.spu_log(1)[-2000:])
                await wait_until(lambda: peak[0] >= fds0 + L.TLS_HANDSHAKES_MAX, 10,
                                 lambda: f"the SPU to hold {L.TLS_HANDSHAKES_MAX} handshakes (fds at most {peak[0]})")
            finally:
                done.set()
                sampler.join()
            for i in range(5):
                await round_trip(f"during-{i}".encode())
            grown, fds = rss_bytes(pid) - rss0, open_fds(pid)
            assert grown < RSS_GROWTH_MAX, f"{SILENT} silent connections grew the SPU by {grown >> 20} MiB"
            assert fds <= fds0 + L.TLS_HANDSHAKES_MAX + 8, f"{SILENT} silent connections: SPU fds {fds0} -> {fds}"
            assert cluster.spu_log(1).count(OVER_CAP_LINE) == 1
        finally:
            for s in socks:
                s.close()
            await consumer.close()
            await producer.close()
            await client.close()
        # Closed by their clients, the handshakes end at once (not at their 10 s timeout), and a
        # new client connects and round-trips.
        await wait_until(lambda: open_fds(pid) <= fds0 + 8, 10, lambda: f"the SPU's fds to fall ({open_fds(pid)})")
        fresh = cluster.client()
        try:
            after = fresh.producer(TOPIC)
            await (await after.send(b"after"))
            await after.close()
            consumer = fresh.consumer(TOPIC, partition=0, start=Offset.beginning(), stop_at_end=True)
            values = [r.value async for r in consumer]
            assert values == [b"before"] + [f"during-{i}".encode() for i in range(5)] + [b"after"]
        finally:
            await fresh.close()
    run_async(body)
