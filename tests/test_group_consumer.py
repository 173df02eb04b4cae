"""The group consumer against real processes (issue 20): one SC and three SPUs, the group's
coordinator on the leader of its ``_consumer_offsets`` partition, real RocksDB.

What it proves: a consumer that commits and restarts resumes after its last commit with no
gap (also after kill -9 of a consumer process); members that join and leave split a
6-partition topic with no partition held by two members at once (the revoke callback of the
old owner always comes before the assign callback of the new one); a clean leave hands back at
once; a static member that restarts gets its partitions back without the other member's
assignment changing; automatic and manual commits; a commit of a partition the member does not
own is refused with StaleMemberError; a topic that does not exist is refused in one line.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dataplane_cluster import DataPlaneCluster, run_async, wait_committed, wait_until, offsets_topic  # noqa: E402
from kolk.client.client import AsyncClient, Client  # noqa: E402
from kolk.client.consumer import ConsumerRecord, Offset  # noqa: E402
from kolk.client.coordinator import group_call  # noqa: E402
from kolk.client.group_consumer import AsyncGroupConsumer  # noqa: E402
from kolk.groups.names import OFFSETS_TOPIC, TopicPartition  # noqa: E402
from kolk.protocol.errors import NotFoundError, StaleMemberError  # noqa: E402

WAIT_S = 60.0  # every condition below is awaited with this deadline (generous: CI machines are shared)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    c = DataPlaneCluster(str(tmp_path_factory.mktemp("group-consumer")), spus=3)
    try:
        c.start()

        async def offsets_topic_led() -> None:
            async with c.client() as client:
                async def led() -> bool:
                    client.forget_leaders(OFFSETS_TOPIC)
                    parts = await offsets_topic(client)
                    return bool(parts) and all(p["status"].get("leader") is not None for p in parts)
                await wait_until(led, WAIT_S, f"{OFFSETS_TOPIC} to have a leader for every partition")
        run_async(offsets_topic_led)
        yield c
    finally:
        c.close()


async def topic_with(client: AsyncClient, topic: str, partitions: int, per_partition: int) -> list[int]:
    """A replicated topic with ``per_partition`` records in each partition; the high watermarks."""
    await client.create_topic(topic, partitions, 3)
    await produce(client, topic, partitions, per_partition)
    return await wait_committed(client, topic)


async def produce(client: AsyncClient, topic: str, partitions: int, per_partition: int) -> None:
    producer = client.producer(topic, acks="all")
    for p in range(partitions):
        for i in range(per_partition):
            await producer.send(b"%d-%d" % (p, i), partition=p)
    await producer.close()


async def committed(client: AsyncClient, group: str, topic: str) -> dict[int, int]:
    r = await group_call(client, group, "offsetFetch", {"group": group, "topics": []})
    return {o.partition: o.offset for o in r.offsets if o.topic == topic}


async def poll_until(c: AsyncGroupConsumer, done: Any, what: str) -> list[ConsumerRecord]:
    """Poll ``c`` (records kept) until ``done(records)``; fail after WAIT_S."""
    out: list[ConsumerRecord] = []
    loop = asyncio.get_running_loop()
    end = loop.time() + WAIT_S
    while not done(out):
        assert loop.time() < end, f"not within {WAIT_S} s: {what}; got {len(out)} records"
        out.extend(await c.poll(0.2))
    return out


class Member:
    """A consumer polling in a task, its callbacks written to a shared log with timestamps."""

    def __init__(self, cluster: DataPlaneCluster, name: str, log: list[tuple[float, str, str, frozenset]],
                 topic: str, group: str, **options: Any) -> None:
        self.name = name
        self.client = cluster.client()
        self.records: list[ConsumerRecord] = []
        self.log = log

        def note(kind: str) -> Any:
            def cb(parts: frozenset, generation: int) -> None:
                log.append((time.monotonic(), name, kind, parts))
            return cb
        self.c = self.client.consumer(topic, group=group, on_assigned=note("assigned"), on_revoked=note("revoked"),
                                      on_lost=note("lost"), **options)
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while True:
            self.records.extend(await self.c.poll(0.2))

    def held(self) -> int:
        return len(self.c.assignment())

    async def close(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        assert self.task.cancelled(), self.task.exception()  # the poll loop never failed
        await self.c.close()
        await self.client.close()


def never_two_owners(log: list[tuple[float, str, str, frozenset]]) -> None:
    """Replay the callbacks in time order: a partition is assigned only while nobody holds it."""
    owner: dict[TopicPartition, str] = {}
    for _t, name, kind, parts in sorted(log, key=lambda e: e[0]):
        for tp in parts:
            if kind == "assigned":
                assert tp not in owner, f"{tp} assigned to {name} while {owner.get(tp)} held it"
                owner[tp] = name
            else:
                assert owner.get(tp) == name, f"{name} {kind} {tp} it did not hold"
                del owner[tp]


# -------------------------------------------------------------------- commits and restarts

def test_restart_resumes_after_the_last_commit_with_no_gap(cluster: DataPlaneCluster) -> None:
    """Read some records, commit, read more without committing, close: a new member of the
    group starts every partition exactly at its committed offset."""
    async def body() -> None:
        async with cluster.client() as client:
            hws = await topic_with(client, "resume", 3, 50)
            first = client.consumer("resume", group="resume-g", auto_commit=False)
            got = await poll_until(first, lambda rs: len(rs) >= 60, "60 records")
            await first.commit()
            at_commit = {p: first.positions().get(p, 0) for p in range(3)}
            got += await first.poll(1)  # handed out but never committed
            await first.close()
            # Every partition is committed, one not read yet at its start (0), as Kafka does.
            assert await committed(client, "resume-g", "resume") == at_commit
            second = client.consumer("resume", group="resume-g", auto_commit=False)
            rest = await poll_until(second, lambda rs: len(rs) >= sum(hws) - sum(at_commit.values()),
                                    "the records after the commit")
            await second.close()
            firsts = {}
            for r in rest:
                firsts.setdefault(r.partition, r.offset)
            assert firsts == {p: o for p, o in at_commit.items() if o < hws[p]}
            for p in range(3):
                offsets = [r.offset for r in rest if r.partition == p]
                assert offsets == list(range(at_commit[p], hws[p])), f"partition {p}: a gap or a repeat"
            assert len(got) > 60
    run_async(body)


def test_manual_commit_of_chosen_offsets(cluster: DataPlaneCluster) -> None:
    async def body() -> None:
        async with cluster.client() as client:
            await topic_with(client, "manual", 2, 20)
            c = client.consumer("manual", group="manual-g", auto_commit=False)
            await poll_until(c, lambda rs: len(rs) >= 40, "every record")
            await c.commit({0: 5, TopicPartition("manual", 1): 7})
            assert await committed(client, "manual-g", "manual") == {0: 5, 1: 7}
            await c.close()
            again = client.consumer("manual", group="manual-g")
            rs = await poll_until(again, lambda rs: len(rs) >= 15 + 13, "the records after 5 and 7")
            await again.close()
            assert sorted((r.partition, r.offset) for r in rs) == (
                [(0, o) for o in range(5, 20)] + [(1, o) for o in range(7, 20)])
    run_async(body)


def test_auto_commit_commits_what_was_handed_out(cluster: DataPlaneCluster) -> None:
    async def body() -> None:
        async with cluster.client() as client:
            hws = await topic_with(client, "auto", 2, 30)
            c = client.consumer("auto", group="auto-g", auto_commit_interval_ms=100)
            await poll_until(c, lambda rs: len(rs) >= 60, "every record")

            async def all_committed() -> bool:
                await c.poll(0.05)  # auto-commits happen at poll boundaries
                return await committed(client, "auto-g", "auto") == {0: hws[0], 1: hws[1]}
            await wait_until(all_committed, WAIT_S, "the automatic commit of every position")
            await c.close()
    run_async(body)


def test_close_commits_when_auto_commit_is_on(cluster: DataPlaneCluster) -> None:
    async def body() -> None:
        async with cluster.client() as client:
            await topic_with(client, "closing", 1, 10)
            c = client.consumer("closing", group="closing-g", auto_commit_interval_ms=3_600_000)
            rs = await poll_until(c, lambda rs: len(rs) >= 4, "some records")
            await c.close()
            assert await committed(client, "closing-g", "closing") == {0: rs[-1].offset + 1}
    run_async(body)


def test_commit_of_a_partition_not_assigned_is_refused(cluster: DataPlaneCluster) -> None:
    """Two members split two partitions: each may commit only its own."""
    async def body() -> None:
        async with cluster.client() as client:
            await topic_with(client, "notmine", 2, 5)
        log: list[Any] = []
        a = Member(cluster, "a", log, "notmine", "notmine-g", auto_commit=False)
        b = Member(cluster, "b", log, "notmine", "notmine-g", auto_commit=False)
        try:
            await wait_until(lambda: a.held() == 1 and b.held() == 1, WAIT_S, "one partition each")
            async with cluster.client() as client:
                async def coordinator_agrees() -> bool:  # both heartbeats with their partition arrived
                    r = await group_call(client, "notmine-g", "describeGroup", {"group": "notmine-g"})
                    return sorted(len(m["owned"]) for m in json.loads(r.groupJson)["members"]) == [1, 1]
                await wait_until(coordinator_agrees, WAIT_S, "the coordinator to count one partition each")
            theirs = next(iter(b.c.assignment()))
            with pytest.raises(StaleMemberError) as e:
                await a.c.commit({theirs: 1})
            assert f"partition {theirs} is not assigned to member {a.c.member_id}" in str(e.value)
            assert "\n" not in str(e.value)
            await a.c.commit({next(iter(a.c.assignment())): 1})  # its own: accepted
        finally:
            await a.close()
            await b.close()
    run_async(body)


def test_a_topic_that_does_not_exist_is_refused_in_one_line(cluster: DataPlaneCluster) -> None:
    async def body() -> None:
        async with cluster.client() as client:
            c = client.consumer("no-such-topic", group="nosuch-g")
            with pytest.raises(NotFoundError) as e:
                await c.poll(1)
            assert str(e.value) == "topic no-such-topic does not exist"
            await c.close()
    run_async(body)


# -------------------------------------------------------------------- rebalances

def test_added_partitions_are_picked_up(cluster: DataPlaneCluster) -> None:
    """kolk topic add-partitions: the member is given the new partitions and reads them from
    the beginning (no commit yet)."""
    async def body() -> None:
        async with cluster.client() as client:
            await topic_with(client, "grows", 2, 3)
            log: list[Any] = []
            m = Member(cluster, "m", log, "grows", "grows-g")
            try:
                await wait_until(lambda: len(m.records) == 6, WAIT_S, "the first two partitions' records")
                await client.admin.add_partitions("grows", 4)
                client.forget_leaders("grows")
                await wait_until(lambda: m.held() == 4, WAIT_S, "the new partitions to be assigned")
                await produce(client, "grows", 4, 2)
                await wait_until(lambda: len(m.records) == 6 + 8, WAIT_S, "the records of every partition")
                assert sorted((r.partition, r.offset) for r in m.records[6:]) == [
                    (p, o) for p in range(4) for o in ((3, 4) if p < 2 else (0, 1))]
            finally:
                await m.close()
            never_two_owners(log)
    run_async(body)


def test_two_then_three_then_one_member_split_six_partitions(cluster: DataPlaneCluster) -> None:
    """No partition held by two members at once, balanced splits, and every record delivered
    to the group at least once across the rebalances."""
    async def body() -> None:
        async with cluster.client() as client:
            await topic_with(client, "split", 6, 20)
            log: list[Any] = []
            a = Member(cluster, "a", log, "split", "split-g", auto_commit_interval_ms=200)
            b = Member(cluster, "b", log, "split", "split-g", auto_commit_interval_ms=200)
            members = [a, b]
            try:
                await wait_until(lambda: (a.held(), b.held()) == (3, 3), WAIT_S, "3 and 3")
                await produce(client, "split", 6, 10)
                c = Member(cluster, "c", log, "split", "split-g", auto_commit_interval_ms=200)
                members.append(c)
                await wait_until(lambda: [m.held() for m in members] == [2, 2, 2], WAIT_S, "2, 2 and 2")
                await produce(client, "split", 6, 10)
                await a.close()
                await b.close()
                members = [c]
                await wait_until(lambda: c.held() == 6, WAIT_S, "all six to the last member")
                await produce(client, "split", 6, 10)
                hws = await wait_committed(client, "split")
                await wait_until(lambda: all(c.c.positions().get(p) == hws[p] for p in range(6)), WAIT_S,
                                 "the last member to read to the end")
            finally:
                for m in members:
                    await m.close()
            never_two_owners(log)
            for m in (a, b, c):  # the queue saw what the callbacks saw, in order; it ends once closed
                changes = [(ch.kind, ch.partitions) async for ch in m.c.assignment_changes()]
                assert changes == [(k, p) for _t, n, k, p in log if n == m.name] and m.c.changes_dropped == 0
            seen = {(r.partition, r.offset) for m in (a, b, c) for r in m.records}
            assert seen == {(p, o) for p in range(6) for o in range(hws[p])}, "a record was never delivered"
    run_async(body)


def test_clean_leave_hands_back_at_once(cluster: DataPlaneCluster) -> None:
    """With a 30 s session timeout, a member that closes hands its partitions back at once (the
    goal is 500 ms; the bound here, 2 s, leaves room for a loaded machine): the coordinator does
    not wait for its session to expire."""
    async def body() -> None:
        async with cluster.client() as client:
            await topic_with(client, "leave", 6, 1)
        log: list[Any] = []
        a = Member(cluster, "a", log, "leave", "leave-g", session_timeout_ms=30_000)
        b = Member(cluster, "b", log, "leave", "leave-g", session_timeout_ms=30_000)
        try:
            await wait_until(lambda: (a.held(), b.held()) == (3, 3), WAIT_S, "3 and 3")
            t0 = time.monotonic()
            await b.close()
            await wait_until(lambda: a.held() == 6, WAIT_S, "b's partitions to go to a")
            took = time.monotonic() - t0
            assert took < 2.0, f"handing back took {took:.2f} s"
        finally:
            await a.close()
        never_two_owners(log)
    run_async(body)


def test_static_member_restart_gets_its_partitions_back(cluster: DataPlaneCluster) -> None:
    """A static member (group_instance_id) that closes and comes back within its session
    timeout gets the same partitions, and the other member's assignment never changes."""
    async def body() -> None:
        async with cluster.client() as client:
            await topic_with(client, "static", 6, 1)
        log: list[Any] = []
        a = Member(cluster, "a", log, "static", "static-g", group_instance_id="a", session_timeout_ms=20_000)
        b = Member(cluster, "b", log, "static", "static-g", group_instance_id="b", session_timeout_ms=20_000)
        try:
            await wait_until(lambda: (a.held(), b.held()) == (3, 3), WAIT_S, "3 and 3")
            before_a, before_b = a.c.assignment(), b.c.assignment()
            b_changes = [e for e in log if e[1] == "b"]
            await a.close()
            a2 = Member(cluster, "a2", log, "static", "static-g", group_instance_id="a", session_timeout_ms=20_000)
            try:
                await wait_until(lambda: a2.held() == 3, WAIT_S, "the restarted static member's partitions")
                assert a2.c.assignment() == before_a
                assert b.c.assignment() == before_b and [e for e in log if e[1] == "b"] == b_changes
            finally:
                await a2.close()
        finally:
            await b.close()
        log[:] = [(t, "a" if n == "a2" else n, k, p) for t, n, k, p in log]
        never_two_owners(log)
    run_async(body)


