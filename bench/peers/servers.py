"""Each system's servers on loopback, in a temporary directory: start, resident memory, CPU, stop.

``start`` returns once the system serves: a client has connected and completed a round trip
(Kolk: every SPU registered and the SC answering a metadata call; JetStream: the account
info call answered, which in a cluster needs the meta leader; Redis: PING). ``start_ms``
is the time from spawning the first process to that moment. ``stop`` stops exactly the
processes ``start`` spawned, by pid.
"""

from __future__ import annotations

import abc
import asyncio
import os
import re
import subprocess
import sys
import time
from typing import Any

from . import procs

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
START_TIMEOUT_S = 60.0

# Measured with strace on nats-server 2.9.10 while 41,000 messages were published: 41,002
# pwrite64 and not one fsync or fdatasync (2.9 has no setting to fsync each write).
NATS_DURABILITY = ("file store; each message written to the OS page cache before the ack, "
                   "no fsync during the run (strace: one pwrite per message, zero fsyncs)")
NATS_R3_DURABILITY = ("file store, 3 replicas; acknowledged once a majority has it, "
                      "written to the page cache, no fsync during the run")
REDIS_DEFAULT_DURABILITY = "as shipped: no AOF, RDB snapshot at most every 60 s; acknowledged from memory"
REDIS_ALWAYS_DURABILITY = "appendonly yes, appendfsync always: fsync before the reply"
KOLK_DURABILITY = "fsync before the acknowledgement (acks=all)"
KOLK_RF3_DURABILITY = "3 replicas, acks=all: fsynced on every in-sync replica before the acknowledgement"


