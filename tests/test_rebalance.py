"""Growing and shrinking end to end (docs/rebalance.md): one real SC and real SPUs on loopback,
mutual TLS and a policy. A 4th SPU added and a drain, both under an acks=all load; preferred
leaders coming back after a restart; every bad input refused with its own line; a non-admin
identity denied."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import json
import subprocess
import sys
from collections import Counter
from typing import Any

import pytest

from dataplane_cluster import (DataPlaneCluster, SpuProcess, free_port, read_all, read_text, run_async,  # noqa: E402
                               wait_until)
from kolk.protocol.errors import KolkError
from kolk.security.policy import parse_policy

POLICY = """version = 1

[identities]
admin = ["admin"]
viewer = ["viewer"]

[[rule]]
effect = "allow"
roles = ["admin"]
actions = ["*"]
resources = ["topic:*", "smartmodule:*", "cluster"]

[[rule]]
effect = "allow"
roles = ["viewer"]
actions = ["describe"]
resources = ["topic:*", "cluster"]
"""
TOPIC = "grow"
PARTITIONS = 4
CLI_TIMEOUT_S = 120
MOVE_TIMEOUT_S = 90


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = str(tmp_path_factory.mktemp("rebalance"))
    c = DataPlaneCluster(root, spus=3, tls=True, clients=("admin", "viewer"),
                         sc_args=("--leader-rebalance-interval-ms", "500"),
                         spu_args=("--heartbeat-interval-ms", "200"))
    try:
        c.start()
        # SPU 4 is known to the fixture but started by the first test: the SPU the cluster grows by.
        c.spus[4] = SpuProcess(4, free_port(), os.path.join(root, "spu4"), os.path.join(root, "spu4.ready"),
                               os.path.join(root, "spu4.log"))

        async def setup() -> None:
            admin = c.client(as_="admin")
            try:
                await admin.admin.put_object("policy", "active", {"version": 1, "source": POLICY,
                                                                  "sha256": parse_policy(POLICY).sha256})
                await admin.create_topic(TOPIC, PARTITIONS, 2, {"min_in_sync": "2"})
                await wait_until(lambda: _all_led(admin), 30, "every partition to have a leader")
            finally:
                await admin.close()
        run_async(setup)
        yield c
    finally:
        c.close()


def kolk(c: DataPlaneCluster, *args: str, who: str = "admin") -> subprocess.CompletedProcess:
    p = c.pki[who]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KOLK_TLS_", "KOLK_SC"))}
    env["KOLK_HOME"] = os.path.join(c.root, "home")
    return subprocess.run([sys.executable, "-m", "kolk", *args, "--sc", c.sc_addresses[0], "--tls-ca", p["ca"],
                           "--tls-cert", p["cert"], "--tls-key", p["key"]], env=env, capture_output=True, text=True,
                          timeout=CLI_TIMEOUT_S)


async def _partitions(client: Any) -> list[dict[str, Any]]:
    return [p for p in await client.admin.list_objects("partition") if p["name"].startswith(f"{TOPIC}-")]


async def _all_led(client: Any) -> bool:
    parts = await _partitions(client)
    return len(parts) == PARTITIONS and all(p["status"]["leader"] is not None for p in parts)


async def _settled(client: Any) -> bool:
    """No move in progress and every partition led by its preferred replica."""
    status = await client.admin.cluster_status()
    parts = await client.admin.list_objects("partition")
    return not status["moving"] and all(p["status"]["leader"] == p["spec"]["replicas"][0] for p in parts)


class Load:
    """An acks=all producer running until stopped; what it had acknowledged, per partition."""

    def __init__(self, client: Any) -> None:
        self.producer = client.producer(TOPIC, acks="all", partitioner="round_robin", linger_ms=2)
        self.acked: dict[int, list[bytes]] = {p: [] for p in range(PARTITIONS)}
        self.stop = asyncio.Event()
        self.task = asyncio.ensure_future(self._write())

    async def _write(self) -> None:
        i = 0
        while not self.stop.is_set():
            value = f"v{os.getpid()}-{id(self)}-{i}".encode()
            try:
                meta = await (await self.producer.send(value))
            except KolkError:
                continue  # not acknowledged: it may or may not be there; never counted as lost
            self.acked[meta.partition].append(value)
            i += 1

    @property
    def count(self) -> int:
        return sum(map(len, self.acked.values()))

    async def finish(self, client: Any) -> int:
        self.stop.set()
        await self.task
        await self.producer.close()
        for p in range(PARTITIONS):
            got = [r.value for r in await read_all(client, TOPIC, partition=p)]
            assert len(set(got)) == len(got), f"partition {p}: a record read twice"
            missing = set(self.acked[p]) - set(got)
            assert not missing, f"partition {p}: {len(missing)} acknowledged records lost"
        return self.count


def _spread(parts: list[dict[str, Any]], spus: list[int]) -> tuple[int, int]:
    load = Counter(r for p in parts for r in p["spec"]["replicas"])
    leaders = Counter(p["spec"]["replicas"][0] for p in parts)
    return (max(load[s] for s in spus) - min(load[s] for s in spus),
            max(leaders[s] for s in spus) - min(leaders[s] for s in spus))


def test_a_4th_spu_gets_its_share_under_load(cluster: DataPlaneCluster) -> None:
    """SPU 4 starts empty; `rebalance --execute` moves replicas onto it while an acks=all producer
    writes; at the end replicas and preferred leaders per SPU differ by at most one, SPU 4
    holds replicas, and every acknowledged record is read back once."""
    async def go() -> None:
        client = cluster.client()
        try:
            load = Load(client)
            await wait_until(lambda: load.count >= 30, 30, "the producer to get going")
            cluster.launch_spu(4)
            await cluster.wait_spu_ready(4)
            plan = await client.admin.rebalance(execute=True, throttle=1_000_000)
            assert plan["moves"] and plan["started"] and not plan["refused"], plan
            assert any(4 in m["to"] for m in plan["moves"]), plan
            await wait_until(lambda: _settled(client), MOVE_TIMEOUT_S, lambda: "the moves to finish\n" + cluster.logs())
            written = load.count
            await wait_until(lambda: load.count >= written + 30, 30, "writes to go on after the moves")
            total = await load.finish(client)
            parts = await client.admin.list_objects("partition")
            assert _spread(parts, [1, 2, 3, 4]) <= (1, 1), [p["spec"]["replicas"] for p in parts]
            assert any(4 in p["spec"]["replicas"] for p in parts)
            print(f"\nadded SPU 4: {len(plan['moves'])} moves, {total} acknowledged records, none lost")
        finally:
            await client.close()
    run_async(go)


def test_drain_under_load_empties_the_spu(cluster: DataPlaneCluster) -> None:
    """`kolk cluster spu drain 4 --wait` under an acks=all load: SPU 4 ends holding nothing
    (in the metadata, and its replicas deleted on its disk) and nothing acknowledged is lost."""
    async def go() -> None:
        client = cluster.client()
        try:
            assert _logs_on_disk(cluster.spus[4].data_dir), "SPU 4 should hold replicas before its drain"
            load = Load(client)
            await wait_until(lambda: load.count >= 30, 30, "the producer to get going")
            r = await asyncio.get_running_loop().run_in_executor(
                None, lambda: kolk(cluster, "cluster", "spu", "drain", "4", "--wait", "--throttle", "2000000"))
            assert r.returncode == 0, r.stderr + r.stdout
            assert "SPU 4 is draining" in r.stdout and "SPU 4 holds 0 replicas" in r.stdout, r.stdout
            await load.finish(client)
            parts = await client.admin.list_objects("partition")
            assert not [p["name"] for p in parts if 4 in p["spec"]["replicas"]]
            status = await client.admin.cluster_status()
            assert next(s for s in status["spus"] if s["id"] == 4)["draining"] is True
            await wait_until(lambda: not _logs_on_disk(cluster.spus[4].data_dir), 30,
                             "SPU 4 to delete the replicas it no longer holds")
        finally:
            await client.close()
    run_async(go)


def _logs_on_disk(data_dir: str) -> list[str]:
    logs = os.path.join(data_dir, "logs")  # segments/store.py: one directory per replica
    return [n for n in os.listdir(logs) if n.startswith(f"{TOPIC}-")] if os.path.isdir(logs) else []


def test_preferred_leader_comes_back_after_a_restart(cluster: DataPlaneCluster) -> None:
    async def go() -> None:
        client = cluster.client()
        try:
            await wait_until(lambda: _settled(client), MOVE_TIMEOUT_S, "leaders on their preferred replicas")
            parts = await _partitions(client)
            victim = parts[0]["spec"]["replicas"][0]
            cluster.kill_spu(victim)
            await wait_until(lambda: _led_elsewhere(client, parts[0]["name"], victim), 30,
                             f"another leader than SPU {victim}")
            cluster.launch_spu(victim)
            await cluster.wait_spu_ready(victim)
            await wait_until(lambda: _settled(client), 60,
                             lambda: f"SPU {victim} to lead its partitions again\n" + cluster.logs())
        finally:
            await client.close()
    run_async(go)


async def _led_elsewhere(client: Any, name: str, spu: int) -> bool:
    p = await client.admin.get_object("partition", name)
    return p["status"]["leader"] not in (None, spu)


def test_rebalance_with_nothing_to_do_says_balanced(cluster: DataPlaneCluster) -> None:
    run_async(lambda: _wait_settled(cluster))
    r = kolk(cluster, "partition", "rebalance")
    assert r.returncode == 0 and r.stdout.strip() == "balanced: nothing to move", r.stdout + r.stderr


async def _wait_settled(cluster: DataPlaneCluster) -> None:
    client = cluster.client()
    try:
        await client.admin.rebalance(execute=True)
        await wait_until(lambda: _settled(client), MOVE_TIMEOUT_S, "the cluster to settle")
    finally:
        await client.close()


def test_drain_of_an_unknown_spu_is_refused(cluster: DataPlaneCluster) -> None:
    r = kolk(cluster, "cluster", "spu", "drain", "99")
    assert r.returncode == 1 and r.stderr.strip() == "kolk cluster spu: SPU 99 is not registered", r.stderr


def test_drain_that_leaves_too_few_spus_is_refused(cluster: DataPlaneCluster) -> None:
    """With SPU 4 draining, an RF-3 topic needs all of 1, 2 and 3: draining one more is refused
    and marks nothing."""
    async def go() -> None:
        client = cluster.client()
        try:
            await client.admin.drain_spu(4)
            await client.create_topic("wide", 1, 3)
        finally:
            await client.close()
    run_async(go)
    r = kolk(cluster, "cluster", "spu", "drain", "1")
    assert r.returncode == 1, r.stdout
    assert re.fullmatch(r"kolk cluster spu: SPU 1 cannot be drained: partition (wide|_audit)-0 needs 3 replicas "
                        r"but only 2 SPUs are alive and not draining \(\[2, 3\]\); SPU 1 cannot be emptied",
                        r.stderr.strip()), r.stderr
    status = json.loads(kolk(cluster, "cluster", "status", "--json").stdout)
    assert next(s for s in status["spus"] if s["id"] == 1)["draining"] is False


@pytest.mark.parametrize("value", ["0", "-5", "ten"])
def test_throttle_must_be_a_positive_whole_number(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Refused by the CLI's parser before anything is sent (in process: no cluster needed)."""
    from kolk.cli.main import main

    with pytest.raises(SystemExit) as e:
        main(["partition", "rebalance", "--execute", "--throttle", value])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert e.value.code == 2 and "argument --throttle" in err and value in err, err


