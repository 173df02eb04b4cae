"""Hosts as network namespaces (jepsen/netns.py, jepsen/netns_cluster.py, jepsen/wire.py).

One TLS cluster of 6 hosts (3 SCs, 3 SPUs), each in a namespace of its own, serves a client in
the root namespace: the nodes register and replicate with their host addresses, their
certificates carry those addresses, and a client reaching a node by another address is refused.
Two plain hosts on the same bridge prove the faults: a partition really drops packets (a connect
times out) and heal restores them, a one-way partition drops one direction only, netem delay
adds about its delay to a connect, and teardown leaves nothing behind. Needs root (CI runs as
root, with iproute2 and nftables installed by .ci/run).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import pytest

from dataplane_cluster import read_all, run_async, wait_until
from jepsen.cluster import wait_for
from jepsen.netns import Host, Network, kernel_has_netem, netns_unavailable
from jepsen.netns_cluster import NetnsCluster
from jepsen.proxy import FaultProxy
from kolk.client.admin import AdminClient
from kolk.client.client import AsyncClient
from kolk.protocol.errors import KolkError

# One agent per plain host, commanded line by line on stdin (one python start-up per host, not
# per probe): it serves a TCP acceptor, a UDP echo (answers 'pong' to the port a datagram names)
# and a UDP inbox on the ports it is given, and runs probes from its host:
#   tcp ADDR PORT TIMEOUT -> seconds a connect took, or 'error <kind>'
#   udp ADDR PORT TIMEOUT -> 'pong' when the echo at ADDR:PORT answered, else 'nothing'
#   send ADDR PORT        -> sends 'note' to an inbox; 'sent'
#   inbox TIMEOUT         -> the first datagram the inbox got, or 'nothing'
AGENT = """
import socket, sys, threading, time
me, tcp_port, echo_port, inbox_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
D = socket.SOCK_DGRAM
acc = socket.socket(); acc.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
acc.bind((me, tcp_port)); acc.listen(64)
echo = socket.socket(socket.AF_INET, D); echo.bind((me, echo_port))
inbox = socket.socket(socket.AF_INET, D); inbox.bind((me, inbox_port))
def accept():
    while True:
        c, _ = acc.accept(); c.close()
def answer():
    while True:
        d, a = echo.recvfrom(100); echo.sendto(b"pong", (a[0], int(d.split()[1])))
threading.Thread(target=accept, daemon=True).start()
threading.Thread(target=answer, daemon=True).start()
print("up", flush=True)
for line in sys.stdin:
    w = line.split()
    if w[0] == "tcp":
        t = time.monotonic()
        try:
            socket.create_connection((w[1], int(w[2])), timeout=float(w[3])).close()
            out = str(time.monotonic() - t)
        except OSError as e:
            out = "error " + type(e).__name__
    elif w[0] == "udp":
        r = socket.socket(socket.AF_INET, D); r.bind((me, 0)); r.settimeout(float(w[3]))
        r.sendto(b"ping %d" % r.getsockname()[1], (w[1], int(w[2])))
        try:
            out = r.recv(100).decode()
        except OSError:
            out = "nothing"
        r.close()
    elif w[0] == "send":
        socket.socket(socket.AF_INET, D).sendto(b"note", (w[1], int(w[2]))); out = "sent"
    else:
        inbox.settimeout(float(w[1]))
        try:
            out = inbox.recv(100).decode()
        except OSError:
            out = "nothing"
    print(out, flush=True)
