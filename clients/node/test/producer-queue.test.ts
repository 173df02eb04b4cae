/** The producer's queue against a stand-in for the client (no cluster, no sleeps): sendAll(), the
 * bound on sends waiting for room, and deliveryTimeoutMs on the waits before a batch is sent
 * (the partition count, a producer id). The shared lookup of a topic's partitions. */
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { createServer, type AddressInfo, type Socket } from "node:net";
import { setImmediate as turn } from "node:timers/promises";
import { KolkClient, withinDeadline } from "../src/client.js";
import { InvalidRequestError, KolkError, OutOfOrderSequenceError, OverloadedError, RequestTimeoutError } from "../src/errors.js";
import { partitionForKey, Producer, RECORD_BYTES_MAX, type ProducerOptions } from "../src/producer.js";
import { waitFor } from "./cluster.js";
import { decodeBatches, readHeader, type ConsumerRecord } from "../src/records.js";

const GRACE_MS = 500; // timers' precision and a loaded machine's event-loop lag
const dec = new TextDecoder();

interface Call {
  partition: number; records: ConsumerRecord[]; pid: bigint; seq: number;
  answer: (base: bigint) => void; fail: (e: Error) => void;
}

/** What the producer uses of KolkClient. Produce calls are answered at once (`auto`, offsets
 * counted per partition) or held in `calls` for the test to answer; a held call fails at its
 * `timeoutMs` as a real connection's does. */
class Stub {
  auto = true;
  hang = false; // held calls do not fail at their timeoutMs
  retrying = false; // withLeader retries a retriable error (up to `retries` times), as the client's
  known = true;
  calls: Call[] = [];
  lookup: Promise<unknown[]> | null = null;
  pid: Promise<bigint> | null = null; // else ids 5, 6, ... one a call
  pids = 0;
  private readonly next = new Map<number, bigint>();
  readonly admin = { allocateProducerIds: () => this.pid ?? Promise.resolve(5n + BigInt(this.pids++)) };
  constructor(readonly count = 3) {}

  private parts() { return Array.from({ length: this.count }, (_, i) => ({ partition: i, leader: 1, replicas: [1] })); }
  knownPartitions() { return this.known ? this.parts() : undefined; }
  maxMessageBytes(): Promise<number | null> { return Promise.resolve(null); } // unknown: batchBytes bounds batches
  partitions(topic: string, deadline?: number) {
    return withinDeadline(this.lookup ?? Promise.resolve(this.parts()), deadline, `looking up the partitions of ${topic}`);
  }
  async withLeader(topic: string, partition: number, call: (conn: unknown) => Promise<unknown>, retries: number): Promise<unknown> {
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.attempt(topic, partition, call);
      } catch (e) {
        if (!this.retrying || !(e instanceof KolkError) || !e.retriable || attempt >= retries) throw e;
      }
    }
  }
  private attempt(_topic: string, partition: number, call: (conn: unknown) => Promise<unknown>) {
    let data: Uint8Array = new Uint8Array();
    const produce = { _initRecords: () => ({ copyBuffer: (d: Uint8Array) => { data = d; } }), _initSmartmodules: () => ({}) };
    const conn = {
      spuCall: (build: (q: unknown) => void, _pick: unknown, opts: { timeoutMs: number }) => new Promise((resolve, reject) => {
        build({ _initProduce: () => produce });
        const records = decodeBatches(data, partition);
        const { producerId: pid, baseSequence: seq } = readHeader(data);
        if (this.auto) { resolve({ baseOffset: this.offsets(partition, records.length) }); return; }
        const timer = this.hang ? undefined : setTimeout(() => reject(new RequestTimeoutError("no answer (stub)")), opts.timeoutMs);
        this.calls.push({ partition, records, pid, seq, answer: (b) => { clearTimeout(timer); resolve({ baseOffset: b }); }, fail: (e) => { clearTimeout(timer); reject(e); } });
      }),
    };
    return call(conn);
  }
  private offsets(partition: number, n: number): bigint {
    const base = this.next.get(partition) ?? 0n;
    this.next.set(partition, base + BigInt(n));
    return base;
  }
  /** Answers the held calls, in order, each with the next offsets of its partition. */
  release(): void { for (const c of this.calls.splice(0)) c.answer(this.offsets(c.partition, c.records.length)); }
}

