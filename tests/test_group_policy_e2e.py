"""Consumer groups under a policy, through real SC and SPU processes with mutual TLS
(docs/policy.md "Consumer groups", docs/security.md): an identity with ``read`` on
``group:billing-*`` and ``consume`` on the topic joins and commits; one with ``consume`` on the
topic but no group access is refused (PermissionDeniedError naming the group), as is a reset
without ``admin``; the denials and an operator's reset are in ``_audit``."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from dataplane_cluster import DataPlaneCluster, read_all, run_async, wait_committed, wait_until, offsets_topic
from kolk.client.client import AsyncClient
from kolk.client.coordinator import group_call
from kolk.client.consumer import ConsumerRecord
from kolk.client.groups_admin import ResetTarget
from kolk.groups.names import OFFSETS_TOPIC
from kolk.protocol.errors import PermissionDeniedError
from kolk.security.policy import parse_policy

WAIT_S = 30.0  # every condition below is awaited with this deadline

POLICY = """version = 1

[identities]
admin = ["admin"]
billing = ["billing"]
intruder = ["reader"]

[[rule]]
effect = "allow"
roles = ["admin"]
actions = ["*"]
resources = ["*"]

[[rule]]
effect = "allow"
roles = ["billing", "reader"]
actions = ["consume", "describe"]
resources = ["topic:payments"]

[[rule]]
effect = "allow"
roles = ["billing"]
actions = ["read"]
resources = ["group:billing-*"]
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Any:
    c = DataPlaneCluster(str(tmp_path_factory.mktemp("group-policy")), spus=1, tls=True,
                         clients=("admin", "billing", "intruder"))
    try:
        c.start()

        async def setup() -> None:
            admin = c.client(as_="admin")
            await admin.admin.put_object("policy", "active", {"version": 1, "source": POLICY,
                                                              "sha256": parse_policy(POLICY).sha256})

            async def offsets_led() -> bool:
                admin.forget_leaders(OFFSETS_TOPIC)
                parts = await offsets_topic(admin)
                return bool(parts) and all(p["status"].get("leader") is not None for p in parts)
            await wait_until(offsets_led, WAIT_S, f"{OFFSETS_TOPIC} to have a leader for every partition")
            await admin.create_topic("payments", 2, 1)
            producer = admin.producer("payments", acks="all")
            for i in range(20):
                await producer.send(b"payment-%d" % i, partition=i % 2)
            await producer.close()
            await wait_committed(admin, "payments")
            await admin.close()
        run_async(setup)
        yield c
    finally:
        c.close()


async def poll_until(consumer: Any, count: int) -> list[ConsumerRecord]:
    out: list[ConsumerRecord] = []
    loop = asyncio.get_running_loop()
    end = loop.time() + WAIT_S
    while len(out) < count:
        assert loop.time() < end, f"not within {WAIT_S} s: {count} records; got {len(out)}"
        out.extend(await consumer.poll(0.2))
    return out


async def committed(client: AsyncClient, group: str) -> dict[int, int]:
    r = await group_call(client, group, "offsetFetch", {"group": group, "topics": []})
    return {o.partition: o.offset for o in r.offsets if o.topic == "payments"}


def test_a_member_with_read_on_the_group_joins_and_commits(cluster: DataPlaneCluster) -> None:
    async def body() -> None:
        async with cluster.client(as_="billing") as client:
            c = client.consumer("payments", group="billing-eu", auto_commit=False)
            records = await poll_until(c, 20)
            assert sorted(r.value for r in records) == sorted(b"payment-%d" % i for i in range(20))
            await c.commit()
            assert await committed(client, "billing-eu") == {0: 10, 1: 10}
            await c.close()
    run_async(body)


def test_consume_on_the_topic_without_read_on_the_group_is_denied(cluster: DataPlaneCluster) -> None:
    """intruder may consume payments (topic:payments) but has no group rule: joining billing-eu
    and committing to it are refused, naming the identity and the group."""
    async def body() -> None:
        async with cluster.client(as_="intruder") as client:
            assert len(await read_all(client, "payments")) == 20  # the topic itself is readable
            c = client.consumer("payments", group="billing-eu", auto_commit=False)
            loop = asyncio.get_running_loop()
            end = loop.time() + WAIT_S
            with pytest.raises(PermissionDeniedError) as e:
                while True:
                    assert loop.time() < end, "the join was not refused"
                    assert await c.poll(0.2) == []
            assert "intruder" in str(e.value) and "may not read group:billing-eu" in str(e.value)
            await c.close()
            with pytest.raises(PermissionDeniedError, match="may not read group:billing-eu"):
                await group_call(client, "billing-eu", "offsetCommit", {
                    "group": "billing-eu", "memberId": "m", "memberEpoch": 1,
                    "offsets": [{"topic": "payments", "partition": 0, "offset": 0, "metadata": ""}]})
        async with cluster.client(as_="billing") as client:
            with pytest.raises(PermissionDeniedError, match="billing from .* may not read group:payroll"):
                await group_call(client, "payroll", "offsetFetch", {"group": "payroll", "topics": []})
    run_async(body)


def test_a_reset_needs_admin_on_the_group_and_is_audited(cluster: DataPlaneCluster) -> None:
    """billing (read on the group) may not reset it; admin may, and both the denials and the
    reset are in _audit."""
    async def body() -> None:
        async with cluster.client(as_="billing") as client:
            with pytest.raises(PermissionDeniedError, match="billing from .* may not admin group:billing-reset"):
                await group_call(client, "billing-reset", "offsetCommit", {
                    "group": "billing-reset", "memberId": "", "memberEpoch": 0,
                    "offsets": [{"topic": "payments", "partition": 0, "offset": 0, "metadata": "reset"}]})
            # kolk consumer reset describes the group first (refused while it has members).
            with pytest.raises(PermissionDeniedError, match="may not describe group:billing-reset"):
                await client.group_reset("billing-reset", "payments", ResetTarget("earliest"))
        async with cluster.client(as_="admin") as admin:
            await admin.group_reset("billing-reset", "payments", ResetTarget("offset", 3))
            assert await committed(admin, "billing-reset") == {0: 3, 1: 3}

            async def audited() -> list[dict[str, Any]] | None:
                events = [json.loads(r.value) for r in await read_all(admin, "_audit", timeout_s=10)]
                denied = {(e["identity"], e["action"], e["resource"]) for e in events if e["decision"] == "deny"}
                want = {("intruder", "read", "group:billing-eu"), ("billing", "read", "group:payroll"),
                        ("billing", "admin", "group:billing-reset"), ("billing", "describe", "group:billing-reset")}
                changes = [e for e in events if e["reason"] == "group change"]
                return events if want <= denied and changes else None
            events = await wait_until(audited, WAIT_S, "the group denials and the reset to reach _audit")
            change = next(e for e in events if e["reason"] == "group change")
            assert (change["identity"], change["action"], change["resource"], change["decision"], change["rule"]) == (
                "admin", "admin", "group:billing-reset", "allow", 1)
            assert change["detail"]["call"] == "offsetCommit" and change["node"] == "node"
            denial = next(e for e in events if e["resource"] == "group:billing-eu" and e["decision"] == "deny")
            assert denial["reason"].startswith("no rule allows read on group:billing-eu for intruder (roles reader)")
            assert denial["policy_version"] == 1 and denial["process"].startswith("spu-")
    run_async(body)
