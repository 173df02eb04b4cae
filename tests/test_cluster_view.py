"""The cluster view (core/client/cluster_view.py, cluster_collect.py): its pure parts (health,
rates, denials from ``_audit`` records, the builders), then ``collect_view`` against a real TLS
cluster of one SC and three SPUs with a policy, a replicated topic, a consumer group with
committed offsets, a stored SmartModule and an audited denial; the SPU killed last."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from typing import Any

import pytest
from hypothesis import given, strategies as st

from dataplane_cluster import DataPlaneCluster, run_async, wait_committed, wait_until
from jepsen.cluster import free_port
from kolk.client.client import AsyncClient
from kolk.client.cluster_collect import _denials_of
from kolk.client.cluster_view import (DENIALS_MAX, HEALTH_OFFLINE, HEALTH_OK, HEALTH_UNDER_REPLICATED, ClusterView,
                                      DenialView, PartitionView, PolicyView, TopicView, collect_view, group_view,
                                      newest_denials, parse_denial, partition_health, policy_view, topic_view,
                                      with_rates)
from kolk.client.consumer import Offset
from kolk.client.groups_admin import GroupDescription, PartitionLag
from kolk.protocol.errors import ClusterUnavailableError
from kolk.security.policy import parse_policy
from kolk.segments.records import build_batch
from kolk.smartmodule.build import build_c

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "smartmodule", "examples")
WAIT_S = 30.0

# ---------------------------------------------------------------- pure: health


ids = st.integers(min_value=1, max_value=6)


@given(leader=st.one_of(st.none(), ids), replicas=st.sets(ids, min_size=1), isr=st.sets(ids), alive=st.sets(ids))
def test_health_classification(leader: int | None, replicas: set[int], isr: set[int], alive: set[int]) -> None:
    health = partition_health(leader, sorted(replicas), sorted(isr), alive)
    if leader is None or leader not in alive:
        assert health == HEALTH_OFFLINE
    elif replicas <= isr and replicas <= alive:
        assert health == HEALTH_OK
    else:
        assert health == HEALTH_UNDER_REPLICATED


def test_health_examples() -> None:
    assert partition_health(1, (1, 2, 3), (1, 2, 3), {1, 2, 3}) == HEALTH_OK
    assert partition_health(1, (1, 2, 3), (1, 2), {1, 2, 3}) == HEALTH_UNDER_REPLICATED
    assert partition_health(1, (1, 2, 3), (1, 2, 3), {1, 2}) == HEALTH_UNDER_REPLICATED  # dead, not yet shrunk
    assert partition_health(None, (1, 2, 3), (1,), {1, 2, 3}) == HEALTH_OFFLINE
    assert partition_health(3, (1, 2, 3), (3,), {1, 2}) == HEALTH_OFFLINE  # its leader's SPU is down


# ---------------------------------------------------------------- pure: rates


def _view(taken_ms: int, topics: tuple[TopicView, ...]) -> ClusterView:
    return ClusterView(taken_ms, (), None, (), (), topics, (), (), (), PolicyView(None, None, False), (), ())


def _topic(name: str, hws: dict[int, int | None]) -> TopicView:
    return TopicView(name, len(hws), 1, None, None, None, {}, False, tuple(sorted(hws.items())))


@given(before=st.lists(st.integers(0, 10**9), min_size=1, max_size=8), grow=st.data(),
       dt_ms=st.integers(1, 600_000))
def test_rate_is_high_watermark_growth_over_time(before: list[int], grow: Any, dt_ms: int) -> None:
    added = grow.draw(st.lists(st.integers(0, 10**6), min_size=len(before), max_size=len(before)))
    prev = _view(1_000, (_topic("t", dict(enumerate(before))),))
    now = _view(1_000 + dt_ms, (_topic("t", {i: b + a for i, (b, a) in enumerate(zip(before, added))}),))
    (t,) = with_rates(now, prev).topics
    assert t.in_records_per_s == pytest.approx(sum(added) / (dt_ms / 1000))


def test_rate_edges() -> None:
    now = _view(3_000, (_topic("t", {0: 50, 1: 10, 2: None}), _topic("new", {0: 5})))
    assert with_rates(now, None).topics[0].in_records_per_s is None  # the first view
    prev = _view(1_000, (_topic("t", {0: 10, 1: 20, 2: 7}),))
    t, new = with_rates(now, prev).topics
    assert t.in_records_per_s == pytest.approx(20.0)  # partition 1 went down (recreated), 2 unknown: left out
    assert new.in_records_per_s is None  # not in the previous view
    assert with_rates(now, _view(3_000, prev.topics)).topics[0].in_records_per_s is None  # no time between
    assert with_rates(now, _view(9_000, prev.topics)).topics[0].in_records_per_s is None  # out of order


# ---------------------------------------------------------------- pure: denials


def _event(**kw: Any) -> bytes:
    base = {"ts": 1_700_000_000_000, "node": "node", "process": "spu-2", "identity": "eve", "address": "1.2.3.4:5",
            "action": "consume", "resource": "topic:orders", "decision": "deny", "rule": None,
            "reason": "no rule allows it", "policy_version": 1, "seq": 1}
    return json.dumps({**base, **kw}).encode()


def test_denial_parsed_from_an_audit_record() -> None:
    assert parse_denial(_event()) == DenialView(1_700_000_000_000, "eve", "consume", "topic:orders", "spu-2",
                                                "no rule allows it")
    # without the writer's own name, the node identity
    assert parse_denial(json.dumps({**json.loads(_event()), "process": None}).encode()).node == "node"


def test_records_that_are_not_denials() -> None:
    assert parse_denial(_event(decision="allow")) is None  # an audited change
    assert parse_denial(None) is None
    assert parse_denial(b"\xff\xfe not json") is None
    assert parse_denial(b"[1, 2]") is None
    assert parse_denial(_event(ts="yesterday")) is None
    assert parse_denial(_event(ts=True)) is None


def test_denial_text_is_one_bounded_line() -> None:
    d = parse_denial(_event(reason="a\nb\tc" + "x" * 1000, identity=None))
    assert d is not None and d.reason.startswith("a b c") and len(d.reason) == 256 and d.reason.endswith("…")
    assert d.identity == ""


def test_denials_from_audit_batches_start_at_the_offset_asked() -> None:
    """_audit batches as a leader sends them: a batch may begin before the offset asked for
    (those records are skipped), control batches and allowed changes are not denials."""
    first = build_batch([(b"spu-2", _event(ts=1)), (b"spu-2", _event(ts=2))], base_offset=10)
    second = build_batch([(b"sc-1", _event(decision="allow", ts=3)), (b"sc-1", _event(ts=4, identity="mallory"))],
                         base_offset=12)
    control = build_batch([(None, _event(ts=5))], base_offset=14, control=True)
    got = _denials_of([(first + second + control, 11)])
    assert [(d.ts_ms, d.identity) for d in got] == [(2, "eve"), (4, "mallory")]


@given(st.lists(st.integers(0, 10**6), max_size=120))
def test_newest_denials_first_and_bounded(stamps: list[int]) -> None:
    got = newest_denials([DenialView(ts, "i", "a", "r", "n", str(k)) for k, ts in enumerate(stamps)])
    assert len(got) == min(len(stamps), DENIALS_MAX)
    assert [d.ts_ms for d in got] == sorted(stamps, reverse=True)[:DENIALS_MAX]


# ---------------------------------------------------------------- pure: builders


def _part(p: int, hw: int | None, start: int | None, size: int | None) -> PartitionView:
    return PartitionView("t", p, 1, (1,), (1,), hw, hw, start, size, 0, HEALTH_OK, None)


def test_topic_totals_are_unknown_when_a_partition_is() -> None:
    obj = {"name": "t", "spec": {"partitions": 2, "replication_factor": 1, "config": {"retention_ms": "60000"}}}
    t = topic_view(obj, [_part(1, 30, 10, 200), _part(0, 5, 0, 100)])
    assert (t.records, t.size_bytes, t.high_watermarks, t.config) == (25, 300, ((0, 5), (1, 30)),
                                                                      {"retention_ms": "60000"})
    t = topic_view(obj, [_part(0, 5, 0, 100), _part(1, None, None, None)])
    assert (t.records, t.size_bytes) == (None, None)
    assert topic_view({"name": "_audit", "spec": {"partitions": 1, "replication_factor": 1}}, []).internal


def test_group_view_lag() -> None:
    lags = (PartitionLag("t", 0, None, None, 3, 0, 10, 7), PartitionLag("t", 1, None, None, None, 0, 4, 4))
    d = GroupDescription("g", "empty", 3, "range", 2, (), lags)
    g = group_view({"group": "g", "state": "empty", "members": 0, "coordinator": 2}, d, None)
    assert (g.lag, g.coordinator, [p.lag for p in g.partitions]) == (11, 2, [7, 4])
    unknown = GroupDescription("g", "empty", 3, "range", 2, (), lags + (PartitionLag("t", 2, None, None, 1, None,
                                                                                      None, None, "down"),))
    assert group_view({"group": "g"}, unknown, None).lag is None
    failed = group_view({"group": "g", "state": "stable", "members": 2, "coordinator": 1}, None, "no answer")
    assert (failed.members, failed.error, failed.lag, failed.partitions) == (2, "no answer", None, ())


def test_policy_view() -> None:
    assert policy_view(None) == PolicyView(None, None, False)
    assert policy_view({"spec": {"version": 4, "source": "version = 4"}}) == PolicyView(4, "version = 4", True)


def test_groups_not_described_in_time_keep_what_the_list_said(monkeypatch: pytest.MonkeyPatch) -> None:
    """The groups part is bounded: a coordinator that never answers costs its group's details,
    not the other groups' nor the view's time."""
    import asyncio

    from kolk.client import cluster_collect, groups_admin

    monkeypatch.setattr(cluster_collect, "PART_TIMEOUT_S", 1.0)
    monkeypatch.setattr(cluster_collect, "GROUPS_MARGIN_S", 0.2)
    never = asyncio.Event()

    class Lister:  # the listing as coordinators answer it; describes go through groups_admin
        async def group_list(self) -> list[dict[str, Any]]:
            return [{"group": g, "state": "stable", "members": 1, "coordinator": 1} for g in ("fast", "stuck")]

    async def describe(_client: Any, group: str, **_kw: Any) -> GroupDescription:
        if group == "stuck":
            await never.wait()  # a coordinator that never answers
        return GroupDescription(group, "stable", 1, "range", 1, ({"member_id": "m"},),
                                (PartitionLag("t", 0, "m", "c", 5, 0, 8, 3),))
    monkeypatch.setattr(groups_admin, "describe_group", describe)
    errors: list[str] = []
    started = time.monotonic()
    fast, stuck = run_async(lambda: cluster_collect._groups(Lister(), errors))  # type: ignore[arg-type]
    assert time.monotonic() - started < 1.0
    assert (fast.name, fast.lag, stuck.name, stuck.members, stuck.lag) == ("fast", 3, "stuck", 1, None)
    assert stuck.error == "not described within 1 s" and errors == ["groups: 1 of 2 not described within 1 s"]


# ---------------------------------------------------------------- a real cluster

POLICY = """version = 1

