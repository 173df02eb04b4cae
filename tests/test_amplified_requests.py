"""Amplified lists against real SC and SPU processes with mutual TLS (issue 17, item 1).

A Cap'n Proto list of zero-size elements costs nothing on the wire: a ~100-byte message can
claim millions of entries. Every request member of ``ScRequest`` and ``SpuRequest`` is found
by walking the schema (tests/amplified_attack.py; a request added later is covered without
editing this file), and so is every list field reachable in it, nested lists included. For
each, requests claiming 1,000,000 and 8,000,000 entries (as zero-size structs and as a list of
VOID) are sent over the framing; each is answered ``rejected`` tooLarge naming the field and
its limit within a second. Every text and data field of every request is also sent one over
its limit, for real.

Then sustained attacks: an attacker process sends such claims in a loop on several
connections for 2 s (or floods CREDIT and CANCEL frames on open streams) while a normal
client's calls are timed, the server's RSS and CPU are sampled, and afterwards nothing was
stored (no topic, no epoch bumped, no record appended). A bad frame on an open stream closes
only its connection.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import amplified_attack  # noqa: E402
from amplified_attack import (COUNTS, ENCODINGS, ENVELOPES, MIB, TOPIC, VICTIM_TOPIC, Raw, Step,  # noqa: E402
                              claiming, client_context, field_paths, list_cases, over_limit, request_members,
                              owner_of_field, size_cases, size_limit, slots, stream_request, where)
from dataplane_cluster import DataPlaneCluster, rss_bytes, run_async, wait_until  # noqa: E402
from kolk.client.admin import AdminClient  # noqa: E402
from kolk.protocol import limits as L  # noqa: E402
from kolk.protocol.bounds import LIST_LIMITS, plan_for  # noqa: E402
from kolk.protocol.channel_client import ClientConnection  # noqa: E402
from kolk.protocol.framing import HEADER, FrameDecoder, Kind, encode_frame  # noqa: E402
from kolk.protocol.messages import decode, which  # noqa: E402
from kolk.segments import build_batch  # noqa: E402
from kolk.transport import SC, SPU, connect  # noqa: E402

ANSWER_S_MAX = amplified_attack.ANSWER_S_MAX

ATTACK_S = 2.0
BASELINE_S = 1.0
ATTACKERS = 4         # connections of the attacking process
BURST = 128           # claims pipelined per round trip on each of them (the in-flight cap is 256)
# A normal client's calls during an attack. The issue asks for 100 ms; on the shared 2-core
# machine the same calls without any attack measured p99 9-392 ms and max up to 649 ms, so the
# attack may add at most 100 ms to the median call (against the same calls just before it)
# and no call may take more than 1 s (the finding: 6.6-43 s stalls); the p99 is printed, and
# docs/protocol.md ("Limits") has the numbers.
LATENCY_ADDED_P50_S = 0.100
# The SC's normal call is a linearizable read: a Raft round on pysyncobj's thread, which needs
# the GIL the flooded serving loop holds. Under a frame flood (from a node certificate: watch
# is node-only) its median measured 120-200 ms added on a quiet 2-core machine (issue 17's
# closing note; a stale read stays within the 100 ms): bounded, not stalled.
LATENCY_ADDED_P50_SC_FRAME_FLOOD_S = 0.300
LATENCY_MAX_S = 1.0
RSS_GROWTH_MAX = 32 * MIB  # the finding: 66 -> 475 MiB
CPU_PER_CLAIM_S_MAX = 0.001  # server CPU per refused claim (the finding: 6.6-15 s for one)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One SC and one SPU with mutual TLS, leading ``amplified-0``; mallory is an ordinary
    client certificate of the cluster's CA (no policy: anyone with a certificate may call)."""
    c = DataPlaneCluster(str(tmp_path_factory.mktemp("amplified")), spus=1, tls=True, clients=("admin", "mallory"))
    try:
        c.start()
        run_async(lambda: _create_topic(c))
        yield c
    finally:
        c.close()


async def _create_topic(c: DataPlaneCluster) -> None:
    admin = AdminClient(c.sc_addresses, timeout_s=20, tls=c.tls_for("admin"))
    try:
        await admin.create_topic(TOPIC, 1, 1)
    finally:
        await admin.close()
    conn = await connect(SPU, c.spus[1].address, c.tls_for("admin"), 5)
    try:
        await wait_until(lambda: _leads(conn), 20, f"SPU 1 to lead {TOPIC}-0")
    finally:
        conn.close()


