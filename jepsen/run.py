"""``python -m jepsen run``: start a cluster, run the workloads under a fault schedule, heal,
read everything back, check, and write a report directory (DESIGN.md §9, docs/reliability.md).

Workloads:

* **queue**: producer processes send unique integers, one at a time, with acks=all and the
  idempotent producer, to the partitions of topic ``jepsen`` (replication factor 3); consumer
  processes each poll one partition from where they stand (committed reads). An operation
  whose outcome is unknown (timeout, broken connection) is ``info`` and its process is
  retired: a fresh process takes over. After the schedule every fault is healed and a final
  reader reads each partition from offset 0 to its end.
* **register**: processes write and read keys of the metadata store (SC objects); checked for
  linearizability per key.
* **group** (``--workload group``, instead of the two above): consumer-group members as OS
  processes read a 6-partition topic under member kills and pauses and node faults;
  jepsen/group_workload.py, checked by jepsen/checkers/groups.py.

Everything the clients see is recorded as invoke/ok/fail/info events (jepsen/queue_history.py)
and checked (jepsen/checkers/queue.py, jepsen/checkers/linearizability.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import random
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kolk.client.admin import AdminClient, run  # noqa: E402
from kolk.client.client import AsyncClient  # noqa: E402
from kolk.protocol.errors import ClusterUnavailableError, InvalidRequestError, KolkError, NotFoundError  # noqa: E402

from .checkers.linearizability import check as check_linearizable  # noqa: E402
from .checkers.queue import check_queue  # noqa: E402
from .history import Operation, save_history  # noqa: E402
from .nemesis import NETNS_KINDS, Nemesis, schedule  # noqa: E402
from .queue_history import Recorder, write_events  # noqa: E402
from .report import latency_svg, write_results  # noqa: E402
from .system import NemesisView, System  # noqa: E402

TOPIC = "jepsen"
# The deliberately broken builds, test switches the servers read from their environment:
# acks=all answered once the leader has fsynced, before the high watermark (SPUs) ...
UNSAFE_ACKS_ENV = "KOLK_TEST_UNSAFE_ACKS"
# ... and storage ids ignored: a replica that comes back with an empty disk keeps its place in
# the in-sync set and its leadership, and followers truncate below their high watermark to
# follow it (SCs and SPUs; issue 15).
IGNORE_STORAGE_ID_ENV = "KOLK_TEST_IGNORE_STORAGE_ID"
# ... and a coordinator that grants a partition before its old owner revoked it (SPUs; issue 20).
UNSAFE_ASSIGN_ENV = "KOLK_TEST_UNSAFE_ASSIGN"
DEFINITE = (InvalidRequestError, NotFoundError)  # errors that mean the request certainly did not happen
OP_TIMEOUT_S = 30.0
START_ATTEMPTS = 3
CLOSE_TIMEOUT_S = 5.0
LONG_STARTS = frozenset({"rolling-restart"})  # faults whose start runs in a worker thread
NET_MODES = ("netns", "proxy")


async def _retire(client: Any) -> None:
    """Close the client of a retired process, best effort. Fresh clients are costly: each opens
    its own connections, and with the cycle collector off for the run the old ones are not
    reliably freed, closed or not. A consumer that made a fresh client every 0.1 s (on definite
    failures too, polling past the end of a log a wiped leader had emptied) filled that leader's
    proxy (256 connections) in about 15 s, with or without this close; every later client was
    refused and the final reads never ended. So only a process that saw ``info`` is retired."""
    with contextlib.suppress(Exception):  # a broken connection may fail to close; it is dropped anyway
        await asyncio.wait_for(client.close(), CLOSE_TIMEOUT_S)


class Run:
    def __init__(self, system: System, recorder: Recorder, partitions: int, seed: int) -> None:
        self.system = system
        self.rec = recorder
        self.partitions = partitions
        self.rng = random.Random(seed)
        self.next_value = 0
        self.next_process = 0
        self.stop = asyncio.Event()
        self.register_ops: list[Operation] = []

    def new_process(self) -> int:
        self.next_process += 1
        return self.next_process

    # ---------------------------------------------------------------- queue workload

    async def producer(self, topic: str = TOPIC) -> None:
        process = self.new_process()
        client = AsyncClient(self.system.client_sc_addresses, timeout_s=OP_TIMEOUT_S)
        producer = client.producer(topic, acks="all", linger_ms=0, retries=30, request_timeout_ms=5000)
        while not self.stop.is_set():
            self.next_value += 1
            value = self.next_value
            key = self.rng.randrange(self.partitions)
            op = self.rec.invoke(process, "send", key, value, None)
            try:
                meta = await asyncio.wait_for(await producer.send(str(value).encode(), partition=key),
                                              OP_TIMEOUT_S)
                self.rec.complete(op, "ok", [value, meta.offset])
            except DEFINITE as e:
                self.rec.complete(op, "fail", error=str(e)[:200])
            except (KolkError, asyncio.TimeoutError, OSError) as e:
                self.rec.complete(op, "info", error=str(e)[:200] or type(e).__name__)
                process = self.new_process()  # a process that saw "unknown" is retired
                await _retire(client)
                client = AsyncClient(self.system.client_sc_addresses, timeout_s=OP_TIMEOUT_S)
                producer = client.producer(topic, acks="all", linger_ms=0, retries=30, request_timeout_ms=5000)
                await asyncio.sleep(0.05)  # a breath before the fresh process starts

    async def consumer(self, key: int) -> None:
        process = self.new_process()
        client = AsyncClient(self.system.client_sc_addresses, timeout_s=OP_TIMEOUT_S)
        offset = 0
        while not self.stop.is_set():
            op = self.rec.invoke(process, "poll", key, None, None)
            try:
                r = await asyncio.wait_for(client.fetch(TOPIC, key, offset, 256 << 10), OP_TIMEOUT_S)
                pairs = _pairs(r.records)
                self.rec.complete(op, "ok", pairs)
                if pairs:
                    offset = pairs[-1][0] + 1
                else:
                    await asyncio.sleep(0.05)  # nothing new: poll again shortly
            except DEFINITE as e:
                # Nothing was read (e.g. the offset is past the end of a log a wiped leader
                # emptied): the same process polls again on the same connection.
                self.rec.complete(op, "fail", error=str(e)[:200])
                await asyncio.sleep(0.1)  # backoff before polling again
            except (KolkError, asyncio.TimeoutError, OSError) as e:
                self.rec.complete(op, "info", error=str(e)[:200])
                process = self.new_process()
                await _retire(client)
                client = AsyncClient(self.system.client_sc_addresses, timeout_s=OP_TIMEOUT_S)
                await asyncio.sleep(0.1)  # backoff before the fresh process polls

    async def final_reads(self, topic: str = TOPIC) -> None:
        process = self.new_process()
        client = AsyncClient(self.system.client_sc_addresses, timeout_s=30)
        for key in range(self.partitions):
            deadline = time.monotonic() + 120
            while True:
                op = self.rec.invoke(process, "final", key, None, None)
                try:
                    pairs: list[list[Any]] = []
                    _start, hw, leo = await client.offsets(topic, key)
                    if hw != leo:
                        raise ClusterUnavailableError(f"partition {key} not settled: hw {hw}, leo {leo}")
                    offset = 0
                    while offset < hw:
                        r = await client.fetch(topic, key, offset, 1 << 20)
                        got = _pairs(r.records)
                        if not got:  # a final read is the whole log: the checker takes it as such
                            raise ClusterUnavailableError(f"partition {key}: nothing at offset {offset}, "
                                                          f"below the high watermark {hw}")
                        pairs.extend(got)
                        offset = r.nextOffset
                    self.rec.complete(op, "ok", pairs)
                    break
                except (KolkError, OSError, asyncio.TimeoutError) as e:
                    self.rec.complete(op, "info", error=str(e)[:200])
                    process = self.new_process()
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(1.0)  # waiting for the healed cluster to settle

    # ---------------------------------------------------------------- register workload

    async def register(self, keys: int = 3) -> None:
        process = self.new_process()
        admin = AdminClient(self.system.client_sc_addresses, timeout_s=5)
        while not self.stop.is_set():
            key = f"k{self.rng.randrange(keys)}"
            t0 = time.monotonic()
            if self.rng.random() < 0.5:
                value = self.rng.randrange(1000)
                try:
                    await admin.put_object("policy", key, {"v": value})
                    outcome = "ok"
                except KolkError as e:
                    outcome = "fail" if isinstance(e, DEFINITE) else "info"
                self.register_ops.append(Operation(process, key, "write", value, t0, time.monotonic(), outcome))
            else:
                try:
                    obj = await admin.get_object("policy", key)
                    value = None if obj is None else obj["spec"]["v"]
                    self.register_ops.append(Operation(process, key, "read", value, t0, time.monotonic(), "ok"))
                except KolkError:
                    self.register_ops.append(Operation(process, key, "read", None, t0, time.monotonic(), "info"))
                    outcome = "info"
                else:
                    outcome = "ok"
            if outcome == "info":
                process = self.new_process()
                await _retire(admin)
                admin = AdminClient(self.system.client_sc_addresses, timeout_s=5)
            await asyncio.sleep(0.02)  # pacing the register workload


async def _watch_leaders(system: System, partitions: int, stop: asyncio.Event) -> None:
    """Keep the system's view of who leads current, for faults aimed at leaders."""
    admin = AdminClient(system.client_sc_addresses, timeout_s=2)
    while not stop.is_set():
        try:
            for p in await admin.list_objects("partition", stale=True):
                if p["spec"]["topic"] == TOPIC:
                    system.spu_leaders[p["spec"]["partition"]] = p["status"]["leader"]
            leader = (await admin.cluster_status())["leader"]
            system.sc_leader = system.sc_by_admin(leader) if leader else None
        except KolkError:
            pass  # the SCs may be faulted right now; try again next tick
        await asyncio.sleep(0.5)  # polling period