[identities]
admin = ["admin"]

[[rule]]
effect = "allow"
roles = ["admin"]
actions = ["*"]
resources = ["*"]
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: Any) -> Any:
    c = DataPlaneCluster(str(tmp_path_factory.mktemp("view")), spus=3, tls=True, clients=("admin", "eve"),
                         heartbeat_timeout_ms=1500,
                         spu_args=("--rack", "zone-a", "--replica-lag-max-ms", "2000", "--heartbeat-interval-ms",
                                   "200", "--replica-fetch-wait-ms", "200"))
    try:
        c.start()

        async def setup() -> None:
            async with c.client(as_="admin") as admin:
                await admin.admin.put_object("policy", "active", {"version": 1, "source": POLICY,
                                                                   "sha256": parse_policy(POLICY).sha256})
                await admin.create_topic("orders", 2, 3, {"retention_ms": "3600000"})
                producer = admin.producer("orders", acks="all")
                for i in range(20):
                    await producer.send(b"order-%d" % i, partition=i % 2)
                await producer.close()
                await wait_committed(admin, "orders")
                wasm = build_c(os.path.join(EXAMPLES, "json_field.c"))
                await admin.admin.put_object("smartmodule", "json_field@1", {
                    "wasm": base64.b64encode(wasm).decode(), "sha256": hashlib.sha256(wasm).hexdigest(),
                    "size": len(wasm)})
                consumer = admin.consumer("orders", group="billing", start=Offset.beginning(), auto_commit=False)
                got: list[Any] = []
                await wait_until(lambda: _poll(consumer, got, 1), WAIT_S, "the group to hand out records")
                await consumer.commit({0: 7, 1: 7})
                await consumer.close()
            async with c.client(as_="eve") as eve:
                try:
                    await eve.cluster_status()
                except Exception:  # noqa: BLE001 - the denial is the point; it is audited
                    pass
        run_async(setup)
        yield c
    finally:
        c.close()