"""


@dataclass
class Agent:
    host: Host
    proc: subprocess.Popen
    tcp: int
    echo: int
    inbox: int

    def ask(self, *words: object) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(" ".join(map(str, words)) + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()


def test_namespaces_are_available_here() -> None:
    """CI runs as root with iproute2 and nftables: nothing in this module may be skipped."""
    assert netns_unavailable() is None


@pytest.fixture(scope="module")
def net() -> Any:
    with Network() as n:
        yield n


@pytest.fixture(scope="module")
def cluster(net: Network, tmp_path_factory: Any) -> Any:
    c = NetnsCluster(net, str(tmp_path_factory.mktemp("netns")), scs=3, spus=3, tls=True)
    try:
        c.start_all()
        yield c
    finally:
        c.close()


@pytest.fixture(scope="module")
def pair(net: Network) -> Any:
    """Two plain hosts, p1 and p2, each with its agent."""
    agents: dict[str, Agent] = {}
    try:
        for name in ("p1", "p2"):
            h = net.add_host(name)
            ports = [h.free_port() for _ in range(3)]
            proc = h.popen([sys.executable, "-c", AGENT, h.address, *map(str, ports)],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            agents[name] = Agent(h, proc, *ports)
            assert proc.stdout is not None and proc.stdout.readline().strip() == "up"
        yield agents["p1"], agents["p2"]
    finally:
        for ag in agents.values():
            ag.proc.kill()
            ag.proc.wait(timeout=30)
            for f in (ag.proc.stdin, ag.proc.stdout):
                if f is not None:
                    f.close()
        net.heal_all()


def connect_s(src: Agent, dst: Agent, timeout_s: float = 1.0) -> float | None:
    """Seconds a TCP connect from ``src`` to ``dst``'s acceptor took, or None when it failed."""
    out = src.ask("tcp", dst.host.address, dst.tcp, timeout_s)
    return None if out.startswith("error") else float(out)


def udp_round(src: Agent, dst: Agent, timeout_s: float = 0.7) -> str:
    """'pong' when a datagram from ``src`` reached ``dst``'s echo and the answer came back."""
    return src.ask("udp", dst.host.address, dst.echo, timeout_s)


# ---------------------------------------------------------------- the cluster in namespaces


def test_produce_and_consume_from_the_root_namespace(cluster: NetnsCluster) -> None:
    """The public client in the root namespace creates a topic with RF 3, produces 300
    records with acks=all and reads them back; every partition ends with all 3 in sync."""
    async def body() -> None:
        client = AsyncClient(cluster.admin_addresses, timeout_s=20, tls=cluster.tls_for())
        await client.create_topic("hosts-t", 2, 3)
        producer = client.producer("hosts-t")
        futs = [await producer.send(b"v-%d" % i, key=b"k-%d" % i) for i in range(300)]
        await producer.flush()
        for f in futs:
            await f
        records = await read_all(client, "hosts-t")
        assert sorted(r.value for r in records) == sorted(b"v-%d" % i for i in range(300))

        async def full_isr() -> bool:
            rows = await client.partition_list("hosts-t")
            return len(rows) == 2 and all(sorted(r["isr"]) == [1, 2, 3] for r in rows)
        await wait_until(full_isr, 30, "every partition of hosts-t to have 3 in-sync replicas")
    run_async(body)


def test_nodes_registered_with_their_host_addresses(cluster: NetnsCluster) -> None:
    """Cluster status names every SC and SPU by its namespace address; none is loopback."""
    status = run_async(lambda: AdminClient(cluster.admin_addresses, timeout_s=10,
                                           tls=cluster.tls_for()).cluster_status())
    spus = {s["id"]: s["public_address"] for s in status["spus"]}
    assert {i: a.rsplit(":", 1)[0] for i, a in spus.items()} == \
        {i: cluster.host(f"spu{i}").address for i in (1, 2, 3)}, spus
    scs = {s["id"]: (s["raft"], s["admin"]) for s in status["scs"]}
    for j, (raft, admin) in scs.items():
        address = cluster.host(f"sc{j}").address
        assert raft.startswith(address + ":") and admin.startswith(address + ":"), scs
    assert "127.0.0.1" not in json.dumps(status)


def test_every_node_serves_health_on_its_host_address(cluster: NetnsCluster) -> None:
    for name in cluster.nodes:
        assert cluster.health(name) == (200, "ok\n"), name


