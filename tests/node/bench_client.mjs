// The Node client's side of bench/node_client_bench.py; prints one JSON line.
//   node bench_client.mjs produce SC TOPIC COUNT SIZE  -> {"seconds"}: COUNT records of SIZE bytes, acks=all
//   node bench_client.mjs consume SC TOPIC COUNT       -> {"seconds", "records", "bytes"}: from the beginning
// Both are timed from the first send / the consumer's creation to the last answer / record; the
// routes to the partition leader are looked up before the clock starts (the Python side does too).
import { KolkClient } from "../../clients/node/dist/src/index.js";

const [mode, sc, topic, countArg, sizeArg] = process.argv.slice(2);
const count = Number(countArg);
const client = new KolkClient({ sc, timeoutMs: 30_000 });

async function produce() {
  const value = new Uint8Array(Number(sizeArg)).fill(120);
  await client.partitions(topic);
  const producer = client.producer(topic, { acks: "all", batchBytes: 1 << 20, lingerMs: 5 });
  const t0 = performance.now();
  // The batching producer: sends are not awaited one by one; each resolves with its offset.
  let last;
  for (let i = 0; i < count; i++) last = producer.send(value);
  await producer.flush();
  const meta = await last;
  const seconds = (performance.now() - t0) / 1000;
  await producer.close();
  if (meta.offset !== BigInt(count - 1)) throw new Error(`last offset ${meta.offset}, expected ${count - 1}`);
  return { seconds };
}

async function consume() {
  await client.partitions(topic);
  const t0 = performance.now();
  const consumer = client.consumer(topic, { windowBytes: 16 << 20 });
  let records = 0;
  let bytes = 0;
  for await (const batch of consumer.batches()) {
    for (const r of batch) {
      bytes += r.value.length;
      records++;
    }
    if (records >= count) break;
  }
  const seconds = (performance.now() - t0) / 1000;
  consumer.close();
  return { seconds, records, bytes };
}

try {
  process.stdout.write(JSON.stringify(mode === "produce" ? await produce() : await consume()) + "\n");
} catch (e) {
  process.stderr.write(`${e.name}: ${e.message}\n`);
  process.exitCode = 1;
} finally {
  await client.close();
}
