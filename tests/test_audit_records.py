"""The audit log's gaps closed and policies without TLS, through real SC and SPU processes
(issue 17 items 3 and 7): SPU registration and SPU-side denials reach ``_audit``; no client
may write ``_audit`` whatever the policy says; a node certificate cannot write a record in
another node's name; ``kolk policy apply`` on a plaintext cluster is refused with one line
and nothing stored, and with the SC's ``--insecure-allow-plaintext-policy`` it is applied
and audited (as is a wrong node token there)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from typing import Any

import pytest

from dataplane_cluster import DataPlaneCluster, read_all, run_async, wait_until
from kolk.protocol.node_auth import token
from kolk.protocol.channel import SPU
from kolk.protocol.channel_client import ClientConnection
from kolk.protocol.errors import PermissionDeniedError

TLS_POLICY = """version = 1

[identities]
admin = ["admin"]
alice = ["writer"]

[[rule]]
effect = "allow"
roles = ["admin"]
actions = ["*"]
resources = ["topic:*", "smartmodule:*", "cluster"]

# alice may produce and consume every topic, _audit included by the pattern: the audit log
# refuses her anyway. She may not describe the cluster.
[[rule]]
effect = "allow"
roles = ["writer"]
actions = ["produce", "consume", "describe"]
resources = ["topic:*"]
"""

PLAINTEXT_POLICY = """version = 1

[identities]
anonymous = ["everyone"]