async def _leads(conn: ClientConnection) -> bool:
    return bool((await conn.call("offsets", 5, topic=TOPIC, partition=0)).result.ok)


def _address(c: DataPlaneCluster, service: str) -> str:
    return c.sc_addresses[0] if service == "SC" else c.spus[1].address


def _pid(c: DataPlaneCluster, service: str) -> int:
    if service == "SC":
        proc = c.sc.nodes[1].proc
        assert proc is not None
        return proc.pid
    return c.spus[1].pid


async def _normal_call(c: DataPlaneCluster, service: str, conn: ClientConnection) -> None:
    """What a normal client does: list the topics (SC), produce with acks=leader (SPU)."""
    if service == "SC":
        out = await conn.call("listObjects", 5, kind="topic")
    else:
        out = await conn.call("produce", 5, topic=TOPIC, partition=0, acks="leader",
                              records=build_batch([(None, b"a normal client")]), timeoutMs=5000)
    assert out.result.ok, out.result


# ---- coverage of the schema


def _case_id(case: Any) -> str:
    service, member, path = case[:3]
    return f"{service}-{where(ENVELOPES[service].schema.fields[member].schema, path)}"


LIST_CASES = list_cases()


def list_limit(member_schema: Any, path: tuple[Step, ...]) -> int:
    return LIST_LIMITS[(plan_for(owner_of_field(member_schema, path)).name, path[-1][0])]


def test_every_request_member_of_every_server_is_covered() -> None:
    """Each request member has its lists in the claims below and its text and data fields in
    the over-limit cases, or has no list, text or data field at all (nothing to amplify)."""
    listed = {(s, m) for s, m, _ in list_cases()}
    sized = {(s, m) for s, m, _, _ in size_cases()}
    for service in ENVELOPES:
        members = request_members(service)
        assert members, service
        for name, s in members:
            paths = field_paths(s)
            lists = [p for p in paths if p[-1][1] == "list"]
            assert bool(lists) == ((service, name) in listed), (service, name)
            if paths:
                assert (service, name) in sized or all(size_limit(s, p) + 4096 >= L.FRAME_BODY_BYTES_MAX
                                                       for p in paths if p[-1][1] != "list"), (service, name)
            else:
                assert all(kind not in ("text", "data", "list") for _, kind, _ in slots(s)), (service, name)
    # the fields of issue 17's finding are among them
    found = {where(ENVELOPES[s].schema.fields[m].schema, p) for s, m, p in list_cases()}
    assert {"CreateTopicRequest.config", "ProduceRequest.smartmodules", "StreamRequest.smartmodules",
            "ProduceRequest.smartmodules[0].params", "RegisterSpuRequest.lost"} <= found, found


@pytest.mark.parametrize("case", LIST_CASES, ids=[_case_id(c) for c in LIST_CASES])
def test_the_hand_made_claim_reads_as_claimed(case: tuple[str, str, tuple[Step, ...]]) -> None:
    """Three entries, small enough to read: the builder's bytes say what it means them to."""
    service, member, path = case
    env = decode(ENVELOPES[service], claiming(service, member, path, 3, "composite"))
    assert which(env) == member
    r = getattr(env, member)
    for name, kind in path[:-1]:
        r = getattr(r, name)
        if kind == "element":
            assert len(r) == 1
            r = r[0]
    name = path[-1][0]
    if str(r.schema.fields[name].proto.slot.type.list.elementType.which()) == "struct":
        assert len(getattr(r, name)) == 3
    for count in COUNTS:
        for encoding in ENCODINGS:
            assert len(claiming(service, member, path, count, encoding)) <= 256


# ---- each claim, through the real servers


