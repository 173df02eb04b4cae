import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import zlib from "node:zlib";
import { compress as zstdCompress } from "@bokuweb/zstd-wasm";
import { CorruptDataError, InvalidBatchError } from "../src/errors.js";
import { crc32, crc32c, crc32cPortable } from "../src/crc32c.js";
import { RECORDS_BYTES_MAX, compress, decompress, decompressAsync } from "../src/compression.js";
import {
  CRC_START, HEADER_SIZE, batchRecordCount, decodeBatchAt, decodeBatchAtAsync, decodeBatches, encodeBatch, lastOffsetOf, readHeader,
} from "../src/records.js";
import type { BatchIdentity, Codec, ConsumerRecord, ProducerRecord } from "../src/records.js";

const hex = (b: Uint8Array | null) => (b === null ? null : Buffer.from(b).toString("hex"));
const unhex = (s: string | null) => (s === null ? null : new Uint8Array(Buffer.from(s, "hex")));
const bytes = (s: string) => new Uint8Array(Buffer.from(s));

interface Vector {
  name: string;
  encode_matches: boolean;
  build: { base_offset?: number; leader_epoch?: number; producer_id?: number; producer_epoch?: number;
    base_sequence?: number; codec?: Codec };
  records: { offset: number; timestamp: number; key_hex: string | null; value_hex: string | null;
    headers: [string, string | null][] }[];
  batch_hex: string[];
}

function vectors(): Vector[] {
  const text = readFileSync(new URL("../../../../docs/format.md", import.meta.url), "utf8");
  const out: Vector[] = [];
  for (const m of text.matchAll(/<!-- test-vector -->\s*```json\n([\s\S]*?)```/g)) out.push(JSON.parse(m[1]));
  return out;
}

function fixCrc(b: Uint8Array): Uint8Array {
  new DataView(b.buffer, b.byteOffset).setUint32(17, crc32c(b, CRC_START), true);
  return b;
}

/** Run `fn` and check it throws `cls` with `reason`, returning the message. */
function refuses(fn: () => unknown, reason: string, cls: Function = InvalidBatchError): string {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof cls, `expected ${cls.name}, got ${(e as Error).name}: ${(e as Error).message}`);
    assert.equal((e as InvalidBatchError).reason, reason, (e as Error).message);
    assert.ok(!(e as Error).message.includes("\n"));
    return (e as Error).message;
  }
  assert.fail(`expected a refusal (${reason})`);
}

function sample(codec: Codec = "none"): Uint8Array {
  return encodeBatch([
    { key: bytes("k"), value: bytes("hello"), headers: [{ key: "h", value: bytes("v") }], timestamp: 1700000000000 },
    { key: null, value: null, timestamp: 1700000000001 },
  ], { codec });
}

test("the WebAssembly CRC-32C equals the JavaScript one, across its 1 MiB window", () => {
  const r = rng(7);
  for (const n of [255, 256, 257, 1000, 4099, (1 << 20) - 3, (1 << 20) + 17, 3 << 20]) {
    const buf = new Uint8Array(n);
    for (let i = 0; i < n; i++) buf[i] = Math.floor(r() * 256);
    assert.equal(crc32c(buf), crc32cPortable(buf), `${n} bytes`);
    assert.equal(crc32c(buf, 5, n - 2, 0x1234), crc32cPortable(buf, 5, n - 2, 0x1234), `${n} bytes, offsets`);
  }
});

test("CRC-32C and CRC-32 check values", () => {
  assert.equal(crc32c(bytes("123456789")), 0xe3069283);
  assert.equal(crc32(bytes("123456789")), 0xcbf43926);
  const long = bytes("the quick brown fox jumps over the lazy dog, again and again");
  assert.equal(crc32c(long, 7), crc32c(long.subarray(7)));
  assert.equal(crc32c(long, 20, long.length, crc32c(long, 0, 20)), crc32c(long));
});