def _pairs(data: bytes) -> list[list[Any]]:
    from kolk.segments import decode_records
    from kolk.segments.batch import iter_batches

    out: list[list[Any]] = []
    if not data:
        return out
    for pos, _h in iter_batches(data, 64 << 20):
        out.extend([r.offset, int(r.value)] for r in decode_records(data, pos))
    return out


async def _run(system: System, args: argparse.Namespace, out_dir: str) -> dict[str, Any]:
    rec = Recorder()
    r = Run(system, rec, args.partitions, args.seed)
    admin = AdminClient(system.client_sc_addresses, timeout_s=60)
    await admin.create_topic(TOPIC, args.partitions, 3, {"min_in_sync": "2"})
    # Aliases aimed at partition leaders: kill-leader, partition-leader (its node links cut while
    # clients still reach it: the classic way a leader that acknowledges too early loses writes).
    aliases = {"kill-leader": "kill", "partition-leader": "partition-one"}
    kinds = sorted({aliases.get(k, k) for k in args.nemesis})
    faults = schedule(args.seed, args.time, kinds, args.fault_interval_s, args.fault_duration_s, spus=args.spus, scs=3,
                      partitions=args.partitions) if kinds else []
    for alias, kind in aliases.items():
        if alias in args.nemesis and kind not in args.nemesis:
            extra = {"clients": False, "mode": "blackhole"} if alias == "partition-leader" else {}
            faults = [dataclasses.replace(f, target="spu:leader",
                                          params={**f.params, "partition": f.params.get("partition", 0), **extra})
                      if f.kind == kind else f for f in faults]
    nemesis = Nemesis(NemesisView(system))
    tasks = [asyncio.ensure_future(r.producer()) for _ in range(args.producers)]
    tasks += [asyncio.ensure_future(r.consumer(k)) for k in range(args.partitions)]
    tasks.append(asyncio.ensure_future(r.register()))
    tasks.append(asyncio.ensure_future(_watch_leaders(system, args.partitions, r.stop)))
    # Faults are applied on this loop, in order with the workload's steps; each call is short.
    t0 = time.monotonic()
    applied: list[dict[str, Any]] = []
    pending = sorted(faults, key=lambda f: f.start_s)
    active: list[Any] = []
    while time.monotonic() - t0 < args.time:
        now = time.monotonic() - t0
        for f in [f for f in active if f.end_s <= now]:
            applied.append({"fault": f.kind, "stop": nemesis.stop(f), "t": now})
            active.remove(f)
        while pending and pending[0].start_s <= now:
            f = pending.pop(0)
            # A rolling restart takes many seconds: off this loop, so the workload runs through it.
            started = await asyncio.to_thread(nemesis.start, f) if f.kind in LONG_STARTS else nemesis.start(f)
            applied.append({"fault": f.kind, "start": started, "t": now})
            active.append(f)
        await asyncio.sleep(0.2)  # the schedule's clock tick
    for f in active:
        applied.append({"fault": f.kind, "stop": nemesis.stop(f)})
    system.heal_all()
    r.stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    for name in system.spu_names():
        system.wait_ready(name)
    await r.final_reads()
    events = rec.events()
    write_events(os.path.join(out_dir, "history.jsonl"), events)
    queue = check_queue(events)
    register = check_linearizable(r.register_ops)
    save_history(os.path.join(out_dir, "register.jsonl"), r.register_ops)
    latency_svg(_latencies(events), [(f.start_s, f.end_s, f.kind) for f in faults],
                os.path.join(out_dir, "latency.svg"))
    return {"valid": bool(queue["valid"] and register.ok), "net": args.net, "seed": args.seed, "time_s": args.time,
            "nemesis": args.nemesis, "broken": [f for f in ("unsafe_acks", "ignore_storage_id") if getattr(args, f)],
            "queue": queue,
            "register": {"valid": register.ok, "verdict": str(register.verdict), "operations": len(r.register_ops),
                         "report": register.report()[:4000]},
            "faults": applied}


