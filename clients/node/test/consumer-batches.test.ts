/** The consumers against a hostile SPU (a fake, written here: the client is what is under test):
 * a push is decoded one batch at a time as its records are taken (a push of gzip bombs does not
 * expand at once), its credit is granted back after its last batch, a stream the server ENDs
 * with ok is reopened after a back-off, and misspelt options are refused. The client's metadata
 * lookups are a stub handing out a connection to the fake SPU. */
import { after, describe, it } from "node:test";
import assert from "node:assert/strict";
import { getEventListeners } from "node:events";
import * as net from "node:net";
import v8 from "node:v8";
import { runInNewContext } from "node:vm";
import * as $ from "capnp-es";
import { Connection } from "../src/connection.js";
import { Consumer, Offset, RETRY_BACKOFF_MS } from "../src/consumer.js";
import { InvalidRequestError, OffsetOutOfRangeError } from "../src/errors.js";
import { encodeFrame, FrameDecoder, Kind, type Frame } from "../src/framing.js";
import { Push, SpuRequest, SpuResponse, StreamEnd } from "../src/gen/kolk.js";
import { GroupConsumer } from "../src/groups/consumer.js";
import { PartitionReader } from "../src/groups/stream.js";
import { decodeBatchAt, decodeBatches, encodeBatch, type Codec } from "../src/records.js";
import { RECORDS_BYTES_MAX } from "../src/compression.js";
import { readMessage } from "../src/message.js";
import { afterOutOfRange } from "../src/offset-range.js";
import type { KolkClient } from "../src/client.js";
import { waitFor } from "./cluster.js";
import { watchInflates } from "./inflates.js";

const servers: net.Server[] = [];
const conns: Connection[] = [];
after(() => { for (const c of conns) c.close(); for (const s of servers) s.close(); });

const bytesOf = (m: $.Message) => new Uint8Array(m.toArrayBuffer());

function streamOk(): Uint8Array {
  const m = new $.Message();
  m.initRoot(SpuResponse)._initStream()._initResult().ok = true;
  return bytesOf(m);
}

function push(records: Uint8Array, nextOffset: bigint): Uint8Array {
  const m = new $.Message();
  const s = m.initRoot(Push)._initStream();
  s._initRecords(records.length).copyBuffer(records);
  s.highWatermark = nextOffset; s.nextOffset = nextOffset;
  return bytesOf(m);
}

function endOk(): Uint8Array {
  const m = new $.Message();
  m.initRoot(StreamEnd)._initResult().ok = true;
  return bytesOf(m);
}

/** `n` copies of `batch` back to back, at base offsets 0..n-1 (base_offset lies outside the CRC). */
function backToBack(batch: Uint8Array, n: number): Uint8Array {
  const out = new Uint8Array(batch.length * n);
  for (let i = 0; i < n; i++) {
    out.set(batch, i * batch.length);
    new DataView(out.buffer, i * batch.length, 8).setBigInt64(0, BigInt(i), true);
  }
  return out;
}

/** A fake SPU: each stream REQUEST is answered ok, then `onStream(sock, id)`; frames seen are kept. */
function fakeSpu(onStream: (sock: net.Socket, id: number) => void, answer = streamOk()): Promise<{ address: string; seen: Frame[] }> {
  return fakeSpuOf((sock, f) => { sock.write(encodeFrame(Kind.RESPONSE, f.id, answer)); onStream(sock, f.id); });
}

/** A fake SPU calling `onRequest` for each REQUEST frame; every frame seen (before the call) is kept. */
async function fakeSpuOf(onRequest: (sock: net.Socket, f: Frame, seen: Frame[]) => void): Promise<{ address: string; seen: Frame[] }> {
  const seen: Frame[] = [];
  const server = net.createServer((sock) => {
    const dec = new FrameDecoder();
    sock.on("error", () => undefined);
    sock.on("data", (d) => {
      for (const f of dec.feed(d)) {
        seen.push(f);
        if (f.kind === Kind.REQUEST) onRequest(sock, f, seen);
      }
    });
  });
  servers.push(server);
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  server.unref();
  return { address: `127.0.0.1:${(server.address() as net.AddressInfo).port}`, seen };
}

type Range = { logStart: bigint; highWatermark: bigint; logEnd: bigint };