test("the test vectors of docs/format.md decode, and re-encode both ways", () => {
  const vs = vectors();
  assert.equal(vs.length, 3);
  for (const v of vs) {
    const batch = unhex(v.batch_hex.join(""))!;
    const got = decodeBatches(batch, 5);
    assert.deepEqual(got.map((r) => ({
      offset: Number(r.offset), timestamp: r.timestamp, key_hex: hex(r.key), value_hex: hex(r.value),
      headers: r.headers.map((h) => [h.key, hex(h.value)]),
    })), v.records, v.name);
    assert.ok(got.every((r) => r.partition === 5));
    const records: ProducerRecord[] = v.records.map((r) => ({
      key: unhex(r.key_hex), value: unhex(r.value_hex), timestamp: r.timestamp,
      headers: r.headers.map(([k, hv]) => ({ key: k, value: unhex(hv) })),
    }));
    const b = v.build;
    const identity: BatchIdentity | undefined = b.producer_id === undefined ? undefined
      : { producerId: BigInt(b.producer_id), producerEpoch: b.producer_epoch!, baseSequence: b.base_sequence! };
    const encoded = encodeBatch(records, {
      codec: b.codec ?? "none", identity, baseOffset: BigInt(b.base_offset ?? 0), leaderEpoch: b.leader_epoch ?? 0,
    });
    if (v.encode_matches) assert.equal(hex(encoded), hex(batch), v.name);
    // Re-encoded then decoded gives the records again (the gzip vector's bytes depend on zlib).
    assert.deepEqual(decodeBatches(encoded, 5).map((r) => hex(r.value)), v.records.map((r) => r.value_hex));
    assert.equal(lastOffsetOf(batch), BigInt(v.records[v.records.length - 1].offset));
    assert.equal(batchRecordCount(batch), v.records.length);
  }
});

test("decodeBatches reads batches back to back and skips records before fromOffset", () => {
  const one = encodeBatch([{ value: bytes("a") }, { value: bytes("b") }], { codec: "none", baseOffset: 10n });
  const two = encodeBatch([{ value: bytes("c") }], { codec: "zstd", baseOffset: 12n });
  const both = new Uint8Array([...one, ...two]);
  assert.deepEqual(decodeBatches(both, 0).map((r) => r.offset), [10n, 11n, 12n]);
  assert.deepEqual(decodeBatches(both, 0, 11n).map((r) => hex(r.value)), [hex(bytes("b")), hex(bytes("c"))]);
  assert.deepEqual(decodeBatches(both, 0, 12n).map((r) => r.offset), [12n]);
  assert.deepEqual(decodeBatches(new Uint8Array(0), 0), []);
  assert.equal(lastOffsetOf(both), 12n);
  assert.equal(lastOffsetOf(both.subarray(0, both.length - 1)), 11n, "a cut last batch is not counted");
  assert.equal(lastOffsetOf(new Uint8Array(0)), -1n);
  const bad = new Uint8Array(one);
  new DataView(bad.buffer).setInt32(8, -100, true);
  assert.equal(lastOffsetOf(bad), -1n, "a negative batch_length stops the walk");
});

test("default timestamps are one reading of the clock per batch", () => {
  const before = Date.now();
  const got = decodeBatches(encodeBatch([{ value: bytes("a") }, { value: null }], { codec: "none" }), 0);
  assert.ok(got[0].timestamp >= before && got[0].timestamp <= Date.now());
  assert.equal(got[1].timestamp, got[0].timestamp);
});

test("encodeBatch refuses an empty batch and an unknown codec", () => {
  refuses(() => encodeBatch([], { codec: "none" }), "count");
  assert.throws(() => encodeBatch([{ value: null }], { codec: "lz4" as Codec }), /codec must be one of/);
});

// Every refusal of the decoder, each on its own.

test("refuses a bad CRC", () => {
  const b = sample();
  b[b.length - 1] ^= 1;
  assert.match(refuses(() => decodeBatches(b, 0), "crc", CorruptDataError), /has CRC 0x[0-9a-f]{8} but its contents give/);
});

test("refuses a batch truncated inside its header", () => {
  assert.match(refuses(() => decodeBatches(sample().subarray(0, 40), 0), "truncated"), /a header needs 61/);
});

