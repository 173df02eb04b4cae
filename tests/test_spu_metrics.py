"""What each SPU metric means, against real SC and SPU processes with mutual TLS and a policy:
every number is read by an HTTP GET of an SPU's /metrics (client certificate of the cluster
CA), parsed with prometheus_client's own parser, and compared with what the test did.

One cluster for the module (2 SPUs, short in-sync lag limit, a long heartbeat timeout so a
paused SPU stays registered): each test measures deltas of the counters it drives, so their
order does not matter, except that the 1,000-partition test runs last (it is the slowest).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import signal
import urllib.request
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from dataplane_cluster import DataPlaneCluster, read_all, release_consumer, run_async, wait_committed, wait_until
from kolk.client.consumer import Offset
from kolk.client.coordinator import group_call
from kolk.security.policy import parse_policy
from kolk.segments.records import build_batch
from kolk.protocol.codes import Acks
from kolk.protocol.errors import SmartModuleFailedError
from kolk.segments import GroupCommit
from kolk.smartmodule.build import build_c
from kolk.spu.metrics import SMARTMODULE_LABELS_MAX, SpuMetrics
from test_smartmodule_hostile import wat

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "smartmodule", "examples")

POLICY = """version = 1

[identities]
admin = ["admin"]
alice = ["reader"]

[[rule]]
effect = "allow"
roles = ["admin"]
actions = ["*"]
resources = ["topic:*", "smartmodule:*", "group:*", "cluster"]

[[rule]]
effect = "allow"
roles = ["reader"]
actions = ["consume", "describe"]
resources = ["topic:open-*"]
"""

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: Any) -> Any:
    c = DataPlaneCluster(str(tmp_path_factory.mktemp("spu-metrics")), spus=2, tls=True, clients=("admin", "alice"),
                         heartbeat_timeout_ms=60_000,
                         spu_args=("--metrics", "127.0.0.1:0", "--replica-lag-max-ms", "1500",
                                   "--replica-fetch-wait-ms", "200"))
    try:
        c.start()

        async def setup() -> None:
            admin = c.client(as_="admin")
            text = POLICY
            await admin.admin.put_object("policy", "active", {"version": 1, "source": text,
                                                              "sha256": parse_policy(text).sha256})
        run_async(setup)
        yield c
    finally:
        c.close()


# ------------------------------------------------------------------------- scraping

def metrics_address(c: DataPlaneCluster, spu_id: int) -> str:
    with open(c.spus[spu_id].ready_file) as f:
        return json.load(f)["metrics"]


def scrape_text(c: DataPlaneCluster, spu_id: int) -> str:
    ctx = c.tls_for("admin").client_context()
    with urllib.request.urlopen(f"https://{metrics_address(c, spu_id)}/metrics", context=ctx, timeout=10) as r:
        assert r.status == 200
        return r.read().decode()


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def scrape(c: DataPlaneCluster, spu_id: int) -> Samples:
    return parse(await asyncio.to_thread(scrape_text, c, spu_id))


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; 0 when the series does not exist (yet)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def series(samples: Samples, name: str, **labels: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Every series of ``name`` whose labels include ``labels``."""
    return {k[1]: v for k, v in samples.items() if k[0] == name and set(labels.items()) <= set(k[1])}


async def leader_of(c: DataPlaneCluster, topic: str, partition: int = 0) -> int:
    parts = await c.client(as_="admin").partitions(topic)
    return int(next(p for p in parts if p["spec"]["partition"] == partition)["status"]["leader"])


async def topic_with_replicas(c: DataPlaneCluster, topic: str, partitions: int, replication: int) -> None:
    admin = c.client(as_="admin")
    await admin.create_topic(topic, partitions, replication)

    async def placed() -> bool:
        parts = await admin.partitions(topic)
        return len(parts) == partitions and all(len(p["status"].get("isr", [])) == replication for p in parts)
    await wait_until(placed, 30, f"{topic} to have {replication} in-sync replicas per partition")


# ------------------------------------------------------------------------- tests

