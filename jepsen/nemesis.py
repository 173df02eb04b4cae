"""The nemesis of the fault harness (DESIGN.md §9): a pure fault schedule, and the class that
applies each fault to a running system and undoes it.

:func:`schedule` turns a seed into a list of :class:`Fault` windows; the same seed and
arguments always give the same list. Rules: faults on conflicting targets never overlap, at
most ``MAX_CONCURRENT`` faults are active at once, at most one data-damaging fault
(``DESTRUCTIVE``: torn-tail, power-loss, disk-wipe, disk-fail) at a time, restart-all overlaps
nothing, and the last ``HEAL_FRACTION`` of the run has no fault.

Targets: ``spu:<id>``, ``sc:<id>``, ``spu:leader`` (leader of partition ``params["partition"]``),
``sc:leader``, ``minority`` and ``all``. Roles and groups are resolved when the fault starts;
two targets conflict when they are equal, when one is a group, or when they are in the same
family and one is a role (the role may resolve to the other node) or a bridge (which cuts
links of every SPU).

Every fault carries ``params["seed"]``: the choices made when it starts (a leader that is not
known, the minority, the damaged partition and byte, the restart order) come from
``random.Random(seed)``.

Kinds, as :class:`Nemesis` starts / stops them (cut mode ``reset``/``blackhole``: ``params["mode"]``):

* ``kill``: kill -9 / restart.  ``pause``: SIGSTOP / SIGCONT.
* ``partition-one``: cut the node's node-to-node links (client links too if ``params["clients"]``).
* ``partition-half``: a minority of the SPUs and of the SCs (leaders included when
  ``params["leader_side"]``) lose their node-to-node links; clients still reach them (stale
  leaders). Proxies are per node, not per pair, so minority nodes are cut from each other too.
* ``partition-oneway``: cut only the node's ``in:`` or ``out:`` node links (``params["direction"]``).
* ``bridge``: cut the replication links into every SPU but the bridge node: all still reach the
  SC and fetch from the bridge, none from another (per-node proxies approximate Jepsen's bridge).
* ``slow``: ``params["delay_s"]`` (50-200 ms) on every link of the node, or of all nodes.
* ``lossy``: drop replies on the node's client or node links (``params["links"]``): each
  connection loses its first reply and is reset. Windows last at most ``LOSSY_MAX_S``, so
  replies are lost now and then, not always.
* ``torn-tail``: kill -9, then truncate within, or flip one bit in, the last 4 KiB of the newest
  segment of one partition (``params["mode"]``) / restart.
* ``power-loss``: kill -9, cut files to their last fsynced length / restart. SCs: the runner's
  ``cut_sc_to_fsynced(node)`` (``ScCluster.cut_to_fsynced`` limited to that node). SPUs do not
  report what is fsynced: approximated by truncating the newest segment of *every* partition
  within its last 4 KiB (a torn tail on each).
* ``clock-jump``: restart with ``KOLK_TEST_CLOCK_OFFSET_MS=params["offset_ms"]`` / restart
  without. The runner passes the variable on; a product that ignores it is unharmed.
* ``disk-wipe``: kill -9, delete the whole data directory, restart at once / restart it if it
  has exited since. The schedule aims it at ``spu:leader`` whenever that target is free: a
  leader that comes back empty *before the SC has noticed it was gone* (SPU heartbeat timeout)
  is still the leader, and its followers must not truncate to it (issue 15). Restarting in
  ``stop``, as torn-tail does, would give the SC time to elect another leader and test only
  the easy case (an empty follower).
* ``disk-fail``: the disk of a running SPU fails; ``params["mode"]``:
  ``remove`` deletes its data directory under it (renamed away at once, then deleted);
  ``fsync`` creates the node's trigger file ``System.fail_fsync_file(node)``, the path the
  runner gives every SPU in ``KOLK_TEST_FAIL_FSYNC_FILE``: the SPU fails its next segment fsync
  with EIO and removes the file. A correct SPU fences what the failure touched (``remove``:
  it tells the SC and exits non-zero, for a supervisor to restart; ``fsync``: it rebuilds the
  replica from its peers and stays up). Stop: restart the SPU if it has exited; remove the
  trigger file if it is still there.
* ``restart-all``: kill -9 every SPU and every SC, then restart them all in an order drawn
  from the seed, none waiting for another to be ready / restart any that has exited since.
  Its target is ``all``, so it overlaps no other fault.

Netns mode (``System.net_mode == "netns"``: a host per node, jepsen/netns_system.py). The link
kinds above become per-pair packet filters or netem on hosts (jepsen/net_faults.py:
partition-half cuts only the links between the two sides, bridge is Jepsen's bridge, slow is a
netem delay, lossy a netem loss; clients in the root namespace are never cut), and three kinds
exist only there (a system in proxy mode refuses them in ``start``, and the runner before it
starts the cluster):

* ``partition-pair``: target ``pair:<a>,<b>`` (two named nodes of any family, e.g.
  ``pair:sc:1,sc:3``): only the links between those two are cut; a third node reaches both.
* ``netem``: delay + jitter, loss, duplication and reordering (``params``) on one node.
* ``rolling-restart``: every node in turn, in an order drawn from the seed: SIGTERM, restart,
  wait until it serves again (its /health or ready file) before the next. Target ``all``: it
  overlaps nothing; its window is at least ``ROLLING_RESTART_NODE_S`` per node.

Proxy names in :meth:`System.proxies` are ``"in:<kind>"`` (connections *to* the node pass
through it) or ``"out:<kind>"`` (connections the node opens); kind ``public`` is a client link,
any other kind a node-to-node link. E.g. an SPU of ``tests/dataplane_cluster.py``:
``{"in:public": ..., "in:private": ..., "out:sc": ...}``.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from .net_faults import NetPlan, netem_params, plan as net_plan

if TYPE_CHECKING:
    from jepsen.proxy import FaultProxy

# New kinds go at the end: the schedule of a set of older kinds stays what it was for a seed.
KINDS = ("kill", "pause", "partition-one", "partition-half", "partition-oneway", "bridge", "slow",
         "lossy", "torn-tail", "power-loss", "clock-jump", "disk-wipe", "disk-fail", "restart-all",
         "partition-pair", "netem", "rolling-restart")
DESTRUCTIVE = frozenset({"torn-tail", "power-loss", "disk-wipe", "disk-fail"})
# Faults that kill nodes and restart them in ``start``; ``stop`` restarts only what has exited.
RESTARTED_AT_START = frozenset({"disk-wipe", "restart-all", "rolling-restart"})
LINK_KINDS = frozenset({"partition-one", "partition-half", "partition-oneway", "bridge", "slow", "lossy"})
# Kinds only a system in netns mode (a host per node, jepsen/netns_system.py) can apply.
NETNS_KINDS = frozenset({"partition-pair", "netem", "rolling-restart"})
# Link faults that netns mode applies as per-pair packet filters or netem (jepsen/net_faults.py).
NET_KINDS = LINK_KINDS | {"partition-pair", "netem"}
# Faults that overlap nothing.
ALONE = frozenset({"restart-all", "rolling-restart"})
# A rolling restart's window is at least this long per node, so the schedule leaves it room.
ROLLING_RESTART_NODE_S = 4.0
GROUP_TARGETS = frozenset({"minority", "all"})
CLIENT_LINKS = frozenset({"public"})
MAX_CONCURRENT = 2
HEAL_FRACTION = 0.1
MIN_FAULT_S = 0.5
LOSSY_MAX_S = 2.0
TAIL_BYTES = 4096
CLOCK_ENV = "KOLK_TEST_CLOCK_OFFSET_MS"
FAIL_FSYNC_ENV = "KOLK_TEST_FAIL_FSYNC_FILE"
DISK_FAIL_MODES = ("remove", "fsync")


@dataclass(frozen=True)
class Fault:
    start_s: float
    end_s: float
    kind: str
    target: str
    params: dict[str, Any] = field(default_factory=dict, hash=False)

    def overlaps(self, other: Fault) -> bool:
        return self.start_s < other.end_s and other.start_s < self.end_s


# ---------------------------------------------------------------- the schedule (pure)

def _node_targets(family: str, count: int) -> list[str]:
    return [f"{family}:leader"] + [f"{family}:{i}" for i in range(1, count + 1)] if count else []


def _targets(kind: str, spus: int, scs: int) -> list[str]:
    spu, sc = _node_targets("spu", spus), _node_targets("sc", scs)
    if kind == "partition-half":
        return ["minority"] if spus + scs >= 2 else []
    if kind in ALONE:
        return ["all"] if spus + scs else []
    if kind == "partition-pair":
        named = [t for t in spu + sc if not t.endswith(":leader")]
        return [f"pair:{a},{b}" for i, a in enumerate(named) for b in named[i + 1:]]
    if kind in ("torn-tail", "disk-wipe", "disk-fail"):
        return spu
    if kind == "bridge":
        return spu if spus >= 2 else []
    if kind == "slow":
        return spu + sc + ["all"]
    return spu + sc


def _effect(kind: str) -> str:
    return kind if kind in ("slow", "lossy") else "cut"


def pair_members(target: str) -> list[str]:
    """The node targets of a target: the two of ``pair:<a>,<b>``, else the target itself."""
    return target[len("pair:"):].split(",") if target.startswith("pair:") else [target]


def conflicts(a: Fault | tuple[str, str], b: Fault | tuple[str, str]) -> bool:
    """Whether two faults (or (kind, target) pairs) must not be active at the same time. A pair
    target conflicts with what either of its nodes conflicts with."""
    ka, ta = (a.kind, a.target) if isinstance(a, Fault) else a
    kb, tb = (b.kind, b.target) if isinstance(b, Fault) else b
    if ALONE & {ka, kb}:
        return True
    if ka in DESTRUCTIVE and kb in DESTRUCTIVE:
        return True
    return any(_targets_conflict(ka, x, kb, y) for x in pair_members(ta) for y in pair_members(tb))


def _targets_conflict(ka: str, ta: str, kb: str, tb: str) -> bool:
    if ta == tb or ta in GROUP_TARGETS or tb in GROUP_TARGETS:
        return True
    fa, _, wa = ta.partition(":")
    fb, _, wb = tb.partition(":")
    # A bridge cuts links of every SPU, so it shares them with any SPU fault.
    return fa == fb and ("leader" in (wa, wb) or "bridge" in (ka, kb))


def _params(kind: str, target: str, rng: random.Random, partitions: int) -> dict[str, Any]:
    p: dict[str, Any] = {"seed": rng.getrandbits(32)}
    if target == "spu:leader":
        p["partition"] = rng.randrange(partitions)
    mode = rng.choice(("reset", "blackhole"))
    if kind == "partition-one":
        p.update(mode=mode, clients=rng.random() < 0.5)
    elif kind == "partition-half":
        p.update(mode=mode, leader_side=rng.random() < 0.5)
    elif kind == "partition-oneway":
        p.update(mode=mode, direction=rng.choice(("in", "out")))
    elif kind == "bridge":
        p.update(mode=mode)
    elif kind == "slow":
        p.update(delay_s=round(rng.uniform(0.05, 0.2), 3))
    elif kind == "lossy":
        p.update(links=rng.choice(("clients", "nodes")))
    elif kind == "torn-tail":
        p.update(mode=rng.choice(("truncate", "bitflip")))
    elif kind == "clock-jump":
        p.update(offset_ms=rng.choice((-1, 1)) * rng.randint(1_000, 600_000))
    elif kind == "disk-fail":
        p.update(mode=rng.choice(DISK_FAIL_MODES))
    elif kind == "netem":
        p.update(netem_params(rng))
    return p


def _pick(kind: str, candidates: list[str], rng: random.Random) -> str:
    """The target of a new fault among those free now. A disk wipe goes to a partition leader
    when it can: a wiped leader is what lost acknowledged writes (issue 15)."""
    if kind == "disk-wipe" and "spu:leader" in candidates:
        return "spu:leader"
    return rng.choice(candidates)


def schedule(seed: int, duration_s: float, faults: list[str], interval_s: tuple[float, float] = (5, 15),
             fault_duration_s: tuple[float, float] = (3, 10), *, spus: int = 3, scs: int = 3,
             partitions: int = 1) -> list[Fault]:
    """The fault windows of a run, sorted by start; a pure function of its arguments.

    ``interval_s`` draws the gap between two fault starts, ``fault_duration_s`` a fault's
    length (lossy: at most ``LOSSY_MAX_S``). When no fault fits at a start time (too many
    active, or every target conflicts), the next start is the end of the earliest active one.
    ``spus``/``scs`` are the node ids 1..n that targets name; ``partitions`` bounds the
    partition whose leader ``spu:leader`` means."""
    unknown = sorted(set(faults) - set(KINDS))
    if unknown:
        raise ValueError(f"unknown fault kinds {unknown}; known: {list(KINDS)}")
    for lo, hi in (interval_s, fault_duration_s):
        if not 0 < lo <= hi:
            raise ValueError(f"a range must satisfy 0 < low <= high, got {(lo, hi)}")
    rng = random.Random(seed)
    kinds = sorted(set(faults), key=KINDS.index)
    horizon = duration_s * (1 - HEAL_FRACTION)
    out: list[Fault] = []
    t = round(rng.uniform(*interval_s), 3)
    while kinds and t < horizon:
        active = [f for f in out if f.end_s > t]
        choice = None
        if len(active) < MAX_CONCURRENT:
            for kind in rng.sample(kinds, len(kinds)):
                cands = [c for c in _targets(kind, spus, scs) if not any(conflicts((kind, c), a) for a in active)]
                if cands:
                    choice = kind, _pick(kind, cands, rng)
                    break
        if choice is None:
            if not active:
                break  # no kind has any target at all
            t = min(f.end_s for f in active)
            continue
        kind, target = choice
        length = rng.uniform(*fault_duration_s)
        if kind == "lossy":
            length = min(length, LOSSY_MAX_S)
        elif kind == "rolling-restart":
            length = max(length, ROLLING_RESTART_NODE_S * (spus + scs))
        end = round(min(t + length, horizon), 3)
        if end - t < MIN_FAULT_S:
            break
        out.append(Fault(t, end, kind, target, _params(kind, target, rng, partitions)))
        t = round(t + rng.uniform(*interval_s), 3)
    return out


# ---------------------------------------------------------------- segment damage (pure helpers)

def newest_segment(partition_dir: str) -> str | None:
    """The active segment of a partition directory: the *.log with the highest base offset."""
    try:
        logs = sorted(n for n in os.listdir(partition_dir) if n.endswith(".log"))
    except OSError:
        return None
    return os.path.join(partition_dir, logs[-1]) if logs else None


def partition_dirs(data_dir: str) -> list[str]:
    """Every partition directory of an SPU data directory (``<data_dir>/logs/<name>/``), sorted."""
    root = os.path.join(data_dir, "logs")
    try:
        return [os.path.join(root, n) for n in sorted(os.listdir(root)) if os.path.isdir(os.path.join(root, n))]
    except OSError:
        return []


def damage_tail(path: str, rng: random.Random, mode: str) -> dict[str, Any]:
    """Truncate ``path`` to a random length within its last 4 KiB, or flip one random bit in
    its last 4 KiB; return what was done. An empty file is left alone."""
    if mode not in ("truncate", "bitflip"):
        raise ValueError(f"mode must be 'truncate' or 'bitflip', got {mode!r}")
    size = os.path.getsize(path)
    done: dict[str, Any] = {"path": path, "mode": mode, "size": size}
    if size == 0:
        return dict(done, action="none (empty file)")
    pos = rng.randrange(max(0, size - TAIL_BYTES), size)
    with open(path, "r+b") as f:
        if mode == "truncate":
            f.truncate(pos)
            return dict(done, action="truncate", new_size=pos, removed=size - pos)
        bit = rng.randrange(8)
        f.seek(pos)
        byte = f.read(1)[0]
        f.seek(pos)
        f.write(bytes([byte ^ (1 << bit)]))
        f.flush()
        os.fsync(f.fileno())
    return dict(done, action="bitflip", offset=pos, bit=bit)


def remove_tree(path: str) -> dict[str, Any]:
    """Delete the directory ``path`` and everything in it; return what was there.

    The process that owns it may still be running and writing: the tree is first renamed into
    a fresh sibling directory, so ``path`` is gone in one step (as when a disk is pulled), then
    the renamed tree is deleted. Unlike a pulled disk, files the process holds open stay usable
    to it until it closes them; what it writes through them is lost with them."""
    if not os.path.isdir(path):
        return {"path": path, "action": "none (no directory)"}
    files, size = 0, 0
    for top, _dirs, names in os.walk(path):
        for name in names:
            try:
                size += os.path.getsize(os.path.join(top, name))
                files += 1
            except OSError:
                pass  # deleted meanwhile by its owner
    parent, base = os.path.split(os.path.abspath(path))
    holder = tempfile.mkdtemp(prefix=f".{base}.removed-", dir=parent)
    os.rename(path, os.path.join(holder, base))
    shutil.rmtree(holder, ignore_errors=True)
    return {"path": path, "action": "removed", "files": files, "bytes": size}


# ---------------------------------------------------------------- applying faults

class System(Protocol):
    """What the nemesis needs from a running cluster; the runner implements it. Nodes are
    named ``spu-<id>`` and ``sc-<id>``."""

    def spus(self) -> list[int]: ...  # ids (names "spu-<id>" are accepted too)
    def scs(self) -> list[int]: ...
    def leader_spu(self, partition: int) -> int | None: ...
    def leader_sc(self) -> int | None: ...
    def kill(self, node: str) -> None: ...  # kill -9 and wait for the exit
    def restart(self, node: str, env: dict[str, str] | None = None) -> None: ...  # need not wait
    def pause(self, node: str) -> None: ...  # SIGSTOP
    def resume(self, node: str) -> None: ...  # SIGCONT
    def proxies(self, node: str) -> dict[str, FaultProxy]: ...  # "in:<kind>" / "out:<kind>"
    def data_dir(self, node: str) -> str: ...
    def cut_sc_to_fsynced(self, node: str) -> dict[str, int]: ...  # power loss of one SC's files
    def exit_code(self, node: str) -> int | None: ...  # None while the process runs
    def fail_fsync_file(self, node: str) -> str: ...  # the SPU's KOLK_TEST_FAIL_FSYNC_FILE
    # netns mode only (``net_mode = "netns"``; proxies() is then empty):
    # apply_net(plan: NetPlan) / revert_net(plan) -- the system counts who holds each edge;
    # rolling_restart(order: list[str]) -> dict -- what happened, per node.


def _remove_if_present(path: str) -> None:
    """Remove a trigger file the node has not consumed (it fails one fsync, then removes it)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class Nemesis:
    """Applies faults to a :class:`System`. ``start`` remembers exactly what it touched (resolved
    nodes, proxies), so ``stop`` undoes that even if leaders moved meanwhile."""

    def __init__(self, system: System, rng: random.Random | None = None) -> None:
        """``rng`` seeds the run-time choices of faults without ``params["seed"]``."""
        self.system = system
        self.rng = rng or random.Random(0)
        self._active: dict[Fault, dict[str, Any]] = {}

    @property
    def active(self) -> list[Fault]:
        return list(self._active)

    # -- resolution

    def _ids(self, family: str) -> list[int]:
        """Node ids of a family; ``spus()``/``scs()`` may give ids or names like "spu-2"."""
        ids = self.system.spus() if family == "spu" else self.system.scs()
        return sorted(int(str(i).rpartition("-")[2]) for i in ids)

    def _leader(self, family: str, params: dict[str, Any]) -> int | None:
        return self.system.leader_spu(params.get("partition", 0)) if family == "spu" else self.system.leader_sc()

    def _resolve(self, fault: Fault, rng: random.Random, note: dict[str, Any]) -> list[str]:
        target = fault.target
        if target == "all":
            return [f"spu-{i}" for i in self._ids("spu")] + [f"sc-{i}" for i in self._ids("sc")]
        if target == "minority":
            return self._minority(fault.params, rng)
        if target.startswith("pair:"):
            return [n for t in pair_members(target) for n in self._resolve(Fault(0, 0, fault.kind, t), rng, note)]
        family, _, which = target.partition(":")
        if which != "leader":
            return [f"{family}-{int(which)}"]
        leader = self._leader(family, fault.params)
        if leader is None:
            ids = self._ids(family)
            if not ids:
                return []
            leader = rng.choice(ids)
            note["leader_unknown"] = True
        return [f"{family}-{leader}"]

    def _minority(self, params: dict[str, Any], rng: random.Random) -> list[str]:
        out: list[str] = []
        for family in ("spu", "sc"):
            ids = self._ids(family)
            k = (len(ids) - 1) // 2
            if family == "spu" and k == 0 and len(ids) >= 2 and len(self._ids("sc")) < 3:
                k = 1  # too few nodes for a real minority anywhere: cut one SPU off
            chosen: list[int] = []
            leader = self._leader(family, params) if params.get("leader_side") else None
            if k and leader in ids:
                chosen.append(leader)
            rest = [i for i in ids if i not in chosen]
            chosen += rng.sample(rest, min(len(rest), k - len(chosen)))
            out += [f"{family}-{i}" for i in sorted(chosen)]
        return out

    def _links(self, nodes: list[str], direction: str | None = None,
               links: str = "all") -> list[tuple[str, FaultProxy]]:
        """(label, proxy) for the chosen links of ``nodes``; ``links``: all, nodes or clients."""
        out: list[tuple[str, FaultProxy]] = []
        seen: set[int] = set()
        for node in nodes:
            for name, proxy in sorted(self.system.proxies(node).items()):
                d, _, kind = name.partition(":")
                wanted = links == "all" or (links == "clients") == (kind in CLIENT_LINKS)
                if not wanted or (direction and d != direction):
                    continue
                if id(proxy) not in seen:
                    seen.add(id(proxy))
                    out.append((f"{node}/{name}", proxy))
        return out

    # -- start / stop

    def _plan_links(self, fault: Fault, nodes: list[str], rec: dict[str, Any]) -> list[tuple[str, FaultProxy]]:
        kind, p = fault.kind, fault.params
        if kind == "partition-one":
            return self._links(nodes, links="all" if p.get("clients") else "nodes")
        if kind == "partition-oneway":
            rec["direction"] = p.get("direction", "out")
            touched = self._links(nodes, rec["direction"], "nodes")
            if not touched:  # no link that way on this node: cut the other way instead
                rec["direction"] = "out" if rec["direction"] == "in" else "in"
                touched = self._links(nodes, rec["direction"], "nodes")
            return touched
        if kind == "bridge":
            return self._links([f"spu-{i}" for i in self._ids("spu") if f"spu-{i}" not in nodes], "in", "nodes")
        if kind == "slow":
            return self._links(nodes)
        if kind == "lossy":
            return self._links(nodes, links=p.get("links", "clients"))
        return self._links(nodes, links="nodes")  # partition-half

    def start(self, fault: Fault) -> dict[str, Any]:
        """Apply ``fault``; return what was done (resolved nodes, action, links touched, ...).

        What it touches is remembered before it is touched, so ``stop``/``heal_all`` also undo
        a start that failed half-way."""
        if fault in self._active:
            raise ValueError(f"fault already active: {fault}")
        if fault.kind not in KINDS:
            raise ValueError(f"unknown fault kind {fault.kind!r}")
        kind, p, s = fault.kind, fault.params, self.system
        net = getattr(s, "net_mode", "proxy") == "netns"
        if kind in NETNS_KINDS and not net:
            raise ValueError(f"fault kind {kind!r} needs netns mode (a host per node); this system runs in "
                             f"{getattr(s, 'net_mode', 'proxy')} mode")
        rng = random.Random(p["seed"] if "seed" in p else self.rng.getrandbits(32))
        rec: dict[str, Any] = {"kind": kind, "target": fault.target}
        nodes = rec["nodes"] = self._resolve(fault, rng, rec)
        if net and kind in NET_KINDS:
            return self._start_net(fault, nodes, rng, rec)
        touched = self._plan_links(fault, nodes, rec) if kind in LINK_KINDS else []
        self._active[fault] = {"nodes": nodes, "proxies": [proxy for _, proxy in touched]}
        if kind in LINK_KINDS:
            rec["links"] = [label for label, _ in touched]
            mode, delay = p.get("mode", "reset"), p.get("delay_s", 0.1)
            for _, proxy in touched:
                if kind == "slow":
                    proxy.set_delay(delay)
                elif kind == "lossy":
                    proxy.set_drop_replies(True)
                else:
                    proxy.cut(mode)
            rec["action"] = {"slow": f"delay {delay} s", "lossy": "drop replies"}.get(kind, f"cut ({mode})")
        elif kind == "pause":
            for node in nodes:
                s.pause(node)
            rec["action"] = "SIGSTOP"
        elif kind == "clock-jump":
            rec.update(action="restart with clock offset", env={CLOCK_ENV: str(p.get("offset_ms", 0))})
            for node in nodes:
                s.kill(node)
                s.restart(node, rec["env"])
        elif kind == "disk-wipe":
            rec["action"] = "kill -9, delete the data directory, restart"
            for node in nodes:
                s.kill(node)
            rec["damage"] = [dict(remove_tree(s.data_dir(node)), node=node) for node in nodes]
            for node in nodes:
                s.restart(node)
        elif kind == "disk-fail":
            mode = rec["mode"] = p.get("mode", "remove")
            if mode not in DISK_FAIL_MODES:
                raise ValueError(f"disk-fail mode must be one of {DISK_FAIL_MODES}, got {mode!r}")
            if mode == "remove":
                rec["action"] = "delete the data directory of the running node"
                rec["damage"] = [dict(remove_tree(s.data_dir(node)), node=node) for node in nodes]
            else:
                rec["action"] = "fail the next fsync (trigger file)"
                rec["damage"] = []
                for node in nodes:
                    trigger = s.fail_fsync_file(node)
                    with open(trigger, "w") as f:
                        f.write(f"{fault.start_s}\n")
                    rec["damage"].append({"node": node, "trigger": trigger})
        elif kind == "rolling-restart":
            order = list(nodes)
            rng.shuffle(order)
            rec.update(action="SIGTERM each node in turn, restart it, wait until it serves again", order=order)
            rec.update(s.rolling_restart(order))
        elif kind == "restart-all":
            order = list(nodes)
            rng.shuffle(order)
            rec.update(action="kill -9 every node, restart in random order", order=order)
            for node in nodes:
                s.kill(node)
            for node in order:
                s.restart(node)
        else:  # kill, torn-tail, power-loss
            rec["action"] = "kill -9"
            for node in nodes:
                s.kill(node)
            if kind == "torn-tail":
                rec["damage"] = [d for node in nodes for d in self._damage(node, rng, p.get("mode", "truncate"), False)]
            elif kind == "power-loss":
                rec["damage"] = [self._power_loss(node, rng) for node in nodes]
        return rec

    def stop(self, fault: Fault) -> dict[str, Any]:
        """Undo what ``start`` did for ``fault``; every step is tried even if one fails."""
        rec: dict[str, Any] = {"kind": fault.kind, "target": fault.target}
        state = self._active.pop(fault, None)
        if state is None:
            return dict(rec, action="none (not active)")
        nodes, proxies, s, kind = state["nodes"], state["proxies"], self.system, fault.kind
        steps: list[tuple[Any, tuple[Any, ...]]]
        if state.get("plan") is not None:  # netns mode: the system counts who holds each edge
            action, steps = "heal (packet filters, netem)", [(s.revert_net, (state["plan"],))]
        elif kind in LINK_KINDS:
            undo = {"slow": ("delay 0", "set_delay", (0.0,)),
                    "lossy": ("forward replies", "set_drop_replies", (False,))}
            action, method, args = undo.get(kind, ("heal", "heal", ()))
            # A proxy another active fault of the same effect still holds (runners may share one
            # proxy between two nodes' links) is left as it is; the last one out undoes it.
            held = {id(px) for f, st in self._active.items() if _effect(f.kind) == _effect(kind)
                    for px in st["proxies"]}
            steps = [(getattr(proxy, method), args) for proxy in proxies if id(proxy) not in held]
        elif kind == "pause":
            action, steps = "SIGCONT", [(s.resume, (node,)) for node in nodes]
        elif kind == "clock-jump":
            action = "restart without clock offset"
            steps = [step for node in nodes for step in ((s.kill, (node,)), (s.restart, (node,)))]
        elif kind in RESTARTED_AT_START or kind == "disk-fail":
            # Already restarted by start (disk-wipe, restart-all), or still running on a disk that
            # failed: only a node that has exited since (a correct SPU exits when its data
            # directory is removed) is started again, as a supervisor would.
            # A trigger file goes first, so a restarted SPU does not fail an fsync of its own.
            steps = [(_remove_if_present, (s.fail_fsync_file(node),)) for node in nodes] if kind == "disk-fail" else []
            exited = rec["exited"] = {node: code for node in nodes if (code := s.exit_code(node)) is not None}
            action = "restart the exited" if exited else "none (running)"
            steps += [(s.restart, (node,)) for node in exited]
        else:
            action, steps = "restart", [(s.restart, (node,)) for node in nodes]
        errors: list[str] = []
        for fn, args in steps:
            try:
                fn(*args)
            except Exception as e:  # noqa: BLE001 - reported; the other steps still run
                errors.append(f"{getattr(fn, '__name__', fn)}{args}: {e!r}")
        rec.update(nodes=nodes, action=action)
        if errors:
            rec["errors"] = errors
        return rec

    def _start_net(self, fault: Fault, nodes: list[str], rng: random.Random, rec: dict[str, Any]) -> dict[str, Any]:
        """A link fault in netns mode: packet filters between pairs of hosts, or netem on hosts
        (jepsen/net_faults.py); remembered before it is applied, as every start is."""
        every = [f"spu-{i}" for i in self._ids("spu")] + [f"sc-{i}" for i in self._ids("sc")]
        plan: NetPlan = net_plan(fault.kind, nodes, every, fault.params, rng)
        self._active[fault] = {"nodes": nodes, "proxies": [], "plan": plan}
        rec.update(plan.describe(), action="netem" if plan.netem else "drop packets (nftables)")
        self.system.apply_net(plan)  # type: ignore[attr-defined]
        return rec

    def heal_all(self) -> list[dict[str, Any]]:
        """Stop every active fault (end of run, or cleanup after an error)."""
        return [self.stop(f) for f in list(self._active)]

    # -- damage on disk

    def _damage(self, node: str, rng: random.Random, mode: str, every: bool) -> list[dict[str, Any]]:
        segments = [seg for d in partition_dirs(self.system.data_dir(node))
                    if (seg := newest_segment(d)) and os.path.getsize(seg) > 0]
        if not segments:
            return [{"node": node, "action": "none (no non-empty segment)"}]
        chosen = segments if every else [rng.choice(segments)]
        return [dict(damage_tail(seg, rng, mode), node=node) for seg in chosen]

    def _power_loss(self, node: str, rng: random.Random) -> dict[str, Any]:
        if node.startswith("sc-"):
            return {"node": node, "action": "cut to fsynced", "cuts": self.system.cut_sc_to_fsynced(node)}
        return {"node": node, "action": "truncate every active segment (approximation)",
                "segments": self._damage(node, rng, "truncate", every=True)}
