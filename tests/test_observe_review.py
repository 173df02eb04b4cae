"""Review of issue 21's metrics under churn (reviewer K): a scrape runs in the listener's worker
thread while the node's loop adds and removes partitions, so every collector must read the
loop's dicts through atomic copies; a deleted topic's series must go with it (no stale gauges).

One real SC and one real SPU (plaintext, 127.0.0.1, ports from the OS), both with --metrics; a
thread here scrapes both /metrics back to back while topics are created, produced to and
deleted. Any answer but 200, or a body prometheus_client cannot parse, is a failure.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Any

import pytest
from dataplane_cluster import DataPlaneCluster, run_async, wait_until
from metrics_scrape import Samples, get, ready_metrics
from kolk.observe.http import HttpRequest
from kolk.observe.metrics_server import MetricsHandler
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

ROUNDS = 10
PARTITIONS = 16
WAIT_S = 30.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: Any) -> Any:
    root = str(tmp_path_factory.mktemp("observe_review"))
    c = DataPlaneCluster(root, spus=1,
                         sc_args=("--metrics", "127.0.0.1:0", "--ready-file", os.path.join(root, "sc.ready")),
                         spu_args=("--metrics", "127.0.0.1:0"))
    try:
        c.start()
        yield c
    finally:
        c.close()


class Scraper(threading.Thread):
    """GETs each address's /metrics, one after another, until stopped; keeps every failure."""

    def __init__(self, addresses: list[str]) -> None:
        super().__init__(daemon=True)
        self.addresses = addresses
        self.stop = threading.Event()
        self.scrapes = 0
        self.failures: list[str] = []

    def run(self) -> None:
        while not self.stop.is_set():
            for address in self.addresses:
                try:
                    status, body = get(address, "/metrics")
                    if status != 200:
                        self.failures.append(f"{address}: {status} {body[:200]!r}")
                        continue
                    for _ in text_string_to_metric_families(body):
                        pass
                    self.scrapes += 1
                except Exception as e:  # noqa: BLE001 - every failure is reported by the test
                    self.failures.append(f"{address}: {type(e).__name__}: {e}")


def _topics_in(address: str) -> set[str]:
    status, body = get(address, "/metrics")
    assert status == 200, f"/metrics of {address} answered {status}: {body[:200]}"
    return {dict(labels).get("topic", "") for (_, labels) in Samples(body).samples} - {""}


def test_scrapes_during_topic_churn_all_answer_and_deleted_topics_leave_no_series(cluster: DataPlaneCluster) -> None:
    spu = ready_metrics(cluster.spus[1].ready_file)
    sc = ready_metrics(os.path.join(cluster.root, "sc.ready"))
    scraper = Scraper([spu, sc])
    scraper.start()
    names = [f"churn{i}" for i in range(ROUNDS)]

    async def churn() -> None:
        client = cluster.client()
        try:
            for name in names:
                await client.create_topic(name, PARTITIONS, 1)
                producer = client.producer(name, acks="leader")
                try:
                    sent = [await producer.send(b"r-%d" % p, partition=p) for p in range(PARTITIONS)]
                    await asyncio.gather(*sent)
                finally:
                    await producer.close()
                # Its series are there (traffic, offsets, leader) before it goes.
                await wait_until(lambda name=name: name in _topics_in(spu), WAIT_S, f"{name}'s series on /metrics")
                await client.delete_topic(name)
            await wait_until(lambda: not set(names) & _topics_in(spu), WAIT_S,
                             lambda: f"the deleted topics' series to leave /metrics (left: "
                                     f"{sorted(set(names) & _topics_in(spu))})")
        finally:
            await client.close()

    try:
        run_async(churn)
    finally:
        scraper.stop.set()
        scraper.join(WAIT_S)
    assert not scraper.is_alive(), "the scraper did not stop"
    assert scraper.failures == [], f"{len(scraper.failures)} failed scrapes, first: {scraper.failures[:3]}"
    assert scraper.scrapes >= 2 * ROUNDS, f"only {scraper.scrapes} scrapes ran during the churn"


# ---------------------------------------------------------------- /metrics renders under a scrape flood


class _Counted(Collector):
    """A collector that counts its collections; ``cost_s`` of CPU each (an SPU with thousands
    of partitions renders for ~200 ms)."""

    def __init__(self, cost_s: float) -> None:
        self.cost_s = cost_s
        self.collections = 0

    def collect(self) -> Any:
        self.collections += 1
        end = time.perf_counter() + self.cost_s
        while time.perf_counter() < end:
            pass
        yield GaugeMetricFamily("kolk_review_collections", "Collections so far", value=self.collections)


def _scrapes(collector: _Counted, n: int) -> list[bytes]:
    registry = CollectorRegistry()
    registry.register(collector)
    handler = MetricsHandler(registry, lambda: (True, ""))
    request = HttpRequest("GET", "/metrics", {}, {}, "127.0.0.1:1", None)

    async def go() -> list[bytes]:
        out = []
        for _ in range(n):
            r = await handler(request)
            assert r.status == 200, r
            out.append(r.body)
        return out
    return asyncio.run(go())


def test_back_to_back_scrapes_of_an_expensive_registry_reuse_its_render() -> None:
    c = _Counted(cost_s=0.05)  # > REUSE_FROM_S: reused for 4 x 50 ms after it
    bodies = _scrapes(c, 5)
    assert c.collections == 1, f"{c.collections} renders for 5 back-to-back scrapes (1 expected)"
    assert len(set(bodies)) == 1


def test_scrapes_of_a_cheap_registry_always_render_afresh() -> None:
    c = _Counted(cost_s=0.0)
    bodies = _scrapes(c, 5)
    assert c.collections == 5, f"{c.collections} renders for 5 scrapes of a cheap registry (5 expected)"
    assert b"kolk_review_collections 5.0" in bodies[-1]
