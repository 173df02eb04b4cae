"""Part 2 of bench/group_bench.py: how long partitions go unread when a group member dies or
leaves.

4 member processes (this file run as ``group_rebalance.py member SCS TOPIC GROUP SESSION_MS``:
``client.consumer(topic, group=..., session_timeout_ms=3000)``) on a 12-partition topic (RF 1)
that a producer in the bench process writes to every 10 ms (one record per partition). Members
print JSON events stamped with time.monotonic() (one clock for every process on this machine):
assignments, revocations, the first record read per partition after an assignment, and a read
per partition at most every 50 ms, or at once after the bench writes ``mark`` to the member
(right after a kill, and beside a ``close``), so a partition that did not move shows up within
one produce interval. (a) kill -9 of a member: time from the kill until each of
the 12 partitions has delivered a record to a live member after it. (b) a member's
``close()``: from the call until each partition is read again by another member. After each
round a new member joins; the next round starts once the group is stable again (4 members,
3 partitions each, every partition read since its assignment).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from dataplane_cluster import DataPlaneCluster, _die_with_parent, wait_committed, wait_until  # noqa: E402
from kolk.client.admin import run  # noqa: E402
from kolk.client.client import AsyncClient  # noqa: E402
from kolk.client.consumer import Offset  # noqa: E402

REBALANCE_TOPIC = "bench-rebalance"
SESSION_TIMEOUT_MS = 3000
MEMBERS = 4
REBALANCE_PARTITIONS = 12
PRODUCE_EVERY_S = 0.01           # the producer: one record per partition this often
READ_EVENT_EVERY_S = 0.05        # a member reports a partition's reads at most this often
STABLE_TIMEOUT_S = 60.0
ROUND_TIMEOUT_S = 30.0
CALL_TIMEOUT_S = 10.0


def member_main(argv: list[str]) -> int:
    """A group member process: prints one JSON event per line. Commands on stdin: ``close``
    closes the consumer; ``mark`` makes the next read of every partition an event at once."""
    scs, topic, group, session_ms = argv[0].split(","), argv[1], argv[2], int(argv[3])

    def emit(ev: str, **kw: Any) -> None:
        print(json.dumps({"ev": ev, "t": time.monotonic(), "pid": os.getpid(), **kw}), flush=True)

    async def body() -> None:
        loop = asyncio.get_running_loop()
        close_asked = asyncio.Event()
        fresh: set[int] = set()      # assigned, no record read since
        last_read: dict[int, float] = {}

        def command() -> None:
            data = os.read(sys.stdin.fileno(), 4096)
            if not data:  # the bench is gone
                loop.remove_reader(sys.stdin.fileno())
                close_asked.set()
            for word in data.split():
                if word == b"close":
                    close_asked.set()
                elif word == b"mark":
                    last_read.clear()
        loop.add_reader(sys.stdin.fileno(), command)

        def assigned(parts: Any, epoch: int) -> None:
            ps = sorted(tp.partition for tp in parts)
            fresh.update(ps)
            emit("assigned", parts=ps, epoch=epoch)

        def revoked(parts: Any, epoch: int) -> None:
            ps = sorted(tp.partition for tp in parts)
            fresh.difference_update(ps)
            emit("revoked", parts=ps, epoch=epoch)

        async with AsyncClient(scs, timeout_s=CALL_TIMEOUT_S) as client:
            c = client.consumer(topic, group=group, session_timeout_ms=session_ms, start=Offset.end(),
                                on_assigned=assigned, on_revoked=revoked, on_lost=revoked)

            async def read() -> None:
                async for batch in c.batches():
                    now = time.monotonic()
                    for p in {r.partition for r in batch}:
                        if p in fresh:
                            fresh.discard(p)
                            last_read[p] = now
                            emit("first", p=p)
                        elif now - last_read.get(p, 0.0) >= READ_EVENT_EVERY_S:
                            last_read[p] = now
                            emit("read", p=p)
            reader = asyncio.create_task(read())
            await asyncio.wait([reader, asyncio.create_task(close_asked.wait())], return_when=asyncio.FIRST_COMPLETED)
            emit("closing")
            await c.close()
            emit("closed")
            await reader
    asyncio.run(body())
    return 0


class Members:
    """The member processes of part 2 and what their events say, kept up to date as lines arrive."""

    def __init__(self, scs: list[str], group: str) -> None:
        self.scs, self.group = scs, group
        self.procs: dict[int, asyncio.subprocess.Process] = {}
        self.dead: set[int] = set()
        self.owned: dict[int, set[int]] = {}
        self.unread: dict[int, set[int]] = {}       # assigned, no record read since
        self.closing: dict[int, float] = {}
        self.reads: list[tuple[float, int, int]] = []  # (t, pid, partition) of "first" and "read" events
        self._readers: list[asyncio.Task[None]] = []

    async def spawn(self) -> int:
        p = await asyncio.create_subprocess_exec(
            sys.executable, os.path.abspath(__file__), "member", ",".join(self.scs), REBALANCE_TOPIC, self.group,
            str(SESSION_TIMEOUT_MS), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            preexec_fn=_die_with_parent)
        self.procs[p.pid] = p
        self.owned[p.pid], self.unread[p.pid] = set(), set()
        self._readers.append(asyncio.create_task(self._read(p)))
        return p.pid

    async def _read(self, p: asyncio.subprocess.Process) -> None:
        assert p.stdout is not None
        async for line in p.stdout:
            try:
                e = json.loads(line)
            except ValueError:
                continue
            self.on_event(e)

    def on_event(self, e: dict[str, Any]) -> None:
        """Fold one member's event into what the bench knows."""
        pid, ev = e["pid"], e["ev"]
        self.owned.setdefault(pid, set())
        self.unread.setdefault(pid, set())
        if ev == "assigned":
            self.owned[pid].update(e["parts"])
            self.unread[pid].update(e["parts"])
        elif ev == "revoked":
            self.owned[pid].difference_update(e["parts"])
            self.unread[pid].difference_update(e["parts"])
        elif ev in ("first", "read"):
            self.unread[pid].discard(e["p"])
            self.reads.append((e["t"], pid, e["p"]))
        elif ev == "closing":
            self.closing[pid] = e["t"]

    def live(self) -> list[int]:
        return [pid for pid, p in self.procs.items() if pid not in self.dead and p.returncode is None]

    def stable(self) -> bool:
        """4 live members, 3 partitions each, every partition read since its last assignment."""
        live = self.live()
        return len(live) == MEMBERS and all(len(self.owned[pid]) == REBALANCE_PARTITIONS // MEMBERS
                                            and not self.unread[pid] for pid in live)

    def read_again_after(self, t: float, mark: int, exclude: int) -> float | None:
        """The time by which every partition has been read by a member other than ``exclude``
        after ``t`` (events from index ``mark`` on); None while some partition has not."""
        first: dict[int, float] = {}
        for te, pid, p in self.reads[mark:]:
            if te > t and pid != exclude and p not in first:
                first[p] = te
        return max(first.values()) if len(first) == REBALANCE_PARTITIONS else None

    def describe(self) -> str:
        return ", ".join(f"{pid}: owns {sorted(self.owned[pid])}, unread {sorted(self.unread[pid])}"
                         for pid in self.live())

    async def tell(self, pids: list[int], command: bytes) -> None:
        for pid in pids:
            stdin = self.procs[pid].stdin
            assert stdin is not None
            stdin.write(command + b"\n")
            await stdin.drain()

    async def stop_all(self) -> None:
        for p in self.procs.values():
            if p.returncode is None:
                p.kill()
                await p.wait()
        for r in self._readers:
            r.cancel()