test("refuses a batch truncated after its header", () => {
  const b = sample();
  assert.match(refuses(() => decodeBatches(b.subarray(0, b.length - 1), 0), "truncated"), /header announces/);
});

test("refuses a bad magic", () => {
  const b = sample();
  b[16] = 2;
  assert.match(refuses(() => decodeBatches(fixCrc(b), 0), "magic"), /has magic 2/);
});

test("refuses a batch_length too small for the header", () => {
  const b = sample();
  new DataView(b.buffer).setInt32(8, 48, true);
  assert.match(refuses(() => decodeBatches(b, 0), "length"), /batch_length 48/);
});

test("refuses a batch over the size limit", () => {
  const b = sample();
  new DataView(b.buffer).setInt32(8, (64 << 20) + 1, true);
  assert.match(refuses(() => readHeader(b), "tooLarge"), /more than the limit/);
});

test("refuses an unknown codec", () => {
  for (const codec of [2, 3, 5, 7]) {
    const b = sample();
    b[21] = codec;
    assert.match(refuses(() => decodeBatches(fixCrc(b), 0), "codec"), new RegExp(`compression codec ${codec}`));
  }
});

test("refuses a record_count below 1", () => {
  const b = sample();
  new DataView(b.buffer).setInt32(57, 0, true);
  assert.match(refuses(() => decodeBatches(fixCrc(b), 0), "count"), /record_count 0/);
});

test("refuses a max_timestamp before first_timestamp", () => {
  const b = sample();
  new DataView(b.buffer).setInt32(35, 0, true);
  new DataView(b.buffer).setInt32(39, 0, true);
  assert.match(refuses(() => decodeBatches(fixCrc(b), 0), "timestamps"), /before first_timestamp/);
});

test("refuses a record_count above the records present", () => {
  const b = sample();
  new DataView(b.buffer).setInt32(57, 3, true);
  assert.match(refuses(() => decodeBatches(fixCrc(b), 0), "recordTruncated"), /record 2 .* is truncated/);
});

test("refuses a record_count below the records present (bytes left over)", () => {
  const b = sample();
  new DataView(b.buffer).setInt32(57, 1, true);
  assert.match(refuses(() => decodeBatches(fixCrc(b), 0), "batchLeftover"), /bytes after its 1 records/);
});

test("refuses a record length that overruns the section", () => {
  const b = sample();
  new DataView(b.buffer).setUint32(HEADER_SIZE, 10_000, true);
  assert.match(refuses(() => decodeBatches(fixCrc(b), 0), "recordLength"), /record 0 .* has length 10000/);
});

test("refuses a key length that overruns the record", () => {
  const b = sample();
  new DataView(b.buffer).setInt32(HEADER_SIZE + 17, 100, true);
  assert.match(refuses(() => decodeBatches(fixCrc(b), 0), "keyLength"), /bad key length 100/);
  new DataView(b.buffer).setInt32(HEADER_SIZE + 17, -2, true);
  assert.match(refuses(() => decodeBatches(fixCrc(b), 0), "keyLength"), /bad key length -2/);
});

test("refuses a value length that overruns the record", () => {
  const b = sample();
  new DataView(b.buffer).setInt32(HEADER_SIZE + 22, 100, true);
  assert.match(refuses(() => decodeBatches(fixCrc(b), 0), "valueLength"), /bad value length 100/);
});

test("refuses headers that overrun the record", () => {
  const b = sample();
  const at = HEADER_SIZE + 4 + 13 + 4 + 1 + 4 + 5; // header_count of record 0
  new DataView(b.buffer).setUint32(at, 5, true);
  assert.match(refuses(() => decodeBatches(fixCrc(b), 0), "headers"), /truncated headers|bad header/);
});

test("refuses a header name that is not UTF-8", () => {
  const b = sample();
  const at = HEADER_SIZE + 4 + 13 + 4 + 1 + 4 + 5 + 4 + 4; // the name "h"
  b[at] = 0xff;
  assert.match(refuses(() => decodeBatches(fixCrc(b), 0), "headerName"), /not UTF-8/);
});

