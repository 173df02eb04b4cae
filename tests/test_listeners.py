"""Listener and address safety (issue 15, item 6), with real ``kolk sc`` and ``kolk spu`` processes.

The SC's Raft listener binds the address it is given, never 0.0.0.0. Every mistake with a
port or an address stops the process at start with one line on stderr that names the
address and what it is for, a non-zero exit status, and nothing left behind: no data
directory and no process. An SPU's private address must reach that very SPU (TLS on or off);
a proxy in front of it that is not forwarding yet is waited for.

Ports come from the OS; a "taken" port is one a socket of this test listens on. Every
process is stopped by its own pid; every wait is a condition with a deadline.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import signal
import socket
import subprocess
import sys
from typing import Any, Iterator

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jepsen.cluster import SECRET, free_port, wait_for  # noqa: E402
from jepsen.proxy import FaultProxy  # noqa: E402

KOLK = [sys.executable, "-m", "kolk"]
# The SPU tries its private address for 10 s before it gives up (core/spu/server.py).
EXIT_TIMEOUT_S = 40.0
START_TIMEOUT_S = 30.0
ENV = dict(os.environ, KOLK_CLUSTER_SECRET=SECRET)


# ---------------------------------------------------------------- processes


def _die_with_parent() -> None:
    """If this test process dies without its teardown, the kernel kills the child too."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass


def _session_members(sid: int) -> list[int]:
    """Processes still in session ``sid`` (each child here starts its own), zombies excepted."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        state, session = fields[0], int(fields[4])
        if session == sid and state != "Z":
            out.append(int(name))
    return out


def refused_start(*args: str) -> str:
    """Run ``kolk *args``, which must refuse to start; return its one line on stderr."""
    proc = subprocess.Popen([*KOLK, *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=ENV, start_new_session=True, preexec_fn=_die_with_parent)
    try:
        out, err = proc.communicate(timeout=EXIT_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    text = err.decode(errors="replace")
    assert proc.returncode != 0, f"kolk {args[0]} exited with 0; stderr:\n{text}"
    lines = text.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{text}"
    assert not out, f"nothing on stdout expected, got {out!r}"
    assert _session_members(proc.pid) == [], "a process of the refused start is still running"
    return lines[0]


@contextlib.contextmanager
def running(*args: str, log_path: str) -> Iterator[subprocess.Popen]:
    """``kolk *args`` running in the background (output to ``log_path``); killed by pid at the end."""
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([*KOLK, *args], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                env=ENV, start_new_session=True, preexec_fn=_die_with_parent)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


def alive_until(proc: subprocess.Popen, condition: Any, what: str, log_path: str) -> None:
    """Wait for ``condition()``; fail at once, with the log, if ``proc`` exits first."""
    def check() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"the process exited ({proc.returncode}) before {what}:\n{read(log_path)}")
        return bool(condition())
    wait_for(check, START_TIMEOUT_S, lambda: f"{what}\n{read(log_path)}")


def read(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


@contextlib.contextmanager
def taken_port() -> Iterator[int]:
    """A port on 127.0.0.1 that this test listens on, for as long as the block runs."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        yield s.getsockname()[1]


