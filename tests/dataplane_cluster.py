"""A real SC and real SPU processes on loopback, for the data-plane end-to-end tests.

The SC is started with ``jepsen.cluster.ScCluster`` (size 1); each SPU is ``python -m kolk
spu`` on an OS-assigned port with a ready file. Every process is stopped by its own pid in
:meth:`DataPlaneCluster.close`. Waiting is always polling a condition with a deadline.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from typing import Any, Awaitable, Callable


sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jepsen.cluster import SECRET, ScCluster, free_port, wait_for  # noqa: E402
from jepsen.proxy import FaultProxy  # noqa: E402
from kolk.client.admin import AdminClient, run  # noqa: E402
from kolk.client.client import AsyncClient  # noqa: E402
from kolk.client.consumer import ConsumerRecord, Offset  # noqa: E402
from kolk.protocol.channel import SPU  # noqa: E402
from kolk.protocol.channel_client import ClientConnection  # noqa: E402

START_TIMEOUT_S = 30.0


@dataclass
class SpuProcess:
    spu_id: int
    port: int
    data_dir: str
    ready_file: str
    log_path: str
    proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class DataPlaneCluster:
    """One SC and ``spus`` SPUs, all real processes bound to 127.0.0.1."""

    def __init__(self, root: str, spus: int = 1, *, heartbeat_timeout_ms: int = 3000,
                 sc_args: tuple[str, ...] = (), spu_args: tuple[str, ...] = (),
                 proxied_private: bool = False, proxied_sc: bool = False, proxied_public: bool = False,
                 tls: bool = False, clients: tuple[str, ...] = ("admin",),
                 spu_env: dict[int, dict[str, str]] | None = None) -> None:
        """Each ``proxied_*`` puts a FaultProxy (``self.proxies[kind][spu_id]``) on one kind of
        link: ``private``, the replication links into an SPU (other SPUs fetch through it);
        ``sc``, the SPU's links to the SC; ``public``, the clients' links to the SPU (the SPU
        registers the proxy as its public address)."""
        self.root = root
        os.makedirs(root, exist_ok=True)
        # tls: a dev CA with a node certificate for every server and a client certificate per
        # name in ``clients``; self.pki[name] = {"cert", "key", "ca"}.
        self.pki: dict[str, dict[str, str]] = {}
        node_args: tuple[str, ...] = ()
        if tls:
            from kolk.security.certs import dev_pki

            self.pki = dev_pki(os.path.join(root, "pki"), nodes=["node"], clients=list(clients))
            n = self.pki["node"]
            node_args = ("--tls-ca", n["ca"], "--tls-cert", n["cert"], "--tls-key", n["key"])
        sc_args = tuple(sc_args) + node_args
        spu_args = tuple(spu_args) + node_args
        self.sc = ScCluster(os.path.join(root, "sc"), size=1, heartbeat_timeout_ms=heartbeat_timeout_ms,
                            extra_args=sc_args)
        self.spu_args = spu_args
        self.spu_env = spu_env or {}  # extra environment per SPU id (test hooks)
        kinds = [k for k, on in (("private", proxied_private), ("sc", proxied_sc), ("public", proxied_public)) if on]
        self.proxies: dict[str, dict[int, FaultProxy]] = {k: {} for k in kinds}
        self.spus: dict[int, SpuProcess] = {}
        for i in range(1, spus + 1):
            self.spus[i] = SpuProcess(i, free_port(), os.path.join(root, f"spu{i}"),
                                      os.path.join(root, f"spu{i}.ready"), os.path.join(root, f"spu{i}.log"))

    # ---------------------------------------------------------------- lifecycle

    @property
    def sc_addresses(self) -> list[str]:
        return self.sc.admin_addresses

    def start(self) -> "DataPlaneCluster":
        # The SPUs start beside the SC, as `kolk cluster start` starts them: an SPU retries its
        # registration until the SC leads, and the two start-ups overlap (1-3 s per cluster).
        self.sc.start_all()
        for i in self.spus:
            self.launch_spu(i)
        wait_for(lambda: run(lambda: AdminClient(self.sc_addresses, timeout_s=2,
                                                 tls=self.tls_for("node")).cluster_status())["leader"],
                 START_TIMEOUT_S, lambda: "the SC to elect itself leader\n" + self.sc.logs())
        for i in self.spus:
            wait_for(lambda i=i: self._ready(i), START_TIMEOUT_S, lambda i=i: f"SPU {i} to serve\n" + self.logs())
        return self

    def launch_spu(self, spu_id: int) -> SpuProcess:
        """Start (or restart, on the same data dir and port) one SPU; do not wait for it."""
        s = self.spus[spu_id]
        assert not s.alive, f"SPU {spu_id} is already running"
        if os.path.exists(s.ready_file):
            os.unlink(s.ready_file)
        sc = ",".join(self.sc_addresses)
        if "sc" in self.proxies:
            sc = self._proxy("sc", spu_id, self.sc_addresses[0]).address
        args = [sys.executable, "-m", "kolk", "spu", "--id", str(spu_id), "--sc", sc,
                "--data-dir", s.data_dir, "--ready-file", s.ready_file, *self.spu_args]
        if "public" in self.proxies:
            args += ["--public", self._proxy("public", spu_id, s.address).address, "--bind", s.address]
        else:
            args += ["--public", s.address]
        if "private" in self.proxies:
            args += ["--private", self._proxy("private", spu_id, s.address).address]
        with open(s.log_path, "ab") as log:
            s.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      preexec_fn=_die_with_parent,
                                      env=dict(os.environ, KOLK_CLUSTER_SECRET=SECRET, **self.spu_env.get(spu_id, {})))
        return s

    def _proxy(self, kind: str, spu_id: int, target: str) -> FaultProxy:
        proxy = self.proxies[kind].get(spu_id)
        if proxy is None:
            proxy = self.proxies[kind][spu_id] = FaultProxy(target).start()
        return proxy

    def _ready(self, spu_id: int) -> bool:
        s = self.spus[spu_id]
        if not s.alive:
            raise AssertionError(f"SPU {spu_id} exited with status {s.proc.returncode if s.proc else None}\n"
                                 + self.logs())
        return os.path.exists(s.ready_file)

    async def wait_spu_ready(self, spu_id: int, timeout_s: float = START_TIMEOUT_S) -> None:
        """Poll for the SPU's ready file without blocking the event loop (clients keep running)."""
        await wait_until(lambda: self._ready(spu_id), timeout_s, f"SPU {spu_id} to serve again")

    def kill_spu(self, spu_id: int, sig: int = signal.SIGKILL) -> None:
        s = self.spus[spu_id]
        if s.alive:
            os.kill(s.pid, sig)
            s.proc.wait(timeout=30)  # type: ignore[union-attr]

    def close(self) -> None:
        """Stop every process this cluster started, by pid."""
        for s in self.spus.values():
            if s.proc is not None and s.proc.poll() is None:
                s.proc.kill()
                s.proc.wait(timeout=30)
        for proxies in self.proxies.values():
            for proxy in proxies.values():
                proxy.stop()
        self.sc.close()

    def logs(self, lines: int = 40) -> str:
        out = [self.sc.logs()]
        for s in self.spus.values():
            out.append(f"--- spu{s.spu_id}\n" + "".join(read_text(s.log_path).splitlines(True)[-lines:]))
        return "\n".join(out)

    def spu_log(self, spu_id: int = 1) -> str:
        return read_text(self.spus[spu_id].log_path)

    # ---------------------------------------------------------------- clients

    def tls_for(self, name: str) -> Any:
        """The TLS settings of client (or node) ``name``; None on a plaintext cluster."""
        from kolk.security.tls import TlsConfig

        if not self.pki:
            return None
        p = self.pki[name]
        return TlsConfig(p["ca"], p["cert"], p["key"])

    def client(self, timeout_s: float = 20.0, as_: str = "admin") -> AsyncClient:
        return AsyncClient(self.sc_addresses, timeout_s=timeout_s, tls=self.tls_for(as_))