def test_certificates_carry_the_host_addresses(cluster: NetnsCluster) -> None:
    """Each node's certificate has its host address as its only IP SAN (read in-process for
    all, and through `kolk cert show` for one)."""
    from cryptography import x509

    for name in cluster.nodes:
        with open(os.path.join(cluster.pki, f"{name}.crt"), "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
        ips = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.IPAddress)
        assert [str(ip) for ip in ips] == [cluster.host(name).address], (name, ips)
    p = subprocess.run([sys.executable, "-m", "kolk", "cert", "show", "--json", os.path.join(cluster.pki, "spu1.crt")],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    shown = json.dumps(json.loads(p.stdout))
    assert cluster.host("spu1").address in shown and "127.0.0.1" not in shown, shown


@pytest.mark.parametrize("node", ["sc1", "spu1"])
def test_a_client_reaching_a_node_by_another_address_is_refused(cluster: NetnsCluster, node: str) -> None:
    """Through a TCP relay on 127.0.0.1 the node's certificate (made for its host address)
    does not match the address the client dialled: the handshake fails, naming the mismatch."""
    n = cluster.nodes[node]
    target = n.args[n.args.index("--admin" if node.startswith("sc") else "--public") + 1]
    relay = FaultProxy(target).start()
    try:
        async def body() -> None:
            if node.startswith("sc"):
                with pytest.raises(KolkError) as e:
                    await AdminClient([relay.address], timeout_s=5, tls=cluster.tls_for()).cluster_status()
            else:
                client = AsyncClient(cluster.admin_addresses, timeout_s=5, tls=cluster.tls_for())
                with pytest.raises(KolkError) as e:
                    await client._connect(relay.address)
            text = str(e.value).lower()
            assert "ip address mismatch, certificate is not valid for '127.0.0.1'" in text, str(e.value)
        run_async(body)
    finally:
        relay.stop()


# ---------------------------------------------------------------- faults between hosts


def test_a_partition_drops_traffic_and_heal_restores_it(net: Network, pair: Any) -> None:
    p1, p2 = pair
    assert connect_s(p1, p2) is not None
    net.partition(p1.host, p2.host)
    try:
        assert connect_s(p1, p2) is None  # timed out: SYNs dropped, not refused
        assert udp_round(p2, p1) == "nothing"
    finally:
        net.heal(p1.host, p2.host)
    assert connect_s(p1, p2) is not None
    assert udp_round(p2, p1) == "pong"


def test_a_one_way_partition_drops_one_direction_only(net: Network, pair: Any) -> None:
    """p1 -> p2 dropped, p2 -> p1 flowing: a datagram from p2 reaches p1's inbox, one from p1
    never reaches p2's inbox, and a TCP connect (which needs both directions) fails."""
    p1, p2 = pair
    net.partition(p1.host, p2.host, one_way=True)
    try:
        assert p2.ask("send", p1.host.address, p1.inbox) == "sent"
        assert p1.ask("inbox", 5) == "note"  # p2 -> p1 flows
        assert p1.ask("send", p2.host.address, p2.inbox) == "sent"
        assert p2.ask("inbox", 1) == "nothing"  # p1 -> p2 dropped
        assert connect_s(p1, p2) is None
    finally:
        net.heal(p1.host, p2.host)
    assert p1.ask("send", p2.host.address, p2.inbox) == "sent"
    assert p2.ask("inbox", 5) == "note"


def test_netem_delay_adds_its_delay_to_a_connect(net: Network, pair: Any) -> None:
    """200 ms on p1's egress: a connect from p1 (SYN out through the delay) takes >= 150 ms
    more than before; cleared, it is fast again."""
    p1, p2 = pair
    base = min(t for t in (connect_s(p1, p2) for _ in range(3)) if t is not None)
    net.netem(p1.host, delay_ms=200)
    try:
        delayed = [connect_s(p1, p2, timeout_s=5) for _ in range(3)]
        assert all(t is not None and t >= base + 0.15 for t in delayed), (base, delayed)
    finally:
        net.clear_netem(p1.host)
    wait_for(lambda: (connect_s(p1, p2) or 1.0) < 0.1, 10, "connects to be fast again")


def test_netem_loss_and_duplication(net: Network, pair: Any) -> None:
    """100% loss: nothing from p1 arrives; 100% duplication: the round trip still answers and
    the relay counted the copies."""
    p1, p2 = pair
    net.netem(p1.host, loss_pct=100)
    try:
        assert udp_round(p1, p2) == "nothing"
    finally:
        net.clear_netem(p1.host)
    net.netem(p1.host, duplicate_pct=100)
    try:
        # 3 s: the loss may have eaten p1's ARP requests too, and the kernel asks again once a second.
        assert udp_round(p1, p2, timeout_s=3) == "pong"
        if not kernel_has_netem():  # the relay (this machine's kernel has no sch_netem)
            wait_for(lambda: "duplicated=0 " not in net.relay_stats(p1.host) and "sent=" in net.relay_stats(p1.host),
                     5, lambda: "the relay to count duplicates: " + net.relay_stats(p1.host))
    finally:
        net.clear_netem(p1.host)


@pytest.mark.parametrize("kw, word", [
    ({"delay_ms": -1}, "delay_ms"), ({"delay_ms": 70_000}, "delay_ms"), ({"jitter_ms": 5, "delay_ms": 1}, "jitter_ms"),
    ({"loss_pct": 101}, "loss_pct"), ({"duplicate_pct": -0.5}, "duplicate_pct"), ({"reorder_pct": 200}, "reorder_pct"),
])
def test_bad_netem_settings_are_refused(net: Network, pair: Any, kw: dict[str, Any], word: str) -> None:
    with pytest.raises(ValueError, match=word):
        net.netem(pair[0].host, **kw)


@pytest.mark.parametrize("name, word", [("p1", "already exists"), ("", "host name"), ("a b", "host name"),
                                        ("x" * 33, "host name")])
def test_bad_host_names_are_refused(net: Network, pair: Any, name: str, word: str) -> None:
    with pytest.raises(ValueError, match=word):
        net.add_host(name)


def test_popen_pid_is_the_program(pair: Any) -> None:
    """``ip netns exec`` execs the program: the pid we hold is the program's own."""
    p1 = pair[0].host
    proc = p1.popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        wait_for(lambda: os.readlink(f"/proc/{proc.pid}/exe") == os.path.realpath(sys.executable), 10,
                 "the pid to run python")
        ns_of = os.readlink(f"/proc/{proc.pid}/ns/net")
        assert ns_of != os.readlink("/proc/self/ns/net")
    finally:
        proc.kill()
        proc.wait(timeout=30)


def test_teardown_leaves_nothing_behind() -> None:
    """A network with hosts, a partition and a running relay: close() removes every namespace
    and interface by name and stops the relay; a second close() is harmless."""
    net = Network()
    try:
        a, b = net.add_host("a"), net.add_host("b")
        net.partition(a, b)
        net.netem(a, delay_ms=10)
        relays = [p.pid for p in net._relays.values()]
        namespaces, links = net.names()
    finally:
        net.close()
    net.close()
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30).stdout
    interfaces = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, timeout=30).stdout
    assert namespaces and links
    for ns in namespaces:
        assert ns not in listed, listed
    for link in links:
        assert f" {link}:" not in interfaces and f" {link}@" not in interfaces, interfaces
    for pid in relays:
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"


