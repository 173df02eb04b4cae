"""The SC's metrics and every node's /health, /metrics over TLS and the --metrics flag, against
real processes (docs/metrics.md): one SC and one SPU with mutual TLS, both with --metrics on
port 0 (the bound addresses are in their ready files), scraped with a client certificate."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest

from dataplane_cluster import DataPlaneCluster, run_async, wait_until
from jepsen.cluster import SECRET, free_port
from kolk import __version__
from kolk.protocol.errors import KolkError, PermissionDeniedError
from kolk.security.certs import create_ca, issue, write_pair
from kolk.security.policy import parse_policy
from kolk.security.tls import TlsConfig
from metrics_scrape import Samples, get, ready_metrics, scrape

POLICY = """version = 1

[identities]
admin = ["admin"]
alice = ["reader"]

[[rule]]
effect = "allow"
roles = ["admin"]
actions = ["*"]
resources = ["topic:*", "smartmodule:*", "cluster"]

[[rule]]
effect = "allow"
roles = ["reader"]
actions = ["describe"]
resources = ["topic:*"]
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: Any) -> Any:
    root = str(tmp_path_factory.mktemp("scmetrics"))
    c = DataPlaneCluster(root, spus=1, tls=True, clients=("admin", "alice"),
                         sc_args=("--metrics", "127.0.0.1:0", "--ready-file", os.path.join(root, "sc.ready")),
                         spu_args=("--metrics", "127.0.0.1:0"))
    try:
        c.start()

        async def setup() -> None:
            text = POLICY
            await c.client(as_="admin").admin.put_object("policy", "active",
                                                         {"version": 1, "source": text,
                                                          "sha256": parse_policy(text).sha256})
        run_async(setup)
        yield c
    finally:
        c.close()


def sc_metrics(c: DataPlaneCluster) -> str:
    return ready_metrics(os.path.join(c.root, "sc.ready"))


def sc_scrape(c: DataPlaneCluster) -> Samples:
    return scrape(sc_metrics(c), c.tls_for("admin"))


def requests(s: Samples, method: str, result: str) -> float:
    return s.value("kolk_sc_admin_requests_total", method=method, result=result)


def test_raft_gauges_say_who_leads_and_where_the_log_is(cluster: DataPlaneCluster) -> None:
    async def status() -> dict[str, Any]:
        return await cluster.client(as_="admin").admin.cluster_status()

    before = run_async(status)["raft"]
    s = sc_scrape(cluster)
    after = run_async(status)["raft"]
    assert s.value("kolk_sc_raft_is_leader") == 1
    assert s.value("kolk_sc_raft_leader_id") == 1
    assert s.value("kolk_sc_raft_term") == before["term"] == after["term"] >= 1
    assert before["commit_index"] <= s.value("kolk_sc_raft_commit_index") <= after["commit_index"]
    assert s.value("kolk_sc_spus_registered") == 1 and s.value("kolk_sc_spus_alive") == 1
    assert s.value("kolk_sc_watchers") >= 1  # the SPU's metadata watch
    # With TLS the leader creates the audit topic once an SPU exists: an internal_topics action.
    s = run_async(lambda: wait_until(
        lambda: (x := sc_scrape(cluster)).value("kolk_sc_controller_actions_total", controller="internal_topics") >= 1
        and x, 10, "the SC to create the audit topic"))
    assert s.value("kolk_sc_commit_seconds_count") >= 1


def test_a_topic_create_moves_admin_requests_by_exactly_one(cluster: DataPlaneCluster) -> None:
    before = sc_scrape(cluster)

    async def create_good() -> None:
        await cluster.client(as_="admin").create_topic("metrics-orders", 1, 1)
    run_async(create_good)
    middle = sc_scrape(cluster)
    assert requests(middle, "createTopic", "ok") == requests(before, "createTopic", "ok") + 1
    assert middle.value("kolk_sc_commit_seconds_count") > before.value("kolk_sc_commit_seconds_count")

    async def create_bad() -> None:  # 3 replicas on a cluster of 1 SPU: the SC refuses it
        with pytest.raises(KolkError, match="replication"):
            await cluster.client(as_="admin").create_topic("metrics-too-many", 1, 3)
    run_async(create_bad)
    after = sc_scrape(cluster)
    assert requests(after, "createTopic", "ok") == requests(middle, "createTopic", "ok")
    assert (requests(after, "createTopic", "replicationFactorTooHigh")
            == requests(middle, "createTopic", "replicationFactorTooHigh") + 1)


def test_a_policy_denial_on_the_sc_is_counted_by_action(cluster: DataPlaneCluster) -> None:
    before = sc_scrape(cluster)

    async def denied() -> None:
        with pytest.raises(PermissionDeniedError):
            await cluster.client(as_="alice").create_topic("alice-may-not", 1, 1)
    run_async(denied)
    after = sc_scrape(cluster)
    assert (after.value("kolk_policy_denials_total", action="create")
            == before.value("kolk_policy_denials_total", action="create") + 1)
    assert requests(after, "createTopic", "denied") == requests(before, "createTopic", "denied") + 1


