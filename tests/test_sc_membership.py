"""`kolk cluster sc add|remove` on real SC processes (docs/operations.md "Adding and removing
SCs"): a 4th SC joins and replicates, one leaves through the CLI while a writer commits
throughout, refusals (majority, concurrent change, unknown or duplicate id, bad addresses), and
a removed SC that stops serving writes and no longer counts toward the majority.

One 3-SC cluster serves the whole module, and its tests run in file order: the membership
each test starts from is the one the test before left (said in each docstring)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jepsen.cluster import SECRET, ScCluster, ScProcess, free_port, wait_for  # noqa: E402
from kolk.client.admin import AdminClient, run  # noqa: E402
from kolk.protocol.errors import (AlreadyExistsError, InUseError, InvalidRequestError,  # noqa: E402
                                  NotEnoughReplicasError, NotFoundError, PermissionDeniedError)
from kolk.protocol.node_auth import NodeCredential  # noqa: E402
from kolk.metadata.sc_ops import ScMember  # noqa: E402
from kolk.sc.sc_members import Refusal, majority, plan_add, plan_remove  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WAIT_S = 40


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    # SPUs are only registered (no processes): a long heartbeat timeout keeps them alive, so
    # createTopic can place replicas for the whole module.
    c = ScCluster(str(tmp_path_factory.mktemp("scm")), heartbeat_timeout_ms=250_000)
    c.start_all()
    try:
        wait_for(lambda: _leader(c), WAIT_S, lambda: "a leader\n" + c.logs())

        async def register() -> None:
            a = AdminClient(c.admin_addresses, timeout_s=WAIT_S, credential=NodeCredential("spu-1", SECRET))
            await a.register_spu(1, "127.0.0.1:9101")
        run(register)
        yield c
    finally:
        c.close()


def _status(address: str) -> dict:
    return run(lambda: AdminClient([address], timeout_s=3).cluster_status())


def _leader(c: ScCluster) -> ScProcess | None:
    """The live SC every live member names as leader, when they agree."""
    live = [n for n in c.nodes.values() if n.alive]
    statuses = [_status(n.admin) for n in live]
    leaders = {s["leader"] for s in statuses if s.get("member", True)}
    return c.node_by_admin(leaders.pop()) if len(leaders) == 1 and None not in leaders else None


def _client(c: ScCluster, ids: list[int] | None = None) -> AdminClient:
    addrs = [c.nodes[i].admin for i in (ids or list(c.nodes))]
    return AdminClient(addrs, timeout_s=WAIT_S)


def _member_ids(c: ScCluster, via: int) -> list[int]:
    return [s["id"] for s in _status(c.nodes[via].admin)["scs"]]


def kolk(*args: str, expect: int = 0) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "kolk", *args], capture_output=True, text=True, timeout=120,
                         cwd=ROOT, env=dict(os.environ, KOLK_SC=""))
    assert out.returncode == expect, (out.stdout, out.stderr)
    return out


def _start_joining(c: ScCluster, node_id: int) -> ScProcess:
    """Start SC ``node_id`` with --join, its --peer flags naming the current members."""
    members = [c.nodes[m["id"]] for m in _status(c.admin_addresses[0])["scs"]]
    n = ScProcess(node_id, f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}",
                  os.path.join(c.root, f"sc{node_id}"), os.path.join(c.root, f"sc{node_id}.log"))
    c.nodes[node_id] = n  # closed with the cluster, by pid
    _start(c, n, members, "--join")
    return n


def _start(c: ScCluster, n: ScProcess, peers: list[ScProcess], *extra: str) -> None:
    """Start SC ``n`` with exactly these --peer flags."""
    args = [sys.executable, "-m", "kolk", "sc", "--id", str(n.node_id), "--data-dir", n.data_dir, "--raft", n.raft,
            "--admin", n.admin, "--heartbeat-timeout-ms", str(c.heartbeat_timeout_ms), *extra]
    for m in peers:
        args += ["--peer", f"{m.node_id}={m.raft}/{m.admin}"]
    with open(n.log_path, "ab") as log:
        n.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                  env=dict(os.environ, KOLK_CLUSTER_SECRET=SECRET))
    wait_for(lambda: _status(n.admin), WAIT_S, lambda: f"SC {n.node_id} to answer\n" + c.logs())


class Writer:
    """Creates topics one after another on its own thread until stopped; every create must be
    acknowledged (an error is kept and fails the test)."""

    def __init__(self, c: ScCluster, ids: list[int], prefix: str) -> None:
        self.addresses = [c.nodes[i].admin for i in ids]
        self.prefix = prefix
        self.done: list[str] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._loop()), daemon=True)

    async def _loop(self) -> None:
        client = AdminClient(self.addresses, timeout_s=WAIT_S)
        try:
            while not self._stop.is_set():
                name = f"{self.prefix}-{len(self.done)}"
                try:
                    await client.create_topic(name, 1, 1)
                except Exception as e:  # noqa: BLE001 - every failure is a test failure
                    self.errors.append(f"{name}: {e!r}")
                    return
                self.done.append(name)
        finally:
            await client.close()

    def __enter__(self) -> "Writer":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=WAIT_S * 2)

    def wait_more(self, n: int) -> None:
        start = len(self.done)
        wait_for(lambda: self.errors or len(self.done) >= start + n, WAIT_S, f"{n} more writes")
        assert not self.errors, self.errors


# ---------------------------------------------------------------- the rule, property-tested


_groups = st.sets(st.integers(1, 9), min_size=1, max_size=7).map(
    lambda ids: tuple(ScMember(i, f"10.0.0.{i}:7000", f"10.0.0.{i}:9003") for i in sorted(ids)))


@settings(max_examples=100, deadline=None)
@given(_groups, st.sets(st.integers(1, 9)), st.integers(1, 9))
def test_remove_never_leaves_a_group_without_a_reachable_majority(members, connected, victim) -> None:
    try:
        rest = plan_remove(members, victim, frozenset(connected))
    except Refusal as e:
        assert e.code in ("notFound", "invalidArgument", "notEnoughReplicas") and "\n" not in e.message
        return
    assert victim in {m.id for m in members} and rest and all(m.id != victim for m in rest)
    assert len({m.id for m in rest} & connected) >= majority(len(rest))


@settings(max_examples=100, deadline=None)
@given(_groups, st.sets(st.integers(1, 9)), st.integers(1, 9))
def test_add_never_needs_more_than_the_reachable_scs(members, connected, new_id) -> None:
    new = ScMember(new_id, f"10.0.1.{new_id}:7000", f"10.0.1.{new_id}:9003")
    try:
        after = plan_add(members, new, frozenset(connected))
    except Refusal as e:
        assert e.code in ("alreadyExists", "limitExceeded", "notEnoughReplicas") and "\n" not in e.message
        return
    assert new in after and len(after) == len(members) + 1 <= 7
    assert len({m.id for m in members} & connected) + 1 >= majority(len(after))


def test_three_to_four_with_one_down_is_refused_and_with_all_up_allowed() -> None:
    three = tuple(ScMember(i, f"10.0.0.{i}:7000", f"10.0.0.{i}:9003") for i in (1, 2, 3))
    four = ScMember(4, "10.0.0.4:7000", "10.0.0.4:9003")
    assert len(plan_add(three, four, frozenset({1, 2, 3}))) == 4
    assert len(plan_add(three, four, frozenset({1, 2}))) == 4  # 2 + the new one = 3 of 4
    with pytest.raises(Refusal, match="would need 3 of 4 SCs to commit, but only 2"):
        plan_add(three, four, frozenset({1}))


# ---------------------------------------------------------------- refusals (3 members)


def test_remove_unknown_id_is_refused(cluster: ScCluster) -> None:
    with pytest.raises(NotFoundError, match=r"^SC 9 is not a member \(members: 1, 2, 3\)$"):
        run(lambda: _client(cluster).remove_sc(9))


def test_add_duplicate_id_is_refused(cluster: ScCluster) -> None:
    with pytest.raises(AlreadyExistsError, match=r"^SC 2 is already a member \(raft 127\.0\.0\.1:\d+, admin "):
        run(lambda: _client(cluster).add_sc(2, f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"))


def test_add_with_a_members_raft_address_is_refused(cluster: ScCluster) -> None:
    raft = cluster.nodes[1].raft
    with pytest.raises(AlreadyExistsError, match=rf"^raft address {raft} is already SC 1's$"):
        run(lambda: _client(cluster).add_sc(7, raft, f"127.0.0.1:{free_port()}"))


@pytest.mark.parametrize("raft, admin, field", [
    ("no-port", "127.0.0.1:9", "raft address"),
    ("127.0.0.1:0", "127.0.0.1:9", "raft address"),
    ("127.0.0.1:9", "127.0.0.1:99999", "admin address"),
    ("127.0.0.1:9", ":9", "admin address"),
])
def test_add_with_a_bad_address_is_refused(cluster: ScCluster, raft: str, admin: str, field: str) -> None:
    bad = raft if field == "raft address" else admin
    with pytest.raises(InvalidRequestError, match=rf"^SC 7: {field} '{bad}' must be host:port$"):
        run(lambda: _client(cluster).add_sc(7, raft, admin))


def test_add_of_an_sc_that_is_not_running_is_refused(cluster: ScCluster) -> None:
    raft = f"127.0.0.1:{free_port()}"
    with pytest.raises(NotEnoughReplicasError, match=rf"^SC 7 is not reachable on its Raft address {raft}: "
                                                      r"connection refused; start it"):
        run(lambda: _client(cluster).add_sc(7, raft, f"127.0.0.1:{free_port()}"))


def test_cli_refuses_a_bad_id_and_names_it(cluster: ScCluster) -> None:
    out = kolk("cluster", "sc", "remove", "zero", "--sc", cluster.nodes[1].admin, expect=2)
    assert out.stderr.splitlines()[-1] == ("kolk cluster sc remove: argument id: 'zero' is not a whole number "
                                           "(see kolk cluster sc remove --help)")
    out = kolk("cluster", "sc", "remove", "9", "--sc", cluster.nodes[1].admin, expect=1)
    assert out.stderr == "kolk cluster sc: SC 9 is not a member (members: 1, 2, 3)\n"


# ---------------------------------------------------------------- 3 -> 4 -> 3 under writes


def test_grow_to_four_then_remove_one_while_writing(cluster: ScCluster) -> None:
    """From {1, 2, 3}: SC 4 joins, is added through the CLI and replicates; a follower restarted
    with its old --peer flags learns SC 4 from the replicated list; then it is removed through
    the CLI; a writer commits throughout and every write is acknowledged. The
    removed SC says so and refuses writes; killed, with one more member down, the remaining
    two of three still commit. Leaves {the leader, one other, 4} with one of them down."""
    sc4 = _start_joining(cluster, 4)
    assert _status(sc4.admin)["member"] is False
    first_leader = _leader(cluster)
    assert first_leader is not None
    with Writer(cluster, [first_leader.node_id], "grow") as w:  # not through the SC restarted below
        w.wait_more(3)
        out = kolk("cluster", "sc", "add", "4", sc4.raft, sc4.admin, "--sc", cluster.nodes[1].admin)
        assert out.stdout.startswith("SC 4 added; SC members now: 1 (127.0.0.1:"), out.stdout
        w.wait_more(3)
        wait_for(lambda: _status(sc4.admin)["member"] and set(_member_ids(cluster, 4)) == {1, 2, 3, 4}, WAIT_S,
                 "SC 4 to list itself a member")
        run(lambda: _client(cluster, [4]).create_topic("after-add", 1, 1))
        assert "after-add" in {t["name"] for t in run(lambda: _client(cluster, [4]).list_topics())}

        leader = _leader(cluster)
        assert leader is not None
        gone = next(i for i in (1, 2, 3) if cluster.nodes[i].admin != leader.admin)
        # Restarted with its old --peer flags (no SC 4), it learns SC 4 from the replicated list.
        cluster.kill(gone)
        _start(cluster, cluster.nodes[gone], [cluster.nodes[i] for i in (1, 2, 3) if i != gone])
        wait_for(lambda: {(m["id"], m["admin"]) for m in _status(cluster.nodes[gone].admin)["scs"]} >= {(4, sc4.admin)},
                 WAIT_S, f"SC {gone}, restarted with stale flags, to list SC 4")
        out = kolk("cluster", "sc", "remove", str(gone), "--sc", leader.admin, "--json")
        assert '"members"' in out.stdout
        w.wait_more(3)
    assert not w.errors, w.errors
    rest = sorted({1, 2, 3, 4} - {gone})
    wait_for(lambda: _member_ids(cluster, leader.node_id) == rest, WAIT_S, "the leader to list 3 members")
    removed = cluster.nodes[gone]
    wait_for(lambda: _status(removed.admin)["member"] is False, WAIT_S, f"SC {gone} to know it was removed")
    # It refuses writes (notLeader, naming the leader it knew): a client asking it follows to a member.
    via_removed = AdminClient([removed.admin], timeout_s=WAIT_S)
    run(lambda: via_removed.create_topic("via-removed", 1, 1))
    assert via_removed.addresses == [removed.admin, leader.admin]
    assert not _status(removed.admin)["member"]
    with open(removed.log_path) as f:
        assert f"SC {gone} was removed from the SC group" in f.read()

    # The removed SC no longer counts: killed, and one member more down, 2 of the 3 commit.
    cluster.kill(gone)
    other = next(i for i in rest if i != leader.node_id)
    cluster.kill(other)
    live = [i for i in rest if i != other]
    run(lambda: _client(cluster, live).create_topic("two-of-three", 1, 1))
    assert "two-of-three" in {t["name"] for t in run(lambda: _client(cluster, live).list_topics())}


# ---------------------------------------------------------------- refusals (one member down)


def test_remove_refused_when_it_would_lose_the_majority(cluster: ScCluster) -> None:
    """From 3 members with one down: removing a live one would leave 2 needing 2, with 1 up."""
    members = _status(next(n.admin for n in cluster.nodes.values() if n.alive))["scs"]
    down = [m["id"] for m in members if not cluster.nodes[m["id"]].alive]
    live = [m["id"] for m in members if cluster.nodes[m["id"]].alive]
    leader = _leader(cluster)
    assert len(down) == 1 and leader is not None
    victim = next(i for i in live if i != leader.node_id)
    with pytest.raises(NotEnoughReplicasError, match=rf"^removing SC {victim} would leave 2 SCs needing 2 to commit, "
                                                     rf"but only 1 of them are connected \(down: \[{down[0]}\]\)$"):
        run(lambda: _client(cluster, live).remove_sc(victim))


def test_a_second_change_while_one_is_in_flight_is_refused(cluster: ScCluster) -> None:
    """From 3 members with one down: removing the down one (allowed) and, at the same time,
    another: exactly one is refused as in flight. Leaves 2 members."""
    leader = _leader(cluster)
    assert leader is not None
    members = [m["id"] for m in _status(leader.admin)["scs"]]
    down = next(i for i in members if not cluster.nodes[i].alive)
    other = next(i for i in members if i not in (down, leader.node_id))

    async def both() -> list:
        a, b = AdminClient([leader.admin], timeout_s=WAIT_S), AdminClient([leader.admin], timeout_s=WAIT_S)
        await asyncio.gather(a.cluster_status(), b.cluster_status())  # both connected before racing
        try:
            return await asyncio.gather(a.remove_sc(down), b.remove_sc(other), return_exceptions=True)
        finally:
            await a.close()
            await b.close()

    first, second = run(both)
    assert isinstance(second, InUseError), (first, second)
    assert str(second) == f"another SC membership change is in flight (removing SC {down}); retry once it is done"
    assert [m["id"] for m in first] == sorted(set(members) - {down})


# ---------------------------------------------------------------- who may change the group


VIEWER_POLICY = """version = 1
[identities]
kolk-admin = ["operator"]
watcher = ["viewer"]
[[rule]]
effect = "allow"
roles = ["operator"]
actions = ["*"]
resources = ["cluster", "topic:*"]
[[rule]]
effect = "allow"
roles = ["viewer"]
actions = ["describe"]
resources = ["cluster", "topic:*"]
"""


def test_changes_are_denied_without_admin_on_cluster(tmp_path) -> None:
    """One SC with mutual TLS and a policy: `watcher` may describe the cluster but not change
    the SC group; `kolk-admin` may (its refusal is about the change itself, not the right)."""
    from dataplane_cluster import DataPlaneCluster

    c = DataPlaneCluster(str(tmp_path / "tls"), spus=0, tls=True, clients=("kolk-admin", "watcher"))
    try:
        c.start()

        def as_(who: str, *args: str, expect: int) -> str:
            p = c.pki[who]
            return kolk(*args, "--sc", c.sc_addresses[0], "--tls-ca", p["ca"], "--tls-cert", p["cert"],
                        "--tls-key", p["key"], expect=expect).stderr

        policy = tmp_path / "policy.toml"
        policy.write_text(VIEWER_POLICY)
        as_("kolk-admin", "policy", "apply", str(policy), expect=0)
        denied = as_("watcher", "cluster", "sc", "remove", "1", expect=1)
        assert denied.startswith("kolk cluster sc: watcher from 127.0.0.1 may not admin cluster: no rule allows "
                                 "admin on cluster for watcher (roles viewer)"), denied
        with pytest.raises(PermissionDeniedError, match="^watcher from 127.0.0.1 may not admin cluster: "):
            run(lambda: AdminClient(c.sc_addresses, timeout_s=WAIT_S, tls=c.tls_for("watcher")).add_sc(
                2, "127.0.0.1:9", "127.0.0.1:10"))
        with pytest.raises(InvalidRequestError, match="^SC 1 is the last member; a cluster needs at least one SC$"):
            run(lambda: AdminClient(c.sc_addresses, timeout_s=WAIT_S, tls=c.tls_for("kolk-admin")).remove_sc(1))
    finally:
        c.close()


def test_removing_the_leader_hands_leadership_over_first(cluster: ScCluster) -> None:
    """From the 2 members the test before left: removing the leader makes the other one lead
    and carry the removal out; one member remains, and it commits alone."""
    leader = _leader(cluster)
    assert leader is not None
    members = [m["id"] for m in _status(leader.admin)["scs"]]
    (other,) = [i for i in members if i != leader.node_id]
    after = run(lambda: _client(cluster, [leader.node_id]).remove_sc(leader.node_id))
    assert [m["id"] for m in after] == [other]
    assert wait_for(lambda: _leader(cluster), WAIT_S, "a leader") is cluster.nodes[other]
    run(lambda: _client(cluster, [other]).create_topic("alone", 1, 1))
    wait_for(lambda: not _status(leader.admin)["member"], WAIT_S, "the old leader to know it was removed")