test("refuses bytes left over inside a record", () => {
  const rec = encodeBatch([{ value: bytes("abc") }], { codec: "none" });
  // Grow record 0's length by one and the batch by one byte: the record has a byte past its fields.
  const b = new Uint8Array(rec.length + 1);
  b.set(rec);
  const v = new DataView(b.buffer);
  v.setInt32(8, v.getInt32(8, true) + 1, true);
  v.setUint32(HEADER_SIZE, v.getUint32(HEADER_SIZE, true) + 1, true);
  assert.match(refuses(() => decodeBatches(fixCrc(b), 0), "recordLeftover"), /1 bytes past its fields/);
});

function withBody(body: Uint8Array, codec: number, count = 2): Uint8Array {
  const head = sample().subarray(0, HEADER_SIZE);
  const b = new Uint8Array(HEADER_SIZE + body.length);
  b.set(head);
  b.set(body, HEADER_SIZE);
  const v = new DataView(b.buffer);
  v.setInt32(8, HEADER_SIZE - 12 + body.length, true);
  v.setInt16(21, codec, true);
  v.setInt32(57, count, true);
  return fixCrc(b);
}

const plainSection = () => sample().subarray(HEADER_SIZE);

test("refuses a gzip section with bytes after its stream", () => {
  const gz = zlib.gzipSync(plainSection());
  const b = withBody(new Uint8Array([...gz, 0, 1, 2]), 1);
  assert.match(refuses(() => decodeBatches(b, 0), "trailing"), /3 bytes after its stream/);
  const two = withBody(new Uint8Array([...gz, ...gz]), 1);
  refuses(() => decodeBatches(two, 0), "trailing");
});

test("refuses a truncated gzip section", () => {
  const gz = zlib.gzipSync(plainSection());
  refuses(() => decodeBatches(withBody(gz.subarray(0, gz.length - 4), 1), 0), "truncated");
  refuses(() => decodeBatches(withBody(gz.subarray(0, 20), 1), 0), "truncated");
});

test("refuses a gzip section that is not gzip, or whose trailer is wrong", () => {
  refuses(() => decodeBatches(withBody(plainSection(), 1), 0), "decompress");
  const gz = zlib.gzipSync(plainSection());
  gz[gz.length - 1] ^= 1;
  assert.match(refuses(() => decodeBatches(withBody(gz, 1), 0), "decompress"), /trailer/);
});

test("refuses a zstd section that is not one whole frame", () => {
  const z = zstdCompress(plainSection(), 3);
  refuses(() => decodeBatches(withBody(plainSection(), 4), 0), "decompress");
  refuses(() => decodeBatches(withBody(z.subarray(0, z.length - 3), 4), 0), "decompress");
  refuses(() => decodeBatches(withBody(new Uint8Array([...z, 9, 9, 9, 9]), 4), 0), "decompress");
});

test("refuses a section that expands past the limit", () => {
  const big = new Uint8Array(RECORDS_BYTES_MAX + 1);
  assert.match(refuses(() => decompress("gzip", zlib.gzipSync(big), RECORDS_BYTES_MAX), "expansion"), /past the limit/);
  assert.match(refuses(() => decompress("zstd", compress("zstd", big), RECORDS_BYTES_MAX), "expansion"), /past the limit/);
  // Through the decoder too: a small batch whose section would expand past 64 MiB.
  refuses(() => decodeBatches(withBody(compress("zstd", big), 4), 0), "expansion");
});

