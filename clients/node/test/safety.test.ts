/** Data safety and clean shutdown against a real SC and SPU (test/cluster.ts): flush and close
 * wait for every record handed to send(), a closed client leaves no socket behind, a closed
 * consumer leaves no stream open. */
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { getEventListeners } from "node:events";
import { InvalidRequestError, KolkClient } from "../src/index.js";
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

  it("a header name is counted in UTF-8 bytes by the size check", async () => {
    const p = client.producer("s-open", { lingerMs: 0 });
    const name = "é".repeat(Math.ceil(RECORD_BYTES_MAX / 2)); // fewer characters than the limit, more bytes
    await assert.rejects(p.send("v", { headers: [{ key: name, value: null }] }),
      (e: Error) => e instanceof InvalidRequestError && /more than the largest batch/.test(e.message));
  });
});
