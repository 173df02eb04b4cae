"""The ``group`` workload of the fault harness (``python -m jepsen run --workload group``;
docs/reliability.md, "Consumer groups").

Producers (jepsen/run.py's, acks=all, idempotent) send unique integers to the 6 partitions of
topic ``jepsen-group``. ``members`` group consumers of group ``jepsen`` read it, each a separate
OS process (jepsen/group_member.py), so the consumer nemesis can
kill -9 them and freeze them with SIGSTOP: a frozen process keeps its connections open and
sends nothing, which a task inside the runner cannot imitate (its consumer's heartbeat task
would keep running). Each member writes what it sees to its own JSON lines file
(jepsen/group_history.py): every record handed to it, every assignment change its callbacks
report (with the generation), every commit (invoke, then ok/fail/info), and ``closing``.
The runner adds ``killed`` once a kill -9 has been waited for.

Commits are the member's own (``auto_commit=False``; jepsen/group_member.py): every commit, and
the exact offsets it carried, is in the history. The consumer's automatic commits would not be.

Faults: :func:`member_faults` (kill -9 then restart as a new member; SIGSTOP then SIGCONT,
some longer than the session timeout so the member is fenced) beside the SPU/SC faults of
jepsen/nemesis.py (``--nemesis member-kill,member-pause,...``); ``kill-coordinator``,
``pause-coordinator`` and ``partition-coordinator`` aim at the leader of the group's
``_consumer_offsets`` partition. After the schedule every
fault is healed, killed members are restarted, the producers stop, and the members drain the
topic until every acknowledged value has been handed to one of them (``DRAIN_TIMEOUT_S``);
then they close. The history is checked by jepsen/checkers/groups.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .group_history import Change, GroupHistory, Send, dumps, member_lines

if TYPE_CHECKING:
    import argparse

    from .system import System

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GROUP_TOPIC = "jepsen-group"
GROUP = "jepsen"
GROUP_PARTITIONS = 6
SESSION_TIMEOUT_MS = 3000
COMMIT_INTERVAL_MS = 500
MEMBER_START_GAP_S = 2.0  # members join one after another, so partitions move between live members
DRAIN_TIMEOUT_S = 90.0
TERM_TIMEOUT_S = 20.0  # SIGTERM to exit (commit, leave); then kill -9
COORDINATOR_KEY = -1  # System.spu_leaders key of the coordinator's SPU (nemesis target spu:leader)
COORDINATOR_ALIASES = {"kill-coordinator": "kill", "pause-coordinator": "pause",
                       "partition-coordinator": "partition-one"}
MEMBER_KINDS = {"member-kill": "kill", "member-pause": "pause"}


# ---------------------------------------------------------------- the consumer faults (pure)

@dataclass(frozen=True)
class MemberFault:
    start_s: float
    end_s: float
    kind: str  # kill (kill -9 at start, a new member at end) | pause (SIGSTOP / SIGCONT)
    slot: int


def member_faults(seed: int, duration_s: float, slots: int, kinds: tuple[str, ...] = ("kill", "pause"),
                  interval_s: tuple[float, float] = (3.0, 7.0),
                  length_s: tuple[float, float] = (1.0, 6.0)) -> list[MemberFault]:
    """The consumer faults of a run, sorted by start; a pure function of its arguments. One at a
    time, slots drawn at random; pauses as long as ``length_s`` allows, so some outlast the
    session timeout (3 s) and some do not; the last 10% of the run has none."""
    unknown = sorted(set(kinds) - {"kill", "pause"})
    if unknown:
        raise ValueError(f"unknown member fault kinds {unknown}; known: kill, pause")
    if slots < 1 or duration_s <= 0 or not kinds:
        return []
    rng = random.Random(seed ^ 0x6A5)
    horizon = duration_s * 0.9
    out: list[MemberFault] = []
    t = rng.uniform(*interval_s)
    while t < horizon:
        end = min(t + rng.uniform(*length_s), horizon)
        if end - t < 0.5:
            break
        out.append(MemberFault(round(t, 3), round(end, 3), rng.choice(sorted(kinds)), rng.randrange(1, slots + 1)))
        t = end + rng.uniform(*interval_s)
    return out




# ---------------------------------------------------------------- the member processes

@dataclass
class _Proc:
    name: str  # "c<slot>.<incarnation>"
    path: str  # its events file
    proc: subprocess.Popen
    paused: bool = False


@dataclass
class Members:
    """The member processes, by slot; each start of a slot is a new member. Processes are stopped
    by their own pid (:meth:`close` in a finally)."""

    sc: list[str]
    dir: str
    t0: float
    session_timeout_ms: int = SESSION_TIMEOUT_MS
    live: dict[int, _Proc] = field(default_factory=dict)
    every: list[_Proc] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)  # killed, recorded here
    incarnations: dict[int, int] = field(default_factory=dict)

    def start(self, slot: int) -> str:
        if slot in self.live:
            return self.live[slot].name
        n = self.incarnations[slot] = self.incarnations.get(slot, 0) + 1
        name = f"c{slot}.{n}"
        path = os.path.join(self.dir, f"{name}.jsonl")
        with open(os.path.join(self.dir, f"{name}.log"), "ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", "jepsen.group_member", "--sc", ",".join(self.sc),
                                     "--topic", GROUP_TOPIC, "--group", GROUP, "--events", path,
                                     "--session-timeout-ms", str(self.session_timeout_ms)],
                                    cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        p = self.live[slot] = _Proc(name, path, proc)
        self.every.append(p)
        return name

    def kill(self, slot: int) -> str | None:
        """kill -9; the member's intervals end once the kill has been waited for."""
        p = self.live.pop(slot, None)
        if p is None:
            return None
        if p.paused:
            os.kill(p.proc.pid, signal.SIGCONT)
        if p.proc.poll() is None:
            os.kill(p.proc.pid, signal.SIGKILL)
        p.proc.wait(timeout=30)
        self.changes.append(Change(time.monotonic() - self.t0, p.name, "killed"))
        return p.name

    def pause(self, slot: int) -> str | None:
        p = self.live.get(slot)
        if p is None or p.paused or p.proc.poll() is not None:
            return None
        os.kill(p.proc.pid, signal.SIGSTOP)
        p.paused = True
        return p.name

    def resume(self, slot: int) -> str | None:
        p = self.live.get(slot)
        if p is None or not p.paused:
            return None
        os.kill(p.proc.pid, signal.SIGCONT)
        p.paused = False
        return p.name

    def reap(self) -> dict[str, int]:
        """Members that exited on their own (a crash; name -> exit status): their intervals end
        now (``killed``), and the slot starts a new member, as a supervisor would."""
        out: dict[str, int] = {}
        for slot, p in list(self.live.items()):
            code = p.proc.poll()
            if code is not None:
                out[p.name] = code
                self.kill(slot)
                self.start(slot)
        return out

    async def terminate_all(self) -> dict[str, Any]:
        """SIGTERM every member (it commits, leaves and exits); kill -9 what has not exited by
        ``TERM_TIMEOUT_S``. Returns each member's exit status."""
        for slot in list(self.live):
            self.resume(slot)
            p = self.live[slot]
            if p.proc.poll() is None:
                p.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + TERM_TIMEOUT_S
        while time.monotonic() < deadline and any(p.proc.poll() is None for p in self.live.values()):
            await asyncio.sleep(0.1)  # waiting for the members to close, with a deadline
        codes: dict[str, Any] = {}
        for slot in list(self.live):
            p = self.live[slot]
            if p.proc.poll() is None:
                self.kill(slot)
                codes[p.name] = "killed after SIGTERM timed out"
            else:
                codes[p.name] = self.live.pop(slot).proc.returncode
        return codes

    def history(self) -> GroupHistory:
        h = GroupHistory()
        for p in self.every:
            try:
                with open(p.path, encoding="utf-8") as f:
                    h.extend(member_lines(p.name, f.readlines(), self.t0))
            except FileNotFoundError:
                pass  # killed before it wrote anything
        h.changes += self.changes
        return h

    def delivered(self) -> set[int]:
        """Every value handed to some member so far (complete lines only)."""
        out: set[int] = set()
        for p in self.every:
            try:
                with open(p.path, encoding="utf-8") as f:
                    for line in f:
                        if line.endswith("\n") and '"deliver"' in line:
                            out.update(v for _p, _o, v in json.loads(line)["recs"])
            except FileNotFoundError:
                pass
        return out

    def close(self) -> None:
        for p in self.every:
            if p.proc.poll() is None:
                if p.paused:
                    os.kill(p.proc.pid, signal.SIGCONT)
                p.proc.kill()
                p.proc.wait(timeout=30)