test("gzip expanded off the event loop: decodeBatchAtAsync decodes and refuses exactly as decodeBatchAt", async () => {
  const gz = zlib.gzipSync(plainSection());
  const batches: Uint8Array[] = [
    withBody(gz, 1), withBody(new Uint8Array([...gz, 0, 1, 2]), 1), withBody(new Uint8Array([...gz, ...gz]), 1),
    withBody(gz.subarray(0, gz.length - 4), 1), withBody(gz.subarray(0, 20), 1), withBody(plainSection(), 1),
    withBody(zlib.gzipSync(new Uint8Array(RECORDS_BYTES_MAX + 1)), 1), // expands past the limit: refused, not expanded
  ];
  const bad = new Uint8Array(gz); bad[bad.length - 1] ^= 1;
  batches.push(withBody(bad, 1));
  const r = rng(11);
  for (let i = 0; i < 20; i++) batches.push(encodeBatch(randomRecords(r), { codec: (["none", "gzip", "zstd"] as const)[i % 3] }));
  const outcome = async (f: () => unknown) => {
    try { return { records: await f() }; } catch (e) { return { error: (e as InvalidBatchError).constructor.name, reason: (e as InvalidBatchError).reason, message: (e as Error).message }; }
  };
  for (const [i, b] of batches.entries()) {
    const sync = await outcome(() => decodeBatchAt(b, 0, 3, 1n));
    assert.deepEqual(await outcome(() => decodeBatchAtAsync(b, 0, 3, 1n)), sync, `batch ${i}`);
    if (i < 8) assert.ok("error" in sync || i === 0, `batch ${i} is refused`);
  }
  // A bomb is stopped at the limit it is given, with the typed refusal.
  const bomb = zlib.gzipSync(new Uint8Array(1 << 20));
  assert.match(refuses(() => decompress("gzip", bomb, 64 << 10), "expansion"), /past the limit of 65536 bytes/);
  await assert.rejects(decompressAsync("gzip", bomb, 64 << 10), (e: InvalidBatchError) => e.reason === "expansion" && /past the limit of 65536 bytes/.test(e.message));
});

test("a 4 MiB gzip section expands while the event loop turns", async () => {
  const r = rng(5);
  const raw = new Uint8Array(4 << 20);
  for (let i = 0; i < raw.length; i++) raw[i] = 97 + Math.floor(r() * 16);
  const gz = compress("gzip", raw);
  let turns = 0;
  let done = false;
  const turn = () => { turns++; if (!done) setImmediate(turn); };
  setImmediate(turn);
  const out = await decompressAsync("gzip", gz);
  done = true;
  assert.ok(Buffer.from(out.buffer, out.byteOffset, out.length).equals(raw), "what went in comes out");
  assert.ok(turns > 0, "the event loop did not turn while the section expanded");
});

// A seeded random round trip: every codec, keys, null keys and values, headers with null values,
// negative timestamp deltas, identities.

function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function randomRecords(r: () => number): ProducerRecord[] {
  const int = (n: number) => Math.floor(r() * n);
  const blob = () => {
    const b = new Uint8Array(int(3) === 0 ? int(300) : int(8));
    for (let i = 0; i < b.length; i++) b[i] = int(256);
    return b;
  };
  const nameChars = ["a", "é", "z", "-", "日", "0"];
  const base = 1_700_000_000_000 + int(1_000_000);
  return Array.from({ length: 1 + int(20) }, () => ({
    key: int(3) === 0 ? null : blob(),
    value: int(4) === 0 ? null : blob(),
    timestamp: base + int(20_000) - 10_000,
    headers: Array.from({ length: int(3) }, () => ({
      key: Array.from({ length: int(6) }, () => nameChars[int(nameChars.length)]).join(""),
      value: int(3) === 0 ? null : blob(),
    })),
  }));
}

test("seeded random round trip over every codec", () => {
  const r = rng(23);
  const codecs: Codec[] = ["none", "gzip", "zstd"];
  for (let iter = 0; iter < 300; iter++) {
    const records = randomRecords(r);
    const codec = codecs[iter % 3];
    const identity = iter % 2 ? { producerId: BigInt(Math.floor(r() * 2 ** 40)), producerEpoch: Math.floor(r() * 32767),
      baseSequence: Math.floor(r() * 2 ** 31) } : undefined;
    const baseOffset = BigInt(Math.floor(r() * 2 ** 50));
    const batch = encodeBatch(records, { codec, identity, baseOffset });
    const h = readHeader(batch);
    assert.equal(h.producerId, identity?.producerId ?? -1n);
    assert.equal(h.baseSequence, identity?.baseSequence ?? -1);
    assert.equal(h.firstTimestamp, records[0].timestamp);
    assert.equal(h.maxTimestamp, Math.max(...records.map((x) => x.timestamp!)));
    const got: ConsumerRecord[] = decodeBatches(batch, 3);
    assert.equal(got.length, records.length);
    got.forEach((g, i) => {
      const want = records[i];
      assert.equal(g.offset, baseOffset + BigInt(i));
      assert.equal(g.timestamp, want.timestamp);
      assert.equal(hex(g.key), hex(want.key ?? null));
      assert.equal(hex(g.value), hex(want.value));
      assert.deepEqual(g.headers.map((x) => [x.key, hex(x.value)]), want.headers!.map((x) => [x.key, hex(x.value)]));
    });
  }
});

