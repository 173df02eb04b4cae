"""A real Prometheus scrapes a real Kolk cluster (docs/metrics.md, "Scraping with Prometheus").

`kolk cluster start --tls --spus 3` in a temporary $KOLK_HOME turns metrics on for every node
and records their addresses in the profile; Debian's `/usr/bin/prometheus` scrapes them every
second over mutual TLS (the profile's client certificate), with the shipped rules and alerts
loaded (a rule that does not load or evaluate fails the test). The test produces records and
asks Prometheus, through its HTTP API, what it saw.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from typing import Any, Iterator

import pytest

from dataplane_cluster import run_async, wait_until
from jepsen.cluster import free_port, wait_for
from kolk.client.client import AsyncClient
from kolk.client.consumer import Offset
from kolk.security.tls import TlsConfig
from test_metrics_docs import ALERTS, RULES, dashboard_rules_file, panel_exprs

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROMETHEUS = "/usr/bin/prometheus"
COMMAND_TIMEOUT_S = 90.0
DEADLINE_S = 60.0
STOP_TIMEOUT_S = 15.0
TOPIC = "prom"
PARTITIONS = 3
WARM_UP = 3  # one record per partition before Prometheus's first look: the series exist at 0 < N
RECORDS = 600  # in all, WARM_UP included
GROUP = "billing"
COMMITTED = {0: 50, 1: 120, 2: 200}  # the next offset to read, per partition; each has 200 records


def kolk(home: pathlib.Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KOLK_")}
    return subprocess.run([sys.executable, "-m", "kolk", *args], text=True, capture_output=True,
                          timeout=COMMAND_TIMEOUT_S, cwd=str(ROOT), stdin=subprocess.DEVNULL,
                          env={**env, "KOLK_HOME": str(home)})


def seed_ports(home: pathlib.Path) -> None:
    """Give the local cluster ports from the OS (local/ports.json, which `kolk cluster start`
    reuses while free) instead of its preferred 9003, 9005, 9011, ...: tests running at the
    same time in other $KOLK_HOMEs would race for those."""
    names = ["sc", "raft", "console", "sc-metrics"] + [f"spu-{i}{m}" for i in (1, 2, 3) for m in ("", "-metrics")]
    local = home / "local"
    local.mkdir(mode=0o700)
    (local / "ports.json").write_text(json.dumps({name: free_port() for name in names}))


def node_logs(home: pathlib.Path) -> str:
    logs = sorted((home / "local" / "logs").glob("*.log"))
    return "\n".join(f"--- {p.name}\n" + "".join(p.read_text(errors="replace").splitlines(True)[-15:]) for p in logs)


def ok(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr)
    return done.stdout


def stop_pid(pid: int) -> None:
    """SIGTERM, then SIGKILL after a deadline, of one process this test started."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline and os.path.exists(f"/proc/{pid}"):
        try:
            if os.waitpid(pid, os.WNOHANG)[0]:
                return
        except ChildProcessError:
            pass
        time.sleep(0.05)  # waiting on process exit, with a deadline
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class Prometheus:
    def __init__(self, root: pathlib.Path, profile: dict[str, Any]) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        tls = profile["tls"]
        targets = "\n".join(
            f"      - targets: [\"{address}\"]\n        labels: {{node: {node}}}"
            for node, address in sorted(profile["metrics"].items()))
        dashboard = dashboard_rules_file(str(root), job="kolk")
        config = f"""global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - {RULES}
  - {ALERTS}
  - {dashboard}
scrape_configs:
  - job_name: kolk
    scheme: https
    tls_config:
      ca_file: {tls['ca']}
      cert_file: {tls['cert']}
      key_file: {tls['key']}
    static_configs:
{targets}
"""
        self.config = root / "prometheus.yml"
        self.config.write_text(config)
        self.log = root / "prometheus.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Prometheus":
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [PROMETHEUS, f"--config.file={self.config}", f"--storage.tsdb.path={self.root / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=info"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_for(self.ready, DEADLINE_S, lambda: "Prometheus to be ready\n" + self.logs())
        return self

    def ready(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None, "Prometheus exited:\n" + self.logs()
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=5) as r:
                return r.status == 200
        except OSError:
            return False

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""

    def api(self, path: str, **params: str) -> Any:
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}", timeout=10) as r:
            answer = json.load(r)
        assert answer["status"] == "success", answer
        return answer["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        data = self.api("query", query=promql)
        assert data["resultType"] == "vector", data
        return data["result"]

    def scalar(self, promql: str) -> float | None:
        """The one value of ``promql``, None while it has none."""
        result = self.query(promql)
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else None

    def wait(self, promql: str, want: Any, what: str) -> float:
        """Poll until ``want(value)``; the last value."""
        seen: list[float | None] = [None]

        def check() -> bool:
            seen[0] = self.scalar(promql)
            return seen[0] is not None and bool(want(seen[0]))
        wait_for(check, DEADLINE_S, lambda: f"{what}: {promql} is {seen[0]}\n{self.logs()}")
        return float(seen[0])  # type: ignore[arg-type]

    def stop(self) -> None:
        if self.proc is not None:
            stop_pid(self.proc.pid)
            self.proc.wait(timeout=STOP_TIMEOUT_S)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: Any) -> Iterator[tuple[pathlib.Path, dict[str, Any], Prometheus]]:
    home = tmp_path_factory.mktemp("home")
    prometheus: Prometheus | None = None
    try:
        seed_ports(home)
        started = kolk(home, "cluster", "start", "--tls", "--spus", "3")
        assert started.returncode == 0, (started.stderr, node_logs(home))
        profile = json.loads((home / "profile.json").read_text())
        ok(kolk(home, "topic", "create", TOPIC, "--partitions", str(PARTITIONS), "--replication", "3"))
        tls = TlsConfig(**profile["tls"])
        run_async(lambda: produce(AsyncClient([profile["sc"]], timeout_s=20, tls=tls), list(range(WARM_UP))))
        prometheus = Prometheus(tmp_path_factory.mktemp("prometheus"), profile).start()
        # Every node is up, and Prometheus has seen the warm-up records before the rest come:
        # the counters' series exist before they grow, so rate() sees the growth.
        prometheus.wait('count(up{job="kolk"} == 1)', lambda v: v == len(profile["metrics"]), "every node scraped")
        # (Only this topic: on a TLS cluster the nodes also write _audit records.)
        prometheus.wait(f'sum(kolk_spu_records_in_total{{topic="{TOPIC}"}})', lambda v: v == WARM_UP,
                        "the warm-up records")
        run_async(lambda: produce(AsyncClient([profile["sc"]], timeout_s=20, tls=tls),
                                  [i % PARTITIONS for i in range(RECORDS - WARM_UP)]))
        run_async(lambda: commit(AsyncClient([profile["sc"]], timeout_s=20, tls=tls)))
        yield home, profile, prometheus
    finally:
        if prometheus is not None:
            prometheus.stop()
        if (home / "profile.json").exists():
            kolk(home, "cluster", "stop")
            for pid in json.loads((home / "profile.json").read_text()).get("pids", {}).values():
                stop_pid(pid)