# ---------------------------------------------------------------- the run

async def _watch_leaders(system: System, stop: asyncio.Event) -> None:
    """Keep the system's view of who leads current: the data partitions, and the coordinator's
    SPU (the leader of the group's ``_consumer_offsets`` partition) under ``COORDINATOR_KEY``."""
    from kolk.client.admin import AdminClient
    from kolk.groups.names import OFFSETS_TOPIC, group_partition
    from kolk.protocol.errors import KolkError

    admin = AdminClient(system.client_sc_addresses, timeout_s=2)
    while not stop.is_set():
        try:
            parts = await admin.list_objects("partition", stale=True)
            offsets = {p["spec"]["partition"]: p["status"]["leader"] for p in parts
                       if p["spec"]["topic"] == OFFSETS_TOPIC}
            for p in parts:
                if p["spec"]["topic"] == GROUP_TOPIC:
                    system.spu_leaders[p["spec"]["partition"]] = p["status"]["leader"]
            if offsets:
                system.spu_leaders[COORDINATOR_KEY] = offsets.get(group_partition(GROUP, len(offsets)))
        except KolkError:
            pass  # the SCs may be faulted right now; try again next tick
        await asyncio.sleep(0.5)  # polling period


def split_nemesis(kinds: list[str]) -> tuple[list[str], dict[str, str], tuple[str, ...]]:
    """``--nemesis`` of a group run: (node fault kinds, coordinator aliases asked for -> their
    kind, member fault kinds)."""
    member = tuple(sorted({MEMBER_KINDS[k] for k in kinds if k in MEMBER_KINDS}))
    coord = {k: COORDINATOR_ALIASES[k] for k in kinds if k in COORDINATOR_ALIASES}
    nodes = [k for k in kinds if k not in MEMBER_KINDS and k not in COORDINATOR_ALIASES]
    return nodes, coord, member