/** The client calls the consumers make, with the fake SPU leading partition 0 of a 1-partition
 * topic; `ranges` (when given) answers `offsets` call by call, the last one from then on. */
async function stubClient(address: string, hw: bigint, ranges: Range[] = []): Promise<KolkClient> {
  const conn = await Connection.connect(address);
  conns.push(conn);
  return {
    timeoutMs: 5_000,
    partitions: async () => [{ partition: 0 }],
    offsets: async () => (ranges.length > 1 ? ranges.shift()! : ranges[0]) ?? { logStart: 0n, highWatermark: hw, logEnd: hw },
    leader: async () => ({ conn }),
    forgetLeaders: () => undefined,
  } as unknown as KolkClient;
}

/** A condition of the test's own state: polled often, since nothing else wakes the test. */
async function until(what: string, cond: () => boolean, ms = 5_000): Promise<void> {
  await waitFor(what, cond, ms, 5);
}

// One gzip batch of one record of ~64 MiB of zeros (~65 KiB on the wire), made once.
const BOMB_VALUE = RECORDS_BYTES_MAX - 64;
const BOMBS = 40; // 2.5 GB expanded, were the push decoded at once
let bomb: Uint8Array | null = null;
const bombBatch = () => (bomb ??= encodeBatch([{ value: new Uint8Array(BOMB_VALUE) }], { codec: "gzip" }));

describe("a push is decoded one batch at a time", () => {
  it("a push of 40 gzip batches each expanding to 64 MiB: the consumer reads the first records in bounded memory", { timeout: 20_000 }, async () => {
    const data = backToBack(bombBatch(), BOMBS);
    const { address } = await fakeSpu((sock, id) => sock.write(encodeFrame(Kind.PUSH, id, push(data, BigInt(BOMBS)))));
    const c = new Consumer(await stubClient(address, BigInt(BOMBS)), "t", { partition: 0 });
    try {
      const rss = process.memoryUsage().rss;
      const got: bigint[] = [];
      for await (const rec of c) {
        assert.equal(rec.value!.length, BOMB_VALUE);
        got.push(rec.offset);
        if (got.length === 2) break;
      }
      assert.deepEqual(got, [0n, 1n]);
      const grown = process.memoryUsage().rss - rss;
      assert.ok(grown < 300 << 20, `RSS grew by ${Math.round(grown / 2 ** 20)} MiB`);
    } finally { c.close(); }
  });

  it("close() while a batch expands stops the expansion: nothing is handed out, nothing expands on (both readers)", { timeout: 10_000 }, async () => {
    const { address } = await fakeSpu((sock, id) => sock.write(encodeFrame(Kind.PUSH, id, push(bombBatch(), 1n))));
    const c = new Consumer(await stubClient(address, 1n), "t", { partition: 0 });
    await watchInflates(async (w) => {
      for await (const r of c) assert.fail(`record ${r.offset} handed out after close()`);
      await until("the expansion to close", () => w.alive === 0);
      assert.deepEqual([w.stopped, w.ended], [1, 0]);
    }, () => c.close());
    const reader = new PartitionReader(await stubClient(address, 1n), "t", 0, 0n, 1 << 20, 0);
    await watchInflates(async (w) => {
      assert.deepEqual(await reader.next(), []);
      await until("the expansion to close", () => w.alive === 0);
      assert.deepEqual([w.stopped, w.ended], [1, 0]);
    }, () => reader.close());
  });

  it("the group reader too; and a push's credit is granted back after its last batch, not before", { timeout: 20_000 }, async () => {
    const data = backToBack(bombBatch(), BOMBS);
    const { address } = await fakeSpu((sock, id) => sock.write(encodeFrame(Kind.PUSH, id, push(data, BigInt(BOMBS)))));
    const reader = new PartitionReader(await stubClient(address, BigInt(BOMBS)), "t", 0, 0n, 1 << 20, 0);
    try {
      const rss = process.memoryUsage().rss;
      const first = await reader.next();
      assert.deepEqual(first.map((r) => r.offset), [0n]);
      assert.equal(reader.offset, 1n); // the position after what was handed out, for a commit
      assert.deepEqual((await reader.next()).map((r) => r.offset), [1n]);
      const grown = process.memoryUsage().rss - rss;
      assert.ok(grown < 300 << 20, `RSS grew by ${Math.round(grown / 2 ** 20)} MiB`);
    } finally { reader.close(); }

    const small = backToBack(encodeBatch([{ value: new Uint8Array(10) }, { value: new Uint8Array(10) }], { codec: "none" }), 3);
    const body = push(small, 7n);
    const spu = await fakeSpu((sock, id) => sock.write(encodeFrame(Kind.PUSH, id, body)));
    const r2 = new PartitionReader(await stubClient(spu.address, 7n), "t", 0, 0n, 1 << 20, 0);
    const credits = () => spu.seen.filter((f) => f.kind === Kind.CREDIT).length;
    try {
      // Batches at base offsets 0, 1, 2 of two records each: offsets 0-1, 1-2, 2-3; each batch
      // hands out the records at or after the position the one before it reached.
      assert.deepEqual((await r2.next()).map((r) => r.offset), [0n, 1n]);
      assert.deepEqual((await r2.next()).map((r) => r.offset), [2n]);
      assert.equal(credits(), 0);
      assert.deepEqual((await r2.next()).map((r) => r.offset), [3n]);
      assert.equal(r2.offset, 7n); // the push's nextOffset once all of it was taken
      await until("the push's credit", () => credits() === 1);
    } finally { r2.close(); }
  });
});

