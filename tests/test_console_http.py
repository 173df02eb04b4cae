"""The SC's web console over plain Python HTTP(S) clients (docs/console.md).

First its pure parts (the path table, the cut by policy, the collector that only works while
someone looks), then a real TLS cluster (one SC, two SPUs, a policy): every page and every JSON
answer as ``admin``, cross-checked with the client's own calls; 404 and 400; a client without a
certificate or with one of another CA refused at the handshake; ``alice``, allowed topics ``a*``
only, sees a1 and not b1, gets 403 on b1, and that 403 is in ``_audit``."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import socket
import ssl
import subprocess
import sys
from dataclasses import replace
from typing import Any

import pytest

from console_cluster import A1_RECORDS, B1_RECORDS, COMMITTED, WAIT_S, Tables, console_cluster, fill
from dataplane_cluster import DataPlaneCluster, read_all, run_async, wait_until
from jepsen.cluster import SECRET, free_port
from kolk.client.cluster_view import (ClusterView, DenialView, GroupView, ModuleView, PolicyView, ScView, SpuView,
                                      TopicView)
from kolk.console import routes as R
from kolk.console.access import for_viewer, visible
from kolk.console.collector import ViewCollector, rate_base
from kolk.security.certs import create_ca, issue, write_pair
from kolk.security.policy import parse_policy

# ---------------------------------------------------------------- pure: paths


@pytest.mark.parametrize("path,expected", [
    ("/", R.Route(R.OVERVIEW)), ("/topics", R.Route(R.TOPICS)), ("/topics/", R.Route(R.TOPICS)),
    ("/topics/orders", R.Route(R.TOPIC, "orders")), ("/smartmodules", R.Route(R.SMARTMODULES)),
    ("/groups", R.Route(R.GROUPS)), ("/groups/billing-1", R.Route(R.GROUP, "billing-1")),
    ("/policy", R.Route(R.POLICY)), ("/api/v1/overview", R.Route(R.OVERVIEW, None, True)),
    ("/api/v1/topics", R.Route(R.TOPICS, None, True)), ("/api/v1/topics/a.b_c", R.Route(R.TOPIC, "a.b_c", True)),
    ("/api/v1/smartmodules", R.Route(R.SMARTMODULES, None, True)), ("/api/v1/groups", R.Route(R.GROUPS, None, True)),
    ("/api/v1/groups/g", R.Route(R.GROUP, "g", True)), ("/api/v1/policy", R.Route(R.POLICY, None, True)),
])
def test_pages_and_api_paths(path: str, expected: R.Route) -> None:
    assert R.route(path) == expected


@pytest.mark.parametrize("path", ["/nope", "/overview", "/topics/a/b", "/api/v1", "/api/v1/", "/api/v2/topics",
                                  "/api/v1/nope", "/favicon.ico", "/policy/x", "//topics"])
def test_unknown_paths_are_404(path: str) -> None:
    r = R.route(path)
    assert isinstance(r, R.RouteError) and r.status == 404 and path in r.message


@pytest.mark.parametrize("path,words", [
    ("/topics/bad name", "topic name 'bad name' is invalid"), ("/topics/..", "topic name '..' is invalid"),
    ("/topics/" + "t" * 201, "topic name"), ("/api/v1/topics/a$b", "topic name 'a$b' is invalid"),
    ("/groups/bad name", "group name 'bad name' is invalid"), ("/groups/" + "g" * 256, "more than 255"),
    ("/api/v1/groups/a%b", "group name 'a%b' is invalid"),
])
def test_bad_names_are_400_naming_the_fault(path: str, words: str) -> None:
    r = R.route(path)
    assert isinstance(r, R.RouteError) and r.status == 400 and words in r.message
    assert r.api == path.startswith("/api/")


# ---------------------------------------------------------------- pure: what a viewer sees

ALICE_POLICY = """version = 1

[identities]
admin = ["admin"]
node = ["admin"]
alice = ["reader"]

[[rule]]
effect = "allow"
roles = ["admin"]
actions = ["*"]
resources = ["*"]

