/** The client against a hostile server (a fake, written here: the client is what is under test):
 * tiny messages that claim huge work, pushes past the credit, answers to nothing, silence and
 * trickles. Each is a typed one-line error, fast, with bounded memory; and bad input to
 * send() is refused at send(), not in a batch of other records. */
import { after, describe, it } from "node:test";
import assert from "node:assert/strict";
import * as net from "node:net";
import * as $ from "capnp-es";
import { AdminClient } from "../src/admin.js";
import { Connection } from "../src/connection.js";
import { ClusterUnavailableError, InvalidRequestError, KolkError, RequestTimeoutError } from "../src/errors.js";
import { encodeFrame, FrameDecoder, Kind, type Frame } from "../src/framing.js";
import { Push, ScResponse, SpuResponse } from "../src/gen/kolk.js";
import { KolkClient } from "../src/client.js";
import { Offset } from "../src/consumer.js";

type Answer = (sock: net.Socket, f: Frame) => void;

const servers: net.Server[] = [];
after(() => { for (const s of servers) s.close(); });

/** A server on 127.0.0.1 that calls `answer` for each REQUEST frame. */
async function fakeServer(answer: Answer): Promise<string> {
  const server = net.createServer((sock) => {
    const dec = new FrameDecoder();
    sock.on("error", () => undefined);
    sock.on("data", (d) => { for (const f of dec.feed(d)) if (f.kind === Kind.REQUEST) answer(sock, f); });
  });
  servers.push(server);
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  server.unref();
  return `127.0.0.1:${(server.address() as net.AddressInfo).port}`;
}

const bytesOf = (m: $.Message) => new Uint8Array(m.toArrayBuffer());

function clusterStatusCall(conn: Connection, timeoutMs = 5_000): Promise<unknown> {
  return conn.scCall((q) => { q._initClusterStatus(); }, (s) => s.clusterStatus.statusJson, { timeoutMs });
}

/** A listObjects answer whose `objects` list announces `count` structs of no size: ~130 bytes. */
function hugeEmptyList(count: number): Uint8Array {
  const m = new $.Message();
  const lo = m.initRoot(ScResponse)._initListObjects();
  lo._initResult().ok = true;
  lo._initObjects(1).get(0).kind = "x";
  const buf = bytesOf(m);
  const v = new DataView(buf.buffer);
  // The composite list's pointer (word 5 of the segment) and its tag word (word 8).
  assert.equal(v.getUint32(8 + 5 * 8 + 4, true) & 7, 7);
  v.setUint32(8 + 5 * 8 + 4, 7, true); // composite, 0 words
  v.setUint32(8 + 8 * 8, (count << 2) >>> 0, true); // count elements...
  v.setUint32(8 + 8 * 8 + 4, 0, true); // ...of 0 data words, 0 pointers
  return buf;
}

