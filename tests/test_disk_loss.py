"""Issue 15: a replica that loses or fails its disk never costs an acknowledged record.

Real SC and SPU processes on loopback (tests/dataplane_cluster.py). Each case writes with
acks=all, destroys or fails one SPU's storage, and checks that every acknowledged record is on
every surviving replica (read from the files after stopping the SPUs), that the damaged replica
catches up, and that nothing was lost on the way.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

from dataplane_cluster import DataPlaneCluster, disk_log, read_all, wait_until
from kolk.client.admin import AdminClient
from kolk.client.client import AsyncClient
from kolk.protocol.errors import KolkError, PartitionOfflineError
from test_replication import check_same_and_complete, cluster, partition, produce_until, run_on, wait_in_sync

RECORDS = 500


async def produce(client: AsyncClient, topic: str, prefix: bytes, count: int = RECORDS,
                  partitions: dict[bytes, int] | None = None) -> dict[bytes, int]:
    """``count`` records with acks=all (idempotent); returns value -> acknowledged offset.
    ``partitions``, when given, learns each record's partition."""
    producer = client.producer(topic, retries=200, request_timeout_ms=5000, linger_ms=2)
    futs = [(prefix + b"-%d" % i, await producer.send(prefix + b"-%d" % i)) for i in range(count)]
    acked = {}
    for v, f in futs:
        meta = await f
        acked[v] = meta.offset
        if partitions is not None:
            partitions[v] = meta.partition
    await producer.close()
    return acked


class Writing:
    """A producer writing with acks=all in the background, noting what is acknowledged (errors
    are outcomes unknown, not losses)."""

    def __init__(self, client: AsyncClient, topic: str, prefix: bytes) -> None:
        self.acked: dict[bytes, int] = {}
        self.partitions: dict[bytes, int] = {}
        self.errors: list[str] = []
        self.stop = asyncio.Event()
        self.task = asyncio.ensure_future(produce_until(client, topic, self.acked, self.stop, prefix, self.errors,
                                                        self.partitions))

    async def more(self, count: int, what: str, timeout_s: float = 60) -> None:
        """Wait until ``count`` more records are acknowledged."""
        n = len(self.acked)
        await wait_until(lambda: len(self.acked) >= n + count, timeout_s, f"{count} more acknowledged {what}")

    async def finish(self) -> dict[bytes, int]:
        self.stop.set()
        await asyncio.wait_for(self.task, 60)
        return self.acked


def stop_all_spus(c: DataPlaneCluster) -> None:
    """SIGTERM every SPU at once, then wait for each, as `kolk cluster stop` does
    (core/cli/local_cluster.py _stop_pids): each still hands its leaderships over first."""
    running = [s.proc for s in c.spus.values() if s.alive]
    for proc in running:
        os.kill(proc.pid, signal.SIGTERM)
    for proc in running:
        proc.wait(timeout=30)


async def restart_whole_cluster(c: DataPlaneCluster, wipe: int | None = None) -> None:
    """The issue's steps: stop every SPU and the SC, optionally lose one SPU's disk, start all.
    The SPUs start beside the SC, as `kolk cluster start` starts them: each registers once the
    SC answers (it retries until then)."""
    stop_all_spus(c)
    c.sc.kill_all(signal.SIGTERM)
    if wipe is not None:
        shutil.rmtree(c.spus[wipe].data_dir)
    c.sc.start_all()
    for i in c.spus:
        c.launch_spu(i)

    async def sc_leads() -> bool:
        admin = AdminClient(c.sc_addresses, timeout_s=2)
        try:
            return bool((await admin.cluster_status())["leader"])
        finally:
            await admin.close()
    await wait_until(sc_leads, 30, "the SC to lead again")
    for i in c.spus:
        await c.wait_spu_ready(i)


def verify_on_disk(c: DataPlaneCluster, name: str, acked: dict[bytes, int]) -> None:
    stop_all_spus(c)
    logs = {i: disk_log(c.spus[i].data_dir, name) for i in c.spus}
    check_same_and_complete(logs, acked)
    assert len({leo for _, _, leo in logs.values()}) == 1, {i: leo for i, (_, _, leo) in logs.items()}


