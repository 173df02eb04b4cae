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

from dataplane_cluster import DataPlaneCluster, read_all, release_consumer, run_async, wait_committed, wait_until
from kolk.client.consumer import Offset
from kolk.protocol.errors import CorruptDataError, KolkError, NotFoundError, PermissionDeniedError
from kolk.segments.batch import iter_batches
from kolk.segments.records import build_batch, decode_records, encode_batch
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
resources = ["topic:orders", "topic:masked-*", "smartmodule:*"]

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
topics = ["orders", "masked-*"]
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
        # node: the writer's identity as the _audit leader checked it (the one node certificate
        # of this cluster); process: which node wrote it (docs/security.md, "Audit").
        assert e["address"].startswith("127.") and e["node"] == "node" and e["process"].startswith("spu-")
        assert "ts" in e
        change = next(e for e in events if e["decision"] == "allow" and e["resource"] == "topic:orders")
        assert change["identity"] == "admin" and change["process"].startswith("sc-")
        # alice may not even see that _audit exists (metadata shows what one may describe).
        with pytest.raises((PermissionDeniedError, NotFoundError)):
            await cluster.client(as_="alice").offsets("_audit", 0)
    run_async(body)


# ---------------------------------------------------------------- masking fails closed (issue 17 item 4)
# Each bypass gets its own masked-* topic (masked for alice like orders); these run before the
# test below revokes alice's reads.

async def produce_values(c: DataPlaneCluster, topic: str, values: list[bytes]) -> None:
    """``values`` into a new topic ``topic``, as admin, committed."""
    admin = c.client(as_="admin")
    await admin.create_topic(topic, 1, 1)
    producer = admin.producer(topic)
    for v in values:
        await producer.send(v)
    await producer.flush()
    await wait_committed(admin, topic)


async def fetched_values(c: DataPlaneCluster, topic: str, as_: str, offset: int = 0) -> list[bytes | None]:
    """One fetch straight from the leader (no client library in between): the values of the
    records from ``offset`` on (a fetch answers whole batches, which may start before it)."""
    _client, spu = await leader_spu(c, topic, as_)
    r = await spu.call("fetch", 5, topic=topic, partition=0, offset=offset, maxBytes=1 << 20, isolation="committed")
    assert r.result.ok, r.result.error.message
    data = bytes(r.records)
    return [rec.value for pos, _h in iter_batches(data, 1 << 24) for rec in decode_records(data, pos)
            if rec.offset >= offset]


def test_masked_reader_never_gets_a_value_that_is_not_utf8(cluster: DataPlaneCluster) -> None:
    """A value with a byte that is not UTF-8 used to go out unmasked; now it is redacted whole,
    by fetch and by stream, and the strict values around it are masked field by field."""
    values = [b'{"id": 0, "card": "4111-0", "note": "\xff"}', b'{"id": 1, "card": "4111-1"}',
              b'{"id": 2, "card": "4111-2", "name": "\xed\xa0\x80"}']

    async def body() -> None:
        await produce_values(cluster, "masked-utf8", values)
        want = [b'"***"', b'{"id":1,"card":"***"}', b'"***"']
        assert await fetched_values(cluster, "masked-utf8", "alice") == want
        assert [r.value for r in await read_all(cluster.client(as_="alice"), "masked-utf8")] == want
        assert [r.value for r in await read_all(cluster.client(as_="admin"), "masked-utf8")] == values
    run_async(body)


def test_masked_reader_never_gets_an_object_with_trailing_data(cluster: DataPlaneCluster) -> None:
    """Trailing data after the object (a second object, garbage, a NUL) made the strict
    parser give up and the value pass in clear; now it is redacted whole."""
    values = [b'{"card": "4111-0"} {"x": 1}', b'{"card": "4111-1"}x', b'{"card": "4111-2"}\x00',
              b'{"card": "4111-3"}  \n']

    async def body() -> None:
        await produce_values(cluster, "masked-trailing", values)
        want = [b'"***"', b'"***"', b'"***"', b'{"card":"***"}']  # whitespace after the value is strict JSON
        assert await fetched_values(cluster, "masked-trailing", "alice") == want
        assert [r.value for r in await read_all(cluster.client(as_="alice"), "masked-trailing")] == want
    run_async(body)


def test_a_client_cannot_produce_a_control_batch(cluster: DataPlaneCluster) -> None:
    """Masking and SmartModules used to pass control batches through untouched, and the SPU
    took them from clients: now even admin's control batch is refused with one line naming
    the batch, and nothing is stored."""
    async def body() -> None:
        await produce_values(cluster, "masked-control", [b'{"card": "4111-0"}'])
        _client, spu = await leader_spu(cluster, "masked-control", "admin")
        plain = build_batch([(None, b'{"card": "4111-1"}')])
        control = build_batch([(None, b'{"card": "4111-2"}')], control=True)
        r = await spu.call("produce", 10, topic="masked-control", partition=0, acks="leader", records=plain + control,
                           timeoutMs=5000)
        assert not r.result.ok and r.result.error.code == "invalidBatch"
        assert r.result.error.message == (f"batch at byte {len(plain)} is a control batch (attributes 0x0020 has the "
                                          "control bit 0x20): clients may not produce control batches")
        assert await cluster.client(as_="admin").offsets("masked-control", 0) == (0, 1, 1)
        assert await fetched_values(cluster, "masked-control", "alice") == [b'{"card":"***"}']
    run_async(body)