const producer = (stub: Stub, o: ProducerOptions = {}) => new Producer(stub as unknown as KolkClient, "t", { idempotent: false, ...o });
const values = (n: number, size = 100) => Array.from({ length: n }, (_, i) => `${i}`.padEnd(size, "."));

/** `p` settled within `ms`, else a failure naming `what` (the bug this guards against is a hang). */
async function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => { timer = setTimeout(() => reject(new Error(`${what}: not settled within ${ms} ms`)), ms); });
  try { return await Promise.race([p, late]); } finally { clearTimeout(timer); }
}

const timedOut = (e: unknown) => e instanceof RequestTimeoutError && /deliveryTimeoutMs/.test(e.message);

describe("sendAll", () => {
  it("queues every record for one partition, in order, with one key, headers and timestamp; metadata() gives each offset", async () => {
    const stub = new Stub(3);
    const p = producer(stub, { lingerMs: 1000 });
    const first = p.send("x", { partition: partitionForKey(new TextEncoder().encode("k"), 3) });
    const sent = await p.sendAll(values(5), { key: "k", headers: [{ key: "h", value: null }], timestamp: 1234 });
    const after = p.send("y", { key: "k" }); // the same open batch, after sendAll's records
    await p.flush();
    assert.equal(sent.partition, partitionForKey(new TextEncoder().encode("k"), 3));
    assert.equal(sent.length, 5);
    assert.equal((await first).offset, 0n);
    const metas = await sent.metadata();
    assert.deepEqual(metas.map((m) => [m.topic, m.partition, m.offset]), [1n, 2n, 3n, 4n, 5n].map((o) => ["t", sent.partition, o]));
    assert.equal((await after).offset, 6n);
    // Round robin without a key, the named partition with one.
    assert.equal((await p.sendAll(["a"])).partition, 0);
    assert.equal((await p.sendAll(["b"], { partition: 2, key: "k" })).partition, 2);
    assert.deepEqual(await (await p.sendAll([])).metadata(), []);
    await p.close();
  });

  it("writes the records sendAll was given: values, the key, headers and timestamp of each", async () => {
    const stub = new Stub(1);
    stub.auto = false;
    const p = producer(stub, { lingerMs: 1000 });
    const sent = await p.sendAll(["a", null, new Uint8Array([1, 2])], { key: "k", headers: [{ key: "h", value: null }], timestamp: 1234 });
    const flushed = p.flush();
    await waitForCalls(stub, 1);
    const recs = stub.calls[0].records;
    assert.deepEqual(recs.map((r) => (r.value === null ? null : [...r.value])), [[97], null, [1, 2]]);
    assert.ok(recs.every((r) => dec.decode(r.key!) === "k" && r.timestamp === 1234 && r.headers.length === 1 && r.headers[0].key === "h"));
    stub.calls[0].answer(40n);
    await flushed;
    assert.deepEqual((await sent.metadata()).map((m) => m.offset), [40n, 41n, 42n]);
  });

  it("refuses the whole call before anything is queued: a record too large, a value of another type, a partition out of range", async () => {
    const stub = new Stub(2);
    const p = producer(stub, { lingerMs: 0 });
    const tooLarge = [new Uint8Array(10), new Uint8Array(RECORD_BYTES_MAX)];
    await assert.rejects(p.sendAll(tooLarge), (e: Error) => e instanceof InvalidRequestError && /a record of \d+ bytes is more than the largest batch/.test(e.message));
    await assert.rejects(p.sendAll(["a", 5 as never]), (e: Error) => e instanceof InvalidRequestError && /sendAll: value 1 is not a Uint8Array, a string or null \(number\)/.test(e.message));
    await assert.rejects(p.sendAll("ab" as never), (e: Error) => e instanceof InvalidRequestError && /sendAll takes an array of values, not string/.test(e.message));
    await assert.rejects(p.sendAll(["a"], { partition: 2 }), (e: Error) => e instanceof InvalidRequestError && /topic t has partitions 0-1, not 2/.test(e.message));
    await p.flush();
    assert.deepEqual((await p.sendAll(["b"], { partition: 1 }).then((s) => s.metadata())).map((m) => m.offset), [0n], "a refused call queued records");
    await p.close();
    await assert.rejects(p.sendAll(["c"]), /the producer is closed/);
  });

  it("splits across batches at batchBytes; metadata() rejects with the error of a batch that failed", async () => {
    const stub = new Stub(1);
    stub.auto = false;
    const p = producer(stub, { lingerMs: 1000, batchBytes: 1024, retries: 0 });
    const sent = await p.sendAll(values(20)); // 129 bytes a record: 7 a batch
    const flushed = p.flush();
    await waitForCalls(stub, 3);
    assert.deepEqual(stub.calls.map((c) => c.records.length), [7, 7, 6]);
    stub.calls[0].answer(0n);
    stub.calls[1].fail(new KolkError("refused (stub)", { retriable: false }));
    stub.calls[2].answer(14n);
    await flushed;
    await assert.rejects(sent.metadata(), /refused \(stub\)/);
  });

  it("waits for buffer room: it resolves once its last record is in a batch", async () => {
    const stub = new Stub(1);
    stub.auto = false;
    const p = producer(stub, { lingerMs: 0, batchBytes: 1024, bufferBytes: 1024 });
    let queued = false;
    const all = p.sendAll(values(20)).then((s) => { queued = true; return s; });
    await waitForCalls(stub, 1);
    for (let i = 0; i < 5; i++) await turn();
    assert.equal(queued, false, "sendAll resolved with its records not yet in batches (past bufferBytes)");
    while (!queued) {
      await waitForCalls(stub, 1);
      stub.release(); // room for more
      await turn();
    }
    stub.auto = true;
    stub.release();
    await p.flush();
    assert.deepEqual((await (await all).metadata()).map((m) => m.offset), Array.from({ length: 20 }, (_, i) => BigInt(i)));
  });
});

