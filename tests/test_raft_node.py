"""In-process tests of ``kolk.raft.node.RaftNode``: three (or four) nodes on 127.0.0.1, each
with its own data directory and a small JSON register as the state machine.

What they prove (DESIGN.md §3, raft/node.py): a leader is elected and known to all; commands
proposed anywhere are applied everywhere in one order; restarts keep every acknowledged
command, also once the journal was compacted into a snapshot; a node added with ``add_node``
catches up; a node without the cluster secret can neither join nor disturb; ``RaftConfig``
refuses unsafe settings; a simulated power loss on every node keeps every command whose
proposal returned; and the sockets (issue 17): the public listener binds exactly the address
given, pysyncobj only a private AF_UNIX socket, and an oversized command never enters the log.

How power loss is simulated. ``RaftNode`` has no way to die without its final sync: ``stop()``
ends pysyncobj's tick thread and then ``DurableJournal._destroy`` syncs the journal and stores
the meta, and the tick thread only ends through ``destroy`` (or when the main thread exits).
So the crash is modelled at the ``on_sync`` hook instead: every report ``(path, size)`` is
taken, on the reporting thread, as "these bytes of this file are durable now" and the bytes
are copied (``Disk``). A crash freezes that record atomically (acknowledgements are recorded
under the same lock, so "acknowledged before the crash" is exact); whatever the nodes write
afterwards, including the syncs of ``stop()``, is thrown away: every file is put back to its
last durable bytes (a journal that only grew is cut at a random length between that size and
its current size, as a partial write would leave it) and a file that was never reported
durable is deleted.
"""

from __future__ import annotations

import json
import os
import random
import socket
import sys
import threading
import time
from typing import Any, Callable

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from jepsen.cluster import wait_for as _wait_for  # noqa: E402
from pysyncobj.utility import TcpUtility, UtilityException

from kolk.raft.node import RaftConfig, RaftError, RaftNode

SECRET = "kolk-test-cluster-secret-0123456789"
WRONG_SECRET = "not-the-cluster-secret-9876543210"
ELECTION_MIN_S = 0.2
ELECTION_MAX_S = 0.5


# ------------------------------------------------------------------------------ helpers


def wait_for(cond: Callable[[], Any], timeout: float, what: str | Callable[[], str]) -> Any:
    """Poll ``cond`` until it is truthy (returned) or ``timeout`` seconds pass (assertion)."""
    return _wait_for(cond, timeout, what, interval_s=0.005)


def free_addresses(n: int) -> list[str]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [f"127.0.0.1:{s.getsockname()[1]}" for s in socks]
    finally:
        for s in socks:
            s.close()


def command(cid: str, key: str | None = None) -> bytes:
    return json.dumps({"id": cid, "k": key or f"k{hash(cid) % 7}", "v": cid}).encode()


class Register:
    """A dict register; keeps the order of applied command ids so runs can be compared."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.data: dict[str, str] = {}
        self.order: list[str] = []
        self.restores = 0

    def apply(self, cmd: bytes) -> int:
        op = json.loads(cmd)
        with self.lock:
            self.data[op["k"]] = op["v"]
            self.order.append(op["id"])
            return len(self.order)

    def snapshot(self) -> bytes:
        with self.lock:
            return json.dumps({"data": self.data, "order": self.order}, sort_keys=True).encode()

    def restore(self, blob: bytes) -> None:
        state = json.loads(blob)
        with self.lock:
            self.data, self.order = state["data"], state["order"]
            self.restores += 1

    def view(self) -> list[str]:
        with self.lock:
            return list(self.order)


class Disk:
    """The durable bytes of every file, as the ``on_sync`` hooks report them (see module doc)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.images: dict[str, bytes] = {}
        self.frozen = False
        self.errors: list[str] = []

    def hook(self, path: str, size: int) -> None:
        with self.lock:
            if self.frozen:
                return
            try:
                with open(path, "rb") as f:
                    data = f.read(size)
                if len(data) != size:
                    self.errors.append(f"{path}: reported {size} bytes durable, file has {len(data)}")
                self.images[os.path.abspath(path)] = data
            except OSError as e:  # pragma: no cover - reported by check()
                self.errors.append(f"{path}: {e}")

    def check(self) -> None:
        assert not self.errors, self.errors

    def power_loss(self, data_dir: str, rnd: random.Random) -> dict[str, str]:
        """Put every file in ``data_dir`` back to its durable bytes (call once frozen)."""
        assert self.frozen
        done = {}
        for name in sorted(os.listdir(data_dir)):
            path = os.path.abspath(os.path.join(data_dir, name))
            with open(path, "rb") as f:
                now = f.read()
            image = self.images.get(path)
            if image is None:
                os.unlink(path)
                done[name] = "deleted (never reported durable)"
                continue
            data = image
            if name.endswith(".log") and now.startswith(image) and len(now) > len(image):
                data = now[: rnd.randint(len(image), len(now))]  # a partial unsynced write
            with open(path, "wb") as f:
                f.write(data)
            done[name] = f"{len(now)} -> {len(data)} bytes (durable {len(image)})"
        return done

    def thaw(self) -> None:
        with self.lock:
            self.frozen = False