def test_every_node_reports_its_process(cluster: DataPlaneCluster) -> None:
    spu = ready_metrics(cluster.spus[1].ready_file)
    for address in (sc_metrics(cluster), spu):
        # The loop-lag monitor observes every 100 ms from the start: wait for a few.
        s = run_async(lambda address=address: wait_until(
            lambda: (x := scrape(address, cluster.tls_for("admin"))).value("kolk_event_loop_lag_seconds_count") >= 3
            and x, 10, f"loop lag observations on {address}"))
        assert s.value("kolk_process_resident_memory_bytes") > 20 << 20
        assert s.value("kolk_process_cpu_seconds_total") > 0
        assert s.value("kolk_process_open_fds") >= 5
        build = s.labelled("kolk_build_info")
        assert len(build) == 1 and dict(next(iter(build)))["version"] == __version__
        assert s.value("kolk_event_loop_lag_seconds_bucket", le="+Inf") == s.value("kolk_event_loop_lag_seconds_count")


def test_health_is_ok_on_a_serving_sc_and_spu(cluster: DataPlaneCluster) -> None:
    for address in (sc_metrics(cluster), ready_metrics(cluster.spus[1].ready_file)):
        assert get(address, "/health", cluster.tls_for("admin")) == (200, "ok\n")
        status, body = get(address, "/nowhere", cluster.tls_for("admin"))
        assert status == 404 and "this listener serves /metrics and /health" in body


def test_metrics_over_tls_refuse_a_missing_or_foreign_certificate(cluster: DataPlaneCluster) -> None:
    d = os.path.join(cluster.root, "stranger")
    os.makedirs(d, exist_ok=True)
    ca_pem, ca_key = create_ca("another CA")
    cert, key = write_pair(d, "stranger", *issue(ca_pem, ca_key, "stranger", kind="client"))
    ca = cluster.pki["admin"]["ca"]
    for address in (sc_metrics(cluster), ready_metrics(cluster.spus[1].ready_file)):
        for tls in (TlsConfig(ca), TlsConfig(ca, cert, key)):
            with pytest.raises(OSError):  # ssl.SSLError, a reset, or urllib's URLError around them
                get(address, "/metrics", tls)
        with pytest.raises(OSError):  # plaintext HTTP against the TLS listener gets no HTTP answer
            get(address, "/metrics")


def run_kolk_both(sc_args: list[str], spu_args: list[str]) -> tuple[subprocess.CompletedProcess, ...]:
    """`kolk sc` and `kolk spu` with these arguments, at once (each is expected to exit)."""
    procs = [subprocess.Popen([sys.executable, "-m", "kolk", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=dict(os.environ, KOLK_CLUSTER_SECRET=SECRET), stdin=subprocess.DEVNULL)
             for args in (sc_args, spu_args)]
    done = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=60)
            done.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)
    return tuple(done)


@pytest.mark.parametrize("address,why", [
    ("nonsense", "expected HOST:PORT"),
    ("127.0.0.1:70000", "the port must be a number from 1 to 65535"),
    ("not a host:9100", "is not a host name"),
])
def test_a_bad_metrics_address_stops_a_node_with_one_line(tmp_path: Any, address: str, why: str) -> None:
    sc, spu = run_kolk_both(
        ["sc", "--id", "1", "--data-dir", str(tmp_path / "sc"), "--raft", f"127.0.0.1:{free_port()}",
         "--admin", f"127.0.0.1:{free_port()}", "--metrics", address],
        ["spu", "--id", "1", "--sc", "127.0.0.1:1", "--data-dir", str(tmp_path / "spu"),
         "--public", f"127.0.0.1:{free_port()}", "--metrics", address])
    for prog, done in (("kolk sc", sc), ("kolk spu", spu)):
        assert done.returncode != 0
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"{prog}: invalid address") and why in lines[0], done.stderr
    assert not (tmp_path / "sc").exists() and not (tmp_path / "spu").exists()


def test_a_taken_metrics_port_stops_a_node_with_one_line(cluster: DataPlaneCluster, tmp_path: Any) -> None:
    taken = sc_metrics(cluster)
    # The SPU binds its metrics port right after its own, before it opens its data directory
    # or asks the SC anything (nothing answers at 127.0.0.1:1).
    sc, spu = run_kolk_both(
        ["sc", "--id", "1", "--data-dir", str(tmp_path / "sc"), "--raft", f"127.0.0.1:{free_port()}",
         "--admin", f"127.0.0.1:{free_port()}", "--metrics", taken],
        ["spu", "--id", "9", "--sc", "127.0.0.1:1", "--data-dir", str(tmp_path / "spu"),
         "--public", f"127.0.0.1:{free_port()}", "--metrics", taken])
    for prog, done in (("kolk sc", sc), ("kolk spu", spu)):
        assert done.returncode != 0
        assert "Traceback" not in done.stderr
        assert done.stderr.strip().splitlines()[-1] == (f"{prog}: cannot listen for metrics on {taken}: "
                                                        "address already in use"), done.stderr
    assert not (tmp_path / "sc").exists() and not (tmp_path / "spu").exists()


def documented_names(section: str) -> list[str]:
    """The metric names in the table under ``## {section}`` of docs/metrics.md."""
    with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "metrics.md"),
              encoding="utf-8") as f:
        text = f.read()
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return [line.split("`")[1] for line in body.splitlines() if line.startswith("| `kolk")]


def test_every_documented_sc_and_process_metric_is_served(cluster: DataPlaneCluster) -> None:
    names = documented_names("SC metrics") + documented_names("Process metrics") + ["kolk_policy_denials_total"]
    assert len(names) >= 16
    text = sc_scrape(cluster).text
    spu_text = scrape(ready_metrics(cluster.spus[1].ready_file), cluster.tls_for("admin")).text
    for name in names:
        assert f"\n# TYPE {name} " in text, f"the SC does not serve {name}"
    for name in documented_names("Process metrics"):
        assert f"\n# TYPE {name} " in spu_text, f"the SPU does not serve {name}"