[[rule]]
effect = "allow"
roles = ["reader"]
actions = ["describe", "consume"]
resources = ["topic:a*"]
"""


def _view() -> ClusterView:
    def topic(name: str) -> TopicView:
        return TopicView(name, 1, 1, 10, 1, None, {}, False)
    return ClusterView(1, (ScView(1, "h:1", True, True),), 1, (SpuView(1, "h:2", "r1", True, 2, 2),), ("r1",),
                       (topic("a1"), topic("b1")), (), (GroupView("ga", "empty", 0, 1, 0, ()),),
                       (ModuleView("m", "1", "filter", 10),), PolicyView(1, ALICE_POLICY, True),
                       (DenialView(1, "eve", "consume", "topic:a1", "spu-1", "no"),), ("one error",))


def test_a_viewer_sees_only_what_the_policy_lets_it_describe() -> None:
    decide = parse_policy(ALICE_POLICY).decide
    alice = visible(_view(), "alice", for_viewer(lambda *a: decide(*a).allowed, "alice", "127.0.0.1"))
    assert [t.name for t in alice.view.topics] == ["a1"]
    assert (alice.view.groups, alice.view.modules, alice.view.scs, alice.view.spus, alice.view.denials,
            alice.view.errors) == ((), (), (), (), (), ())
    assert alice.view.policy == PolicyView(1, None, True) and not (alice.cluster or alice.policy_source
                                                                  or alice.denials)
    admin = visible(_view(), "admin", for_viewer(lambda *a: decide(*a).allowed, "admin", "127.0.0.1"))
    assert admin.view == _view() and admin.cluster and admin.policy_source and admin.denials


def test_every_value_is_escaped() -> None:
    """Policy source, config values and denial reasons are anyone's text: never markup."""
    from kolk.console import pages

    evil = "<script>alert(1)</script>"
    view = replace(_view(), policy=PolicyView(1, evil, True),
                   topics=(TopicView("a1", 1, 1, 10, 1, None, {"note": evil}, False),),
                   denials=(DenialView(1, "eve", "consume", "topic:a1", "spu-1", evil),))
    shown = visible(view, "admin", lambda action, resource: True)
    for html in (pages.policy(shown), pages.topic(shown, view.topics[0])):
        assert evil not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
        assert html.count("<script>") == 1  # the page's own refresh script only


# ---------------------------------------------------------------- pure: the collector


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_collector_works_only_while_someone_looks() -> None:
    """Nothing is collected before anyone looks; a look collects at once and then every period;
    once nobody has looked for idle_after_s, collecting stops until the next look."""
    async def body() -> None:
        clock, made = Clock(), []

        async def collect(previous: ClusterView | None) -> ClusterView:
            made.append(previous)
            return _view()
        c = ViewCollector(collect, every_s=0.001, idle_after_s=60, stale_after_s=10, clock=clock)
        try:
            await asyncio.sleep(0.01)
            assert c.collections == 0
            assert await c.current() == _view() and made[0] is None
            await wait_until(lambda: c.collections >= 3, 5, "collections while someone looks")
            # rates against the previous, recent view (kept without its partitions, groups and denials)
            assert made[-1] == replace(_view(), partitions=(), groups=(), denials=())
            clock.now = 61.0
            stopped = await wait_until(lambda: c.idle and c.collections, 5, "the collector to idle")
            await asyncio.sleep(0.02)
            assert c.collections == stopped
            clock.now = 200.0  # the view is stale now: a look waits for a fresh one, without old rates
            assert await c.current() == _view() and c.collections > stopped and made[stopped] is None
        finally:
            await c.close()
    run_async(body)


def test_rates_are_taken_over_the_window() -> None:
    views = [replace(_view(), taken_at_ms=t * 1000) for t in (0, 2, 4, 12, 14)]
    history = [(v.taken_at_ms / 1000, v) for v in views]
    assert rate_base(history, 16.0, 10.0) is views[2]  # the newest at least 10 s old
    assert rate_base(history[3:], 16.0, 10.0) is views[3]  # none that old yet: the oldest kept
    assert rate_base([], 16.0, 10.0) is None