@pytest.mark.parametrize("role", ["leader", "follower"])
def test_an_spu_back_with_an_empty_disk_costs_no_acknowledged_record(tmp_path: Any, role: str) -> None:
    """The issue's scenario: 500 records with acks=all on 3 replicas, the whole cluster stopped,
    one SPU's data directory deleted (the leader's, or a follower's), the cluster started again.
    The wiped replica is out of the in-sync set, leadership stays with an intact replica,
    every record is still there, and the wiped replica copies them back."""
    c = cluster(tmp_path)

    async def body() -> None:
        client = c.client()
        await client.create_topic("orders", 1, 3)
        acked = await produce(client, "orders", b"o")
        p = await partition(client, "orders-0")
        leader = p["status"]["leader"]
        wiped = leader if role == "leader" else next(r for r in p["spec"]["replicas"] if r != leader)
        await client.close()
        await restart_whole_cluster(c, wipe=wiped)
        client = c.client()
        p = await wait_until(lambda: _led(client, "orders-0"), 30, "orders-0 to have a leader")
        assert p["status"]["leader"] != wiped
        if role == "leader":
            lost = [e["spu"] for e in p["status"].get("lost", [])]
            assert wiped in lost or wiped in p["status"]["isr"], p  # listed until it has caught up
        got = await read_all(client, "orders", partition=0)  # once the new leader's high watermark is back
        assert sorted(r.value for r in got) == sorted(acked)
        await wait_in_sync(client, "orders-0")
        await client.close()
        verify_on_disk(c, "orders-0", acked)
        assert ": truncated " not in "".join(c.spu_log(i) for i in c.spus if i != wiped)  # core/spu/follower.py _truncate
    run_on(c, body)


def test_every_spu_restarted_one_by_one_after_a_wipe(tmp_path: Any) -> None:
    """After one SPU's disk is lost, every SPU is restarted in turn (each waits for the last to
    serve) while a producer keeps writing: nothing acknowledged is lost, and a replica that
    lost data never leads before it has caught up."""
    c = cluster(tmp_path)

    async def body() -> None:
        client = c.client()
        await client.create_topic("t", 2, 3)
        acked: dict[bytes, int] = {}
        where: dict[bytes, int] = {}
        acked.update(await produce(client, "t", b"before", partitions=where))
        leader = (await partition(client, "t-0"))["status"]["leader"]
        c.kill_spu(leader)
        shutil.rmtree(c.spus[leader].data_dir)
        c.launch_spu(leader)
        await c.wait_spu_ready(leader)
        w = Writing(client, "t", b"during")
        for i in [leader] + [s for s in c.spus if s != leader]:
            c.kill_spu(i)
            c.launch_spu(i)
            await c.wait_spu_ready(i)
            await w.more(100, f"after SPU {i} restarted")
        acked.update(await w.finish())
        where.update(w.partitions)
        for name in ("t-0", "t-1"):
            await wait_in_sync(client, name, timeout_s=60)
        await client.close()
        stop_all_spus(c)
        for part in (0, 1):
            logs = {i: disk_log(c.spus[i].data_dir, f"t-{part}") for i in c.spus}
            check_same_and_complete(logs, {v: o for v, o in acked.items() if where[v] == part})
    run_on(c, body)


def test_data_directory_removed_under_a_running_leader(tmp_path: Any) -> None:
    """The leader's data directory is deleted while it serves acks=all writes: it acknowledges
    nothing more (fsyncs into a deleted file are caught), tells the SC, and exits with status
    3; leadership moves; restarted, it registers new storage and catches up; nothing is lost."""
    c = cluster(tmp_path)

    async def body() -> None:
        client = c.client()
        await client.create_topic("t", 1, 3)
        w = Writing(client, "t", b"live")
        await w.more(1000, "before the wipe", 30)
        leader = (await partition(client, "t-0"))["status"]["leader"]
        shutil.rmtree(c.spus[leader].data_dir)
        proc = c.spus[leader].proc
        await wait_until(lambda: proc.poll() is not None, 30, f"SPU {leader} to stop on its own")
        assert proc.returncode == 3, proc.returncode
        assert "stopping so that the SPU restarts with new storage" in c.spu_log(leader)
        await w.more(1000, "under a new leader")
        assert (await partition(client, "t-0"))["status"]["leader"] != leader
        c.launch_spu(leader)
        await c.wait_spu_ready(leader)
        acked = await w.finish()
        await wait_in_sync(client, "t-0", timeout_s=60)
        await client.close()
        verify_on_disk(c, "t-0", acked)
    run_on(c, body)


