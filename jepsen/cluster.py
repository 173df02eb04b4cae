"""Start, kill and restart real SC processes on loopback; for tests and the fault harness.

Only the CLI (``python -m kolk sc``), the public admin client and process control are used.
Ports come from the OS (bind to port 0, read the number, close); every process is stopped by
its own pid in :meth:`ScCluster.close`, which tests call in a ``finally`` or fixture teardown.
``fsync_log`` makes each SC report its durable file sizes (``KOLK_TEST_FSYNC_LOG``), so a
test can simulate power loss by cutting every file back to its last fsynced length.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

SECRET = "test-cluster-secret-0123456789"
FSYNC_LOG_ENV = "KOLK_TEST_FSYNC_LOG"


_HANDED_OUT: set[int] = set()  # ports this process has handed out: never the same one twice
_HANDED_OUT_MAX = 20_000  # of the ~28,000 ephemeral ports: past it, start over


def free_port() -> int:
    """A port nothing listens on now, and not one this process handed out before: a port is
    picked before whatever uses it binds, and the OS may offer a just-closed port again (a
    test's SPU once got the port its SC had taken for Raft)."""
    if len(_HANDED_OUT) > _HANDED_OUT_MAX:
        _HANDED_OUT.clear()
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError("no port that was not handed out before, in 100 tries")


def wait_for(condition: Callable[[], Any], timeout_s: float, what: str | Callable[[], str],
             interval_s: float = 0.05) -> Any:
    """Poll ``condition`` until it returns something truthy, or fail after ``timeout_s``.

    An AssertionError from ``condition`` fails at once; other errors are retried and the last
    one is reported at the deadline. ``what`` may be a callable, evaluated only on failure."""
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except AssertionError:
            raise
        except Exception as e:  # noqa: BLE001 - remembered and reported at the deadline
            last_error = e
        time.sleep(interval_s)  # polling interval of a condition with a deadline
    text = what() if callable(what) else what
    raise AssertionError(f"not within {timeout_s} s: {text}" + (f" (last error: {last_error})" if last_error else ""))


@dataclass
class ScProcess:
    node_id: int
    raft: str
    admin: str
    data_dir: str
    log_path: str
    proc: subprocess.Popen | None = None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class ScCluster:
    root: str
    size: int = 3
    heartbeat_timeout_ms: int = 3000
    fsync_log: bool = False
    extra_args: tuple[str, ...] = ()
    nodes: dict[int, ScProcess] = field(default_factory=dict)

    def __post_init__(self) -> None:
        os.makedirs(self.root, exist_ok=True)
        for i in range(1, self.size + 1):
            self.nodes[i] = ScProcess(i, f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}",
                                      os.path.join(self.root, f"sc{i}"), os.path.join(self.root, f"sc{i}.log"))

    @property
    def admin_addresses(self) -> list[str]:
        return [n.admin for n in self.nodes.values()]

    def fsync_log_path(self, node_id: int) -> str:
        return os.path.join(self.root, f"sc{node_id}.fsync")

    def start(self, node_id: int) -> None:
        n = self.nodes[node_id]
        args = [sys.executable, "-m", "kolk", "sc", "--id", str(node_id), "--data-dir", n.data_dir,
                "--raft", n.raft, "--admin", n.admin, "--heartbeat-timeout-ms", str(self.heartbeat_timeout_ms)]
        for other in self.nodes.values():
            if other.node_id != node_id:
                args += ["--peer", f"{other.node_id}={other.raft}/{other.admin}"]
        args += list(self.extra_args)
        env = dict(os.environ, KOLK_CLUSTER_SECRET=SECRET)
        if self.fsync_log:
            env[FSYNC_LOG_ENV] = self.fsync_log_path(node_id)
        log = open(n.log_path, "ab")
        try:
            n.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
        finally:
            log.close()

    def start_all(self) -> None:
        for i in self.nodes:
            self.start(i)

    def kill(self, node_id: int, sig: int = signal.SIGKILL) -> None:
        n = self.nodes[node_id]
        if n.proc is not None and n.proc.poll() is None:
            os.kill(n.proc.pid, sig)
            n.proc.wait(timeout=30)

    def kill_all(self, sig: int = signal.SIGKILL) -> None:
        for i in self.nodes:
            self.kill(i, sig)

    def close(self) -> None:
        """Stop every process this cluster started, by pid."""
        for n in self.nodes.values():
            if n.proc is not None and n.proc.poll() is None:
                n.proc.kill()
                n.proc.wait(timeout=30)

    def logs(self) -> str:
        out = []
        for n in self.nodes.values():
            try:
                with open(n.log_path, errors="replace") as f:
                    out.append(f"--- sc{n.node_id}\n" + "".join(f.readlines()[-30:]))
            except OSError:
                pass
        return "\n".join(out)

    def node_by_admin(self, admin: str) -> ScProcess | None:
        return next((n for n in self.nodes.values() if n.admin == admin), None)

    def cut_to_fsynced(self) -> dict[str, int]:
        """Power loss: cut every file an SC reported fsynced back to its last reported size."""
        cuts: dict[str, int] = {}
        for i, n in self.nodes.items():
            cuts.update(cut_node_to_fsynced(self.fsync_log_path(i), n.data_dir))
        return cuts


def cut_node_to_fsynced(fsync_log: str, data_dir: str) -> dict[str, int]:
    """Power loss on one SC: every file it reported fsynced (``fsync_log``) cut back to its
    last reported size; files written since lose the unsynced tail, and a Raft journal never
    reported (created and written, never fsynced) is emptied."""
    cuts: dict[str, int] = {}
    if os.path.exists(fsync_log):
        with open(fsync_log) as f:
            for line in f:
                name, _, size = line.rstrip("\n").rpartition(" ")
                if name:
                    cuts[name] = int(size)
    for name, size in cuts.items():
        if os.path.exists(name) and os.path.getsize(name) > size:
            with open(name, "r+b") as f:
                f.truncate(size)
    journal = os.path.join(data_dir, "raft", "journal.log")
    if os.path.exists(journal) and journal not in cuts:
        with open(journal, "r+b") as f:
            f.truncate(0)
    return cuts