def test_no_view_is_a_503_saying_why() -> None:
    """The collection fails (no SC answers): the collector says why, and a page is 503 with
    that reason and a Retry-After, never an exception."""
    async def body() -> None:
        from kolk.console.access import OPEN
        from kolk.console.app import Console
        from kolk.observe.http import HttpRequest
        from kolk.protocol.errors import ClusterUnavailableError

        async def collect(previous: ClusterView | None) -> ClusterView:
            raise ClusterUnavailableError("no SC answered at 127.0.0.1:1")
        c = ViewCollector(collect, every_s=0.001)
        try:
            assert await c.current() is None and c.error == "no SC answered at 127.0.0.1:1"
            r = await Console(c, OPEN).handle(HttpRequest("GET", "/api/v1/topics", peer="127.0.0.1:5"))
            assert r.status == 503 and ("Retry-After", "2") in r.headers
            assert json.loads(r.body)["error"].startswith("no view of the cluster yet: no SC answered at 127.0.0.1:1")
        finally:
            await c.close()
    run_async(body)


# ---------------------------------------------------------------- kolk sc --console


def _sc_with_console(tmp: str, console: str) -> subprocess.CompletedProcess[str]:
    data = os.path.join(tmp, "sc")
    return subprocess.run([sys.executable, "-m", "kolk", "sc", "--id", "1", "--data-dir", data, "--raft",
                           f"127.0.0.1:{free_port()}", "--admin", f"127.0.0.1:{free_port()}", "--console", console],
                          capture_output=True, text=True, timeout=WAIT_S, env=dict(os.environ, KOLK_CLUSTER_SECRET=SECRET))


def test_a_bad_console_address_is_one_line_naming_the_flag(tmp_path: Any) -> None:
    r = _sc_with_console(str(tmp_path), "nonsense")
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("kolk sc: --console: invalid address 'nonsense': expected HOST:PORT"), r.stderr


def test_a_taken_console_port_stops_the_sc_before_it_starts(tmp_path: Any) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        address = "127.0.0.1:%d" % taken.getsockname()[1]
        r = _sc_with_console(str(tmp_path), address)
    assert (r.returncode, r.stderr) == (1, f"kolk sc: cannot listen for console on {address}: address already in use\n")
    assert not os.path.exists(os.path.join(str(tmp_path), "sc"))  # nothing left behind


# ---------------------------------------------------------------- a real TLS cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: Any) -> Any:
    c, address = console_cluster(str(tmp_path_factory.mktemp("console-tls")), tls=True,
                                 clients=("admin", "alice"))
    try:
        async def setup() -> None:
            async with c.client(as_="admin") as admin:
                await admin.admin.put_object("policy", "active", {"version": 1, "source": ALICE_POLICY,
                                                                   "sha256": parse_policy(ALICE_POLICY).sha256})
                await fill(admin)

                # The SC creates _audit within a second of the first SPU joining (a TLS
                # cluster): the pages below list it, so the scenario starts once it exists.
                async def audit_topic() -> bool:
                    return await admin.admin.get_object("topic", "_audit") is not None
                await wait_until(audit_topic, WAIT_S, "the SC to create _audit")
        run_async(setup)
        c.console = address  # type: ignore[attr-defined]
        yield c
    finally:
        c.close()


def _context(c: DataPlaneCluster, who: str | None, cert: tuple[str, str] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=c.pki["admin"]["ca"])
    if who is not None:
        ctx.load_cert_chain(c.pki[who]["cert"], c.pki[who]["key"])
    elif cert is not None:
        ctx.load_cert_chain(*cert)
    return ctx


def get(c: DataPlaneCluster, path: str, who: str | None = "admin", method: str = "GET",
        ctx: ssl.SSLContext | None = None) -> tuple[int, dict[str, str], bytes]:
    host, port = c.console.rsplit(":", 1)  # type: ignore[attr-defined]
    conn = http.client.HTTPSConnection(host, int(port), context=ctx or _context(c, who), timeout=WAIT_S)
    try:
        conn.request(method, path)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def api(c: DataPlaneCluster, path: str, who: str = "admin") -> Any:
    status, headers, body = get(c, "/api/v1" + path, who)
    assert status == 200 and headers["content-type"] == "application/json", body[:300]
    return json.loads(body)


def page(c: DataPlaneCluster, path: str, who: str = "admin") -> Tables:
    status, headers, body = get(c, path, who)
    assert status == 200 and headers["content-type"].startswith("text/html"), body[:300]
    assert "script-src 'sha256-" in headers["content-security-policy"]
    return Tables(body.decode())


