"""Node identity without TLS, through real SC and SPU processes (issue 17 item 3).

On a plaintext cluster every client is ``anonymous``; node-only calls need proof of the
cluster secret (core/node/identity.py). Each node-only call of the SC and of the SPU is
refused from an anonymous connection, one case per call, with nothing changed; a wrong token
and a token without a challenge are refused; the SPUs of a plaintext cluster still register,
replicate and serve. ``kolk sc`` and ``kolk spu`` refuse a secret file others can read, a
short secret, a missing file, and an SPU without TLS and without a secret, with one line.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any, Awaitable, Callable

import pytest

from dataplane_cluster import DataPlaneCluster, read_all, run_async, wait_until
from jepsen.cluster import SECRET, free_port
from kolk.protocol.node_auth import token
from kolk.node.secret import SECRET_ENV
from kolk.protocol.channel import SC, SPU
from kolk.protocol.channel_client import ClientConnection

TOPIC = "orders"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: Any) -> Any:
    c = DataPlaneCluster(str(tmp_path_factory.mktemp("node-identity")), spus=2)
    try:
        c.start()

        async def setup() -> None:
            client = c.client()
            await client.create_topic(TOPIC, 1, 2)
            producer = client.producer(TOPIC, acks="all")
            for i in range(10):
                await producer.send(f"record-{i}".encode())
            await producer.flush()
        run_async(setup)
        yield c
    finally:
        c.close()


async def _partition(c: DataPlaneCluster) -> dict[str, Any]:
    return (await c.client().partitions(TOPIC))[0]


async def _leader_address(c: DataPlaneCluster) -> str:
    p = await _partition(c)
    return c.spus[p["status"]["leader"]].address


def _denied(answer: Any, call: str) -> str:
    assert not answer.result.ok, f"{call} was accepted from anonymous"
    error = answer.result.error
    assert error.code == "denied", (call, error.code, error.message)
    assert "\n" not in error.message and "cluster secret" in error.message, error.message
    return str(error.message)


# ---------------------------------------------------------------- every node-only call, anonymous

async def _register_spu(c: DataPlaneCluster, conn: ClientConnection) -> None:
    """As SPU 1, at an address of the caller's: SPU 1 keeps its own."""
    env, m = conn.request("registerSpu")
    m.id, m.publicAddress, m.privateAddress = 1, "127.0.0.1:1", "127.0.0.1:1"
    _denied(await conn.send(env, 5), "registerSpu")
    spu = next(u for u in await c.client().admin.list_objects("spu") if u["spec"]["id"] == 1)
    assert spu["spec"]["public_address"] == c.spus[1].address


async def _unregister_spu(c: DataPlaneCluster, conn: ClientConnection) -> None:
    env, m = conn.request("unregisterSpu")
    m.id = 2
    _denied(await conn.send(env, 5), "unregisterSpu")
    assert 2 in {u["spec"]["id"] for u in await c.client().admin.list_objects("spu")}


async def _heartbeat(c: DataPlaneCluster, conn: ClientConnection) -> None:
    _denied(await conn.call("heartbeat", 5, spuId=1), "heartbeat")


async def _update_isr(c: DataPlaneCluster, conn: ClientConnection) -> None:
    p = await _partition(c)
    env, m = conn.request("updateIsr")
    m.partition, m.epoch, m.leader = p["name"], p["status"]["epoch"], p["status"]["leader"]
    m.init("isr", 1)[0] = p["status"]["leader"]
    _denied(await conn.send(env, 5), "updateIsr")
    assert sorted((await _partition(c))["status"]["isr"]) == [1, 2]


async def _report_replica_loss(c: DataPlaneCluster, conn: ClientConnection) -> None:
    p = await _partition(c)
    _denied(await conn.call("reportReplicaLoss", 5, partition=p["name"], spuId=2, reason="forged", epoch=-1),
            "reportReplicaLoss")
    assert sorted((await _partition(c))["status"]["isr"]) == [1, 2]


async def _watch(c: DataPlaneCluster, conn: ClientConnection) -> None:
    answer, stream = await conn.open_stream("watch", 1 << 16, 5, fromVersion=0)
    _denied(answer, "watch")
    assert stream.pending() == 0


async def _replica_fetch(c: DataPlaneCluster, conn: ClientConnection) -> None:
    p = await _partition(c)
    follower = next(r for r in p["spec"]["replicas"] if r != p["status"]["leader"])
    answer = await conn.call("replicaFetch", 5, partition=p["name"], replicaId=follower, epoch=p["status"]["epoch"],
                             offset=0, maxBytes=1 << 20, maxWaitMs=0)
    _denied(answer, "replicaFetch")
    assert len(answer.records) == 0