describe("a hostile server", () => {
  it("16 bytes announcing 2^31 segments: a malformed-message error, not a GiB", async () => {
    const body = new Uint8Array(16);
    new DataView(body.buffer).setUint32(0, 0x7fffffff, true);
    const address = await fakeServer((sock, f) => sock.write(encodeFrame(Kind.RESPONSE, f.id, body)));
    const conn = await Connection.connect(address);
    try {
      const rss = process.memoryUsage().rss;
      const t0 = Date.now();
      const err = await clusterStatusCall(conn).then(() => null, (e) => e);
      assert.ok(err instanceof KolkError, String(err));
      assert.equal(err.code, "malformed");
      assert.match(err.message, /2147483648 segments/);
      assert.ok(!err.message.includes("\n"));
      assert.ok(Date.now() - t0 < 1_000, `${Date.now() - t0} ms`);
      assert.ok(process.memoryUsage().rss - rss < 100 << 20);
      // A body that is no Cap'n Proto at all, then a good answer: the connection still serves.
    } finally { conn.close(); }
  });

  it("a list announcing 16 M empty structs in 130 bytes: refused before capnp-es copies it into 640 MB", async () => {
    const address = await fakeServer((sock, f) => sock.write(encodeFrame(Kind.RESPONSE, f.id, hugeEmptyList(1 << 24))));
    const admin = new AdminClient(address, { timeoutMs: 5_000 });
    try {
      const t0 = Date.now();
      const err = await admin.listObjects("topic").then(() => null, (e) => e);
      assert.ok(err instanceof KolkError, String(err));
      assert.equal(err.code, "malformed");
      assert.match(err.message, /not a well-formed message: reading it would traverse more than 131072 words/);
      assert.ok(Date.now() - t0 < 500, `${Date.now() - t0} ms`);
    } finally { admin.close(); }
  });

  it("a body that is not Cap'n Proto, an answer to a request never sent: typed, and the connection serves on", async () => {
    let n = 0;
    const address = await fakeServer((sock, f) => {
      n++;
      if (n === 1) { sock.write(encodeFrame(Kind.RESPONSE, f.id, new TextEncoder().encode("HTTP/1.1 400 Bad Request\r\n\r\n"))); return; }
      const m = new $.Message();
      const cs = m.initRoot(ScResponse)._initClusterStatus();
      cs._initResult().ok = true;
      cs.statusJson = "{}";
      sock.write(encodeFrame(Kind.RESPONSE, f.id + 1000, bytesOf(m))); // an id never sent: ignored
      sock.write(encodeFrame(Kind.RESPONSE, f.id, bytesOf(m)));
    });
    const conn = await Connection.connect(address);
    try {
      const err = await clusterStatusCall(conn).then(() => null, (e) => e);
      assert.ok(err instanceof KolkError && err.code === "malformed", String(err));
      assert.equal(await clusterStatusCall(conn), "{}");
    } finally { conn.close(); }
    // A status that is not JSON: typed too.
    const notJson = await fakeServer((sock, f) => {
      const m = new $.Message();
      const cs = m.initRoot(ScResponse)._initClusterStatus();
      cs._initResult().ok = true;
      cs.statusJson = "<html>";
      sock.write(encodeFrame(Kind.RESPONSE, f.id, bytesOf(m)));
    });
    const admin = new AdminClient(notJson, { timeoutMs: 2_000 });
    try {
      const err = await admin.clusterStatus().then(() => null, (e) => e);
      assert.ok(err instanceof KolkError && err.code === "malformed" && /not JSON/.test(err.message), String(err));
    } finally { admin.close(); }
  });

  it("pushes past the stream's credit fail the connection instead of filling memory", async () => {
    const push = (() => {
      const m = new $.Message();
      m.initRoot(Push)._initStream()._initRecords(1 << 20);
      return bytesOf(m);
    })();
    const address = await fakeServer((sock, f) => {
      const m = new $.Message();
      m.initRoot(SpuResponse)._initStream()._initResult().ok = true;
      sock.write(encodeFrame(Kind.RESPONSE, f.id, bytesOf(m)));
      for (let i = 0; i < 24; i++) sock.write(encodeFrame(Kind.PUSH, f.id, push)); // 24 MiB, window 64 KiB
      sock.end();
    });
    const conn = await Connection.connect(address);
    try {
      const stream = await conn.openStream((q) => { const s = q._initStream(); s.topic = "t"; s.windowBytes = 64 << 10; });
      let taken = 0;
      const err = await (async () => { for (;;) { await stream.next(); taken++; } })().then(() => null, (e) => e);
      assert.ok(err instanceof ClusterUnavailableError, String(err));
      assert.match(err.message, /pushed past the credit of stream/);
      assert.ok(taken <= 17, `${taken} pushes were taken`);
    } finally { conn.close(); }
  });

  it("a server that reads nothing: calls wait for room (4 MiB unread at most) and time out unsent", async () => {
    let serverSock: net.Socket | null = null;
    const server = net.createServer((sock) => { serverSock = sock; sock.pause(); sock.on("error", () => undefined); });
    servers.push(server);
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    server.unref();
    const conn = await Connection.connect(`127.0.0.1:${(server.address() as net.AddressInfo).port}`);
    try {
      const value = new Uint8Array(1 << 20);
      const calls = Array.from({ length: 48 }, () => conn.spuCall((q) => {
        const p = q._initProduce(); p.topic = "t"; p._initRecords(value.length).copyBuffer(value);
      }, (r) => r.produce, { timeoutMs: 400, write: true }).then(() => null, (e) => e));
      await new Promise((r) => setImmediate(r)); // every call has written or queued its frame
      const unread = (conn as unknown as { socket: net.Socket }).socket.writableLength;
      assert.ok(unread <= (5 << 20) + 64, `${unread} bytes wait in the client's socket buffer`);
      const errs = await Promise.all(calls);
      assert.ok(errs.every((e) => e instanceof RequestTimeoutError), String(errs.find((e) => !(e instanceof RequestTimeoutError))));
      const unsent = errs.filter((e) => /was not sent within 400 ms/.test(e.message));
      assert.ok(unsent.length > 0 && unsent.every((e) => !e.outcomeUnknown));
    } finally { conn.close(); (serverSock as net.Socket | null)?.destroy(); }
  });

  it("a frame announcing 4 GiB, silence, and a trickle: each a typed error within its deadline", async () => {
    const huge = Buffer.alloc(16);
    huge.writeUInt32LE(0xffffffff, 0); huge.writeUInt8(Kind.RESPONSE, 8);
    const timers: NodeJS.Timeout[] = [];
    const a4g = await fakeServer((sock, f) => { huge.writeUInt32LE(f.id, 4); sock.write(huge); });
    const silent = await fakeServer(() => undefined);
    const trickle = await fakeServer((sock, f) => {
      const frame = encodeFrame(Kind.RESPONSE, f.id, new Uint8Array(64));
      let i = 0;
      const t = setInterval(() => { if (i < frame.length && !sock.destroyed) sock.write(frame.subarray(i, ++i)); }, 20);
      timers.push(t);
    });
    try {
      const c1 = await Connection.connect(a4g);
      const e1 = await clusterStatusCall(c1).then(() => null, (e) => e);
      assert.ok(e1 instanceof ClusterUnavailableError && /4294967295 bytes announced/.test(e1.message), String(e1));
      for (const address of [silent, trickle]) {
        const c = await Connection.connect(address);
        const t0 = Date.now();
        const e = await clusterStatusCall(c, 300).then(() => null, (x) => x);
        assert.ok(e instanceof RequestTimeoutError, String(e));
        assert.ok(Date.now() - t0 < 1_000);
        c.close();
      }
    } finally { for (const t of timers) clearInterval(t); }
  });
});