def test_produce_counts_records_and_bytes_of_the_partition_and_times_each_request(cluster: DataPlaneCluster) -> None:
    """N records in B batches to partition 0: records_in +N and bytes_in + the batches' bytes on
    its leader, partition 1 unchanged, B more acks=all produce observations; the partition's
    HW, LEO, start and size gauges equal what the client reads, and only the leader says 1."""
    async def body() -> None:
        admin = cluster.client(as_="admin")
        await topic_with_replicas(cluster, "m-in", 2, 2)
        leader = await leader_of(cluster, "m-in", 0)
        follower = 3 - leader
        before = await scrape(cluster, leader)
        batches = [build_batch([(b"k%d" % i, b"v" * (10 + i)) for i in range(b * 10, b * 10 + 10)]) for b in range(3)]
        for batch in batches:
            await admin.produce("m-in", 0, batch, acks=2)
        after = await scrape(cluster, leader)
        p0, p1 = {"topic": "m-in", "partition": "0"}, {"topic": "m-in", "partition": "1"}
        assert value(after, "kolk_spu_records_in_total", **p0) - value(before, "kolk_spu_records_in_total", **p0) == 30
        assert value(after, "kolk_spu_bytes_in_total", **p0) - value(before, "kolk_spu_bytes_in_total", **p0) == \
            sum(len(b) for b in batches)
        assert value(after, "kolk_spu_records_in_total", **p1) == value(before, "kolk_spu_records_in_total", **p1)
        assert value(after, "kolk_spu_produce_seconds_count", acks="all") - \
            value(before, "kolk_spu_produce_seconds_count", acks="all") == 3
        assert value(after, "kolk_spu_fsync_seconds_count") > value(before, "kolk_spu_fsync_seconds_count")
        assert value(after, "kolk_spu_group_commit_batches_sum") - \
            value(before, "kolk_spu_group_commit_batches_sum") >= 30

        start, hw, leo = await admin.offsets("m-in", 0)
        assert (start, hw, leo) == (0, 30, 30)
        assert value(after, "kolk_partition_high_watermark", **p0) == hw
        assert value(after, "kolk_partition_log_end_offset", **p0) == leo
        assert value(after, "kolk_partition_log_start_offset", **p0) == start
        assert value(after, "kolk_partition_size_bytes", **p0) == sum(len(b) for b in batches)
        assert value(after, "kolk_partition_leader", **p0) == 1
        on_follower = await wait_until(
            lambda: _when(scrape(cluster, follower), lambda s: value(s, "kolk_partition_log_end_offset", **p0) == 30),
            20, "the follower's replica of m-in-0 to reach offset 30")
        assert value(on_follower, "kolk_partition_leader", **p0) == 0
        assert not series(on_follower, "kolk_spu_records_in_total", **p0)  # replication is not client traffic
        lag = series(after, "kolk_spu_follower_lag_records", **p0)
        assert set(lag) == {tuple(sorted({**p0, "follower": str(follower)}.items()))}
    run_async(body)


def test_consuming_counts_records_and_bytes_out(cluster: DataPlaneCluster) -> None:
    """A stream that reads N records moves records_out +N and bytes_out + the bytes it was
    sent; a fetch is timed and counted the same way; an open stream shows in kolk_spu_streams."""
    async def body() -> None:
        admin = cluster.client(as_="admin")
        await topic_with_replicas(cluster, "m-out", 1, 2)
        leader = await leader_of(cluster, "m-out")
        batches = [build_batch([(None, b"x" * 50)] * 5) for _ in range(4)]
        for batch in batches:
            await admin.produce("m-out", 0, batch, acks=2)
        await wait_committed(admin, "m-out")
        p = {"topic": "m-out", "partition": "0"}
        before = await scrape(cluster, leader)
        got = await read_all(admin, "m-out", partition=0)
        assert len(got) == 20
        after = await scrape(cluster, leader)
        assert value(after, "kolk_spu_records_out_total", **p) - value(before, "kolk_spu_records_out_total", **p) == 20
        assert value(after, "kolk_spu_bytes_out_total", **p) - value(before, "kolk_spu_bytes_out_total", **p) == \
            sum(len(b) for b in batches)
        # The stream's pushes are timed (a streaming consumer sends no fetch requests).
        assert value(after, "kolk_spu_stream_push_seconds_count") > value(before, "kolk_spu_stream_push_seconds_count")

        spu = await admin._connect(cluster.spus[leader].address)
        r = await spu.call("fetch", 10, topic="m-out", partition=0, offset=10, maxBytes=1 << 20,
                           isolation="committed")
        assert r.result.ok
        fetched = await scrape(cluster, leader)
        assert value(fetched, "kolk_spu_fetch_seconds_count") - value(after, "kolk_spu_fetch_seconds_count") == 1
        assert value(fetched, "kolk_spu_records_out_total", **p) - value(after, "kolk_spu_records_out_total", **p) == 10
        assert value(fetched, "kolk_spu_connections") >= 1

        consumer = admin.consumer("m-out", partition=0, start=Offset.beginning())
        try:
            it = consumer.__aiter__()
            await asyncio.wait_for(it.__anext__(), 20)
            live = await scrape(cluster, leader)
            assert value(live, "kolk_spu_streams") == 1
        finally:
            await release_consumer(consumer)
        await wait_until(lambda: _when(scrape(cluster, leader), lambda s: value(s, "kolk_spu_streams") == 0), 20,
                         "the stream to end on the SPU")
    run_async(body)