async def _poll(consumer: Any, got: list[Any], n: int) -> bool:
    got.extend(await consumer.poll(0.2))
    return len(got) >= n


def test_view_equals_the_clients_own_answers(cluster: DataPlaneCluster) -> None:
    async def body() -> None:
        async with cluster.client(as_="admin") as client:
            view = await wait_until(lambda: _view_with_denial(client), WAIT_S, "eve's denial to reach _audit")
            rows = await client.partition_list("orders")
            described = await client.group_describe("billing")
        assert view.errors == ()
        assert [(s.id, s.leader, s.reachable) for s in view.scs] == [(1, True, True)] and view.leader_sc == 1
        assert [(s.id, s.alive, s.rack, s.address) for s in view.spus] == [
            (i, True, "zone-a", cluster.spus[i].address) for i in (1, 2, 3)]
        assert view.racks == ("zone-a",)
        orders = {p.partition: p for p in view.partitions if p.topic == "orders"}
        for r in rows:
            p = orders[r["partition"]]
            assert (p.leader, list(p.replicas), list(p.isr), p.high_watermark, p.log_end_offset, p.log_start_offset,
                    p.lag_max, p.health) == (r["leader"], r["replicas"], r["isr"], r["high_watermark"],
                                             r["log_end_offset"], r["log_start_offset"], r["lag"], HEALTH_OK)
            leader_log = next(x for x in r["replica_logs"] if x["spu"] == r["leader"])
            assert p.size_bytes == leader_log["size_bytes"] > 0
        (t,) = [t for t in view.topics if t.name == "orders"]
        assert (t.partitions, t.replication_factor, t.records, t.internal, t.config) == (
            2, 3, 20, False, {"retention_ms": "3600000"})
        assert t.size_bytes == sum(p.size_bytes or 0 for p in orders.values()) and t.in_records_per_s is None
        assert {x.name for x in view.topics if x.internal} >= {"_audit", "_consumer_offsets"}
        assert sum(s.replicas for s in view.spus) == sum(len(p.replicas) for p in view.partitions)
        assert sum(s.leaders for s in view.spus) == sum(1 for p in view.partitions if p.leader is not None)
        (g,) = [g for g in view.groups if g.name == "billing"]
        assert (g.members, g.coordinator, g.lag) == (0, described.coordinator, described.total_lag)
        assert [(p.topic, p.partition, p.committed, p.high_watermark, p.lag) for p in g.partitions] == [
            (p.topic, p.partition, p.committed, p.log_end, p.lag) for p in described.partitions]
        assert sum(p.committed or 0 for p in g.partitions) == 14 and g.lag == 6
        (m,) = view.modules
        assert (m.name, m.version, m.size_bytes) == ("json_field", "1", len(build_c(os.path.join(EXAMPLES,
                                                                                                 "json_field.c"))))
        assert view.policy == PolicyView(1, POLICY, True)
        d = next(d for d in view.denials if d.identity == "eve")
        assert (d.action, d.resource, d.node) == ("describe", "cluster", "sc-1") and d.ts_ms <= view.taken_at_ms
    run_async(body)