[[rule]]
effect = "allow"
roles = ["everyone"]
actions = ["*"]
resources = ["topic:*", "smartmodule:*", "cluster"]
"""


def _spec(text: str) -> dict[str, Any]:
    from kolk.security.policy import parse_policy

    return {"version": 1, "source": text, "sha256": parse_policy(text).sha256}


async def _audited(client: Any, want: Any, what: str, timeout_s: float = 30) -> list[dict[str, Any]]:
    """The _audit events once ``want(events)`` holds (it returns the matching events)."""
    async def found() -> list[dict[str, Any]] | None:
        events = [json.loads(r.value) for r in await read_all(client, "_audit", timeout_s=10)]
        return want(events) or None
    return await wait_until(found, timeout_s, what)


# ---------------------------------------------------------------- a TLS cluster with a policy

@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: Any) -> Any:
    c = DataPlaneCluster(str(tmp_path_factory.mktemp("audit-tls")), spus=1, tls=True, clients=("admin", "alice"))
    try:
        c.start()

        async def setup() -> None:
            admin = c.client(as_="admin")
            await admin.admin.put_object("policy", "active", _spec(TLS_POLICY))
            await wait_until(lambda: admin.partitions("_audit"), 30, "the SC to create _audit")
        run_async(setup)
        yield c
    finally:
        c.close()


def test_spu_registration_is_audited(tls_cluster: DataPlaneCluster) -> None:
    """The SPU's own registration (accepted) and alice's attempt to register as SPU 1
    (refused): who, from where, which SPU, and the decision."""
    async def body() -> None:
        alice = tls_cluster.client(as_="alice")
        with pytest.raises(PermissionDeniedError, match="may not registerSpu SPU 1"):
            await alice.admin.register_spu(1, "127.0.0.1:1")

        def registrations(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
            mine = [e for e in events if e.get("action") == "registerSpu" and e.get("resource") == "spu:1"]
            return mine if {e["decision"] for e in mine} == {"allow", "deny"} else []
        events = await _audited(tls_cluster.client(as_="admin"), registrations, "both registrations in _audit")
        accepted = next(e for e in events if e["decision"] == "allow")
        assert accepted["identity"] == "node" and accepted["address"].startswith("127.")
        assert f"public {tls_cluster.spus[1].address}" in accepted["reason"] and accepted["process"] == "sc-1"
        refused = next(e for e in events if e["decision"] == "deny")
        assert refused["identity"] == "alice" and "may not admin cluster" in refused["reason"]
    run_async(body)


def test_a_partition_status_denial_on_the_spu_is_audited(tls_cluster: DataPlaneCluster) -> None:
    async def body() -> None:
        alice = tls_cluster.client(as_="alice")
        conn = await alice._connect(tls_cluster.spus[1].address)
        answer = await conn.call("partitionStatus", 5, partitions=["_audit-0"])
        assert answer.result.error.code == "denied" and "alice" in answer.result.error.message

        def denial(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return [e for e in events if e.get("identity") == "alice" and e.get("action") == "describe"
                    and e.get("resource") == "cluster" and e.get("process") == "spu-1" and e.get("decision") == "deny"]
        (event, *_) = await _audited(tls_cluster.client(as_="admin"), denial, "the SPU's denial in _audit")
        assert event["node"] == "node" and event["address"].startswith("127.")
    run_async(body)


def test_a_client_may_not_write_audit_records_whatever_the_policy_says(tls_cluster: DataPlaneCluster) -> None:
    async def body() -> None:
        alice = tls_cluster.client(as_="alice")
        producer = alice.producer("_audit", retries=0)
        with pytest.raises(PermissionDeniedError, match="only cluster nodes write the audit log"):
            await (await producer.send(json.dumps({"node": "alice", "identity": "alice-forgery"}).encode()))
        events = [json.loads(r.value) for r in await read_all(tls_cluster.client(as_="admin"), "_audit")]
        assert not any(e.get("identity") == "alice-forgery" for e in events)
    run_async(body)


@pytest.mark.parametrize("value, why", [
    (json.dumps({"node": "sc-1", "identity": "forged-as-sc"}), "names node 'sc-1'"),
    (json.dumps({"identity": "forged-without-node"}), "names node 'None'"),
    ("not json", "is not JSON"),
    (json.dumps(["node", "node"]), "is not a JSON object"),
])
def test_a_node_certificate_cannot_forge_an_audit_record(tls_cluster: DataPlaneCluster, value: str, why: str) -> None:
    """A record whose node is not the writing connection's identity is refused (the whole
    produce), the refusal is audited, and the same node writing as itself is accepted."""
    async def body() -> None:
        node = tls_cluster.client(as_="node")
        producer = node.producer("_audit", retries=0, acks="leader")
        with pytest.raises(PermissionDeniedError, match=why):
            await (await producer.send(value.encode()))
        honest = {"node": "node", "identity": f"honest-after-{why}"}
        await (await producer.send(json.dumps(honest).encode()))

        def outcome(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
            refusal = [e for e in events if e.get("action") == "produce" and e.get("resource") == "topic:_audit"
                       and e.get("decision") == "deny" and why in e.get("reason", "")]
            return events if refusal and any(e.get("identity") == honest["identity"] for e in events) else []
        events = await _audited(tls_cluster.client(as_="admin"), outcome, "the refusal and the honest record")
        assert not any(str(e.get("identity", "")).startswith("forged") for e in events)
    run_async(body)


def test_with_tls_nodes_are_their_certificates_and_authenticate_is_refused(tls_cluster: DataPlaneCluster) -> None:
    """One identity model per cluster: a client certificate cannot become a node by a token,
    even one made with the right secret."""
    from jepsen.cluster import SECRET

    async def body() -> None:
        alice = tls_cluster.client(as_="alice")
        conn = await alice._connect(tls_cluster.spus[1].address)
        for call, fields in (("challenge", {}), ("authenticate", {"node": "spu-1", "token": token(SECRET, "SPU", "spu-1",
                                                                                                   bytes(32))})):
            answer = await conn.call(call, 5, **fields)
            assert answer.result.error.code == "invalidArgument", (call, answer.result)
            assert "this cluster runs with TLS" in answer.result.error.message
        answer = await conn.call("identify", 5)
        assert answer.result.error.code == "denied" and "has no node certificate" in answer.result.error.message
    run_async(body)


# ---------------------------------------------------------------- plaintext clusters and policies

def _apply(tmp_path: Any, c: DataPlaneCluster) -> subprocess.CompletedProcess:
    path = tmp_path / "policy.toml"
    path.write_text(PLAINTEXT_POLICY)
    return subprocess.run([sys.executable, "-m", "kolk", "policy", "apply", str(path), "--sc",
                           ",".join(c.sc_addresses)], capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def plaintext_cluster(tmp_path_factory: Any) -> Any:
    c = DataPlaneCluster(str(tmp_path_factory.mktemp("audit-plain")), spus=1)
    try:
        yield c.start()
    finally:
        c.close()


@pytest.fixture(scope="module")
def insecure_cluster(tmp_path_factory: Any) -> Any:
    c = DataPlaneCluster(str(tmp_path_factory.mktemp("audit-insecure")), spus=1,
                         sc_args=("--insecure-allow-plaintext-policy",))
    try:
        yield c.start()
    finally:
        c.close()


def test_policy_apply_on_a_plaintext_cluster_is_refused_with_one_line(plaintext_cluster: DataPlaneCluster,
                                                                       tmp_path: Any) -> None:
    out = _apply(tmp_path, plaintext_cluster)
    assert out.returncode == 1, out
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kolk policy apply: a policy needs TLS"), out.stderr
    assert "kolk cluster start --tls" in lines[0] and "--insecure-allow-plaintext-policy" in lines[0]

    async def body() -> None:
        client = plaintext_cluster.client()
        with pytest.raises(PermissionDeniedError, match="a policy needs TLS"):  # through the API too
            await client.admin.put_object("policy", "active", _spec(PLAINTEXT_POLICY))
        assert await client.admin.get_object("policy", "active") is None
    run_async(body)


def test_policy_apply_with_the_insecure_flag_is_applied_and_audited(insecure_cluster: DataPlaneCluster,
                                                                    tmp_path: Any) -> None:
    out = _apply(tmp_path, insecure_cluster)
    assert out.returncode == 0, out.stderr
    assert "policy version 1 applied" in out.stdout

    async def body() -> None:
        client = insecure_cluster.client()
        assert (await client.admin.get_object("policy", "active"))["spec"]["version"] == 1
        await wait_until(lambda: client.partitions("_audit"), 30, "the SC to create _audit")
        # A wrong node token on the SPU, audited now that the cluster keeps an audit log.
        conn = await ClientConnection.open(SPU, insecure_cluster.spus[1].address, 5)
        try:
            nonce = bytes((await conn.call("challenge", 5)).nonce)
            answer = await conn.call("authenticate", 5, node="spu-7", token=token("wrong-secret-0123456789", "SPU",
                                                                                   "spu-7", nonce))
            assert answer.result.error.code == "denied"
        finally:
            conn.close()

        def both(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
            applied = [e for e in events if e.get("resource") == "policy:active v1" and "without TLS" in e["reason"]]
            refused = [e for e in events if e.get("action") == "authenticate" and e.get("resource") == "node:spu-7"]
            return applied + refused if applied and refused else []
        applied, refused = await _audited(client, both, "the plaintext policy and the wrong token in _audit")
        assert applied["decision"] == "allow" and applied["node"] == "sc-1" and applied["identity"] == "anonymous"
        assert "--insecure-allow-plaintext-policy" in applied["reason"]
        assert refused["decision"] == "deny" and refused["node"] == "spu-1" and "wrong token" in refused["reason"]
    run_async(body)


# ---------------------------------------------------------------- the pure check

def _flip(data: bytes, at: int) -> bytes:
    b = bytearray(data)
    b[at] ^= 0xFF
    return bytes(b)


def test_forged_audit_records_table() -> None:
    """What the SPU leading _audit refuses, record by record, batch by batch, compressed too."""
    from kolk.node.audit import forged_audit_records
    from kolk.segments.batch import CODEC_GZIP
    from kolk.segments.records import build_batch

    def batch(*values: bytes | None, **options: Any) -> bytes:
        return build_batch([(None, v) for v in values], **options)

    me = json.dumps({"node": "spu-1", "action": "x"}).encode()
    assert forged_audit_records(batch(me, me), "spu-1") is None
    assert forged_audit_records(batch(me) + batch(me, codec=CODEC_GZIP), "spu-1") is None
    cases = {
        "another node": (batch(me, json.dumps({"node": "spu-2"}).encode()),
                         "record 1 of the batch at byte 0 names node 'spu-2'"),
        "no node": (batch(b"{}"), "names node 'None'"),
        "node not a string": (batch(b'{"node": ["spu-1"]}'), "names node \"['spu-1']\""),
        "not JSON": (batch(b"spu-1"), "is not JSON"),
        "no value": (batch(None), "is not a JSON object"),
        "not an object": (batch(b'"spu-1"'), "is not a JSON object"),
        "second batch forged": (batch(me) + batch(json.dumps({"node": "sc-1"}).encode()), "names node 'sc-1'"),
        "compressed forgery": (batch(json.dumps({"node": "sc-1"}).encode(), codec=CODEC_GZIP), "names node 'sc-1'"),
        "control batch": (batch(me, control=True), "control batch"),
        "bad CRC": (_flip(batch(me), -5), "cannot be read"),
        "truncated": (batch(me)[:-3], "cannot be read"),
        "empty": (b"", "cannot be read"),
    }
    for what, (records, why) in cases.items():
        problem = forged_audit_records(records, "spu-1")
        assert problem is not None and why in problem and "\n" not in problem, (what, problem)


def test_kolk_cluster_start_passes_the_secret_and_the_insecure_flag_on(tmp_path: Any) -> None:
    """A plaintext `kolk cluster start --insecure-allow-plaintext-policy`: its SPU proves the
    generated secret (a topic is created, produced to and consumed), and `kolk policy apply`
    is accepted because the operator said so when starting it."""
    home = tmp_path / "home"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("KOLK_")}, "KOLK_HOME": str(home)}

    def kolk(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "kolk", *args], capture_output=True, text=True, input=stdin,
                              timeout=90, env=env, cwd=str(tmp_path))
    started = kolk("cluster", "start", "--insecure-allow-plaintext-policy")
    try:
        assert started.returncode == 0, started.stderr
        assert kolk("topic", "create", "t").returncode == 0
        assert kolk("produce", "t", stdin="a\nb\n").returncode == 0
        consumed = kolk("consume", "t", "-B", "-d", "--output", "raw")
        assert consumed.returncode == 0 and consumed.stdout.splitlines() == ["a", "b"], consumed
        path = tmp_path / "policy.toml"
        path.write_text(PLAINTEXT_POLICY)
        applied = kolk("policy", "apply", str(path))
        assert applied.returncode == 0 and "policy version 1 applied" in applied.stdout, applied.stderr
    finally:
        if kolk("cluster", "stop").returncode != 0:  # stop by pid what the profile names
            profile = json.loads((home / "profile.json").read_text()) if (home / "profile.json").exists() else {}
            for pid in profile.get("pids", {}).values():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