async def produce(client: AsyncClient, partitions: list[int]) -> None:
    """One record to each of ``partitions`` (acks=all, the default), then the client closes."""
    async with client:
        producer = client.producer(TOPIC)
        for i, partition in enumerate(partitions):
            await producer.send(b"record %d" % i, partition=partition)
        await producer.flush()
        await producer.close()


async def commit(client: AsyncClient) -> None:
    """Group GROUP reads a record, then commits COMMITTED (partition -> next offset)."""
    async with client:
        consumer = client.consumer(TOPIC, group=GROUP, start=Offset.beginning(), auto_commit=False)
        got: list[Any] = []

        async def polled() -> bool:
            got.extend(await consumer.poll(0.2))
            return bool(got)
        await wait_until(polled, DEADLINE_S, f"group {GROUP} to hand out records")
        await consumer.commit(dict(COMMITTED))
        await consumer.close()


def test_local_cluster_start_turns_metrics_on_and_status_prints_them(setup: Any) -> None:
    home, profile, _ = setup
    assert sorted(profile["metrics"]) == ["sc", "spu-1", "spu-2", "spu-3"]
    status = ok(kolk(home, "cluster", "status"))
    for node, address in profile["metrics"].items():
        assert f"{node} https://{address}/metrics" in status, status


def test_prometheus_sees_what_was_produced(setup: Any) -> None:
    _, profile, prom = setup
    prom.wait(f'sum(kolk_spu_records_in_total{{topic="{TOPIC}"}})', lambda v: v == RECORDS,
              "every record counted once, on its leader")
    per_partition = {r["metric"]["partition"]: float(r["value"][1])
                     for r in prom.query(f'sum by (partition) (kolk_spu_records_in_total{{topic="{TOPIC}"}})')}
    assert per_partition == {str(p): RECORDS / PARTITIONS for p in range(PARTITIONS)}
    rate = prom.scalar(f'sum(rate(kolk_spu_records_in_total{{topic="{TOPIC}"}}[30s]))')
    assert rate is not None and rate > 0
    # The increase Prometheus computes over the window (extrapolated to its edges) is about
    # what was produced after the warm-up, once the window holds a few samples.
    prom.wait(f'min(count_over_time(kolk_spu_records_in_total{{topic="{TOPIC}"}}[30s]))', lambda v: v >= 6,
              "six samples of every partition's counter")
    increase = prom.scalar(f'sum(increase(kolk_spu_records_in_total{{topic="{TOPIC}"}}[30s]))')
    assert increase is not None and 0.5 * (RECORDS - WARM_UP) <= increase <= 1.5 * (RECORDS - WARM_UP)
    # Each partition's high watermark, as its leader reports it, is where the records end.
    hw = prom.query(f'kolk_partition_high_watermark{{topic="{TOPIC}"}} and on (instance, topic, partition) '
                    f'kolk_partition_leader{{topic="{TOPIC}"}} == 1')
    assert sorted(float(r["value"][1]) for r in hw) == [RECORDS / PARTITIONS] * PARTITIONS