describe("decodeBatchAt", () => {
  it("batch by batch gives what decodeBatches gives, for any start offset (seeded random pushes)", () => {
    let seed = 23;
    const rand = (n: number) => { seed = (seed * 1103515245 + 12345) & 0x7fffffff; return seed % n; };
    const codecs: Codec[] = ["none", "gzip", "zstd"];
    for (let round = 0; round < 200; round++) {
      const parts: Uint8Array[] = [];
      let base = 0n;
      for (let b = 0, nb = 1 + rand(5); b < nb; b++) {
        const recs = Array.from({ length: 1 + rand(4) }, (_, i) => ({
          key: rand(2) ? null : new Uint8Array([i]), value: rand(5) === 0 ? null : new Uint8Array(rand(40)).fill(i),
          headers: rand(3) === 0 ? [{ key: "h", value: new Uint8Array([1]) }] : [],
        }));
        const batch = encodeBatch(recs, { codec: codecs[rand(3)] });
        new DataView(batch.buffer, batch.byteOffset, 8).setBigInt64(0, base, true);
        base += BigInt(recs.length);
        parts.push(batch);
      }
      const data = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
      parts.reduce((at, p) => { data.set(p, at); return at + p.length; }, 0);
      const from = BigInt(rand(Number(base) + 2)) - 1n;
      const whole = decodeBatches(data, 3, from);
      const byBatch = [];
      let offset = from;
      for (let pos = 0; pos < data.length;) {
        const b = decodeBatchAt(data, pos, 3, offset);
        byBatch.push(...b.records);
        pos = b.end;
        if (b.nextOffset > offset) offset = b.nextOffset;
      }
      assert.deepEqual(byBatch, whole);
      assert.equal(offset, base > from ? base : from); // the position after the push
    }
  });
});

describe("a stream the server ENDs with ok", () => {
  it("is reopened after a back-off each time, not at once", { timeout: 10_000 }, async () => {
    let opens = 0;
    const { address } = await fakeSpu((sock, id) => { opens++; sock.write(encodeFrame(Kind.END, id, endOk())); });
    const c = new Consumer(await stubClient(address, 0n), "t", { partition: 0 });
    const t0 = Date.now();
    const reading = c.nextBatch().catch(() => undefined);
    try {
      await until("three opens", () => opens >= 3);
      const took = Date.now() - t0;
      assert.ok(took >= 2 * RETRY_BACKOFF_MS, `3 opens in ${took} ms: no back-off between them`);
    } finally { c.close(); await reading; }
  });
});

describe("a read that failed", () => {
  it("is not raised again by the next nextBatch(): that one reads again", { timeout: 10_000 }, async () => {
    const m = new $.Message();
    const r = m.initRoot(SpuResponse)._initStream()._initResult();
    r.ok = false;
    const e = r._initError(); e.code = "invalidArgument"; e.message = "no"; // not retriable
    const spu = await fakeSpu(() => undefined, bytesOf(m));
    const c = new Consumer(await stubClient(spu.address, 0n), "t", { partition: 0 });
    const opens = () => spu.seen.filter((f) => f.kind === Kind.REQUEST).length;
    try {
      await assert.rejects(c.nextBatch(), InvalidRequestError);
      await assert.rejects(c.nextBatch(), InvalidRequestError);
      assert.equal(opens(), 2); // a second stream asked for, not the first failure raced again
    } finally { c.close(); }
  });
});