class Servers(abc.ABC):
    """What every system's server set offers the benchmark."""

    name = ""
    durability = ""
    replicas = 1
    start_ms = 0.0

    @abc.abstractmethod
    async def start(self) -> None:
        """Spawn the processes; return once a client round trip succeeds; set ``start_ms``."""

    @abc.abstractmethod
    def processes(self) -> dict[str, int]:
        """The server processes' ids by name (Kolk: "sc", "spu-1", ...)."""

    def serving(self) -> list[str]:
        """The names of the processes that serve produce requests (Kolk: the SPUs, not the SC)."""
        return list(self.processes())

    def pids(self) -> list[int]:
        """The server processes' ids."""
        return list(self.processes().values())

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop exactly the processes ``start`` spawned."""

    def rss_bytes(self) -> int:
        return sum(procs.rss_bytes(pid) for pid in self.pids())

    def rss_by_process(self) -> dict[str, int]:
        return {name: procs.rss_bytes(pid) for name, pid in self.processes().items()}


class KolkServers(Servers):
    """1 SC and ``spus`` SPUs through ``kolk.cli.local_cluster`` (the processes ``kolk cluster start`` runs)."""

    def __init__(self, workdir: str, spus: int = 1) -> None:
        self.workdir = workdir
        self.spus = spus
        self.replicas = spus
        self.name = "Kolk" if spus == 1 else f"Kolk, {spus} SPUs"
        self.durability = KOLK_DURABILITY if spus == 1 else KOLK_RF3_DURABILITY
        self.profile: dict[str, Any] = {}

    async def start(self) -> None:
        from kolk.cli import local_cluster
        from kolk.client.client import AsyncClient

        os.environ["KOLK_HOME"] = self.workdir
        t0 = time.perf_counter()
        self.profile = await asyncio.get_running_loop().run_in_executor(None, local_cluster.start, self.spus)
        client = AsyncClient(self.profile["sc"])
        try:
            await client.list_topics()
        finally:
            await client.close()
        self.start_ms = (time.perf_counter() - t0) * 1000

    @property
    def address(self) -> str:
        return self.profile["sc"]

    def processes(self) -> dict[str, int]:
        return dict(self.profile.get("pids", {}))

    def serving(self) -> list[str]:
        return [name for name in self.processes() if name.startswith("spu-")]

    def stop(self) -> None:
        from kolk.cli import local_cluster

        if self.profile:
            os.environ["KOLK_HOME"] = self.workdir
            local_cluster.stop()
            self.profile = {}


class NatsServers(Servers):
    """``nats-server -js``: one node, or a cluster of ``nodes`` with routes between them."""

    def __init__(self, workdir: str, nodes: int = 1) -> None:
        self.workdir = workdir
        self.nodes = nodes
        self.replicas = nodes
        self.name = "NATS JetStream" if nodes == 1 else f"NATS JetStream, {nodes} nodes"
        self.durability = NATS_DURABILITY if nodes == 1 else NATS_R3_DURABILITY
        self.procs: list[subprocess.Popen] = []
        self.urls: list[str] = []

    def _config(self, i: int, ports: list[int], routes: list[int]) -> str:
        store = os.path.join(self.workdir, f"n{i}")
        lines = [f'server_name: "n{i}"', f"listen: 127.0.0.1:{ports[i]}",
                 f'jetstream {{ store_dir: "{store}" }}']
        if self.nodes > 1:
            others = ", ".join(f"nats-route://127.0.0.1:{routes[j]}" for j in range(self.nodes) if j != i)
            lines.append(f'cluster {{ name: "bench", listen: 127.0.0.1:{routes[i]}, routes: [{others}] }}')
        path = os.path.join(self.workdir, f"n{i}.conf")
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        return path

    async def start(self) -> None:
        import nats

        ports = [procs.free_port() for _ in range(self.nodes)]
        routes = [procs.free_port() for _ in range(self.nodes)]
        configs = [self._config(i, ports, routes) for i in range(self.nodes)]
        self.urls = [f"nats://127.0.0.1:{p}" for p in ports]
        t0 = time.perf_counter()
        for i, conf in enumerate(configs):
            self.procs.append(procs.spawn(["nats-server", "-c", conf], os.path.join(self.workdir, f"n{i}.log")))

        async def round_trip() -> None:
            nc = await nats.connect(self.urls[0], allow_reconnect=False, connect_timeout=1, error_cb=_quiet)
            try:
                await nc.jetstream(timeout=1).account_info()
            finally:
                await nc.close()

        await procs.wait_serving(f"nats-server (see {self.workdir}/n*.log)", round_trip,
                                 lambda: all(p.poll() is None for p in self.procs), START_TIMEOUT_S)
        self.start_ms = (time.perf_counter() - t0) * 1000

    def processes(self) -> dict[str, int]:
        if len(self.procs) == 1:
            return {"nats-server": self.procs[0].pid}
        return {f"nats-server n{i}": p.pid for i, p in enumerate(self.procs)}

    def stop(self) -> None:
        procs.stop(self.procs)
        self.procs = []


async def _quiet(exc: Exception) -> None:
    """nats-py prints every failed connect; while a server starts, those are expected."""


class RedisServer(Servers):
    """``redis-server`` on loopback: as shipped, or with ``appendfsync always``."""

    def __init__(self, workdir: str, fsync_always: bool = False) -> None:
        self.workdir = workdir
        self.fsync_always = fsync_always
        self.name = "Redis Streams, fsync always" if fsync_always else "Redis Streams"
        self.durability = REDIS_ALWAYS_DURABILITY if fsync_always else REDIS_DEFAULT_DURABILITY
        self.proc: subprocess.Popen | None = None
        self.port = 0

    async def start(self) -> None:
        import redis.asyncio as aredis

        self.port = procs.free_port()
        args = ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--dir", self.workdir,
                "--daemonize", "no", "--protected-mode", "yes"]
        if self.fsync_always:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        t0 = time.perf_counter()
        self.proc = procs.spawn(args, os.path.join(self.workdir, "redis.log"))
        proc = self.proc

        async def round_trip() -> None:
            r = aredis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=1)
            try:
                await r.ping()
            finally:
                await r.aclose()

        await procs.wait_serving(f"redis-server (see {self.workdir}/redis.log)", round_trip,
                                 lambda: proc.poll() is None, START_TIMEOUT_S)
        self.start_ms = (time.perf_counter() - t0) * 1000

    def processes(self) -> dict[str, int]:
        return {"redis-server": self.proc.pid} if self.proc else {}

    def stop(self) -> None:
        if self.proc:
            procs.stop([self.proc])
            self.proc = None


def versions() -> dict[str, str]:
    import importlib.metadata as md

    def pkg(name: str) -> str:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return "not installed"

    def number(text: str) -> str:
        m = re.search(r"v?=?(\d+\.\d+\.\d+)", text)
        return m.group(1) if m else text

    return {
        "python": sys.version.split()[0],
        "kolk": pkg("kolk"),
        "nats-server": number(procs.tool_version(["nats-server", "--version"])),
        "redis-server": number(procs.tool_version(["redis-server", "--version"])),
        "nats-py": pkg("nats-py"),
        "redis-py": pkg("redis"),
        "hiredis": pkg("hiredis"),
    }
