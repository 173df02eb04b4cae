"""Hosts as Linux network namespaces on one bridge: real addresses, real packet faults.

``Network`` makes a bridge in the root namespace with a /24 of its own (10.200.X.0/24, X not on
any interface), so pytest and the jepsen client in the root namespace reach every host through
it. ``add_host(name)`` makes a namespace ``kolk-<tag>-<name>`` with a veth pair: ``eth0`` inside
(address 10.200.X.(10+i)), the other end (``kv<tag><i>``) on the bridge.

Faults, per host namespace:

* ``partition(a, b, one_way=False)``: nftables table ``inet kolk`` in b's namespace drops, on
  input, packets from a (and in a's from b unless ``one_way``). Dropped on input, not output, so
  a sender sees a timeout (as on a real network), not EPERM. Each change loads one generated
  ruleset with ``nft -f -`` (atomic).
* ``netem(host, delay_ms, jitter_ms, loss_pct, duplicate_pct, reorder_pct)``: frames leaving
  the host (egress, as ``tc netem`` on its eth0). With ``sch_netem`` in the kernel, that is
  what is used; without (this machine), ``jepsen/wire.py`` relays the host's frames in
  userspace: the host's bridge-side veth leaves the bridge, a second veth pair
  (``kw<tag><i>`` on the bridge, ``kx<tag><i>`` for the relay) takes its place, and the relay
  process moves frames between ``kv`` and ``kx`` through AF_PACKET sockets.

``close()`` stops the relays it started (by pid), deletes every namespace and interface it
made (by name; the nft tables live in the namespaces), is idempotent, and works after a partial
setup failure. Nothing else is touched.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

from .cluster import wait_for

SUBNET_THIRD_OCTETS = range(0, 256)  # 10.200.X.0/24
HOSTS_MAX = 200  # host i gets 10.200.X.(10+i)
COMMAND_TIMEOUT_S = 20.0
PORTS_PER_PROBE = 8  # ports one probe in a namespace takes from the OS
PROBES_MAX = 100  # per host
LOCK_PATH = "/run/kolk-netns.lock"  # serialises subnet choice between processes

_networks_made = 0  # per process, for unique names


class NetnsError(RuntimeError):
    """A namespace, interface or rule could not be set up."""


def _run(args: list[str], stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    if check and p.returncode != 0:
        raise NetnsError(f"{' '.join(args)} failed ({p.returncode}): {p.stderr.strip() or p.stdout.strip()}")
    return p


def netns_unavailable() -> str | None:
    """Why network namespaces cannot be used here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root (euid is not 0)"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (Debian packages iproute2 and nftables)"
    probe = f"kolk-probe-{os.getpid()}"
    p = _run(["ip", "netns", "add", probe], check=False)
    if p.returncode != 0:
        return f"`ip netns add` refused: {p.stderr.strip()}"
    _run(["ip", "netns", "del", probe], check=False)
    return None


_netem_probe: bool | None = None


def kernel_has_netem() -> bool:
    """Whether ``tc qdisc ... netem`` works here (probed once, on a dummy interface in a
    throw-away namespace)."""
    global _netem_probe
    if _netem_probe is None:
        ns = f"kolk-netemprobe-{os.getpid()}"
        _run(["ip", "netns", "add", ns])
        try:
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])
            p = _run(["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", "lo", "root", "netem",
                      "delay", "1ms"], check=False)
            _netem_probe = p.returncode == 0
        finally:
            _run(["ip", "netns", "del", ns], check=False)
    return _netem_probe


