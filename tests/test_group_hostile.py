"""Hostile inputs at the consumer-group calls of a real cluster (issue 20, attacker review): one
SC and three SPUs, the coordinator on the leader of the group's ``_consumer_offsets`` partition,
raw group calls below the consumer (``group_call`` and bare connections).

What it proves: a commit larger than one batch of ``_consumer_offsets`` is refused in one line
(tooLarge, not retried) instead of failing as a retriable ``notCoordinator`` forever; commits
that together are larger than a batch are written in several batches, all of them succeed;
offsets of ``_consumer_offsets`` itself cannot be committed; every malformed group name, member
epoch, timeout, assignor, oversized owned list, unknown member and internal topic is refused
with its own one-line error naming what was wrong, and the coordinator keeps serving; a list of
groups larger than a frame is refused in one line instead of breaking the connection; a heartbeat
is never held past its member's session; 600 held heartbeats on one connection are all answered
while other connections are served.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dataplane_cluster import DataPlaneCluster, run_async, wait_until, offsets_topic  # noqa: E402
from kolk.client.client import AsyncClient  # noqa: E402
from kolk.client.coordinator import coordinator_of, group_call, list_groups, offsets_partitions  # noqa: E402
from kolk.groups.names import OFFSETS_TOPIC, group_partition  # noqa: E402
from kolk.protocol import limits as L  # noqa: E402
from kolk.protocol.channel import CallRejected  # noqa: E402
from kolk.protocol.errors import InvalidRequestError  # noqa: E402
from kolk.segments import build_batch  # noqa: E402

WAIT_S = 60.0
BIG_TOPIC = "b" * 200                 # the longest topic name: the longest offset keys
BIG_PARTITIONS = 950                  # 950 x ~4.6 KB > one 4 MiB batch of _consumer_offsets
WIDE_METADATA = "\U0001F600" * L.COMMIT_METADATA_CHARS_MAX  # 1024 characters, 4 KiB of UTF-8


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    # A generous SPU heartbeat timeout: creating ~1000 partitions keeps the SPUs busy.
    c = DataPlaneCluster(str(tmp_path_factory.mktemp("group-hostile")), spus=3, heartbeat_timeout_ms=15000)
    try:
        c.start()

        async def setup() -> None:
            async with c.client() as client:
                async def led(topic: str) -> bool:
                    client.forget_leaders(topic)
                    parts = await (offsets_topic(client) if topic == OFFSETS_TOPIC else client.partitions(topic))
                    return bool(parts) and all(p["status"].get("leader") is not None for p in parts)
                await wait_until(lambda: led(OFFSETS_TOPIC), WAIT_S, f"{OFFSETS_TOPIC} to be led")
                await client.create_topic("t", 4, 1)
                await client.create_topic(BIG_TOPIC, BIG_PARTITIONS, 1)
                await wait_until(lambda: led("t"), WAIT_S, "t to be led")
                await wait_until(lambda: led(BIG_TOPIC), WAIT_S, f"{BIG_PARTITIONS} partitions to be led")
        run_async(setup)
        yield c
    finally:
        c.close()


def groups_on_one_partition(n: int, p_count: int, prefix: str, width: int = 0) -> list[str]:
    """``n`` group names (padded to ``width``) coordinated by the same offsets partition."""
    want = group_partition(prefix.ljust(width, "x") + "0", p_count)
    out: list[str] = []
    i = 0
    while len(out) < n:
        name = (prefix + str(i)).rjust(width, "x") if width else prefix + str(i)
        if group_partition(name, p_count) == want:
            out.append(name)
        i += 1
    return out


def offsets(partitions: range, metadata: str = "", topic: str = BIG_TOPIC) -> list[dict[str, Any]]:
    return [{"topic": topic, "partition": p, "offset": 7, "metadata": metadata} for p in partitions]


async def committed(client: AsyncClient, group: str) -> dict[tuple[str, int], int]:
    r = await group_call(client, group, "offsetFetch", {"group": group, "topics": []}, deadline_s=WAIT_S)
    return {(o.topic, o.partition): o.offset for o in r.offsets}


async def raw(client: AsyncClient, route: str, method: str, **fields: Any) -> Any:
    """One group call sent once to ``route``'s coordinator: the answer, refused or not."""
    conn, _address = await coordinator_of(client, route)
    return await conn.call(method, 10, **fields)