@pytest.mark.parametrize("case", LIST_CASES, ids=[_case_id(c) for c in LIST_CASES])
def test_a_tiny_request_claiming_millions_of_entries_is_refused_naming_the_field(
        cluster: DataPlaneCluster, case: tuple[str, str, tuple[Step, ...]]) -> None:
    """1,000,000 and 8,000,000 entries, as zero-size structs and as VOID: each ``rejected``
    tooLarge (not retriable) naming the field and its limit, within a second of being sent;
    the same connection then serves a normal request."""
    service, member, path = case
    ms = ENVELOPES[service].schema.fields[member].schema
    field_name = where(ms, path)
    limit = list_limit(ms, path)
    ctx = client_context(cluster.pki["mallory"])

    async def body() -> None:
        raw = await Raw.open(service, _address(cluster, service), ctx)
        try:
            for count in COUNTS:
                for encoding in ENCODINGS:
                    start = time.monotonic()
                    rid = raw.send(claiming(service, member, path, count, encoding))
                    answer, error = await raw.answer(rid, 5)
                    elapsed = time.monotonic() - start
                    assert answer == "rejected", (count, encoding, answer, error)
                    assert error.code == "tooLarge" and not error.retriable, (count, encoding, error)
                    assert error.message.startswith(field_name + " "), error.message
                    assert f"the limit is {limit} entries" in error.message, error.message
                    assert elapsed < ANSWER_S_MAX, f"{field_name} x{count} ({encoding}) took {elapsed:.3f} s"
            normal = ENVELOPES[service].new_message()
            if service == "SC":
                normal.init("clusterStatus")
            else:
                o = normal.init("offsets")
                o.topic = TOPIC
            answer, out = await raw.answer(raw.send(normal.to_bytes()), 5)
            assert answer in ("clusterStatus", "offsets") and out.result.ok, (answer, out)
        finally:
            raw.close()

    run_async(body)


SIZE_CASES = size_cases()


@pytest.mark.parametrize("case", SIZE_CASES, ids=[_case_id(c) for c in SIZE_CASES])
def test_every_text_and_data_field_one_over_its_limit_is_refused(cluster: DataPlaneCluster,
                                                                  case: tuple[str, str, tuple[Step, ...], int]) -> None:
    """Sent for real (these cost their size on the wire): ``rejected`` tooLarge with the
    field, its size and its limit, in one line."""
    service, member, path, limit = case
    field_name = where(ENVELOPES[service].schema.fields[member].schema, path)
    unit = "characters" if path[-1][1].startswith("text") else "bytes"
    ctx = client_context(cluster.pki["mallory"])

    async def body() -> None:
        raw = await Raw.open(service, _address(cluster, service), ctx)
        try:
            start = time.monotonic()
            rid = raw.send(over_limit(service, member, path, limit))
            await raw.writer.drain()
            answer, error = await raw.answer(rid, 10)
            assert answer == "rejected" and error.code == "tooLarge", (answer, error)
            assert error.message == f"{field_name} has {limit + 1} {unit}, more than the limit of {limit}"
            assert time.monotonic() - start < 5 * ANSWER_S_MAX
        finally:
            raw.close()

    run_async(body)


# ---- sustained attacks


def quantile(latencies: list[float], q: float) -> float:
    s = sorted(latencies)
    return s[min(len(s) - 1, int(q * len(s)))]


def _ms(latencies: list[float]) -> str:
    return (f"{len(latencies)} calls, p50 {quantile(latencies, 0.5) * 1e3:.1f} ms, p99 "
            f"{quantile(latencies, 0.99) * 1e3:.1f} ms, max {max(latencies) * 1e3:.1f} ms")