class Cluster:
    """Nodes ``0..n-1`` on free ports, each in ``root/n<i>``; tracks what runs, stops it all."""

    def __init__(self, root, n: int = 3, **config: Any) -> None:
        self.root = root
        self.addrs = free_addresses(n)
        self.dirs = [str(root / f"n{i}") for i in range(n)]
        self.nodes: list[RaftNode | None] = [None] * n
        self.sms: list[Register | None] = [None] * n
        self.disk = Disk()
        self.config = config
        self.extra: list[RaftNode] = []

    def make_config(self, i: int, **over: Any) -> RaftConfig:
        kw = dict(
            self_address=self.addrs[i],
            peers=tuple(a for a in self.addrs if a != self.addrs[i]),
            data_dir=self.dirs[i],
            secret=SECRET,
            election_timeout_min_s=ELECTION_MIN_S,
            election_timeout_max_s=ELECTION_MAX_S,
            on_sync=self.disk.hook,
        )
        kw.update(self.config)
        kw.update(over)
        return RaftConfig(**kw)

    def start(self, i: int, **over: Any) -> RaftNode:
        assert self.nodes[i] is None
        sm = Register()
        node = RaftNode(self.make_config(i, **over), sm)
        self.nodes[i], self.sms[i] = node, sm
        return node

    def start_all(self) -> None:
        for i in range(len(self.addrs)):
            self.start(i)

    def stop(self, i: int) -> None:
        node, self.nodes[i] = self.nodes[i], None
        if node is not None:
            node.stop()

    def stop_all(self) -> None:
        errors = []
        for i in range(len(self.nodes)):
            try:
                self.stop(i)
            except Exception as e:  # keep stopping the others
                errors.append(e)
        for node in self.extra:
            try:
                node.stop()
            except Exception as e:
                errors.append(e)
        self.extra = []
        if errors:
            raise errors[0]

    def running(self) -> list[int]:
        return [i for i, n in enumerate(self.nodes) if n is not None]

    def leader(self, timeout: float = 10.0) -> int:
        """Wait until every running node names the same leader and that node leads."""

        def agreed():
            names = {self.nodes[i].leader() for i in self.running()}
            if len(names) != 1 or None in names:
                return None
            (name,) = names
            if name not in self.addrs:
                return None
            i = self.addrs.index(name)
            return (i + 1) if self.nodes[i] is not None and self.nodes[i].is_leader() else None

        return wait_for(agreed, timeout, lambda: f"leader agreement: {self.statuses()}") - 1

    def statuses(self) -> dict:
        return {self.addrs[i]: self.nodes[i].status() for i in self.running()}

    def wait_applied(self, expected: list[str], timeout: float = 10.0, nodes=None) -> None:
        """Wait until every running node (or ``nodes``) has applied exactly ``expected``."""
        idx = self.running() if nodes is None else nodes
        wait_for(lambda: all(self.sms[i].view() == expected for i in idx), timeout,
                 lambda: f"expected {len(expected)} commands; nodes have "
                         f"{[(i, len(self.sms[i].view()), self.sms[i].view()[-3:]) for i in idx]}; "
                         f"{self.statuses()}")


@pytest.fixture
def make_cluster(tmp_path):
    clusters: list[Cluster] = []

    def make(n: int = 3, start: bool = True, **config: Any) -> Cluster:
        c = Cluster(tmp_path / f"c{len(clusters)}", n, **config)
        clusters.append(c)
        if start:
            c.start_all()
        return c

    try:
        yield make
    finally:
        for c in clusters:
            c.stop_all()