def listening(pid: int) -> set[tuple[str, int]]:
    """The (address, port) pairs process ``pid`` listens on, from /proc/net/tcp{,6}."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[len("socket:["):-1])
    out = set()
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(path) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state != "0A" or inode not in inodes:  # 0A: LISTEN
                    continue
                hex_addr, hex_port = local.split(":")
                raw = bytes.fromhex(hex_addr)
                # The kernel prints each 32-bit word of the address in host (little-endian) order.
                raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
                # (ipaddress, not socket.inet_ntop: importing pysyncobj replaces that one.)
                out.add((str(ipaddress.ip_address(raw)), int(hex_port, 16)))
    return out


def sc_args(data_dir: str, raft: str, admin: str, *extra: str) -> list[str]:
    return ["sc", "--id", "1", "--data-dir", data_dir, "--raft", raft, "--admin", admin, *extra]


def spu_args(spu_id: int, data_dir: str, public: str, *extra: str) -> list[str]:
    # No SC listens at --sc: every check under test happens before the SPU registers, and an
    # SPU that passed them keeps trying to register (alive, listening) until it is killed.
    return ["spu", "--id", str(spu_id), "--sc", f"127.0.0.1:{free_port()}", "--data-dir", data_dir,
            "--public", public, *extra]


def tls_args(root: str, ca_name: str = "Kolk dev CA") -> list[str]:
    from kolk.security.certs import dev_pki

    node = dev_pki(root, nodes=["node"], clients=[], ca_name=ca_name)["node"]
    return ["--tls-ca", node["ca"], "--tls-cert", node["cert"], "--tls-key", node["key"]]


# ---------------------------------------------------------------- the SC


@pytest.mark.parametrize("bind_raft", [False, True], ids=["advertised", "bind-raft"])
def test_sc_raft_listener_binds_the_address_it_is_given(tmp_path: Any, bind_raft: bool) -> None:
    """pysyncobj binds 0.0.0.0 when it has no bind address: with ``--raft 10.0.0.5:7000`` the
    Raft port (which unpickles what it receives) was open on every interface. The SC binds the
    address it is given: --bind-raft when set, else --raft, and nothing else."""
    raft, bind = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    extra = ["--bind-raft", bind] if bind_raft else []
    ready, log_path = str(tmp_path / "sc.ready"), str(tmp_path / "sc.log")
    with running(*sc_args(str(tmp_path / "sc"), raft, f"127.0.0.1:{free_port()}", "--ready-file", ready, *extra),
                 log_path=log_path) as sc:
        alive_until(sc, lambda: os.path.exists(ready), "the SC to serve", log_path)
        expected = bind if bind_raft else raft
        port = int(expected.rsplit(":", 1)[1])
        on_port = {addr for addr, p in listening(sc.pid) if p == port}
        assert on_port == {"127.0.0.1"}, f"Raft listens on {on_port or 'nothing'} at port {port}, not 127.0.0.1"
        if bind_raft:
            advertised = int(raft.rsplit(":", 1)[1])
            assert not [a for a, p in listening(sc.pid) if p == advertised], "the advertised port is bound too"


def test_sc_with_its_raft_port_taken_stops_with_one_line(tmp_path: Any) -> None:
    """Before: the SC logged "raft on ..." and ran without a Raft listener (pysyncobj retried
    the bind every second, silently). Now it names the port and stops, leaving no data dir."""
    data_dir = tmp_path / "sc"
    with taken_port() as port:
        line = refused_start(*sc_args(str(data_dir), f"127.0.0.1:{port}", f"127.0.0.1:{free_port()}"))
    assert line == f"kolk sc: cannot listen for raft on 127.0.0.1:{port} (--raft): address already in use"
    assert not data_dir.exists()


def test_sc_with_its_bind_raft_port_taken_names_the_bind_address(tmp_path: Any) -> None:
    """With --bind-raft, the address it cannot bind is the one named (not the advertised one)."""
    data_dir = tmp_path / "sc"
    with taken_port() as port:
        line = refused_start(*sc_args(str(data_dir), f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}",
                                      "--bind-raft", f"127.0.0.1:{port}"))
    assert line == f"kolk sc: cannot listen for raft on 127.0.0.1:{port} (--bind-raft): address already in use"
    assert not data_dir.exists()


def test_sc_with_a_raft_address_not_of_this_host_stops_with_one_line(tmp_path: Any) -> None:
    """An address of another host (here TEST-NET-1, never local) cannot be bound: said at once."""
    data_dir = tmp_path / "sc"
    port = free_port()
    line = refused_start(*sc_args(str(data_dir), f"192.0.2.1:{port}", f"127.0.0.1:{free_port()}"))
    assert line == f"kolk sc: cannot listen for raft on 192.0.2.1:{port} (--raft): cannot assign requested address"
    assert not data_dir.exists()


def test_sc_with_its_admin_port_taken_stops_with_one_line(tmp_path: Any) -> None:
    """The admin port is checked before Raft starts, so nothing is written and no vote is cast."""
    data_dir = tmp_path / "sc"
    with taken_port() as port:
        line = refused_start(*sc_args(str(data_dir), f"127.0.0.1:{free_port()}", f"127.0.0.1:{port}"))
    assert line == f"kolk sc: cannot listen for admin on 127.0.0.1:{port} (--admin): address already in use"
    assert not data_dir.exists()


# ---------------------------------------------------------------- the SPU


@pytest.mark.parametrize("flag", ["--public", "--bind"])
def test_spu_with_its_port_taken_stops_with_one_line(tmp_path: Any, flag: str) -> None:
    """Before: a 34-line traceback, and a new data directory left behind. The SPU binds before
    it creates its data directory (or the directory's parents)."""
    home = tmp_path / "home"  # does not exist: the SPU must not create it either
    with taken_port() as port:
        taken = f"127.0.0.1:{port}"
        extra = ["--bind", taken] if flag == "--bind" else []
        public = f"127.0.0.1:{free_port()}" if flag == "--bind" else taken
        line = refused_start(*spu_args(1, str(home / "spu1"), public, *extra))
    assert line == f"kolk spu: cannot listen for clients and SPUs on {taken} ({flag}): address already in use"
    assert not home.exists()


def test_spu_with_a_private_address_nothing_listens_on_stops_with_one_line(tmp_path: Any) -> None:
    """Before: the SPU registered the address, every SPU showed alive, and nothing was ever
    replicated to it. Now it tries the address for a while (a proxy may be starting), then stops."""
    home = tmp_path / "home"
    public, private = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    line = refused_start(*spu_args(1, str(home / "spu1"), public, "--private", private))
    assert line.startswith(f"kolk spu: --private {private} does not reach this SPU (listening on {public}): "
                           "nothing answers there"), line
    assert "connection refused" in line, line
    assert not home.exists()


@pytest.mark.parametrize("other_id", [2, 1], ids=["another-spu", "same-id-another-process"])
def test_spu_with_a_private_address_of_another_spu_stops_with_one_line(tmp_path: Any, other_id: int) -> None:
    """The private address reaches an SPU, but not this one: another SPU, or another process
    with the same id. Told apart by the random instance id each SPU process answers with."""
    other = f"127.0.0.1:{free_port()}"
    other_dir, log_path = tmp_path / "other", str(tmp_path / "other.log")
    with running(*spu_args(other_id, str(other_dir), other), log_path=log_path) as proc:
        # Its data directory appears once it has passed its own check: it is listening.
        alive_until(proc, other_dir.exists, "the other SPU to listen", log_path)
        home = tmp_path / "home"
        public = f"127.0.0.1:{free_port()}"
        line = refused_start(*spu_args(1, str(home / "spu1"), public, "--private", other))
        assert proc.poll() is None, "the other SPU must not be disturbed"
    who = "another process of SPU 1" if other_id == 1 else "another SPU (SPU 2)"
    assert line == (f"kolk spu: --private {other} does not reach this SPU (listening on {public}): "
                    f"{who} answers there")
    assert not home.exists()


def test_spu_with_a_private_address_that_refuses_it_stops_with_one_line(tmp_path: Any) -> None:
    """With TLS, a private address that reaches an SPU of another cluster (another CA) refuses
    the handshake: that is named too."""
    other = f"127.0.0.1:{free_port()}"
    other_dir, log_path = tmp_path / "other", str(tmp_path / "other.log")
    theirs = tls_args(str(tmp_path / "their-pki"), ca_name="Their CA")
    with running(*spu_args(2, str(other_dir), other, *theirs), log_path=log_path) as proc:
        alive_until(proc, other_dir.exists, "the other SPU to listen", log_path)
        home = tmp_path / "home"
        public = f"127.0.0.1:{free_port()}"
        line = refused_start(*spu_args(1, str(home / "spu1"), public, "--private", other,
                                       *tls_args(str(tmp_path / "our-pki"), ca_name="Our CA")))
    assert line.startswith(f"kolk spu: --private {other} does not reach this SPU (listening on {public}): "
                           f"it refuses this SPU: TLS to {other} failed"), line
    assert not home.exists()


@pytest.mark.parametrize("tls", [False, True], ids=["plaintext", "tls"])
def test_spu_waits_for_a_proxy_on_its_private_address(tmp_path: Any, tls: bool) -> None:
    """The fault harness puts a proxy on the private address, started about when the SPU is.
    While the proxy resets connections the SPU keeps trying; once it forwards, the SPU finds
    itself there (with TLS: dialled with its own node certificate, as its peers will) and goes
    on to open its data directory."""
    public = f"127.0.0.1:{free_port()}"
    proxy = FaultProxy(public).start()
    try:
        proxy.cut("reset")
        data_dir, log_path = tmp_path / "spu1", str(tmp_path / "spu1.log")
        extra = tls_args(str(tmp_path / "pki")) if tls else []
        with running(*spu_args(1, str(data_dir), public, "--private", proxy.address, *extra),
                     log_path=log_path) as proc:
            alive_until(proc, lambda: proxy.connections_total >= 1, "the SPU to try its private address", log_path)
            assert not data_dir.exists(), "the data directory was created before the private address was checked"
            proxy.heal()
            alive_until(proc, data_dir.exists, "the SPU to pass the check and open its data directory", log_path)
    finally:
        proxy.stop()


@pytest.mark.parametrize("flags,message", [
    (("--smartmodule-workers", "0"), "kolk spu: --smartmodule-workers must be 1..256"),
    (("--smartmodule-workers", "1000"), "kolk spu: --smartmodule-workers must be 1..256"),
    (("--smartmodule-memory", "8"), "kolk spu: --smartmodule-memory must be at least 16 MiB"),
    (("--smartmodule-memory", "99999999"), "kolk spu: --smartmodule-memory 99999999 MiB is more than 1 TiB"),
    (("--smartmodule-fuel", "5"), "kolk spu: --smartmodule-fuel must be at least 1000 and "
                                  "--smartmodule-wall-clock-ms at least 10 (given 5 and 2000)"),
    (("--smartmodule-wall-clock-ms", "1"), "kolk spu: --smartmodule-fuel must be at least 1000 and "
                                           "--smartmodule-wall-clock-ms at least 10 (given 100000000 and 1)"),
], ids=["workers-0", "workers-1000", "memory-small", "memory-huge", "fuel", "wall-clock"])
def test_spu_with_bad_smartmodule_limits_stops_with_one_line(tmp_path: Any, flags: tuple, message: str) -> None:
    home = tmp_path / "home"
    line = refused_start(*spu_args(1, str(home / "spu1"), f"127.0.0.1:{free_port()}", *flags))
    assert line == message
    assert not home.exists()


@pytest.mark.parametrize("flags,message", [
    (("--retention-interval-ms", "5"), "kolk spu: --retention-interval-ms must be from 100 to 86400000, got 5"),
    (("--cleaner-interval-ms", "99999999999"),
     "kolk spu: --cleaner-interval-ms must be from 100 to 86400000, got 99999999999"),
    (("--cleaner-bytes-per-s", "10"), "kolk spu: --cleaner-bytes-per-s must be from 65536 to 2^40, got 10"),
    (("--cleaner-key-map-mib", "0"), "kolk spu: --cleaner-key-map-mib must be from 1 to 16384, got 0"),
], ids=["retention-interval", "cleaner-interval", "cleaner-rate", "key-map"])
def test_spu_with_bad_lifecycle_flags_stops_with_one_line(tmp_path: Any, flags: tuple, message: str) -> None:
    home = tmp_path / "home"
    line = refused_start(*spu_args(1, str(home / "spu1"), f"127.0.0.1:{free_port()}", *flags))
    assert line == message
    assert not home.exists()