def test_a_denial_counts_once_under_its_action(cluster: DataPlaneCluster) -> None:
    """alice may consume only open-* topics: her fetch of m-secret is refused, and the leader's
    kolk_policy_denials_total{action="consume"} goes up by exactly one."""
    async def body() -> None:
        await topic_with_replicas(cluster, "m-secret", 1, 1)
        leader = await leader_of(cluster, "m-secret")
        before = await scrape(cluster, leader)
        alice = cluster.client(as_="alice")
        spu = await alice._connect(cluster.spus[leader].address)
        r = await spu.call("fetch", 10, topic="m-secret", partition=0, offset=0, maxBytes=1 << 20,
                           isolation="committed")
        assert not r.result.ok and r.result.error.code == "denied"
        after = await scrape(cluster, leader)
        assert value(after, "kolk_policy_denials_total", action="consume") - \
            value(before, "kolk_policy_denials_total", action="consume") == 1
        assert value(after, "kolk_policy_denials_total", action="produce") == \
            value(before, "kolk_policy_denials_total", action="produce")
    run_async(body)


def test_a_smartmodule_call_is_counted_with_its_fuel_and_time(cluster: DataPlaneCluster) -> None:
    """A stream through the contains filter over B batches: B calls of contains@1 on the
    leader, fuel used > 0, B timed calls, no errors."""
    async def body() -> None:
        admin = cluster.client(as_="admin")
        wasm = await asyncio.to_thread(build_c, os.path.join(EXAMPLES, "contains.c"))
        await admin.admin.put_object("smartmodule", "contains@1", {
            "wasm": base64.b64encode(wasm).decode(), "sha256": hashlib.sha256(wasm).hexdigest(), "size": len(wasm)})
        await topic_with_replicas(cluster, "m-sm", 1, 1)
        leader = await leader_of(cluster, "m-sm")
        for b in range(3):
            await admin.produce("m-sm", 0, build_batch([(None, b"keep %d" % i) for i in range(4)]), acks=2)
        before = await scrape(cluster, leader)
        consumer = admin.consumer("m-sm", partition=0, start=Offset.beginning(), stop_at_end=True,
                                  smartmodules=[("contains", {"needle": "keep"})])
        try:
            got = await asyncio.wait_for(_collect(consumer), 30)
        finally:
            await release_consumer(consumer)
        assert len(got) == 12
        after = await scrape(cluster, leader)
        m = {"module": "contains@1"}
        assert value(after, "kolk_smartmodule_calls_total", **m) - value(before, "kolk_smartmodule_calls_total", **m) == 3
        assert value(after, "kolk_smartmodule_fuel_total", **m) > value(before, "kolk_smartmodule_fuel_total", **m)
        assert value(after, "kolk_smartmodule_call_seconds_count", **m) - \
            value(before, "kolk_smartmodule_call_seconds_count", **m) == 3
        assert not series(after, "kolk_smartmodule_errors_total", **m)
    run_async(body)


def test_a_failing_smartmodule_counts_an_error_by_its_reason(cluster: DataPlaneCluster) -> None:
    """A filter that traps on its first call ends the stream: one call and one error with
    reason "trap" for that module, and nothing counted for the others."""
    async def body() -> None:
        admin = cluster.client(as_="admin")
        wasm = wat("unreachable")
        await admin.admin.put_object("smartmodule", "trap@1", {
            "wasm": base64.b64encode(wasm).decode(), "sha256": hashlib.sha256(wasm).hexdigest(), "size": len(wasm)})
        await topic_with_replicas(cluster, "m-trap", 1, 1)
        leader = await leader_of(cluster, "m-trap")
        await admin.produce("m-trap", 0, build_batch([(None, b"one"), (None, b"two")]), acks=2)
        before = await scrape(cluster, leader)
        consumer = admin.consumer("m-trap", partition=0, start=Offset.beginning(), stop_at_end=True,
                                  smartmodules=["trap"])
        try:
            with pytest.raises(SmartModuleFailedError, match="trap@1"):
                await asyncio.wait_for(_collect(consumer), 30)
        finally:
            await release_consumer(consumer)
        after = await scrape(cluster, leader)
        m = {"module": "trap@1"}
        assert value(after, "kolk_smartmodule_errors_total", reason="trap", **m) - \
            value(before, "kolk_smartmodule_errors_total", reason="trap", **m) == 1
        assert value(after, "kolk_smartmodule_calls_total", **m) - value(before, "kolk_smartmodule_calls_total", **m) == 1
        assert set(series(after, "kolk_smartmodule_errors_total")) == {(("module", "trap@1"), ("reason", "trap"))}
    run_async(body)