describe("options with bad input", () => {
  it("NaN, Infinity and fractions are refused where a whole number is needed", () => {
    const client = new KolkClient({ sc: "127.0.0.1:1", timeoutMs: 200 });
    for (const o of [{ batchBytes: NaN }, { bufferBytes: NaN }, { bufferBytes: Infinity }, { maxInFlight: 2.5 },
      { timeoutMs: NaN }, { retries: -1 }, { lingerMs: NaN }, { acks: "al" }, { acks: "toString" },
      { compression: "lz4" }, { smartmodules: Array(17).fill("m@1") }]) {
      assert.throws(() => client.producer("t", { idempotent: false, ...o } as object), InvalidRequestError, JSON.stringify(o));
    }
    for (const make of [() => Offset.absolute(NaN), () => Offset.absolute(1.5), () => Offset.fromEnd(Infinity),
      () => Offset.timestamp(NaN), () => Offset.absolute(2n ** 63n), () => Offset.absolute("3" as unknown as number)]) {
      assert.throws(make, InvalidRequestError);
    }
    assert.throws(() => new KolkClient({ sc: "127.0.0.1:1", timeoutMs: NaN }), InvalidRequestError);
    assert.equal(Offset.absolute(7).value, 7n);
  });
});

describe("send() with bad input", () => {
  it("a value, key, header or timestamp of the wrong type is refused at send()", async () => {
    const client = new KolkClient({ sc: "127.0.0.1:1", timeoutMs: 200 });
    const producer = client.producer("t", { idempotent: false, acks: "leader" });
    try {
      for (const [value, opts] of [
        [42, {}], [{ a: 1 }, {}], [new Uint16Array(4), {}], [new Uint8Array(1), { key: 7 }],
        [new Uint8Array(1), { timestamp: NaN }], [new Uint8Array(1), { timestamp: 1.5 }],
        [new Uint8Array(1), { headers: [{ key: 1, value: null }] }],
        [new Uint8Array(1), { headers: [{ key: "k", value: "v" }] }], [new Uint8Array(1), { headers: "h" }],
      ] as Array<[unknown, object]>) {
        const err = await producer.send(value as Uint8Array, opts).then(() => null, (e) => e);
        assert.ok(err instanceof InvalidRequestError, `${JSON.stringify(value)} ${JSON.stringify(opts)}: ${err}`);
      }
    } finally { await client.close(); }
  });
});
