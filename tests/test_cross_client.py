"""The Node client (clients/node) and the Python client agree on records.

* Bytes: a batch encoded by the Node codec (records.ts) is, byte for byte, the batch
  kolk.segments encodes for the same records, timestamps and producer identity (codec none;
  a compressed batch's bytes depend on the zlib and zstd builds, so there each side decodes the
  other's batch instead). One Node process serves every hypothesis example over JSON lines.
* End to end, on one shared cluster (1 SC, 1 SPU, real processes): records produced by the
  Node client are read back by the Python client field by field, and the reverse, for keys,
  null keys and values, headers with null values, explicit timestamps, gzip and zstd.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from kolk.segments.records import build_batch, decode_records  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
NODE_DIR = ROOT / "clients" / "node"
TOOLS = ROOT / "tests" / "node"
CODEC_NUMBER = {"none": 0, "gzip": 1, "zstd": 4}
NODE_CALL_TIMEOUT_S = 60


def build_node_client() -> None:
    """`make node-setup` (npm ci once per change of the lock file), then npm run build; fails
    naming the output."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.fail("node and npm are needed (Node >= 18): apt-get install nodejs npm")
    r = subprocess.run(["make", "-s", "node-setup"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"make node-setup failed:\n{r.stdout}\n{r.stderr}"
    r = subprocess.run(["npm", "run", "build"], cwd=NODE_DIR, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"npm run build failed:\n{r.stdout}\n{r.stderr}"


class NodeLines:
    """One Node process answering JSON lines (tests/node/encode_lines.mjs)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(["node", str(TOOLS / "encode_lines.mjs")], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)

    def ask(self, request: dict) -> dict:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"the Node codec process ended: {self.proc.stderr.read() if self.proc.stderr else ''}"
        answer = json.loads(line)
        assert "error" not in answer, answer["error"]
        return answer

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()  # type: ignore[union-attr]
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def node_built() -> None:
    build_node_client()


@pytest.fixture(scope="module")
def node_codec(node_built):  # noqa: ANN001 - a fixture
    lines = NodeLines()
    try:
        yield lines
    finally:
        lines.close()


def _hex(b: bytes | None) -> str | None:
    return None if b is None else b.hex()


def _unhex(s: str | None) -> bytes | None:
    return None if s is None else bytes.fromhex(s)


_blob = st.one_of(st.none(), st.binary(max_size=40))
_header = st.tuples(st.text(max_size=6), st.one_of(st.none(), st.binary(max_size=10)))
_record = st.tuples(_blob, _blob, st.lists(_header, max_size=3), st.integers(-100_000, 100_000))
_identity = st.one_of(st.none(), st.tuples(st.integers(0, 2**63 - 1), st.integers(0, 2**15 - 1),
                                           st.integers(0, 2**31 - 1)))


def _request(records, identity, codec: str, first_ts: int) -> dict:  # noqa: ANN001
    return {
        "op": "encode", "codec": codec,
        "identity": None if identity is None else
        {"producerId": str(identity[0]), "producerEpoch": identity[1], "baseSequence": identity[2]},
        "records": [{"key": _hex(k), "value": _hex(v), "timestamp": first_ts + d,
                     "headers": [[n, _hex(hv)] for n, hv in hs]} for k, v, hs, d in records],
    }


def _python_batch(records, identity, codec: str, first_ts: int) -> bytes:  # noqa: ANN001
    ident = {} if identity is None else dict(producer_id=identity[0], producer_epoch=identity[1],
                                             base_sequence=identity[2])
    return build_batch([(k, v, tuple(hs)) for k, v, hs, _d in records],
                       timestamps=[first_ts + d for *_r, d in records], codec=CODEC_NUMBER[codec], **ident)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=st.lists(_record, min_size=1, max_size=8), identity=_identity,
       first_ts=st.integers(0, 2**42))
def test_node_batch_is_the_python_batch_byte_for_byte(node_codec, records, identity, first_ts):  # noqa: ANN001
    node = bytes.fromhex(node_codec.ask(_request(records, identity, "none", first_ts))["batch"])
    assert node == _python_batch(records, identity, "none", first_ts)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=st.lists(_record, min_size=1, max_size=8), identity=_identity,
       first_ts=st.integers(0, 2**42), codec=st.sampled_from(["gzip", "zstd"]))
def test_compressed_batches_decode_on_the_other_side(node_codec, records, identity, first_ts, codec):  # noqa: ANN001
    want = [(i, first_ts + d, k, v, tuple(hs)) for i, (k, v, hs, d) in enumerate(records)]
    node = bytes.fromhex(node_codec.ask(_request(records, identity, codec, first_ts))["batch"])
    assert node[21] & 7 == CODEC_NUMBER[codec]
    assert [tuple(r) for r in decode_records(node)] == want
    python = _python_batch(records, identity, codec, first_ts)
    got = node_codec.ask({"op": "decode", "batch": python.hex()})["records"]
    assert [(r["offset"], r["timestamp"], _unhex(r["key"]), _unhex(r["value"]),
             tuple((n, _unhex(hv)) for n, hv in r["headers"])) for r in got] == want
    # Same header and records section: only the compressed bytes may differ.
    assert node[:8] == python[:8] and node[12:17] == python[12:17] and node[23:61] == python[23:61]


# ---------------------------------------------------------------- end to end, one cluster

# Every kind of field: keys, a null key, a null value, empty bytes, headers with a null value
# and a non-ASCII name, explicit timestamps (one before the first: a negative delta), and
# values big enough that gzip and zstd have something to do. Timestamps are near now: records
# older than the topic's retention (7 days) would be deleted before they are read.
NOW_MS = int(time.time() * 1000)
RECORDS = [
    (b"k0", b"value-0" * 20, (("trace", b"t0"),), NOW_MS),
    (None, b"keyless", (), NOW_MS + 5),
    (b"tombstone", None, (("x", None),), NOW_MS + 10),
    (b"", b"", (("été", b"\x00\xff"), ("empty", b"")), NOW_MS - 10),
    (None, None, (), NOW_MS + 20),
    (b"k5", bytes(range(256)) * 4, (("a", b"1"), ("a", b"2"), ("n", None)), NOW_MS + 30),
]


def _as_line(key, value, headers, ts) -> str:  # noqa: ANN001
    return json.dumps({"key": _hex(key), "value": _hex(value), "timestamp": ts,
                       "headers": [[n, _hex(v)] for n, v in headers]})


def _node(*args: str, stdin: str = "") -> object:
    r = subprocess.run(["node", str(TOOLS / "cross_client.mjs"), *args], input=stdin, capture_output=True, text=True,
                       timeout=NODE_CALL_TIMEOUT_S, cwd=ROOT)
    assert r.returncode == 0, f"node cross_client.mjs {' '.join(args)} failed: {r.stderr.strip()}"
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def cluster(node_built):  # noqa: ANN001
    from dataplane_cluster import DataPlaneCluster

    root = tempfile.mkdtemp(prefix="kolk-cross-client-")
    c = DataPlaneCluster(root, spus=1)
    try:
        c.start()
        yield c
    finally:
        c.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("codec", ["none", "gzip", "zstd"])
def test_node_produces_python_reads(cluster, codec):  # noqa: ANN001
    from dataplane_cluster import read_all, run_async

    topic = f"node-to-py-{codec}"

    async def create() -> None:
        client = cluster.client()
        try:
            await client.create_topic(topic, 1)
        finally:
            await client.close()
    run_async(create)
    offsets = _node("produce", cluster.sc_addresses[0], topic, codec,
                    stdin="\n".join(_as_line(*r) for r in RECORDS) + "\n")
    assert offsets == list(range(len(RECORDS)))

    async def read() -> list:
        client = cluster.client()
        try:
            return await read_all(client, topic)
        finally:
            await client.close()
    got = run_async(read)
    assert [(r.partition, r.offset, r.key, r.value, r.headers, r.timestamp) for r in got] == \
        [(0, i, k, v, hs, ts) for i, (k, v, hs, ts) in enumerate(RECORDS)]


@pytest.mark.parametrize("codec", ["none", "gzip", "zstd"])
def test_python_produces_node_reads(cluster, codec):  # noqa: ANN001
    from dataplane_cluster import run_async, wait_committed

    topic = f"py-to-node-{codec}"

    async def produce() -> None:
        client = cluster.client()
        try:
            await client.create_topic(topic, 1)
            producer = client.producer(topic, compression=codec, linger_ms=50)
            futures = [await producer.send(v, key=k, headers=hs, timestamp=ts) for k, v, hs, ts in RECORDS]
            await producer.flush()
            assert [(await f).offset for f in futures] == list(range(len(RECORDS)))
            await producer.close()
            await wait_committed(client, topic)
        finally:
            await client.close()
    run_async(produce)
    got = _node("consume", cluster.sc_addresses[0], topic, str(len(RECORDS)))
    assert got == [{"partition": 0, "offset": i, "timestamp": ts, "key": _hex(k), "value": _hex(v),
                    "headers": [[n, _hex(hv)] for n, hv in hs]} for i, (k, v, hs, ts) in enumerate(RECORDS)]