@dataclass
class Host:
    name: str
    ns: str
    address: str
    index: int
    outer: str  # the veth end in the root namespace (on the bridge, or the relay's)
    _ports: set[int] = field(default_factory=set)
    _pool: list[int] = field(default_factory=list)
    _probes: int = 0

    def free_port(self) -> int:
        """A TCP port the OS hands out on this host's address, not one handed out before here.

        One python start-up in the namespace binds PORTS_PER_PROBE sockets at once (distinct
        ports, all free then) and the rest wait in a pool for the next calls."""
        while not self._pool:
            code = ("import socket\nss=[socket.socket() for _ in range(%d)]\n"
                    "[s.bind((%r,0)) for s in ss]\nprint(*[s.getsockname()[1] for s in ss])" % (PORTS_PER_PROBE,
                                                                                             self.address))
            fresh = [int(w) for w in _run(["ip", "netns", "exec", self.ns, sys.executable, "-c", code]).stdout.split()]
            self._pool = [p for p in fresh if p not in self._ports]
            self._probes += 1
            if self._probes > PROBES_MAX:
                raise NetnsError(f"no new free port on {self.name} in {PROBES_MAX} probes")
        port = self._pool.pop(0)
        self._ports.add(port)
        return port

    def popen(self, args: list[str], **kw: Any) -> subprocess.Popen:
        """Run ``args`` inside the namespace; ``ip netns exec`` execs it, so ``pid`` is the program's."""
        return subprocess.Popen(["ip", "netns", "exec", self.ns, *args], **kw)

    def run(self, args: list[str], **kw: Any) -> subprocess.CompletedProcess:
        kw.setdefault("timeout", COMMAND_TIMEOUT_S)
        return subprocess.run(["ip", "netns", "exec", self.ns, *args], **kw)


@dataclass(frozen=True)
class Netem:
    delay_ms: int = 0
    jitter_ms: int = 0
    loss_pct: float = 0.0
    duplicate_pct: float = 0.0
    reorder_pct: float = 0.0

    def validate(self) -> None:
        for name in ("delay_ms", "jitter_ms"):
            v = getattr(self, name)
            if not 0 <= v <= 60_000:
                raise ValueError(f"netem {name} must be within 0..60000, got {v}")
        for name in ("loss_pct", "duplicate_pct", "reorder_pct"):
            v = getattr(self, name)
            if not 0 <= v <= 100:
                raise ValueError(f"netem {name} must be within 0..100, got {v}")
        if self.jitter_ms > self.delay_ms:
            raise ValueError(f"netem jitter_ms ({self.jitter_ms}) must not exceed delay_ms ({self.delay_ms})")

    def tc_args(self) -> list[str]:
        args = ["delay", f"{self.delay_ms}ms"]
        if self.jitter_ms:
            args.append(f"{self.jitter_ms}ms")
        for word, v in (("loss", self.loss_pct), ("duplicate", self.duplicate_pct), ("reorder", self.reorder_pct)):
            if v:
                args += [word, f"{v}%"]
        return args