# -------------------------------------------------------------------- a consumer killed -9

MEMBER_SCRIPT = r"""
import asyncio, sys
from kolk.client.client import AsyncClient

async def main(sc, topic, group):
    async with AsyncClient(sc.split(","), timeout_s=20) as client:
        c = client.consumer(topic, group=group, auto_commit=False, session_timeout_ms=2000)
        while True:
            for r in await c.poll(0.5):
                await asyncio.sleep(0.01)  # the work a record takes: the test kills it mid-way
                if r.offset % 5 == 4:
                    await c.commit({r.partition: r.offset + 1})
                    print("committed", r.partition, r.offset + 1, flush=True)

asyncio.run(main(*sys.argv[1:]))
"""


def test_consumer_killed_minus_9_resumes_after_its_last_commit(cluster: DataPlaneCluster, tmp_path: Any) -> None:
    """A consumer process commits as it reads and is killed -9; a new member starts every
    partition exactly after the last commit the dead one saw acknowledged."""
    async def body() -> None:
        async with cluster.client() as client:
            hws = await topic_with(client, "killed", 2, 200)
            out_path = str(tmp_path / "member.out")
            with open(out_path, "wb") as out:
                proc = subprocess.Popen([sys.executable, "-c", MEMBER_SCRIPT, ",".join(cluster.sc_addresses),
                                         "killed", "killed-g"], stdout=out, stderr=subprocess.STDOUT)
            try:
                def commits() -> dict[int, int]:
                    last: dict[int, int] = {}
                    with open(out_path) as f:
                        for line in f:
                            if line.startswith("committed ") and line.endswith("\n"):
                                _, p, o = line.split()
                                last[int(p)] = int(o)
                    return last
                await wait_until(lambda: len(commits()) == 2 and sum(commits().values()) >= 60, WAIT_S,
                                 lambda: "the member process to commit:\n" + open(out_path).read()[-2000:])
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(timeout=10)
            last = commits()
            assert await committed(client, "killed-g", "killed") == last
            again = client.consumer("killed", group="killed-g", auto_commit=False)
            rest = await poll_until(again, lambda rs: len(rs) >= sum(hws) - sum(last.values()),
                                    "the records after the last commit")
            await again.close()
            for p in range(2):
                assert [r.offset for r in rest if r.partition == p] == list(range(last[p], hws[p]))
    run_async(body)