@dataclass
class Measured:
    baseline: list[float]   # the same calls just before the attack
    latencies: list[float]  # during it
    rss_before: int
    rss_peak: int
    cpu_s: float            # the server's CPU time during the attack
    attacker: dict[str, Any]

    def quantile(self, q: float) -> float:
        return quantile(self.latencies, q)

    def summary(self) -> str:
        return (f"before: {_ms(self.baseline)}; during: {_ms(self.latencies)}; RSS {self.rss_before / MIB:.0f} -> "
                f"{self.rss_peak / MIB:.0f} MiB; server CPU {self.cpu_s:.2f} s; attacker {self.attacker}")

    def assert_served(self, added_p50_s: float = LATENCY_ADDED_P50_S) -> None:
        assert self.quantile(0.5) <= quantile(self.baseline, 0.5) + added_p50_s, self.summary()
        assert max(self.latencies) <= LATENCY_MAX_S, self.summary()
        assert self.rss_peak - self.rss_before < RSS_GROWTH_MAX, self.summary()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def under_attack(c: DataPlaneCluster, service: str, mode: str, seconds: float = ATTACK_S) -> Measured:
    """Run the attacker process against ``service`` and time a normal client's calls, one
    after another, from the moment the attacker's connections are open until it exits."""
    # The SC's only stream, watch, is for nodes: its frames come from a node certificate.
    pki = c.pki["node" if service == "SC" and mode == "frames" else "mallory"]
    pid = _pid(c, service)
    conn = await connect(SC if service == "SC" else SPU, _address(c, service), c.tls_for("admin"), 5)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, os.path.abspath(amplified_attack.__file__), "attack", service, _address(c, service),
        pki["ca"], pki["cert"], pki["key"], str(seconds), str(ATTACKERS), str(BURST), mode,
        stdout=asyncio.subprocess.PIPE)
    try:
        baseline: list[float] = []
        until = time.monotonic() + BASELINE_S
        while time.monotonic() < until:
            t = time.monotonic()
            await _normal_call(c, service, conn)
            baseline.append(time.monotonic() - t)
        rss_before = rss_bytes(pid)
        async with asyncio.timeout(30):
            started = await proc.stdout.readline()  # type: ignore[union-attr]
        assert started.strip() == b"started", started
        cpu_before = cpu_seconds(pid)
        latencies: list[float] = []
        peak = rss_before
        exited = asyncio.ensure_future(proc.wait())
        async with asyncio.timeout(seconds + 30):
            while not exited.done():
                t = time.monotonic()
                await _normal_call(c, service, conn)
                latencies.append(time.monotonic() - t)
                peak = max(peak, rss_bytes(pid))
        cpu = cpu_seconds(pid) - cpu_before
        out = await proc.stdout.read()  # type: ignore[union-attr]
        assert proc.returncode == 0, f"the attacker failed ({proc.returncode}): {out!r}"
        return Measured(baseline, latencies, rss_before, peak, cpu, json.loads(out))
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        conn.close()


@pytest.mark.parametrize("service", ["SC", "SPU"])
def test_a_server_keeps_answering_during_a_sustained_claim_attack(cluster: DataPlaneCluster, service: str) -> None:
    """4 connections send every claim against the server, 128 pipelined at a time, for 2 s; a
    normal client's calls are answered in time throughout, the server's RSS stays bounded, it
    spends little CPU per claim, every claim is refused within a second, and nothing is
    stored: no topic created, no partition's epoch or leader changed, no record appended."""
    async def body() -> None:
        before = await _stored(cluster)
        m = await under_attack(cluster, service, "claims")
        print(f"\n{service} under claims: {m.summary()}")
        after = await _stored(cluster)
        assert m.attacker["sent"] > 0 and m.attacker["refused"] == m.attacker["sent"], m.attacker
        assert not m.attacker["wrong"], m.attacker
        # the internal topics may appear meanwhile (the SC makes them once SPUs exist)
        assert set(after["topics"]) - set(before["topics"]) <= {"_audit", "_consumer_offsets"}, (before, after)
        assert VICTIM_TOPIC not in after["topics"], after
        assert {p: after["epochs"][p] for p in before["epochs"]} == before["epochs"], (before, after)
        produced = len(m.baseline) + len(m.latencies) if service == "SPU" else 0
        assert after["end"] - before["end"] == produced, (before, after)  # the normal client's records only
        m.assert_served()
        assert m.cpu_s / m.attacker["refused"] < CPU_PER_CLAIM_S_MAX, m.summary()
        assert m.attacker["slowest_s"] < ANSWER_S_MAX, f"a burst of {BURST} claims took {m.attacker['slowest_s']:.2f} s"
        assert cluster.spus[1].alive and cluster.sc.nodes[1].alive

    run_async(body)


async def _stored(c: DataPlaneCluster) -> dict[str, Any]:
    """The topics, every partition's epoch, and the log end of amplified-0."""
    admin = AdminClient(c.sc_addresses, timeout_s=10, tls=c.tls_for("admin"))
    try:
        topics = sorted(t["name"] for t in await admin.list_objects("topic"))
        epochs = {p["name"]: (p["spec"].get("epoch"), p["status"].get("epoch"), p["status"].get("leader"))
                  for p in await admin.list_objects("partition")}
    finally:
        await admin.close()
    conn = await connect(SPU, c.spus[1].address, c.tls_for("admin"), 5)
    try:
        end = (await conn.call("offsets", 5, topic=TOPIC, partition=0)).logEndOffset
    finally:
        conn.close()
    return {"topics": topics, "epochs": epochs, "end": end}