describe("consumer options", () => {
  it("an unknown key is refused, naming it and the option meant", async () => {
    const client = await stubClient((await fakeSpu(() => undefined)).address, 0n);
    assert.throws(() => new Consumer(client, "t", { windowByte: 1 } as never), (e: unknown) =>
      e instanceof InvalidRequestError && /consumer: unknown option "windowByte" \(did you mean "windowBytes"\?\)/.test(e.message));
    assert.throws(() => new GroupConsumer(client, "t", { group: "g", autoComit: false } as never), (e: unknown) =>
      e instanceof InvalidRequestError && /groupConsumer: unknown option "autoComit" \(did you mean "autoCommit"\?\)/.test(e.message));
    // partition keeps its own reason
    assert.throws(() => new GroupConsumer(client, "t", { group: "g", partition: 0 }), /partition and group exclude each other/);
  });
});

/** `n` one-record batches at offsets from..from+n-1, back to back. */
function records(from: bigint, n: number): Uint8Array {
  const data = backToBack(encodeBatch([{ value: new Uint8Array([1]) }], { codec: "none" }), n);
  for (let i = 0; i < n; i++) new DataView(data.buffer, i * (data.length / n), 8).setBigInt64(0, from + BigInt(i), true);
  return data;
}

/** The offset each stream REQUEST the fake SPU saw asked for. */
const asked = (seen: Frame[]) => seen.filter((f) => f.kind === Kind.REQUEST).map((f) => readMessage(f.body, SpuRequest, "a request").stream.offset);

describe("stopAtEnd", () => {
  it("ends the iteration at the high watermark each partition saw, and at once for an empty topic", { timeout: 10_000 }, async () => {
    const spu = await fakeSpu((sock, id) => sock.write(encodeFrame(Kind.PUSH, id, push(records(0n, 3), 3n))));
    const got: bigint[] = [];
    for await (const r of new Consumer(await stubClient(spu.address, 3n), "t", { stopAtEnd: true })) got.push(r.offset);
    assert.deepEqual(got, [0n, 1n, 2n]);

    const empty = await fakeSpu(() => undefined);
    const c = new Consumer(await stubClient(empty.address, 0n), "t", { stopAtEnd: true });
    for await (const r of c) assert.fail(`a record ${r.offset} of an empty topic`);
    assert.deepEqual(await c.poll(5_000), []);
    assert.equal(asked(empty.seen).length, 0); // nothing to read: no stream opened
    assert.throws(() => new Consumer(c.client, "t", { stopAtEnd: "yes" as never }), /stopAtEnd is true or false, not yes/);
    assert.throws(() => new Consumer(c.client, "t", { stopAtend: true } as never), /did you mean "stopAtEnd"/);
  });
});

describe("retention", () => {
  it("a quiet partition's read in the race keeps no batch of a busy one alive once handed out", { timeout: 10_000 }, async () => {
    const requests = (seen: Frame[]) => seen.filter((f) => f.kind === Kind.REQUEST).map((f) => readMessage(f.body, SpuRequest, "a request").stream);
    const spu = await fakeSpu((sock, id) => {
      if (requests(spu.seen).at(-1)!.partition !== 0) return; // partition 1: no push (its read waits, raced by every call)
      for (let i = 0n; i < 6n; i++) sock.write(encodeFrame(Kind.PUSH, id, push(records(i, 1), i + 1n))); // one batch a push
    });
    const client = { ...(await stubClient(spu.address, 6n)), partitions: async () => [{ partition: 0 }, { partition: 1 }] } as unknown as KolkClient;
    v8.setFlagsFromString("--expose-gc");
    const gc = runInNewContext("gc") as () => void;
    for (const how of ["nextBatch", "poll"] as const) {
      const d = new Consumer(client, "t"); // both partitions from 0
      try {
        const next = () => (how === "poll" ? d.poll(5_000) : d.nextBatch());
        const first = new WeakRef(await next());
        for (let n = 1; n < 6;) n += (await next()).length;
        await new Promise((r) => setImmediate(r));
        gc();
        assert.equal(first.deref(), undefined, `the first batch is still reachable after five more were read (${how})`);
      } finally { d.close(); }
    }
  });
});

