// The Node client's side of tests/test_cross_client.py.
//   node cross_client.mjs produce SC TOPIC CODEC < records.jsonl   -> one JSON line: the offsets
//   node cross_client.mjs consume SC TOPIC COUNT                    -> one JSON line: the records
// A record is {"key", "value", "timestamp", "headers": [[name, hex|null]]}, bytes as hex, null
// for null; consumed ones also carry "partition" and "offset". Exits 1 with one line on stderr.
import { readFileSync } from "node:fs";
import { KolkClient } from "../../clients/node/dist/src/index.js";

const unhex = (s) => (s === null ? null : new Uint8Array(Buffer.from(s, "hex")));
const hex = (b) => (b === null ? null : Buffer.from(b).toString("hex"));
const DEADLINE_MS = 30_000;

async function produce(client, topic, codec) {
  const lines = readFileSync(0, "utf8").split("\n").filter((l) => l.trim());
  // Routes first: concurrent first sends each look the topic up, and the admin client then
  // leaves SC connections open after close() (reported to the client's owner).
  await client.partitions(topic);
  const producer = client.producer(topic, { compression: codec, lingerMs: 50 });
  const sent = lines.map((l) => JSON.parse(l)).map((r) => producer.send(unhex(r.value), {
    key: unhex(r.key), timestamp: r.timestamp, headers: r.headers.map(([k, v]) => ({ key: k, value: unhex(v) })),
  }));
  const meta = await Promise.all(sent);
  await producer.close();
  return meta.map((m) => Number(m.offset));
}

async function consume(client, topic, count) {
  const ac = new AbortController();
  const timer = setTimeout(() => ac.abort(), DEADLINE_MS);
  const consumer = client.consumer(topic, { signal: ac.signal });
  const out = [];
  try {
    for await (const r of consumer) {
      out.push({ partition: r.partition, offset: Number(r.offset), timestamp: r.timestamp, key: hex(r.key),
        value: hex(r.value), headers: r.headers.map((h) => [h.key, hex(h.value)]) });
      if (out.length >= count) break;
    }
  } finally {
    clearTimeout(timer);
    consumer.close();
  }
  return out;
}

const [mode, sc, topic, arg] = process.argv.slice(2);
const client = new KolkClient({ sc, timeoutMs: 10_000 });
try {
  const result = mode === "produce" ? await produce(client, topic, arg) : await consume(client, topic, Number(arg));
  process.stdout.write(JSON.stringify(result) + "\n");
} catch (e) {
  process.stderr.write(`${e.name}: ${e.message}\n`);
  process.exitCode = 1;
} finally {
  await client.close();
}