@pytest.mark.parametrize("service", ["SC", "SPU"])
def test_a_server_keeps_answering_during_a_flood_of_credit_and_cancel_frames(cluster: DataPlaneCluster,
                                                                            service: str) -> None:
    """4 connections each open a stream (SPU stream, SC watch) and send CREDIT frames of 0
    bytes for it, CREDIT frames for streams that do not exist and CANCEL frames for requests
    that do not exist, as fast as they can for 2 s; a normal client is answered in time, the
    RSS stays bounded, and the streams stay open (none of these frames is an error)."""
    async def body() -> None:
        m = await under_attack(cluster, service, "frames")
        print(f"\n{service} under frames: {m.summary()}")
        assert m.attacker["frames"] > 100_000, m.attacker
        m.assert_served(LATENCY_ADDED_P50_SC_FRAME_FLOOD_S if service == "SC" else LATENCY_ADDED_P50_S)

    run_async(body)


# ---- single bad frames on an open stream


async def _open_stream(c: DataPlaneCluster, service: str) -> tuple[Raw, int]:
    """A raw connection with one open stream (SPU stream as mallory, SC watch as a node)."""
    raw = await Raw.open(service, _address(c, service),
                         client_context(c.pki["node" if service == "SC" else "mallory"]))
    rid = raw.send(stream_request(service))
    member, resp = await raw.answer(rid, 10)
    assert resp.result.ok, (member, resp)
    return raw, rid


BAD_STREAM_FRAMES = {
    # credit past STREAM_WINDOW_BYTES_MAX in total
    "credit past the window": lambda rid: encode_frame(Kind.CREDIT, rid, b"", (1 << 32) - 1),
    # a CREDIT frame announcing a body (CREDIT and CANCEL have none)
    "credit with a body": lambda rid: HEADER.pack(4, rid, Kind.CREDIT, 0, 0, 1) + b"abcd",
    # a new request reusing the open stream's id
    "request reusing the stream's id": lambda rid: encode_frame(Kind.REQUEST, rid, b"\0" * 16),
    # a frame only servers send
    "push from a client": lambda rid: encode_frame(Kind.PUSH, rid, b"\0" * 16),
}


@pytest.mark.parametrize("service", ["SC", "SPU"])
@pytest.mark.parametrize("bad", list(BAD_STREAM_FRAMES))
def test_a_bad_frame_on_an_open_stream_closes_only_that_connection(cluster: DataPlaneCluster, service: str,
                                                                   bad: str) -> None:
    """The server closes the connection that sent it (its stream with it) and nothing else:
    a call on another connection is served at once."""
    async def body() -> None:
        conn = await connect(SC if service == "SC" else SPU, _address(cluster, service), cluster.tls_for("admin"), 5)
        raw, rid = await _open_stream(cluster, service)
        try:
            raw.writer.write(BAD_STREAM_FRAMES[bad](rid))
            assert await raw.closed_by_server(5), f"the {service} kept a connection after {bad}"
            await _normal_call(cluster, service, conn)
        finally:
            raw.close()
            conn.close()
        assert cluster.spus[1].alive and cluster.sc.nodes[1].alive

    run_async(body)


def test_the_decoder_hands_out_at_most_max_frames_and_keeps_the_rest() -> None:
    """What bounds a server's work per turn of its loop (FRAMES_PER_TURN_MAX): a 96 KiB read
    of 6,000 tiny frames comes out 64 at a time, in order, nothing lost or repeated."""
    frames = [encode_frame(Kind.CREDIT, i, b"", i) for i in range(3000)]
    frames += [encode_frame(Kind.CANCEL, 10_000 + i) for i in range(3000)]
    decoder = FrameDecoder()
    got = decoder.feed(b"".join(frames) + frames[0][:5], L.FRAMES_PER_TURN_MAX)
    assert len(got) == L.FRAMES_PER_TURN_MAX
    assert decoder.feed(b"", 0) == []
    while True:
        more = decoder.feed(b"", L.FRAMES_PER_TURN_MAX)
        assert len(more) <= L.FRAMES_PER_TURN_MAX
        got += more
        if len(more) < L.FRAMES_PER_TURN_MAX:
            break
    assert [(f.kind, f.id, f.credit) for f in got] == (
        [(Kind.CREDIT, i, i) for i in range(3000)] + [(Kind.CANCEL, 10_000 + i, 0) for i in range(3000)])
    assert decoder.buffered == 5
    assert decoder.feed(frames[0][5:]) == [got[0]]
