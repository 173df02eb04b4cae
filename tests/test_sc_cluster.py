"""Three real SC processes on loopback (DESIGN.md §2, §3): leader kills, kill -9 of every node,
simulated power loss, bad input on the admin port, hostile requests, and linearizability of
metadata reads and writes checked on recorded histories."""

from __future__ import annotations

import asyncio
import os
import random
import socket
import struct
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jepsen.checkers.linearizability import check  # noqa: E402
from jepsen.cluster import SECRET, ScCluster, wait_for  # noqa: E402
from jepsen.history import Operation  # noqa: E402
from kolk.client.admin import AdminClient, run  # noqa: E402
from kolk.protocol.node_auth import NodeCredential  # noqa: E402
from kolk.protocol.errors import (  # noqa: E402
    AlreadyExistsError, InvalidRequestError, KolkError, ReplicationFactorTooHighError)
from kolk.protocol.channel import CallRejected  # noqa: E402
from kolk.protocol.framing import FrameDecoder, Kind, encode_frame  # noqa: E402
from kolk.protocol.messages import decode, which  # noqa: E402
from kolk.transport import SC, connect  # noqa: E402


@pytest.fixture
def cluster(tmp_path):
    c = ScCluster(str(tmp_path / "cluster"), fsync_log=True)
    c.start_all()
    try:
        wait_leader(c)
        yield c
    finally:
        c.close()


def status_of(address: str) -> dict:
    return run(lambda: AdminClient([address], timeout_s=2).cluster_status())


def wait_leader(c: ScCluster, timeout_s: float = 20) -> str:
    """Every live SC names the same leader, which is one of the live SCs."""
    def agreed() -> str | None:
        live = [n for n in c.nodes.values() if n.alive]
        leaders = {status_of(n.admin)["leader"] for n in live}
        if len(leaders) == 1:
            (leader,) = leaders
            if leader in {n.admin for n in live}:
                return leader
        return None
    return wait_for(agreed, timeout_s, lambda: "SCs to agree on a live leader\n" + c.logs())


def client(c: ScCluster, timeout_s: float = 20) -> AdminClient:
    return AdminClient(c.admin_addresses, timeout_s=timeout_s)


def topics(c: ScCluster, address: str | None = None) -> set[str]:
    addrs = [address] if address else c.admin_addresses
    return {t["name"] for t in run(lambda: AdminClient(addrs, timeout_s=20).list_topics())}


def register_spus(c: ScCluster, n: int = 2) -> None:
    async def go() -> None:
        a = AdminClient(c.admin_addresses, timeout_s=20, credential=NodeCredential("spu-1", SECRET))  # node-only
        for i in range(1, n + 1):
            await a.register_spu(i, f"127.0.0.1:{9100 + i}")
    run(go)


def test_leader_kill_while_creating_and_deleting_topics(cluster: ScCluster) -> None:
    """Topics created and deleted while the leader is killed with SIGKILL: after the killed SC
    restarts, every SC holds exactly the acknowledged creates minus acknowledged deletes."""
    register_spus(cluster)
    acked: set[str] = set()
    deleted: set[str] = set()
    unknown: set[str] = set()

    async def workload() -> None:
        a = client(cluster)
        for i in range(24):
            if i == 8:
                leader = cluster.node_by_admin((await a.cluster_status())["leader"])
                cluster.kill(leader.node_id)
            name = f"t{i}"
            try:
                await a.create_topic(name, partitions=2, replication_factor=2)
                acked.add(name)
            except AlreadyExistsError:
                acked.add(name)  # a retried create that had already committed
            except KolkError:
                unknown.add(name)
            if i % 5 == 4 and acked - deleted:
                victim = sorted(acked - deleted)[0]
                try:
                    await a.delete_topic(victim)
                    deleted.add(victim)
                except KolkError:
                    unknown.add(victim)
    run(workload)
    for n in cluster.nodes.values():
        if not n.alive:
            cluster.start(n.node_id)
    wait_leader(cluster)
    expected = acked - deleted
    for n in cluster.nodes.values():
        got = wait_for(lambda: (t := topics(cluster, n.admin)) >= expected - unknown and t, 20,
                       f"SC {n.node_id} to catch up")
        assert expected - unknown <= got, f"SC {n.node_id} lost acknowledged topics {expected - got}"
        assert not (got & (deleted - unknown)), f"SC {n.node_id} still has deleted topics"
        assert got <= expected | unknown
    assert len(acked) >= 12, f"too few creates succeeded around the leader kill: {sorted(acked)}"