def propose_many(node: RaftNode, prefix: str, n: int) -> list[str]:
    ids = []
    for k in range(n):
        cid = f"{prefix}{k}"
        node.propose_sync(command(cid), timeout_s=5.0)
        ids.append(cid)
    return ids


def file_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


# ------------------------------------------------------------------------------ election


def test_leader_elected_and_agreed(make_cluster):
    """Three fresh nodes elect one leader within a deadline; every node names it, exactly one
    node is in the leader state, all share its term, and the term and vote are on disk."""
    c = make_cluster()
    li = c.leader()
    states = [c.nodes[i].status() for i in range(3)]
    assert [s["state"] for s in states].count("leader") == 1 and states[li]["state"] == "leader"
    assert {s["leader"] for s in states} == {c.addrs[li]}
    term = states[li]["term"]
    assert term >= 1 and all(s["term"] == term for s in states)
    leader_meta = json.loads(file_bytes(os.path.join(c.dirs[li], "journal.log.meta")))
    assert leader_meta["term"] == term
    c.disk.check()


# ------------------------------------------------------------------------------ ordering


def test_follower_proposals_applied_everywhere_in_one_order(make_cluster):
    """Commands proposed concurrently on both followers are forwarded to the leader and applied
    on every node in the same order; each proposal returns its position in that order."""
    c = make_cluster()
    li = c.leader()
    followers = [i for i in range(3) if i != li]
    results: dict[str, int] = {}
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            for k in range(25):
                cid = f"f{i}-{k}"
                results[cid] = c.nodes[i].propose_sync(command(cid), timeout_s=5.0)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in followers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    order = c.sms[li].view()
    assert sorted(order) == sorted(results)
    c.wait_applied(order)
    for cid, pos in results.items():
        assert order[pos - 1] == cid
    for i in followers:  # each follower's own commands stay in the order it proposed them
        mine = [cid for cid in order if cid.startswith(f"f{i}-")]
        assert mine == [f"f{i}-{k}" for k in range(25)]
    assert c.sms[li].data == c.sms[followers[0]].data == c.sms[followers[1]].data
    c.disk.check()


# ------------------------------------------------------------------------------ restarts


def test_restart_of_all_nodes_keeps_every_acknowledged_command(make_cluster):
    """Every command whose proposal returned (on the leader or a follower) is applied again,
    in the same order, after all three nodes are stopped and started on the same dirs; the
    restarted cluster elects a leader and takes new commands."""
    c = make_cluster()
    li = c.leader()
    acked = propose_many(c.nodes[li], "a", 12) + propose_many(c.nodes[(li + 1) % 3], "b", 12)
    c.wait_applied(acked)
    term = c.nodes[li].status()["term"]
    for i in (2, 0, 1):
        c.stop(i)
    c.start_all()
    c.wait_applied(acked)
    li = c.leader()
    assert c.nodes[li].status()["term"] > term
    acked += propose_many(c.nodes[(li + 2) % 3], "c", 3)
    c.wait_applied(acked)
    c.disk.check()


def test_snapshot_compacts_journal_and_restart_restores(make_cluster):
    """Past ``snapshot_min_entries`` commands every node writes a snapshot (reported durable by
    ``on_sync``) and trims its journal below that many entries; after a restart of all nodes
    each one restores the state from the snapshot plus the short journal."""
    min_entries = 40
    c = make_cluster(snapshot_min_entries=min_entries)
    li = c.leader()
    acked = propose_many(c.nodes[li], "s", 100)
    c.wait_applied(acked)

    def compacted(i: int) -> bool:
        j = c.nodes[i].journal
        return (os.path.exists(os.path.join(c.dirs[i], "snapshot")) and len(j) <= min_entries
                and j[0][1] > min_entries)

    wait_for(lambda: all(compacted(i) for i in range(3)), 10,
             lambda: [(len(c.nodes[i].journal), c.nodes[i].journal[0][1]) for i in range(3)])
    for i in range(3):
        snap = os.path.join(c.dirs[i], "snapshot")
        assert file_bytes(snap).startswith(b"KOLKSNAP")
        assert os.path.abspath(snap) in c.disk.images, "snapshot never reported durable"
    c.stop_all()

    for i in range(3):
        c.start(i)
    c.wait_applied(acked)
    for i in range(3):
        assert c.sms[i].restores == 1, f"node {i} did not restore from its snapshot"
        assert c.nodes[i].journal[0][1] > 1
    li = c.leader()
    acked += propose_many(c.nodes[li], "t", 3)
    c.wait_applied(acked)
    c.disk.check()