def test_a_lone_surrogate_neither_breaks_the_fetch_nor_stalls_a_stream(cluster: DataPlaneCluster) -> None:
    """'\\ud800' is legal JSON text but no Unicode string: re-encoding it raised inside the
    SPU (a remote traceback for every masked fetch of the partition, a silent stall for a
    stream from before it). Now the value is redacted and both go on past it."""
    values = [b'{"id": 0, "card": "4111-0"}', b'{"id": 1, "card": "4111-1", "s": "\\ud800"}',
              b'{"id": 2, "card": "4111-2"}', b'{"\\udfff": 3, "card": "4111-3"}']

    async def body() -> None:
        await produce_values(cluster, "masked-surrogate", values)
        want = [b'{"id":0,"card":"***"}', b'"***"', b'{"id":2,"card":"***"}', b'"***"']
        assert await fetched_values(cluster, "masked-surrogate", "alice") == want
        assert await fetched_values(cluster, "masked-surrogate", "alice", offset=1) == want[1:]
        alice = cluster.client(as_="alice")
        streamed = await read_all(alice, "masked-surrogate", timeout_s=20)
        assert [(r.offset, r.value) for r in streamed] == list(enumerate(want))
        assert "Traceback" not in cluster.spu_log(1)
    run_async(body)


def test_a_smartmodule_with_a_lax_parser_never_sees_a_masked_field(cluster: DataPlaneCluster) -> None:
    """contains(needle) looks for bytes anywhere in the raw value, the laxest parser there is.
    For alice it finds the card in none of the values that are not strict JSON (each was
    redacted before the module ran), only in a field no mask names; admin's same stream finds
    them all."""
    wasm = build_c(os.path.join(EXAMPLES, "contains.c"))
    values = [b'{"card": "4111-0"} trailing', b'{"card": "4111-1", "x": "\xff"}', b'\xef\xbb\xbf{"card": "4111-2"}',
              b'{"card": "4111-3", "card": "x"}', b'{"card": "4111-4", "n": NaN}', b'{"card": "4111-5"}',
              b'{"note": "4111-public"}']

    async def matches(as_: str, want: int) -> list[bytes]:
        consumer = cluster.client(as_=as_).consumer("masked-lax", start=Offset.beginning(),
                                                    smartmodules=[("contains", {"needle": "4111-"})])
        got: list = []

        async def collect() -> None:
            async for batch in consumer.batches():
                got.extend(r.value for r in batch)
                if len(got) >= want:
                    return
        try:
            await asyncio.wait_for(collect(), 20)
        finally:
            await release_consumer(consumer)
        return got

    async def body() -> None:
        await cluster.client(as_="admin").admin.put_object("smartmodule", "contains@1", {
            "wasm": base64.b64encode(wasm).decode(), "sha256": hashlib.sha256(wasm).hexdigest(), "size": len(wasm)})
        await produce_values(cluster, "masked-lax", values)
        assert await matches("alice", 1) == [b'{"note": "4111-public"}']  # the last record: every other went by
        assert await matches("admin", len(values)) == values
    run_async(body)


def test_a_batch_that_cannot_be_decoded_is_withheld_with_a_typed_error(cluster: DataPlaneCluster) -> None:
    """The SPU stores batches without decoding their records, so a producer can write one whose
    records section is garbage under a valid CRC. A masked reader cannot be shown it masked: a
    read gets the batches before it and ends there; a read from it fails with corruptBatch
    naming the offset (one line, no traceback), and its bytes are never sent; so does a stream."""
    async def body() -> None:
        await produce_values(cluster, "masked-undecodable", [b'{"card": "4111-0"}'])
        garbage = encode_batch(b"\xff" * 40 + b'"card": "4111-1"', 1, first_timestamp=0, max_timestamp=0)
        _client, spu = await leader_spu(cluster, "masked-undecodable", "admin")
        r = await spu.call("produce", 10, topic="masked-undecodable", partition=0, acks="leader", records=garbage,
                           timeoutMs=5000)
        assert r.result.ok, r.result.error.message
        await wait_committed(cluster.client(as_="admin"), "masked-undecodable")
        _client, alice = await leader_spu(cluster, "masked-undecodable", "alice")
        r = await alice.call("fetch", 5, topic="masked-undecodable", partition=0, offset=1, maxBytes=1 << 20,
                             isolation="committed")
        assert not r.result.ok and r.result.error.code == "corruptBatch"
        assert "batch at offset 1 cannot be masked" in r.result.error.message
        assert "\n" not in r.result.error.message and b"4111-1" not in bytes(r.records)
        r = await alice.call("fetch", 5, topic="masked-undecodable", partition=0, offset=0, maxBytes=1 << 20,
                             isolation="committed")
        assert r.result.ok and r.nextOffset == 1 and b"4111" not in bytes(r.records)
        assert await fetched_values(cluster, "masked-undecodable", "alice") == [b'{"card":"***"}']
        consumer = cluster.client(as_="alice").consumer("masked-undecodable", start=Offset.beginning())
        got: list = []

        async def collect() -> None:
            async for record in consumer:
                got.append(record.value)
        try:
            with pytest.raises(CorruptDataError, match="batch at offset 1 cannot be masked"):
                await asyncio.wait_for(collect(), 20)
        finally:
            await release_consumer(consumer)
        assert got == [b'{"card":"***"}']
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
