"""Attacks on SmartModule isolation (issue 18) that the isolation tests do not cover.

Each test runs against a real SC and SPUs (tests/dataplane_cluster.py; the tests taking the
``cluster`` fixture share one SC and one SPU) and plays a client that tries to make a module,
or a client using one, hurt someone else. What each test found, and
the numbers measured, is in its docstring.

Synchronisation: the tests wait on what they can observe (a compile worker process under the
SC or SPU, by its /proc entry) with a deadline. One thing is not observable from outside:
that a second request has joined a compile already running. The tests give it a fixed head
start (``JOIN_S``) out of a compile of several seconds; if the second request had not joined
in time, it would simply run its own compile and the test would pass, so the head start can
make a test miss the fault, never invent one.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import sys
import time
from typing import Any

import signal

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import hostile_modules as hm  # noqa: E402
from dataplane_cluster import DataPlaneCluster, disk_log, raw_spu, release_consumer, run_async, wait_until  # noqa: E402
from kolk.client.client import AsyncClient  # noqa: E402
from kolk.client.consumer import Offset  # noqa: E402
from kolk.protocol.errors import KolkError  # noqa: E402
from kolk.segments import build_batch  # noqa: E402

CLIENT_TIMEOUT_S = 60.0   # the clients' own deadline: longer than ANSWER_S, so a hang shows as a hang
ANSWER_S = 20.0           # a request whose compile was shared must be answered within this
WORKER_SEEN_S = 20.0      # wait for a compile worker to appear
WORKERS_GONE_S = 15.0     # wait for every compile worker to be gone (no orphans, no zombies)
JOIN_S = 1.0              # head start for the second request to join the running compile (see above)
# ~3.5 s to compile here (hostile_modules.many_locals: 5k locals 0.8 s, 10k 3.5 s, 20k > 10 s);
# each test adds its own count so that its module's sha256 is new to the cluster.
SLOW_COMPILE_LOCALS = 10_000


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: Any) -> Any:
    """One SC and one SPU for the tests that take this fixture: each uses its own module
    names (distinct bytes, so nothing is already compiled) and topics, waits until no compile
    worker is left before it ends, and none kills, pauses or cuts a process."""
    c = DataPlaneCluster(str(tmp_path_factory.mktemp("attacks") / "c"), spus=1)
    try:
        yield c.start()
    finally:
        c.close()


def spec_of(wasm: bytes) -> dict[str, Any]:
    return {"wasm": base64.b64encode(wasm).decode(), "sha256": hashlib.sha256(wasm).hexdigest(), "size": len(wasm)}


def compile_workers(parent: int) -> list[tuple[int, str]]:
    """``(pid, state)`` of every compile worker whose parent is ``parent`` (state Z: a zombie)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode("utf-8", "replace")
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[1]) == parent and b"compile_worker" in cmdline:
            found.append((int(entry), fields[0]))
    return found


async def worker_started(parent: int) -> None:
    await wait_until(lambda: compile_workers(parent), WORKER_SEEN_S, f"a compile worker under pid {parent}")


async def no_workers_left(parent: int) -> None:
    await wait_until(lambda: not compile_workers(parent), WORKERS_GONE_S,
                     lambda: f"the compile workers under pid {parent} to be gone: {compile_workers(parent)}")


async def drain(client: AsyncClient, topic: str, chain: list) -> list:
    consumer = client.consumer(topic, start=Offset.beginning(), smartmodules=chain, stop_at_end=True)
    try:
        return [r async for r in consumer]
    finally:
        await release_consumer(consumer)


async def fill_one(client: AsyncClient, topic: str) -> None:
    await client.create_topic(topic, 1, 1)
    producer = client.producer(topic, acks="leader", linger_ms=0)
    await (await producer.send_all([b"one record"], partition=0))
    await producer.flush()


# --- a compile shared by two requests, whose first asker goes away -----------------------------