def node_faults(seed: int, duration_s: float, kinds: list[str], spus: int) -> list[Any]:
    """The SPU/SC faults of a group run, sorted by start. Two schedules of jepsen/nemesis.py:
    the coordinator faults (``kill-coordinator`` ...: their kind aimed at ``spu:leader`` of
    ``COORDINATOR_KEY``, a cut one keeping client links) drawn from ``seed``, and the other node
    faults (``kill-leader`` and ``partition-leader`` as in the queue workload) from ``seed + 1``.
    Each schedule keeps its own rules (targets, concurrency); the two may overlap."""
    from .nemesis import schedule

    nodes, coord, _ = split_nemesis(kinds)

    def aimed(faults: list[Any], kind: str, partition: int | None) -> list[Any]:
        extra: dict[str, Any] = {"clients": False, "mode": "blackhole"} if kind == "partition-one" else {}
        return [dataclasses.replace(f, target="spu:leader", params={
            **f.params, "partition": f.params.get("partition", 0) if partition is None else partition, **extra})
            if f.kind == kind else f for f in faults]

    out = schedule(seed, duration_s, sorted(set(coord.values())), spus=spus, scs=3,
                   partitions=GROUP_PARTITIONS) if coord else []
    for kind in set(coord.values()):
        out = aimed(out, kind, COORDINATOR_KEY)
    aliases = {"kill-leader": "kill", "partition-leader": "partition-one"}
    base = sorted({aliases.get(k, k) for k in nodes})
    others = schedule(seed + 1, duration_s, base, spus=spus, scs=3, partitions=GROUP_PARTITIONS) if base else []
    for alias, kind in aliases.items():
        if alias in nodes and kind not in nodes:
            others = aimed(others, kind, None)
    return sorted(out + others, key=lambda f: f.start_s)


