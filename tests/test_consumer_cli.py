"""``kolk consumer list | describe | reset | delete`` and ``kolk consume --group`` as a user runs
them (subprocesses), and the same operations through the client API, against a real cluster:
one SC and three SPUs, real coordinators on the leaders of ``_consumer_offsets``.

A group gets an active member by joining over the wire (a groupHeartbeat with a long session,
exactly what a consumer sends first), so the refusals that depend on members are tested without
a consumer's timing. Every bad input has its own test and its one-line error.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from typing import Any

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dataplane_cluster import DataPlaneCluster, run_async, wait_committed, wait_until, offsets_topic  # noqa: E402
from jepsen.cluster import wait_for  # noqa: E402
from lifecycle_cluster import FAST_LIFECYCLE, SMALL_SEGMENTS, kolk  # noqa: E402
from kolk.client.client import AsyncClient, Client  # noqa: E402
from kolk.client.coordinator import group_call  # noqa: E402
from kolk.client.groups_admin import ResetTarget  # noqa: E402
from kolk.groups.names import OFFSETS_TOPIC  # noqa: E402
from kolk.protocol.errors import InUseError, InvalidRequestError, NotFoundError, OffsetOutOfRangeError  # noqa: E402

SESSION_MS = 60_000  # a joined test member stays for the test; it leaves in a finally


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    c = DataPlaneCluster(str(tmp_path_factory.mktemp("consumer-cli")), spus=3, spu_args=FAST_LIFECYCLE)
    try:
        c.start()
        run_async(lambda: _offsets_topic_ready(c))
        yield c
    finally:
        c.close()


async def _offsets_topic_ready(c: DataPlaneCluster) -> None:
    async with c.client() as client:
        async def led() -> bool:
            client.forget_leaders(OFFSETS_TOPIC)
            parts = await offsets_topic(client)
            return bool(parts) and all(p["status"].get("leader") is not None for p in parts)
        await wait_until(led, 30, f"{OFFSETS_TOPIC} to exist with a leader for every partition")


def ok(c: DataPlaneCluster, *args: str) -> str:
    out = kolk(c, *args)
    assert out.returncode == 0, (out.stdout, out.stderr)
    return out.stdout


def fails(c: DataPlaneCluster, *args: str, status: int = 1) -> str:
    """The one line a refused command prints on stderr (nothing on stdout)."""
    out = kolk(c, *args)
    assert out.returncode == status, (out.stdout, out.stderr)
    assert out.stdout == "" and out.stderr.count("\n") == 1, out.stderr
    return out.stderr.strip()


def topic_with(c: DataPlaneCluster, topic: str, counts: list[int], config: dict[str, str] | None = None,
               pad: int = 0, per_batch: int = 10) -> None:
    """A topic with ``counts[p]`` records in partition p (``per_batch`` to a batch, values padded
    with ``pad`` bytes), all committed."""
    from kolk.segments import build_batch

    async def body() -> None:
        async with c.client() as client:
            await client.create_topic(topic, len(counts), 1, config=config)
            for p, n in enumerate(counts):
                for first in range(0, n, per_batch):
                    values = [(None, b"%s-%d-%d " % (topic.encode(), p, i) + b"x" * pad)
                              for i in range(first, min(n, first + per_batch))]
                    await client.produce(topic, p, build_batch(values))
            await wait_committed(client, topic)
    run_async(body)


def commit_empty(c: DataPlaneCluster, group: str, topic: str, offsets: dict[int, int]) -> None:
    """Commits for a group without members (what a reset sends)."""
    async def body() -> None:
        async with c.client() as client:
            await group_call(client, group, "offsetCommit", {
                "group": group, "memberId": "", "memberEpoch": 0,
                "offsets": [{"topic": topic, "partition": p, "offset": o, "metadata": ""} for p, o in offsets.items()]})
    run_async(body)


def committed(c: DataPlaneCluster, group: str) -> dict[tuple[str, int], int]:
    async def body() -> dict[tuple[str, int], int]:
        async with c.client() as client:
            r = await group_call(client, group, "offsetFetch", {"group": group, "topics": []})
            return {(o.topic, int(o.partition)): int(o.offset) for o in r.offsets}
    return run_async(body)


class Member:
    """A member joined over the wire with a long session; ``leave()`` ends it."""

    def __init__(self, c: DataPlaneCluster, group: str, topics: list[str]) -> None:
        self.c, self.group = c, group

        async def join() -> tuple[str, int]:
            async with c.client() as client:
                r = await group_call(client, group, "groupHeartbeat", {
                    "group": group, "memberId": "", "instanceId": "", "memberEpoch": 0, "topics": topics,
                    "owned": [], "sessionTimeoutMs": SESSION_MS, "rebalanceTimeoutMs": 0, "assignor": "",
                    "waitMs": 0})
                return str(r.memberId), int(r.memberEpoch)
        self.member_id, self.epoch = run_async(join)

    def leave(self) -> None:
        async def body() -> None:
            async with self.c.client() as client:
                await group_call(client, self.group, "groupHeartbeat", {
                    "group": self.group, "memberId": self.member_id, "instanceId": "", "memberEpoch": -1,
                    "topics": [], "owned": [], "sessionTimeoutMs": SESSION_MS, "rebalanceTimeoutMs": 0,
                    "assignor": "", "waitMs": 0})
        run_async(body)


# ---------------------------------------------------------------- list and describe


def test_list_shows_groups_of_every_coordinator(cluster: DataPlaneCluster) -> None:
    topic_with(cluster, "listed", [3])
    groups = [f"list-{i}" for i in range(12)]  # 12 names over 8 offsets partitions led by 3 SPUs
    for g in groups:
        commit_empty(cluster, g, "listed", {0: 1})
    rows = {r["group"]: r for r in json.loads(ok(cluster, "consumer", "list", "--json"))}
    assert set(groups) <= set(rows)
    assert {rows[g]["state"] for g in groups} == {"empty"} and {rows[g]["members"] for g in groups} == {0}
    assert len({rows[g]["coordinator"] for g in groups}) > 1, rows  # merged from more than one SPU
    text = ok(cluster, "consumer", "list").splitlines()
    assert text[0].split() == ["GROUP", "STATE", "MEMBERS", "COORDINATOR"]
    assert any(line.split()[:3] == ["list-0", "empty", "0"] for line in text[1:]), text


def test_describe_shows_committed_log_end_and_lag_per_partition_and_the_members(cluster: DataPlaneCluster) -> None:
    topic_with(cluster, "described", [10, 20, 0])
    commit_empty(cluster, "billing", "described", {0: 4})
    member = Member(cluster, "billing", ["described"])
    try:
        d = json.loads(ok(cluster, "consumer", "describe", "billing", "--json"))
        assert (d["group"], d["total_lag"], d["lag_unknown"]) == ("billing", 6 + 20 + 0, 0)
        assert [(p["partition"], p["committed"], p["log_end"], p["lag"], p["member_id"]) for p in d["partitions"]] == [
            (0, 4, 10, 6, member.member_id), (1, None, 20, 20, member.member_id), (2, None, 0, 0, member.member_id)]
        assert [m["member_id"] for m in d["members"]] == [member.member_id]
        text = ok(cluster, "consumer", "describe", "billing").splitlines()
        assert text[0].startswith("group billing: ") and text[0].endswith(", 1 member(s), total lag 26")
        assert text[2].split() == ["TOPIC", "PARTITION", "COMMITTED", "LOG-END", "LAG", "MEMBER", "CLIENT"]
        assert text[3].split()[:5] == ["described", "0", "4", "10", "6"]
        assert text[4].split()[:5] == ["described", "1", "-", "20", "20"]
        assert any(line.startswith("MEMBER ") for line in text), text
    finally:
        member.leave()


def test_describe_an_unknown_group(cluster: DataPlaneCluster) -> None:
    line = fails(cluster, "consumer", "describe", "nosuchgroup")
    assert line.startswith("kolk consumer describe: group nosuchgroup does not exist"), line


def test_delete_an_unknown_group(cluster: DataPlaneCluster) -> None:
    line = fails(cluster, "consumer", "delete", "nosuchgroup")
    assert line.startswith("kolk consumer delete: group nosuchgroup does not exist"), line


@pytest.mark.parametrize("action", ["describe", "delete", "reset"])
def test_an_empty_group_name(cluster: DataPlaneCluster, action: str) -> None:
    extra = ["--topic", "t", "--to-earliest"] if action == "reset" else []
    assert fails(cluster, "consumer", action, "", *extra) == (
        f"kolk consumer {action}: the group name is empty: use 1-255 of A-Z a-z 0-9 . _ -")


@pytest.mark.parametrize("action", ["describe", "delete", "reset"])
def test_a_10_kb_group_name(cluster: DataPlaneCluster, action: str) -> None:
    extra = ["--topic", "t", "--to-earliest"] if action == "reset" else []
    assert fails(cluster, "consumer", action, "g" * 10240, *extra) == (
        f"kolk consumer {action}: the group name has 10240 characters, more than 255: use 1-255 of A-Z a-z 0-9 . _ -")


def test_a_group_name_with_a_bad_character(cluster: DataPlaneCluster) -> None:
    assert fails(cluster, "consumer", "describe", "a/b") == (
        "kolk consumer describe: group name 'a/b' is invalid: use 1-255 of A-Z a-z 0-9 . _ - (and not '.' or '..')")


# ---------------------------------------------------------------- reset


def test_reset_to_earliest_latest_and_offset(cluster: DataPlaneCluster) -> None:
    topic_with(cluster, "resets", [5, 8])
    out = ok(cluster, "consumer", "reset", "r1", "--topic", "resets", "--to-latest").splitlines()
    assert out[0].split() == ["TOPIC", "PARTITION", "CURRENT", "NEW", "LOG-START", "LOG-END"]
    assert out[-1] == "group r1: offsets of resets reset --to-latest (2 partition(s))"
    assert committed(cluster, "r1") == {("resets", 0): 5, ("resets", 1): 8}
    ok(cluster, "consumer", "reset", "r1", "--topic", "resets", "--partition", "1", "--to-offset", "3")
    assert committed(cluster, "r1") == {("resets", 0): 5, ("resets", 1): 3}
    plan = json.loads(ok(cluster, "consumer", "reset", "r1", "--topic", "resets", "--to-earliest", "--json"))
    assert [(p["partition"], p["current"], p["new"]) for p in plan["partitions"]] == [(0, 5, 0), (1, 3, 0)]
    assert plan["applied"] is True and committed(cluster, "r1") == {("resets", 0): 0, ("resets", 1): 0}


def test_reset_to_a_timestamp(cluster: DataPlaneCluster) -> None:
    topic_with(cluster, "stamped", [4])
    ok(cluster, "consumer", "reset", "ts", "--topic", "stamped", "--to-timestamp", "0")
    assert committed(cluster, "ts") == {("stamped", 0): 0}
    ok(cluster, "consumer", "reset", "ts", "--topic", "stamped", "--to-timestamp", str(2**62))
    assert committed(cluster, "ts") == {("stamped", 0): 4}  # no record that recent: the end


def test_reset_past_the_end_is_refused(cluster: DataPlaneCluster) -> None:
    topic_with(cluster, "short", [5])
    assert fails(cluster, "consumer", "reset", "r2", "--topic", "short", "--to-offset", "6") == (
        "kolk consumer reset: reset --to-offset 6: offset 6 is past the end of short-0 (records 0-4 are available; "
        "the next record written gets offset 5)")
    assert committed(cluster, "r2") == {}


def test_reset_below_the_log_start_is_refused_and_shift_clamps_to_it(cluster: DataPlaneCluster) -> None:
    config = {**SMALL_SEGMENTS, "retention_bytes": "8192"}
    topic_with(cluster, "retained", [300], config, pad=100, per_batch=1)

    async def moved() -> int:
        async with cluster.client() as client:
            return await wait_until(lambda: _start_above_0(client), 30, "retention to move the log start of retained-0")
    run_async(moved)
    line = fails(cluster, "consumer", "reset", "r3", "--topic", "retained", "--to-offset", "0")
    # Retention may still be moving the log start: the line names where it was when asked.
    m = re.fullmatch(r"kolk consumer reset: reset --to-offset 0: offset 0 of retained-0 is below the log start "
                     r"(\d+) \(records (\d+)-299 are available; older ones were deleted by retention\)", line)
    assert m and int(m[1]) == int(m[2]) > 0, line
    assert committed(cluster, "r3") == {}
    # --shift clamps into the range, and says so.
    commit_empty(cluster, "r3", "retained", {0: 299})
    plan = json.loads(ok(cluster, "consumer", "reset", "r3", "--topic", "retained", "--shift", "-1000", "--json"))
    row = plan["partitions"][0]
    assert row["new"] == row["log_start"] >= int(m[1])
    assert row["note"] == f"clamped: 299-1000 = -701 is outside {row['log_start']}-300"
    assert committed(cluster, "r3") == {("retained", 0): row["new"]}


async def _start_above_0(client: AsyncClient) -> int:
    start, _hw, _leo = await client.offsets("retained", 0)
    return start


def test_shift_clamps_at_the_end_and_the_plan_says_so(cluster: DataPlaneCluster) -> None:
    topic_with(cluster, "shifted", [10])
    commit_empty(cluster, "r4", "shifted", {0: 7})
    out = ok(cluster, "consumer", "reset", "r4", "--topic", "shifted", "--shift", "5").splitlines()
    assert out[1].split()[:6] == ["shifted", "0", "7", "10", "0", "10"]
    assert out[1].endswith("clamped: 7+5 = 12 is outside 0-10")
    assert committed(cluster, "r4") == {("shifted", 0): 10}
    ok(cluster, "consumer", "reset", "r4", "--topic", "shifted", "--shift", "-3")
    assert committed(cluster, "r4") == {("shifted", 0): 7}


def test_shift_without_a_commit_is_refused(cluster: DataPlaneCluster) -> None:
    topic_with(cluster, "unshifted", [3])
    assert fails(cluster, "consumer", "reset", "r5", "--topic", "unshifted", "--shift", "1") == (
        "kolk consumer reset: partition unshifted-0 has no committed offset to shift from; reset it with "
        "--to-earliest, --to-latest or --to-offset first")


def test_dry_run_changes_nothing(cluster: DataPlaneCluster) -> None:
    topic_with(cluster, "dry", [6])
    commit_empty(cluster, "r6", "dry", {0: 2})
    out = ok(cluster, "consumer", "reset", "r6", "--topic", "dry", "--to-latest", "--dry-run").splitlines()
    assert out[1].split()[:4] == ["dry", "0", "2", "6"]
    assert out[-1] == "dry run (--to-latest): nothing changed"
    assert committed(cluster, "r6") == {("dry", 0): 2}


def test_reset_while_members_are_active_is_refused_and_a_dry_run_says_it_would_be(cluster: DataPlaneCluster) -> None:
    topic_with(cluster, "busy", [4])
    commit_empty(cluster, "r7", "busy", {0: 1})
    member = Member(cluster, "r7", ["busy"])
    try:
        assert fails(cluster, "consumer", "reset", "r7", "--topic", "busy", "--to-latest") == (
            "kolk consumer reset: group r7 has 1 active member(s): its offsets can be reset only while it has none "
            "(stop its consumers first)")
        out = ok(cluster, "consumer", "reset", "r7", "--topic", "busy", "--to-latest", "--dry-run").splitlines()
        assert out[-1] == ("dry run (--to-latest): nothing changed; group r7 has 1 active member(s), so the reset "
                           "itself would be refused until they stop")
        assert committed(cluster, "r7") == {("busy", 0): 1}

        # A reset that passed the check before a consumer joined is refused by the coordinator.
        async def raced() -> None:
            async with cluster.client() as client:
                with pytest.raises(InUseError) as e:
                    await group_call(client, "r7", "offsetCommit", {
                        "group": "r7", "memberId": "", "memberEpoch": 0,
                        "offsets": [{"topic": "busy", "partition": 0, "offset": 4, "metadata": "reset"}]})
                assert "group r7 has 1 active member(s)" in str(e.value)
        run_async(raced)
    finally:
        member.leave()
    ok(cluster, "consumer", "reset", "r7", "--topic", "busy", "--to-latest")
    assert committed(cluster, "r7") == {("busy", 0): 4}


def test_negative_to_offset_is_a_usage_error(cluster: DataPlaneCluster) -> None:
    line = fails(cluster, "consumer", "reset", "r8", "--topic", "busy", "--to-offset", "-1", status=2)
    assert line == ("kolk consumer reset: argument --to-offset: -1 is out of range: 0 to 9223372036854775807 "
                    "(see kolk consumer reset --help)")


def test_reset_needs_exactly_one_target(cluster: DataPlaneCluster) -> None:
    line = fails(cluster, "consumer", "reset", "r8", "--topic", "busy", "--to-latest", "--to-earliest", status=2)
    assert line.startswith("kolk consumer reset: argument --to-earliest: not allowed with argument --to-latest")


def test_reset_of_an_unknown_topic_or_partition(cluster: DataPlaneCluster) -> None:
    assert fails(cluster, "consumer", "reset", "r9", "--topic", "nosuchtopic", "--to-latest") == (
        "kolk consumer reset: topic nosuchtopic does not exist")
    topic_with(cluster, "narrow", [1, 1, 1])
    assert fails(cluster, "consumer", "reset", "r9", "--topic", "narrow", "--partition", "7", "--to-latest") == (
        "kolk consumer reset: topic narrow has partitions 0-2, not 7")


# ---------------------------------------------------------------- delete


def test_delete_is_refused_while_members_are_active_then_deletes_the_offsets(cluster: DataPlaneCluster) -> None:
    topic_with(cluster, "doomed", [2])
    commit_empty(cluster, "d1", "doomed", {0: 1})
    member = Member(cluster, "d1", ["doomed"])
    try:
        assert fails(cluster, "consumer", "delete", "d1") == (
            "kolk consumer delete: group d1 has 1 active member(s): it can be deleted only while it has none (stop "
            "its consumers first)")
    finally:
        member.leave()
    assert ok(cluster, "consumer", "delete", "d1").strip() == "group d1 deleted, with its committed offsets"
    assert committed(cluster, "d1") == {}
    assert fails(cluster, "consumer", "describe", "d1").startswith("kolk consumer describe: group d1 does not exist")


# ---------------------------------------------------------------- the client API


def test_the_same_operations_through_the_client(cluster: DataPlaneCluster) -> None:
    topic_with(cluster, "api", [3, 0])
    with Client(cluster.sc_addresses, timeout_s=20) as client:
        plan = client.group_reset("api-g", "api", ResetTarget("offset", 1), partition=0)
        assert plan.applied and [(r.partition, r.new) for r in plan.rows] == [(0, 1)]
        assert "api-g" in [g["group"] for g in client.group_list()]
        d = client.group_describe("api-g")
        assert (d.state, d.total_lag, [(p.partition, p.committed, p.lag) for p in d.partitions]) == (
            "empty", 2, [(0, 1, 2), (1, None, 0)])
        dry = client.group_reset("api-g", "api", ResetTarget("latest"), dry_run=True)
        assert not dry.applied and client.group_describe("api-g").total_lag == 2
        with pytest.raises(OffsetOutOfRangeError):
            client.group_reset("api-g", "api", ResetTarget("offset", 4), partition=0)
        with pytest.raises(InvalidRequestError):
            client.group_describe("")
        client.group_delete("api-g")
        with pytest.raises(NotFoundError):
            client.group_describe("api-g")


def _records(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line]


def _describe(c: DataPlaneCluster, group: str) -> dict[str, Any]:
    return json.loads(ok(c, "consumer", "describe", group, "--json"))


# ---------------------------------------------------------------- kolk consume --group


def produce_more(c: DataPlaneCluster, topic: str, partition: int, values: list[bytes]) -> None:
    from kolk.segments import build_batch

    async def body() -> None:
        async with c.client() as client:
            await client.produce(topic, partition, build_batch([(None, v) for v in values]))
            await wait_committed(client, topic)
    run_async(body)


def test_consume_with_a_group_commits_on_exit_and_a_rerun_resumes_after_it(cluster: DataPlaneCluster) -> None:
    topic_with(cluster, "resumed", [4, 6])
    first = _records(ok(cluster, "consume", "resumed", "--group", "cg1", "-B", "-d"))
    assert sorted(first) == sorted([f"resumed-0-{i} " for i in range(4)] + [f"resumed-1-{i} " for i in range(6)])
    d = _describe(cluster, "cg1")
    assert [(p["partition"], p["committed"], p["lag"]) for p in d["partitions"]] == [(0, 4, 0), (1, 6, 0)]
    assert d["members"] == [] and d["state"] == "empty"  # it left on exit
    assert _records(ok(cluster, "consume", "resumed", "--group", "cg1", "-B", "-d")) == []
    produce_more(cluster, "resumed", 1, [b"late-1", b"late-2"])
    assert _records(ok(cluster, "consume", "resumed", "--group", "cg1", "-B", "-d")) == ["late-1", "late-2"]


def test_consume_with_a_group_and_max_commits_exactly_the_records_printed(cluster: DataPlaneCluster) -> None:
    topic_with(cluster, "counted", [10])
    first = _records(ok(cluster, "consume", "counted", "--group", "cg2", "-B", "--max", "3"))
    assert first == [f"counted-0-{i} " for i in range(3)]
    assert [(p["committed"], p["lag"]) for p in _describe(cluster, "cg2")["partitions"]] == [(3, 7)]
    rest = _records(ok(cluster, "consume", "counted", "--group", "cg2", "-B", "-d"))
    assert rest == [f"counted-0-{i} " for i in range(3, 10)]


def test_consume_with_a_group_starts_at_the_end_without_b(cluster: DataPlaneCluster) -> None:
    topic_with(cluster, "ended", [5])
    assert _records(ok(cluster, "consume", "ended", "--group", "cg3", "-d")) == []
    # The start at the end was committed (as Kafka commits it): records written after that first
    # run are read by the next, not skipped by a second start at the end.
    assert [(p["committed"], p["lag"]) for p in _describe(cluster, "cg3")["partitions"]] == [(5, 0)]

    async def more() -> None:
        from kolk.segments import build_batch
        async with cluster.client() as client:
            await client.produce("ended", 0, build_batch([(None, b"ended-0-5 "), (None, b"ended-0-6 ")]))
    run_async(more)
    assert _records(ok(cluster, "consume", "ended", "--group", "cg3", "-d")) == ["ended-0-5 ", "ended-0-6 "]


@pytest.mark.parametrize("flag, value", [("--partition", "0"), ("--offset", "2"), ("--tail", "1"),
                                         ("--from-timestamp", "0")])
def test_consume_with_a_group_refuses_a_start_or_partition(cluster: DataPlaneCluster, flag: str, value: str) -> None:
    assert fails(cluster, "consume", "resumed", "--group", "cg4", flag, value) == (
        f"kolk consume: --group cannot be combined with {flag}: the group assigns the partitions and its committed "
        "offsets say where each starts (move them with `kolk consumer reset`)")


def test_consume_with_an_empty_group_name(cluster: DataPlaneCluster) -> None:
    line = fails(cluster, "consume", "resumed", "--group", "", "-d")
    assert line == "kolk consume: the group name is empty: use 1-255 of A-Z a-z 0-9 . _ -", line


@pytest.mark.parametrize("sig, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_consume_with_a_group_commits_what_it_printed_on_ctrl_c_or_sigterm(cluster: DataPlaneCluster, sig: int,
                                                                          status: int) -> None:
    topic, group = f"interrupted-{sig}", f"cg5-{sig}"
    topic_with(cluster, topic, [7])
    # -X faulthandler: a run that does not exit is aborted below and prints every thread's stack.
    proc = subprocess.Popen([sys.executable, "-X", "faulthandler", "-m", "kolk", "consume", topic, "--group", group,
                             "-B", "--sc", ",".join(cluster.sc_addresses)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    lines: list[str] = []
    errors: list[str] = []  # stderr is drained too: a full pipe would block the consumer's writes
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or []), daemon=True)
    err_reader = threading.Thread(target=lambda: errors.extend(proc.stderr or []), daemon=True)
    try:
        reader.start()
        err_reader.start()
        # Printed lines arrive only as the reader thread reads them; wait for all 7, then interrupt.
        wait_for(lambda: _printed(proc, lines) >= 7, 30, lambda: f"7 records printed, got {lines}")
        proc.send_signal(sig)
        try:
            exited = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)  # faulthandler writes the stacks to stderr
            proc.wait(timeout=30)
            err_reader.join(timeout=10)
            raise AssertionError(f"kolk consume did not exit within 30 s of signal {sig}; its stderr:\n"
                                 + "".join(errors)) from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    reader.join(timeout=10)
    assert exited == status and [line.strip() for line in lines] == [f"{topic}-0-{i}" for i in range(7)]
    d = _describe(cluster, group)
    assert ([(p["committed"], p["lag"]) for p in d["partitions"]], d["members"]) == ([(7, 0)], [])


def _printed(proc: subprocess.Popen, lines: list[str]) -> int:
    assert proc.poll() is None, f"kolk consume exited with {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}"
    return len(lines)