def test_spu_stream_sharing_a_compile_is_answered_when_the_first_asker_leaves(cluster: DataPlaneCluster) -> None:
    """Two consumers open a stream through the same module, not yet compiled on the SPU; the
    SPU compiles it once (smartmodule/compiler.py shares the compile between them). The first
    consumer's connection closes while the compile runs. The second must still get its stream
    (or a one-line error).

    Found: the compile's future is cancelled with its first asker, the second request gets
    CancelledError from the shared future, and the channel (channel_server._serve) treats it as
    its own cancellation and never answers: the consumer waits for its client timeout (60 s
    here). Any client can do this to any other client using the same module."""
    wasm = hm.many_locals(SLOW_COMPILE_LOCALS + 1)
    spu_pid = cluster.spus[1].pid

    async def attack() -> None:
        admin = cluster.client(timeout_s=CLIENT_TIMEOUT_S)
        first = cluster.client(timeout_s=CLIENT_TIMEOUT_S)
        second = cluster.client(timeout_s=CLIENT_TIMEOUT_S)
        try:
            await admin.admin.put_object("smartmodule", "slowcompile@1", spec_of(wasm), expected_version=-1)
            await fill_one(admin, "shared-in")
            leaving = asyncio.ensure_future(drain(first, "shared-in", ["slowcompile@1"]))
            await worker_started(spu_pid)
            staying = asyncio.ensure_future(drain(second, "shared-in", ["slowcompile@1"]))
            await asyncio.sleep(JOIN_S)  # see the module docstring: only a head start, never a false failure
            assert compile_workers(spu_pid), "the compile ended before the first consumer could leave"
            await first.close()
            leaving.cancel()
            t0 = time.monotonic()
            try:
                got = await asyncio.wait_for(staying, ANSWER_S)
            except asyncio.TimeoutError:
                pytest.fail(f"the second consumer's stream was not answered within {ANSWER_S:g} s after the first "
                            "consumer (which started the shared compile) went away")
            except KolkError as e:
                assert "\n" not in str(e) and e.code, repr(e)
                got = None
            print(f"\nsecond stream answered {time.monotonic() - t0:.1f} s after the first left: {got!r:.80}")
            await no_workers_left(spu_pid)
        finally:
            for c in (admin, first, second):
                await c.close()
    run_async(attack)


def test_sc_upload_sharing_a_compile_is_answered_when_the_first_uploader_leaves(cluster: DataPlaneCluster) -> None:
    """Two clients upload the same bytes (under two names) at once; the SC validates them in
    one shared compile. The first client's connection closes while it runs. The second
    upload must still be answered (stored, or refused with a one-line error).

    Found: as on the SPU, the shared compile is cancelled with the first uploader and the
    second ``putObject`` is never answered (it waits for its client timeout)."""
    wasm = hm.many_locals(SLOW_COMPILE_LOCALS + 2)
    sc_pid = cluster.sc.nodes[1].proc.pid

    async def attack() -> None:
        first = cluster.client(timeout_s=CLIENT_TIMEOUT_S)
        second = cluster.client(timeout_s=CLIENT_TIMEOUT_S)
        try:
            leaving = asyncio.ensure_future(first.admin.put_object("smartmodule", "sharedA@1", spec_of(wasm),
                                                                   expected_version=-1))
            await worker_started(sc_pid)
            staying = asyncio.ensure_future(second.admin.put_object("smartmodule", "sharedB@1", spec_of(wasm),
                                                                    expected_version=-1))
            await asyncio.sleep(JOIN_S)  # see the module docstring: only a head start, never a false failure
            assert compile_workers(sc_pid), "the compile ended before the first uploader could leave"
            await first.close()
            leaving.cancel()
            t0 = time.monotonic()
            try:
                version = await asyncio.wait_for(staying, ANSWER_S)
            except asyncio.TimeoutError:
                pytest.fail(f"the second upload was not answered within {ANSWER_S:g} s after the first uploader "
                            "(which started the shared compile) went away")
            except KolkError as e:
                assert "\n" not in str(e) and e.code, repr(e)
                version = None
            print(f"\nsecond upload answered {time.monotonic() - t0:.1f} s after the first left: {version!r}")
            await no_workers_left(sc_pid)
        finally:
            for c in (first, second):
                await c.close()
    run_async(attack)


# --- one client holding the SC's compile queue ---------------------------------------------------

QUEUE_FLOOD = 17  # the SC compiles one module at a time with 16 waiting (smartmodule/compiler.py)
SLOW_QUEUE_LOCALS = 20_000  # each of these hits the 10 s compile time limit (measured: 10.0 s)


