/** End to end against a real SC and SPU (test/cluster.ts): produce/consume round trips. */
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import v8 from "node:v8";
import { runInNewContext } from "node:vm";
import { ClusterUnavailableError, KolkClient, NotFoundError, InvalidRequestError, Offset, OffsetOutOfRangeError, SmartModuleFailedError, type ConsumerRecord } from "../src/index.js";
import { PartitionReader } from "../src/groups/stream.js";
import { Cluster, freePort, KOLK_BIN, waitFor } from "./cluster.js";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "../../../..");

const dec = new TextDecoder();

async function take(it: AsyncIterable<ConsumerRecord>, n: number): Promise<ConsumerRecord[]> {
  const out: ConsumerRecord[] = [];
  if (n === 0) return out;
  for await (const r of it) { out.push(r); if (out.length >= n) break; }
  return out;
}

describe("a one-SPU cluster", { timeout: 50_000 }, () => {
  const cluster = new Cluster(1);
  let client: KolkClient;
  before(async () => { await cluster.up(); client = new KolkClient({ sc: cluster.sc, timeoutMs: 10_000 }); });
  after(async () => { await client?.close(); await cluster.close(); });

  for (const acks of ["none", "leader", "all"] as const) {
    it(`round trip with acks=${acks}`, { timeout: 15_000 }, async () => {
      const topic = `rt-${acks}`;
      await client.createTopic(topic, { partitions: 2 });
      const p = client.producer(topic, { acks, lingerMs: 2 });
      const metas = await Promise.all(Array.from({ length: 20 }, (_, i) => p.send(`v${i}`, { key: `k${i % 5}` })));
      await p.close();
      for (const m of metas) assert.equal(typeof m.offset, "bigint");
      const got = await take(client.consumer(topic, { offset: Offset.beginning() }), 20);
      assert.deepEqual(got.map((r) => dec.decode(r.value!)).sort(), Array.from({ length: 20 }, (_, i) => `v${i}`).sort());
    });
  }

  it("starts at every kind of position", async () => {
    const topic = "positions";
    await client.createTopic(topic);
    const p = client.producer(topic, { lingerMs: 0 });
    const t0 = Date.now();
    for (let i = 0; i < 10; i++) await p.send(`r${i}`, { timestamp: t0 + i * 1000 });
    await p.close();
    const vals = async (offset: Offset, n: number) =>
      (await take(client.consumer(topic, { partition: 0, offset }), n)).map((r) => dec.decode(r.value!));
    assert.deepEqual(await vals(Offset.beginning(), 3), ["r0", "r1", "r2"]);
    assert.deepEqual(await vals(Offset.absolute(7), 3), ["r7", "r8", "r9"]);
    assert.deepEqual(await vals(Offset.fromEnd(2), 2), ["r8", "r9"]);
    assert.deepEqual(await vals(Offset.timestamp(t0 + 5000), 2), ["r5", "r6"]);
    // end: only what is produced after the consumer started
    const c = client.consumer(topic, { partition: 0, offset: Offset.end() });
    const first = take(c, 1);
    const p2 = client.producer(topic);
    await new Promise((r) => setTimeout(r, 300));
    await p2.send("after");
    await p2.close();
    assert.deepEqual((await first).map((r) => dec.decode(r.value!)), ["after"]);
  });

  it("an unknown topic is a NotFoundError", async () => {
    await assert.rejects(client.producer("no-such-topic").send("x"), NotFoundError);
  });

  it("an address with nothing listening is a ClusterUnavailableError naming it", async () => {
    const dead = `127.0.0.1:${await freePort()}`;
    const c = new KolkClient({ sc: dead, timeoutMs: 1_500 });
    try {
      await assert.rejects(c.listTopics(), (e: Error) => e instanceof ClusterUnavailableError && e.message.includes(dead) && !e.message.includes("\n"));
    } finally { await c.close(); }
  });

  it("a consumer of an unknown topic is a NotFoundError", async () => {
    await assert.rejects(take(client.consumer("no-such-topic"), 1), NotFoundError);
  });

  it("an oversize record is refused before it is sent", async () => {
    await client.createTopic("big");
    await assert.rejects(client.producer("big").send(new Uint8Array(5 << 20)), (e: Error) =>
      e instanceof InvalidRequestError && /record of \d+ bytes/.test(e.message));
  });

  it("a topic's max_message_bytes bounds the producer's batches, as Python's producer", async () => {
    // 4 KiB batches on the topic, 256 KiB by default in the producer: 200 records of 100 B sent
    // at once fill several batches, none past 4 KiB (the SPU would refuse a bigger one whole).
    await client.createTopic("small-batches", { config: { max_message_bytes: "4096" } });
    const p = client.producer("small-batches", { lingerMs: 50 });
    const value = "x".repeat(100);
    const metas = await Promise.all(Array.from({ length: 200 }, () => p.send(value)));
    await p.close();
    assert.deepEqual(metas.map((m) => m.offset), Array.from({ length: 200 }, (_, i) => BigInt(i)));
    assert.equal((await take(client.consumer("small-batches", { offset: Offset.beginning() }), 200)).length, 200);
  });

  it("runs a SmartModule chain on consume", async () => {
    execFileSync(KOLK_BIN, ["smartmodule", "create", "contains", resolve(root, "smartmodule/examples/contains.c"), "--sc", cluster.sc],
      { stdio: "pipe", timeout: 60_000 });
    await client.createTopic("sm");
    const p = client.producer("sm");
    await Promise.all(["apple", "banana", "cherry", "pineapple"].map((v) => p.send(v)));
    await p.close();
    const got = await take(client.consumer("sm", { partition: 0, smartmodules: [{ name: "contains@1", params: { needle: "apple" } }] }), 2);
    assert.deepEqual(got.map((r) => dec.decode(r.value!)), ["apple", "pineapple"]);
    // a parameter the module refuses ends the stream with a typed error naming it
    await assert.rejects(take(client.consumer("sm", { partition: 0, smartmodules: [{ name: "contains@1", params: { needel: "x" } }] }), 1),
      (e: Error) => e instanceof SmartModuleFailedError && /needel/.test(e.message));
  });

  it("npm pack gives a tarball that installs and runs the README's example", async () => {
    const pkg = resolve(root, "clients/node");
    const tmp = mkdtempSync(join(tmpdir(), "kolk-node-pack-"));
    try {
      // dist/ is fresh: npm test built it just now (prepack would build it again).
      const tgz = execFileSync("npm", ["pack", "--ignore-scripts", "--silent", "--pack-destination", tmp], { cwd: pkg, encoding: "utf8" }).trim().split("\n").pop()!;
      writeFileSync(join(tmp, "package.json"), JSON.stringify({ name: "kolk-pack-check", private: true, type: "module" }));
      // Its dependencies are packed from node_modules (the versions package-lock.json pins), so
      // that the install needs no registry: `--offline` alone needs each dependency's registry
      // metadata in npm's cache, which `npm ci` does not put there.
      const deps = execFileSync("npm", ["pack", "--ignore-scripts", "--silent", "--pack-destination", tmp,
        ...Object.keys(JSON.parse(readFileSync(join(pkg, "package.json"), "utf8")).dependencies).map((d) => join(pkg, "node_modules", d))], { cwd: tmp, encoding: "utf8" })
        .trim().split("\n").map((f) => join(tmp, f.trim()));
      execFileSync("npm", ["install", "--offline", "--no-audit", "--no-fund", "--silent", ...deps, join(tmp, tgz)], { cwd: tmp, stdio: "pipe", timeout: 60_000 });
      const readme = readFileSync(join(pkg, "README.md"), "utf8");
      const example = /```js\n([\s\S]*?)```/.exec(readme)![1];
      writeFileSync(join(tmp, "example.mjs"), example);
      const out = execFileSync("node", ["example.mjs"], { cwd: tmp, encoding: "utf8", env: { ...process.env, KOLK_SC: cluster.sc }, timeout: 30_000 });
      assert.match(out, /^0n hello$/m);
      // the same example type-checks as strict TypeScript against the installed declarations
      // (the default lib: DOM's TextDecoder is stricter than @types/node's)
      writeFileSync(join(tmp, "example.ts"), example);
      const tsc = join(pkg, "node_modules/.bin/tsc");
      execFileSync(tsc, ["--noEmit", "--strict", "--skipLibCheck", "--target", "es2022", "--module", "nodenext",
        "--moduleResolution", "nodenext", "--typeRoots", join(pkg, "node_modules/@types"), "--types", "node", "example.ts"],
      { cwd: tmp, encoding: "utf8", timeout: 60_000 });
      // require() from CommonJS is refused in one line that says what to do instead
      writeFileSync(join(tmp, "req.cjs"), 'try { require("@kolk/client"); } catch (e) { console.log(e.message); }');
      const said = execFileSync("node", ["req.cjs"], { cwd: tmp, encoding: "utf8", timeout: 30_000 });
      assert.match(said, /^@kolk\/client is an ES module.*await import\("@kolk\/client"\)/);
    } finally { rmSync(tmp, { recursive: true, force: true }); }
  });

  it("a bad SmartModule chain is an InvalidRequestError", () => {
    assert.throws(() => client.consumer("big", { smartmodules: Array.from({ length: 17 }, () => "x@1") }), InvalidRequestError);
  });

  it("close() ends a for-await loop without an error, as Python's consumer; offset must be an Offset", async () => {
    const topic = "close-ends";
    await client.createTopic(topic, { partitions: 2 });
    const p = client.producer(topic);
    await p.send("one", { partition: 0 });
    await p.close();
    // closed in the loop's body: the loop ends after that record
    const c1 = client.consumer(topic, { partition: 0 });
    const seen: string[] = [];
    for await (const r of c1) { seen.push(dec.decode(r.value!)); c1.close(); }
    assert.deepEqual(seen, ["one"]);
    // closed from another task while the loop waits (partition 1 has nothing)
    const c2 = client.consumer(topic);
    let n = 0;
    for await (const _ of c2) { n++; setImmediate(() => c2.close()); }
    assert.equal(n, 1);
    // closed before its streams were opened: the loop ends at once
    const c3 = client.consumer(topic, { partition: 1, offset: Offset.end() });
    const loop = take(c3, 1);
    c3.close();
    assert.deepEqual(await loop, []);
    // a JavaScript caller's offset: 5 is refused in one line naming the fix
    assert.throws(() => client.consumer(topic, { offset: 5 as unknown as Offset }),
      (e: Error) => e instanceof InvalidRequestError && /Offset\.absolute\(n\)/.test(e.message));
  });

  it("a consumer overtaken by retention gets the range in Python's words; one from the beginning reads what is left, stopAtEnd", { timeout: 20_000 }, async () => {
    const topic = "retained"; // small segments and a small size limit: retention deletes as records arrive
    await client.createTopic(topic, { config: { segment_bytes: "4096", max_message_bytes: "4096", retention_bytes: "16384" } });
    const p = client.producer(topic, { lingerMs: 0, batchBytes: 2048 });
    const value = new Uint8Array(200).fill(7);
    const produce = async (n: number) => { await Promise.all(Array.from({ length: n }, () => p.send(value))); };
    await produce(40); // about 9 KiB: below retention_bytes, nothing deleted yet
    const c = client.consumer(topic, { partition: 0, windowBytes: 1 }); // one batch per push: the rest waits on the SPU
    try {
      const first = await c.poll(5_000);
      assert.equal(first[0]?.offset, 0n);
      const seen = first.map((r) => r.offset);
      await produce(200);
      await waitFor("retention to delete past the consumer's position", async () =>
        (await client.offsets(topic, 0)).logStart > seen[seen.length - 1] + 20n, 15_000);
      const e = await (async () => {
        for (let i = 0; i < 100; i++) { // bounded: a window of one batch holds at most one push
          try { seen.push(...(await c.poll(5_000)).map((r) => r.offset)); } catch (x) { return x as OffsetOutOfRangeError; }
        }
        return null;
      })();
      assert.ok(e instanceof OffsetOutOfRangeError, `not an OffsetOutOfRangeError: ${String(e)}`);
      assert.deepEqual(seen, Array.from({ length: seen.length }, (_, i) => BigInt(i)), "in order, without gaps");
      assert.equal(e.offset, BigInt(seen.length));
      assert.match(e.message, new RegExp(`^offset ${seen.length} of retained-0 is below the log start ${e.logStartOffset} \\(records ${e.logStartOffset}-`));
    } finally { c.close(); await p.close(); }
    const { logStart, logEnd } = await client.offsets(topic, 0);
    const rest: bigint[] = [];
    for await (const r of client.consumer(topic, { partition: 0, stopAtEnd: true })) rest.push(r.offset);
    assert.ok(rest[0] >= logStart, `read from ${rest[0]}, the log start was ${logStart}`);
    assert.deepEqual(rest, Array.from({ length: rest.length }, (_, i) => rest[0] + BigInt(i)), "what is left, in order, to the end");
    assert.equal(rest[rest.length - 1], logEnd - 1n);
  });

  it("a KolkClient without an SC address is one line naming the fix (Python's Client() has a default, this has none)", () => {
    for (const o of [undefined, {}, { sc: "" }, { sc: [] }]) {
      assert.throws(() => new KolkClient(o as unknown as { sc: string }),
        (e: Error) => e instanceof InvalidRequestError && e.message.startsWith("KolkClient needs the SC address: new KolkClient({ sc: \"127.0.0.1:9003\" })"));
    }
  });

  it("a consumer keeps no batch alive once it handed it out", async () => {
    const topic = "no-leak";
    await client.createTopic(topic);
    const p = client.producer(topic, { lingerMs: 0 });
    for (let i = 0; i < 6; i++) await p.send(`r${i}`); // six stored batches
    await p.close();
    v8.setFlagsFromString("--expose-gc");
    const gc = runInNewContext("gc") as () => void;
    // batches(), with and without a signal, and poll() (its race, its timer, the reads it leaves pending).
    for (const [signal, how] of [[undefined, "batches"], [new AbortController().signal, "batches"], [undefined, "poll"]] as const) {
      // A window smaller than a batch: one batch per push.
      const c = client.consumer(topic, { partition: 0, offset: Offset.beginning(), windowBytes: 1, signal });
      const it = c.batches();
      const next = async (): Promise<ConsumerRecord[]> => {
        if (how === "batches") return (await it.next()).value as ConsumerRecord[];
        for (;;) { const b = await c.poll(50); if (b.length) return b; }
      };
      const first = new WeakRef(await next());
      let n = 1;
      while (n < 6) n += (await next()).length;
      await new Promise((r) => setImmediate(r));
      gc();
      assert.equal(first.deref(), undefined, `the first batch is still reachable after five more were read (${how})`);
      await it.return(undefined);
      c.close();
    }
  });

  it("a group's partition reader keeps no push alive once it handed its records out", async () => {
    const topic = "no-leak-group";
    await client.createTopic(topic);
    const p = client.producer(topic, { lingerMs: 0 });
    for (let i = 0; i < 6; i++) await p.send(`r${i}`); // six stored batches
    await p.close();
    v8.setFlagsFromString("--expose-gc");
    const gc = runInNewContext("gc") as () => void;
    const reader = new PartitionReader(client, topic, 0, 0n, 1, 0); // a window under a batch: one batch per push
    try {
      let got = await reader.next();
      while (got.length === 0) got = await reader.next();
      const first = new WeakRef(got[0].value!.buffer); // the push's segment
      let n = got.length;
      got = [];
      while (n < 6) n += (await reader.next()).length;
      await new Promise((r) => setImmediate(r));
      gc();
      assert.equal(first.deref(), undefined, "the first push is still reachable after five more were read");
    } finally { reader.close(); }
  });
});