def test_a_group_s_committed_offsets_and_lag_are_on_its_coordinator(cluster: DataPlaneCluster) -> None:
    """Offsets 3 and 4 committed for the two partitions of m-grp (10 records each): exactly
    one SPU, the group's coordinator, reports them; it reports the lag (HW 10 minus the
    committed offset) of the partitions it leads, and none for the partition it does not lead."""
    async def body() -> None:
        admin = cluster.client(as_="admin")
        await topic_with_replicas(cluster, "m-grp", 2, 1)
        for p in (0, 1):
            await admin.produce("m-grp", p, build_batch([(None, b"r")] * 10), acks=2)
        await group_call(admin, "g-metrics", "offsetCommit", {
            "group": "g-metrics", "memberId": "", "memberEpoch": 0,
            "offsets": [{"topic": "m-grp", "partition": p, "offset": 3 + p, "metadata": ""} for p in (0, 1)]})

        async def reporting() -> dict[int, Samples] | None:
            found = {}
            for spu_id in cluster.spus:
                got = await scrape(cluster, spu_id)
                if series(got, "kolk_group_committed_offset", group="g-metrics"):
                    found[spu_id] = got
            return found or None
        found = await wait_until(reporting, 20, "a coordinator to report g-metrics' offsets")
        assert len(found) == 1
        coordinator, got = next(iter(found.items()))
        for p in (0, 1):
            labels = {"group": "g-metrics", "topic": "m-grp", "partition": str(p)}
            assert value(got, "kolk_group_committed_offset", **labels) == 3 + p
            if await leader_of(cluster, "m-grp", p) == coordinator:
                assert value(got, "kolk_group_lag_records", **labels) == 10 - (3 + p)
            else:
                assert not series(got, "kolk_group_lag_records", **labels)
    run_async(body)


def test_a_paused_follower_is_one_shrink_per_partition_and_one_expand_when_it_returns(
        cluster: DataPlaneCluster) -> None:
    """SIGSTOP one SPU: for every partition the other leads with it in sync, that leader has
    the SC shrink the set once (isr_shrinks + that many, under-replicated partitions that many),
    and once it runs again, expands it once per partition."""
    async def body() -> None:
        admin = cluster.client(as_="admin")
        await topic_with_replicas(cluster, "m-isr", 1, 2)
        leader = await leader_of(cluster, "m-isr")
        paused = 3 - leader

        async def led_with(in_sync: bool) -> set[str]:
            out = set()
            for p in await admin.admin.list_objects("partition"):
                st = p.get("status", {})
                if st.get("leader") == leader and paused in p["spec"]["replicas"] and \
                        (paused in st.get("isr", [])) == in_sync:
                    out.add(p["name"])
            return out
        expected = await led_with(True)
        assert "m-isr-0" in expected
        before = await scrape(cluster, leader)
        os.kill(cluster.spus[paused].pid, signal.SIGSTOP)
        try:
            await wait_until(lambda: _when(led_with(True), lambda s: not s), 30,
                             f"SPU {leader} to drop SPU {paused} from the in-sync sets it leads")
            shrunk = await scrape(cluster, leader)
            assert value(shrunk, "kolk_spu_isr_shrinks_total") - value(before, "kolk_spu_isr_shrinks_total") == \
                len(expected)
            assert value(shrunk, "kolk_spu_under_replicated_partitions") >= len(expected)
        finally:
            os.kill(cluster.spus[paused].pid, signal.SIGCONT)
        await wait_until(lambda: _when(led_with(False), lambda s: not s), 30,
                         f"SPU {leader} to take SPU {paused} back into the in-sync sets")
        back = await scrape(cluster, leader)
        assert value(back, "kolk_spu_isr_expands_total") - value(before, "kolk_spu_isr_expands_total") == len(expected)
        assert value(back, "kolk_spu_under_replicated_partitions") == 0
    run_async(body)