def test_every_page_shows_what_the_client_sees(cluster: DataPlaneCluster) -> None:
    async def truth() -> tuple[list[dict[str, Any]], Any, dict[str, Any]]:
        async with cluster.client(as_="admin") as client:
            return await client.partition_list("a1"), await client.group_describe("ga"), await client.cluster_status()
    rows, group, status = run_async(truth)

    overview = page(cluster, "/")
    assert overview.ids["viewer"] == "admin"
    assert overview.tables["scs"]["1"]["role"] == "leader" and overview.ids["card-spus"].startswith("2 of 2")
    assert {k: v["address"] for k, v in overview.tables["spus"].items()} == {
        str(u["id"]): u["public_address"] for u in status["spus"]}
    assert overview.ids["card-offline"].startswith("0")

    topics = page(cluster, "/topics").tables["topics"]
    assert topics["a1"]["records"] == str(A1_RECORDS) and topics["b1"]["records"] == str(B1_RECORDS)
    assert (topics["a1"]["partitions"], topics["a1"]["rf"]) == ("2", "2") and "_audit" in topics

    a1 = page(cluster, "/topics/a1")
    for r in rows:
        got = a1.tables["partitions"][str(r["partition"])]
        assert (got["leader"], got["isr"], got["hw"], got["leo"], got["start"]) == (
            str(r["leader"]), ",".join(map(str, r["isr"])), str(r["high_watermark"]), str(r["log_end_offset"]),
            str(r["log_start_offset"])), got
        assert got["health"] == "ok" and int(got["size"]) > 0
    assert "retention_ms" in a1.ids["config"]

    ga = page(cluster, "/groups/ga")
    assert {k: (v["committed"], v["hw"], v["lag"]) for k, v in ga.tables["group-partitions"].items()} == {
        f"{p.topic}-{p.partition}": (str(p.committed), str(p.log_end), str(p.lag)) for p in group.partitions}
    assert page(cluster, "/groups").tables["groups"]["ga"]["lag"] == str(group.total_lag) == "3"
    assert page(cluster, "/smartmodules").tables["smartmodules"]["contains@1"]["name"] == "contains"
    policy = page(cluster, "/policy")
    assert policy.ids["policy-version"] == "1" and 'alice = ["reader"]' in policy.ids["policy-source"]
    assert "denials" in policy.tables or "denials-empty" in policy.ids  # TLS: the audit log exists


def test_the_json_api_serves_the_same_data(cluster: DataPlaneCluster) -> None:
    async def truth() -> tuple[list[dict[str, Any]], Any]:
        async with cluster.client(as_="admin") as client:
            return await client.partition_list("a1"), await client.group_describe("ga")
    rows, group = run_async(truth)
    overview = api(cluster, "/overview")
    assert (overview["leader_sc"], overview["spus_alive"], overview["offline"], overview["hidden"]) == (1, 2, 0, [])
    topics = {t["name"]: t for t in api(cluster, "/topics")["topics"]}
    assert (topics["a1"]["records"], topics["b1"]["records"], topics["a1"]["config"]) == (
        A1_RECORDS, B1_RECORDS, {"retention_ms": "3600000"})
    a1 = api(cluster, "/topics/a1")
    assert [(p["partition"], p["leader"], p["isr"], p["high_watermark"], p["log_end_offset"]) for p in a1["partitions"]] \
        == [(r["partition"], r["leader"], r["isr"], r["high_watermark"], r["log_end_offset"]) for r in rows]
    (ga,) = [g for g in api(cluster, "/groups")["groups"] if g["name"] == "ga"]
    assert ga["lag"] == group.total_lag and "partitions" not in ga
    detail = api(cluster, "/groups/ga")["group"]
    assert {(p["partition"], p["committed"]) for p in detail["partitions"]} == set(COMMITTED.items())
    assert [m["name"] for m in api(cluster, "/smartmodules")["smartmodules"]] == ["contains"]
    assert api(cluster, "/policy")["policy"] == {"version": 1, "source": ALICE_POLICY, "in_force": True}


def test_head_answers_without_a_body(cluster: DataPlaneCluster) -> None:
    status, headers, body = get(cluster, "/topics", method="HEAD")
    assert status == 200 and body == b"" and int(headers["content-length"]) > 0


def test_the_console_is_read_only(cluster: DataPlaneCluster) -> None:
    status, headers, body = get(cluster, "/topics/a1", method="DELETE")
    assert (status, headers["allow"]) == (405, "GET, HEAD") and b"method DELETE is not allowed" in body