async def _epoch_end_offset(c: DataPlaneCluster, conn: ClientConnection) -> None:
    p = await _partition(c)
    _denied(await conn.call("epochEndOffset", 5, partition=p["name"], replicaId=2, epoch=p["status"]["epoch"],
                            lastEpoch=0), "epochEndOffset")


async def _identify(c: DataPlaneCluster, conn: ClientConnection) -> None:
    _denied(await conn.call("identify", 5), "identify")


SC_CALLS: dict[str, Callable[[DataPlaneCluster, ClientConnection], Awaitable[None]]] = {
    "registerSpu": _register_spu, "unregisterSpu": _unregister_spu, "heartbeat": _heartbeat,
    "updateIsr": _update_isr, "reportReplicaLoss": _report_replica_loss, "watch": _watch,
}
SPU_CALLS: dict[str, Callable[[DataPlaneCluster, ClientConnection], Awaitable[None]]] = {
    "replicaFetch": _replica_fetch, "epochEndOffset": _epoch_end_offset, "identify": _identify,
}


@pytest.mark.parametrize("call", sorted(SC_CALLS))
def test_anonymous_node_only_call_to_the_sc_is_refused(cluster: DataPlaneCluster, call: str) -> None:
    async def body() -> None:
        conn = await ClientConnection.open(SC, cluster.sc_addresses[0], 5)
        try:
            await SC_CALLS[call](cluster, conn)
        finally:
            conn.close()
    run_async(body)


@pytest.mark.parametrize("call", sorted(SPU_CALLS))
def test_anonymous_node_only_call_to_an_spu_is_refused(cluster: DataPlaneCluster, call: str) -> None:
    async def body() -> None:
        conn = await ClientConnection.open(SPU, await _leader_address(cluster), 5)
        try:
            await SPU_CALLS[call](cluster, conn)
        finally:
            conn.close()
    run_async(body)


# ---------------------------------------------------------------- tokens

async def _authenticate(conn: ClientConnection, secret: str, node: str = "spu-2") -> Any:
    challenge = await conn.call("challenge", 5)
    assert challenge.result.ok and len(challenge.nonce) == 32
    return await conn.call("authenticate", 5, node=node,
                           token=token(secret, conn.service.name, node, bytes(challenge.nonce)))


@pytest.mark.parametrize("service", ["SC", "SPU"])
def test_a_wrong_token_is_refused_and_the_connection_stays_anonymous(cluster: DataPlaneCluster, service: str) -> None:
    async def body() -> None:
        address = cluster.sc_addresses[0] if service == "SC" else await _leader_address(cluster)
        conn = await ClientConnection.open(SC if service == "SC" else SPU, address, 5)
        try:
            answer = await _authenticate(conn, "not-the-cluster-secret-0123")
            assert answer.result.error.code == "denied" and "wrong token for spu-2" in answer.result.error.message
            # A token computed for another connection's nonce is no better.
            other = await ClientConnection.open(conn.service, address, 5)
            try:
                nonce = bytes((await other.call("challenge", 5)).nonce)
            finally:
                other.close()
            await conn.call("challenge", 5)
            replayed = await conn.call("authenticate", 5, node="spu-2", token=token(SECRET, service, "spu-2", nonce))
            assert replayed.result.error.code == "denied", replayed.result
            if service == "SC":
                await _heartbeat(cluster, conn)
            else:
                await _identify(cluster, conn)
        finally:
            conn.close()
    run_async(body)


def test_authenticate_without_a_challenge_or_as_a_made_up_name_is_refused(cluster: DataPlaneCluster) -> None:
    async def body() -> None:
        conn = await ClientConnection.open(SC, cluster.sc_addresses[0], 5)
        try:
            answer = await conn.call("authenticate", 5, node="spu-1", token=b"\0" * 32)
            assert answer.result.error.code == "denied" and "challenge" in answer.result.error.message
            answer = await _authenticate(conn, SECRET, node="admin")
            assert answer.result.error.code == "denied" and "not sc-<id> or spu-<id>" in answer.result.error.message
        finally:
            conn.close()
    run_async(body)


def test_the_right_token_makes_the_connection_a_node(cluster: DataPlaneCluster) -> None:
    """The positive control of the refusals above: the same calls with the secret proved."""
    async def body() -> None:
        conn = await ClientConnection.open(SPU, await _leader_address(cluster), 5)
        try:
            assert (await _authenticate(conn, SECRET)).result.ok
            p = await _partition(cluster)
            follower = next(r for r in p["spec"]["replicas"] if r != p["status"]["leader"])
            answer = await conn.call("identify", 5)
            assert answer.result.ok and answer.spuId == p["status"]["leader"]
            answer = await conn.call("epochEndOffset", 5, partition=p["name"], replicaId=follower,
                                     epoch=p["status"]["epoch"], lastEpoch=p["status"]["epoch"])
            assert answer.result.ok, answer.result.error.message
        finally:
            conn.close()
    run_async(body)