// The strided fast path (docs/format.md "Records": no key, no headers, one value size) and the
// record-by-record path give the same records; a section that only looks strided at its first
// record goes the slow way. A seeded random loop over uniform and almost uniform sections.
test("strided and record-by-record decoding agree (seeded random sections)", () => {
  let seed = 23;
  const rnd = (n: number) => { seed = (seed * 1103515245 + 12345) & 0x7fffffff; return seed % n; };
  const t0 = 1_700_000_000_000;
  for (let round = 0; round < 300; round++) {
    const count = 1 + rnd(40);
    const size = rnd(3) === 0 ? 0 : rnd(200);
    const records: ProducerRecord[] = Array.from({ length: count }, (_, i) => ({
      value: Uint8Array.from({ length: size }, () => rnd(256)), timestamp: t0 + rnd(1000) - 500 + i,
    }));
    const odd = rnd(count); // one record that breaks uniformity, in half the rounds
    switch (round % 8) {
      case 1: records[odd].key = bytes("k"); break;
      case 2: records[odd].headers = [{ key: "h", value: null }]; break;
      case 3: records[odd].value = new Uint8Array(size + 1); break;
      case 4: records[odd].value = null; break;
      default: break;
    }
    const base = BigInt(rnd(1000));
    const batch = encodeBatch(records, { codec: round % 16 === 15 ? "gzip" : "none", baseOffset: base });
    const from = rnd(2) ? -1n : base + BigInt(rnd(count));
    const got = decodeBatches(batch, 3, from);
    const want = records.map((r, i) => ({ offset: base + BigInt(i), r })).filter((x) => x.offset >= from);
    assert.equal(got.length, want.length, `round ${round}`);
    got.forEach((g, i) => {
      const w = want[i];
      assert.equal(g.partition, 3);
      assert.equal(g.offset, w.offset);
      assert.equal(g.timestamp, w.r.timestamp);
      assert.equal(hex(g.key), hex(w.r.key ?? null));
      assert.equal(hex(g.value), hex(w.r.value));
      assert.deepEqual(g.headers.map((h) => [h.key, hex(h.value)]), (w.r.headers ?? []).map((h) => [h.key, hex(h.value)]));
      assert.deepEqual(Object.keys(g), ["partition", "offset", "timestamp", "key", "value", "headers"]);
    });
  }
});

test("a strided-looking section with one bad record is refused naming it", () => {
  const records = Array.from({ length: 5 }, (_, i) => ({ value: bytes(`val${i}`) }));
  const stride = 29 + 4;
  // Record 3's header count set to 1: only the record-by-record path can say what is wrong.
  const b = encodeBatch(records, { codec: "none" });
  new DataView(b.buffer, b.byteOffset).setUint32(HEADER_SIZE + 3 * stride + 25 + 4, 1, true);
  assert.match(refuses(() => decodeBatches(fixCrc(b), 0), "headers"), /record 3 .* truncated headers/);
  // Record 4's length one short: the section no longer splits at the stride.
  const c = encodeBatch(records, { codec: "none" });
  new DataView(c.buffer, c.byteOffset).setUint32(HEADER_SIZE + 4 * stride, stride - 5, true);
  assert.match(refuses(() => decodeBatches(fixCrc(c), 0), "valueLength"), /record 4 .* bad value length 4/);
});