class Network:
    """A bridge, its subnet and the host namespaces on it; see the module docstring."""

    def __init__(self, use_kernel_netem: bool | None = None) -> None:
        global _networks_made
        _networks_made += 1
        self.tag = f"{os.getpid() % 100000}{chr(ord('a') + _networks_made % 26)}"
        self.bridge = f"kb{self.tag}"
        self.hosts: dict[str, Host] = {}
        self._namespaces: list[str] = []
        self._links: list[str] = []  # root-namespace interfaces made, deleted by name
        self._drops: dict[str, set[str]] = {}  # host name -> names of hosts whose packets it drops
        self._relays: dict[str, subprocess.Popen] = {}
        self._relay_links: dict[str, tuple[str, str]] = {}
        self._tc_netem: set[str] = set()
        self._use_kernel_netem = use_kernel_netem
        self.closed = False
        self.subnet: ipaddress.IPv4Network | None = None
        try:
            self._make_bridge()
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> "Network":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---------------------------------------------------------------- setup

    def _make_bridge(self) -> None:
        with open(LOCK_PATH, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            used = _run(["ip", "-o", "-4", "addr", "show"]).stdout
            start = os.getpid() % 256
            for k in range(256):
                third = (start + k) % 256
                if f" 10.200.{third}." not in used:
                    break
            else:
                raise NetnsError("every 10.200.X.0/24 is already on an interface")
            self.subnet = ipaddress.IPv4Network(f"10.200.{third}.0/24")
            _run(["ip", "link", "add", self.bridge, "type", "bridge"])
            self._links.append(self.bridge)
            _run(["ip", "addr", "add", f"10.200.{third}.1/24", "dev", self.bridge])
            _run(["ip", "link", "set", self.bridge, "up"])

    def add_host(self, name: str) -> Host:
        if name in self.hosts:
            raise ValueError(f"host {name!r} already exists on this network")
        if not name or len(name) > 32 or not all(c.isalnum() or c in "-_" for c in name):
            raise ValueError(f"host name {name!r} must be 1..32 letters, digits, '-' or '_'")
        i = len(self.hosts) + 1
        if i > HOSTS_MAX:
            raise ValueError(f"a network holds at most {HOSTS_MAX} hosts")
        assert self.subnet is not None
        address = str(self.subnet.network_address + 10 + i)
        ns = f"kolk-{self.tag}-{name}"
        outer = f"kv{self.tag}{i}"
        _run(["ip", "netns", "add", ns])
        self._namespaces.append(ns)
        _run(["ip", "link", "add", outer, "type", "veth", "peer", "name", "eth0", "netns", ns])
        self._links.append(outer)
        _run(["ip", "link", "set", outer, "master", self.bridge, "up"])
        _run(["ip", "-n", ns, "addr", "add", f"{address}/24", "dev", "eth0"])
        _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        _run(["ip", "-n", ns, "link", "set", "eth0", "up"])
        host = self.hosts[name] = Host(name, ns, address, i, outer)
        return host

    # ---------------------------------------------------------------- partitions

    def partition(self, a: Host, b: Host, one_way: bool = False) -> None:
        """Drop packets from a to b (and from b to a unless ``one_way``)."""
        self._drops.setdefault(b.name, set()).add(a.name)
        self._load_rules(b)
        if not one_way:
            self._drops.setdefault(a.name, set()).add(b.name)
            self._load_rules(a)

    def heal(self, a: Host, b: Host) -> None:
        """Both directions between a and b flow again."""
        for dst, src in ((a, b), (b, a)):
            if src.name in self._drops.get(dst.name, set()):
                self._drops[dst.name].discard(src.name)
                self._load_rules(dst)

    def heal_all(self) -> None:
        for name in [n for n, s in self._drops.items() if s]:
            self._drops[name] = set()
            self._load_rules(self.hosts[name])

    def _load_rules(self, host: Host) -> None:
        drops = "".join(f"\t\tip saddr {self.hosts[src].address} drop\n"
                        for src in sorted(self._drops.get(host.name, ())))
        ruleset = ("table inet kolk {}\ndelete table inet kolk\ntable inet kolk {\n"
                   "\tchain input {\n\t\ttype filter hook input priority 0; policy accept;\n" + drops + "\t}\n"
                   "\tchain output {\n\t\ttype filter hook output priority 0; policy accept;\n\t}\n}\n")
        _run(["ip", "netns", "exec", host.ns, "nft", "-f", "-"], stdin=ruleset)

    # ---------------------------------------------------------------- netem

    def netem(self, host: Host, delay_ms: int = 0, jitter_ms: int = 0, loss_pct: float = 0.0,
              duplicate_pct: float = 0.0, reorder_pct: float = 0.0) -> None:
        """Frames leaving ``host`` are delayed, lost, duplicated or reordered (replaces any
        earlier netem on it)."""
        spec = Netem(delay_ms, jitter_ms, loss_pct, duplicate_pct, reorder_pct)
        spec.validate()
        kernel = self._use_kernel_netem if self._use_kernel_netem is not None else kernel_has_netem()
        self.clear_netem(host)
        if kernel:
            _run(["ip", "netns", "exec", host.ns, "tc", "qdisc", "replace", "dev", "eth0", "root", "netem",
                  *spec.tc_args()])
            self._tc_netem.add(host.name)
        else:
            self._start_relay(host, spec)

    def clear_netem(self, host: Host) -> None:
        if host.name in self._tc_netem:
            _run(["ip", "netns", "exec", host.ns, "tc", "qdisc", "del", "dev", "eth0", "root"], check=False)
            self._tc_netem.discard(host.name)
        proc = self._relays.pop(host.name, None)
        if proc is not None:
            _stop(proc)
        links = self._relay_links.pop(host.name, None)
        if links is not None:
            _run(["ip", "link", "del", links[0]], check=False)  # deletes its peer too
            if links[0] in self._links:
                self._links.remove(links[0])
            _run(["ip", "link", "set", host.outer, "master", self.bridge], check=False)
            _remove_stats(links[1])
            wait_for(lambda: _link_state(host.outer) == ("UP", "forwarding"), 15,
                     f"{host.name}'s bridge port {host.outer} to forward again")

    def relay_stats(self, host: Host) -> str:
        """The relay's counters so far (its stats file), or "" without one."""
        links = self._relay_links.get(host.name)
        if links is None:
            return ""
        try:
            with open(_stats_path(links[1])) as f:
                return f.read()
        except OSError:
            return ""

    def _start_relay(self, host: Host, spec: Netem) -> None:
        bridge_end, relay_end = f"kw{self.tag}{host.index}", f"kx{self.tag}{host.index}"
        _run(["ip", "link", "add", bridge_end, "type", "veth", "peer", "name", relay_end])
        self._links.append(bridge_end)
        self._relay_links[host.name] = (bridge_end, relay_end)
        _run(["ip", "link", "set", relay_end, "up"])
        _run(["ip", "link", "set", host.outer, "nomaster"])
        ready = _stats_path(relay_end) + ".ready"
        if os.path.exists(ready):
            os.unlink(ready)
        args = [sys.executable, "-m", "jepsen.wire", "--host-if", host.outer, "--net-if", relay_end,
                "--delay-ms", str(spec.delay_ms), "--jitter-ms", str(spec.jitter_ms),
                "--loss-pct", str(spec.loss_pct), "--duplicate-pct", str(spec.duplicate_pct),
                "--reorder-pct", str(spec.reorder_pct), "--stats-file", _stats_path(relay_end),
                "--ready-file", ready]
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self._relays[host.name] = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                                   stderr=subprocess.PIPE, env=env)
        proc = self._relays[host.name]
        wait_for(lambda: os.path.exists(ready) or proc.poll() is not None, 15, f"the relay for {host.name}")
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise NetnsError(f"the relay for {host.name} exited ({proc.returncode}): {err.strip()}")
        _run(["ip", "link", "set", bridge_end, "master", self.bridge, "up"])
        wait_for(lambda: _link_state(bridge_end) == ("UP", "forwarding") and _link_state(relay_end)[0] == "UP",
                 15, f"the relay's bridge port {bridge_end} to forward")

    # ---------------------------------------------------------------- teardown

    def close(self) -> None:
        """Stop the relays started here, delete every namespace and interface made here."""
        if self.closed:
            return
        for name in list(self._relays):
            _stop(self._relays.pop(name))
        for ns in reversed(self._namespaces):
            _run(["ip", "netns", "del", ns], check=False)
        for link in reversed(self._links):
            if _run(["ip", "link", "show", link], check=False).returncode == 0:
                _run(["ip", "link", "del", link], check=False)
        for _bridge_end, relay_end in self._relay_links.values():
            _remove_stats(relay_end)
        self._relay_links.clear()
        self.closed = True

    def names(self) -> tuple[list[str], list[str]]:
        """The namespaces and root-namespace interfaces this network made (for leak checks)."""
        return list(self._namespaces), list(self._links) + [e for pair in self._relay_links.values() for e in pair]


def _link_state(ifname: str) -> tuple[str, str]:
    """(operstate, bridge port state or "") of a root-namespace interface."""
    out = json.loads(_run(["ip", "-j", "-d", "link", "show", "dev", ifname]).stdout)[0]
    return str(out.get("operstate", "")), str(out.get("linkinfo", {}).get("info_slave_data", {}).get("state", ""))


def _stats_path(relay_end: str) -> str:
    return f"/run/kolk-wire-{relay_end}.stats"


def _remove_stats(relay_end: str) -> None:
    for path in (_stats_path(relay_end), _stats_path(relay_end) + ".ready"):
        if os.path.exists(path):
            os.unlink(path)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    if proc.stderr is not None:
        proc.stderr.close()
