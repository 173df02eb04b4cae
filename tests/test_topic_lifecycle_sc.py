"""Topic config, alter, add-partitions and erasure through a real SC and 3 real SPUs over mutual
TLS (issue 19 items 1, 2 and 6, SC and client side): the SC's apply refuses bad configs in one
line and stores nothing, the leader's --topic-default flags become the cluster defaults,
alter is compare-and-set, add-partitions grows and never shrinks, and an erasure is pending
until every replica's SPU (here: this test, acting as a node with the node certificate)
reports it done, with the request and the completion in ``_audit`` and never the key.

The CLI's bad inputs are each their own case, one line on stderr.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import pathlib
import subprocess
import sys
from typing import Any

import pytest

from dataplane_cluster import DataPlaneCluster, read_all, run_async, wait_until
from jepsen.cluster import SECRET
from kolk.client.admin import AdminClient
from kolk.protocol.errors import InvalidRequestError, NotFoundError, VersionConflictError

ROOT = pathlib.Path(__file__).resolve().parent.parent
KEY = b"subject-4711@example.org"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: Any) -> Any:
    c = DataPlaneCluster(str(tmp_path_factory.mktemp("lifecycle")), spus=3, tls=True, clients=("admin",),
                         sc_args=("--topic-default", "segment_ms=3600000", "--topic-default", "retention_ms=-1"))
    try:
        c.start()

        async def ready() -> None:
            admin = _admin(c)
            try:
                await wait_until(lambda: admin.get_object("config", "topic-defaults"), 30,
                                 "the SC leader to set the topic defaults from its flags")
            finally:
                await admin.close()
        run_async(ready)
        yield c
    finally:
        c.close()


def _admin(c: DataPlaneCluster, as_: str = "admin") -> AdminClient:
    return AdminClient(c.sc_addresses, timeout_s=20, tls=c.tls_for(as_))


async def _raw_async(c: DataPlaneCluster, call: str, **fields: Any) -> tuple[str, str, Any]:
    """(code or "ok", message, response) of one SC call sent as is (no client-side check)."""
    admin = _admin(c)
    try:
        conn = await admin._connect(20)
        r = await conn.call(call, 20, **fields)
        return ("ok", "", r) if r.result.ok else (r.result.error.code, r.result.error.message, r)
    finally:
        await admin.close()


def _raw(c: DataPlaneCluster, call: str, **fields: Any) -> tuple[str, str, Any]:
    return run_async(lambda: _raw_async(c, call, **fields))


def _create(c: DataPlaneCluster, name: str, config: dict[str, str], partitions: int = 1, rf: int = 3) -> tuple:
    return _raw(c, "createTopic", name=name, partitions=partitions, replicationFactor=rf,
                config=[{"key": k, "value": v} for k, v in config.items()])[:2]


# ---------------------------------------------------------------- config through the SC


SC_REFUSALS = {
    "unknown key": ({"retention.ms": "60000"}, "topic t1: unknown config key retention.ms (did you mean "
                                               "retention_ms?); known keys: cleanup_policy, compression, "
                                               "delete_retention_ms, max_message_bytes, min_compaction_lag_ms, "
                                               "min_in_sync, retention_bytes, retention_ms, segment_bytes, segment_ms"),
    "wrong type": ({"retention_ms": "1e3"}, "topic t1: config retention_ms=1e3 is not allowed: a whole number, -1 "
                                            "(keep forever) or 1-3153600000000 ms"),
    "negative": ({"retention_ms": "-5"}, "topic t1: config retention_ms=-5 is not allowed: -1 (keep forever) or "
                                         "1-3153600000000 ms"),
    "absurd": ({"segment_bytes": "9" * 30}, f"topic t1: config segment_bytes={'9' * 30} is not allowed: "
                                            "1024-1099511627776 bytes"),
    "segment below the batch limit": ({"segment_bytes": "65536"}, "topic t1: config segment_bytes=65536 is not "
                                                                  "allowed: segment_bytes below the batch limit "
                                                                  "max_message_bytes=4194304 (default)"),
    "min_in_sync above rf": ({"min_in_sync": "4"}, "topic t1: config min_in_sync=4 is not allowed: 1-3 replicas (the "
                                                   "replication factor is 3)"),
}


@pytest.mark.parametrize("case", list(SC_REFUSALS))
def test_the_sc_refuses_a_bad_config_in_one_line_and_stores_nothing(case: str, cluster: DataPlaneCluster) -> None:
    config, message = SC_REFUSALS[case]
    assert _create(cluster, "t1", config) == ("invalidArgument", message)

    async def gone() -> None:
        admin = _admin(cluster)
        try:
            assert await admin.get_object("topic", "t1") is None
        finally:
            await admin.close()
    run_async(gone)


def test_the_leaders_flags_are_the_defaults_and_clients_cannot_change_them(cluster: DataPlaneCluster) -> None:
    async def body() -> None:
        admin = _admin(cluster)
        try:
            defaults = await admin.get_object("config", "topic-defaults")
            assert defaults["spec"] == {"segment_ms": "3600000", "retention_ms": "-1"}
            with pytest.raises(InvalidRequestError, match="config objects are set by the SC leader from its "
                                                          "--topic-default"):
                await admin.put_object("config", "topic-defaults", {"retention_ms": "5"})
            with pytest.raises(InvalidRequestError, match="config objects are set by the SC leader"):
                await admin.delete_object("config", "topic-defaults")
        finally:
            await admin.close()
    run_async(body)


# ---------------------------------------------------------------- alter and add-partitions


def test_alter_is_compare_and_set_and_checked(cluster: DataPlaneCluster) -> None:
    async def body() -> None:
        admin = _admin(cluster)
        try:
            t = await admin.create_topic("alt", 1, 3, {"retention_ms": "60000"})
            changed = await admin.alter_topic("alt", {"cleanup_policy": "compact"}, ["retention_ms"],
                                              expected_version=t["version"])
            assert changed["spec"]["config"] == {"cleanup_policy": "compact"}
            assert changed["version"] > t["version"]
            with pytest.raises(VersionConflictError, match=f"topic alt is at version {changed['version']}; the "
                                                           f"update expected version {t['version']}"):
                await admin.alter_topic("alt", {"retention_ms": "1000"}, expected_version=t["version"])
            code, message, _ = await _raw_async(cluster, "alterTopic", name="alt",
                                                set=[{"key": "min_in_sync", "value": "5"}],
                                    delete=[], hasExpected=False, expectedVersion=0)
            assert (code, message) == ("invalidArgument", "topic alt: config min_in_sync=5 is not allowed: 1-3 "
                                                          "replicas (the replication factor is 3)")
            code, message, _ = await _raw_async(cluster, "alterTopic", name="alt",
                                                set=[{"key": "retention_ms", "value": "1"},
                                                     {"key": "retention_ms", "value": "2"}],
                                    delete=[], hasExpected=False, expectedVersion=0)
            assert (code, message) == ("invalidArgument", "topic alt: config key 'retention_ms' is given twice")
            await admin.delete_topic("alt")
            with pytest.raises(NotFoundError, match="^topic alt does not exist$"):
                await admin.alter_topic("alt", {"retention_ms": "1000"})
        finally:
            await admin.close()
    run_async(body)


def test_add_partitions_grows_places_and_never_shrinks(cluster: DataPlaneCluster) -> None:
    async def body() -> None:
        admin = _admin(cluster)
        try:
            await admin.create_topic("grow", 2, 2)
            t = await admin.add_partitions("grow", 6)
            assert t["spec"]["partitions"] == 6
            parts = await admin.describe_topic("grow")
            replicas = [p["spec"]["replicas"] for p in parts["partitions"]]
            assert len(replicas) == 6 and all(len(set(r)) == 2 for r in replicas)
            incarnations = [p["spec"]["incarnation"] for p in parts["partitions"]]
            assert incarnations[0] == incarnations[1] < incarnations[2] == incarnations[5]
            with pytest.raises(InvalidRequestError, match="^topic grow has 6 partitions; add-partitions can only "
                                                          "grow it, got 3$"):
                await admin.add_partitions("grow", 3)
            with pytest.raises(NotFoundError, match="topic nothere does not exist"):
                await admin.add_partitions("nothere", 3)
        finally:
            await admin.close()
    run_async(body)


# ---------------------------------------------------------------- erasure


def test_erase_on_a_delete_topic_is_refused_by_client_and_sc(cluster: DataPlaneCluster) -> None:
    message = "topic plain: erase needs cleanup_policy compact or compact,delete; it has delete"

    async def body() -> None:
        admin = _admin(cluster)
        try:
            await admin.create_topic("plain", 1, 3)
            with pytest.raises(InvalidRequestError, match=f"^{message}$"):
                await admin.erase_key("plain", KEY, wait=False)
        finally:
            await admin.close()
    run_async(body)
    code, got, _ = _raw(cluster, "eraseKey", topic="plain", partition=0,
                        keySha256=hashlib.sha256(KEY).hexdigest(), offset=0)
    assert (code, got) == ("invalidArgument", message)


def test_erasure_is_done_when_every_replica_is_and_is_audited_without_the_key(cluster: DataPlaneCluster) -> None:
    sha = hashlib.sha256(KEY).hexdigest()

    async def body() -> None:
        admin = _admin(cluster)
        node = _admin(cluster, "node")  # acting as the SPUs (node certificate)
        client = cluster.client(as_="admin")
        try:
            await admin.create_topic("users", 3, 3, {"cleanup_policy": "compact"})
            producer = client.producer("users", acks="all")
            await (await producer.send(b"v1", key=KEY))
            await producer.close()
            seen: list[Any] = []
            from kolk.client.producer import partition_for_key

            [erasure] = await admin.erase_key("users", KEY, partitions=[partition_for_key(KEY, 3)], wait=False,
                                              progress=seen.append)
            assert erasure.key_sha256 == sha and erasure.state in ("pending", "done") and seen == [erasure]
            assert erasure.name == f"users-{erasure.partition}@{erasure.offset}" and len(erasure.replicas) == 3
            assert erasure.requested_by and erasure.offset >= 1
            obj = await admin.get_object("erasure", erasure.name)
            assert KEY.decode() not in json.dumps(obj)
            # A client is not a node: it cannot report an erasure done.
            code, message, _ = await _raw_async(cluster, "erasureDone", name=erasure.name, spuId=erasure.replicas[0])
            assert code == "denied" and "erasureDone is for cluster nodes only" in message
            # The SPUs may report by themselves too (the SPU side of issue 19): whoever reports,
            # the erasure is done exactly when every replica has.
            for i, spu in enumerate(erasure.replicas):
                await node._request("erasureDone", write=True, name=erasure.name, spuId=spu)
                status = await admin.erasure_status(erasure.name)
                assert set(erasure.replicas[:i + 1]) <= set(status.done)
                assert (status.state == "done") == (set(erasure.replicas) <= set(status.done)), status
            assert status.state == "done"
            assert status.completed_ms is not None and status.completed_ms >= status.created_ms

            def audited(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
                mine = [e for e in events if erasure.name in e.get("reason", "")]
                return mine if len(mine) >= 2 else []
            async def found() -> list[dict[str, Any]]:
                records = await read_all(client, "_audit", timeout_s=10)
                assert all(KEY not in (r.value or b"") for r in records), "the key reached _audit"
                return audited([json.loads(r.value) for r in records])
            events = await wait_until(found, 30, "the erasure's request and completion in _audit")
            requested, completed = events[0], events[-1]
            assert requested["reason"].startswith(f"erasure {erasure.name} requested at ")
            assert f"key sha256 {sha}" in requested["reason"] and requested["identity"] == erasure.requested_by
            assert requested["resource"] == "topic:users" and requested["action"] == "delete"
            assert completed["reason"].startswith(f"erasure {erasure.name} completed at ")
            assert f"key sha256 {sha}" in completed["reason"]
        finally:
            await asyncio.gather(admin.close(), node.close(), client.close())
    run_async(body)


def test_deleting_a_topic_ends_its_erasures(cluster: DataPlaneCluster) -> None:
    async def body() -> None:
        admin = _admin(cluster)
        client = cluster.client(as_="admin")
        try:
            await admin.create_topic("gone", 1, 3, {"cleanup_policy": "compact,delete"})
            [erasure] = await admin.erase_key("gone", KEY, wait=False)
            assert (await admin.erasure_status(erasure.name)).name == erasure.name
            pending = erasure.state == "pending"
            await admin.delete_topic("gone")
            with pytest.raises(NotFoundError, match=f"erasure {erasure.name} does not exist"):
                await admin.erasure_status(erasure.name)

            async def ended() -> list[dict[str, Any]]:
                events = [json.loads(r.value) for r in await read_all(client, "_audit", timeout_s=10)]
                return [e for e in events if e.get("reason", "").startswith(f"erasure {erasure.name} completed at ")]
            (event, *_) = await wait_until(ended, 30, "the erasure's end in _audit")
            if pending:  # still pending when the topic went: it ends with the topic
                assert event["reason"].endswith(f"topic deleted, with every record of key sha256 "
                                                f"{erasure.key_sha256} (requested by {erasure.requested_by})")
        finally:
            await asyncio.gather(admin.close(), client.close())
    run_async(body)


# ---------------------------------------------------------------- the CLI


def _kolk(c: DataPlaneCluster, *args: str, timeout_s: float = 60) -> subprocess.CompletedProcess:
    p = c.pki["admin"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("KOLK_")}
    return subprocess.run([sys.executable, "-m", "kolk", *args, "--sc", ",".join(c.sc_addresses),
                           "--tls-ca", p["ca"], "--tls-cert", p["cert"], "--tls-key", p["key"]],
                          capture_output=True, text=True, timeout=timeout_s, cwd=str(ROOT), env=env,
                          stdin=subprocess.DEVNULL)


def _one_line(out: subprocess.CompletedProcess, status: int = 1) -> str:
    assert out.returncode == status, (out.returncode, out.stdout, out.stderr)
    assert "Traceback" not in out.stderr and out.stdout == "", (out.stdout, out.stderr)
    lines = out.stderr.splitlines()
    assert len(lines) == 1, out.stderr
    return lines[0]


@pytest.fixture(scope="module")
def cli_topics(cluster: DataPlaneCluster) -> DataPlaneCluster:
    async def body() -> None:
        admin = _admin(cluster)
        try:
            await admin.create_topic("cli-plain", 6, 3)
            await admin.create_topic("cli-gone", 1, 1)
            await admin.delete_topic("cli-gone")
        finally:
            await admin.close()
    run_async(body)
    return cluster


CLI_CASES = {
    "unknown key": (["topic", "create", "x", "--config", "retention.ms=5"],
                    "kolk topic create: topic x: unknown config key retention.ms (did you mean retention_ms?); known "
                    "keys: cleanup_policy, compression, delete_retention_ms, max_message_bytes, min_compaction_lag_ms, "
                    "min_in_sync, retention_bytes, retention_ms, segment_bytes, segment_ms"),
    "wrong type": (["topic", "create", "x", "--config", "segment_ms=soon"],
                   "kolk topic create: topic x: config segment_ms=soon is not allowed: a whole number, "
                   "1000-3153600000000 ms"),
    "negative": (["topic", "create", "x", "--config", "retention_ms=-5"],
                 "kolk topic create: topic x: config retention_ms=-5 is not allowed: -1 (keep forever) or "
                 "1-3153600000000 ms"),
    "absurd": (["topic", "alter", "cli-plain", "--config", "retention_bytes=" + "9" * 25],
               f"kolk topic alter: topic cli-plain: config retention_bytes={'9' * 25} is not allowed: -1 (no size "
               "limit) or 1-1125899906842624 bytes"),
    "not KEY=VALUE": (["topic", "alter", "cli-plain", "--config", "retention_ms"],
                      "kolk topic alter: --config 'retention_ms' must be KEY=VALUE"),
    "segment below the batch limit": (["topic", "create", "x", "--config", "segment_bytes=2048"],
                                      "kolk topic create: topic x: config segment_bytes=2048 is not allowed: "
                                      "segment_bytes below the batch limit max_message_bytes=4194304 (default)"),
    "alter a deleted topic": (["topic", "alter", "cli-gone", "--config", "retention_ms=1000"],
                              "kolk topic alter: topic cli-gone does not exist"),
    "alter with nothing to change": (["topic", "alter", "cli-plain"],
                                     "kolk topic alter: topic cli-plain: nothing to change (give --config KEY=VALUE or "
                                     "--delete-config KEY)"),
    "delete an unknown key": (["topic", "alter", "cli-plain", "--delete-config", "colour"],
                              "kolk topic alter: topic cli-plain: unknown config key colour; known keys: "
                              "cleanup_policy, compression, delete_retention_ms, max_message_bytes, "
                              "min_compaction_lag_ms, min_in_sync, retention_bytes, retention_ms, segment_bytes, "
                              "segment_ms"),
    "add-partitions smaller": (["topic", "add-partitions", "cli-plain", "--count", "3"],
                               "kolk topic add-partitions: topic cli-plain has 6 partitions; add-partitions can only "
                               "grow it, got 3"),
    "erase on a delete topic": (["topic", "erase", "cli-plain", "--key", "alice"],
                                "kolk topic erase: topic cli-plain: erase needs cleanup_policy compact or "
                                "compact,delete; it has delete"),
    "erase-status of nothing": (["topic", "erase-status", "cli-plain-0@5"],
                                "kolk topic erase-status: erasure cli-plain-0@5 does not exist (a deleted topic's "
                                "erasures go with it)"),
}


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_each_bad_cli_input_is_one_line(case: str, cli_topics: DataPlaneCluster) -> None:
    args, line = CLI_CASES[case]
    assert _one_line(_kolk(cli_topics, *args)) == line


def test_add_partitions_count_is_checked_before_sending(cli_topics: DataPlaneCluster) -> None:
    out = _kolk(cli_topics, "topic", "add-partitions", "cli-plain", "--count", "1001")
    assert _one_line(out, 2) == ("kolk topic add-partitions: argument --count: 1001 is out of range: 1 to 1000 (see "
                                 "kolk topic add-partitions --help)")


def test_cli_alter_describe_and_erase(cli_topics: DataPlaneCluster) -> None:
    c = cli_topics
    out = _kolk(c, "topic", "create", "cli-users", "-p", "2", "-r", "3", "--config", "cleanup_policy=compact")
    assert out.returncode == 0, out.stderr
    out = _kolk(c, "topic", "alter", "cli-users", "--config", "retention_ms=60000", "--config", "min_in_sync=3")
    assert out.returncode == 0 and out.stdout.startswith("topic cli-users altered (version "), out.stderr
    out = _kolk(c, "topic", "describe", "cli-users", "--json")
    assert out.returncode == 0, out.stderr
    effective = json.loads(out.stdout)["effective_config"]
    assert effective["retention_ms"] == {"value": "60000", "source": "topic"}
    assert effective["segment_ms"] == {"value": "3600000", "source": "default"}
    assert effective["delete_retention_ms"] == {"value": "86400000", "source": "built-in"}
    assert effective["cleanup_policy"] == {"value": "compact", "source": "topic"}
    assert len(effective) == 10
    text = _kolk(c, "topic", "describe", "cli-users").stdout
    assert "min_in_sync" in text and "SOURCE" in text
    out = _kolk(c, "topic", "add-partitions", "cli-users", "--count", "4")
    assert out.returncode == 0 and "now has 4 partitions" in out.stdout, out.stderr
    out = _kolk(c, "topic", "erase", "cli-users", "--key", "alice", "--no-wait")
    assert out.returncode == 0, out.stderr
    names = out.stdout.split()  # one erasure per partition, by default every one
    assert sorted(n.split("@")[0] for n in names) == [f"cli-users-{p}" for p in range(4)], names
    name = names[0]
    one = _kolk(c, "topic", "erase", "cli-users", "--key", "alice", "--partition", "2", "--no-wait")
    assert one.returncode == 0 and one.stdout.strip().startswith("cli-users-2@"), one.stderr
    status = _kolk(c, "topic", "erase-status", name, "--json")
    assert json.loads(status.stdout)["key_sha256"] == hashlib.sha256(b"alice").hexdigest()
    # Waiting: the progress line on stderr, then the timeout in one line while no SPU reports.
    out = _kolk(c, "topic", "erase", "cli-users", "--key", "bob", "--partition", "0", "--timeout", "1")
    if out.returncode == 0:  # the SPUs erase by themselves (the SPU side of issue 19)
        assert "done" in out.stdout
    else:
        lines = out.stderr.splitlines()
        assert lines[0].startswith("erasing key (sha256 ") and " of 3 replicas done" in lines[0], out.stderr
        assert lines[-1].startswith("kolk topic erase: erasure cli-users-") and "is not done after 1 s" in lines[-1]


def test_a_bad_topic_default_stops_the_sc_in_one_line(tmp_path: pathlib.Path) -> None:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("KOLK_")}, "KOLK_CLUSTER_SECRET": SECRET}
    out = subprocess.run([sys.executable, "-m", "kolk", "sc", "--id", "1", "--data-dir", str(tmp_path / "d"),
                          "--raft", "127.0.0.1:1", "--admin", "127.0.0.1:2", "--topic-default", "retention_ms=-5"],
                         capture_output=True, text=True, timeout=60, cwd=str(ROOT), env=env, stdin=subprocess.DEVNULL)
    assert _one_line(out) == ("kolk sc: --topic-default: config retention_ms=-5 (cluster default) is not allowed: -1 "
                              "(keep forever) or 1-3153600000000 ms")
    assert not (tmp_path / "d").exists()