describe("stopAtEnd, several partitions", () => {
  it("one of them empty: the empty one opens no stream, the iteration ends at the others' ends", { timeout: 10_000 }, async () => {
    const spu = await fakeSpu((sock, id) => sock.write(encodeFrame(Kind.PUSH, id, push(records(0n, 3), 3n))));
    const client = { ...(await stubClient(spu.address, 3n)), partitions: async () => [{ partition: 0 }, { partition: 1 }],
      offsets: async (_: string, p: number) => ({ logStart: 0n, highWatermark: p === 1 ? 0n : 3n, logEnd: p === 1 ? 0n : 3n }) } as unknown as KolkClient;
    const got: string[] = [];
    for await (const r of new Consumer(client, "t", { stopAtEnd: true })) got.push(`${r.partition}:${r.offset}`);
    assert.deepEqual(got, ["0:0", "0:1", "0:2"]);
    const partitions = spu.seen.filter((f) => f.kind === Kind.REQUEST).map((f) => readMessage(f.body, SpuRequest, "a request").stream.partition);
    assert.deepEqual(partitions, [0]);
  });
});

describe("poll", () => {
  it("the abort signal rejects a waiting poll and every later one with an AbortError; the stream is cancelled", { timeout: 10_000 }, async () => {
    const spu = await fakeSpu(() => undefined);
    const ac = new AbortController();
    const c = new Consumer(await stubClient(spu.address, 0n), "t", { partition: 0, signal: ac.signal });
    const waiting = c.poll(60_000);
    await until("the stream's request", () => asked(spu.seen).length === 1);
    ac.abort();
    const isAbort = (e: Error) => e.name === "AbortError";
    await assert.rejects(waiting, isAbort);
    await assert.rejects(c.poll(10), isAbort);
    await assert.rejects(c.nextBatch(), isAbort);
    await until("the CANCEL", () => spu.seen.some((f) => f.kind === Kind.CANCEL));
    assert.equal(getEventListeners(ac.signal, "abort").length, 0, "the closed consumer left a listener on the signal");
  });

  it("gives [] when nothing came in time, the records when a push comes, [] once closed", { timeout: 10_000 }, async () => {
    let sock: net.Socket | null = null;
    let id = 0;
    const spu = await fakeSpu((s, i) => { sock = s; id = i; });
    const c = new Consumer(await stubClient(spu.address, 0n), "t", { partition: 0 });
    try {
      const t0 = Date.now();
      assert.deepEqual(await c.poll(50), []);
      const took = Date.now() - t0;
      assert.ok(took >= 45 && took < 900, `poll(50) took ${took} ms`); // bounded: before the idle probe (1 s)
      await until("the stream's request", () => sock !== null);
      const next = c.poll(5_000); // the read the first poll left pending is still the one raced
      sock!.write(encodeFrame(Kind.PUSH, id, push(encodeBatch([{ value: null }, { value: null }], { codec: "gzip" }), 2n)));
      assert.deepEqual((await next).map((r) => r.offset), [0n, 1n]);
      assert.equal(asked(spu.seen).length, 1);
      await assert.rejects(c.poll(-1), (e: Error) => e instanceof InvalidRequestError && /timeoutMs is a number of ms >= 0, not -1/.test(e.message));
      const waiting = c.poll(60_000);
      c.close();
      assert.deepEqual(await waiting, []); // close() ends a waiting poll at once
      assert.deepEqual(await c.poll(10), []);
    } finally { c.close(); }
  });

  it("polls made at once hand each record out once (one lookup, one stream, each read to one caller)", { timeout: 10_000 }, async () => {
    let sock: net.Socket | null = null;
    let id = 0;
    const spu = await fakeSpu((s, i) => { sock = s; id = i; });
    const c = new Consumer(await stubClient(spu.address, 0n), "t", { partition: 0 });
    try {
      const polls = [c.poll(5_000), c.poll(5_000)]; // both before the partitions were looked up
      await until("the stream's request", () => sock !== null);
      sock!.write(encodeFrame(Kind.PUSH, id, push(encodeBatch([{ value: null }, { value: null }], { codec: "gzip" }), 2n)));
      sock!.write(encodeFrame(Kind.PUSH, id, push(records(2n, 1), 3n)));
      const got = (await Promise.all(polls)).map((b) => b.map((r) => r.offset));
      assert.deepEqual(got.flat().sort(), [0n, 1n, 2n], `each record once: ${JSON.stringify(got, (_, v) => String(v))}`);
      assert.equal(asked(spu.seen).length, 1, "one stream for the partition");
    } finally { c.close(); }
  });

  it("close() ends a read still opening its stream (the leader lookup never answers)", { timeout: 5_000 }, async () => {
    const client = { ...(await stubClient((await fakeSpu(() => undefined)).address, 5n)), leader: () => new Promise(() => undefined) } as unknown as KolkClient;
    const c = new Consumer(client, "t", { partition: 0 });
    const it = c.batches()[Symbol.asyncIterator]();
    const first = it.next();
    await new Promise((r) => setImmediate(r));
    c.close();
    assert.deepEqual(await first, { value: undefined, done: true });
  });
});