async def _view_with_denial(client: AsyncClient) -> ClusterView | None:
    view = await collect_view(client)
    return view if any(d.identity == "eve" for d in view.denials) else None


def test_rates_from_two_views(cluster: DataPlaneCluster) -> None:
    async def body() -> None:
        async with cluster.client(as_="admin") as client:
            first = await collect_view(client, groups=False, denials=False)
            producer = client.producer("orders", acks="all")
            for i in range(30):
                await producer.send(b"more-%d" % i, partition=i % 2)
            await producer.close()
            await wait_committed(client, "orders")
            second = await collect_view(client, first, groups=False, denials=False)
        (t,) = [t for t in second.topics if t.name == "orders"]
        dt_s = (second.taken_at_ms - first.taken_at_ms) / 1000
        assert t.in_records_per_s == pytest.approx(30 / dt_s)
        assert second.groups == () and second.denials == ()
    run_async(body)


def test_a_part_denied_is_an_error_line_not_a_failure(cluster: DataPlaneCluster) -> None:
    """eve may describe nothing: the view comes back with what she may see (no topics) and one
    line per part refused."""
    async def body() -> None:
        async with cluster.client(as_="eve") as client:
            view = await collect_view(client)
        assert view.topics == () and view.partitions == () and view.scs == ()
        # every client may list SPUs (whether each is alive is another test's: a heartbeat missed
        # on a loaded machine must not fail this one)
        assert [s.id for s in view.spus] == [1, 2, 3]
        assert any(e.startswith("cluster status: ") and "eve" in e for e in view.errors)
        assert any(e.startswith("policy: ") for e in view.errors) and view.policy.in_force is None
    run_async(body)