# ------------------------------------------------------------------------------ membership


def test_added_node_catches_up(make_cluster):
    """A 4th node started with the full peer list and the cluster secret, then added with
    ``add_node``, receives every earlier command, follows the leader and applies new ones."""
    c = make_cluster()
    li = c.leader()
    acked = propose_many(c.nodes[li], "p", 15)
    (addr4,) = free_addresses(1)
    sm4 = Register()
    node4 = RaftNode(RaftConfig(self_address=addr4, peers=tuple(c.addrs), data_dir=str(c.root / "n3"),
                                secret=SECRET, election_timeout_min_s=ELECTION_MIN_S,
                                election_timeout_max_s=ELECTION_MAX_S), sm4)
    c.extra.append(node4)
    done = threading.Event()
    outcome: list = []
    c.nodes[li].add_node(addr4, lambda err: (outcome.append(err), done.set()))
    assert done.wait(10), "add_node never answered"
    assert outcome == [None], outcome
    li = c.leader()
    acked += propose_many(c.nodes[li], "q", 5)
    wait_for(lambda: sm4.view() == acked, 10, lambda: f"node 4 has {len(sm4.view())} of {len(acked)}")
    c.wait_applied(acked)
    wait_for(lambda: node4.leader() == c.addrs[li], 5, "node 4 knows the leader")
    assert c.nodes[li].status()["peers"].get(addr4) is True


def test_removed_node_leaves_the_quorum(make_cluster):
    """``remove_node`` shrinks the group: after a follower is removed and stopped, the leader
    no longer counts it among its peers, and the two remaining nodes keep committing (as a
    group of two, both needed)."""
    c = make_cluster()
    li = c.leader()
    acked = propose_many(c.nodes[li], "p", 5)
    victim = next(i for i in range(3) if i != li)
    done = threading.Event()
    outcome: list = []
    c.nodes[li].remove_node(c.addrs[victim], lambda err: (outcome.append(err), done.set()))
    assert done.wait(10), "remove_node never answered"
    assert outcome == [None], outcome
    c.stop(victim)
    wait_for(lambda: c.addrs[victim] not in c.nodes[li].status()["peers"], 10,
             lambda: f"the leader still lists the removed node: {c.nodes[li].status()['peers']}")
    li = c.leader()
    acked += propose_many(c.nodes[li], "q", 5)
    c.wait_applied(acked)


def test_wrong_secret_node_cannot_join_or_disturb(make_cluster):
    """A 4th node with another secret and the cluster as peers never connects: it learns no
    leader, asks to join in vain, receives no entries even once an operator adds it, and the
    cluster keeps its leader and term and commits throughout. The admin utility port refuses
    the wrong secret and plaintext too."""
    c = make_cluster()
    li = c.leader()
    term = c.nodes[li].status()["term"]
    acked = propose_many(c.nodes[li], "w", 5)
    (addr4,) = free_addresses(1)
    sm4 = Register()
    node4 = RaftNode(RaftConfig(self_address=addr4, peers=tuple(c.addrs), data_dir=str(c.root / "bad"),
                                secret=WRONG_SECRET, election_timeout_min_s=ELECTION_MIN_S,
                                election_timeout_max_s=ELECTION_MAX_S), sm4)
    c.extra.append(node4)

    # It asks to join by itself: it never connects, so it has no leader to forward the request
    # to (pysyncobj keeps such a request queued until a leader is known).
    self_join: list = []
    node4.add_node(addr4, self_join.append)

    # Nor through the admin port, with a wrong secret or none.
    for password in (WRONG_SECRET, None):
        with pytest.raises(UtilityException):
            TcpUtility(password=password, timeout=2.0).executeCommand(c.addrs[li], ["add", addr4])

    def window(prefix: str, seconds: float) -> None:
        # Keep committing for several election timeouts while watching leader and term.
        start, k = time.monotonic(), 0
        while time.monotonic() - start < seconds or k < 10:
            cid = f"{prefix}{k}"
            c.nodes[li].propose_sync(command(cid), timeout_s=5.0)
            acked.append(cid)
            k += 1
            for i in range(3):
                s = c.nodes[i].status()
                assert (s["leader"], s["term"]) == (c.addrs[li], term), (i, s)
            s4 = node4.status()
            assert s4["leader"] is None and not any(s4["peers"].values()), s4
            assert sm4.view() == [] and len(node4.journal) == 1, s4

    window("x", 3 * ELECTION_MAX_S)
    assert all(isinstance(e, RaftError) for e in self_join), self_join  # never a success
    assert all(addr4 not in c.nodes[i].status()["peers"] for i in range(3))

    done = threading.Event()
    outcome: list = []

    # An operator adds it anyway: the membership change commits with 3 of 4, but the node
    # still gets nothing and the cluster goes on undisturbed.
    c.nodes[li].add_node(addr4, lambda err: (outcome.append(err), done.set()))
    assert done.wait(10) and outcome == [None], outcome
    window("y", 3 * ELECTION_MAX_S)
    c.wait_applied(acked)
    c.disk.check()


