/** Consumer groups end to end (test/cluster.ts: a real SC and SPU): two Node members share a
 * topic, a closing member's partitions go on from its commits, a Python and a Node member split
 * one group's partitions. */
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join, resolve, dirname } from "node:path";
import { createInterface } from "node:readline";
import { FencedInstanceError, InUseError, InvalidRequestError, KolkClient, NotFoundError, type ConsumerRecord, type GroupConsumer } from "../src/index.js";
import { Cluster, KOLK_BIN, waitFor } from "./cluster.js";

const PYTHON = process.env.KOLK_PYTHON ?? resolve(dirname(KOLK_BIN), "python");
const TOPIC = "shared";
const OPTS = { sessionTimeoutMs: 6000, autoCommitIntervalMs: 200, start: "beginning" as const };

async function produce(client: KolkClient, n: number, from: number): Promise<void> {
  const p = client.producer(TOPIC, { lingerMs: 2 });
  await Promise.all(Array.from({ length: n }, (_, i) => p.send(`v${from + i}`, { key: `k${from + i}` })));
  await p.close();
}

/** Polls every consumer until `until()` holds (each poll is a boundary: assignments move there). */
async function pollUntil(what: string, members: GroupConsumer[], got: Map<GroupConsumer, ConsumerRecord[]>, until: () => boolean, ms = 15_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!until()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}\n${diagnose()}`);
    const batches = await Promise.all(members.map((m) => m.poll(100)));
    members.forEach((m, i) => got.set(m, [...(got.get(m) ?? []), ...batches[i]]));
  }
}

let diagnose = () => ""; // the cluster's logs, for a failure's message
const key = (r: ConsumerRecord) => `${r.partition}@${r.offset}`;

describe("consumer groups on a one-SPU cluster", { timeout: 60_000 }, () => {
  const cluster = new Cluster(1);
  let client: KolkClient;
  before(async () => {
    diagnose = () => [...cluster.procs].map(([n, p]) => `${n}: pid ${p.pid} exit ${p.exitCode} signal ${p.signalCode}`).join("\n") + "\n" + cluster.logs();
    await cluster.up();
    client = new KolkClient({ sc: cluster.sc, timeoutMs: 10_000 });
    await client.createTopic(TOPIC, { partitions: 4 });
  });
  after(async () => { await client?.close(); await cluster.close(); });

  it("two members share the partitions; a closing member's partitions go on from its commits", async () => {
    const events: string[] = [];
    const a = client.groupConsumer(TOPIC, { group: "g1", ...OPTS,
      onAssigned: (ps, gen) => { assert.ok(gen > 0); events.push(`assigned ${ps.map((tp) => tp.partition)}`); },
      onRevoked: (ps) => { events.push(`revoked ${ps.map((tp) => tp.partition)}`); } });
    const b = client.groupConsumer(TOPIC, { group: "g1", ...OPTS });
    try {
      const got = new Map<GroupConsumer, ConsumerRecord[]>();
      await pollUntil("2 partitions each", [a, b], got, () => a.assignment().length === 2 && b.assignment().length === 2);
      assert.deepEqual([...a.assignment(), ...b.assignment()].map((tp) => tp.partition).sort(), [0, 1, 2, 3]);
      await produce(client, 40, 0);
      const all = () => [...(got.get(a) ?? []), ...(got.get(b) ?? [])];
      await pollUntil("40 records", [a, b], got, () => all().length >= 40);
      assert.equal(all().length, 40);
      assert.equal(new Set(all().map(key)).size, 40, "every record read once across the members");
      const aParts = new Set(a.assignment().map((tp) => tp.partition));
      for (const r of got.get(a)!) assert.ok(aParts.has(r.partition));
      assert.ok(a.memberId !== "" && a.memberId !== b.memberId);

      await a.commit();
      const aPositions = a.positions();
      await a.close();
      assert.ok(events.length >= 2 && events[events.length - 1] === `revoked ${[...aParts].sort()}`, events.join("; "));
      await pollUntil("b holds all 4", [b], got, () => b.assignment().length === 4);
      await produce(client, 20, 40);
      const before = got.get(b)!.length;
      await pollUntil("20 more records", [b], got, () => got.get(b)!.length - before >= 20);
      const later = got.get(b)!.slice(before);
      assert.equal(later.length, 20);
      for (const r of later) {
        const from = aPositions.get(r.partition);
        if (from !== undefined) assert.ok(r.offset >= from, `partition ${r.partition} restarted at ${r.offset}, before a's commit ${from}`);
      }
      const d = await client.describeGroup("g1");
      assert.equal(d.members.length, 1);
      await b.commit({ 0: 1n });  // a chosen offset: the next to read
      await assert.rejects(b.commit({ 0: -1 }), /offset to commit for shared-0 must be an integer >= 0, not -1/);
      const committed = (await client.describeGroup("g1")).offsets as { topic: string; partition: number; offset: number }[];
      assert.equal(committed.find((o) => o.topic === TOPIC && o.partition === 0)?.offset, 1);
    } finally {
      await a.close();
      await b.close();
    }
    assert.ok((await client.listGroups()).some((g) => g.group === "g1"));
    await client.deleteGroup("g1");
    await assert.rejects(client.describeGroup("g1"), NotFoundError);
  });

  it("a Python member and a Node member split one group's partitions", async () => {
    const stop = join(cluster.root, "py.stop");
    const script = join(cluster.root, "member.py");
    writeFileSync(script, [
      "import json, os, sys, time, kolk",
      "sc, topic, group, stop = sys.argv[1:5]",
      "with kolk.Client(sc) as client:",
      "    c = client.consumer(topic, group=group, session_timeout_ms=6000)",
      "    last, end = None, time.time() + 40",
      "    while time.time() < end and not os.path.exists(stop):",
      "        c.poll(0.1)",
      "        now = sorted(tp.partition for tp in c.assignment())",
      "        if now != last:",
      "            print(json.dumps(now), flush=True)",
      "            last = now",
      "    c.close()",
    ].join("\n"));
    const py = spawn(PYTHON, [script, cluster.sc, TOPIC, "mixed", stop], { stdio: ["ignore", "pipe", "inherit"] });
    let pyHolds: number[] = [];
    createInterface({ input: py.stdout! }).on("line", (line) => { pyHolds = JSON.parse(line); });
    const node = client.groupConsumer(TOPIC, { group: "mixed", ...OPTS });
    try {
      await waitFor("the Python member to join", async () => pyHolds.length > 0, 20_000);
      const got = new Map<GroupConsumer, ConsumerRecord[]>();
      await pollUntil("a 2 + 2 split", [node], got, () => node.assignment().length === 2 && pyHolds.length === 2, 20_000);
      const mine = node.assignment().map((tp) => tp.partition);
      assert.deepEqual([...mine, ...pyHolds].sort(), [0, 1, 2, 3]);
      const d = await client.describeGroup("mixed");
      assert.equal(d.members.length, 2);
      await assert.rejects(client.deleteGroup("mixed"), InUseError);
    } finally {
      await node.close();
      writeFileSync(stop, "");
      if (py.exitCode === null) {
        const gone = new Promise((r) => py.once("exit", r));
        const t = setTimeout(() => { if (py.exitCode === null && py.pid) process.kill(py.pid, "SIGKILL"); }, 10_000);
        await gone;
        clearTimeout(t);
      }
    }
  });

  it("a second process with the same groupInstanceId fences the first", async () => {
    const first = client.groupConsumer(TOPIC, { group: "static", ...OPTS, groupInstanceId: "ledger-1" });
    const second = client.groupConsumer(TOPIC, { group: "static", ...OPTS, groupInstanceId: "ledger-1" });
    try {
      const got = new Map<GroupConsumer, ConsumerRecord[]>();
      await pollUntil("the first to hold all 4", [first], got, () => first.assignment().length === 4);
      await pollUntil("the second to take the member over", [second], got, () => second.assignment().length === 4);
      await assert.rejects(pollUntil("the fence", [first], got, () => false), FencedInstanceError);
      assert.equal(first.assignment().length, 0);
    } finally {
      await first.close();
      await second.close();
    }
  });

  it("bad group names are refused by the admin calls before anything is sent", async () => {
    await assert.rejects(client.describeGroup(""), /the group name is empty/);
    await assert.rejects(client.deleteGroup(".."), /group name ".." is invalid/);
  });

  it("bad options are refused before anything is sent", () => {
    assert.throws(() => client.groupConsumer(TOPIC, { group: "a/b" }), InvalidRequestError);
    assert.throws(() => client.groupConsumer(TOPIC, { group: "g", windowBytes: 10 }), /windowBytes must be/);
    assert.throws(() => client.groupConsumer(TOPIC, { group: "g", isolation: "dirty" as never }), /isolation must be/);
  });

  it("a group consumer of a missing topic fails its first poll with NotFoundError", async () => {
    const c = client.groupConsumer("no-such-topic", { group: "g3" });
    await assert.rejects(c.poll(100), NotFoundError);
    await c.close();
  });

  it("an aborted signal ends iteration with an AbortError", async () => {
    const ac = new AbortController();
    const c = client.groupConsumer(TOPIC, { group: "g4", ...OPTS, signal: ac.signal });
    setTimeout(() => ac.abort(), 300);
    await assert.rejects((async () => { for await (const r of c) void r; })(), { name: "AbortError" });
    await c.close();
  });
});
