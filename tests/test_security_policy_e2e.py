"""Policy enforcement through real SC and SPU processes with mutual TLS: bypass attempts, each
its own test, all denied and all audited; masking before SmartModules; policy versions that
only go forward; a malformed policy file that leaves the one in force in force."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import subprocess
import sys
from typing import Any

import pytest

from dataplane_cluster import DataPlaneCluster, read_all, release_consumer, run_async, wait_until
from kolk.client.consumer import Offset
from kolk.protocol.errors import KolkError, NotFoundError, PermissionDeniedError
from kolk.security.policy import parse_policy
from kolk.smartmodule.build import build_c

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "smartmodule", "examples")

POLICY = """version = {version}

[regions]
local = ["127.0.0.0/8", "::1/128"]
eu = ["10.0.0.0/8"]

[identities]
admin = ["admin"]
alice = ["analyst"]

[[rule]]
effect = "allow"
roles = ["admin"]
actions = ["*"]
resources = ["topic:*", "smartmodule:*", "cluster"]

[[rule]]
effect = "allow"
roles = ["analyst"]
actions = [{analyst_actions}]
resources = ["topic:orders", "smartmodule:*"]

[[rule]]
effect = "allow"
roles = ["analyst"]
actions = ["consume"]
resources = ["topic:eu-only"]
regions = ["eu"]

[[rule]]
effect = "deny"
roles = ["analyst"]
actions = ["*"]
resources = ["topic:secret*"]

[[mask]]
roles = ["analyst"]
topics = ["orders"]
fields = ["$.card"]
"""


def policy(version: int, analyst_actions: str = '"consume", "describe", "use"') -> str:
    return POLICY.format(version=version, analyst_actions=analyst_actions)


def policy_spec(version: int) -> dict[str, Any]:
    text = policy(version)
    return {"version": version, "source": text, "sha256": parse_policy(text).sha256}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: Any) -> Any:
    c = DataPlaneCluster(str(tmp_path_factory.mktemp("policy")), spus=1, tls=True, clients=("admin", "alice"))
    try:
        c.start()

        async def setup() -> None:
            admin = c.client(as_="admin")
            await admin.admin.put_object("policy", "active", policy_spec(1))
            for topic in ("orders", "secret-x", "eu-only"):
                await admin.create_topic(topic, 1, 1)
            producer = admin.producer("orders")
            for i in range(5):
                await producer.send(json.dumps({"id": i, "card": f"4111-{i}"}).encode())
            await producer.flush()
            for topic in ("secret-x", "eu-only"):
                p = admin.producer(topic)
                await p.send(b"top secret")
                await p.flush()
            wasm = build_c(os.path.join(EXAMPLES, "json_field.c"))
            await admin.admin.put_object("smartmodule", "json_field@1", {
                "wasm": base64.b64encode(wasm).decode(), "sha256": hashlib.sha256(wasm).hexdigest(),
                "size": len(wasm)})
        run_async(setup)
        yield c
    finally:
        c.close()


async def leader_spu(c: DataPlaneCluster, topic: str, as_: str) -> Any:
    client = c.client(as_=as_)
    parts = await c.client(as_="admin").partitions(topic)
    address = next(u["spec"]["public_address"] for u in await c.client(as_="admin").admin.list_objects("spu")
                   if u["spec"]["id"] == parts[0]["status"]["leader"])
    return client, await client._connect(address)


def test_denied_topic_read_straight_from_its_leader(cluster: DataPlaneCluster) -> None:
    """alice asks the SPU that leads secret-x directly (fetch, offsets, stream) and may not
    produce to orders: each call is refused with 'denied', naming her and the rule."""
    async def body() -> None:
        _client, spu = await leader_spu(cluster, "secret-x", "alice")
        r = await spu.call("fetch", 5, topic="secret-x", partition=0, offset=0, maxBytes=1 << 20, isolation="uncommitted")
        assert not r.result.ok and r.result.error.code == "denied" and "alice" in r.result.error.message
        r = await spu.call("offsets", 5, topic="secret-x", partition=0)
        assert r.result.error.code == "denied"
        client = cluster.client(as_="alice")
        with pytest.raises(PermissionDeniedError, match="alice .* may not produce topic:orders"):
            producer = client.producer("orders", idempotent=False, retries=0, linger_ms=0)
            sent = await producer.send(b"x")
            await producer.flush()
            await sent
    run_async(body)


def test_masked_field_cannot_be_read_through_a_smartmodule(cluster: DataPlaneCluster) -> None:
    """Masking runs before SmartModules: alice's json_field(card) sees only '***', and her
    plain reads of orders show the card masked while everything else is intact."""
    async def body() -> None:
        alice = cluster.client(as_="alice")
        plain = await read_all(alice, "orders")
        assert [json.loads(r.value) for r in plain] == [{"id": i, "card": "***"} for i in range(5)]
        consumer = alice.consumer("orders", start=Offset.beginning(), smartmodules=[("json_field", {"field": "card"})])
        got: list = []

        async def collect() -> None:
            async for batch in consumer.batches():
                got.extend(batch)
                if len(got) >= 5:
                    return
        await asyncio.wait_for(collect(), 20)
        await release_consumer(consumer)
        assert {r.value for r in got} == {b"***"}
        admin_view = await read_all(cluster.client(as_="admin"), "orders")
        assert json.loads(admin_view[0].value)["card"] == "4111-0"  # masks are per role
    run_async(body)


def test_region_is_the_connection_s_not_a_claim(cluster: DataPlaneCluster) -> None:
    """eu-only is readable from the eu network only; alice connects from 127.0.0.1, so she is
    in 'local' whatever her certificate or request says, and is denied."""
    async def body() -> None:
        _client, spu = await leader_spu(cluster, "eu-only", "alice")
        r = await spu.call("fetch", 5, topic="eu-only", partition=0, offset=0, maxBytes=1 << 20, isolation="committed")
        assert r.result.error.code == "denied" and "local" in r.result.error.message
    run_async(body)


def test_node_certificate_used_as_a_client(cluster: DataPlaneCluster) -> None:
    """A node certificate lets an SPU replicate and heartbeat, not read data: as a client it
    has no role, so it is denied like anyone else (and cannot change the policy)."""
    async def body() -> None:
        _client, spu = await leader_spu(cluster, "orders", "node")
        r = await spu.call("fetch", 5, topic="orders", partition=0, offset=0, maxBytes=1 << 20, isolation="committed")
        assert r.result.error.code == "denied" and "node" in r.result.error.message
        node = cluster.client(as_="node")
        with pytest.raises(PermissionDeniedError):
            await node.admin.put_object("policy", "active", policy_spec(99))
    run_async(body)


def test_names_with_pattern_characters_are_names(cluster: DataPlaneCluster) -> None:
    """A topic name cannot hold pattern characters, and a request naming 'orders*' or
    'secre?' matches rules literally: alice's allow for topic:orders does not cover them."""
    async def body() -> None:
        admin = cluster.client(as_="admin")
        with pytest.raises(KolkError, match="invalid"):
            await admin.create_topic("orders*", 1, 1)
        _client, spu = await leader_spu(cluster, "orders", "alice")
        for name in ("orders*", "orders?", "secre?", "[o]rders"):
            r = await spu.call("offsets", 5, topic=name, partition=0)
            assert r.result.error.code == "denied", (name, r.result.error.code)
    run_async(body)