# ------------------------------------------------------------------------------ config


def test_raft_config_refuses_unsafe_settings(tmp_path):
    """``RaftConfig`` refuses a missing, empty or short (< 16 characters) secret, a peer list
    that contains the node itself, and an inverted election timeout range."""
    base = dict(self_address="127.0.0.1:7001", peers=("127.0.0.1:7002", "127.0.0.1:7003"),
                data_dir=str(tmp_path), secret="x" * 16)
    RaftConfig(**base)
    for secret in (None, "", "short", "x" * 15):
        with pytest.raises(ValueError, match="secret"):
            RaftConfig(**{**base, "secret": secret})
    with pytest.raises(ValueError, match="peers"):
        RaftConfig(**{**base, "peers": ("127.0.0.1:7002", "127.0.0.1:7001")})
    with pytest.raises(ValueError, match="election_timeout"):
        RaftConfig(**{**base, "election_timeout_min_s": 1.0, "election_timeout_max_s": 0.5})


# ------------------------------------------------------------------------------ power loss


def test_power_loss_on_every_node_keeps_acknowledged_commands(make_cluster):
    """Proposers run while all nodes lose power at once; every file goes back to its last
    durable bytes. Every command whose proposal returned before the crash is then applied on
    every node, in one order that keeps each proposer's own order. Twice: first with a
    proposer on each node; then with one on the leader only, and the node that led at the
    crash stays down, so the two followers alone must hold every acknowledged command (a
    follower acknowledges only what it fsynced); it then comes back and catches up, and the
    cluster takes new commands."""
    c = make_cluster()
    rnd = random.Random(20240607)
    acked: list[tuple[int, str]] = []  # (proposer, id), in acknowledgement order

    def check(nodes: list[int]) -> None:
        ids = {cid for _, cid in acked}
        wait_for(lambda: all(ids <= set(c.sms[i].view()) for i in nodes), 15,
                 lambda: f"missing after power loss: "
                         f"{ {i: sorted(ids - set(c.sms[i].view()))[:5] for i in nodes} }")
        order = c.sms[c.leader()].view()
        c.wait_applied(order, nodes=nodes)
        for p in range(3):
            mine = [cid for q, cid in acked if q == p]
            assert [cid for cid in order if cid in set(mine)] == mine

    for round_ in range(2):
        li = c.leader()
        # Round 0: proposals from every node (forwarded by the followers). Round 1: from the
        # leader only, so that the followers send nothing but their acknowledgements.
        proposers = [0, 1, 2] if round_ == 0 else [li]
        stop = threading.Event()

        def proposer(i: int) -> None:
            k = 0
            while not stop.is_set():
                cid = f"r{round_}-n{i}-{k}"
                answered = threading.Event()

                def cb(result, err, cid=cid):
                    with c.disk.lock:
                        if err is None and not c.disk.frozen:
                            acked.append((i, cid))
                    answered.set()

                c.nodes[i].propose(command(cid), cb)
                while not answered.wait(0.05):
                    if stop.is_set():
                        return
                k += 1

        threads = [threading.Thread(target=proposer, args=(i,), daemon=True) for i in proposers]
        for t in threads:
            t.start()
        target = len(acked) + 120
        try:
            wait_for(lambda: len(acked) >= target, 20, lambda: f"{len(acked)} acknowledged")
        finally:
            with c.disk.lock:  # the power goes out here, with proposals in flight
                c.disk.frozen = True
                leaders = [i for i in range(3) if c.nodes[i].is_leader()]
            stop.set()
            for t in threads:
                t.join(5)
        c.stop_all()
        for d in c.dirs:
            c.disk.power_loss(d, rnd)
        c.disk.thaw()
        if round_ == 0:
            c.start_all()
            check([0, 1, 2])
        else:
            assert len(leaders) == 1, leaders
            survivors = [i for i in range(3) if i != leaders[0]]
            for i in survivors:
                c.start(i)
            check(survivors)
            c.start(leaders[0])
            check([0, 1, 2])
    li = c.leader()
    final = propose_many(c.nodes[li], "after", 3)
    c.wait_applied(c.sms[li].view())
    assert c.sms[li].view()[-3:] == final
    c.disk.check()


