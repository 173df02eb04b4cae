"""The system under test: 3 SCs and 3-5 SPUs as real processes, every link through a proxy.

Links and their proxies (``FaultProxy``, jepsen/proxy.py), named ``(kind, node, peer)``:

* ``("raft", "sc-j", "")``: Raft into SC j (its advertised Raft address is the proxy). pysyncobj
  names nodes by address, so every peer reaches SC j through this one proxy.
* ``("sc", "spu-i", "sc-j")``: SPU i's admin connection to SC j (SPU i is given these addresses).
* ``("private", "spu-i", "")``: replication into SPU i (its registered private address).
* ``("public", "spu-i", "")``: clients into SPU i (its registered public address).
* ``("client", "sc-j", "")``: clients into SC j's admin API.

Processes are started and stopped by pid. ``System`` implements what jepsen/nemesis.py needs:
kill, restart, pause, resume, the proxies of a node, its data directory, whether it has exited,
its fsync-failure trigger file, and who leads.

Every SPU is started with ``KOLK_TEST_FAIL_FSYNC_FILE=<root>/spu-<i>.fail-fsync``: while that
file exists the SPU's next segment fsync fails with EIO, and the SPU removes the file (a test
hook; the nemesis's ``disk-fail`` fault creates the file). ``spu_env`` and ``sc_env`` add
variables to every SPU or SC (the runner's broken builds).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

from .cluster import FSYNC_LOG_ENV, SECRET, cut_node_to_fsynced, free_port, wait_for
from .nemesis import FAIL_FSYNC_ENV
from .proxy import FaultProxy

START_TIMEOUT_S = 60.0


@dataclass
class Node:
    name: str
    args: list[str]
    data_dir: str
    log_path: str
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen | None = None
    ready_file: str | None = None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class System:
    def __init__(self, root: str, scs: int = 3, spus: int = 3, spu_env: dict[str, str] | None = None,
                 heartbeat_timeout_ms: int = 1500, sc_env: dict[str, str] | None = None) -> None:
        self.root = root
        os.makedirs(root, exist_ok=True)
        self.proxies: dict[tuple[str, str, str], FaultProxy] = {}
        self.nodes: dict[str, Node] = {}
        self.paused: set[str] = set()
        # Who leads, as the runner last saw it (it polls the SC); the nemesis aims at roles.
        self.spu_leaders: dict[int, int | None] = {}
        self.sc_leader: int | None = None
        sc_ids = list(range(1, scs + 1))
        raft = {j: free_port() for j in sc_ids}
        admin = {j: free_port() for j in sc_ids}
        for j in sc_ids:
            self._proxy(("raft", f"sc-{j}", ""), f"127.0.0.1:{raft[j]}")
            self._proxy(("client", f"sc-{j}", ""), f"127.0.0.1:{admin[j]}")
        for j in sc_ids:
            name = f"sc-{j}"
            args = [sys.executable, "-m", "kolk", "sc", "--id", str(j), "--data-dir", os.path.join(root, name),
                    "--raft", self.proxies[("raft", name, "")].address, "--bind-raft", f"127.0.0.1:{raft[j]}",
                    "--admin", f"127.0.0.1:{admin[j]}", "--heartbeat-timeout-ms", str(heartbeat_timeout_ms)]
            for k in sc_ids:
                if k != j:
                    args += ["--peer", f"{k}={self.proxies[('raft', f'sc-{k}', '')].address}/127.0.0.1:{admin[k]}"]
            env = {**os.environ, "KOLK_CLUSTER_SECRET": SECRET, FSYNC_LOG_ENV: os.path.join(root, f"{name}.fsync"),
                   **(sc_env or {})}
            self.nodes[name] = Node(name, args, os.path.join(root, name), os.path.join(root, f"{name}.log"), env)
        for i in range(1, spus + 1):
            name = f"spu-{i}"
            port = free_port()
            real = f"127.0.0.1:{port}"
            public = self._proxy(("public", name, ""), real).address
            private = self._proxy(("private", name, ""), real).address
            scs_via = [self._proxy(("sc", name, f"sc-{j}"), f"127.0.0.1:{admin[j]}").address for j in sc_ids]
            ready = os.path.join(root, f"{name}.ready")
            args = [sys.executable, "-m", "kolk", "spu", "--id", str(i), "--sc", ",".join(scs_via),
                    "--data-dir", os.path.join(root, name), "--public", public, "--private", private,
                    "--bind", real, "--ready-file", ready, "--replica-lag-max-ms", "3000",
                    "--heartbeat-interval-ms", "300", "--replica-fetch-wait-ms", "200"]
            env = {**os.environ, "KOLK_CLUSTER_SECRET": SECRET,  # nodes prove it to each other without TLS
                   FAIL_FSYNC_ENV: os.path.join(root, f"{name}.fail-fsync"), **(spu_env or {})}
            self.nodes[name] = Node(name, args, os.path.join(root, name), os.path.join(root, f"{name}.log"), env,
                                    ready_file=ready)

    def _proxy(self, key: tuple[str, str, str], target: str) -> FaultProxy:
        p = self.proxies.get(key)
        if p is None:
            p = self.proxies[key] = FaultProxy(target).start()
        return p

    # ---------------------------------------------------------------- addresses

    @property
    def client_sc_addresses(self) -> list[str]:
        return [p.address for (kind, _n, _p), p in sorted(self.proxies.items()) if kind == "client"]

    def sc_names(self) -> list[str]:
        return [n for n in self.nodes if n.startswith("sc-")]

    def sc_by_admin(self, address: str) -> int | None:
        """The SC whose own admin address (as ``cluster_status`` names the leader) is ``address``."""
        return next((int(name.split("-")[1]) for (kind, name, _), px in self.proxies.items()
                     if kind == "client" and px.target == address), None)

    def spu_names(self) -> list[str]:
        return [n for n in self.nodes if n.startswith("spu-")]

    # ---------------------------------------------------------------- jepsen/nemesis.py's System

    def scs(self) -> list[int]:
        return [int(n.split("-")[1]) for n in self.sc_names()]

    def spus(self) -> list[int]:
        return [int(n.split("-")[1]) for n in self.spu_names()]

    def leader_spu(self, partition: int) -> int | None:
        return self.spu_leaders.get(partition)

    def leader_sc(self) -> int | None:
        return self.sc_leader

    def proxies_of(self, node: str) -> dict[str, FaultProxy]:
        """The proxies on links into (``in:<kind>``) and out of (``out:<kind>``) ``node``; kind
        ``public`` is a client link (clients into an SPU or an SC), any other a node link."""
        out: dict[str, FaultProxy] = {}
        for (kind, into, peer), p in self.proxies.items():
            if kind == "sc":  # SPU ``into`` -> SC ``peer``
                if node == into:
                    out[f"out:sc@{peer}"] = p
                elif node == peer:
                    out[f"in:sc@{into}"] = p
            elif node == into:
                out[f"in:{'public' if kind == 'client' else kind}"] = p
        return out

    def data_dir(self, node: str) -> str:
        return self.nodes[node].data_dir

    def exit_code(self, node: str) -> int | None:
        """None while the node's process runs; its exit status once it has exited (-1: never started)."""
        n = self.nodes[node]
        if n.proc is None:
            return -1
        return n.proc.poll()

    def fail_fsync_file(self, node: str) -> str:
        """The file whose existence makes the SPU fail its next segment fsync (``""`` for an SC)."""
        return self.nodes[node].env.get(FAIL_FSYNC_ENV, "")

    def cut_sc_to_fsynced(self, node: str) -> dict[str, int]:
        """Power loss on one SC: its files cut back to the sizes it last reported fsynced."""
        n = self.nodes[node]
        return cut_node_to_fsynced(n.env.get(FSYNC_LOG_ENV, ""), n.data_dir)

    # ---------------------------------------------------------------- processes

    def start_all(self) -> None:
        from kolk.client.admin import run

        for name in self.sc_names():
            self.start(name)
        # One event loop for the whole wait.
        if not run(self._sc_leader_elected):
            raise AssertionError("the SCs elected no leader in time\n" + self.logs())
        for name in self.spu_names():
            self.start(name)
        for name in self.spu_names():
            self.wait_ready(name)

    def start(self, name: str, env: dict[str, str] | None = None) -> None:
        n = self.nodes[name]
        if n.alive:
            return
        if n.ready_file and os.path.exists(n.ready_file):
            os.unlink(n.ready_file)
        with open(n.log_path, "ab") as log:
            n.proc = subprocess.Popen(n.args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      env={**n.env, **(env or {})})
        self.paused.discard(name)

    async def _sc_leader_elected(self) -> bool:
        import asyncio

        from kolk.client.admin import AdminClient
        from kolk.protocol.errors import KolkError

        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT_S
        while loop.time() < deadline:
            try:
                if (await AdminClient(self.client_sc_addresses, timeout_s=2).cluster_status())["leader"]:
                    return True
            except KolkError:
                pass  # not up yet
            await asyncio.sleep(0.1)  # polling for the election, with a deadline
        return False

    def wait_ready(self, name: str, timeout_s: float = START_TIMEOUT_S) -> None:
        n = self.nodes[name]
        wait_for(lambda: n.ready_file is None or os.path.exists(n.ready_file) or _dead(n), timeout_s,
                 f"{name} to serve")
        if not n.alive:
            raise AssertionError(f"{name} exited; see {n.log_path}")

    def kill(self, name: str) -> None:
        n = self.nodes[name]
        if n.proc is not None and n.proc.poll() is None:
            if name in self.paused:
                os.kill(n.proc.pid, signal.SIGCONT)
            os.kill(n.proc.pid, signal.SIGKILL)
            n.proc.wait(timeout=30)
        self.paused.discard(name)

    def restart(self, name: str, env: dict[str, str] | None = None) -> None:
        self.start(name, env)

    def pause(self, name: str) -> None:
        n = self.nodes[name]
        if n.alive and name not in self.paused:
            os.kill(n.proc.pid, signal.SIGSTOP)  # type: ignore[union-attr]
            self.paused.add(name)

    def resume(self, name: str) -> None:
        n = self.nodes[name]
        if n.alive and name in self.paused:
            os.kill(n.proc.pid, signal.SIGCONT)  # type: ignore[union-attr]
        self.paused.discard(name)

    def heal_all(self) -> None:
        """Every proxy forwarding cleanly, no fsync failure armed, every process running."""
        for p in self.proxies.values():
            p.heal()
            p.set_delay(0)
            p.set_drop_replies(False)
        for name in list(self.paused):
            self.resume(name)
        for name in self.nodes:  # an fsync failure armed and never consumed is disarmed
            trigger = self.fail_fsync_file(name)
            if trigger and os.path.exists(trigger):
                os.unlink(trigger)
        for name in self.nodes:
            if not self.nodes[name].alive:
                self.start(name)

    def close(self) -> None:
        """Stop every process by pid, then every proxy."""
        for name, n in self.nodes.items():
            if n.proc is not None and n.proc.poll() is None:
                if name in self.paused:
                    os.kill(n.proc.pid, signal.SIGCONT)
                n.proc.kill()
                n.proc.wait(timeout=30)
        for p in self.proxies.values():
            p.stop()

    def logs(self, lines: int = 30) -> str:
        out = []
        for n in self.nodes.values():
            try:
                with open(n.log_path, errors="replace") as f:
                    out.append(f"--- {n.name}\n" + "".join(f.readlines()[-lines:]))
            except OSError:
                pass
        return "\n".join(out)


def _dead(n: Node) -> bool:
    return not n.alive


def describe(system: System) -> dict[str, Any]:
    return {"nodes": sorted(system.nodes), "proxies": sorted("/".join(k) for k in system.proxies)}


class NemesisView:
    """``System`` as jepsen/nemesis.py's protocol names it (``proxies(node)``)."""

    def __init__(self, system: System) -> None:
        self.s = system

    def __getattr__(self, name: str) -> Any:
        return getattr(self.s, name)

    def proxies(self, node: str) -> dict[str, FaultProxy]:
        return self.s.proxies_of(node)