async def steady_producer(client: AsyncClient, stop: asyncio.Event) -> None:
    producer = client.producer(REBALANCE_TOPIC, acks="leader", linger_ms=0)
    loop = asyncio.get_running_loop()
    tick = loop.time()
    while not stop.is_set():
        for p in range(REBALANCE_PARTITIONS):
            await producer.send(b"x" * 100, partition=p)
        tick += PRODUCE_EVERY_S
        await asyncio.sleep(max(0.0, tick - loop.time()))  # pacing the producer, not synchronisation
    await producer.flush()
    await producer.close()


def bench_rebalance(c: DataPlaneCluster, args: argparse.Namespace) -> None:
    kills: list[float] = []
    leaves: list[float] = []

    async def body() -> None:
        async with c.client(timeout_s=30) as client:
            await client.create_topic(REBALANCE_TOPIC, REBALANCE_PARTITIONS, 1)
            await wait_committed(client, REBALANCE_TOPIC)
            stop = asyncio.Event()
            producing = asyncio.create_task(steady_producer(client, stop))
            m = Members(c.sc_addresses, "bench-rebalance-group")
            try:
                for _ in range(MEMBERS):
                    await m.spawn()
                for rnd in range(2 * args.rounds):
                    await wait_until(m.stable, STABLE_TIMEOUT_S, lambda: f"the group to be stable: {m.describe()}")
                    victim = m.live()[-1]  # the newest member: every round takes a different one
                    mark = len(m.reads)
                    if rnd % 2 == 0:
                        t0 = time.monotonic()
                        os.kill(victim, signal.SIGKILL)
                        m.dead.add(victim)
                        await m.tell(m.live(), b"mark")
                        await m.procs[victim].wait()
                        took = await wait_until(lambda: m.read_again_after(t0, mark, victim), ROUND_TIMEOUT_S,
                                                "every partition read again after a kill -9")
                        kills.append((took - t0) * 1000)
                    else:
                        await m.tell([victim], b"close")
                        await m.tell([pid for pid in m.live() if pid != victim], b"mark")
                        t0 = await wait_until(lambda: m.closing.get(victim), ROUND_TIMEOUT_S,
                                              "the member to start closing")
                        took = await wait_until(lambda: m.read_again_after(t0, mark, victim), ROUND_TIMEOUT_S,
                                                "every partition read again after a clean leave")
                        leaves.append((took - t0) * 1000)
                        await asyncio.wait_for(m.procs[victim].wait(), ROUND_TIMEOUT_S)
                        m.dead.add(victim)
                    await m.spawn()
            finally:
                stop.set()
                await m.stop_all()
                await producing
    run(body)
    print(f"\nRebalance: {MEMBERS} member processes on {REBALANCE_PARTITIONS} partitions (RF 1), sticky assignor, "
          f"session_timeout_ms={SESSION_TIMEOUT_MS}; a producer writes a record to every partition every "
          f"{PRODUCE_EVERY_S * 1000:.0f} ms; {args.rounds} rounds each\n")
    print("| event | until every partition is read again: median ms | max ms | per round | goal |")
    print("| --- | ---: | ---: | --- | --- |")
    for label, xs, goal in (("kill -9 of a member", kills, f"<= {SESSION_TIMEOUT_MS + 1000} ms"),
                            ("clean leave (close())", leaves, "<= 500 ms")):
        print(f"| {label} | {statistics.median(xs):,.0f} | {max(xs):,.0f} | " + ", ".join(f"{x:,.0f}" for x in xs)
              + f" | {goal} |")


if __name__ == "__main__":
    if sys.argv[1:2] != ["member"]:
        raise SystemExit("run by bench/group_bench.py (--only rebalance); as a member: group_rebalance.py member "
                         "SCS TOPIC GROUP SESSION_MS")
    sys.exit(member_main(sys.argv[2:]))