def test_no_sc_reachable_raises() -> None:
    async def body() -> None:
        async with AsyncClient(f"127.0.0.1:{free_port()}", timeout_s=2) as client:
            started = time.monotonic()
            with pytest.raises(ClusterUnavailableError):
                await collect_view(client)
            assert time.monotonic() - started < 10
    run_async(body)


def test_a_dead_spu_and_its_partitions(cluster: DataPlaneCluster) -> None:
    """Runs last: SPU 3 killed, the view shows it down, every partition with a replica on it
    under-replicated (offline if it was the only replica), and the rest of the cluster ok."""
    async def body() -> None:
        async with cluster.client(as_="admin") as client:
            cluster.kill_spu(3)

            def expected(p: PartitionView) -> str:
                # _audit may have one replica (the SC creates it when the first SPUs register)
                return HEALTH_OFFLINE if p.replicas == (3,) else HEALTH_UNDER_REPLICATED

            async def shows_it() -> ClusterView | None:
                view = await collect_view(client, groups=False, denials=False)
                spu3 = next(s for s in view.spus if s.id == 3)
                placed = [p for p in view.partitions if 3 in p.replicas]
                return view if not spu3.alive and placed and all(p.health == expected(p) for p in placed) else None
            view = await wait_until(shows_it, WAIT_S, "SPU 3 down and its partitions under-replicated")
        assert [s.alive for s in view.spus] == [True, True, False]
        assert all(p.health == HEALTH_OK for p in view.partitions if 3 not in p.replicas)
        assert any(p.topic == "orders" and p.health == HEALTH_UNDER_REPLICATED for p in view.partitions)
        assert view.count(HEALTH_OFFLINE) == sum(1 for p in view.partitions if p.replicas == (3,))
    run_async(body)
