"""``kolk top`` (core/cli/top.py, top_render.py): the rendering on its own, then the command as a
subprocess against a real cluster of one SC and three SPUs: one plain view, two views and the
rate between them from a non-TTY stdout, a consumer group's lag, the TTY mode on a pty (the
alternate screen, exit 0 on SIGINT and SIGTERM), the errors, and last a dead SPU's partitions
under ISR health."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import queue
import select
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from typing import Any

import pytest

from dataplane_cluster import DataPlaneCluster, run_async, wait_committed, wait_until
from jepsen.cluster import free_port, wait_for
from kolk.client.cluster_view import (HEALTH_OK, HEALTH_UNDER_REPLICATED, ClusterView, GroupView, PartitionView,
                                      PolicyView, ScView, SpuView, TopicView)
from kolk.client.consumer import Offset
from kolk.cli.main import main as kolk_main
from kolk.cli.top import ALT_SCREEN_OFF, ALT_SCREEN_ON, CURSOR_SHOW, HOME
from kolk.cli.top_render import count, cut, fit_height, render

WAIT_S = 30.0
CLI_TIMEOUT_S = 60
TOPIC = "clicks"
GROUP = "dashboard"
PARTITIONS = 3


# ---------------------------------------------------------------- rendering, pure


def _view(name: str = TOPIC, group: str = GROUP, health: str = HEALTH_OK, errors: tuple[str, ...] = ()) -> ClusterView:
    parts = tuple(PartitionView(name, p, 1, (1, 2, 3), (1, 2, 3) if health == HEALTH_OK else (1, 2), 100, 100, 0,
                                2048, 0, health, None) for p in range(2))
    return ClusterView(1_700_000_000_000, (ScView(1, "127.0.0.1:1", True, True),), 1,
                       (SpuView(1, "a", None, True, 2, 2), SpuView(2, "b", None, True, 2, 0),
                        SpuView(3, "c", None, health == HEALTH_OK, 2, 0)), (),
                       (TopicView(name, 2, 3, 4096, 200, 1234.5, {}, False, ((0, 100), (1, 100))),), parts,
                       (GroupView(group, "stable", 2, 1, 17, ()),), (), PolicyView(None, None, False), (), errors)


def test_every_line_fits_80_columns_and_long_names_end_in_an_ellipsis() -> None:
    long = "t" * 200
    lines = render(_view(long, "g" * 150, HEALTH_UNDER_REPLICATED, ("x" * 300,)))
    assert all(len(line) <= 80 for line in lines), [len(x) for x in lines]
    topic_row = next(x for x in lines if x.startswith("ttt"))
    assert "…" in topic_row and topic_row.split()[1:] == ["2", "3", "1.2k", "200", "4.0KiB"]
    assert any(x.startswith("! xxx") and x.endswith("…") for x in lines)
    assert any("under-replicated" in x and x.startswith("ttt") for x in lines)  # ISR health row, name cut


def test_only_unhealthy_partitions_are_listed() -> None:
    text = "\n".join(render(_view()))
    assert "ISR HEALTH (0 not ok)" in text and "every partition is in sync" in text
    assert "SPUs 3/3 alive" in text and "under-replicated 0" in text
    text = "\n".join(render(_view(health=HEALTH_UNDER_REPLICATED)))
    assert "ISR HEALTH (2 not ok)" in text and "down: 3" in text and f"{TOPIC}-1" in text


def test_topic_glob_filters_topics_partitions_and_groups() -> None:
    text = "\n".join(render(_view(health=HEALTH_UNDER_REPLICATED), topic_glob="other*"))
    assert TOPIC not in text and "TOPICS (0)" in text and "CONSUMER GROUPS (0)" in text


def test_helpers() -> None:
    assert [count(n) for n in (None, 0, 999, 1000, 12_345, 999_950, 4_500_000)] == [
        "-", "0", "999", "1.0k", "12.3k", "1.0M", "4.5M"]
    assert cut("abcdef", 4) == "abc…" and cut("abc", 4) == "abc"
    lines = [str(i) for i in range(10)]
    assert fit_height(lines, 20) == lines
    assert fit_height(lines, 4) == ["0", "1", "2", "… 7 more lines (a taller terminal shows them)"]


# ---------------------------------------------------------------- a real cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: Any) -> Any:
    c = DataPlaneCluster(str(tmp_path_factory.mktemp("top")), spus=3, heartbeat_timeout_ms=1500,
                         spu_args=("--replica-lag-max-ms", "2000", "--heartbeat-interval-ms", "200",
                                   "--replica-fetch-wait-ms", "200"))
    try:
        c.start()

        async def setup() -> None:
            async with c.client() as client:
                await client.create_topic(TOPIC, PARTITIONS, 3)
                await _produce(client, 30)
                consumer = client.consumer(TOPIC, group=GROUP, start=Offset.beginning(), auto_commit=False)
                got: list[Any] = []

                async def polled() -> bool:
                    got.extend(await consumer.poll(0.2))
                    return bool(got)
                await wait_until(polled, WAIT_S, "the group to hand out records")
                await consumer.commit({p: 4 for p in range(PARTITIONS)})  # lag 3 x (10 - 4) = 18
                await consumer.close()
        run_async(setup)
        yield c
    finally:
        c.close()


async def _produce(client: Any, n: int) -> None:
    producer = client.producer(TOPIC, acks="all")
    for i in range(n):
        await producer.send(b"click-%d" % i, partition=i % PARTITIONS)
    await producer.close()
    await wait_committed(client, TOPIC)


def top(c: DataPlaneCluster, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kolk", "top", *args, "--sc", c.sc_addresses[0]],
                          capture_output=True, text=True, timeout=CLI_TIMEOUT_S, stdin=subprocess.DEVNULL)


def _row(text: str, first: str) -> list[str]:
    return next(line.split() for line in text.splitlines() if line.split()[:1] == [first])


def test_once_prints_one_plain_view(cluster: DataPlaneCluster) -> None:
    r = top(cluster, "--once")
    assert r.returncode == 0, r.stderr
    assert "\x1b" not in r.stdout and r.stderr == ""
    assert r.stdout.count("kolk top  ") == 1
    assert all(len(line) <= 80 for line in r.stdout.splitlines())
    assert "SCs 1/1 up, leader sc-1   SPUs 3/3 alive" in r.stdout
    assert _row(r.stdout, TOPIC)[1:5] == [str(PARTITIONS), "3", "-", "30"]  # no rate from one view
    assert _row(r.stdout, GROUP)[1:4] == ["empty", "0", "18"]
    assert "every partition is in sync" in r.stdout


def test_topic_glob(cluster: DataPlaneCluster) -> None:
    r = top(cluster, "--once", "--topic", "cl*")
    assert r.returncode == 0, r.stderr
    assert "TOPICS (1)" in r.stdout and TOPIC in r.stdout and "_audit" not in r.stdout


def test_json_prints_the_view(cluster: DataPlaneCluster) -> None:
    r = top(cluster, "--once", "--json")
    assert r.returncode == 0, r.stderr
    (line,) = r.stdout.splitlines()  # one object per line
    view = json.loads(line)
    (t,) = [t for t in view["topics"] if t["name"] == TOPIC]
    assert (t["partitions"], t["replication_factor"], t["records"], t["in_records_per_s"]) == (PARTITIONS, 3, 30, None)
    (g,) = view["groups"]
    assert (g["name"], g["lag"], len(g["partitions"])) == (GROUP, 18, PARTITIONS)


def _views(proc: subprocess.Popen, into: "queue.Queue[str]") -> None:
    """Split the non-TTY stdout into views (each starts with the title line)."""
    current: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("kolk top  ") and current:
            into.put("".join(current))
            current = []
        current.append(line)
    if current:
        into.put("".join(current))


def test_views_every_interval_show_the_rate(cluster: DataPlaneCluster) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "kolk", "top", "--interval", "0.5", "--sc", cluster.sc_addresses[0]],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        views: queue.Queue[str] = queue.Queue()
        threading.Thread(target=_views, args=(proc, views), daemon=True).start()
        first = views.get(timeout=WAIT_S)
        records = int(_row(first, TOPIC)[4])
        run_async(lambda: _with_client(cluster, lambda c: _produce(c, 60)))
        deadline = time.monotonic() + WAIT_S
        rates = []
        while time.monotonic() < deadline:
            row = _row(views.get(timeout=WAIT_S), TOPIC)
            rates.append(row[3])
            if int(row[4]) == records + 60:
                break
        assert int(row[4]) == records + 60, rates
        assert any(r not in ("-", "0.0") and float(r.rstrip("k")) > 0 for r in rates), rates
        assert first.endswith("\n") and not first.endswith("\n\n\n")  # views are one blank line apart
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=30)
    assert rc == 0, proc.stderr.read() if proc.stderr else ""


async def _with_client(c: DataPlaneCluster, fn: Any) -> None:
    async with c.client() as client:
        await fn(client)


def _pty_top(c: DataPlaneCluster, sig: int) -> tuple[int, str]:
    """kolk top on a pty of 100x30, stopped with ``sig`` once it drew a view: (status, output)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "kolk", "top", "--interval", "0.5", "--sc", c.sc_addresses[0]],
                            stdin=slave, stdout=slave, stderr=subprocess.PIPE)
    os.close(slave)
    out = b""
    try:
        def read_some() -> None:
            nonlocal out
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    out += os.read(master, 65536)
                except OSError:  # the child closed its end
                    pass
        wait_for(lambda: (read_some(), b"TOPICS" in out and out.count(HOME.encode()) >= 2)[1], WAIT_S,
                 lambda: f"two frames on the pty: {out[-400:]!r}")
        proc.send_signal(sig)
        wait_for(lambda: (read_some(), proc.poll() is not None)[1], WAIT_S, "kolk top to exit")
        read_some()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        os.close(master)
    return proc.returncode, out.decode(errors="replace")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_tty_mode_uses_the_alternate_screen_and_exits_cleanly(cluster: DataPlaneCluster, sig: int) -> None:
    rc, out = _pty_top(cluster, sig)
    assert rc == 0
    assert out.startswith(ALT_SCREEN_ON) and out.rstrip().endswith(CURSOR_SHOW + ALT_SCREEN_OFF), out[-200:]
    assert TOPIC in out and "Traceback" not in out