def test_prometheus_sees_one_raft_leader_and_every_process(setup: Any) -> None:
    _, profile, prom = setup
    assert prom.wait("sum(kolk_sc_raft_is_leader)", lambda v: v == 1, "one Raft leader") == 1
    assert prom.scalar("max(kolk_sc_spus_alive)") == 3
    assert prom.scalar("count(kolk_process_resident_memory_bytes > 0)") == len(profile["metrics"])
    assert prom.scalar("count(kolk_build_info)") == len(profile["metrics"])
    up = prom.query('up{job="kolk"}')
    assert sorted(r["metric"]["node"] for r in up if r["value"][1] == "1") == sorted(profile["metrics"])


def test_the_shipped_rules_and_the_dashboard_evaluate_in_prometheus(setup: Any) -> None:
    _, _, prom = setup

    def evaluated() -> list[dict[str, Any]]:
        rules = [r for g in prom.api("rules")["groups"] for r in g["rules"]]
        return rules if all(r.get("lastEvaluation", "").startswith("2") and r.get("health") != "unknown"
                            for r in rules) else []
    rules = wait_for(evaluated, DEADLINE_S, lambda: "every rule evaluated once\n" + prom.logs())
    names = {r["name"] for r in rules}
    assert {"kolk:group_lag_records", "KolkOfflinePartitions", "KolkUnderReplicatedPartitions",
            "KolkConsumerLagGrowing", "KolkFsyncSlow", "KolkDiskFilling", "KolkNodeDown"} <= names
    assert len([n for n in names if n.startswith("kolk_dashboard_panel_")]) == len(list(panel_exprs()))
    broken = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert broken == []
    # A healthy cluster fires none of the shipped alerts.
    firing = [r["name"] for r in rules if r.get("type") == "alerting" and r.get("state") == "firing"]
    assert firing == []


def test_the_lag_recording_rule_is_the_high_watermark_minus_the_committed_offset(setup: Any) -> None:
    _, _, prom = setup
    per_partition = RECORDS // PARTITIONS

    def lags() -> dict[str, float]:
        return {r["metric"]["partition"]: float(r["value"][1])
                for r in prom.query(f'kolk:group_lag_records{{group="{GROUP}", topic="{TOPIC}"}}')}
    want = {str(p): float(per_partition - c) for p, c in COMMITTED.items()}
    wait_for(lambda: lags() == want, DEADLINE_S, lambda: f"the recording rule: {lags()} instead of {want}")
    committed = {r["metric"]["partition"]: float(r["value"][1])
                 for r in prom.query(f'kolk_group_committed_offset{{group="{GROUP}"}}')}
    assert committed == {str(p): float(c) for p, c in COMMITTED.items()}
    # Where the coordinator's SPU leads a partition it reports the same lag itself.
    for r in prom.query(f'kolk_group_lag_records{{group="{GROUP}"}}'):
        assert float(r["value"][1]) == want[r["metric"]["partition"]]