async def run_group(system: System, args: argparse.Namespace, out_dir: str) -> dict[str, Any]:
    """The group workload under the fault schedule; returns the results (``groups``: the
    checker's verdict)."""
    from kolk.client.admin import AdminClient

    from .checkers.groups import check_groups
    from .nemesis import Nemesis
    from .queue_history import Recorder, pair, write_events
    from .report import latency_svg
    from .run import Run, _latencies
    from .system import NemesisView

    rec = Recorder()
    r = Run(system, rec, GROUP_PARTITIONS, args.seed)
    await AdminClient(system.client_sc_addresses, timeout_s=60).create_topic(
        GROUP_TOPIC, GROUP_PARTITIONS, 3, {"min_in_sync": "2"})
    faults = node_faults(args.seed, args.time, args.nemesis, args.spus)
    _, _, member_kinds = split_nemesis(args.nemesis)
    mfaults = member_faults(args.seed, args.time, args.members, member_kinds)
    members_dir = os.path.join(out_dir, "members")
    os.makedirs(members_dir, exist_ok=True)
    t0 = time.monotonic()
    members = Members(system.client_sc_addresses, members_dir, t0)
    nemesis = Nemesis(NemesisView(system))
    watch_stop = asyncio.Event()
    tasks = [asyncio.ensure_future(r.producer(GROUP_TOPIC)) for _ in range(args.producers)]
    watcher = asyncio.ensure_future(_watch_leaders(system, watch_stop))
    applied: list[dict[str, Any]] = []
    crashed: dict[str, Any] = {}
    try:
        pending_nodes = sorted(faults, key=lambda f: f.start_s)
        pending_members = list(mfaults)
        to_start = list(range(1, args.members + 1))
        active: list[Any] = []
        active_m: list[MemberFault] = []
        while (now := time.monotonic() - t0) < args.time:
            while to_start and now >= (to_start[0] - 1) * MEMBER_START_GAP_S:
                members.start(to_start.pop(0))
            for f in [f for f in active if f.end_s <= now]:
                applied.append({"fault": f.kind, "stop": nemesis.stop(f), "t": now})
                active.remove(f)
            while pending_nodes and pending_nodes[0].start_s <= now:
                f = pending_nodes.pop(0)
                coordinator = system.spu_leaders.get(COORDINATOR_KEY)  # as last seen, before the fault
                applied.append({"fault": f.kind, "start": nemesis.start(f), "t": now, "coordinator": coordinator})
                active.append(f)
            for name, code in members.reap().items():  # a member that died on its own: a client bug
                crashed[name] = code
            for m in [m for m in active_m if m.end_s <= now]:
                done = members.start(m.slot) if m.kind == "kill" else members.resume(m.slot)
                applied.append({"member_fault": m.kind, "stop": done, "slot": m.slot, "t": now})
                active_m.remove(m)
            while pending_members and pending_members[0].start_s <= now:
                m = pending_members.pop(0)
                hit = members.kill(m.slot) if m.kind == "kill" else members.pause(m.slot)
                applied.append({"member_fault": m.kind, "start": hit, "slot": m.slot, "t": now})
                active_m.append(m)
            await asyncio.sleep(0.2)  # the schedule's clock tick
        for f in active:
            applied.append({"fault": f.kind, "stop": nemesis.stop(f)})
        system.heal_all()
        for slot in range(1, args.members + 1):
            members.resume(slot)
            members.start(slot)  # a killed member (or one never started) comes back
        r.stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        for name in system.spu_names():
            system.wait_ready(name)
        # The drain: every acknowledged value handed to some member, within a deadline.
        acked = {op.value for op in pair(rec.events()) if op.f == "send" and op.type == "ok"}
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        missing = acked
        while time.monotonic() < deadline:
            crashed.update(members.reap())
            missing = acked - members.delivered()
            if not missing:
                break
            await asyncio.sleep(0.5)  # waiting for the members to read to the end, with a deadline
        exits = await members.terminate_all()
    finally:
        watch_stop.set()
        members.close()
        await asyncio.gather(watcher, return_exceptions=True)
    history = members.history()
    history.end_time = time.monotonic() - t0
    history.sends = [Send(op.value, op.key, op.type, op.offset) for op in pair(rec.events()) if op.f == "send"]
    events = rec.events()
    write_events(os.path.join(out_dir, "history.jsonl"), events)
    with open(os.path.join(out_dir, "group-history.jsonl"), "w", encoding="utf-8") as f:
        f.write(dumps(history))
    verdict = check_groups(history)
    latency_svg(_latencies(events), [(f.start_s, f.end_s, f.kind) for f in faults],
                os.path.join(out_dir, "latency.svg"))
    # A member that died on its own is a client bug: the run is not valid, whatever the checker says.
    return {"valid": bool(verdict["valid"]) and not crashed, "workload": "group", "seed": args.seed, "time_s": args.time,
            "nemesis": args.nemesis, "broken": [f for f in ("unsafe_acks", "ignore_storage_id", "unsafe_assign")
                                                 if getattr(args, f, False)],
            "groups": verdict, "drain": {"missing": len(missing), "examples": sorted(missing)[:10]},
            "members": {"crashed": crashed, "exits": exits}, "faults": applied}