def test_kill_all_and_power_loss_keep_every_acknowledged_command(cluster: ScCluster) -> None:
    """kill -9 of all three SCs, then restart: every acknowledged command is there. Then the
    same after a simulated power loss: every journal, meta and snapshot file cut back to the
    length it had at its last fsync."""
    register_spus(cluster, 3)

    async def create(names: list[str]) -> list[str]:
        a = client(cluster)
        done = []
        for name in names:
            await a.create_topic(name, partitions=1, replication_factor=3)
            done.append(name)
        return done

    first = run(lambda: create([f"a{i}" for i in range(15)]))
    cluster.kill_all()
    cluster.start_all()
    wait_leader(cluster)
    for n in cluster.nodes.values():
        assert set(first) <= topics(cluster, n.admin), f"SC {n.node_id} lost topics after kill -9 of all"

    second = run(lambda: create([f"b{i}" for i in range(15)]))
    cluster.kill_all()
    cuts = cluster.cut_to_fsynced()
    assert any(p.endswith("journal.log") for p in cuts), "the SCs reported no journal fsyncs"
    cluster.start_all()
    wait_leader(cluster)
    for n in cluster.nodes.values():
        got = topics(cluster, n.admin)
        assert set(first) | set(second) <= got, f"SC {n.node_id} lost {set(first) | set(second) - got}"


def test_bad_input_gets_clear_errors_and_changes_nothing(cluster: ScCluster) -> None:
    """Duplicate topic, replication factor above the SPU count, bad names and kinds, garbage
    bytes on the admin port, and a client that vanishes mid-call: each is refused or ignored,
    every SC stays up, and the metadata is unchanged."""
    register_spus(cluster, 2)
    run(lambda: client(cluster).create_topic("keep", partitions=1, replication_factor=1))
    version = status_of(cluster.admin_addresses[0])["metadata_version"]

    async def bad_calls() -> list[tuple[type, str]]:
        a = client(cluster)
        seen = []
        for call in (lambda: a.create_topic("keep"),
                     lambda: a.create_topic("big", replication_factor=3),
                     lambda: a.create_topic("bad/name"),
                     lambda: a.create_topic("zero", partitions=0),
                     lambda: a.list_objects("dragons"),
                     lambda: a.put_object("topic", "x", {}),
                     lambda: a.delete_topic("missing")):
            with pytest.raises(KolkError) as info:
                await call()
            seen.append((type(info.value), str(info.value)))
        return seen
    seen = run(bad_calls)
    assert seen[0][0] is AlreadyExistsError and "keep already exists" in seen[0][1]
    assert seen[1][0] is ReplicationFactorTooHighError and "more than the 2 registered SPUs" in seen[1][1]
    assert seen[2][0] is InvalidRequestError and "bad/name" in seen[2][1]
    assert "partitions must be" in seen[3][1]
    assert "unknown kind 'dragons'" in seen[4][1]
    assert "cannot be stored" in seen[5][1]
    assert "missing does not exist" in seen[6][1]

    # Garbage bytes on every admin port, and a client that sends a call and vanishes.
    for addr in cluster.admin_addresses:
        host, port = addr.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(os.urandom(4096) + b"\xff" * 4096)

    async def vanish() -> None:
        conn = await connect(SC, cluster.admin_addresses[1], None, 5)
        env, req = conn.request("listObjects")
        req.kind = "topic"
        pending = asyncio.ensure_future(conn.send(env, 5))
        await asyncio.sleep(0)  # let the request go out, then drop the connection
        conn.close()
        await asyncio.gather(pending, return_exceptions=True)
    run(vanish)

    assert all(n.alive for n in cluster.nodes.values()), cluster.logs()
    for addr in cluster.admin_addresses:
        s = status_of(addr)
        assert s["metadata_version"] == version or s["metadata_version"] >= version  # liveness may move it
        assert topics(cluster, addr) == {"keep"}