def test_a_thousand_partition_scrape_parses(cluster: DataPlaneCluster) -> None:
    """A topic of 1,000 partitions: both SPUs' /metrics parse with prometheus_client's parser
    and together carry every partition's gauges once."""
    async def body() -> None:
        admin = cluster.client(as_="admin")
        await admin.create_topic("m-wide", 1000, 1)

        async def all_served() -> bool:
            seen = 0
            for spu_id in cluster.spus:
                seen += len(series(await scrape(cluster, spu_id), "kolk_partition_log_end_offset", topic="m-wide"))
            return seen == 1000
        await wait_until(all_served, 60, "both SPUs to report the 1,000 partitions of m-wide", interval_s=0.5)
        for spu_id in cluster.spus:
            families = {f.name for f in text_string_to_metric_families(await asyncio.to_thread(scrape_text, cluster,
                                                                                               spu_id))}
            assert {"kolk_spu_records_in", "kolk_partition_high_watermark", "kolk_partition_size_bytes",
                    "kolk_spu_produce_seconds", "kolk_policy_denials"} <= families
    run_async(body)


# ------------------------------------------------------------------------- helpers

async def _when(value_: Any, check: Any) -> Any:
    """``await value_`` when ``check`` holds for it (True for a falsy one), else None: a wait_until condition."""
    got = await value_
    return (got or True) if check(got) else None


async def _collect(consumer: Any) -> list[Any]:
    return [r async for r in consumer]


# ------------------------------------------------------------------------- the pure parts, without a cluster

def registry_samples(registry: CollectorRegistry) -> Samples:
    return parse(generate_latest(registry).decode())


def test_in_sync_changes_count_a_shrink_and_an_expansion_per_committed_change() -> None:
    """One per committed change that removed followers, one per change that added some, both
    for a change that did both; a change that moved nothing counts neither."""
    m = SpuMetrics(CollectorRegistry())
    m.on_isr_committed((1, 2, 3), (1,))
    assert (m.isr_shrinks, m.isr_expands) == (1, 0)
    m.on_isr_committed((1,), (1, 2, 3))
    assert (m.isr_shrinks, m.isr_expands) == (1, 1)
    m.on_isr_committed((1, 2), (1, 3))
    assert (m.isr_shrinks, m.isr_expands) == (2, 2)
    m.on_isr_committed((1, 2), (2, 1))
    assert (m.isr_shrinks, m.isr_expands) == (2, 2)


def test_a_produce_with_an_acks_value_the_schema_lacks_is_not_observed() -> None:
    """acks 7 (a client of a newer schema): refused by the SPU, and no series is made for it."""
    registry = CollectorRegistry()
    m = SpuMetrics(registry)
    m.observe_produce(7, 0.002)
    m.observe_produce(Acks.ALL, 0.002)
    got = registry_samples(registry)
    assert {dict(k[1])["acks"] for k in got if k[0] == "kolk_spu_produce_seconds_count"} == {"0", "1", "all"}
    assert value(got, "kolk_spu_produce_seconds_count", acks="all") == 1
    assert value(got, "kolk_spu_produce_seconds_count", acks="0") == value(got, "kolk_spu_produce_seconds_count",
                                                                          acks="1") == 0


def test_smartmodule_labels_are_bounded_and_the_rest_count_as_other() -> None:
    """Past SMARTMODULE_LABELS_MAX distinct modules, calls count under module="other"; the
    modules already labelled keep their own series."""
    registry = CollectorRegistry()
    stats = SpuMetrics(registry).smartmodules
    for i in range(SMARTMODULE_LABELS_MAX):
        stats.observe(f"m{i}@1", 0.001, 10, None)
    stats.observe("late@1", 0.001, 5, "trap")
    stats.observe("m0@1", 0.001, 10, None)
    calls, fuel, errors = stats.snapshot()
    assert dict(calls)["other"] == 1 and dict(calls)["m0@1"] == 2 and "late@1" not in dict(calls)
    assert dict(fuel)["other"] == 5 and dict(errors) == {("other", "trap"): 1}
    assert value(registry_samples(registry), "kolk_smartmodule_call_seconds_count", module="other") == 1


def test_group_commit_reports_each_fsync_with_the_records_it_made_durable(tmp_path: Any) -> None:
    """Appends made together share one fsync round: the rounds' records add up to every
    record appended, and each round's time is reported."""
    from test_storage_errors import make_batch, opened

    rounds: list[tuple[float, int]] = []
    with opened(tmp_path / "data") as lg:
        group = GroupCommit(lg)
        group.on_fsync = lambda seconds, records: rounds.append((seconds, records))

        async def main() -> None:
            await asyncio.gather(*(group.append(make_batch(f"t{i}", n=3)) for i in range(5)))
            await group.append(make_batch("last", n=2))
        asyncio.run(main())
    assert sum(r for _s, r in rounds) == 17
    assert 1 <= len(rounds) < 6  # the five concurrent appends shared rounds
    assert all(s >= 0 for s, _r in rounds)
