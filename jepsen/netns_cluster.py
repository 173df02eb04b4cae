"""Real SCs and SPUs, each in a host of its own (a network namespace of jepsen/netns.py).

``NetnsCluster(net, root_dir, scs=3, spus=3, tls=False)`` adds hosts ``sc1..scN`` and
``spu1..spuM`` to ``net``; every node binds to and advertises its host's address (never
loopback), on ports the OS hands out inside that host, serves ``/metrics`` and ``/health``
(``--metrics``), writes a ready file, and logs to ``root_dir/<name>.log``. With ``tls=True`` the
``kolk cert`` CLI makes a CA (``root_dir/pki``), a node certificate per host carrying that host's
address as its only IP SAN, and a client identity ``client`` for the test
(``cluster.tls_for("client")``). Processes are started and stopped by pid; ``close()`` stops
every one still running (the caller then closes the Network).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from .cluster import SECRET, wait_for
from .netns import Host, Network

START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 30.0
HEALTH_TIMEOUT_S = 10.0
CLIENT_NAME = "client"
CLI_PARALLEL_MAX = 16  # `kolk cert` processes at once


@dataclass
class NetnsNode:
    name: str
    host: Host
    args: list[str]
    data_dir: str
    log_path: str
    ready_file: str
    metrics: str  # host:port of /metrics and /health
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen | None = None
    paused: bool = False

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class NetnsCluster:
    def __init__(self, net: Network, root_dir: str, scs: int = 3, spus: int = 3, tls: bool = False,
                 spu_env: dict[str, str] | None = None, sc_env: dict[str, str] | None = None,
                 extra_sc_args: tuple[str, ...] = (), extra_spu_args: tuple[str, ...] = (),
                 heartbeat_timeout_ms: int = 3000) -> None:
        if not 1 <= scs <= 9 or not 0 <= spus <= 50:
            raise ValueError(f"scs must be within 1..9 and spus within 0..50, got {scs} and {spus}")
        self.net = net
        self.root = root_dir
        os.makedirs(root_dir, exist_ok=True)
        self.tls = tls
        self.pki = os.path.join(root_dir, "pki")
        self.nodes: dict[str, NetnsNode] = {}
        sc_hosts = [net.add_host(f"sc{j}") for j in range(1, scs + 1)]
        spu_hosts = [net.add_host(f"spu{i}") for i in range(1, spus + 1)]
        if tls:
            self._make_pki(sc_hosts + spu_hosts)
        raft = {h.name: f"{h.address}:{h.free_port()}" for h in sc_hosts}
        admin = {h.name: f"{h.address}:{h.free_port()}" for h in sc_hosts}
        self.admin_addresses = [admin[h.name] for h in sc_hosts]
        base_env = {**os.environ, "KOLK_CLUSTER_SECRET": SECRET}
        for j, h in enumerate(sc_hosts, start=1):
            args = [sys.executable, "-m", "kolk", "sc", "--id", str(j), "--data-dir", os.path.join(root_dir, h.name),
                    "--raft", raft[h.name], "--admin", admin[h.name],
                    "--heartbeat-timeout-ms", str(heartbeat_timeout_ms)]
            for k, other in enumerate(sc_hosts, start=1):
                if k != j:
                    args += ["--peer", f"{k}={raft[other.name]}/{admin[other.name]}"]
            self._add(h, args, {**base_env, **(sc_env or {})}, extra_sc_args)
        for i, h in enumerate(spu_hosts, start=1):
            args = [sys.executable, "-m", "kolk", "spu", "--id", str(i), "--sc", ",".join(self.admin_addresses),
                    "--data-dir", os.path.join(root_dir, h.name), "--public", f"{h.address}:{h.free_port()}",
                    "--replica-lag-max-ms", "3000", "--heartbeat-interval-ms", "300",
                    "--replica-fetch-wait-ms", "200"]
            self._add(h, args, {**base_env, **(spu_env or {})}, extra_spu_args)

    def _add(self, h: Host, args: list[str], env: dict[str, str], extra: tuple[str, ...]) -> None:
        ready = os.path.join(self.root, f"{h.name}.ready")
        metrics = f"{h.address}:{h.free_port()}"
        args = args + ["--ready-file", ready, "--metrics", metrics]
        if self.tls:
            args += ["--tls-ca", self._pki("ca.crt"), "--tls-cert", self._pki(f"{h.name}.crt"),
                     "--tls-key", self._pki(f"{h.name}.key")]
        self.nodes[h.name] = NetnsNode(h.name, h, args + list(extra), os.path.join(self.root, h.name),
                                       os.path.join(self.root, f"{h.name}.log"), ready, metrics, env)

    # ---------------------------------------------------------------- certificates

    def _pki(self, name: str) -> str:
        return os.path.join(self.pki, name)

    def _make_pki(self, hosts: list[Host]) -> None:
        kolk = [sys.executable, "-m", "kolk", "cert"]
        _check_all([[*kolk, "ca", "--out", self.pki]])
        issue = [*kolk, "issue", "--ca", self.pki, "--out", self.pki]
        # Issued side by side: each is a CLI start-up (seconds on a loaded machine), the CPU small.
        _check_all([[*issue, "--kind", "node", "--ip", h.address, "--dns", h.name, h.name] for h in hosts]
                   + [[*issue, "--kind", "client", CLIENT_NAME]])

    def tls_for(self, name: str = CLIENT_NAME) -> Any:
        """The TLS settings of ``name`` (a node or the client identity); None without TLS."""
        if not self.tls:
            return None
        from kolk.security.tls import TlsConfig

        return TlsConfig(self._pki("ca.crt"), self._pki(f"{name}.crt"), self._pki(f"{name}.key"))

    # ---------------------------------------------------------------- processes

    def sc_names(self) -> list[str]:
        return [n for n in self.nodes if n.startswith("sc")]

    def spu_names(self) -> list[str]:
        return [n for n in self.nodes if n.startswith("spu")]

    def host(self, name: str) -> Host:
        return self.nodes[name].host

    def alive(self, name: str) -> bool:
        return self.nodes[name].alive

    def start_all(self) -> None:
        """The SCs, a leader among them, then the SPUs, each serving."""
        for name in self.sc_names():
            self.start(name)
        wait_for(self._leader, START_TIMEOUT_S, lambda: "the SCs to elect a leader\n" + self.logs())
        for name in self.spu_names():
            self.start(name)
        for name in self.spu_names():
            self.wait_ready(name)

    def _leader(self) -> Any:
        from kolk.client.admin import AdminClient, run

        for name in self.sc_names():
            if not self.nodes[name].alive:
                raise AssertionError(f"{name} exited\n" + self.logs())
        return run(lambda: AdminClient(self.admin_addresses, timeout_s=2, tls=self.tls_for()).cluster_status())["leader"]

    def start(self, name: str) -> None:
        n = self.nodes[name]
        if n.alive:
            return
        if os.path.exists(n.ready_file):
            os.unlink(n.ready_file)
        with open(n.log_path, "ab") as log:
            n.proc = n.host.popen(n.args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=n.env)
        n.paused = False

    def wait_ready(self, name: str, timeout_s: float = START_TIMEOUT_S) -> None:
        n = self.nodes[name]
        wait_for(lambda: os.path.exists(n.ready_file) or not n.alive, timeout_s, f"{name} to serve")
        if not n.alive:
            raise AssertionError(f"{name} exited; see {n.log_path}\n" + self.logs())

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """Send ``sig`` and wait for the exit; SIGKILL after ``timeout``. The exit status."""
        n = self.nodes[name]
        if n.proc is None or n.proc.poll() is not None:
            return n.proc.returncode if n.proc else None
        if n.paused:
            os.kill(n.proc.pid, signal.SIGCONT)
            n.paused = False
        os.kill(n.proc.pid, sig)
        try:
            return n.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.kill(n.proc.pid, signal.SIGKILL)
            return n.proc.wait(timeout=STOP_TIMEOUT_S)

    def kill(self, name: str) -> None:
        self.stop(name, signal.SIGKILL)

    def pause(self, name: str) -> None:
        n = self.nodes[name]
        if n.alive and not n.paused:
            os.kill(n.proc.pid, signal.SIGSTOP)  # type: ignore[union-attr]
            n.paused = True

    def resume(self, name: str) -> None:
        n = self.nodes[name]
        if n.alive and n.paused:
            os.kill(n.proc.pid, signal.SIGCONT)  # type: ignore[union-attr]
        n.paused = False

    def health(self, name: str) -> tuple[int, str]:
        """(status, body) of GET /health on the node's metrics address (HTTPS with TLS)."""
        tls = self.tls_for()
        context = tls.client_context() if tls is not None else None
        url = f"{'https' if context else 'http'}://{self.nodes[name].metrics}/health"
        try:
            with urllib.request.urlopen(url, context=context, timeout=HEALTH_TIMEOUT_S) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def ready_info(self, name: str) -> dict[str, Any]:
        with open(self.nodes[name].ready_file) as f:
            return dict(json.load(f))

    def close(self) -> None:
        """Stop every process this cluster started, by pid."""
        for n in self.nodes.values():
            if n.proc is not None and n.proc.poll() is None:
                if n.paused:
                    os.kill(n.proc.pid, signal.SIGCONT)
                os.kill(n.proc.pid, signal.SIGKILL)
                n.proc.wait(timeout=STOP_TIMEOUT_S)

    def logs(self, lines: int = 30) -> str:
        out = []
        for n in self.nodes.values():
            try:
                with open(n.log_path, errors="replace") as f:
                    out.append(f"--- {n.name}\n" + "".join(f.readlines()[-lines:]))
            except OSError:
                pass
        return "\n".join(out)


def _check_all(commands: list[list[str]]) -> None:
    """Run the commands at once (at most CLI_PARALLEL_MAX at a time); fail naming the first
    that failed."""
    for k in range(0, len(commands), CLI_PARALLEL_MAX):
        procs = [(args, subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
                 for args in commands[k:k + CLI_PARALLEL_MAX]]
        failed = []
        try:
            for args, p in procs:
                out, err = p.communicate(timeout=120)
                if p.returncode != 0:
                    failed.append(f"{' '.join(args[2:])} failed: {err.strip() or out.strip()}")
        finally:
            for _args, p in procs:
                if p.poll() is None:
                    p.kill()
                    p.communicate(timeout=30)
        if failed:
            raise RuntimeError(failed[0])
