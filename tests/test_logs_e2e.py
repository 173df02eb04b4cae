"""Structured logs from real processes (issue 21, docs/operations.md "Logs"): an SC and an SPU
run with --log-format json (every line parses and names its node; one INFO line per topic
change; request lines with their id and peer), an SPU pointed at an SC address where nothing
listens, a follower whose leader died, and bad log flags. The pure parts: tests/test_logs.py.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from typing import Any, Iterator

import pytest

from dataplane_cluster import DataPlaneCluster, raw_spu, read_text
from jepsen.cluster import SECRET, free_port, wait_for
from kolk.client.admin import AdminClient, run
from kolk.observe import logs as L

TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
REQ = re.compile(r"^\d+-\d+$")


def _json_lines(path: str) -> list[dict[str, Any]]:
    lines = read_text(path).splitlines()
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"{path}: not a JSON line: {line!r}") from None
    return out


def _cli(c: DataPlaneCluster, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kolk", *args, "--sc", ",".join(c.sc_addresses)],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def _admin(c: DataPlaneCluster, call: str, *args: Any, **kw: Any) -> Any:
    """One admin call from this process (no interpreter start-up per call, as the CLI has)."""
    async def go() -> Any:
        client = AdminClient(c.sc_addresses, timeout_s=20)
        try:
            return await getattr(client, call)(*args, **kw)
        finally:
            await client.close()
    return run(go)


@pytest.fixture(scope="module")
def json_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DataPlaneCluster]:
    c = DataPlaneCluster(str(tmp_path_factory.mktemp("logs")), spus=1, sc_args=("--log-format", "json"),
                         spu_args=("--log-format", "json"))
    try:
        c.start()
        yield c
    finally:
        c.close()


def _sc_log(c: DataPlaneCluster) -> str:
    return c.sc.nodes[1].log_path


def test_every_line_of_a_json_sc_and_spu_parses_and_names_its_node(json_cluster: DataPlaneCluster) -> None:
    c = json_cluster
    _admin(c, "create_topic", "logs-json")
    wait_for(lambda: any("logs-json-0" in o["msg"] for o in _json_lines(c.spus[1].log_path)), 20,
             lambda: "the SPU to lead logs-json-0\n" + c.logs())
    sc = _json_lines(_sc_log(c))
    spu = _json_lines(c.spus[1].log_path)
    assert sc and spu
    assert {o["node"] for o in sc} == {"sc-1"}
    assert {o["node"] for o in spu} == {"spu-1"}
    for o in sc + spu:
        assert TS.match(o["ts"]) and o["level"] in L.LEVELS and o["logger"] and isinstance(o["msg"], str), o


def test_a_topic_create_and_delete_each_make_one_info_line(json_cluster: DataPlaneCluster) -> None:
    c = json_cluster
    _admin(c, "create_topic", "logs-made", partitions=2)
    _admin(c, "delete_topic", "logs-made")

    def about(word: str) -> list[dict[str, Any]]:
        return [o for o in _json_lines(_sc_log(c)) if f"topic logs-made {word} by " in o["msg"]]

    created, deleted = about("created"), about("deleted")
    assert len(created) == 1 and len(deleted) == 1, c.sc.logs()
    for o in created + deleted:
        assert o["level"] == "INFO" and o["logger"] == "kolk.sc"
        assert re.search(r" by \S+ from 127\.0\.0\.1 \(metadata version \d+\)$", o["msg"]), o


def test_a_refused_request_is_logged_with_its_id_and_peer(json_cluster: DataPlaneCluster) -> None:
    c = json_cluster
    r = _cli(c, "topic", "create", "logs-too-many", "--replication", "3")  # 1 SPU
    assert r.returncode != 0
    lines = [o for o in _json_lines(_sc_log(c)) if o.get("call") == "createTopic"]
    assert len(lines) == 1, lines
    (o,) = lines
    assert o["level"] == "WARNING" and o["code"] == "replicationFactorTooHigh" and REQ.match(o["req"])
    assert re.match(r"^\S+@127\.0\.0\.1:\d+$", o["peer"]) and "logs-too-many" in o["msg"]


def test_an_spu_with_no_sc_logs_the_address_once_not_every_retry(tmp_path: Any) -> None:
    dead = f"127.0.0.1:{free_port()}"  # nothing listens here
    log_path = str(tmp_path / "spu.log")
    args = [sys.executable, "-m", "kolk", "spu", "--id", "7", "--sc", dead, "--data-dir", str(tmp_path / "d"),
            "--public", f"127.0.0.1:{free_port()}", "--log-format", "json"]
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=dict(os.environ, KOLK_CLUSTER_SECRET=SECRET))
    try:
        def failures() -> list[dict[str, Any]]:
            return [o for o in _json_lines(log_path) if dead in o["msg"]]

        wait_for(failures, 20, lambda: "the SPU to log its failure to reach the SC\n" + read_text(log_path))
        first = failures()[0]
        assert first["level"] == "WARNING" and first["node"] == "spu-7"
        assert "nothing is listening" in first["msg"], first
        # It keeps trying (about every 2 s); for the next 4 s no further line may appear
        # (one per 30 s): a watch over a fixed span, checked on every look.
        until = time.monotonic() + 4
        while time.monotonic() < until:
            assert proc.poll() is None, read_text(log_path)
            assert len(failures()) == 1, read_text(log_path)
            time.sleep(0.2)  # polling the log over the span being measured
    finally:
        proc.kill()
        proc.wait(timeout=30)


def test_a_follower_logs_a_dead_leader_once_for_all_its_partitions(tmp_path: Any) -> None:
    """Issue 21: after a restart the logs were full of connection failures to the previous
    run's addresses - every follower logged every retry until the SC moved the leadership
    (about 7 lines per partition in 3 s). Now one line per leader address and reason."""
    c = DataPlaneCluster(str(tmp_path), spus=2, heartbeat_timeout_ms=1500, sc_args=("--log-format", "json"),
                         spu_args=("--log-format", "json"))
    try:
        c.start()
        _admin(c, "create_topic", "followed", partitions=8, replication_factor=2)
        spu1 = c.spus[1].log_path

        def led_by(spu: int) -> int:
            return sum("followed-" in o["msg"] and "leading at epoch 0" in o["msg"]
                       for o in _json_lines(c.spus[spu].log_path))

        wait_for(lambda: led_by(1) + led_by(2) == 8, 20, lambda: "every partition to have its leader\n" + c.logs())
        moved = led_by(2)
        assert moved >= 2  # replicas are spread: SPU 2 leads several partitions SPU 1 follows
        c.kill_spu(2)

        def taken_over() -> int:
            return sum("(was SPU 2)" in o["msg"] and "followed-" in o["msg"] for o in _json_lines(_sc_log(c)))

        wait_for(lambda: taken_over() == moved, 30, lambda: "SPU 1 to take over every partition\n" + c.logs())
        lines = [o for o in _json_lines(spu1) if "connection to leader SPU 2 at " in o["msg"]]
        assert lines and c.spus[2].address in lines[0]["msg"], c.logs()
        # one per reason ("closed", "nothing is listening"), for all `moved` partitions
        assert len(lines) <= 3, "\n".join(o["msg"] for o in lines)
        assert {o["level"] for o in lines} == {"WARNING"} and {o["peer"] for o in lines} == {c.spus[2].address}
    finally:
        c.close()


def test_an_unknown_log_format_flag_is_refused_naming_it(capsys: pytest.CaptureFixture[str]) -> None:
    from kolk.cli.main import main

    for argv in (["spu", "--id", "1", "--sc", "127.0.0.1:1", "--data-dir", "d", "--public", "127.0.0.1:1"],
                 ["sc", "--id", "1", "--data-dir", "d", "--raft", "127.0.0.1:1", "--admin", "127.0.0.1:2"],
                 ["cluster", "start"]):
        with pytest.raises(SystemExit) as e:
            main(argv + ["--log-format", "xml"])
        assert e.value.code == 2
        assert "argument --log-format: invalid choice: 'xml' (choose from 'text', 'json')" in capsys.readouterr().err


def test_an_unknown_log_level_stops_the_node_with_one_line_naming_it(tmp_path: Any) -> None:
    r = subprocess.run([sys.executable, "-m", "kolk", "spu", "--id", "1", "--sc", f"127.0.0.1:{free_port()}",
                        "--data-dir", str(tmp_path / "d"), "--public", f"127.0.0.1:{free_port()}",
                        "--log-level", "LOUD"],
                       capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
                       env=dict(os.environ, KOLK_CLUSTER_SECRET=SECRET))
    assert r.returncode != 0
    assert r.stderr.strip() == "kolk spu: log level 'LOUD' is not one of DEBUG, INFO, WARNING, ERROR, CRITICAL"
    assert not (tmp_path / "d").exists()  # nothing left behind


def test_a_refused_stream_and_fetch_on_an_spu_carry_their_ids_and_peer(json_cluster: DataPlaneCluster) -> None:
    c = json_cluster

    async def go() -> None:
        conn = await raw_spu(c.spus[1].address)
        try:
            out, _ = await conn.open_stream("stream", 1 << 16, 10, topic="logs-nosuch", partition=0, offset=0)
            assert not out.result.ok
            r = await conn.call("fetch", 10, topic="logs-nosuch", partition=0, offset=0, maxBytes=1024)
            assert not r.result.ok
        finally:
            conn.close()
    run(go)
    lines = [o for o in _json_lines(c.spus[1].log_path) if "logs-nosuch" in o["msg"]]
    assert sorted(o["call"] for o in lines) == ["fetch", "stream"], lines
    reqs = {o["req"] for o in lines}
    assert len(reqs) == 2 and all(REQ.match(r) for r in reqs)
    assert len({r.split("-")[0] for r in reqs}) == 1  # one connection, two requests on it
    # A topic an SPU does not know may be one its metadata has not reached yet: retriable, so INFO.
    assert all(o["level"] == "INFO" and o["peer"].startswith("anonymous@127.0.0.1:") for o in lines), lines