def test_no_cluster_reachable_is_one_line_and_status_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert kolk_main(["top", "--once", "--sc", f"127.0.0.1:{free_port()}"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("kolk top: ") and err.count("\n") == 1 and "nothing is listening" in err, err


@pytest.mark.parametrize("value,why", [("0.1", "out of range: 0.5 to 60"), ("61", "out of range: 0.5 to 60"),
                                       ("nan", "out of range"), ("soon", "'soon' is not a number"),
                                       ("-1", "out of range")])
def test_a_bad_interval_is_one_line_and_status_2(value: str, why: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:  # refused by the parser, before any cluster is asked
        kolk_main(["top", f"--interval={value}", "--sc", "127.0.0.1:1"])
    out, err = capsys.readouterr()
    assert e.value.code == 2 and out == ""
    assert err.count("\n") == 1 and "--interval" in err and why in err, err


def test_a_dead_spu_s_partitions_are_under_isr_health(cluster: DataPlaneCluster) -> None:
    """Runs last (it kills SPU 3)."""
    cluster.kill_spu(3)

    def shown() -> str | None:
        r = top(cluster, "--once", "--topic", TOPIC)
        rows = [line.split() for line in r.stdout.splitlines() if line.startswith(f"{TOPIC}-")]
        return r.stdout if len(rows) == PARTITIONS and all(row[1] == HEALTH_UNDER_REPLICATED for row in rows) else None
    text = wait_for(shown, WAIT_S, "the partitions on SPU 3 under ISR health")
    assert "SPUs 2/3 alive (down: 3)" in text and f"ISR HEALTH ({PARTITIONS} not ok)" in text