# -------------------------------------------------------------------- the synchronous client

def test_sync_client_group_consumer(cluster: DataPlaneCluster) -> None:
    async def setup() -> None:
        async with cluster.client() as client:
            await topic_with(client, "sync", 2, 5)
    run_async(setup)
    with Client(cluster.sc_addresses) as client:
        c = client.consumer("sync", group="sync-g", auto_commit=False, start=Offset.beginning())
        got: list[ConsumerRecord] = []
        end = time.monotonic() + WAIT_S
        while len(got) < 10:
            assert time.monotonic() < end, f"10 records, got {len(got)}"
            got.extend(c.poll(0.2))
        assert c.assignment() == {TopicPartition("sync", 0), TopicPartition("sync", 1)}
        assert c.member_id and c.generation > 0
        c.commit()
        c.close()
        # Iterating: a commit() in the loop's body covers exactly the records handed out so far.
        it = client.consumer("sync", group="sync-iter-g", auto_commit=False)
        third = None
        for i, rec in enumerate(it):
            if i == 2:
                it.commit()
                third = rec
                break
        it.close()
    assert third is not None

    async def check() -> None:
        async with cluster.client() as client:
            assert await committed(client, "sync-g", "sync") == {0: 5, 1: 5}
            # The partition not read yet is committed at its start (0), as Kafka does.
            expected = {0: 0, 1: 0, third.partition: third.offset + 1}
            assert await committed(client, "sync-iter-g", "sync") == expected
    run_async(check)