def test_a_failed_fsync_fences_the_replica_and_it_is_rebuilt_from_its_peers(tmp_path: Any) -> None:
    """EIO on one fsync of the leader (the test hook at the file layer): that replica is fenced
    at once — the failed fsync is never retried — leadership moves, the SPU stays up, and the
    replica is rebuilt empty and catches up; every acknowledged record survives."""
    triggers = {i: os.path.join(str(tmp_path), f"fail-fsync-{i}") for i in (1, 2, 3)}
    c = cluster(tmp_path, spu_env={i: {"KOLK_TEST_FAIL_FSYNC_FILE": path} for i, path in triggers.items()})

    async def body() -> None:
        client = c.client()
        await client.create_topic("t", 1, 3)
        w = Writing(client, "t", b"eio")
        await w.more(1000, "before the fault", 30)
        leader = (await partition(client, "t-0"))["status"]["leader"]
        with open(triggers[leader], "w"):
            pass
        await wait_until(lambda: not os.path.exists(triggers[leader]), 30, "the fsync to fail")
        await wait_until(lambda: _led_by_other(client, "t-0", leader), 30, "leadership to move")
        assert "fenced, the disk failed" in c.spu_log(leader)
        await w.more(1000, "after the fault")
        acked = await w.finish()
        await wait_in_sync(client, "t-0", timeout_s=60)
        assert c.spus[leader].alive
        assert "rebuilt empty after the disk fault" in c.spu_log(leader)
        await client.close()
        verify_on_disk(c, "t-0", acked)
    run_on(c, body)


def test_a_full_disk_fences_the_replica_and_it_recovers_when_space_returns(tmp_path: Any) -> None:
    """ENOSPC on a real size-limited tmpfs under one follower: its replica is fenced and leaves
    the in-sync set; writes go on with the others; once space is freed the replica is rebuilt
    and rejoins. Nothing acknowledged is lost."""
    small = os.path.join(str(tmp_path), "small")
    os.makedirs(small)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", small], check=True)
    try:
        c = cluster(tmp_path)
        follower = 3
        c.spus[follower].data_dir = os.path.join(small, "data")

        async def body() -> None:
            client = c.client()
            await client.create_topic("t", 1, 3)
            w = Writing(client, "t", b"full" + b"x" * 200)
            await w.more(1000, "before the disk fills", 30)
            filler = os.path.join(small, "filler")
            _fill(filler)
            p = await wait_until(lambda: _isr_without(client, "t-0", follower), 60, "the full replica to be fenced")
            assert p["status"]["leader"] != follower
            await w.more(1000, "without the full replica")
            os.unlink(filler)
            acked = await w.finish()
            await wait_in_sync(client, "t-0", timeout_s=60)
            await client.close()
            verify_on_disk(c, "t-0", acked)
        run_on(c, body)
    finally:
        subprocess.run(["umount", small], check=False)


def test_every_disk_nearly_full_keeps_the_data_and_recovers_when_space_returns(tmp_path: Any) -> None:
    """All three replicas' disks fill up at once (the local cluster puts every SPU on one file
    system): every replica is fenced, but a disk fault never empties the in-sync set and a log
    is deleted for a rebuild only when a live leader elsewhere holds the records. When space
    returns, the last in-sync replica reopens its own log and the others copy from it:
    nothing acknowledged is lost (a reviewer found every copy deleted here before)."""
    mounts = [os.path.join(str(tmp_path), f"small{i}") for i in (1, 2, 3)]
    for m in mounts:
        os.makedirs(m)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", m], check=True)
    try:
        c = cluster(tmp_path)
        for i, m in zip((1, 2, 3), mounts):
            c.spus[i].data_dir = os.path.join(m, "data")

        async def body() -> None:
            client = c.client()
            await client.create_topic("t", 1, 3)
            acked = await produce(client, "t", b"kept")
            fillers = [os.path.join(m, "filler") for m in mounts]
            for filler in fillers:
                _fill(filler)
            await wait_until(lambda: all("fenced, the disk failed" in c.spu_log(i) for i in c.spus), 30,
                             "every replica to be fenced")
            p = await wait_until(lambda: _isr_of_size(client, "t-0", 1), 30, "the in-sync set to keep one replica")
            for filler in fillers:
                os.unlink(filler)
            await wait_in_sync(client, "t-0", timeout_s=60)
            got = await read_all(client, "t", partition=0)
            assert sorted(r.value for r in got) == sorted(acked)
            assert "reopened its own log" in c.spu_log(p["status"]["isr"][0])
            await client.close()
            verify_on_disk(c, "t-0", acked)
        run_on(c, body)
    finally:
        for m in mounts:
            subprocess.run(["umount", m], check=False)