def test_one_client_cannot_hold_the_sc_compile_queue_against_others(cluster: DataPlaneCluster) -> None:
    """One client uploads 17 distinct modules that each compile until the 10 s limit; while
    they wait, another client, from another network (so another identity: anonymous@127.0.1.0/24),
    uploads a small, valid filter. The second client's upload must be stored after at most the
    compile that is running, not refused.

    Found: the SC's compile queue (one running, 16 waiting) was global, first come first
    served: the small upload was refused at once with ``overloaded`` for as long as the flooder
    kept 17 uploads in flight. Now each identity may have 5 compiles in flight (1 running and 4
    waiting), the rest of the flood is refused at once, and waiting identities take turns."""
    sc_pid = cluster.sc.nodes[1].proc.pid
    flood = [hm.many_locals(SLOW_QUEUE_LOCALS + i) for i in range(QUEUE_FLOOD)]
    good = hm.good_filter()

    def victim_upload() -> int:
        """The victim's upload, from 127.0.1.1, on its own loop and thread."""
        async def go() -> int:
            loop = asyncio.get_running_loop()
            connect = loop.create_connection
            loop.create_connection = lambda *a, **kw: connect(*a, local_addr=("127.0.1.1", 0), **kw)  # type: ignore
            victim = cluster.client(timeout_s=CLIENT_TIMEOUT_S)
            try:
                return await asyncio.wait_for(
                    victim.admin.put_object("smartmodule", "victim@1", spec_of(good), expected_version=-1), ANSWER_S)
            finally:
                await victim.close()
        return asyncio.run(go())

    async def attack() -> None:
        flooder = cluster.client(timeout_s=CLIENT_TIMEOUT_S * 4)
        uploads: list[asyncio.Future] = []
        try:
            uploads = [asyncio.ensure_future(flooder.admin.put_object("smartmodule", f"flood{i}@1", spec_of(w),
                                                                      expected_version=-1))
                       for i, w in enumerate(flood)]
            await worker_started(sc_pid)
            # The SC refuses what is past the flooder's share at once: wait for those answers.
            deadline = time.monotonic() + ANSWER_S
            while sum(u.done() for u in uploads) < QUEUE_FLOOD - 5:
                assert time.monotonic() < deadline, [u for u in uploads if u.done()]
                await asyncio.sleep(0.05)  # polling interval
            refused = [u for u in uploads if u.done()]
            assert len(refused) == QUEUE_FLOOD - 5, refused
            for u in refused:
                assert isinstance(u.exception(), KolkError) and u.exception().code == "overloaded" and \
                    "modules of anonymous@127.0.0.0/24" in str(u.exception()), u.exception()
            try:
                version = await asyncio.to_thread(victim_upload)
            except KolkError as e:
                pytest.fail(f"another client's small, valid upload was refused while one client's {QUEUE_FLOOD} "
                            f"slow uploads held the SC's compile queue: {e.code}: {e}")
            except asyncio.TimeoutError:
                pytest.fail(f"another client's small, valid upload waited more than {ANSWER_S:g} s behind one "
                            f"client's {QUEUE_FLOOD} slow uploads")
            assert version > 0
        finally:
            await flooder.close()
            for u in uploads:
                u.cancel()
            await asyncio.gather(*uploads, return_exceptions=True)
        await no_workers_left(sc_pid)
    run_async(attack)


# --- a produce-side chain that outlives the SPU's leadership ----------------------------------

# Replication settings of tests/test_replication.py (a leader cut off is replaced in ~2 s), and
# fuel and wall clock raised so that one legal call can run CHAIN_S.
FAST = ("--replica-lag-max-ms", "2000", "--heartbeat-interval-ms", "200", "--replica-fetch-wait-ms", "200")
# The produce's chain runs this long; the leadership moves and settles well within it (measured:
# settled 1.7-2.2 s in). No shorter than the wait for the move, so a slow move fails that wait,
# never the check that the chain is still running.
LEADER_MOVED_S = 12.0
CHAIN_S = LEADER_MOVED_S
ANSWER_DEADLINE_S = 60.0  # the produce's own deadline: a loaded machine stretches the chain 2-3x


async def _partition(client: AsyncClient, name: str) -> dict[str, Any]:
    return next(p for p in await client.admin.list_objects("partition") if p["name"] == name)


async def _in_sync(client: AsyncClient, name: str, leader_not: int) -> bool:
    rows = [r for r in await client.partition_list() if r["name"] == name]
    p = await _partition(client, name)
    return bool(rows) and p["status"]["leader"] not in (None, leader_not) and len(rows[0]["isr"]) == 2 \
        and rows[0]["lag"] == 0 and rows[0]["error"] is None