def _latencies(events: list[Any]) -> list[tuple[float, float, str, str]]:
    """(time since start, latency ms, f, outcome) per completed operation, for the picture."""
    from .queue_history import pair

    return [(op.invoke_time, (op.complete_time - op.invoke_time) * 1000, op.f, op.type)
            for op in pair(events) if op.complete_time is not None]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m jepsen run", description="fault-injection run against Kolk")
    ap.add_argument("command", choices=["run"])
    ap.add_argument("--nemesis", default="kill,partition-one,pause",
                    help="comma-separated fault kinds (see jepsen/nemesis.py; 'kill-leader' and "
                         "'partition-leader' aim at partition leaders), or '' for none")
    ap.add_argument("--time", type=float, default=120.0, help="seconds of workload under faults")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--spus", type=int, default=3)
    ap.add_argument("--partitions", type=int, default=3)
    ap.add_argument("--producers", type=int, default=4)
    ap.add_argument("--out", help="report directory (default: a new one under ./jepsen-runs)")
    ap.add_argument("--unsafe-acks", action="store_true",
                    help="run the deliberately broken build (acks=all answered before the high watermark)")
    ap.add_argument("--ignore-storage-id", action="store_true",
                    help="run the deliberately broken build that loses data with a disk (storage ids "
                         "ignored, followers truncate below their high watermark; try --nemesis disk-wipe)")
    ap.add_argument("--workload", choices=["queue", "group"], default="queue",
                    help="queue (with the register workload) or group: consumer-group members as processes "
                         "(jepsen/group_workload.py; extra nemesis kinds member-kill, member-pause, "
                         "kill-coordinator, pause-coordinator, partition-coordinator)")
    ap.add_argument("--members", type=int, default=3, help="group members (--workload group)")
    ap.add_argument("--fault-interval-s", type=seconds_range, default=(5.0, 15.0), metavar="LOW,HIGH",
                    help="seconds between two fault starts, drawn from this range (default 5,15)")
    ap.add_argument("--fault-duration-s", type=seconds_range, default=(3.0, 10.0), metavar="LOW,HIGH",
                    help="seconds a fault lasts, drawn from this range (default 3,10)")
    ap.add_argument("--net", choices=NET_MODES,
                    help="netns: every node a host (network namespace) of its own, faults as per-pair packet "
                         "filters and netem; proxy: every link through a TCP proxy on loopback (default: netns "
                         "where namespaces can be made, else proxy)")
    ap.add_argument("--unsafe-assign", action="store_true",
                    help="run the deliberately broken coordinator that grants a partition before its old "
                         "owner revoked it (--workload group)")
    args = ap.parse_args(argv)
    args.nemesis = [k for k in args.nemesis.split(",") if k]
    refused = choose_net(args)
    if refused:
        print(refused, file=sys.stderr)
        return 2
    out = args.out or tempfile.mkdtemp(prefix=f"run-seed{args.seed}-", dir=_runs_dir())
    os.makedirs(out, exist_ok=True)
    broken = {IGNORE_STORAGE_ID_ENV: "1"} if args.ignore_storage_id else {}
    system = _started_system(out, args, broken)
    try:
        if args.workload == "group":
            from .group_workload import run_group
            results = run(lambda: run_group(system, args, out))
        else:
            results = run(lambda: _run(system, args, out))
    finally:
        system.close()
    results.setdefault("net", args.net)
    write_results(out, results)
    if args.workload == "group":
        print(f"{'VALID' if results['valid'] else 'INVALID'} ({args.net} mode): "
              f"{json.dumps(results['groups']['counts'])}; "
              f"report in {out}")
        return 0 if results["valid"] else 1
    q = results["queue"]["counts"]
    print(f"{'VALID' if results['valid'] else 'INVALID'} ({args.net} mode): {json.dumps(q)}; register linearizable: "
          f"{results['register']['valid']}; report in {out}")
    return 0 if results["valid"] else 1