def _die_with_parent() -> None:
    """Safety net besides teardown: if the test process itself dies (a crash skips every
    finally), the kernel sends the SPU SIGKILL (Linux PR_SET_PDEATHSIG)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass


def read_text(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


async def wait_until(condition: Callable[[], Any], timeout_s: float, what: str | Callable[[], str],
                     interval_s: float = 0.01) -> Any:
    """Async twin of ``jepsen.cluster.wait_for``: poll ``condition`` (sync or async) until truthy."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    last_error: Exception | None = None
    while loop.time() < deadline:
        try:
            value = condition()
            if asyncio.iscoroutine(value):
                value = await value
            if value:
                return value
        except AssertionError:
            raise
        except Exception as e:  # noqa: BLE001 - remembered and reported at the deadline
            last_error = e
        await asyncio.sleep(interval_s)  # polling interval of a condition with a deadline
    text = what() if callable(what) else what
    raise AssertionError(f"not within {timeout_s} s: {text}" + (f" (last error: {last_error!r})" if last_error else ""))


async def raw_spu(address: str) -> ClientConnection:
    """A bare connection to an SPU, below the client library: ``await conn.call("fetch", ...)``."""
    return await ClientConnection.open(SPU, address, 5)


async def wait_committed(client: AsyncClient, topic: str, timeout_s: float = 20.0) -> list[int]:
    """Wait until every partition's high watermark reached its log end; return the HWs."""
    parts = await client.partitions(topic)

    async def all_committed() -> list[int] | None:
        hws = []
        for p in range(len(parts)):
            _start, hw, leo = await client.offsets(topic, p)
            if hw != leo:
                return None
            hws.append(hw)
        return hws
    return await wait_until(all_committed, timeout_s, f"every partition of {topic} to be committed")