def test_every_denial_is_audited(cluster: DataPlaneCluster) -> None:
    """The denials of the tests above are in _audit with who, what, from where and the rule;
    alice may not read the audit log, admin may."""
    async def body() -> None:
        admin = cluster.client(as_="admin")

        async def audited() -> list[dict[str, Any]] | None:
            events = [json.loads(r.value) for r in await read_all(admin, "_audit", timeout_s=10)]
            denied = {(e["identity"], e["action"], e["resource"]) for e in events if e["decision"] == "deny"}
            want = {("alice", "consume", "topic:secret-x"), ("alice", "produce", "topic:orders"),
                    ("alice", "consume", "topic:eu-only"), ("node", "consume", "topic:orders"),
                    ("alice", "consume", "topic:secre?")}
            created = {(e["action"], e["resource"]) for e in events if e["decision"] == "allow"}
            return events if want <= denied and ("create", "topic:orders") in created else None
        events = await wait_until(audited, 30, "the denials to reach _audit")
        e = next(e for e in events if e["resource"] == "topic:eu-only" and e["decision"] == "deny")
        assert e["address"].startswith("127.") and e["node"].startswith("spu-") and "ts" in e
        change = next(e for e in events if e["decision"] == "allow" and e["resource"] == "topic:orders")
        assert change["identity"] == "admin" and change["node"].startswith("sc-")
        # alice may not even see that _audit exists (metadata shows what one may describe).
        with pytest.raises((PermissionDeniedError, NotFoundError)):
            await cluster.client(as_="alice").offsets("_audit", 0)
    run_async(body)


def test_malformed_policy_keeps_the_one_in_force_and_versions_only_go_forward(cluster: DataPlaneCluster,
                                                                                tmp_path: Any) -> None:
    """`kolk policy apply` of a broken file fails naming file and line, and the policy in
    force stays; version 2 revokes alice's reads; replaying version 1 is refused."""
    pki = cluster.pki["admin"]
    cli = [sys.executable, "-m", "kolk", "policy", "apply"]
    tls = ["--sc", ",".join(cluster.sc_addresses), "--tls-ca", pki["ca"], "--tls-cert", pki["cert"],
           "--tls-key", pki["key"]]
    bad = tmp_path / "bad.toml"
    bad.write_text(policy(2).replace('"consume", "describe", "use"', '"consume", "reed"'))
    out = subprocess.run(cli + [str(bad)] + tls, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "bad.toml:" in out.stderr and "reed" in out.stderr, out.stderr

    async def alice_reads() -> int:
        return len(await read_all(cluster.client(as_="alice"), "orders", timeout_s=10))
    assert run_async(alice_reads) == 5  # still version 1

    v2 = tmp_path / "v2.toml"
    v2.write_text(policy(2, '"describe"'))
    out = subprocess.run(cli + [str(v2)] + tls, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr

    async def revoked() -> bool:
        try:
            await cluster.client(as_="alice").offsets("orders", 0)
        except PermissionDeniedError:
            return True
        return False
    assert run_async(lambda: wait_until(revoked, 20, "version 2 to be enforced on the SPU"))
    v1 = tmp_path / "v1.toml"
    v1.write_text(policy(1))
    out = subprocess.run(cli + [str(v1)] + tls, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "version" in out.stderr, out.stderr
    assert run_async(revoked)