def _started_system(out: str, args: argparse.Namespace, broken: dict[str, str]) -> System:
    """The cluster, started. Its ports come from the OS (bind to port 0, then close), and an
    outgoing connection may take one before the node binds it: a node that then cannot listen
    ("address already in use") makes the harness start a fresh cluster on new ports, at most
    ``START_ATTEMPTS`` times."""
    for attempt in range(1, START_ATTEMPTS + 1):
        root = os.path.join(out, "cluster" if attempt == 1 else f"cluster-{attempt}")
        system_class = System
        if args.net == "netns":
            from .netns_system import NetnsSystem as system_class  # type: ignore[assignment]
        system = system_class(root, spus=args.spus, sc_env=broken,
                              spu_env={**broken, **({UNSAFE_ACKS_ENV: "1"} if args.unsafe_acks else {}),
                                       **({UNSAFE_ASSIGN_ENV: "1"} if args.unsafe_assign else {})})
        try:
            system.start_all()
            return system
        except AssertionError:
            taken = "address already in use" in system.logs()
            system.close()
            if not taken or attempt == START_ATTEMPTS:
                raise
            print("a port chosen for the cluster was taken before its node bound it; starting again on new ports",
                  file=sys.stderr)
    raise AssertionError("unreachable")


def seconds_range(text: str) -> tuple[float, float]:
    """``LOW,HIGH`` seconds, 0 < LOW <= HIGH <= 3600."""
    try:
        lo, hi = (float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH in seconds, got {text!r}") from None
    if not 0 < lo <= hi <= 3600:
        raise argparse.ArgumentTypeError(f"need 0 < LOW <= HIGH <= 3600, got {text!r}")
    return lo, hi


def choose_net(args: argparse.Namespace) -> str | None:
    """Settle ``args.net``: netns when asked, or by default where namespaces can be made (else
    proxy, saying why in one line). Returns the one-line refusal when the run cannot go on: netns
    asked where it cannot be had, or a fault kind that needs netns mode in proxy mode."""
    from .netns import netns_unavailable

    why = netns_unavailable()
    if args.net is None:
        args.net = "netns" if why is None else "proxy"
        if why is not None:
            print(f"proxy mode: network namespaces are unavailable ({why})", file=sys.stderr)
    elif args.net == "netns" and why is not None:
        return f"--net netns: network namespaces are unavailable ({why})"
    needs = sorted(set(args.nemesis) & NETNS_KINDS)
    if args.net == "proxy" and needs:
        return f"fault kinds {needs} need --net netns (a host per node); this run is in proxy mode"
    return None


def _runs_dir() -> str:
    d = os.path.join(os.getcwd(), "jepsen-runs")
    os.makedirs(d, exist_ok=True)
    return d