def _fill(path: str) -> None:
    """Write zeros to ``path`` until its file system is full."""
    with open(path, "wb") as f:
        try:
            while True:
                f.write(b"\0" * (1 << 20))
                f.flush()
        except OSError:
            pass  # full


async def _isr_of_size(client: AsyncClient, name: str, size: int) -> dict[str, Any] | None:
    p = await partition(client, name)
    return p if len(p["status"]["isr"]) == size else None


def test_offline_partition_and_unclean_election(tmp_path: Any) -> None:
    """A replication-factor-1 partition whose only replica loses its disk stays offline: produce
    fails with a clear `offline` error naming the SPU and why, `kolk partition list` says so,
    and `kolk partition elect --unclean` (audited) brings it back, accepting the loss."""
    c = cluster(tmp_path)

    async def body() -> None:
        client = c.client()
        await client.create_topic("solo", 1, 1)
        await produce(client, "solo", b"s", 50)
        owner = (await partition(client, "solo-0"))["status"]["leader"]
        c.kill_spu(owner)
        shutil.rmtree(c.spus[owner].data_dir)
        c.launch_spu(owner)
        await c.wait_spu_ready(owner)
        p = await partition(client, "solo-0")
        assert p["status"]["leader"] is None and p["status"]["isr"] == []
        client.forget_leaders("solo")
        with pytest.raises(PartitionOfflineError) as e:
            await client.produce("solo", 0, b"", retries=0)
        text = str(e.value)
        assert "offline" in text and f"SPU {owner}" in text and "--unclean" in text, text
        # Both at once (one CLI start less to wait for): the refused election changes nothing.
        listed, refused = await asyncio.gather(
            asyncio.to_thread(_cli, c, "partition", "list", "--topic", "solo"),
            asyncio.to_thread(_cli, c, "partition", "elect", "solo-0", check=False))
        assert "no in-sync replica holds every acknowledged record" in listed, listed
        assert "unclean" in refused, refused
        out = _cli(c, "partition", "elect", "solo-0", "--unclean")
        assert f"SPU {owner} leads" in out and "given up" in out, out
        client.forget_leaders("solo")
        acked = await wait_until(lambda: _try_produce(client, "solo"), 30, "solo-0 to take writes again")
        assert acked
        await client.close()
    run_on(c, body)


def test_offline_while_every_in_sync_replica_is_down(tmp_path: Any) -> None:
    """All three replicas down: the SC keeps the in-sync set and the partition offline; the
    client's error names the replicas that are not alive; when one returns it leads again."""
    c = cluster(tmp_path)

    async def body() -> None:
        client = c.client()
        await client.create_topic("t", 1, 3)
        acked = await produce(client, "t", b"d", 100)
        stop_all_spus(c)
        await wait_until(lambda: _leaderless(client, "t-0"), 30, "t-0 to go offline")
        client.forget_leaders("t")
        with pytest.raises(PartitionOfflineError, match=r"in-sync replicas \[.*\] are not alive"):
            await client.produce("t", 0, b"", retries=0)
        for i in c.spus:
            c.launch_spu(i)
        for i in c.spus:
            await c.wait_spu_ready(i)
        got = await read_all(client, "t", partition=0)
        assert sorted(r.value for r in got) == sorted(acked)
        await client.close()
    run_on(c, body)


# ---------------------------------------------------------------- helpers


async def _led(client: AsyncClient, name: str) -> dict[str, Any] | None:
    p = await partition(client, name)
    return p if p["status"]["leader"] is not None else None


async def _leaderless(client: AsyncClient, name: str) -> bool:
    return (await partition(client, name))["status"]["leader"] is None