describe("an offset retention deleted under the stream", () => {
  const refusal = (code: string) => {
    const m = new $.Message();
    const r = m.initRoot(SpuResponse)._initStream()._initResult();
    r.ok = false;
    const e = r._initError(); e.code = code; e.message = "offset 0 is out of range";
    return bytesOf(m);
  };
  /** A fake SPU refusing the first stream as out of range, then pushing records 5-6. */
  function retained(refusals = 1): Promise<{ address: string; seen: Frame[] }> {
    return fakeSpuOf((sock, f, seen) => {
      if (asked(seen).length <= refusals) { sock.write(encodeFrame(Kind.RESPONSE, f.id, refusal("offsetOutOfRange"))); return; }
      sock.write(encodeFrame(Kind.RESPONSE, f.id, streamOk()));
      sock.write(encodeFrame(Kind.PUSH, f.id, push(records(5n, 2), 7n)));
    });
  }
  const before = { logStart: 0n, highWatermark: 7n, logEnd: 7n };
  const after = { logStart: 5n, highWatermark: 7n, logEnd: 7n };

  it("a start that named no offset restarts at the log start, as Python's consumer", { timeout: 10_000 }, async () => {
    const spu = await retained();
    const c = new Consumer(await stubClient(spu.address, 7n, [before, after]), "t", { partition: 0, stopAtEnd: true });
    const got: bigint[] = [];
    for await (const r of c) got.push(r.offset);
    assert.deepEqual(got, [5n, 6n]);
    assert.deepEqual(asked(spu.seen), [0n, 5n]);
  });

  it("retention moving on under every restart: three restarts, then the error (bounded)", { timeout: 10_000 }, async () => {
    const spu = await retained(Infinity);
    const at = (logStart: bigint) => ({ logStart, highWatermark: 30n, logEnd: 30n });
    const c = new Consumer(await stubClient(spu.address, 30n, [at(0n), at(5n), at(10n), at(15n), at(20n)]), "t", { partition: 0 });
    await assert.rejects(c.poll(5_000), (e: Error) => e instanceof OffsetOutOfRangeError && e.offset === 15n && e.logStartOffset === 20n);
    assert.deepEqual(asked(spu.seen), [0n, 5n, 10n, 15n]);
    c.close();
  });

  it("an absolute start raises, naming the offset and the range held now", { timeout: 10_000 }, async () => {
    const spu = await retained();
    const c = new Consumer(await stubClient(spu.address, 7n, [before, after]), "t", { partition: 0, offset: Offset.absolute(0) });
    await assert.rejects(c.poll(5_000), (e: Error) => e instanceof OffsetOutOfRangeError && e.offset === 0n && e.logStartOffset === 5n &&
      e.message === "offset 0 of t-0 is below the log start 5 (records 5-6 are available; older ones were deleted by retention)");
    assert.equal(asked(spu.seen).length, 1);
    c.close();
  });

  it("afterOutOfRange decides as Python's after_out_of_range", () => {
    for (const [offset, mayRestart, step] of [[5n, true, "restart"], [5n, false, "raise"], [250n, true, "raise"], [250n, false, "raise"],
      [150n, true, "reopen"], [200n, false, "reopen"]] as const) {
      assert.equal(afterOutOfRange(offset, 100n, 200n, mayRestart), step, `offset ${offset}, mayRestart ${mayRestart}`);
    }
  });
});