def test_client_refuses_a_zero_throttle(cluster: DataPlaneCluster) -> None:
    async def go() -> str:
        client = cluster.client()
        try:
            with pytest.raises(KolkError) as e:
                await client.admin.rebalance(execute=True, throttle=0)
            return str(e.value)
        finally:
            await client.close()
    assert "throttle must be a positive number of bytes/s, got 0" in run_async(go)


def test_a_non_admin_identity_is_denied(cluster: DataPlaneCluster) -> None:
    for args in (("partition", "rebalance"), ("cluster", "spu", "drain", "2")):
        r = kolk(cluster, *args, who="viewer")
        assert r.returncode == 1, r.stdout
        assert "viewer" in r.stderr and "may not admin cluster" in r.stderr, r.stderr


def test_a_slow_move_can_be_cancelled(cluster: DataPlaneCluster) -> None:
    """SPU 4 no longer draining: a rebalance at 1 byte/s starts moves onto it that copy one
    batch and then wait (the throttle); `kolk partition rebalance --cancel` puts each partition
    it cancels back on the replicas it started from, and no move is left."""
    async def start() -> tuple[dict[str, list[int]], dict[str, Any]]:
        client = cluster.client()
        try:
            await client.admin.drain_spu(4, undo=True)
            before = {p["name"]: p["spec"]["replicas"] for p in await client.admin.list_objects("partition")}
            plan = await client.admin.rebalance(execute=True, throttle=1)
            return before, plan
        finally:
            await client.close()
    before, plan = run_async(start)
    assert plan["started"], plan
    status = kolk(cluster, "cluster", "status")
    assert "moves in progress:" in status.stdout and "waiting for SPU 4 to catch up" in status.stdout, status.stdout
    r = kolk(cluster, "partition", "rebalance", "--cancel", "--json")
    assert r.returncode == 0, r.stderr
    cancelled = json.loads(r.stdout)
    assert any(name.startswith(f"{TOPIC}-") for name in cancelled["started"]), cancelled  # a log to copy: still moving
    assert not cancelled["moving"], cancelled

    async def check() -> None:
        client = cluster.client()
        try:
            after = {p["name"]: p["spec"]["replicas"] for p in await client.admin.list_objects("partition")}
            assert all(after[name] == before[name] for name in cancelled["started"]), (before, after)
        finally:
            await client.close()
    run_async(check)


def test_auto_rebalance_spreads_onto_the_idle_spu(cluster: DataPlaneCluster) -> None:
    """The SC restarted with --auto-rebalance: it plans as it becomes leader (then every 30 s)
    and executes, so SPU 4, left empty by the cancel above, gets its share without an operator."""
    sc = cluster.sc
    sc.kill(1, signal.SIGTERM)
    sc.extra_args = tuple(sc.extra_args) + ("--auto-rebalance",)
    sc.start(1)

    async def go() -> None:
        client = cluster.client()
        try:
            await wait_until(lambda: _holds(client, 4), MOVE_TIMEOUT_S,
                             lambda: "the automatic rebalance to move replicas onto SPU 4\n" + cluster.logs())
            await wait_until(lambda: _settled(client), MOVE_TIMEOUT_S, "the automatic moves to finish")
        finally:
            await client.close()
    run_async(go)
    assert "automatic rebalance:" in read_text(sc.nodes[1].log_path)


async def _holds(client: Any, spu: int) -> bool:
    return any(spu in p["spec"]["replicas"] for p in await _partitions(client))