async def _led_by_other(client: AsyncClient, name: str, old: int) -> dict[str, Any] | None:
    p = await partition(client, name)
    return p if p["status"]["leader"] not in (None, old) else None


async def _isr_without(client: AsyncClient, name: str, spu: int) -> dict[str, Any] | None:
    p = await partition(client, name)
    return p if spu not in p["status"]["isr"] and p["status"]["leader"] is not None else None


async def _try_produce(client: AsyncClient, topic: str) -> bool:
    try:
        return bool(await produce(client, topic, b"after", 5))
    except KolkError:
        return False


def _cli(c: DataPlaneCluster, *args: str, check: bool = True) -> str:
    r = subprocess.run([sys.executable, "-m", "kolk", *args, "--sc", ",".join(c.sc_addresses)],
                       capture_output=True, text=True, timeout=60)
    if check:
        assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout + r.stderr


# `make test-long` (15-20 s of CLI cluster starts): the same loss is tested in `make test` through
# the client, test_an_spu_back_with_an_empty_disk_costs_no_acknowledged_record.
@pytest.mark.long
def test_the_issue_as_a_new_user_types_it(tmp_path: Any) -> None:
    """Issue 15's steps with the CLI and a local cluster: 500 records with acks=all to
    orders-2, the cluster stopped, the leader's data directory deleted, the cluster started
    again: all 500 are read back. Then a live SPU's directory is deleted: it exits with status
    3, and `kolk cluster start` starts it again into the running cluster."""
    env = dict(os.environ, KOLK_HOME=str(tmp_path / "home"))

    def kolk(*args: str, stdin: str | None = None, check: bool = True) -> str:
        r = subprocess.run([sys.executable, "-m", "kolk", *args], input=stdin, capture_output=True, text=True,
                           env=env, timeout=120)
        assert r.returncode == 0 or not check, (args, r.stdout, r.stderr)
        return r.stdout + r.stderr

    def read_500() -> bool:
        """`kolk consume -B -d` reads up to the high watermark; a new leader has it back once its
        in-sync followers have fetched, so ask until all 500 are there (with a deadline)."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            out = kolk("consume", "orders", "--partition", "2", "-B", "-d", check=False)
            values = sorted(int(v) for v in out.split() if v.isdigit())
            if values == list(range(1, 501)):
                return True
            assert len(values) <= 500 and len(set(values)) == len(values), out[-500:]
            time.sleep(0.2)  # polling the consumer's view, with a deadline
        return False

    local = tmp_path / "home" / "local"
    try:
        kolk("cluster", "start", "--spus", "3")
        kolk("topic", "create", "orders", "-p", "3", "-r", "3")
        kolk("produce", "orders", "--partition", "2", "--acks", "all", stdin="".join(f"{i}\n" for i in range(1, 501)))
        leader = _cli_leader(kolk("partition", "list", "--topic", "orders", "--json"), "orders-2")
        kolk("cluster", "stop")
        shutil.rmtree(local / f"spu-{leader}")
        kolk("cluster", "start", "--spus", "3")
        assert read_500(), "the 500 acknowledged records did not come back"
        assert _cli_leader(kolk("partition", "list", "--topic", "orders", "--json"), "orders-2") != leader

        profile = json.loads((tmp_path / "home" / "profile.json").read_text())
        victim = 1
        pid = profile["pids"][f"spu-{victim}"]
        shutil.rmtree(local / f"spu-{victim}")
        deadline = time.monotonic() + 30
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)  # polling a process's exit with a deadline
        assert not _pid_alive(pid), "the SPU whose directory vanished did not stop"
        log_text = (local / "logs" / f"spu-{victim}.log").read_text()
        assert "stopping so that the SPU restarts with new storage (exit status 3)" in log_text
        assert "started again spu-1" in kolk("cluster", "start", "--spus", "3")
        assert read_500(), "the 500 acknowledged records did not come back"
    finally:
        kolk("cluster", "stop", check=False)


def _cli_leader(listing: str, name: str) -> int:
    rows = json.loads(listing)
    return next(r["leader"] for r in rows if r["name"] == name)


def _pid_alive(pid: int) -> bool:
    from kolk.cli.local_cluster import process_alive

    return process_alive(pid)
