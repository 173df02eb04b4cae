/** The leader SPU killed (SIGKILL) under an idempotent acks=all producer (RF 3, 3 SPUs): every
 * acknowledged record is read back exactly once. */
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { KolkClient, Offset } from "../src/index.js";
import { Cluster } from "./cluster.js";

describe("leader failover", { timeout: 60_000 }, () => {
  const cluster = new Cluster(3);
  let client: KolkClient;
  before(async () => { await cluster.up(); client = new KolkClient({ sc: cluster.sc, timeoutMs: 20_000 }); });
  after(async () => { await client?.close(); await cluster.close(); });

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