def refused(r: Any, code: str, *words: str) -> str:
    assert not r.result.ok, "accepted"
    e = r.result.error
    assert e.code == code, f"{e.code}: {e.message}"
    msg = str(e.message)
    assert "\n" not in msg and all(w in msg for w in words), msg
    return msg


# ---------------------------------------------------------------- commits larger than a batch


def test_commit_larger_than_one_batch_is_refused_at_once_in_one_line(cluster: DataPlaneCluster) -> None:
    async def go() -> None:
        async with cluster.client() as client:
            group = "G" * L.GROUP_NAME_CHARS_MAX
            with pytest.raises(InvalidRequestError) as e:  # tooLarge: not retriable
                await group_call(client, group, "offsetCommit", {"group": group, "memberId": "", "memberEpoch": 0,
                                 "offsets": offsets(range(BIG_PARTITIONS), WIDE_METADATA)}, deadline_s=30)
            msg = str(e.value)
            assert "more than one batch of _consumer_offsets-" in msg and "commit fewer partitions" in msg, msg
            assert "\n" not in msg and "gave up" not in msg and not e.value.retriable, msg  # not retried
            # Nothing of it was written; half of it fits and is committed.
            assert await committed(client, group) == {}
            await group_call(client, group, "offsetCommit", {"group": group, "memberId": "", "memberEpoch": 0,
                             "offsets": offsets(range(BIG_PARTITIONS // 2), WIDE_METADATA)}, deadline_s=WAIT_S)
            got = await committed(client, group)
            assert got == {(BIG_TOPIC, p): 7 for p in range(BIG_PARTITIONS // 2)}
    run_async(go)


def test_commits_larger_than_a_batch_together_are_split_and_all_succeed(cluster: DataPlaneCluster) -> None:
    async def go() -> None:
        async with cluster.client() as client:
            p_count = await offsets_partitions(client)
            groups = groups_on_one_partition(4, p_count, "together", L.GROUP_NAME_CHARS_MAX)
            half = range(BIG_PARTITIONS // 2)  # ~2.2 MB each: two of them are more than one batch

            async def commit(g: str) -> None:
                await group_call(client, g, "offsetCommit", {"group": g, "memberId": "", "memberEpoch": 0,
                                 "offsets": offsets(half, WIDE_METADATA)}, deadline_s=WAIT_S)
            await asyncio.gather(*(commit(g) for g in groups))
            for g in groups:
                assert await committed(client, g) == {(BIG_TOPIC, p): 7 for p in half}
    run_async(go)


# ---------------------------------------------------------------- the offsets topic itself


def test_offsets_of_the_offsets_topic_cannot_be_committed(cluster: DataPlaneCluster) -> None:
    async def go() -> None:
        async with cluster.client() as client:
            r = await raw(client, "g-internal", "offsetCommit", group="g-internal", memberId="", memberEpoch=0,
                          offsets=offsets(range(1), topic=OFFSETS_TOPIC))
            refused(r, "invalidArgument", OFFSETS_TOPIC, "is internal")
            assert await committed(client, "g-internal") == {}
    run_async(go)


def test_groups_cannot_subscribe_to_or_produce_to_the_offsets_topic(cluster: DataPlaneCluster) -> None:
    async def go() -> None:
        async with cluster.client() as client:
            r = await raw(client, "g-sub", "groupHeartbeat", **join("g-sub", topics=[OFFSETS_TOPIC]))
            refused(r, "invalidArgument", OFFSETS_TOPIC, "cannot subscribe")
            conn, _ = await client.leader_spu(OFFSETS_TOPIC, 0)
            r = await conn.call("produce", 10, topic=OFFSETS_TOPIC, partition=0, acks="all", timeoutMs=1000,
                                records=build_batch([(b'["g","x"]', b"{}")]))
            refused(r, "denied", OFFSETS_TOPIC, "only the group coordinators write")
    run_async(go)


# ---------------------------------------------------------------- malformed requests


def join(group: str, **over: Any) -> dict[str, Any]:
    fields = {"group": group, "memberId": "", "instanceId": "", "memberEpoch": 0, "topics": ["t"], "owned": [],
              "sessionTimeoutMs": 0, "rebalanceTimeoutMs": 0, "assignor": "", "waitMs": 0}
    fields.update(over)
    return fields


BAD_NAMES = [("", "is empty"), ("x" * 300, "more than"), ("é", "is invalid"), ("a/b", "is invalid"),
             ("a\nb", "is invalid"), ("..", "is invalid")]


@pytest.mark.parametrize("name,why", BAD_NAMES, ids=["empty", "long", "unicode", "slash", "newline", "dotdot"])
def test_bad_group_names_are_refused_by_every_call(cluster: DataPlaneCluster, name: str, why: str) -> None:
    async def go() -> None:
        async with cluster.client() as client:
            calls = [("groupHeartbeat", join(name)), ("describeGroup", {"group": name}),
                     ("deleteGroup", {"group": name}), ("offsetFetch", {"group": name, "topics": []}),
                     ("offsetCommit", {"group": name, "memberId": "", "memberEpoch": 0, "offsets": offsets(range(1))})]
            for method, fields in calls:
                try:
                    r = await raw(client, "route", method, **fields)
                except CallRejected as e:  # over the wire's bound: refused before the call ran
                    assert len(name) > L.GROUP_NAME_CHARS_MAX and "group has 300 characters" in str(e), str(e)
                    continue
                refused(r, "invalidArgument", "group name", why)
    run_async(go)


def test_10kb_group_name_is_refused_by_the_wire_bound(cluster: DataPlaneCluster) -> None:
    async def go() -> None:
        async with cluster.client() as client:
            with pytest.raises(CallRejected, match="group has 10240 characters, more than the limit of 255"):
                await raw(client, "route", "describeGroup", group="x" * 10240)
    run_async(go)


HEARTBEAT_REFUSALS = [
    ({"memberEpoch": -2**31}, "invalidArgument", "member epoch -2147483648 is not allowed"),
    ({"memberEpoch": 2**31 - 1}, "invalidArgument", "needs the member id"),
    ({"memberEpoch": 2**31 - 1, "memberId": "garbage"}, "staleMember", "member garbage is not in group"),
    ({"memberEpoch": -1, "memberId": "nobody"}, "staleMember", "member nobody is not in group"),
    ({"memberEpoch": -2, "memberId": "nobody"}, "staleMember", "member nobody is not in group"),
    ({"memberId": "early"}, "invalidArgument", "names no member id"),
    ({"sessionTimeoutMs": 1}, "invalidArgument", "session timeout 1 ms is out of range"),
    ({"sessionTimeoutMs": 2**32 - 1}, "invalidArgument", "session timeout 4294967295 ms is out of range"),
    ({"rebalanceTimeoutMs": 2**32 - 1}, "invalidArgument", "rebalance timeout 4294967295 ms is out of range"),
    ({"assignor": "evil"}, "invalidArgument", "assignor 'evil' is not one of"),
    ({"topics": []}, "invalidArgument", "subscribes to at least one topic"),
    ({"topics": ["nope"]}, "notFound", "topic nope does not exist"),
    ({"owned": [{"topic": f"t{i}", "partitions": list(range(200))} for i in range(51)]}, "tooLarge",
     f"owned names more than {L.GROUP_PARTITIONS_MAX} partitions"),
]


@pytest.mark.parametrize("over,code,words", HEARTBEAT_REFUSALS,
                         ids=["epoch-min", "epoch-max-no-id", "epoch-max-garbage-id", "leave-unknown",
                              "leave-for-now-unknown", "join-with-id", "session-1ms", "session-max",
                              "rebalance-max", "assignor", "no-topics", "missing-topic", "owned-10200"])
def test_heartbeat_refusals(cluster: DataPlaneCluster, over: dict[str, Any], code: str, words: str) -> None:
    async def go() -> None:
        async with cluster.client() as client:
            group = "hb-refusals"
            # a live member, so that unknown ids are refused by the group, not by its absence
            ok = await raw(client, group, "groupHeartbeat", **join(group, sessionTimeoutMs=60000))
            assert ok.result.ok, ok.result.error.message
            r = await raw(client, group, "groupHeartbeat", **join(group, **over))
            refused(r, code, words)
            bye = await raw(client, group, "groupHeartbeat", **join(group, memberId=ok.memberId, memberEpoch=-1))
            assert bye.result.ok, bye.result.error.message
    run_async(go)


def test_wire_bounds_of_a_heartbeat(cluster: DataPlaneCluster) -> None:
    async def go() -> None:
        async with cluster.client() as client:
            for over, words in [({"instanceId": "i" * 256},
                                 "instanceId has 256 characters, more than the limit of 255"),
                                ({"memberId": "m" * 65}, "memberId has 65 characters, more than the limit of 64"),
                                ({"topics": ["t"] * 65}, "topics has 65 entries, more than the limit of 64"),
                                ({"owned": [{"topic": "t", "partitions": list(range(10_001))}]},
                                 "partitions has 10001 entries, more than the limit of 10000")]:
                with pytest.raises(CallRejected) as e:
                    await raw(client, "route", "groupHeartbeat", **join("route", **over))
                assert words in str(e.value), str(e.value)
            # and the coordinator still serves
            r = await raw(client, "route", "groupHeartbeat", **join("route"))
            assert r.result.ok, r.result.error.message
    run_async(go)


def test_commit_refusals(cluster: DataPlaneCluster) -> None:
    async def go() -> None:
        async with cluster.client() as client:
            g = "commit-refusals"
            base = {"group": g, "memberId": "", "memberEpoch": 0}
            for offs, code, words in [
                ([{"topic": "t", "partition": 0, "offset": -1, "metadata": ""}], "invalidArgument",
                 "offset -1 for t-0 is negative"),
                ([{"topic": "t", "partition": 99, "offset": 1, "metadata": ""}], "notFound",
                 "partition t-99 does not exist"),
                ([{"topic": "nope", "partition": 0, "offset": 1, "metadata": ""}], "notFound",
                 "partition nope-0 does not exist"),
                ([], "invalidArgument", "names at least one partition"),
            ]:
                refused(await raw(client, g, "offsetCommit", **base, offsets=offs), code, words)
            r = await raw(client, g, "offsetCommit", group=g, memberId="ghost", memberEpoch=1,
                          offsets=offsets(range(1), topic="t"))
            refused(r, "staleMember", "member ghost is not in group")
            assert await committed(client, g) == {}
    run_async(go)


# ---------------------------------------------------------------- answers larger than a frame


@pytest.mark.long  # 50,000 commits: ~1-2 minutes on 2 cores; `make test-long`
def test_list_of_groups_larger_than_a_frame_is_refused_in_one_line(cluster: DataPlaneCluster) -> None:
    """50,000 groups with 255-character names on one coordinator: their list is ~18 MB of JSON.
    Sent as it was, the client dropped the connection at the frame limit; now a one-line tooLarge,
    and the connection keeps serving."""
    async def go() -> None:
        async with cluster.client() as client:
            names = groups_on_one_partition(50_000, await offsets_partitions(client), "n", L.GROUP_NAME_CHARS_MAX)
            conn, _address = await coordinator_of(client, names[0])
            window = asyncio.Semaphore(200)  # below REQUESTS_IN_FLIGHT_MAX

            async def create(g: str) -> None:
                async with window:
                    r = await conn.call("offsetCommit", WAIT_S, group=g, memberId="", memberEpoch=0,
                                        offsets=offsets(range(1), topic="t"))
                    assert r.result.ok, r.result.error.message
            await asyncio.gather(*(create(g) for g in names))
            r = await conn.call("listGroups", WAIT_S)
            msg = refused(r, "tooLarge", "groups SPU", "bytes of JSON, more than one answer holds (16777216)")
            assert int(msg.split("the list of the ")[1].split(" ")[0]) >= len(names), msg
            with pytest.raises(InvalidRequestError, match="more than one answer holds"):
                await list_groups(client, deadline_s=WAIT_S)
            r = await conn.call("describeGroup", WAIT_S, group=names[-1])  # the same connection still serves
            assert r.result.ok and names[-1] in r.groupJson, r.result.error.message
    run_async(go)


# ---------------------------------------------------------------- held heartbeats


def test_a_heartbeat_held_longer_than_the_session_does_not_remove_the_member(cluster: DataPlaneCluster) -> None:
    """waitMs 5000 with a 1000 ms session: the coordinator held the answer past the session and
    removed the member whose heartbeat it was holding; now it holds at most half the session."""
    async def go() -> None:
        async with cluster.client() as client:
            g = "held-past-session"
            conn, _address = await coordinator_of(client, g)
            r = await conn.call("groupHeartbeat", 10, **join(g, sessionTimeoutMs=1000))
            assert r.result.ok, r.result.error.message
            owned = [{"topic": x.topic, "partitions": list(x.partitions)} for x in r.assignment]
            for _ in range(3):  # each answered within half the session, the member still in the group
                r = await conn.call("groupHeartbeat", 10, **join(g, memberId=r.memberId, memberEpoch=r.memberEpoch,
                                                                 owned=owned, sessionTimeoutMs=1000, waitMs=5000))
                assert r.result.ok, r.result.error.message
            bye = await conn.call("groupHeartbeat", 10, **join(g, memberId=r.memberId, memberEpoch=-1))
            assert bye.result.ok, bye.result.error.message
    run_async(go)


def test_many_held_heartbeats_on_one_connection_are_all_answered_and_others_served(cluster: DataPlaneCluster) -> None:
    """600 held heartbeats pipelined on one connection, more than REQUESTS_IN_FLIGHT_MAX: the SPU
    stops reading that socket past 256 and answers them all; another connection is served meanwhile."""
    async def go() -> None:
        async with cluster.client() as client:
            g = "held-flood"
            conn, _address = await coordinator_of(client, g)
            r = await conn.call("groupHeartbeat", 10, **join(g, sessionTimeoutMs=30000))
            assert r.result.ok, r.result.error.message
            owned = [{"topic": x.topic, "partitions": list(x.partitions)} for x in r.assignment]
            flood = [asyncio.ensure_future(conn.call("groupHeartbeat", WAIT_S, **join(
                g, memberId=r.memberId, memberEpoch=r.memberEpoch, owned=owned, sessionTimeoutMs=30000,
                waitMs=2000))) for _ in range(600)]
            async with cluster.client() as other:  # a second client, its own connection to the same SPU
                d = await group_call(other, g, "describeGroup", {"group": g}, deadline_s=WAIT_S)
                assert json.loads(d.groupJson)["members"][0]["member_id"] == r.memberId
                assert not all(f.done() for f in flood)  # answered while the flood is held
            answers = await asyncio.gather(*flood)
            assert all(a.result.ok for a in answers), {a.result.error.message for a in answers if not a.result.ok}
    run_async(go)


# ---------------------------------------------------------------- a subscribed topic deleted


def test_a_member_whose_topic_was_deleted_still_leaves(cluster: DataPlaneCluster) -> None:
    """The consumer's leave carries its subscription; with a subscribed topic deleted, the leave
    was refused (notFound, retried to the close deadline) and the member kept its partitions of
    the other topics until its session timed out. A leave checks no topics now."""
    async def go() -> None:
        async with cluster.client() as client:
            g = "topic-deleted"
            await client.create_topic("doomed", 2, 1)
            conn, _address = await coordinator_of(client, g)

            async def joined() -> Any:
                r = await conn.call("groupHeartbeat", 10, **join(g, topics=["t", "doomed"], sessionTimeoutMs=60000))
                return r if r.result.ok else None
            r = await wait_until(joined, WAIT_S, "the coordinator to know topic doomed")
            member = {"memberId": r.memberId, "memberEpoch": r.memberEpoch, "topics": ["t", "doomed"],
                      "sessionTimeoutMs": 60000}
            await client.delete_topic("doomed")

            async def gone() -> bool:
                h = await conn.call("groupHeartbeat", 10, **join(g, **member))
                return not h.result.ok and h.result.error.code == "notFound"
            await wait_until(gone, WAIT_S, "the coordinator to see topic doomed deleted")
            bye = await conn.call("groupHeartbeat", 10, **join(g, **{**member, "memberEpoch": -1}))
            assert bye.result.ok, bye.result.error.message
            d = await conn.call("describeGroup", 10, group=g)
            refused(d, "notFound", f"group {g} does not exist")
    run_async(go)
