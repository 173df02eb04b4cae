"""The system under test in netns mode: every SC and SPU a host of its own (DESIGN.md §9, issue 22).

Each node runs in its own network namespace on one bridge (jepsen/netns.py), on its real
address: no proxy, no loopback. Nodes reach each other and clients (in the root namespace)
reach nodes through the bridge, so a network fault is what Jepsen uses on real clusters:

* packets dropped between *pairs* of hosts (``Network.partition``, nftables): any shape, one-way
  included; the edges of every active fault are counted (jepsen/net_faults.py ``EdgeCounts``),
  so healing one fault never heals a link another still cuts;
* a shape on one host's traffic (``Network.netem``): delay, jitter, loss, duplication, reordering.

It is the proxy mode's :class:`jepsen.system.System` with hosts instead of proxies: the same
processes, arguments, environment (fsync-failure trigger files, the broken builds' switches),
and the same nemesis protocol (jepsen/nemesis.py ``System``) plus ``net_mode = "netns"``,
``apply_net``/``revert_net`` and ``rolling_restart``. Every SC also serves ``/health``
(``--metrics``); a rolling restart waits for it, or for an SPU's ready file, before the next
node. Processes are stopped by
pid and the network (namespaces, bridge, filters) by its own names in :meth:`close`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict
from typing import Any

from .cluster import FSYNC_LOG_ENV, SECRET, wait_for
from .nemesis import FAIL_FSYNC_ENV
from .net_faults import EdgeCounts, NetPlan
from .netns import Network
from .system import Node, System

TERM_TIMEOUT_S = 30.0  # a node that has not exited this long after SIGTERM is killed
SERVE_TIMEOUT_S = 60.0  # a restarted node must serve again within this
HEALTH_TIMEOUT_S = 2.0


class NetnsSystem(System):
    net_mode = "netns"

    def __init__(self, root: str, scs: int = 3, spus: int = 3, spu_env: dict[str, str] | None = None,
                 heartbeat_timeout_ms: int = 1500, sc_env: dict[str, str] | None = None) -> None:
        # Not System.__init__: that one builds proxies. The same attributes, hosts instead.
        self.root = root
        os.makedirs(root, exist_ok=True)
        self.proxies = {}
        self.nodes: dict[str, Node] = {}
        self.paused: set[str] = set()
        self.spu_leaders: dict[int, int | None] = {}
        self.sc_leader: int | None = None
        self.edges = EdgeCounts()
        self._netem: dict[str, NetPlan] = {}  # host -> the plan whose shape it carries
        self._stack = contextlib.ExitStack()
        self.net = self._stack.enter_context(Network())
        try:
            self._build(scs, spus, spu_env or {}, heartbeat_timeout_ms, sc_env or {})
        except BaseException:
            self._stack.close()
            raise

    def _build(self, scs: int, spus: int, spu_env: dict[str, str], heartbeat_timeout_ms: int,
               sc_env: dict[str, str]) -> None:
        root = self.root
        self.hosts = {f"sc-{j}": self.net.add_host(f"sc{j}") for j in range(1, scs + 1)}
        self.hosts.update({f"spu-{i}": self.net.add_host(f"spu{i}") for i in range(1, spus + 1)})
        raft = {j: f"{self.hosts[f'sc-{j}'].address}:{self.hosts[f'sc-{j}'].free_port()}" for j in range(1, scs + 1)}
        self.admin = {j: f"{self.hosts[f'sc-{j}'].address}:{self.hosts[f'sc-{j}'].free_port()}"
                      for j in range(1, scs + 1)}
        # /health on the SCs only: an SPU's ready file says it serves, and an SPU without the
        # metrics listener boots as in proxy mode, which the disk-wipe faults' timing needs (a
        # wiped leader must be back within the SC's heartbeat timeout).
        self.metrics = {name: f"{h.address}:{h.free_port()}" for name, h in self.hosts.items()
                        if name.startswith("sc-")}
        for j in range(1, scs + 1):
            name = f"sc-{j}"
            args = [sys.executable, "-m", "kolk", "sc", "--id", str(j), "--data-dir", os.path.join(root, name),
                    "--raft", raft[j], "--admin", self.admin[j], "--heartbeat-timeout-ms", str(heartbeat_timeout_ms),
                    "--metrics", self.metrics[name]]
            for k in range(1, scs + 1):
                if k != j:
                    args += ["--peer", f"{k}={raft[k]}/{self.admin[k]}"]
            env = {**os.environ, "KOLK_CLUSTER_SECRET": SECRET, FSYNC_LOG_ENV: os.path.join(root, f"{name}.fsync"),
                   **sc_env}
            self.nodes[name] = Node(name, args, os.path.join(root, name), os.path.join(root, f"{name}.log"), env)
        for i in range(1, spus + 1):
            name = f"spu-{i}"
            host = self.hosts[name]
            address = f"{host.address}:{host.free_port()}"
            ready = os.path.join(root, f"{name}.ready")
            args = [sys.executable, "-m", "kolk", "spu", "--id", str(i), "--sc", ",".join(self.admin.values()),
                    "--data-dir", os.path.join(root, name), "--public", address, "--private", address,
                    "--ready-file", ready, "--replica-lag-max-ms", "3000",
                    "--heartbeat-interval-ms", "300", "--replica-fetch-wait-ms", "200"]
            env = {**os.environ, "KOLK_CLUSTER_SECRET": SECRET,
                   FAIL_FSYNC_ENV: os.path.join(root, f"{name}.fail-fsync"), **spu_env}
            self.nodes[name] = Node(name, args, os.path.join(root, name), os.path.join(root, f"{name}.log"), env,
                                    ready_file=ready)

    # ---------------------------------------------------------------- addresses

    @property
    def client_sc_addresses(self) -> list[str]:
        return list(self.admin.values())

    def sc_by_admin(self, address: str) -> int | None:
        return next((j for j, a in self.admin.items() if a == address), None)

    def address(self, node: str) -> str:
        """The node's host address on the bridge."""
        return self.hosts[node].address

    # ---------------------------------------------------------------- processes

    def start(self, name: str, env: dict[str, str] | None = None) -> None:
        n = self.nodes[name]
        if n.alive:
            return
        if n.ready_file and os.path.exists(n.ready_file):
            os.unlink(n.ready_file)
        with open(n.log_path, "ab") as log:
            n.proc = self.hosts[name].popen(n.args, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env={**n.env, **(env or {})})
        self.paused.discard(name)

    def terminate(self, name: str) -> bool:
        """SIGTERM and wait for the exit; True if it exited by itself within ``TERM_TIMEOUT_S``
        (else it is killed)."""
        n = self.nodes[name]
        if n.proc is None or n.proc.poll() is not None:
            return True
        if name in self.paused:
            os.kill(n.proc.pid, signal.SIGCONT)
            self.paused.discard(name)
        os.kill(n.proc.pid, signal.SIGTERM)
        try:
            n.proc.wait(timeout=TERM_TIMEOUT_S)
            return True
        except subprocess.TimeoutExpired:
            n.proc.kill()
            n.proc.wait(timeout=30)
            return False

    def healthy(self, name: str) -> bool:
        """Its /health answers 200 (an SC in a Raft quorum with a leader); True for a node without
        a metrics listener (SPUs: their ready file says they serve)."""
        if name not in self.metrics:
            return True
        try:
            with urllib.request.urlopen(f"http://{self.metrics[name]}/health", timeout=HEALTH_TIMEOUT_S) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_serving(self, name: str, timeout_s: float = SERVE_TIMEOUT_S) -> None:
        """Until the node serves: its ready file (SPUs) or its /health OK (SCs)."""
        n = self.nodes[name]
        wait_for(lambda: not n.alive or ((n.ready_file is None or os.path.exists(n.ready_file))
                                         and self.healthy(name)), timeout_s, f"{name} to serve again")
        if not n.alive:
            raise AssertionError(f"{name} exited; see {n.log_path}")

    def rolling_restart(self, order: list[str]) -> dict[str, Any]:
        """Each node in ``order``, one at a time: SIGTERM, restart, wait until it serves again.
        A node that does not come back ends the roll (never two nodes down at once); the fault's
        stop restarts it if it has exited."""
        done: list[dict[str, Any]] = []
        for name in order:
            t0 = time.monotonic()
            clean = self.terminate(name)
            self.start(name)
            try:
                self.wait_serving(name)
            except AssertionError as e:
                return {"restarts": done, "errors": [f"{name}: {e}"]}
            done.append({"node": name, "clean_exit": clean, "seconds": round(time.monotonic() - t0, 2)})
        return {"restarts": done}

    # ---------------------------------------------------------------- the network

    def apply_net(self, plan: NetPlan) -> None:
        for node, shape in plan.netem.items():
            self._netem[node] = plan
            self.net.netem(self.hosts[node], **asdict(shape))
        for a, b in self.edges.add(plan.edges):
            self.net.partition(self.hosts[a], self.hosts[b], one_way=True)

    def revert_net(self, plan: NetPlan) -> None:
        for a, b in self.edges.remove(plan.edges):
            self._heal_edge(a, b)
        for node in plan.netem:
            if self._netem.get(node) is plan:
                del self._netem[node]
                self.net.clear_netem(self.hosts[node])

    def _heal_edge(self, a: str, b: str) -> None:
        """Let packets from a to b flow again; ``Network.heal`` opens both directions, so the
        reverse edge is dropped again at once if another fault still holds it."""
        self.net.heal(self.hosts[a], self.hosts[b])
        if (b, a) in self.edges.cut():
            self.net.partition(self.hosts[b], self.hosts[a], one_way=True)

    def heal_all(self) -> None:
        """No packet filter, no netem, then what the proxy mode's heal_all does for processes."""
        self.net.heal_all()
        self.edges.clear()
        for node in list(self._netem):
            self.net.clear_netem(self.hosts[node])
        self._netem.clear()
        super().heal_all()

    def close(self) -> None:
        """Stop every process by pid, then remove the network by its own names."""
        try:
            super().close()
        finally:
            self._stack.close()


def describe(system: NetnsSystem) -> dict[str, Any]:
    return {"mode": "netns", "hosts": {n: h.address for n, h in sorted(system.hosts.items())}}