def test_spus_of_a_plaintext_cluster_register_replicate_and_serve(cluster: DataPlaneCluster) -> None:
    """Both SPUs registered (alive, heartbeating), the partition's follower in sync (acks=all
    was answered) and caught up, records produced and consumed."""
    async def body() -> None:
        client = cluster.client()
        spus = await client.admin.list_objects("spu")
        assert sorted(u["spec"]["id"] for u in spus) == [1, 2]
        assert all(u["status"].get("alive") for u in spus), spus
        assert sorted((await _partition(cluster))["status"]["isr"]) == [1, 2]
        producer = client.producer(TOPIC, acks="all")
        await producer.send(b"after")
        await producer.flush()
        values = [r.value for r in await read_all(client, TOPIC)]
        assert values[:10] == [f"record-{i}".encode() for i in range(10)] and values[-1] == b"after"

        async def follower_caught_up() -> bool:
            rows = await client.partition_list(TOPIC)
            return bool(rows) and rows[0]["lag"] == 0
        await wait_until(follower_caught_up, 20, "the follower to catch up")
    run_async(body)


# ---------------------------------------------------------------- starting without a good secret

def _kolk(args: list[str], env_secret: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != SECRET_ENV}
    if env_secret is not None:
        env[SECRET_ENV] = env_secret
    return subprocess.run([sys.executable, "-m", "kolk", *args], capture_output=True, text=True, timeout=60, env=env)


def _spu_args(tmp_path: Any) -> list[str]:
    port = free_port()
    return ["spu", "--id", "1", "--sc", f"127.0.0.1:{free_port()}", "--data-dir", str(tmp_path / "spu"),
            "--public", f"127.0.0.1:{port}"]


def _sc_args(tmp_path: Any) -> list[str]:
    return ["sc", "--id", "1", "--data-dir", str(tmp_path / "sc"), "--raft", f"127.0.0.1:{free_port()}",
            "--admin", f"127.0.0.1:{free_port()}"]


def _one_line_refusal(out: subprocess.CompletedProcess, *words: str) -> None:
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    for w in words:
        assert w in lines[0], lines[0]


def _secret_file(tmp_path: Any, mode: int, text: str = SECRET) -> str:
    path = tmp_path / "secret"
    path.write_text(text + "\n")
    os.chmod(path, mode)
    return str(path)


def test_an_spu_without_tls_and_without_a_secret_does_not_start(tmp_path: Any) -> None:
    out = _kolk(_spu_args(tmp_path))
    _one_line_refusal(out, "kolk spu:", "without TLS", "--secret-file", SECRET_ENV)
    assert not (tmp_path / "spu").exists()


@pytest.mark.parametrize("program", ["sc", "spu"])
def test_a_secret_file_others_can_read_is_refused_at_start(tmp_path: Any, program: str) -> None:
    path = _secret_file(tmp_path, 0o644)
    args = _sc_args(tmp_path) if program == "sc" else _spu_args(tmp_path)
    out = _kolk(args + ["--secret-file", path])
    _one_line_refusal(out, f"kolk {program}:", path, "0644", "chmod 600")
    assert not (tmp_path / program).exists()


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o602])
def test_a_secret_file_the_group_or_others_can_read_or_write_is_refused(tmp_path: Any, mode: int) -> None:
    out = _kolk(_spu_args(tmp_path) + ["--secret-file", _secret_file(tmp_path, mode)])
    _one_line_refusal(out, "kolk spu:", f"{mode:04o}", "group or others")


@pytest.mark.parametrize("program", ["sc", "spu"])
def test_a_short_secret_is_refused_at_start(tmp_path: Any, program: str) -> None:
    args = _sc_args(tmp_path) if program == "sc" else _spu_args(tmp_path)
    out = _kolk(args + ["--secret-file", _secret_file(tmp_path, 0o600, "x" * 15)])
    _one_line_refusal(out, f"kolk {program}:", "15 characters", "at least 16")


def test_a_short_secret_in_the_environment_is_refused(tmp_path: Any) -> None:
    out = _kolk(_spu_args(tmp_path), env_secret="short")
    _one_line_refusal(out, "kolk spu:", f"${SECRET_ENV}", "at least 16")


@pytest.mark.parametrize("program", ["sc", "spu"])
def test_a_missing_secret_file_is_refused_at_start(tmp_path: Any, program: str) -> None:
    args = _sc_args(tmp_path) if program == "sc" else _spu_args(tmp_path)
    out = _kolk(args + ["--secret-file", str(tmp_path / "nowhere")])
    _one_line_refusal(out, f"kolk {program}:", "nowhere", "no such file")


