"""``kolk partition list`` shows every replica's own log (issue 19, item 3): log start, log end,
bytes on disk and segments per replica, and with --json the cleaner's cleaned_offset.

The client asks every live SPU holding a replica at once, each within a deadline: an SPU that
does not answer leaves its replicas unknown, named in their note, and never hangs the
command. The row assembly is pure and tested first (with the answers of a current SPU and of
an older one that reports only the partitions it leads); then real processes: one SC, three
SPUs, replication factor 3.
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

from dataplane_cluster import DataPlaneCluster, run_async, wait_committed, wait_until  # noqa: E402
from lifecycle_cluster import FAST_LIFECYCLE, bytes_on_disk, kolk, segment_files  # noqa: E402
from kolk.client.partition_status import (  # noqa: E402
    PARTITION_STATUS_TIMEOUT_S,
    human_bytes,
    partition_row,
)
from kolk.metadata.specs import PartitionSpec, PartitionStatus  # noqa: E402

CLI_TIMEOUT_S = 60


# -------------------------------------------------------------------- the row (pure)

SPEC = PartitionSpec.from_dict({"topic": "t", "partition": 0, "replicas": [1, 2, 3]})
STATUS = PartitionStatus.from_dict({"leader": 1, "epoch": 4, "isr": [1, 2, 3]})


def entry(spu: int, role: str, start: int, end: int, **kw: Any) -> dict[str, Any]:
    d = {"partition": "t-0", "spu": spu, "role": role, "leader": 1, "epoch": 4, "isr": [1, 2, 3],
         "high_watermark": end, "log_start_offset": start, "log_end_offset": end, "size_bytes": 100 * spu,
         "segments": 2, "cleaned_offset": 0, "fenced": False, "failure": None, "followers": {}}
    d.update(kw)
    return d


def test_every_replica_reports_its_own_log() -> None:
    followers = {"2": {"leo": 50, "lag": 0}, "3": {"leo": 48, "lag": 2}}
    reports = {1: {"t-0": entry(1, "leader", 10, 50, followers=followers)},
               2: {"t-0": entry(2, "follower", 10, 50)}, 3: {"t-0": entry(3, "follower", 0, 48)}}
    row = partition_row(SPEC, STATUS, reports, {1, 2, 3})
    assert (row["high_watermark"], row["log_start_offset"], row["log_end_offset"], row["lag"], row["error"]) == \
        (50, 10, 50, 2, None)
    logs = row["replica_logs"]
    assert [(g["spu"], g["role"], g["log_start_offset"], g["log_end_offset"], g["size_bytes"], g["error"])
            for g in logs] == [(1, "leader", 10, 50, 100, None), (2, "follower", 10, 50, 200, None),
                               (3, "follower", 0, 48, 300, None)]
    assert all(g["cleaned_offset"] == 0 and g["segments"] == 2 and g["in_sync"] for g in logs)


def test_an_spu_that_did_not_answer_leaves_its_replica_unknown() -> None:
    reports = {1: {"t-0": entry(1, "leader", 0, 5)}, 2: "SPU 2 did not answer within 5 s", 3: {}}
    row = partition_row(SPEC, STATUS, reports, {1, 2, 3})
    two, three = row["replica_logs"][1:]
    assert two["error"] == "SPU 2 did not answer within 5 s" and two["log_end_offset"] is None
    assert three["error"] == "SPU 3 did not report this replica" and three["size_bytes"] is None
    assert row["error"] is None and row["log_end_offset"] == 5


def test_a_down_spu_is_not_asked_and_says_so() -> None:
    row = partition_row(SPEC, STATUS, {1: {"t-0": entry(1, "leader", 0, 5)}}, {1, 2})
    assert row["replica_logs"][2]["error"] == "SPU 3 is down" and row["replica_logs"][2]["role"] is None


def test_an_unreachable_leader_leaves_the_partition_numbers_unknown() -> None:
    row = partition_row(SPEC, STATUS, {1: "SPU 1: connection refused", 2: {"t-0": entry(2, "follower", 0, 5)}},
                        {1, 2, 3})
    assert row["error"] == "SPU 1: connection refused"
    assert row["high_watermark"] is row["log_end_offset"] is row["lag"] is None
    assert row["replica_logs"][1]["log_end_offset"] == 5


def test_a_leader_that_reports_itself_follower_is_not_taken_as_leader() -> None:
    row = partition_row(SPEC, STATUS, {1: {"t-0": entry(1, "follower", 0, 5)}}, {1, 2, 3})
    assert row["log_end_offset"] is None and "did not report it as leader" in row["error"]
    assert row["replica_logs"][0]["role"] == "follower"


def test_an_older_spu_answer_without_role_or_sizes_is_read_as_unknown() -> None:
    """Before issue 19 an SPU answered only for the partitions it led, without role, size,
    segments or cleaned offset."""
    old = {"partition": "t-0", "leader": 1, "epoch": 4, "isr": [1, 2, 3], "high_watermark": 7,
           "log_end_offset": 7, "log_start_offset": 0, "fenced": False, "failure": None,
           "followers": {"2": {"leo": 7, "lag": 0}, "3": {"leo": None, "lag": None}}}
    row = partition_row(SPEC, STATUS, {1: {"t-0": old}, 2: {}, 3: {}}, {1, 2, 3})
    assert row["log_end_offset"] == 7 and row["lag"] is None and row["error"] is None
    leader = row["replica_logs"][0]
    assert leader["role"] == "leader" and leader["size_bytes"] is None and leader["cleaned_offset"] is None
    assert row["replica_logs"][1]["error"] == "SPU 2 did not report this replica"


def test_a_replica_whose_disk_failed_says_why() -> None:
    reports = {1: {"t-0": entry(1, "leader", 0, 5)},
               2: {"t-0": entry(2, "none", 0, None, size_bytes=None, failure="EIO on fsync", fenced=True)}}
    row = partition_row(SPEC, STATUS, reports, {1, 2, 3})
    assert row["replica_logs"][1]["error"] == "disk failed: EIO on fsync"


def test_an_offline_partition_says_why() -> None:
    status = PartitionStatus.from_dict({"leader": None, "epoch": 4, "isr": [3]})
    row = partition_row(SPEC, status, {1: {"t-0": entry(1, "none", 0, 5)}}, {1})
    assert row["error"] == "offline: its in-sync replicas [3] are not alive" and row["log_end_offset"] is None
    assert row["replica_logs"][0]["log_end_offset"] == 5


@pytest.mark.parametrize("n, text", [(None, None), (0, "0"), (1023, "1023"), (1024, "1.0KiB"),
                                     (1536 << 10, "1.5MiB"), (3 << 30, "3.0GiB"), (5 << 50, "5120.0TiB")])
def test_bytes_for_a_person_are_one_word(n: int | None, text: str | None) -> None:
    assert human_bytes(n) == text


# -------------------------------------------------------------------- real processes

@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    # A long heartbeat timeout: a frozen SPU stays "alive" to the SC, so the client must ask
    # it and give up at its deadline.
    c = DataPlaneCluster(str(tmp_path_factory.mktemp("partition-list")), spus=3, heartbeat_timeout_ms=60_000,
                         spu_args=FAST_LIFECYCLE)
    try:
        c.start()
        yield c
    finally:
        c.close()


async def filled(c: DataPlaneCluster, topic: str, records: int) -> Any:
    client = c.client()
    await client.create_topic(topic, 1, 3, {"segment_bytes": "4096", "max_message_bytes": "4096"})
    producer = client.producer(topic, acks="all", batch_bytes=2048, linger_ms=1)
    for i in range(records):
        await producer.send(b"record-%d" % i + b"." * 100)
    await producer.close()
    await wait_committed(client, topic)

    async def all_caught_up() -> bool:
        rows = await client.partition_list(topic)
        return all(g["log_end_offset"] == records for g in rows[0]["replica_logs"])
    await wait_until(all_caught_up, 30, f"every replica of {topic}-0 to report {records} records")
    return client


def test_partition_list_shows_every_replica_log(cluster: DataPlaneCluster) -> None:
    """Three replicas, each with its role, log start, log end, bytes (the size of its segment
    files) and segments; text and --json agree."""
    async def fill() -> None:
        client = await filled(cluster, "listed", 300)
        await client.close()
    run_async(fill)
    r = kolk(cluster, "partition", "list", "--topic", "listed", "--json")
    assert r.returncode == 0, r.stderr
    (row,) = json.loads(r.stdout)
    logs = row["replica_logs"]
    assert sorted(g["spu"] for g in logs) == [1, 2, 3] and row["log_end_offset"] == 300
    assert sorted(g["role"] for g in logs) == ["follower", "follower", "leader"]
    for g in logs:
        assert g["error"] is None and g["log_start_offset"] == 0 and g["log_end_offset"] == 300, g
        assert g["size_bytes"] == bytes_on_disk(cluster, g["spu"], "listed-0") > 0, g
        assert g["segments"] == len(segment_files(cluster, g["spu"], "listed-0")) > 1, g
        assert "cleaned_offset" in g and g["in_sync"]

    text = kolk(cluster, "partition", "list", "--topic", "listed")
    assert text.returncode == 0, text.stderr
    partitions, replicas = text.stdout.split("\n\n")
    assert partitions.splitlines()[1].split()[:8] == ["listed-0", str(row["leader"]), "1,2,3",
                                                      ",".join(map(str, row["isr"])), str(row["epoch"]),
                                                      "300", "300", "0"]
    header, *lines = replicas.splitlines()
    assert header.split() == ["PARTITION", "SPU", "ROLE", "IN-SYNC", "LOG-START", "LOG-END", "BYTES", "SEGMENTS",
                              "NOTE"]
    by_spu = {int(line.split()[1]): line.split() for line in lines}
    for g in logs:
        assert by_spu[g["spu"]] == ["listed-0", str(g["spu"]), g["role"], "yes", "0", "300",
                                    human_bytes(g["size_bytes"]), str(g["segments"]), "-"]
    missing = kolk(cluster, "partition", "list", "--topic", "nosuch")
    assert missing.returncode == 1 and missing.stderr.strip() == "kolk partition list: topic nosuch does not exist"


def test_partition_list_does_not_wait_for_a_frozen_spu(cluster: DataPlaneCluster) -> None:
    """A stopped (SIGSTOP) SPU that the SC still counts alive is asked, and given up on at the
    deadline: its replica is unknown with the reason; the others are shown, by the client and
    by the CLI."""
    async def body() -> tuple[int, dict[str, Any], float, subprocess.CompletedProcess]:
        client = await filled(cluster, "frozen", 50)
        leader = (await client.partition_list("frozen"))[0]["leader"]
        victim = next(s for s in (1, 2, 3) if s != leader)
        os.kill(cluster.spus[victim].pid, signal.SIGSTOP)
        try:
            client.drop_connection(cluster.spus[victim].address)  # a fresh connect, to the frozen process
            t0 = time.monotonic()
            row = (await client.partition_list("frozen"))[0]
            took = time.monotonic() - t0
            r = await asyncio.to_thread(kolk, cluster, "partition", "list", "--topic", "frozen")
        finally:
            os.kill(cluster.spus[victim].pid, signal.SIGCONT)
            await client.close()
        return victim, row, took, r
    victim, row, took, r = run_async(body)
    assert took < PARTITION_STATUS_TIMEOUT_S + 3, took
    frozen = next(g for g in row["replica_logs"] if g["spu"] == victim)
    assert frozen["error"] == f"SPU {victim} did not answer within {PARTITION_STATUS_TIMEOUT_S:g} s", frozen
    assert frozen["log_end_offset"] is None and frozen["size_bytes"] is None
    assert row["error"] is None and row["log_end_offset"] == 50
    assert all(g["log_end_offset"] == 50 for g in row["replica_logs"] if g["spu"] != victim)
    assert r.returncode == 0, r.stderr
    line = next(x for x in r.stdout.split("\n\n")[1].splitlines() if x.split()[1] == str(victim))
    # Its IN-SYNC column is the SC's: frozen past --replica-lag-max-ms it may have left the set.
    cells = line.split()
    assert cells[2] == "-" and cells[4:9] == ["-", "-", "-", "-", "SPU"] and "did not answer within" in line, line
