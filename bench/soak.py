"""Soak test (`make soak`; not part of `make test` or CI): a local cluster under churn for a
while, with the memory of its servers measured.

A local cluster (1 SC, 1 SPU) runs in a temporary KOLK_HOME and is stopped by its own pids at
the end. For --minutes (default 30; fractions allowed), with bounded concurrency and paced
rates (a soak is about time, not load):

1. Connection churn. Clients (``kolk.AsyncClient``, --client-rate a second) that connect,
   produce a few records (acks=all; not idempotent: every short-lived idempotent producer
   would leave one producer id in the partition's producer-state table, which is bounded
   state by design and not a leak; ``--churn-idempotent`` puts it back) and close; and raw
   connections to the SPU and the SC (``kolk.protocol.channel_client.ClientConnection``,
   --raw-rate a second) that send a request (fetch, offsets, stream, listObjects, watch) or
   half a frame, and close before the answer, by RST or FIN. Fetches and streams read a
   topic filled before the load (4 MiB), so their answers are as large after the warm-up as
   before it.
2. Streams opened and abandoned (--stream-rate a second). Consumers that read a little and
   then: close properly; lose their connection by RST or by FIN with no CANCEL sent; stop
   reading with the window full and then lose their connection; or have their read
   cancelled and then lose it.
3. Failing SmartModules, stored as WAT compiled with ``wasmtime.wat2wasm`` (no clang): a
   filter that traps (``unreachable``) and one that loops until it runs out of fuel, run on
   consume (the stream must end with a ``smartModule`` error), and the trap on produce.
4. A steady producer (acks=all, idempotent) and consumer on their own topic: every
   acknowledged record must be read back, at its acknowledged offset.

The RSS (VmRSS) of the SC and the SPU is sampled after a warm-up (1 minute; a quarter of the
run when it is shorter than 2 minutes), once a minute (one line each, with open fds and what
was done since the last line) and at the end. Exit status 1 when a server grew by more than
--goal-mib (10) MiB, an acknowledged record was not read back, a server died, or the steady
producer had no acknowledgement for --stall-s seconds. The temporary directory (server logs)
is removed on success and kept on failure.

Some growth is expected and not a leak: the SPU's offset index keeps about 0.1 KiB per appended
batch in RocksDB's memtable until a segment roll; the report estimates that share.

Usage: python bench/soak.py [--minutes M] [--concurrency N] [--client-rate R] [--raw-rate R]
       [--stream-rate R] [--steady-rate R] [--workloads clients,raw,streams,smartmodules] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import hashlib
import itertools
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
import time
import traceback
from array import array
from typing import Any, Awaitable, Callable, NamedTuple

STEADY = "soak-steady"
FILLED = "soak-filled"  # filled once before the load: reads of it are the same size all along
FILLED_RECORDS = 4096
FILLED_VALUE_BYTES = 1024
CHURN = "soak-churn"
TRAP_MODULE = "soak-trap"
FUEL_MODULE = "soak-fuel"
OP_TIMEOUT_S = 30.0  # every churn operation ends by then (else it counts as an error)
DRAIN_TIMEOUT_S = 60.0
WORKLOADS = ("clients", "raw", "streams", "smartmodules")
ERROR_KINDS_MAX = 50  # distinct error messages kept; the rest count as "other"

# A filter whose call traps at once.
TRAP_WAT = r"""
(module
  (memory (export "memory") 2)
  (func (export "kolk_abi_version") (result i32) (i32.const 1))
  (func (export "kolk_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "filter") (param i32 i32) (result i64) unreachable))
"""

# A filter that loops until the SPU's fuel limit stops it (docs/smartmodule-abi.md: fuelExhausted).
FUEL_WAT = r"""
(module
  (memory (export "memory") 2)
  (func (export "kolk_abi_version") (result i32) (i32.const 1))
  (func (export "kolk_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "filter") (param i32 i32) (result i64) (loop $forever (br $forever)) (i64.const 0)))
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=30.0, help="how long to run (fractions allowed; default 30)")
    p.add_argument("--warmup-minutes", type=float, default=None,
                   help="default: 1, or a quarter of --minutes below 2 minutes")
    p.add_argument("--concurrency", type=int, default=8, help="churn operations at once (default 8)")
    p.add_argument("--steady-rate", type=int, default=200,
                   help="records/s of the steady producer, in 4 batches a second (default 200)")
    p.add_argument("--client-rate", type=float, default=10.0,
                   help="churn clients started per second, at most (default 10; each appends one batch)")
    p.add_argument("--raw-rate", type=float, default=100.0, help="raw connections per second, at most (default 100)")
    p.add_argument("--stream-rate", type=float, default=10.0,
                   help="consumers opened and abandoned or closed per second, at most (default 10)")
    p.add_argument("--sm-interval", type=float, default=2.0,
                   help="seconds between failing-SmartModule runs (default 2; the fuel one blocks the SPU "
                        "for about 0.2 s each time)")
    p.add_argument("--sample-s", type=float, default=60.0, help="seconds between RSS lines (default 60)")
    p.add_argument("--goal-mib", type=float, default=10.0, help="RSS growth allowed per server (default 10)")
    p.add_argument("--stall-s", type=float, default=30.0,
                   help="longest the steady producer may go without an acknowledgement (default 30)")
    p.add_argument("--churn-idempotent", action="store_true",
                   help="churn clients use idempotent producers (each leaves a producer id on the SPU)")
    p.add_argument("--workloads", default=",".join(WORKLOADS),
                   help=f"churn workloads to run beside the steady pair (default {','.join(WORKLOADS)}); "
                        "fewer to find which one a growth comes from")
    p.add_argument("--keep", action="store_true", help="keep the temporary KOLK_HOME (logs) even on success")
    p.add_argument("-v", "--verbose", action="store_true", help="log the client library's warnings")
    args = p.parse_args(argv)
    if args.minutes <= 0:
        p.error("--minutes must be > 0")
    if args.warmup_minutes is None:
        args.warmup_minutes = 1.0 if args.minutes >= 2 else args.minutes / 4
    if not 0 <= args.warmup_minutes < args.minutes:
        p.error("--warmup-minutes must be >= 0 and less than --minutes")
    if not 1 <= args.concurrency <= 256:
        p.error("--concurrency must be 1 to 256")
    args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = sorted(set(args.workloads) - set(WORKLOADS))
    if unknown:
        p.error(f"unknown workload(s) {', '.join(unknown)}; choose from {', '.join(WORKLOADS)}")
    if min(args.client_rate, args.raw_rate, args.stream_rate) <= 0 or args.sm_interval <= 0:
        p.error("--client-rate, --raw-rate, --stream-rate and --sm-interval must be > 0")
    if not 1 <= args.steady_rate <= 100_000:
        p.error("--steady-rate must be 1 to 100000")
    return args


# ---------------------------------------------------------------- /proc


class Sample(NamedTuple):
    """One server's memory (KiB, from /proc/PID/status) and open fds; None where unreadable."""

    rss: int | None = None  # VmRSS: what the goal is about
    anon: int | None = None  # RssAnon: heap and the like (a leak shows here)
    file: int | None = None  # RssFile: mapped files (libraries, RocksDB files)
    fds: int | None = None


def sample_of(pid: int) -> Sample:
    fields: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "RssAnon", "RssFile"):
                    fields[key] = int(rest.split()[0])
    except (OSError, ValueError, IndexError):
        pass
    try:
        fds: int | None = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        fds = None
    return Sample(fields.get("VmRSS"), fields.get("RssAnon"), fields.get("RssFile"), fds)


def mib(kib: int | None) -> str:
    return "-" if kib is None else f"{kib / 1024:.1f}"


# ---------------------------------------------------------------- counting


class Stats:
    """Counters and error kinds, all bounded."""

    def __init__(self) -> None:
        self.total: collections.Counter[str] = collections.Counter()
        self.since: collections.Counter[str] = collections.Counter()  # since the last printed line
        self.errors: collections.Counter[str] = collections.Counter()

    def count(self, name: str, n: int = 1) -> None:
        self.total[name] += n
        self.since[name] += n

    def error(self, where: str, e: BaseException) -> None:
        self.count("errors")
        first = (str(e).splitlines() or [""])[0][:200]
        code = getattr(e, "code", None)
        kind = f"{where}: {type(e).__name__}{f' [{code}]' if code else ''}: {first}"
        kind = re.sub(r"\d+", "N", kind)  # one kind per message, whatever the numbers in it
        if kind not in self.errors and len(self.errors) >= ERROR_KINDS_MAX:
            kind = f"{where}: other"
        self.errors[kind] += 1

    def take_since(self) -> collections.Counter[str]:
        out, self.since = self.since, collections.Counter()
        return out


class Steady:
    """The steady producer's and consumer's bookkeeping: per sequence number, the offset it
    was acknowledged at and the offset it was read at (-1: not yet). Two arrays of 8 bytes a
    record: about 6 MB for 30 minutes at 200 records/s."""

    def __init__(self) -> None:
        self.acked_at = array("q")
        self.read_at = array("q")
        self.acked = 0
        self.read = 0
        self.duplicates = 0
        self.foreign = 0  # read values that are not this producer's
        self.gaps = 0  # offsets skipped by the consumer
        self.next_offset = 0  # the consumer's next offset
        self.max_acked_offset = -1
        self.last_ack = time.monotonic()
        self.longest_pause_s = 0.0

    def _grow(self, seq: int) -> None:
        while len(self.acked_at) <= seq:
            self.acked_at.extend(array("q", [-1]) * 4096)
            self.read_at.extend(array("q", [-1]) * 4096)

    def on_ack(self, seq: int, offset: int) -> None:
        self._grow(seq)
        self.acked_at[seq] = offset
        self.acked += 1
        self.max_acked_offset = max(self.max_acked_offset, offset)

    def on_ack_batch_done(self) -> None:
        now = time.monotonic()
        self.longest_pause_s = max(self.longest_pause_s, now - self.last_ack)
        self.last_ack = now

    def on_read(self, offset: int, value: bytes | None) -> None:
        if offset > self.next_offset:
            self.gaps += 1
        self.next_offset = max(self.next_offset, offset + 1)
        if not value or not value.startswith(b"s"):
            self.foreign += 1
            return
        try:
            seq = int(value[1:])
        except ValueError:
            self.foreign += 1
            return
        self._grow(seq)
        if self.read_at[seq] != -1:
            self.duplicates += 1
            return
        self.read_at[seq] = offset
        self.read += 1

    def verify(self) -> tuple[int, int, list[str]]:
        """(lost, at another offset, examples): acknowledged records not read back, or read at
        another offset than acknowledged."""
        lost = moved = 0
        examples: list[str] = []
        for seq in range(len(self.acked_at)):
            acked = self.acked_at[seq]
            if acked == -1:
                continue
            read = self.read_at[seq]
            if read == -1:
                lost += 1
                if len(examples) < 10:
                    examples.append(f"s{seq} acknowledged at offset {acked}, never read")
            elif read != acked:
                moved += 1
                if len(examples) < 10:
                    examples.append(f"s{seq} acknowledged at offset {acked}, read at {read}")
        return lost, moved, examples


# ---------------------------------------------------------------- the soak


class Soak:
    def __init__(self, args: argparse.Namespace, profile: dict[str, Any], local_cluster: Any) -> None:
        import kolk

        self.kolk = kolk
        self.local_cluster = local_cluster
        self.args = args
        self.sc: str = profile["sc"]
        self.pids: dict[str, int] = dict(profile["pids"])
        self.spu_address = ""
        self.stats = Stats()
        self.steady = Steady()
        self.stop = asyncio.Event()
        self.slots = asyncio.Semaphore(args.concurrency)
        self.dead: dict[str, float] = {}  # server -> minute it was found dead
        self.baseline: dict[str, Sample] = {}
        self.final: dict[str, Sample] = {}
        self.peak: dict[str, int] = {}
        self.t0 = time.monotonic()
        self.churn_acked = 0
        self.batches = 0  # batches appended (about: a churn client's records make one batch)
        self.batches_at_baseline = 0

    # ---- helpers

    def minute(self) -> float:
        return (time.monotonic() - self.t0) / 60

    def say(self, text: str) -> None:
        print(f"[{self.minute():6.2f} min] {text}", flush=True)

    async def pause(self, seconds: float) -> None:
        """Sleep, or return early once the soak stops."""
        try:
            await asyncio.wait_for(self.stop.wait(), seconds)
        except TimeoutError:
            pass

    def client(self) -> Any:
        return self.kolk.AsyncClient(self.sc, timeout_s=10.0)

    async def op(self, name: str, fn: Callable[[], Awaitable[None]]) -> None:
        """One churn operation: within a concurrency slot and a deadline; errors counted."""
        async with self.slots:
            try:
                async with asyncio.timeout(OP_TIMEOUT_S):
                    await fn()
                self.stats.count(name)
            except Exception as e:  # noqa: BLE001 - counted and reported at the end
                self.stats.error(name, e)

    async def worker(self, name: str, fns: list[Callable[[], Awaitable[None]]], period_s: float) -> None:
        """Run ``fns`` in turn until the soak stops, one every ``period_s`` at most."""
        next_start = time.monotonic()
        for fn in itertools.cycle(fns):
            if self.stop.is_set():
                return
            await self.op(name, fn)
            next_start = max(next_start + period_s, time.monotonic() - period_s)  # no bursts after a slow op
            await self.pause(next_start - time.monotonic())

    # ---- setup

    async def setup(self) -> None:
        import wasmtime

        client = self.client()
        try:
            await client.create_topic(STEADY, 1, 1)
            await client.create_topic(CHURN, 1, 1)
            await client.create_topic(FILLED, 1, 1)
            for name, text in ((TRAP_MODULE, TRAP_WAT), (FUEL_MODULE, FUEL_WAT)):
                wasm = wasmtime.wat2wasm(text)
                spec = {"wasm": base64.b64encode(wasm).decode(), "sha256": hashlib.sha256(wasm).hexdigest(),
                        "size": len(wasm), "kind": "filter", "init": False, "source": f"{name}.wat",
                        "created_by": "bench/soak.py"}
                await client.admin.put_object("smartmodule", f"{name}@1", spec, expected_version=-1)
            spus = await client.admin.list_objects("spu")
            self.spu_address = spus[0]["spec"]["public_address"]
            deadline = time.monotonic() + 30
            for topic in (STEADY, CHURN, FILLED):  # each leads somewhere before the load starts
                while True:
                    try:
                        await client.offsets(topic, 0)
                        break
                    except self.kolk.KolkError:
                        if time.monotonic() > deadline:
                            raise
                        await asyncio.sleep(0.2)
            producer = client.producer(FILLED, acks="all", linger_ms=5)
            sent = await producer.send_all([b"f" * FILLED_VALUE_BYTES] * FILLED_RECORDS, partition=0)
            await sent
            await producer.close()
        finally:
            await client.close()

    # ---- 1. connection churn

    async def client_churn(self) -> None:
        client = self.client()
        try:
            producer = client.producer(CHURN, acks="all", linger_ms=1,
                                       idempotent=self.args.churn_idempotent)
            futures = [await producer.send(b"churn-%d" % i) for i in range(5)]
            await producer.close()
            for f in futures:
                await f
            self.churn_acked += len(futures)
            self.batches += 1
        finally:
            await client.close()

    async def _raw(self, service: Any, address: str, send: Callable[[Any], Awaitable[Any]], fin: bool) -> None:
        """Open a raw connection, start ``send`` on it, close before the answer (RST, or FIN)."""
        from kolk.protocol.channel_client import ClientConnection

        conn = await ClientConnection.open(service, address, 5)
        task = asyncio.ensure_future(send(conn))
        await asyncio.sleep(0)  # the request is written; its answer is not in yet
        if fin:
            conn.transport.close()
        else:
            conn.close()
        try:
            await asyncio.wait_for(task, 10)
        except Exception:  # noqa: BLE001 - ConnectionLost is the point (or an answer that beat the close)
            pass

    def raw_ops(self) -> list[Callable[[], Awaitable[None]]]:
        from kolk.protocol.channel import SC, SPU
        from kolk.protocol.framing import Kind, encode_frame
        from kolk.protocol.messages import encode

        spu, sc = self.spu_address, self.sc

        async def fetch(conn: Any) -> Any:
            return await conn.call("fetch", 5, topic=FILLED, partition=0, offset=0, maxBytes=1 << 20, isolation=0)

        async def offsets(conn: Any) -> Any:
            return await conn.call("offsets", 5, topic=STEADY, partition=0)

        async def stream(conn: Any) -> Any:
            return await conn.open_stream("stream", 64 << 10, 5, topic=FILLED, partition=0, offset=0, isolation=0,
                                          smartmodules=[])

        async def list_objects(conn: Any) -> Any:
            return await conn.call("listObjects", 5, kind="partition", stale=True)

        async def watch(conn: Any) -> Any:
            return await conn.open_stream("watch", 64 << 10, 5, fromVersion=0)

        async def half_frame(conn: Any) -> None:
            env, member = conn.request("offsets")
            member.topic, member.partition = STEADY, 0
            frame = encode_frame(Kind.REQUEST, 1, encode(env))
            conn.transport.write(frame[:len(frame) // 2])

        ops = []
        for service, address, send in ((SPU, spu, fetch), (SPU, spu, offsets), (SPU, spu, stream),
                                       (SPU, spu, half_frame), (SC, sc, list_objects), (SC, sc, watch)):
            for fin in (False, True):
                ops.append(lambda service=service, address=address, send=send, fin=fin:
                           self._raw(service, address, send, fin))
        return ops

    # ---- 2. streams opened and abandoned

    async def _abandon(self, how: str) -> None:
        client = self.client()
        try:
            # The stalled one reads the filled topic from the beginning: 4 MiB, more than its window.
            topic = FILLED if how == "stalled" else STEADY
            start = self.kolk.Offset.beginning() if how == "stalled" else self.kolk.Offset.from_end(200)
            consumer = client.consumer(topic, start=start, window_bytes=64 << 10)
            await consumer.poll(2.0)  # read a little
            if how == "close":
                await consumer.close()
                return
            if how == "stalled":
                await asyncio.sleep(0.5)  # the SPU fills the window and waits for credit
            if how == "cancelled":
                reader = asyncio.ensure_future(consumer.poll(30.0))
                await asyncio.sleep(0.05)
                reader.cancel()
                try:
                    await reader
                except asyncio.CancelledError:
                    pass
            conn, _ = await client.leader_spu(topic, 0)
            # Drop the connection with the stream open and no CANCEL: as if the process died.
            if how == "fin":
                conn.transport.close()
            else:
                conn.close()
            await consumer.close()  # local clean-up only: the connection is gone already
        finally:
            await client.close()

    def abandon_ops(self) -> list[Callable[[], Awaitable[None]]]:
        return [lambda how=how: self._abandon(how) for how in ("rst", "close", "fin", "stalled", "rst", "cancelled")]

    # ---- 3. failing SmartModules

    async def _failing_consume(self, module: str) -> None:
        client = self.client()
        consumer = client.consumer(FILLED, start=self.kolk.Offset.from_end(20), smartmodules=[module])
        try:
            while True:
                try:
                    records = await consumer.poll(5.0)
                except self.kolk.KolkError as e:
                    if e.code != "smartModule":
                        raise
                    self.stats.count(f"smartModule error ({module})")
                    return
                if records:
                    raise RuntimeError(f"{module} let {len(records)} records through; it should fail")
        finally:
            await consumer.close()
            await client.close()

    async def _failing_produce(self) -> None:
        client = self.client()
        try:
            producer = client.producer(CHURN, acks="all", linger_ms=0, idempotent=False, retries=0,
                                       smartmodules=[TRAP_MODULE])
            try:
                future = await producer.send(b"never stored")
                await future
            except self.kolk.KolkError as e:
                if e.code != "smartModule":
                    raise
                self.stats.count(f"smartModule error ({TRAP_MODULE}, produce)")
                return
            finally:
                await producer.close()
            raise RuntimeError(f"{TRAP_MODULE} on produce let a record through; it should fail")
        finally:
            await client.close()

    def smartmodule_ops(self) -> list[Callable[[], Awaitable[None]]]:
        return [lambda: self._failing_consume(TRAP_MODULE), lambda: self._failing_consume(FUEL_MODULE),
                lambda: self._failing_consume(TRAP_MODULE), self._failing_produce]

    # ---- 4. steady producer and consumer

    async def steady_producer(self) -> None:
        per_tick = max(1, self.args.steady_rate // 4)  # 4 batches a second
        tick_s = per_tick / self.args.steady_rate
        client = self.client()
        seq = 0
        try:
            producer = client.producer(STEADY, acks="all", linger_ms=2)
            next_tick = time.monotonic()
            while not self.stop.is_set():
                first = seq
                seq += per_tick
                try:
                    async with asyncio.timeout(60):
                        sent = await producer.send_all([b"s%d" % s for s in range(first, seq)], partition=0)
                        metas = await sent
                    for i, meta in enumerate(metas):
                        self.steady.on_ack(first + i, meta.offset)
                    self.steady.on_ack_batch_done()
                    self.batches += 1
                except Exception as e:  # noqa: BLE001 - counted; those records count as not acknowledged
                    self.stats.error("steady produce", e)
                    if isinstance(e, TimeoutError):  # a batch stuck in the producer: start a fresh one
                        producer = client.producer(STEADY, acks="all", linger_ms=2)
                next_tick += tick_s
                await self.pause(max(0.0, next_tick - time.monotonic()))
                next_tick = max(next_tick, time.monotonic() - 1.0)  # no catch-up bursts after a stall
            try:
                async with asyncio.timeout(30):
                    await producer.close()
            except Exception as e:  # noqa: BLE001
                self.stats.error("steady produce", e)
        finally:
            await client.close()

    async def steady_consumer(self, drained: asyncio.Event) -> None:
        """Read the steady topic until the soak stops and everything acknowledged was read."""
        client = self.client()
        consumer = client.consumer(STEADY, start=self.kolk.Offset.beginning())
        try:
            while True:
                if self.stop.is_set() and self.steady.next_offset > self.steady.max_acked_offset:
                    drained.set()
                    return
                try:
                    records = await consumer.poll(1.0)
                except Exception as e:  # noqa: BLE001 - counted; resume where it stood
                    self.stats.error("steady consume", e)
                    await consumer.close()
                    await asyncio.sleep(0.5)
                    consumer = client.consumer(STEADY, start=self.kolk.Offset.absolute(self.steady.next_offset))
                    continue
                for r in records:
                    self.steady.on_read(r.offset, r.value)
        finally:
            await consumer.close()
            await client.close()

    # ---- sampling

    def sample(self) -> dict[str, Sample]:
        out = {}
        for name, pid in self.pids.items():
            out[name] = sample_of(pid)
            if out[name].rss is not None:
                self.peak[name] = max(self.peak.get(name, 0), out[name].rss)
        return out

    def check_alive(self) -> None:
        for name, pid in self.pids.items():
            if name not in self.dead and not self.local_cluster.process_alive(pid):
                self.dead[name] = self.minute()
                self.say(f"SERVER DIED: {label(name)} (pid {pid}) is not running")

    def line(self, what: str, sample: dict[str, Sample]) -> None:
        since = self.stats.take_since()
        servers = "  ".join(f"{label(n)} {mib(x.rss)} MiB (anon {mib(x.anon)}, file {mib(x.file)}), "
                            f"{x.fds if x.fds is not None else '-'} fds" for n, x in sample.items())
        done = ", ".join(f"{k} {v}" for k, v in sorted(since.items()))
        s = self.steady
        self.say(f"{what}: {servers} | steady acked {s.acked} read {s.read} | since last line: {done or 'nothing'}")

    async def sampler(self) -> None:
        warmup_s = self.args.warmup_minutes * 60
        total_s = self.args.minutes * 60
        next_line = self.args.sample_s
        took_baseline = False
        while True:
            await asyncio.sleep(1.0)
            elapsed = time.monotonic() - self.t0
            self.check_alive()
            if self.dead:
                self.final = self.sample()
                self.line("a server died; stopping", self.final)
                break
            if time.monotonic() - self.steady.last_ack > self.args.stall_s:
                self.steady.longest_pause_s = max(self.steady.longest_pause_s,
                                                  time.monotonic() - self.steady.last_ack)
            if not took_baseline and elapsed >= warmup_s:
                took_baseline = True
                self.baseline = self.sample()
                self.batches_at_baseline = self.batches
                self.line("after warm-up (baseline)", self.baseline)
                while next_line <= elapsed:  # the baseline line stands for this one
                    next_line += self.args.sample_s
            if elapsed >= total_s:
                self.final = self.sample()
                self.line("end", self.final)
                break
            if elapsed >= next_line:
                next_line += self.args.sample_s
                self.line("sample", self.sample())
        self.stop.set()

    # ---- the whole run

    async def run(self) -> int:
        self.say(f"cluster up: SC {self.sc} (pid {self.pids['sc']}), "
                 + ", ".join(f"{label(n)} pid {p}" for n, p in self.pids.items() if n != "sc"))
        await self.setup()
        self.say(f"topics {STEADY}, {CHURN}, {FILLED} ({FILLED_RECORDS} records of {FILLED_VALUE_BYTES} B); "
                 f"SmartModules {TRAP_MODULE}@1 (trap), {FUEL_MODULE}@1 (fuel); SPU at {self.spu_address}; "
                 f"load for {self.args.minutes:g} min, warm-up {self.args.warmup_minutes:g} min, "
                 f"concurrency {self.args.concurrency}, workloads {','.join(self.args.workloads) or 'none'} "
                 "beside the steady pair")
        self.t0 = time.monotonic()
        drained = asyncio.Event()
        c = self.args.concurrency
        loops = [self.steady_producer(), self.steady_consumer(drained), self.sampler()]
        w, a = self.args.workloads, self.args
        n = max(1, c // 4)  # workers per churn workload; each runs one operation at a time
        if "clients" in w:
            loops += [self.worker("client churn", [self.client_churn], n / a.client_rate) for _ in range(n)]
        if "raw" in w:
            loops += [self.worker("raw connection", self.raw_ops(), n / a.raw_rate) for _ in range(n)]
        if "streams" in w:
            loops += [self.worker("abandoned/closed stream", self.abandon_ops(), n / a.stream_rate) for _ in range(n)]
        if "smartmodules" in w:
            loops += [self.worker("failing smartmodule", self.smartmodule_ops(), a.sm_interval)]
        tasks = [asyncio.ensure_future(x) for x in loops]
        consumer_task = tasks[1]
        try:
            await self.stop.wait()
            # Workers end within OP_TIMEOUT_S; the consumer once it has read everything acknowledged.
            others = [t for t in tasks if t is not consumer_task]
            done, pending = await asyncio.wait(others, timeout=OP_TIMEOUT_S + 15)
            for t in pending:
                self.say(f"a load task did not stop in time: {t!r:.200}")
            try:
                await asyncio.wait_for(drained.wait(), DRAIN_TIMEOUT_S)
            except TimeoutError:
                self.say(f"the steady consumer did not catch up within {DRAIN_TIMEOUT_S:.0f} s "
                         f"(next offset {self.steady.next_offset}, last acknowledged {self.steady.max_acked_offset})")
            for t in done:
                if not t.cancelled() and t.exception() is not None:
                    self.stats.error("load task", t.exception())
            if not self.dead:
                self.check_alive()
            after = self.sample()
            churn_hw = await self.churn_high_watermark()
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return self.report(after, churn_hw)

    async def churn_high_watermark(self) -> int | None:
        """The churn topic's high watermark (None if it cannot be read)."""
        client = self.client()
        try:
            async with asyncio.timeout(15):
                return (await client.offsets(CHURN, 0))[1]
        except Exception as e:  # noqa: BLE001
            self.stats.error("churn check", e)
            return None
        finally:
            await client.close()

    def report(self, after: dict[str, Sample], churn_hw: int | None) -> int:
        goal = self.args.goal_mib
        failures: list[str] = []
        print()
        print(f"Soak: {self.args.minutes:g} min, warm-up {self.args.warmup_minutes:g} min "
              f"(RSS from /proc/PID/status VmRSS)")
        header = ("server", "pid", "RSS after warm-up MiB", "RSS at end MiB", "growth MiB", "goal", "result")
        rows = []
        for name, pid in self.pids.items():
            base = self.baseline.get(name, Sample()).rss
            end = self.final.get(name, Sample()).rss
            if name in self.dead:
                growth, result = "-", "FAIL (died)"
                failures.append(f"{label(name)} died (found at {self.dead[name]:.2f} min)")
            elif base is None or end is None:
                growth, result = "-", "FAIL (no sample)"
                failures.append(f"{label(name)}: no RSS sample")
            else:
                g = (end - base) / 1024
                growth = f"{g:+.1f}"
                result = "PASS" if g <= goal else "FAIL"
                if g > goal:
                    failures.append(f"{label(name)} grew {g:.1f} MiB (goal <= {goal:g})")
            rows.append((label(name), str(pid), mib(base), mib(end), growth, f"<= {goal:g} MiB", result))
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
        print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
        print("  ".join("-" * w for w in widths))
        for r in rows:
            print("  ".join(v.ljust(w) for v, w in zip(r, widths)))
        print()
        for name in self.pids:
            b, e, a = self.baseline.get(name, Sample()), self.final.get(name, Sample()), after.get(name, Sample())
            print(f"  {label(name)}: anon RSS {mib(b.anon)} -> {mib(e.anon)} MiB, file RSS {mib(b.file)} -> "
                  f"{mib(e.file)} MiB; open fds {dash(b.fds)} after warm-up, {dash(e.fds)} at end, {dash(a.fds)} "
                  f"after the load stopped (RSS then {mib(a.rss)} MiB); peak RSS {mib(self.peak.get(name))} MiB")

        s = self.steady
        lost, moved, examples = s.verify()
        print(f"  steady: {s.acked} records acknowledged, {s.read} read back, {lost} lost, {moved} at another "
              f"offset, {s.duplicates} read twice, {s.gaps} offset gaps, {s.foreign} foreign values; longest "
              f"pause between acknowledgements {s.longest_pause_s:.2f} s")
        for e in examples:
            print(f"    {e}")
        if s.acked == 0:
            failures.append("the steady producer had no record acknowledged")
        if lost:
            failures.append(f"{lost} acknowledged records were not read back")
        if moved:
            failures.append(f"{moved} acknowledged records were read at another offset")
        if s.longest_pause_s > self.args.stall_s:
            failures.append(f"the steady producer went {s.longest_pause_s:.1f} s without an acknowledgement "
                            f"(limit {self.args.stall_s:g} s)")
        appended = self.batches - self.batches_at_baseline
        print(f"  batches appended after warm-up: about {appended}; the SPU's offset index keeps about 0.1 KiB "
              f"per batch in RocksDB's memtable until a segment roll (1 GiB) flushes it (or RocksDB's own "
              f"write-buffer limit), so about {appended * 0.1 / 1024:.1f} MiB of the SPU's growth is expected "
              "index, not a leak")
        print(f"  churn: {self.churn_acked} records acknowledged by churn clients; the churn topic's high "
              f"watermark is {churn_hw if churn_hw is not None else 'unknown'}")
        if churn_hw is not None and churn_hw < self.churn_acked:
            failures.append(f"the churn topic holds {churn_hw} records, fewer than the {self.churn_acked} acknowledged")
        print("  done: " + ", ".join(f"{k} {v}" for k, v in sorted(self.stats.total.items())))
        if self.stats.errors:
            print("  errors by kind:")
            for kind, n in self.stats.errors.most_common():
                print(f"    {n:6d}  {kind}")
        expected = {f"smartModule error ({TRAP_MODULE})", f"smartModule error ({FUEL_MODULE})"}
        if "smartmodules" not in self.args.workloads:
            expected = set()
        missing = [k for k in sorted(expected) if not self.stats.total.get(k)]
        if missing:
            print(f"  note: no {', '.join(missing)} seen")
        print()
        if failures:
            print("FAIL: " + "; ".join(failures))
            return 1
        print("PASS")
        return 0


def dash(n: int | None) -> str:
    return "-" if n is None else str(n)


def label(name: str) -> str:
    return "SC" if name == "sc" else name.replace("spu-", "SPU ")


def import_local_cluster() -> Any:
    """``kolk.cli.local_cluster`` (``kolk cluster start|stop``), wherever this version keeps it."""
    import importlib

    for name in ("kolk.cli.local_cluster", "kolk.cli.local_cluster"):
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name not in (name, name.rsplit(".", 1)[0]):
                raise  # the module exists but something it imports does not
    raise ModuleNotFoundError("no kolk.cli.local_cluster (nor kolk.cli.local_cluster) to start a local cluster with")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.verbose else logging.CRITICAL,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    home = tempfile.mkdtemp(prefix="kolk-soak-")
    os.environ["KOLK_HOME"] = home  # before kolk is imported: the local cluster lives here
    try:
        local_cluster = import_local_cluster()
    except BaseException:
        shutil.rmtree(home, ignore_errors=True)
        raise

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    status = 1
    started = False
    try:
        print(f"kolk soak: starting a local cluster (1 SC, 1 SPU) in {home}", flush=True)
        local_cluster.start(spus=1)
        started = True
        profile = local_cluster.read_profile()
        assert profile is not None and profile.get("running"), "no running profile after start"

        async def go() -> int:
            return await Soak(args, profile, local_cluster).run()
        status = asyncio.run(go())
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        status = 130
    except Exception as e:  # noqa: BLE001 - the cluster would not start or set up: say so, stop it
        traceback.print_exc()
        print(f"\nFAIL: the soak could not run: {type(e).__name__}: {e}", flush=True)
        status = 1
    finally:
        if started:
            try:
                stopped = local_cluster.stop()
                if stopped.get("killed"):
                    print(f"note: {', '.join(stopped['killed'])} did not stop on SIGTERM and were killed", flush=True)
            except Exception as e:  # noqa: BLE001 - say so; the pids are in the profile
                print(f"could not stop the local cluster: {e}; see {local_cluster.profile_path()}", file=sys.stderr)
                status = status or 1
        if status == 0 and not args.keep:
            shutil.rmtree(home, ignore_errors=True)
        else:
            print(f"kept {home} (server logs in {os.path.join(home, 'local', 'logs')})", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
