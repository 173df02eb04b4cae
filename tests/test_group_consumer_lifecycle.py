"""A group consumer's end and its owner's commits, with real SC and SPU processes: closing the
client closes its group consumers; ``auto_commit=False`` commits nothing by itself, not even on a
revocation; a sync callback that calls its own consumer is refused instead of hanging; a second
process with the same ``group_instance_id`` makes the first stop with FencedInstanceError
instead of the two taking the partitions from each other forever."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from dataplane_cluster import DataPlaneCluster, run_async  # noqa: E402
from test_group_consumer import WAIT_S, cluster, committed, poll_until, topic_with  # noqa: E402,F401
from kolk.client.client import Client  # noqa: E402
from kolk.client.consumer import Offset  # noqa: E402
from kolk.client.coordinator import group_call  # noqa: E402
from kolk.protocol.errors import FencedInstanceError, InvalidRequestError  # noqa: E402


async def members(client: Any, group: str) -> int:
    r = await group_call(client, group, "describeGroup", {"group": group})
    return len(json.loads(r.groupJson)["members"])


def test_closing_the_client_closes_its_group_consumers(cluster: DataPlaneCluster) -> None:
    async def setup() -> None:
        async with cluster.client() as client:
            await topic_with(client, "closing", 2, 5)
    run_async(setup)
    with Client(cluster.sc_addresses) as client:
        c = client.consumer("closing", group="closing-g", start=Offset.beginning())
        got = 0
        while got < 10:
            got += len(c.poll(0.2))
    # the client's end closed the consumer: it committed what it handed out and left

    async def check() -> None:
        async with cluster.client() as client:
            assert await committed(client, "closing-g", "closing") == {0: 5, 1: 5}
            assert await members(client, "closing-g") == 0
    run_async(check)


def test_a_consumer_is_a_context_manager(cluster: DataPlaneCluster) -> None:
    async def body() -> None:
        async with cluster.client() as client:
            await topic_with(client, "managed", 1, 3)
            async with client.consumer("managed", group="managed-g") as c:
                await poll_until(c, lambda rs: len(rs) >= 3, "3 records")
            assert await members(client, "managed-g") == 0
            assert await committed(client, "managed-g", "managed") == {0: 3}
    run_async(body)


def test_without_auto_commit_a_revocation_commits_nothing(cluster: DataPlaneCluster) -> None:
    async def body() -> None:
        async with cluster.client() as client:
            await topic_with(client, "manual", 4, 5)
            first = client.consumer("manual", group="manual-g", auto_commit=False)
            await poll_until(first, lambda rs: len(rs) >= 20, "20 records")
            revoked: list[Any] = []
            second = client.consumer("manual", group="manual-g", auto_commit=False,
                                     on_assigned=lambda parts, gen: revoked.append(parts))
            loop = asyncio.get_running_loop()
            end = loop.time() + WAIT_S
            while not revoked:  # both poll: the first hands back at its poll boundary
                assert loop.time() < end, "the second member was never given partitions"
                await first.poll(0.1)
                await second.poll(0.1)
            assert len(first.assignment()) < 4
            assert await committed(client, "manual-g", "manual") == {}  # nobody committed
            await first.close()
            await second.close()
            assert await committed(client, "manual-g", "manual") == {}  # nor on close
    run_async(body)


def test_a_sync_callback_calling_its_own_consumer_is_refused_not_hung(cluster: DataPlaneCluster) -> None:
    async def setup() -> None:
        async with cluster.client() as client:
            await topic_with(client, "selfcall", 1, 3)
    run_async(setup)
    holder: dict[str, Any] = {}
    with Client(cluster.sc_addresses) as client:
        c = holder["c"] = client.consumer("selfcall", group="selfcall-g",
                                          on_assigned=lambda parts, gen: holder["c"].commit())
        with pytest.raises(InvalidRequestError) as e:
            for _ in range(int(WAIT_S / 0.2)):
                c.poll(0.2)
        assert "cannot call the consumer" in str(e.value) and "\n" not in str(e.value)
        c.close()


def test_a_second_process_with_the_same_instance_id_fences_the_first(cluster: DataPlaneCluster) -> None:
    async def body() -> None:
        async with cluster.client() as client:
            await topic_with(client, "twins", 2, 5)
            first = client.consumer("twins", group="twins-g", group_instance_id="host-1")
            await poll_until(first, lambda rs: len(rs) >= 10, "10 records")
            async with cluster.client() as other:
                second = other.consumer("twins", group="twins-g", group_instance_id="host-1")
                await poll_until(second, lambda rs: len(second.assignment()) == 2, "the partitions taken over")
                loop = asyncio.get_running_loop()
                end = loop.time() + WAIT_S
                with pytest.raises(FencedInstanceError) as e:
                    while loop.time() < end:
                        await first.poll(0.2)
                        await second.poll(0.1)
                assert "host-1" in str(e.value)
                assert first.assignment() == frozenset()
                # the newer one keeps its partitions: nobody takes them back
                for _ in range(10):
                    await second.poll(0.1)
                assert len(second.assignment()) == 2
                assert await members(client, "twins-g") == 1
                await second.close()
            await first.close()
    run_async(body)