async def read_all(client: AsyncClient, topic: str, *, partition: int | None = None,
                   start: Offset | None = None, timeout_s: float = 30.0) -> list[ConsumerRecord]:
    """Everything committed, from ``start`` (default: the beginning), with ``stop_at_end``."""
    await wait_committed(client, topic)
    consumer = client.consumer(topic, partition=partition, start=start or Offset.beginning(), stop_at_end=True)

    async def collect() -> list[ConsumerRecord]:
        return [r async for r in consumer]
    try:
        return await asyncio.wait_for(collect(), timeout_s)
    finally:
        await release_consumer(consumer)


async def release_consumer(consumer: Any) -> None:
    """Close a consumer (its streams are cancelled on the SPU)."""
    await consumer.close()


def by_partition(records: list[ConsumerRecord]) -> dict[int, list[ConsumerRecord]]:
    out: dict[int, list[ConsumerRecord]] = {}
    for r in records:
        out.setdefault(r.partition, []).append(r)
    return out


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def pid_gone(pid: int) -> bool:
    """True when no process has this pid any more (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("State:"):
                    return line.split()[1] == "Z"
    except FileNotFoundError:
        return True
    return False


def run_async(fn: Callable[[], Awaitable[Any]]) -> Any:
    """Run one test body on a fresh event loop."""
    return run(fn)



def disk_log(data_dir: str, name: str) -> tuple[list[tuple[int, bytes | None]], int, int]:
    """A stopped SPU's replica of ``name`` read from its files: ([(offset, value)], HW, LEO)."""
    from kolk.segments import LogStore, decode_records
    from kolk.segments.batch import iter_batches

    with LogStore(data_dir, create=False) as store:
        lg = store.open_log(name)
        out: list[tuple[int, bytes | None]] = []
        offset = lg.log_start_offset
        while offset < lg.log_end_offset:
            res = lg.read(offset, 8 << 20, lg.log_end_offset)
            for pos, _h in iter_batches(res.data, 64 << 20):
                out.extend((r.offset, r.value) for r in decode_records(res.data, pos))
            offset = res.next_offset
        return out, lg.high_watermark, lg.log_end_offset


async def offsets_topic(client: AsyncClient) -> list[dict[str, Any]]:
    """The partitions of ``_consumer_offsets``, asking the SC to create it first when it does not
    exist yet, as a client's first group call does (raises, to be retried, while it is created)."""
    from kolk.client.coordinator import offsets_partitions
    from kolk.groups.names import OFFSETS_TOPIC
    await offsets_partitions(client)
    return await client.partitions(OFFSETS_TOPIC)