def test_the_relay_keeps_up_with_a_replication_stream(net: Network, cluster: NetnsCluster) -> None:
    """spu3 behind a 20 ms netem (on the replication path whether it leads or follows): 2 MB
    produced with acks=all to an RF 3 topic is committed, all 3 replicas stay in sync, and the
    relay overflowed nothing."""
    spu3 = cluster.host("spu3")
    net.netem(spu3, delay_ms=20)
    try:
        async def body() -> None:
            client = AsyncClient(cluster.admin_addresses, timeout_s=30, tls=cluster.tls_for())
            await client.create_topic("relay-t", 1, 3)
            producer = client.producer("relay-t")
            futs = [await producer.send(os.urandom(1024)) for _ in range(2000)]
            await producer.flush()
            for f in futs:
                await f

            async def in_sync() -> bool:
                rows = await client.partition_list("relay-t")
                return sorted(rows[0]["isr"]) == [1, 2, 3]
            await wait_until(in_sync, 30, "relay-t to have 3 in-sync replicas")
        run_async(body)
        if not kernel_has_netem():
            wait_for(lambda: "from_host=0 " not in net.relay_stats(spu3), 5, "the relay's counters")
            stats = net.relay_stats(spu3)
            assert " overflow=0 " in stats and " send_errors=0 " in stats, stats
    finally:
        net.clear_netem(spu3)
