/** Data safety and clean shutdown against a real SC and SPU (test/cluster.ts): flush and close
 * wait for every record handed to send(), a closed client leaves no socket behind, a closed
 * consumer leaves no stream open, a send ends by deliveryTimeoutMs while the SC hangs, sendAll's
 * records read back. */
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { getEventListeners } from "node:events";
import { InvalidRequestError, KolkClient, Offset, RequestTimeoutError } from "../src/index.js";
import { RECORD_BYTES_MAX } from "../src/producer.js";
import { Cluster, waitFor } from "./cluster.js";

const DEADLINE_MS = 5_000;

/** `p`, or a rejection once DEADLINE_MS passes (a promise that never settles fails the test). */
function within<T>(p: Promise<T>, what: string): Promise<T> {
  let timer: NodeJS.Timeout;
  const late = new Promise<never>((_, reject) => { timer = setTimeout(() => reject(new Error(`${what}: not settled within ${DEADLINE_MS} ms`)), DEADLINE_MS); });
  return Promise.race([p, late]).finally(() => clearTimeout(timer));
}

const tcpSockets = () => ((process as any).getActiveResourcesInfo() as string[]).filter((r) => r === "TCPSocketWrap" || r === "TLSWrap").length;

describe("data safety on a one-SPU cluster", { timeout: 40_000 }, () => {
  const cluster = new Cluster(1);
  let client: KolkClient;
  before(async () => { await cluster.up(); client = new KolkClient({ sc: cluster.sc, timeoutMs: 10_000 }); });
  after(async () => { await client?.close(); await cluster.close(); });

  it("flush() and close() wait for records whose send() still looks the topic up", async () => {
    await client.createTopic("s-flush", { partitions: 2 });
    const p = client.producer("s-flush", { lingerMs: 20 });
    const outcomes: string[] = [];
    const sent = Array.from({ length: 100 }, (_, i) => p.send(`v${i}`).then(() => outcomes.push("ok"), (e) => outcomes.push(String(e))));
    await p.flush();
    assert.equal(outcomes.length, 100, "flush() resolved before every record sent so far had its answer");
    for (let i = 0; i < 10; i++) void p.send(`w${i}`).then(() => outcomes.push("ok"), (e) => outcomes.push(String(e)));
    await p.close();
    assert.equal(outcomes.length, 110, "close() resolved before every record had its answer");
    await Promise.all(sent);
    assert.deepEqual(outcomes.filter((o) => o !== "ok"), []);
  });

  it("client.close() after many concurrent first sends leaves no socket open", async () => {
    await client.createTopic("s-sockets", { partitions: 1 });
    const before = tcpSockets();
    const c = new KolkClient({ sc: cluster.sc, timeoutMs: 10_000 });
    await Promise.all(Array.from({ length: 20 }, () => c.listTopics())); // on a client with no SC connection yet
    const p = c.producer("s-sockets", { lingerMs: 5 });
    await Promise.all(Array.from({ length: 30 }, (_, i) => p.send(`v${i}`)));
    await p.close();
    await c.close();
    await waitFor(`the sockets back to ${before}`, async () => tcpSockets() <= before, DEADLINE_MS)
      .catch(() => assert.fail(`${tcpSockets() - before} socket(s) left open after client.close()`));
  });

  it("a consumer closed while it opens its stream ends its read and leaves no stream open", async () => {
    await client.createTopic("s-open", { partitions: 1 });
    const { address } = await client.leader("s-open", 0);
    const conn = await client.connection(address);
    for (let i = 0; i < 5; i++) {
      const c = client.consumer("s-open", { partition: 0 });
      const read = c.nextBatch();
      c.close();
      await assert.rejects(within(read, "a read of a consumer closed at once"));
    }
    const c = client.consumer("s-open", { partition: 0 });
    const read = c.nextBatch(); // an empty topic: waits for a push
    await waitFor("the stream to open", async () => (conn as any).streams.size === 1, DEADLINE_MS);
    c.close();
    await assert.rejects(within(read, "a read of a consumer closed while it waits"));
    await waitFor("no stream open", async () => (conn as any).streams.size === 0 && (conn as any).pending.size === 0, DEADLINE_MS)
      .catch(() => assert.fail(`${(conn as any).streams.size} stream(s) left open by closed consumers`));
  });

  it("a closed consumer leaves no listener on the caller's AbortSignal", async () => {
    const ac = new AbortController(); // one signal for the whole program, many consumers in turn
    for (let i = 0; i < 20; i++) {
      const c = client.consumer("s-open", { partition: 0, signal: ac.signal });
      c.close();
    }
    assert.equal(getEventListeners(ac.signal, "abort").length, 0, "each closed consumer keeps a listener (and itself) on the signal");
  });

  it("while the SC hangs (SIGSTOP), sends needing it (leader lookup, partition count, producer id) fail by deliveryTimeoutMs", async () => {
    const DELIVERY_MS = 1_000;
    const GRACE_MS = 500; // timers' precision and a loaded machine's event-loop lag
    await client.createTopic("s-hang", { partitions: 1 });
    await client.createTopic("s-hang2", { partitions: 1 });
    const c = new KolkClient({ sc: cluster.sc, timeoutMs: 20_000 }); // the SC's own deadline: far past deliveryTimeoutMs
    const opts = { lingerMs: 0, timeoutMs: 500, deliveryTimeoutMs: DELIVERY_MS };
    const sc = cluster.procs.get("sc")!.pid!;
    let stopped = false;
    try {
      const p = c.producer("s-hang", opts);
      await p.send("warm"); // the count, a producer id, the leader and a connection: all known now
      const fresh = c.producer("s-hang", opts); // knows the count; has no producer id yet
      const unknown = c.producer("s-hang2", opts); // does not know the count
      process.kill(sc, "SIGSTOP");
      stopped = true;
      c.forgetLeaders("s-hang"); // as a retriable error does: the next attempt asks the SC
      const t0 = Date.now();
      const outcomes = await Promise.all([p.send("a"), fresh.send("b"), unknown.send("c")].map((s) =>
        within(s.then(() => null, (e: Error) => e), "a send while the SC hangs")));
      const took = Date.now() - t0;
      // The SC calls end with the sends that waited for them (not at the client's 20 s).
      const scPending = () => (c.admin as any).conn?.pending.size ?? 0;
      await waitFor("the SC calls to end", async () => scPending() === 0, GRACE_MS)
        .catch(() => assert.fail(`${scPending()} SC call(s) still pending after the sends that made them gave up`));
      process.kill(sc, "SIGCONT");
      stopped = false;
      for (const e of outcomes) {
        assert.ok(e instanceof RequestTimeoutError && /deliveryTimeoutMs \(1000 ms\)/.test(e.message) && !e.outcomeUnknown, `not a timeout: ${e}`);
      }
      assert.ok(took <= DELIVERY_MS + GRACE_MS, `the sends settled ${took} ms after they were made (deliveryTimeoutMs ${DELIVERY_MS})`);
      // The SC back: each producer sends again (a fresh lookup, producer id, partition count).
      await within(Promise.all([p.send("a"), fresh.send("b"), unknown.send("c")]), "sends once the SC is back");
      await Promise.all([p.close(), fresh.close(), unknown.close()]);
    } finally {
      if (stopped) process.kill(sc, "SIGCONT");
      await c.close();
    }
  });

  it("sendAll's records are written in order to one partition and read back with the offsets it gave", async () => {
    await client.createTopic("s-all", { partitions: 3 });
    const p = client.producer("s-all", { lingerMs: 5, batchBytes: 4096 });
    const values = Array.from({ length: 200 }, (_, i) => `v${i}`.padEnd(50, "."));
    const sent = await p.sendAll(values, { key: "k" });
    const metas = await within(sent.metadata(), "sendAll's metadata");
    assert.equal(metas.length, 200);
    assert.ok(metas.every((m, i) => m.partition === sent.partition && m.offset === metas[0].offset + BigInt(i)), "offsets not consecutive");
    const dec = new TextDecoder();
    const read: string[] = [];
    for await (const r of client.consumer("s-all", { partition: sent.partition, offset: Offset.absolute(metas[0].offset) })) {
      assert.equal(dec.decode(r.key!), "k");
      read.push(dec.decode(r.value!));
      if (r.offset === metas[199].offset) break;
    }
    assert.deepEqual(read, values);
    await p.close();
  });

  it("a header name is counted in UTF-8 bytes by the size check", async () => {
    const p = client.producer("s-open", { lingerMs: 0 });
    const name = "é".repeat(Math.ceil(RECORD_BYTES_MAX / 2)); // fewer characters than the limit, more bytes
    await assert.rejects(p.send("v", { headers: [{ key: name, value: null }] }),
      (e: Error) => e instanceof InvalidRequestError && /more than the largest batch/.test(e.message));
  });
});