# -------------------------------------------------------------------- a frozen member

FROZEN_SCRIPT = r"""
import asyncio, sys
from kolk.client.client import AsyncClient
from kolk.protocol.errors import KolkError

async def main(sc, topic, group):
    async with AsyncClient(sc.split(","), timeout_s=20) as client:
        c = client.consumer(topic, group=group, auto_commit=False, session_timeout_ms=2000)
        got = 0
        while got < 10:
            got += len(await c.poll(0.5))
        print("holding", ",".join(str(tp.partition) for tp in sorted(c.assignment())), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)  # the test says when
        try:
            await c.commit()
            print("commit accepted", flush=True)
        except KolkError as e:
            print("commit refused", type(e).__name__, e, flush=True)

asyncio.run(main(*sys.argv[1:]))
"""


def test_frozen_member_is_removed_and_its_late_commit_refused(cluster: DataPlaneCluster, tmp_path: Any) -> None:
    """A member process stopped with SIGSTOP misses its heartbeats: after its session timeout
    the other member gets its partitions; resumed, its commit of what it had read is refused."""
    async def body() -> None:
        async with cluster.client() as client:
            await topic_with(client, "frozen", 2, 10)
        out_path = str(tmp_path / "frozen.out")
        with open(out_path, "wb") as out:
            proc = subprocess.Popen([sys.executable, "-c", FROZEN_SCRIPT, ",".join(cluster.sc_addresses),
                                     "frozen", "frozen-g"], stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.PIPE)
        log: list[Any] = []
        other: Member | None = None
        try:
            await wait_until(lambda: "holding 0,1" in open(out_path).read(), WAIT_S,
                             lambda: "the member process to hold both partitions:\n" + open(out_path).read())
            os.kill(proc.pid, signal.SIGSTOP)
            other = Member(cluster, "other", log, "frozen", "frozen-g", auto_commit=False)
            t0 = time.monotonic()
            await wait_until(lambda: other.held() == 2, WAIT_S, "the frozen member's partitions to move")
            assert time.monotonic() - t0 >= 1.0, "moved before the frozen member's session could expire"
            os.kill(proc.pid, signal.SIGCONT)
            assert proc.stdin is not None
            proc.stdin.write(b"commit\n")
            proc.stdin.flush()
            await wait_until(lambda: "commit " in open(out_path).read(), WAIT_S, "the late commit's answer")
            assert "commit refused StaleMemberError" in open(out_path).read(), open(out_path).read()
            async with cluster.client() as client:
                assert await committed(client, "frozen-g", "frozen") == {}, "the zombie moved the group's position"
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
                proc.kill()
                proc.wait(timeout=10)
            if other is not None:
                await other.close()
    run_async(body)


