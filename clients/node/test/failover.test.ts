/** The leader SPU killed (SIGKILL) under an idempotent acks=all producer (RF 3, 3 SPUs): every
 * acknowledged record is read back exactly once. */
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { KolkClient, KolkError, Offset, RequestTimeoutError } from "../src/index.js";
import { Cluster, waitFor } from "./cluster.js";
import { PartitionReader } from "../src/groups/stream.js";

describe("leader failover", { timeout: 60_000 }, () => {
  const cluster = new Cluster(3);
  let client: KolkClient;
  before(async () => { await cluster.up(); client = new KolkClient({ sc: cluster.sc, timeoutMs: 20_000 }); });
  after(async () => { await client?.close(); await cluster.close(); });

  it("a leader that hangs (SIGSTOP): later sends and reading consumers (plain, group) move to the new leader", { timeout: 30_000 }, async () => {
    const w = new KolkClient({ sc: cluster.sc, timeoutMs: 10_000 });
    const r = new KolkClient({ sc: cluster.sc, timeoutMs: 10_000 });
    const dec = new TextDecoder();
    const got: string[] = [];
    const c = r.consumer("hang", { partition: 0, offset: Offset.beginning() });
    const groupRead: string[] = [];
    const g = new KolkClient({ sc: cluster.sc, timeoutMs: 10_000 }); // its own connections: none closed by the consumer's probe
    const reader = new PartitionReader(g, "hang", 0, 0n, 1 << 20, 0); // a group member's stream of one partition
    let done = false;
    let stopped: number | undefined;
    try {
      await w.createTopic("hang", { partitions: 1, replicationFactor: 3 });
      const p = w.producer("hang", { lingerMs: 0, timeoutMs: 2_000 });
      for (let i = 0; i < 5; i++) await p.send(`a${i}`);
      void (async () => { for await (const rec of c) got.push(dec.decode(rec.value!)); })().catch(() => undefined);
      void (async () => { while (!done) for (const rec of await reader.next()) groupRead.push(dec.decode(rec.value!)); })().catch(() => undefined);
      await waitFor("the first records read", async () => got.length === 5 && groupRead.length === 5, 10_000);
      const leader = (await w.refresh("hang"))[0].leader;
      stopped = cluster.procs.get(`spu${leader}`)!.pid!;
      process.kill(stopped, "SIGSTOP");
      // A send on the hung leader is retried (its own deadline per attempt) and lands on the
      // leader the SC elects; the sends after it too.
      const acked: string[] = [];
      let n = 0;
      await waitFor("a send acknowledged by a new leader", async () => {
        const v = `b${n++}`;
        try { await p.send(v); acked.push(v); return true; } catch { return false; }
      }, 20_000);
      await waitFor(`the consumer to read ${acked[0]} from the new leader`, async () => got.includes(acked[0]), 15_000)
        .catch(() => assert.fail(`the consumer stalled on the hung leader after ${got.join(",")}`));
      await waitFor(`the group reader to read ${acked[0]}`, async () => groupRead.includes(acked[0]), 5_000)
        .catch(() => assert.fail(`the group reader stalled on the hung leader after ${groupRead.join(",")}`));
      assert.equal(new Set(groupRead).size, groupRead.length, `a record read twice: ${groupRead.join(",")}`);
      assert.deepEqual(got.slice(0, 5), ["a0", "a1", "a2", "a3", "a4"]);
      assert.equal(new Set(got).size, got.length, `a record read twice: ${got.join(",")}`);
      await p.close();
    } finally {
      done = true; c.close(); reader.close();
      if (stopped !== undefined) process.kill(stopped, "SIGCONT");
      await w.close(); await r.close(); await g.close();
      // The next test places a topic on all three SPUs.
      await waitFor("all SPUs alive", async () => (await client.clusterStatus()).spus.every((s: { alive: boolean }) => s.alive), 15_000);
    }
  });

  it("sends issued while the leader hangs (SIGSTOP) are retried on the new leader, each record once; the hung connection is dropped", { timeout: 30_000 }, async () => {
    // Each attempt has its own timeoutMs (+1 s); deliveryTimeoutMs bounds them all (issue 23 R3).
    const w = new KolkClient({ sc: cluster.sc, timeoutMs: 10_000 });
    const w2 = new KolkClient({ sc: cluster.sc, timeoutMs: 10_000 });
    let stopped: number | undefined;
    try {
      await w.createTopic("hung", { partitions: 1, replicationFactor: 3 });
      const p = w.producer("hung", { lingerMs: 0, timeoutMs: 1_500, deliveryTimeoutMs: 25_000 });
      assert.equal(p.idempotent, true);
      for (let i = 0; i < 3; i++) await p.send(`a${i}`);
      // Not idempotent: a batch whose outcome is unknown is not sent again (it could be written twice).
      const plain = w2.producer("hung", { idempotent: false, lingerMs: 0, timeoutMs: 1_500, deliveryTimeoutMs: 25_000 });
      await plain.send("n0");
      const placed = (await w.refresh("hung"))[0];
      const hung = await w.connection(cluster.spuAddresses.get(placed.leader!)!);
      stopped = cluster.procs.get(`spu${placed.leader}`)!.pid!;
      process.kill(stopped, "SIGSTOP");
      const sent = Array.from({ length: 5 }, (_, i) => `b${i}`);
      const unknown = plain.send("n1").then(() => assert.fail("a non-idempotent send to a hung leader was acknowledged"), (e: KolkError) => e);
      const results = await Promise.allSettled(sent.map((v) => p.send(v)));
      const e = await unknown;
      assert.ok(e instanceof RequestTimeoutError && e.outcomeUnknown, `not an outcome-unknown timeout: ${e}`);
      const failed = results.flatMap((r, i) => (r.status === "rejected" ? [`${sent[i]}: ${(r.reason as Error).message}`] : []));
      assert.deepEqual(failed, [], "sends on the hung leader failed instead of moving to the new leader");
      assert.ok(hung.closed, "the connection whose request got no answer is still pooled and open");
      await p.close();
      const dec = new TextDecoder();
      const seen: string[] = [];
      const { highWatermark } = await w.offsets("hung", 0);
      for await (const r of w.consumer("hung", { partition: 0, offset: Offset.beginning() })) {
        seen.push(dec.decode(r.value!));
        if (r.offset + 1n >= highWatermark) break;
      }
      assert.deepEqual(seen, ["a0", "a1", "a2", "n0", ...sent]);
    } finally {
      if (stopped !== undefined) process.kill(stopped, "SIGCONT");
      await w.close(); await w2.close();
      await waitFor("all SPUs alive", async () => (await client.clusterStatus()).spus.every((s: { alive: boolean }) => s.alive), 15_000);
    }
  });

  it("loses and duplicates no acknowledged record", async () => {
    await client.createTopic("fo", { partitions: 1, replicationFactor: 3 });
    const p = client.producer("fo", { acks: "all", lingerMs: 2, timeoutMs: 10_000 });
    assert.equal(p.idempotent, true);
    const acked = new Set<string>();
    const sendRound = async (from: number, n: number) => {
      const results = await Promise.allSettled(Array.from({ length: n }, (_, i) => p.send(`r${from + i}`)));
      results.forEach((r, i) => { if (r.status === "fulfilled") acked.add(`r${from + i}`); });
    };
    await sendRound(0, 50);
    assert.equal(acked.size, 50);
    const leader = (await client.refresh("fo"))[0].leader;
    assert.notEqual(leader, null);
    const sending = (async () => { for (let k = 1; k <= 10; k++) await sendRound(k * 50, 50); })();
    await new Promise((r) => setTimeout(r, 50));
    await cluster.kill(`spu${leader}`);
    await sending;
    await p.close();
    assert.notEqual((await client.refresh("fo"))[0].leader, leader, "the killed SPU still leads");
    assert.ok(acked.size >= 100, `only ${acked.size} records acknowledged`);
    if (process.env.KOLK_TEST_VERBOSE) console.log(`acknowledged ${acked.size} of 550`);
    const seen = new Map<string, number>();
    const dec = new TextDecoder();
    const { highWatermark } = await client.offsets("fo", 0);
    if (highWatermark > 0n) {
      for await (const r of client.consumer("fo", { partition: 0, offset: Offset.beginning() })) {
        const v = dec.decode(r.value!);
        seen.set(v, (seen.get(v) ?? 0) + 1);
        if (r.offset + 1n >= highWatermark) break;
      }
    }
    for (const v of acked) assert.equal(seen.get(v), 1, `${v} acknowledged, read ${seen.get(v) ?? 0} times`);
  });
});