def test_produce_chain_that_outlives_leadership_does_not_write_to_a_follower(tmp_path: Any) -> None:
    """A produce request with a slow (legal) chain passes the SPU's leader check, then runs its
    chain for CHAIN_S on the pool. Meanwhile the SC moves the partition's leadership away
    (the leader's SC and replication links are cut, then healed) and the old leader becomes a
    follower in sync with the new leader. When the chain ends, the old leader must not append
    to what is now a follower's log: the produce must fail (notLeader), and the two replicas'
    logs must stay identical.

    Found: SpuHandler.produce checks leadership (and takes the epoch) before awaiting the
    chain, and _append appends with that stale epoch without checking again: before issue 18
    the chain ran synchronously, so nothing could change in between; now it runs off the loop
    for as long as the pool makes it wait. Measured: leadership moved 1.7-2.2 s in; after
    21.5 s the old leader, by then an in-sync follower, appended the record at offset 1 and
    answered ok (1, 1); the new leader then took an acks=all write at offset 1 too, and both
    replicas stayed "in sync" holding different records at offset 1 (a silent divergence:
    were the new leader lost, its committed record would be)."""
    c = DataPlaneCluster(str(tmp_path / "c"), spus=2, heartbeat_timeout_ms=1500, proxied_private=True,
                         proxied_sc=True, spu_args=FAST + ("--smartmodule-fuel", "100000000000",
                                                           "--smartmodule-wall-clock-ms", "60000"))
    slow = hm.slow_filter_taking(CHAIN_S, fuel_per_call=100_000_000_000)

    async def attack() -> None:
        client = c.client(timeout_s=CLIENT_TIMEOUT_S)
        spu = None
        try:
            await client.admin.put_object("smartmodule", "slow@1", spec_of(slow), expected_version=-1)
            await client.create_topic("t", 1, 2)
            producer = client.producer("t", acks="all", linger_ms=0)
            await (await producer.send(b"before", partition=0))
            await producer.flush()
            await wait_until(lambda: _in_sync(client, "t-0", leader_not=-1), 30, "t-0 in sync")
            old = (await _partition(client, "t-0"))["status"]["leader"]
            spu = await raw_spu(c.spus[old].address)
            env, req = spu.request("produce")
            req.topic, req.partition, req.acks, req.timeoutMs = "t", 0, "leader", 5000
            req.records = build_batch([(None, b"through-the-chain")])
            req.init("smartmodules", 1)[0].name = "slow@1"
            t0 = time.monotonic()
            answer = asyncio.ensure_future(spu.send(env, ANSWER_DEADLINE_S))
            c.proxies["private"][old].cut("blackhole")
            c.proxies["sc"][old].cut("blackhole")
            await wait_until(lambda: _leader_moved(client, old), LEADER_MOVED_S, "a new leader to be elected")
            c.proxies["private"][old].heal()
            c.proxies["sc"][old].heal()
            await wait_until(lambda: _in_sync(client, "t-0", leader_not=old), 30,
                             "the old leader to follow the new one, in sync")
            settled = time.monotonic() - t0
            assert not answer.done(), f"the chain ended after {settled:.1f} s, before the leadership settled"
            resp = await answer
            took = time.monotonic() - t0
            p = await _partition(client, "t-0")
            print(f"\nleadership moved from SPU {old} to {p['status']['leader']} (epoch {p['status'].get('epoch')}) "
                  f"{settled:.1f} s in; the produce was answered after {took:.1f} s: ok={resp.result.ok} "
                  f"{resp.result.error.code if not resp.result.ok else (resp.baseOffset, resp.lastOffset)}")
            wrote = resp.result.ok
            new = p["status"]["leader"]
            spu.close()
            spu = None
            # The new leader takes a write at the same offset; the old one must end up with its log.
            after = client.producer("t", acks="all", linger_ms=0)
            print(f"a write to the new leader: offset {(await (await after.send(b'after', partition=0))).offset}")
            await after.flush()
            try:
                # Any leader: the SC may hand the leadership back to SPU `old`, its preferred
                # replica, by now (then `leader_not=old` could only time out).
                await wait_until(lambda: _in_sync(client, "t-0", leader_not=-1), 10, "t-0 in sync again")
            except AssertionError as e:
                print(e)
            await client.close()
            for i in (1, 2):
                c.kill_spu(i, signal.SIGTERM)
            logs = {i: disk_log(c.spus[i].data_dir, "t-0") for i in (1, 2)}
            print(f"old leader's log {logs[old][0]} (HW {logs[old][1]}, LEO {logs[old][2]}); "
                  f"new leader's log {logs[new][0]} (HW {logs[new][1]}, LEO {logs[new][2]})")
            assert not wrote, (f"SPU {old} acknowledged a produce at offsets {resp.baseOffset}..{resp.lastOffset} "
                               f"after SPU {new} had taken over the partition")
            assert logs[old][0] == logs[new][0][:len(logs[old][0])], \
                f"the old leader's log diverged from the new leader's: {logs[old][0]} vs {logs[new][0]}"
        finally:
            if spu is not None:
                spu.close()
            await client.close()
    try:
        c.start()
        run_async(attack)
    finally:
        c.close()