def test_an_unreadable_secret_file_is_refused_at_start(tmp_path: Any) -> None:
    if os.geteuid() == 0:
        # root reads a 0000 file anyway: a directory stands in for "cannot be read as a secret".
        path = tmp_path / "dir"
        path.mkdir(mode=0o700)
        out = _kolk(_spu_args(tmp_path) + ["--secret-file", str(path)])
        _one_line_refusal(out, "kolk spu:", str(path))
        return
    out = _kolk(_spu_args(tmp_path) + ["--secret-file", _secret_file(tmp_path, 0o000)])
    _one_line_refusal(out, "kolk spu:", "permission denied")


def test_a_private_secret_file_starts_a_plaintext_spu(tmp_path: Any) -> None:
    """The positive control: the same command with a 0600 file gets past the secret and past
    its private-address check, which dials itself and proves the secret on that connection;
    only then does it create its data directory (and go on trying to reach the SC that is
    not there, until stopped)."""
    proc = subprocess.Popen([sys.executable, "-m", "kolk", *_spu_args(tmp_path),
                             "--secret-file", _secret_file(tmp_path, 0o600)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={k: v for k, v in os.environ.items() if k != SECRET_ENV})
    try:
        async def past_the_checks() -> bool:
            assert proc.poll() is None, f"the SPU exited with status {proc.returncode}"
            return (tmp_path / "spu").exists()
        run_async(lambda: wait_until(past_the_checks, 30, "the SPU to open its data directory"))
    finally:
        proc.kill()
        proc.wait(timeout=30)


def test_an_spu_with_another_secret_cannot_join(cluster: DataPlaneCluster, tmp_path: Any) -> None:
    """Its registration is refused by the SC (the token does not prove the cluster's secret):
    it stops with one line saying so, and the cluster does not list it."""
    args = ["spu", "--id", "3", "--sc", cluster.sc_addresses[0], "--data-dir", str(tmp_path / "spu3"),
            "--public", f"127.0.0.1:{free_port()}"]
    out = _kolk(args, env_secret="another-cluster-secret-0123")
    _one_line_refusal(out, "kolk spu: cannot join the cluster:", "refused spu-3's cluster secret", "wrong token")

    async def spus() -> list[int]:
        return sorted(u["spec"]["id"] for u in await cluster.client().admin.list_objects("spu"))
    assert run_async(spus) == [1, 2]


# ---------------------------------------------------------------- the pure parts

def test_a_challenge_accepts_only_its_own_nonce_once() -> None:
    from kolk.protocol.node_auth import Challenge

    c = Challenge()
    nonce = c.issue()
    assert c.verify(SECRET, "SC", "spu-1", token(SECRET, "SC", "spu-1", nonce)) is None
    assert "without asking for a challenge" in str(c.verify(SECRET, "SC", "spu-1", token(SECRET, "SC", "spu-1", nonce)))
    cases = {  # each against a fresh nonce: what a wrong token was computed over
        "another secret": lambda n: token("x" * 16, "SC", "spu-1", n),
        "another service": lambda n: token(SECRET, "SPU", "spu-1", n),
        "another node": lambda n: token(SECRET, "SC", "spu-2", n),
        "another nonce": lambda n: token(SECRET, "SC", "spu-1", bytes(32)),
        "truncated": lambda n: token(SECRET, "SC", "spu-1", n)[:31],
        "empty": lambda n: b"",
    }
    for what, make in cases.items():
        nonce = c.issue()
        assert "wrong token for spu-1" in str(c.verify(SECRET, "SC", "spu-1", make(nonce))), what
    nonce = c.issue()
    assert "no cluster secret" in str(c.verify(None, "SC", "spu-1", token(SECRET, "SC", "spu-1", nonce)))
    for name in ("admin", "spu-", "sc-1x", "spu-1\n", "SPU-1", ""):
        c.issue()
        assert "is not sc-<id> or spu-<id>" in str(c.verify(SECRET, "SC", name, b"")), name


def test_read_secret_file_table(tmp_path: Any) -> None:
    from kolk.node.secret import SecretError, read_secret_file

    assert read_secret_file(_secret_file(tmp_path, 0o600, f"  {SECRET}  ")) == SECRET
    assert read_secret_file(_secret_file(tmp_path, 0o400)) == SECRET
    refused = {
        0o644: "must not be readable", 0o660: "must not be readable", 0o606: "must not be readable",
    }
    for mode, why in refused.items():
        with pytest.raises(SecretError, match=why):
            read_secret_file(_secret_file(tmp_path, mode))
    long = tmp_path / "long"
    long.write_bytes(b"x" * 5000)
    os.chmod(long, 0o600)
    with pytest.raises(SecretError, match="longer than 4096 bytes"):
        read_secret_file(str(long))
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff" * 20)
    os.chmod(binary, 0o600)
    with pytest.raises(SecretError, match="not UTF-8"):
        read_secret_file(str(binary))
    with pytest.raises(SecretError, match="not a regular file"):
        read_secret_file(str(tmp_path))