def test_power_loss_after_snapshot_install_keeps_state(make_cluster):
    """A follower that was down while the others compacted catches up by snapshot install.
    What it acknowledged must be durable: after a power loss of that follower (files back to
    their last reported durable bytes) and a restart, it applies the same commands as the
    others. (The snapshot it received must be reported to ``on_sync`` like every durable file.)"""
    min_entries = 20
    c = make_cluster(snapshot_min_entries=min_entries)
    li = c.leader()
    lag = (li + 1) % 3
    acked = propose_many(c.nodes[li], "a", 5)
    c.wait_applied(acked)
    c.stop(lag)
    acked += propose_many(c.nodes[li], "b", 3 * min_entries)
    wait_for(lambda: c.nodes[li].journal[0][1] > 10 and os.path.exists(os.path.join(c.dirs[li], "snapshot")),
             10, "leader compacted")
    c.start(lag)
    c.wait_applied(acked)
    assert c.sms[lag].restores == 1, "the lagging node did not catch up by snapshot install"
    snap = os.path.abspath(os.path.join(c.dirs[lag], "snapshot"))
    installed_reported = snap in c.disk.images

    # Power loss on the follower alone.
    with c.disk.lock:
        c.disk.frozen = True
    c.stop(lag)
    lost = c.disk.power_loss(c.dirs[lag], random.Random(7))
    c.disk.thaw()
    c.start(lag)
    li = c.leader()
    acked += propose_many(c.nodes[li], "c", 3)
    context = (f"installed snapshot reported durable: {installed_reported}; "
               f"power loss on node {lag}: {lost}")
    wait_for(lambda: c.sms[lag].view() == acked, 5,
             lambda: f"node {lag} applied {len(c.sms[lag].view())} of {len(acked)} commands after power "
                     f"loss; {context}; its status: {c.nodes[lag].status()}")
    assert installed_reported, context
    c.disk.check()


def test_damaged_snapshot_is_not_silently_ignored(make_cluster):
    """A node whose snapshot file is damaged (one flipped byte, caught by its CRC) either
    refuses to start or ends up with the cluster's state; it must not run as a healthy member
    with the snapshot's commands missing from its state machine."""
    c = make_cluster(snapshot_min_entries=20)
    li = c.leader()
    victim = (li + 1) % 3
    acked = propose_many(c.nodes[li], "a", 50)
    c.wait_applied(acked)
    snap = os.path.join(c.dirs[victim], "snapshot")
    wait_for(lambda: os.path.exists(snap) and c.nodes[victim].journal[0][1] > 1, 10, "victim compacted")
    c.stop(victim)
    blob = bytearray(file_bytes(snap))
    blob[-2] ^= 0x04  # inside the state bytes
    with open(snap, "wb") as f:
        f.write(blob)
    try:
        c.start(victim)
    except Exception as e:  # refusing to start is a correct answer
        assert "snapshot" in str(e), e
        return
    li = c.leader()
    acked += propose_many(c.nodes[li], "b", 3)
    wait_for(lambda: c.sms[victim].view() == acked, 5,
             lambda: f"node {victim} runs with a damaged snapshot: it applied {len(c.sms[victim].view())} of "
                     f"{len(acked)} commands; status {c.nodes[victim].status()}")


# ------------------------------------------------------------------------------ sockets (issue 17)