def _tiny_request_claiming(entries: int) -> bytes:
    """An 88-byte ScRequest body: a registerSpu whose ``lost`` list claims ``entries`` entries.

    The list pointer is INLINE_COMPOSITE with no content words; the tag word in front of the
    (empty) content gives the element count and 0 data and 0 pointer words per element, so the
    whole claim costs one word on the wire."""
    def struct_pointer(data_words: int, pointers: int) -> bytes:
        return struct.pack("<iHH", 0, data_words, pointers)  # a struct right after the pointer

    words = [
        struct_pointer(1, 1),                      # the root: an ScRequest
        struct.pack("<HHI", 6, 0, 0),              # its union's discriminant: registerSpu (@6)
        struct_pointer(1, 5),                      # its registerSpu: a RegisterSpuRequest
        bytes(8),                                  # id 0
        bytes(8), bytes(8), bytes(8), bytes(8),    # rack, publicAddress, privateAddress, storageId
        struct.pack("<II", 1, 7),                  # lost: a list, INLINE_COMPOSITE, 0 content words
        struct.pack("<iHH", entries << 2, 0, 0),   # its tag: `entries` elements of 0 + 0 words
    ]
    segment = b"".join(words)
    return struct.pack("<II", 0, len(segment) // 8) + segment


async def _frames(reader: asyncio.StreamReader):  # noqa: ANN201
    """The frames arriving on a raw connection."""
    decoder = FrameDecoder()
    while data := await reader.read(1 << 16):
        for frame in decoder.feed(data):
            yield frame


def test_a_tiny_request_claiming_a_huge_list_is_refused_at_once(tmp_path) -> None:
    """88 bytes claiming 5,000,000 entries in registerSpu's ``lost`` list: the SC refuses that
    request (``rejected``, tooLarge, naming the field) within a second, without walking the
    list, keeps the connection and serves other clients meanwhile. A real list over the limit
    is refused the same way, before any handler sees it."""
    c = ScCluster(str(tmp_path / "c"), size=1)
    c.start_all()
    try:
        address = wait_leader(c)
        body = _tiny_request_claiming(5_000_000)
        assert len(body) == 88 and which(decode(SC.request, body)) == "registerSpu"
        status_env = SC.request.new_message()
        status_env.init("clusterStatus")
        status_body = status_env.to_bytes()

        async def scenario() -> dict:
            host, port = address.rsplit(":", 1)
            reader, writer = await asyncio.open_connection(host, int(port))
            frames = _frames(reader)
            start = time.monotonic()
            writer.write(encode_frame(Kind.REQUEST, 1, body))
            other = asyncio.ensure_future(AdminClient([address], timeout_s=5).cluster_status())
            answer = await asyncio.wait_for(anext(frames), 5)
            elapsed = time.monotonic() - start
            writer.write(encode_frame(Kind.REQUEST, 2, status_body))  # the same connection goes on
            again = await asyncio.wait_for(anext(frames), 5)
            writer.close()

            conn = await connect(SC, address, None, 5)
            env, req = conn.request("registerSpu")
            req.init("lost", 10_001)
            with pytest.raises(CallRejected) as over:
                await conn.send(env, 5)
            status = await conn.call("clusterStatus", 5)
            conn.close()
            return {"answer": answer, "elapsed": elapsed, "again": again, "other": await other,
                    "over": over.value.error, "status": status}

        out = run(scenario)
        answer = out["answer"]
        assert answer.kind == Kind.RESPONSE and answer.id == 1
        refused = decode(SC.response, answer.body)
        assert which(refused) == "rejected", refused
        assert refused.rejected.code == "tooLarge" and "RegisterSpuRequest.lost" in refused.rejected.message
        assert out["elapsed"] < 1.0, f"the refusal took {out['elapsed']:.2f} s"
        again = decode(SC.response, out["again"].body)
        assert out["again"].id == 2 and which(again) == "clusterStatus" and again.clusterStatus.result.ok
        assert out["other"]["leader"] == address
        assert out["over"].code == "tooLarge"
        assert "RegisterSpuRequest.lost has 10001 entries, more than the limit of 10000" in out["over"].message
        assert out["status"].result.ok
        assert c.nodes[1].alive, c.logs()
        assert status_of(address)["spus"] == [], "a refused registration registered something"
    finally:
        c.close()


def _register_workload(cluster: ScCluster, *, duration_s: float, stale_reads: bool, kill_leader: bool,
                       processes: int = 4, keys: int = 3) -> list[Operation]:
    history: list[Operation] = []
    t0 = time.monotonic()

    async def proc(pid: int) -> None:
        rng = random.Random(pid)
        addrs = cluster.admin_addresses[:]
        rng.shuffle(addrs)
        a = AdminClient(addrs, timeout_s=8)
        n = 0
        while time.monotonic() - t0 < duration_s:
            key = f"k{rng.randrange(keys)}"
            if rng.random() < 0.5:
                n += 1
                value = pid * 100_000 + n
                start = time.monotonic()
                try:
                    await a.put_object("policy", key, {"v": value})
                    history.append(Operation(pid, key, "write", value, start, time.monotonic(), "ok"))
                except KolkError:
                    history.append(Operation(pid, key, "write", value, start, None, "info"))
            else:
                start = time.monotonic()
                try:
                    obj = await a.get_object("policy", key, stale=stale_reads)
                    value = None if obj is None else obj["spec"]["v"]
                    history.append(Operation(pid, key, "read", value, start, time.monotonic(), "ok"))
                except KolkError:
                    pass  # a failed read tells nothing

    async def killer() -> None:
        await asyncio.sleep(duration_s / 3)  # fault schedule: kill a third of the way in
        loop = asyncio.get_running_loop()
        leader = await AdminClient(cluster.admin_addresses, timeout_s=5).cluster_status()
        node = cluster.node_by_admin(leader["leader"])
        if node is not None:
            await loop.run_in_executor(None, cluster.kill, node.node_id)

    async def main() -> None:
        tasks = [proc(p) for p in range(processes)]
        if kill_leader:
            tasks.append(killer())
        await asyncio.gather(*tasks)
    run(main)
    return history


def test_metadata_is_linearizable_across_a_leader_kill(cluster: ScCluster) -> None:
    """Concurrent writers and (default, linearizable) readers on three registers, through
    different SCs, with the leader killed a third of the way in: the history is linearizable."""
    history = _register_workload(cluster, duration_s=6, stale_reads=False, kill_leader=True)
    reads = [o for o in history if o.kind == "read"]
    writes = [o for o in history if o.kind == "write" and o.outcome == "ok"]
    assert len(reads) > 20 and len(writes) > 20, (len(reads), len(writes))
    result = check(history, steps_max=2_000_000)
    assert result.verdict == "ok", result.report()


def test_stale_follower_reads_are_reported_not_linearizable(cluster: ScCluster) -> None:
    """The checker is shown to fail: a write acknowledged by the leader, then a stale read from
    a follower that has not applied it yet. The follower applies a commit only when the next
    append reaches it, so the stale read sees the old value and the checker must say so."""
    leader = wait_leader(cluster)
    follower = next(a for a in cluster.admin_addresses if a != leader)
    history: list[Operation] = []

    async def main() -> None:
        w = AdminClient([leader], timeout_s=5)
        r = AdminClient([follower], timeout_s=5)
        for i in range(1, 60):
            start = time.monotonic()
            await w.put_object("policy", "x", {"v": i})
            history.append(Operation(0, "x", "write", i, start, time.monotonic(), "ok"))
            start = time.monotonic()
            obj = await r.get_object("policy", "x", stale=True)
            history.append(Operation(1, "x", "read", obj and obj["spec"]["v"], start, time.monotonic(), "ok"))
    run(main)
    result = check(history)
    assert result.verdict == "not-linearizable", "no stale read was observed in 59 tries"
    assert "read" in result.report()