# -------------------------------------------------------------------- the coordinator killed -9 (last: it kills an SPU)

def test_coordinator_killed_the_group_moves_and_keeps_its_positions(cluster: DataPlaneCluster) -> None:
    """The SPU leading the group's offsets partition is killed -9: the member finds the new
    coordinator, stays in the group (same member id, nothing lost), keeps reading, and the
    committed positions are still there."""
    from kolk.groups.names import group_partition

    async def body() -> None:
        client = cluster.client()
        victim = None
        try:
            hws = await topic_with(client, "failover", 2, 20)
            parts = await client.partitions(OFFSETS_TOPIC)
            victim = parts[group_partition("failover-g", len(parts))]["status"]["leader"]
            log: list[Any] = []
            m = Member(cluster, "m", log, "failover", "failover-g", auto_commit=False)
            try:
                await wait_until(lambda: len(m.records) == sum(hws), WAIT_S, "every record")
                await m.c.commit()
                member_id = m.c.member_id
                cluster.kill_spu(victim)
                await produce(client, "failover", 2, 5)

                async def moved() -> bool:
                    client.forget_leaders(OFFSETS_TOPIC)
                    r = await group_call(client, "failover-g", "describeGroup", {"group": "failover-g"})
                    return json.loads(r.groupJson)["coordinator"] != victim
                await wait_until(moved, WAIT_S, "a new coordinator")
                await wait_until(lambda: len(m.records) == sum(hws) + 10, WAIT_S, "the records after the kill")
                assert await committed(client, "failover-g", "failover") == {0: hws[0], 1: hws[1]}
                await m.c.commit()
                assert await committed(client, "failover-g", "failover") == {0: hws[0] + 5, 1: hws[1] + 5}
                assert m.c.member_id == member_id and not [e for e in log if e[2] == "lost"]
            finally:
                await m.close()
        finally:
            if victim is not None and not cluster.spus[victim].alive:
                cluster.launch_spu(victim)
                await cluster.wait_spu_ready(victim)
            await client.close()
    run_async(body)
