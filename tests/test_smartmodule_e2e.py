"""SmartModules through real SC and SPU processes: stored in the cluster, run on consume and on
produce, chained, with parameters, aggregates kept across batches and across a stream
reconnect, and a failing module that ends only its own stream."""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import os
from typing import Any

import pytest

from dataplane_cluster import DataPlaneCluster, read_all, release_consumer, run_async, wait_until
from kolk.client.consumer import Offset
from kolk.protocol.errors import KolkError, NotFoundError
from kolk.smartmodule.build import build_c

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "smartmodule", "examples")

TRAP_WAT = r"""
(module
  (memory (export "memory") 2)
  (func (export "kolk_abi_version") (result i32) (i32.const 1))
  (func (export "kolk_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "filter") (param i32 i32) (result i64) unreachable))
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: Any) -> Any:
    c = DataPlaneCluster(str(tmp_path_factory.mktemp("sm")), spus=1)
    try:
        c.start()
        yield c
    finally:
        c.close()


async def store(client: Any, name: str, wasm: bytes, version: str = "1") -> None:
    spec = {"wasm": base64.b64encode(wasm).decode(), "sha256": hashlib.sha256(wasm).hexdigest(),
            "size": len(wasm)}
    await client.admin.put_object("smartmodule", f"{name}@{version}", spec, expected_version=-1)


@functools.cache
def example_wasm(name: str) -> bytes:
    """The C example ``name`` built once per run: the tests share one cluster, which keeps
    the first upload, so building it again for each test (~0.3-0.8 s of clang) shows nothing."""
    return build_c(os.path.join(EXAMPLES, f"{name}.c"))


async def stored_examples(client: Any) -> None:
    for name in ("contains", "json_field", "split_lines", "count_per_key"):
        try:
            await store(client, name, example_wasm(name))
        except KolkError as e:
            if e.code != "versionConflict":
                raise


async def consume_all(client: Any, topic: str, chain: Any, expect: int, timeout_s: float = 20) -> list:
    consumer = client.consumer(topic, start=Offset.beginning(), smartmodules=chain)
    out: list = []

    async def collect() -> None:
        async for batch in consumer.batches():
            out.extend(batch)
            if len(out) >= expect:
                return
    try:
        await asyncio.wait_for(collect(), timeout_s)
    finally:
        await release_consumer(consumer)
    return out


def test_filter_and_map_chain_on_consume_keeps_offsets(cluster: DataPlaneCluster) -> None:
    """contains (needle=apple) then json_field (field=n): only matching records arrive, mapped,
    each with the offset of the record it came from; a consumer resuming after the last offset
    it saw gets nothing twice."""
    async def body() -> None:
        client = cluster.client()
        await stored_examples(client)
        await client.create_topic("fruit", 1, 1)
        producer = client.producer("fruit", linger_ms=1)
        values = [b'{"fruit": "%s", "n": %d}' % (b"apple" if i % 3 == 0 else b"pear", i) for i in range(300)]
        for v in values:
            await producer.send(v)
        await producer.flush()
        chain = [("contains", {"needle": "apple"}), ("json_field", {"field": "n"})]
        got = await consume_all(client, "fruit", chain, 100)
        assert [(r.offset, r.value) for r in got] == [(i, str(i).encode()) for i in range(0, 300, 3)]
        later = client.consumer("fruit", start=Offset.absolute(got[50].offset + 1), smartmodules=chain,
                                stop_at_end=True)
        rest = [r async for r in later]
        await release_consumer(later)
        assert [r.offset for r in rest] == [r.offset for r in got[51:]]
    run_async(body)


def test_array_map_and_aggregate_across_batches_and_reconnect(cluster: DataPlaneCluster) -> None:
    """split_lines gives one record per line, each with its input record's offset;
    count_per_key keeps counting across batches and across a broken stream connection."""
    async def body() -> None:
        client = cluster.client()
        await stored_examples(client)
        await client.create_topic("lines", 1, 1)
        producer = client.producer("lines", linger_ms=0)
        for i in range(20):
            await producer.send(b"a%d\nb%d\nc%d" % (i, i, i))
        await producer.flush()
        got = await consume_all(client, "lines", ["split_lines"], 60)
        assert [(r.offset, r.value) for r in got[:4]] == [(0, b"a0"), (0, b"b0"), (0, b"c0"), (1, b"a1")]
        assert len(got) == 60

        await client.create_topic("clicks", 1, 1)
        producer = client.producer("clicks", linger_ms=0)
        consumer = client.consumer("clicks", start=Offset.beginning(), smartmodules=["count_per_key"])
        seen: list = []

        async def collect(n: int) -> None:
            async for batch in consumer.batches():
                seen.extend(batch)
                if len(seen) >= n:
                    return
        for i in range(30):
            await producer.send(b"x", key=b"user-%d" % (i % 3))
        await producer.flush()
        await asyncio.wait_for(collect(30), 20)
        # Break the stream's connection: the consumer reopens it with the accumulator it holds.
        stream = consumer._streams[0]
        client.drop_connection(stream.address)
        for i in range(30, 60):
            await producer.send(b"x", key=b"user-%d" % (i % 3))
        await producer.flush()
        await asyncio.wait_for(collect(60), 20)
        await release_consumer(consumer)
        assert seen[-1].value == b"user-2=20" and seen[-3].value == b"user-0=20"
        assert [r.offset for r in seen] == list(range(60))
    run_async(body)


def test_produce_side_chain_stores_the_output(cluster: DataPlaneCluster) -> None:
    """A produce-side filter: the log holds only the kept records, at the offsets they would
    have had (the batch keeps its offset range), and an idempotent producer is refused."""
    async def body() -> None:
        client = cluster.client()
        await stored_examples(client)
        await client.create_topic("kept", 1, 1)
        producer = client.producer("kept", linger_ms=0, smartmodules=[("contains", {"needle": "keep"})])
        futs = [await producer.send(b"keep-%d" % i if i % 2 == 0 else b"drop-%d" % i) for i in range(10)]
        await producer.flush()
        for f in futs:
            await f
        records = await read_all(client, "kept")
        assert [r.value for r in records] == [b"keep-%d" % i for i in range(0, 10, 2)]
        with pytest.raises(KolkError, match="idempotent"):
            client.producer("kept", smartmodules=["contains"], idempotent=True)
    run_async(body)


def test_failing_module_ends_only_its_stream(cluster: DataPlaneCluster) -> None:
    """A module that traps ends its stream with an error naming the module, the kind and the
    offset; a parallel plain stream goes on, and the SPU keeps serving. A missing module or
    version is refused when the stream opens."""
    import wasmtime

    async def body() -> None:
        client = cluster.client()
        try:
            await store(client, "boom", wasmtime.wat2wasm(TRAP_WAT))
        except KolkError as e:
            assert e.code == "versionConflict"
        await client.create_topic("mixed", 1, 1)
        producer = client.producer("mixed", linger_ms=0)
        for i in range(10):
            await producer.send(b"v%d" % i)
        await producer.flush()
        with pytest.raises(KolkError, match=r"boom@1 \(filter\).*trap"):
            await consume_all(client, "mixed", ["boom"], 10)
        plain = await consume_all(client, "mixed", [], 10)
        assert [r.value for r in plain] == [b"v%d" % i for i in range(10)]
        with pytest.raises(KolkError, match=r"contains@1 \(filter\) cannot start: initFailed"):
            await consume_all(client, "mixed", ["contains"], 1)  # the needle parameter is missing
        with pytest.raises(NotFoundError, match="no-such-module"):
            await consume_all(client, "mixed", ["no-such-module"], 1)
        with pytest.raises(NotFoundError, match="no version 9"):
            await consume_all(client, "mixed", ["boom@9"], 1)
        await wait_until(lambda: cluster.spus[1].alive, 1, "the SPU to stay up")
    run_async(body)


FILTER_MAP_C = r"""
#include "kolk_smartmodule.h"
/* Keep values that are whole numbers, doubled; drop the rest. */
static int doubled(const kolk_record *in, kolk_output *out) {
    static char text[24];
    kolk_i64 n;
    if (in->value_len <= 0 || kolk_parse_i64(in->value, in->value_len, &n) != 0) return 0;
    kolk_i32 len = kolk_format_i64(2 * n, text);
    out->value = (const kolk_u8 *)text;
    out->value_len = len;
    return 1;
}
KOLK_FILTER_MAP(doubled)
"""


def test_filter_map_and_record_errors_name_the_offset(cluster: DataPlaneCluster, tmp_path: Any) -> None:
    """filter_map through the SPU; a map that refuses record 3 ends the stream with an error
    naming the module, its kind and that record's offset, while a plain stream opened
    beside it reads everything."""
    async def body() -> None:
        client = cluster.client()
        await stored_examples(client)
        source = tmp_path / "doubled.c"
        source.write_text(FILTER_MAP_C)
        try:
            await store(client, "doubled", build_c(str(source)))
        except KolkError as e:
            assert e.code == "versionConflict"
        await client.create_topic("numbers", 1, 1)
        producer = client.producer("numbers", linger_ms=0)
        values = [b"1", b"x", b"21", b"{}", b"-4"]
        for v in values:
            await producer.send(v)
        await producer.flush()
        got = await consume_all(client, "numbers", ["doubled"], 3)
        assert [(r.offset, r.value) for r in got] == [(0, b"2"), (2, b"42"), (4, b"-8")]
        plain = asyncio.ensure_future(consume_all(client, "numbers", [], 5))
        # json_field refuses a value that is not a JSON object: record 0 here.
        with pytest.raises(KolkError, match=r"json_field@1 \(map\) failed at offset 0: recordError"):
            await consume_all(client, "numbers", [("json_field", {"field": "n"})], 1)
        assert [r.value for r in await plain] == values
    run_async(body)


def test_cli_create_list_and_consume_with_a_chain(cluster: DataPlaneCluster, tmp_path: Any) -> None:
    """The CLI: store a module from its C source, list it, and consume through it with a
    parameter; produce through it too."""
    import subprocess
    import sys

    sc = ",".join(cluster.sc_addresses)

    def kolk(*args: str, stdin: str | None = None) -> str:
        out = subprocess.run([sys.executable, "-m", "kolk", *args, "--sc", sc], input=stdin, capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return out.stdout

    kolk("smartmodule", "create", "redact", os.path.join(EXAMPLES, "redact.c"), "--version", "7")
    listed = kolk("smartmodule", "list")  # one run of the command (a Python start-up) for both checks
    assert "redact" in listed and "map" in listed
    kolk("topic", "create", "cli-sm")
    kolk("produce", "cli-sm", stdin='{"user": "ann", "card": "1234"}\n{"user": "bob", "card": "9999"}\n')
    out = kolk("consume", "cli-sm", "-B", "-d", "--smartmodule", "redact@7", "-p", "field=card")
    assert out.splitlines() == ['{"user": "ann", "card": "***"}', '{"user": "bob", "card": "***"}']
