"""A plain producer and a plain consumer beside hostile SmartModules, in their own process.

The probe measures what issue 18 promises other users of an SPU: while a slow or hostile
module runs, produce acknowledgements and reads never stop for long, the SC never sees the
SPU go away, and no partition changes leader epoch. It runs as a separate process (``python
tests/isolation_probe.py ...``) so that nothing the test does (building modules, reading six
streams, waiting on a CLI) can hold its event loop or the GIL and be counted as a gap.

* producer: one record at a time with ``acks=leader``, the next sent when the last is
  acknowledged; the gap is the time between consecutive acknowledgements;
* consumer: a stream on the same partition; the gap is the time between consecutive pushes
  with records (each acknowledged record arrives in one, so reads stop only if the SPU does);
* SC poller: every ``POLL_S``, the SPU's object (``status.alive``) and the partition's epoch.

Protocol with the test (:class:`IsolationProbe`): the probe prints ``ready`` once it has seen
``WARM_ACKS`` acknowledgements and reads, then runs until its stdin closes and prints one
JSON line (:class:`ProbeReport`). Every client call has a deadline (``CALL_TIMEOUT_S``) longer
than any stall the tests allow, so a stall is measured as a gap, not lost as an error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

POLL_S = 0.1            # how often the SC is asked about the SPU and the partition
WARM_ACKS = 20          # acknowledgements and reads seen before the probe says ready
CALL_TIMEOUT_S = 60.0   # a client call's deadline: longer than any stall, so stalls show as gaps
READY_TIMEOUT_S = 30.0  # the test's wait for ``ready``
REPORT_TIMEOUT_S = 30.0  # the test's wait for the report after closing stdin
ERRORS_KEPT = 20        # errors kept in the report (the count is exact)


@dataclass
class ProbeReport:
    """What the probe saw between ``ready`` and the end of its stdin (times in seconds)."""

    acks: int
    reads: int
    max_ack_gap_s: float
    max_read_gap_s: float
    spu_down_seen: list[str]          # each poll that found the SPU not alive, or unreadable
    epochs: list[int]                 # every leader epoch of the partition seen, in order of first sight
    leaders: list[int]
    errors: list[str] = field(default_factory=list)
    error_count: int = 0

    def summary(self) -> str:
        return (f"{self.acks} acks (longest gap {self.max_ack_gap_s * 1000:.0f} ms), {self.reads} reads "
                f"(longest gap {self.max_read_gap_s * 1000:.0f} ms), epochs {self.epochs}, leaders {self.leaders}, "
                f"SPU down {len(self.spu_down_seen)} times, {self.error_count} errors {self.errors[:3]}")


class _Gaps:
    def __init__(self) -> None:
        self.count = 0
        self.last: float | None = None
        self.max_gap = 0.0
        self.measuring = False

    def tick(self) -> None:
        now = time.monotonic()
        if self.measuring and self.last is not None:
            self.max_gap = max(self.max_gap, now - self.last)
        self.last = now
        self.count += 1


async def _probe(sc: list[str], topic: str, spu_id: int) -> None:
    from kolk.client.client import AsyncClient
    from kolk.client.consumer import Offset

    client = AsyncClient(sc, timeout_s=CALL_TIMEOUT_S)
    acks, reads = _Gaps(), _Gaps()
    down: list[str] = []
    epochs: list[int] = []
    leaders: list[int] = []
    errors: list[str] = []
    error_count = 0

    def error(where: str, e: BaseException) -> None:
        nonlocal error_count
        error_count += 1
        if len(errors) < ERRORS_KEPT:
            errors.append(f"{where}: {type(e).__name__}: {e}")

    async def produce() -> None:
        producer = client.producer(topic, acks="leader", linger_ms=0, request_timeout_ms=int(CALL_TIMEOUT_S * 1000),
                                   delivery_timeout_ms=int(CALL_TIMEOUT_S * 2000))
        i = 0
        while True:
            try:
                await (await producer.send(b"probe-%d" % i))
                acks.tick()
            except Exception as e:  # noqa: BLE001 - counted and reported, the probe goes on
                error("produce", e)
            i += 1

    async def consume() -> None:
        consumer = client.consumer(topic, start=Offset.end())
        try:
            async for batch in consumer.batches():
                if batch:
                    reads.tick()
        except Exception as e:  # noqa: BLE001
            error("consume", e)

    async def poll() -> None:
        while True:
            try:
                spu = await client.admin.get_object("spu", str(spu_id))
                if spu is None or not spu["status"].get("alive"):
                    down.append(f"{time.time():.3f}: {spu and spu['status']}")
                for p in await client.admin.list_objects("partition"):
                    if p["spec"].get("topic") == topic:
                        st = p["status"]
                        if st.get("epoch") not in epochs:
                            epochs.append(st.get("epoch"))
                        if st.get("leader") not in leaders:
                            leaders.append(st.get("leader"))
            except Exception as e:  # noqa: BLE001
                down.append(f"{time.time():.3f}: the SC did not answer: {e}")
            await asyncio.sleep(POLL_S)  # the polling period

    loop = asyncio.get_running_loop()
    stdin_closed = asyncio.Event()
    loop.add_reader(sys.stdin.fileno(), lambda: sys.stdin.buffer.read1(4096) or stdin_closed.set())
    tasks = [asyncio.ensure_future(t()) for t in (produce, consume, poll)]
    try:
        while acks.count < WARM_ACKS or reads.count < WARM_ACKS:
            if stdin_closed.is_set():
                return
            await asyncio.sleep(0.01)  # polling the warm-up counters
        acks.measuring = reads.measuring = True
        down.clear()
        print("ready", flush=True)
        await stdin_closed.wait()
        acks.tick()  # an ack or read still missing at the end counts as a gap up to now
        reads.tick()
        report = ProbeReport(acks.count, reads.count, acks.max_gap, reads.max_gap, down, epochs, leaders,
                             errors, error_count)
        print(json.dumps(report.__dict__), flush=True)
    finally:
        for t in tasks:
            t.cancel()
        await client.close()


class IsolationProbe:
    """Start the probe process on ``topic`` (led by SPU ``spu_id``), wait for it to be warm;
    ``await stop()`` ends it and returns its :class:`ProbeReport`. ``kill()`` (idempotent)
    stops the process by its pid; use it in a ``finally``."""

    def __init__(self, sc_addresses: list[str], topic: str, spu_id: int = 1) -> None:
        self.args = [sys.executable, os.path.abspath(__file__), "--sc", ",".join(sc_addresses), "--topic", topic,
                     "--spu-id", str(spu_id)]
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> "IsolationProbe":
        from dataplane_cluster import _die_with_parent

        self.proc = await asyncio.create_subprocess_exec(*self.args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                                         stderr=subprocess.PIPE, preexec_fn=_die_with_parent)
        assert self.proc.stdout is not None
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), READY_TIMEOUT_S)
        except asyncio.TimeoutError:
            line = b""
        if line.strip() != b"ready":
            err = await self._stderr()
            raise AssertionError(f"the isolation probe did not get ready within {READY_TIMEOUT_S} s: {line!r} {err}")
        return self

    async def stop(self) -> ProbeReport:
        assert self.proc is not None and self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), REPORT_TIMEOUT_S)
        except asyncio.TimeoutError:
            line = b""
        try:
            return ProbeReport(**json.loads(line))
        except ValueError:
            raise AssertionError(f"the isolation probe gave no report: {line!r} {await self._stderr()}") from None
        finally:
            await self.kill()

    async def _stderr(self) -> str:
        await self.kill()
        assert self.proc is not None and self.proc.stderr is not None
        return (await self.proc.stderr.read()).decode(errors="replace")[-2000:]

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sc", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--spu-id", type=int, default=1)
    args = p.parse_args()
    from kolk.client.admin import run

    run(lambda: _probe(args.sc.split(","), args.topic, args.spu_id))


if __name__ == "__main__":
    main()