@pytest.mark.parametrize("path,status,words", [
    ("/nope", 404, "no console page at /nope"), ("/topics/a1/x", 404, "no console page"),
    ("/api/v1/nope", 404, "no console page at /api/v1/nope"), ("/topics/zz9", 404, "no topic zz9 in the cluster"),
    ("/api/v1/groups/nobody", 404, "no consumer group nobody"),
    ("/topics/bad%20name", 400, "topic name 'bad name' is invalid"),
    ("/api/v1/groups/bad%24", 400, "group name 'bad$' is invalid"),
])
def test_errors_name_what_was_wrong(cluster: DataPlaneCluster, path: str, status: int, words: str) -> None:
    got, headers, body = get(cluster, path)
    assert got == status
    if path.startswith("/api/"):
        assert words in json.loads(body)["error"]
    else:
        assert words in Tables(body.decode()).ids["error"]


def test_clients_without_a_good_certificate_are_refused(cluster: DataPlaneCluster) -> None:
    d = os.path.join(cluster.root, "stranger")
    os.makedirs(d, exist_ok=True)
    other_ca, other_key = create_ca("another CA")
    stranger = write_pair(d, "stranger", *issue(other_ca, other_key, "stranger", kind="client"))
    for ctx in (_context(cluster, None), _context(cluster, None, stranger)):
        with pytest.raises((ssl.SSLError, ConnectionError)):
            get(cluster, "/", ctx=ctx)
    host, port = cluster.console.rsplit(":", 1)  # type: ignore[attr-defined]
    plain = http.client.HTTPConnection(host, int(port), timeout=WAIT_S)
    try:
        with pytest.raises((http.client.HTTPException, ConnectionError)):
            plain.request("GET", "/")
            plain.getresponse()
    finally:
        plain.close()


def test_alice_sees_only_her_topics_and_her_403_is_audited(cluster: DataPlaneCluster) -> None:
    topics = page(cluster, "/topics", "alice").tables["topics"]
    assert list(topics) == ["a1"]
    assert [t["name"] for t in api(cluster, "/topics", "alice")["topics"]] == ["a1"]
    assert page(cluster, "/topics/a1", "alice").tables["partitions"]["0"]["hw"] == str(A1_RECORDS // 2)
    overview = api(cluster, "/overview", "alice")
    assert overview["hidden"] == ["cluster", "policy_source", "denials"] and overview["spus"] == []
    assert api(cluster, "/groups", "alice")["groups"] == []
    assert api(cluster, "/policy", "alice")["policy"]["source"] is None

    status, _, body = get(cluster, "/topics/b1", "alice")
    assert status == 403
    assert "alice" in Tables(body.decode()).ids["error"] and "topic:b1" in Tables(body.decode()).ids["error"]
    status, _, body = get(cluster, "/api/v1/groups/ga", "alice")
    assert status == 403 and "group:ga" in json.loads(body)["error"]
    status, _, _ = get(cluster, "/topics/zz-missing", "alice")
    assert status == 403  # as for b1: a refusal says nothing of whether the topic exists

    async def audited() -> list[dict[str, Any]]:
        async with cluster.client(as_="admin") as client:
            async def found() -> list[dict[str, Any]] | None:
                events = [json.loads(r.value) for r in await read_all(client, "_audit")]
                hits = [e for e in events if e.get("identity") == "alice" and e.get("decision") == "deny"
                        and e.get("resource") in ("topic:b1", "group:ga")]
                return hits if len(hits) >= 2 else None
            return await wait_until(found, WAIT_S, "alice's console denials to reach _audit")
    hits = run_async(audited)
    assert {(e["action"], e["resource"]) for e in hits} >= {("describe", "topic:b1"), ("describe", "group:ga")}
    assert all(e["process"] == "sc-1" for e in hits)


    async def shown_to_admin() -> bool:  # the console's own policy page lists the denial too
        denials = (await asyncio.to_thread(api, cluster, "/policy"))["denials"]
        return any((d["identity"], d["action"], d["resource"]) == ("alice", "describe", "topic:b1") for d in denials)
    run_async(lambda: wait_until(shown_to_admin, WAIT_S, "alice's denial on the console's policy page", 0.2))