async def _leader_moved(client: AsyncClient, old: int) -> bool:
    p = await _partition(client, "t-0")
    return p["status"]["leader"] not in (None, old)


# --- a produce-side aggregate's accumulator ----------------------------------------------------

BIG_ACC = 2 << 20  # twice ACCUMULATOR_BYTES_MAX (1 MiB), well under the 16 MiB output limit


def big_accumulator_aggregate(acc_bytes: int = BIG_ACC) -> bytes:
    """An aggregate that answers every call with an accumulator of ``acc_bytes`` (whatever its
    memory holds there) and no records, growing its memory as far as that needs."""
    from test_smartmodule_hostile import wat

    body = f"""
      (block $room (loop $grow
        (br_if $room (i32.le_u (i32.add (local.get $ptr) (i32.const {acc_bytes + 8}))
                               (i32.shl (memory.size) (i32.const 16))))
        (br_if $grow (i32.ne (memory.grow (i32.const 1)) (i32.const -1)))
        (return (i64.const -1))))
      (i32.store (local.get $ptr) (i32.const {acc_bytes}))
      (i32.store (i32.add (local.get $ptr) (i32.const {acc_bytes + 4})) (i32.const 0))
      (i64.or (i64.shl (i64.extend_i32_u (local.get $ptr)) (i64.const 32)) (i64.const {acc_bytes + 8}))"""
    return wat(body, kind="aggregate")


def test_produce_side_aggregate_cannot_keep_an_accumulator_past_the_limit(cluster: DataPlaneCluster) -> None:
    """A produce-side aggregate keeps its accumulator across the connection's requests. The
    consume side ends a stream whose accumulator passes ACCUMULATOR_BYTES_MAX (1 MiB); the
    produce side must refuse it too, with a one-line error naming the limit.

    Found: the produce path never checks it: three requests through an aggregate keeping a
    2 MiB accumulator are all answered ok. Each such chain keeps up to 16 stages x 16 MiB
    (the output limit) of accumulators in the SPU's Python heap, 16 chains a connection, and
    none of it is counted by the SmartModule memory budget (issue 18 asks for a budget covering
    "instances, chains, accumulators, the compile cache")."""
    module = big_accumulator_aggregate()

    async def attack() -> None:
        client = cluster.client(timeout_s=CLIENT_TIMEOUT_S)
        spu = None
        try:
            await client.admin.put_object("smartmodule", "bigacc@1", spec_of(module), expected_version=-1)
            await client.create_topic("t", 1, 1)
            await wait_until(lambda: _leader_known(client), 20, "t-0 to have a leader")
            spu = await raw_spu(cluster.spus[1].address)
            answers = []
            for i in range(3):
                env, req = spu.request("produce")
                req.topic, req.partition, req.acks, req.timeoutMs = "t", 0, "leader", 5000
                req.records = build_batch([(None, b"%d" % i + b"x" * 40_000)])  # input x 64 > the output
                req.init("smartmodules", 1)[0].name = "bigacc@1"
                resp = await spu.send(env, ANSWER_S)
                answers.append(resp.result.ok or f"{resp.result.error.code}: {resp.result.error.message}")
                if resp.result.ok is not True:
                    break
            print(f"\nproduce through an aggregate keeping {BIG_ACC >> 20} MiB: {answers}")
            refused = [a for a in answers if a is not True]
            assert refused, f"{len(answers)} produce requests kept a {BIG_ACC}-byte accumulator (the limit is 1 MiB)"
            assert "accumulator" in refused[0] and "\n" not in refused[0], refused[0]
        finally:
            if spu is not None:
                spu.close()
            await client.close()
    run_async(attack)


async def _leader_known(client: AsyncClient) -> bool:
    return (await _partition(client, "t-0"))["status"].get("leader") is not None