def test_listener_binds_the_given_address_and_pysyncobj_only_a_private_socket(tmp_path):
    """The public Raft listener is bound at once to exactly the bind address (not 0.0.0.0);
    pysyncobj listens on an AF_UNIX socket (0600) in a private 0700 directory, refuses a
    connection from another process, and the directory is gone after ``stop``."""
    import stat
    import subprocess

    advertised, bound = free_addresses(2)
    node = RaftNode(RaftConfig(advertised, (), str(tmp_path / "n"), SECRET, bind_address=bound), Register())
    try:
        host, port = bound.rsplit(":", 1)
        assert node.listen_address == bound
        assert node.tunnel._listener.getsockname() == (host, int(port))
        path = node._local_path
        assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert len(path.encode()) <= 107
        # Another process (same user: the directory's mode would stop any other user) that
        # connects is closed at once, before pysyncobj reads a byte from it.
        probe = ("import socket, sys; s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); "
                 "s.settimeout(10); print(repr(s.recv(1)))")
        out = subprocess.run([sys.executable, "-c", probe, path], capture_output=True, text=True, timeout=30)
        assert out.stdout.strip() == "b''", out
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((host, int(advertised.rsplit(":", 1)[1])), timeout=5).close()
    finally:
        node.stop()
    assert not os.path.exists(os.path.dirname(path))


def test_a_taken_raft_port_fails_at_once_and_leaves_nothing(tmp_path):
    from kolk.raft.node import RaftListenError

    (address,) = free_addresses(1)
    host, port = address.rsplit(":", 1)
    with socket.socket() as taken:
        taken.bind((host, int(port)))
        taken.listen(1)
        with pytest.raises(RaftListenError, match=f"cannot listen for raft on {address}"):
            RaftNode(RaftConfig(address, (), str(tmp_path / "n"), SECRET), Register())
    assert not os.path.exists(tmp_path / "n")


def test_a_command_over_the_limit_is_refused_before_the_log(tmp_path):
    """A command larger than ``command_bytes_max`` never enters the log (a committed entry
    over the frame cap could never be replicated): a non-retriable error saying the sizes."""
    (address,) = free_addresses(1)
    node = RaftNode(RaftConfig(address, (), str(tmp_path / "n"), SECRET, command_bytes_max=1000,
                               election_timeout_min_s=0.02, election_timeout_max_s=0.05), Register())
    try:
        wait_for(node.is_leader, 10, "a lone node to lead")
        before = node.status()["journal_entries"]
        with pytest.raises(RaftError, match="the command is 1001 bytes, over the limit of 1000") as e:
            node.propose_sync(b"x" * 1001)
        assert not e.value.retriable
        assert node.status()["journal_entries"] == before
        assert node.propose_sync(command("fits")) == 1
    finally:
        node.stop()
    with pytest.raises(ValueError, match="command_bytes_max"):
        RaftConfig(address, (), str(tmp_path / "m"), SECRET, command_bytes_max=0)


def test_private_directories_of_dead_nodes_are_swept_at_start(tmp_path):
    """A node killed with SIGKILL cannot remove its private directory; the next node started
    on the host removes every one of this user's whose pid is not running, and no other."""
    import shutil
    import subprocess
    import tempfile

    from kolk.raft.sockets import LOCAL_DIR_PARENT, LOCAL_DIR_PREFIX

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(timeout=30)
    stale = tempfile.mkdtemp(prefix=f"{LOCAL_DIR_PREFIX}{dead.pid}-", dir=LOCAL_DIR_PARENT)
    open(os.path.join(stale, "raft.sock"), "w").close()
    alive = tempfile.mkdtemp(prefix=f"{LOCAL_DIR_PREFIX}{os.getpid()}-", dir=LOCAL_DIR_PARENT)
    other = tempfile.mkdtemp(prefix=f"{LOCAL_DIR_PREFIX}notapid-", dir=LOCAL_DIR_PARENT)
    (address,) = free_addresses(1)
    try:
        node = RaftNode(RaftConfig(address, (), str(tmp_path / "n"), SECRET), Register())
        node.stop()
        assert not os.path.exists(stale)
        assert os.path.isdir(alive) and os.path.isdir(other)
    finally:
        for d in (stale, alive, other):
            shutil.rmtree(d, ignore_errors=True)