describe("bounds", () => {
  it("sends waiting for room hold at most bufferBytes more; the next is refused with OverloadedError", async () => {
    const stub = new Stub(1);
    stub.auto = false;
    const p = producer(stub, { lingerMs: 0, batchBytes: 1024, bufferBytes: 1024, timeoutMs: 5_000, deliveryTimeoutMs: 5_000 });
    const outcomes: Array<Promise<unknown>> = [];
    let refused: unknown = null;
    for (let i = 0; i < 100 && refused === null; i++) {
      const s = p.send(values(1)[0]);
      outcomes.push(s);
      s.catch((e) => { if (e instanceof OverloadedError) refused = e; });
      await turn(); // a refusal is a promise rejected at once: its handler has run
    }
    assert.ok(refused instanceof OverloadedError, "every send was taken: nothing bounds the sends waiting for room");
    assert.match((refused as Error).message, /the producer's buffer is full: \d+ bytes of records in batches and \d+ more waiting for room \(bufferBytes 1024\)/);
    assert.ok(outcomes.length <= 2 * Math.ceil(1024 / 129) + 1, `${outcomes.length} sends taken for 2 x 1024 bytes`);
    stub.auto = true;
    stub.release();
    await p.close();
    const settled = await Promise.allSettled(outcomes.slice(0, -1));
    assert.deepEqual(settled.filter((s) => s.status === "rejected"), [], "a send taken before the bound failed");
  });

  it("a send waiting for the partition count fails by deliveryTimeoutMs when the lookup does not answer", async () => {
    const stub = new Stub(1);
    stub.known = false;
    stub.lookup = new Promise(() => undefined); // an SC that never answers
    const p = producer(stub, { lingerMs: 0, timeoutMs: 100, deliveryTimeoutMs: 200 });
    const t0 = Date.now();
    await assert.rejects(within(p.send("v"), 200 + GRACE_MS, "a send waiting for the count"), (e: Error) => timedOut(e) && /partitions of t/.test(e.message));
    await assert.rejects(within(p.sendAll(["v"]), 200 + GRACE_MS, "a sendAll waiting for the count"), timedOut);
    assert.ok(Date.now() - t0 <= 400 + 2 * GRACE_MS);
  });

  it("a send behind another waiting for the partition count fails by its own deadline, not the other's", async () => {
    const stub = new Stub(1);
    stub.known = false;
    let answer!: () => void;
    stub.lookup = new Promise((r) => { answer = () => r(Array.from({ length: 1 }, (_, i) => ({ partition: i, leader: 1, replicas: [1] }))); });
    const p = producer(stub, { lingerMs: 0, timeoutMs: 100, deliveryTimeoutMs: 400 });
    const first = p.send("a").then(() => null, (e: Error) => e);
    await new Promise((r) => setTimeout(r, 200)); // the scenario: a second send 200 ms later
    const second = p.send("b");
    // The SC answers after the first send's deadline, before the second's.
    await within(first, 400 + GRACE_MS, "the first send");
    answer();
    assert.ok(timedOut(await first), "the first send did not time out");
    assert.equal((await within(second, 400 + GRACE_MS, "the second send")).offset, 0n);
    await p.close();
  });

  it("an idempotent batch waiting for its producer id fails by deliveryTimeoutMs", async () => {
    const stub = new Stub(1);
    stub.pid = new Promise(() => undefined);
    const p = new Producer(stub as unknown as KolkClient, "t", { lingerMs: 0, timeoutMs: 100, deliveryTimeoutMs: 200 });
    assert.equal(p.idempotent, true);
    const e = await within(p.send("v").then(() => null, (x: Error) => x), 200 + GRACE_MS, "a send waiting for its producer id");
    assert.ok(timedOut(e) && /a producer id from the SC/.test(e!.message) && !(e as KolkError).outcomeUnknown, String(e));
  });

  it("a batch whose producer id request timed out (outcome unknown for the SC) was not sent: outcome known", async () => {
    const stub = new Stub(1);
    stub.pid = Promise.reject(new RequestTimeoutError("no answer from the SC (stub)", { outcomeUnknown: true }));
    const p = new Producer(stub as unknown as KolkClient, "t", { lingerMs: 0 });
    const e = await p.send("v").then(() => null, (x: Error) => x);
    assert.ok(e instanceof RequestTimeoutError && /no answer from the SC/.test(e.message), String(e));
    assert.equal(e.outcomeUnknown, false, "a send that was never sent says its outcome is unknown");
  });

  it("a send that waited for room past its deadline fails without being sent", async () => {
    const stub = new Stub(1);
    stub.auto = false;
    stub.hang = true; // held calls wait for the test, past their timeoutMs
    const p = producer(stub, { lingerMs: 0, batchBytes: 1024, bufferBytes: 1024, maxInFlight: 8, timeoutMs: 100, deliveryTimeoutMs: 200 });
    const first = values(8).map((v) => p.send(v)); // 1032 bytes: the buffer is full
    const firstDone = Promise.allSettled(first);
    const since = Date.now();
    const late = p.send("late").then(() => null, (x: Error) => x);
    await waitForCalls(stub, 8);
    // Room comes only after late's deadline: answer the held calls once it has passed.
    await new Promise((r) => setTimeout(r, since + 200 + 20 - Date.now()));
    stub.release();
    const e = await within(late, 200 + GRACE_MS, "a send waiting for room");
    assert.ok(timedOut(e) && /not sent before its deadline/.test(e!.message) && !(e as KolkError).outcomeUnknown, String(e));
    assert.equal(stub.calls.length, 0, "the late record was sent after its deadline");
    await firstDone;
  });
});

/** `f` run after `k` hops of the microtask queue. */
const afterHops = (k: number, f: () => void): void => { if (k === 0) f(); else void Promise.resolve().then(() => afterHops(k - 1, f)); };

describe("idempotent sequences", () => {
  it("a batch sealed while an older one fails never takes a fresh producer id while a batch of the old one is in flight", async () => {
    // The failure of A reaches the producer some microtask hops after the SPU's answer; B is
    // sealed at each hop in between. B may take A's id (numbered after A2) or wait for A2 to
    // end, never a fresh id at sequence 0 that could be written before A2's retry.
    for (let k = 0; k < 12; k++) {
      const stub = new Stub(1);
      stub.auto = false; stub.hang = true;
      const p = new Producer(stub as unknown as KolkClient, "t", { lingerMs: 0, maxInFlight: 3, retries: 0 });
      const outcomes: Array<Promise<string>> = [];
      const send = (v: string) => outcomes.push(p.send(v).then(() => "ok", (e: Error) => e.message));
      send("a"); await waitForCalls(stub, 1);
      send("a2"); await waitForCalls(stub, 2);
      assert.deepEqual(stub.calls.map((c) => [c.pid, c.seq]), [[5n, 0], [5n, 1]]);
      stub.calls.shift()!.fail(new RequestTimeoutError("lost (stub)", { outcomeUnknown: true, retriable: false }));
      afterHops(k, () => send("b"));
      for (let i = 0; i < 20; i++) await turn();
      const fresh = stub.calls.find((c) => c.pid !== 5n);
      assert.equal(fresh, undefined, `hop ${k}: a batch with a fresh id (${fresh?.pid}, sequence ${fresh?.seq}) sent while A2 (id 5) is in flight`);
      stub.auto = true; stub.release();
      await p.flush();
      stub.release(); // B, sent once A2 ended
      await p.close();
      assert.match((await outcomes[0]) as string, /lost \(stub\)/);
    }
  });
});

describe("idempotent gaps", () => {
  it("a batch refused out of sequence is retried while the batch before it may land, not once that one failed for good", async () => {
    const stub = new Stub(1);
    stub.auto = false; stub.hang = true; stub.retrying = true;
    const p = new Producer(stub as unknown as KolkClient, "t", { lingerMs: 0, maxInFlight: 2, timeoutMs: 1_000, deliveryTimeoutMs: 5_000 });
    const a = p.send("a").then(() => null, (e: Error) => e); await waitForCalls(stub, 1);
    const b = p.send("b").then(() => null, (e: Error) => e); await waitForCalls(stub, 2);
    const outOfOrder = () => new OutOfOrderSequenceError("out of order (stub)", { retriable: true }); // as the SPU answers
    stub.calls[1].fail(outOfOrder()); // A still in flight: B is retried
    await waitForCalls(stub, 3);
    assert.deepEqual(stub.calls.map((c) => [c.pid, c.seq]), [[5n, 0], [5n, 1], [5n, 1]]);
    stub.calls[0].fail(new KolkError("refused (stub)", { retriable: false })); // A: not written, for good
    assert.match(String(await a), /refused \(stub\)/);
    stub.calls[2].fail(outOfOrder());
    const e = await within(b, GRACE_MS, "B once the batch before it failed for good");
    assert.ok(e instanceof OutOfOrderSequenceError && /the batch at sequence 0 before it failed for good/.test(e.message), String(e));
    assert.equal(stub.calls.length, 3, "B was sent again after A failed for good");
    const c = p.send("c"); // the next batch: a fresh id from sequence 0
    await waitForCalls(stub, 4);
    assert.deepEqual([stub.calls[3].pid, stub.calls[3].seq], [6n, 0]);
    stub.calls[3].answer(0n);
    await c; await p.close();
  });
});

describe("expired records", () => {
  it("a record placed past its deadline does not take fresh records of its batch down with it", async () => {
    const stub = new Stub(1);
    stub.auto = false; stub.hang = true;
    const p = producer(stub, { lingerMs: 50, batchBytes: 1024, bufferBytes: 1024, maxInFlight: 8, timeoutMs: 100, deliveryTimeoutMs: 300 });
    const first = Promise.allSettled(values(8).map((v) => p.send(v))); // 1032 bytes: the buffer is full
    const since = Date.now();
    const late = p.send("late").then(() => null, (x: Error) => x);
    await waitForCalls(stub, 2); // 7 records, then 1 after lingerMs
    await new Promise((r) => setTimeout(r, since + 300 + 20 - Date.now())); // the scenario: room only after late's deadline
    stub.auto = true;
    stub.release();
    await turn();
    const fresh = await within(p.send("fresh"), 300 + GRACE_MS, "a fresh send after the late one");
    assert.equal(fresh.partition, 0);
    assert.ok(timedOut(await late));
    await first; await p.close();
  });
});

describe("the client's lookups", () => {
  it("concurrent lookups of a topic's partitions share one pair of SC calls", async () => {
    const client = new KolkClient({ sc: "127.0.0.1:1" });
    let calls = 0;
    let release!: () => void;
    const gate = new Promise<void>((r) => { release = r; });
    (client.admin as any).listObjects = async (kind: string) => {
      calls++;
      await gate;
      return kind === "partition" ? [{ spec: { topic: "t", partition: 0, replicas: [1] }, status: { leader: 1 } }] : [{ spec: { id: 1, public_address: "127.0.0.1:2" } }];
    };
    const lookups = Array.from({ length: 20 }, () => client.refresh("t"));
    release();
    const parts = await Promise.all(lookups);
    assert.equal(calls, 2, `${calls} SC calls for 20 concurrent lookups`);
    assert.ok(parts.every((p) => p[0].leader === 1));
    await client.refresh("t");
    assert.equal(calls, 4, "a lookup after the shared one ended reads the SC again");
    await client.close();
  });

  it("leader() with a deadline ends by it while the lookup hangs; without one it waits for the lookup", async () => {
    const client = new KolkClient({ sc: "127.0.0.1:1" });
    let release!: () => void;
    const gate = new Promise<void>((r) => { release = r; });
    (client.admin as any).listObjects = async () => { await gate; throw new KolkError("the SC answered late (stub)", { retriable: false }); };
    const t0 = Date.now();
    await assert.rejects(within(client.leader("t", 0, t0 + 200), 200 + GRACE_MS, "a leader lookup with a deadline"),
      (e: Error) => e instanceof RequestTimeoutError && /looking up the partitions of t: no answer before the deadline/.test(e.message));
    let settled = false;
    const plain = client.leader("t", 0).finally(() => { settled = true; });
    for (let i = 0; i < 5; i++) await turn();
    assert.equal(settled, false);
    release();
    await assert.rejects(plain, /answered late/);
    await client.close();
  });
});

describe("SC calls with a deadline", () => {
  it("an admin call given a deadline ends by it, its request no longer pending, on an SC that never answers", async () => {
    const sockets: Socket[] = [];
    const silent = createServer((s) => { sockets.push(s); }); // accepts, reads, never answers
    await new Promise<void>((r) => silent.listen(0, "127.0.0.1", r));
    const client = new KolkClient({ sc: `127.0.0.1:${(silent.address() as AddressInfo).port}`, timeoutMs: 10_000 });
    try {
      for (const call of [(until: number): Promise<unknown> => client.admin.listObjects("partition", true, until),
        (until: number) => client.admin.allocateProducerIds(1, until)]) {
        const t0 = Date.now();
        await assert.rejects(within(call(t0 + 200), 200 + GRACE_MS, "an SC call with a deadline"), (e: Error) => e instanceof RequestTimeoutError);
        assert.equal((client.admin as any).conn?.pending.size ?? 0, 0, "the SC call is still pending after its deadline");
      }
      // A lookup of partitions given a deadline passes it to its SC calls.
      await assert.rejects(within(client.partitions("t", Date.now() + 200), 200 + GRACE_MS, "a lookup with a deadline"), RequestTimeoutError);
      // Its SC call's own timer, set a moment after the caller's: ends within the grace.
      await waitFor("the lookup's SC call to end", async () => ((client.admin as any).conn?.pending.size ?? 0) === 0, GRACE_MS);
    } finally {
      await client.close();
      for (const s of sockets) s.destroy();
      silent.close();
    }
  });

  it("a shared lookup that ran out of its caller's deadline is asked again for a caller with a later one", async () => {
    const client = new KolkClient({ sc: "127.0.0.1:1" });
    const asked: Array<number | undefined> = [];
    (client.admin as any).listObjects = (kind: string, _stale: boolean, until?: number) => {
      asked.push(until);
      if (asked.length === 1) return new Promise((_, reject) => setTimeout(() => reject(new RequestTimeoutError("late (stub)")), until! - Date.now()));
      return Promise.resolve(kind === "partition" ? [{ spec: { topic: "t", partition: 0 }, status: { leader: 1 } }] : []);
    };
    const t0 = Date.now();
    const short = client.refresh("t", t0 + 50);
    const long = client.refresh("t", t0 + 5_000);
    await assert.rejects(short, /late \(stub\)/);
    assert.equal((await within(long, 5_000, "the later caller's lookup")).length, 1);
    assert.deepEqual(asked, [t0 + 50, t0 + 5_000, t0 + 5_000]);
    await client.close();
  });
});

/** Waits (turn by turn of the event loop, at most 5 s) for `n` held produce calls. */
async function waitForCalls(stub: Stub, n: number): Promise<void> {
  const deadline = Date.now() + 5_000;
  while (stub.calls.length < n) {
    if (Date.now() > deadline) throw new Error(`${stub.calls.length} produce calls held, not ${n}`);
    await turn();
  }
}
