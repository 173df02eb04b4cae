/** The consumers against a hostile SPU (a fake, written here: the client is what is under test):
 * a push is decoded one batch at a time as its records are taken (a push of gzip bombs does not
 * expand at once), its credit is granted back after its last batch, a stream the server ENDs
 * with ok is reopened after a back-off, and misspelt options are refused. The client's metadata
 * lookups are a stub handing out a connection to the fake SPU. */
import { after, describe, it } from "node:test";
import assert from "node:assert/strict";
import * as net from "node:net";
import * as $ from "capnp-es";
import { Connection } from "../src/connection.js";
import { Consumer, RETRY_BACKOFF_MS } from "../src/consumer.js";
import { InvalidRequestError } from "../src/errors.js";
import { encodeFrame, FrameDecoder, Kind, type Frame } from "../src/framing.js";
import { Push, SpuResponse, StreamEnd } from "../src/gen/kolk.js";
import { GroupConsumer } from "../src/groups/consumer.js";
import { PartitionReader } from "../src/groups/stream.js";
import { decodeBatchAt, decodeBatches, encodeBatch, type Codec } from "../src/records.js";
import { RECORDS_BYTES_MAX } from "../src/compression.js";
import type { KolkClient } from "../src/client.js";

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
async function fakeSpu(onStream: (sock: net.Socket, id: number) => void, answer = streamOk()): Promise<{ address: string; seen: Frame[] }> {
  const seen: Frame[] = [];
  const server = net.createServer((sock) => {
    const dec = new FrameDecoder();
    sock.on("error", () => undefined);
    sock.on("data", (d) => {
      for (const f of dec.feed(d)) {
        seen.push(f);
        if (f.kind === Kind.REQUEST) { sock.write(encodeFrame(Kind.RESPONSE, f.id, answer)); onStream(sock, f.id); }
      }
    });
  });
  servers.push(server);
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  server.unref();
  return { address: `127.0.0.1:${(server.address() as net.AddressInfo).port}`, seen };
}

/** The client calls the consumers make, with the fake SPU leading partition 0 of a 1-partition topic. */
async function stubClient(address: string, hw: bigint): Promise<KolkClient> {
  const conn = await Connection.connect(address);
  conns.push(conn);
  return {
    timeoutMs: 5_000,
    partitions: async () => [{ partition: 0 }],
    offsets: async () => ({ logStart: 0n, highWatermark: hw, logEnd: hw }),
    leader: async () => ({ conn }),
    forgetLeaders: () => undefined,
  } as unknown as KolkClient;
}

async function until(what: string, cond: () => boolean, ms = 5_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
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
