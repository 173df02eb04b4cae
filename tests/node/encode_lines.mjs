// The Node record-batch codec as a line filter, for tests/test_cross_client.py: each stdin line
// is one JSON request, each stdout line its answer, so one process serves every example.
//   {"op": "encode", "codec", "identity": {producerId, producerEpoch, baseSequence} | null,
//    "records": [{"key", "value", "timestamp", "headers": [[name, hex|null]]}]}  -> {"batch": hex}
//   {"op": "decode", "batch": hex}  -> {"records": [...] (same shape, plus "offset")}
// Bytes travel as hex, null for null. A request that fails answers {"error": "<name>: <message>"}.
import { createInterface } from "node:readline";
import { decodeBatches, encodeBatch } from "../../clients/node/dist/src/records.js";

const unhex = (s) => (s === null ? null : new Uint8Array(Buffer.from(s, "hex")));
const hex = (b) => (b === null ? null : Buffer.from(b).toString("hex"));

function answer(req) {
  if (req.op === "encode") {
    const identity = req.identity === null ? undefined : {
      producerId: BigInt(req.identity.producerId), producerEpoch: req.identity.producerEpoch,
      baseSequence: req.identity.baseSequence,
    };
    const records = req.records.map((r) => ({
      key: unhex(r.key), value: unhex(r.value), timestamp: r.timestamp,
      headers: r.headers.map(([k, v]) => ({ key: k, value: unhex(v) })),
    }));
    return { batch: hex(encodeBatch(records, { codec: req.codec, identity })) };
  }
  if (req.op === "decode") {
    return {
      records: decodeBatches(unhex(req.batch), 0).map((r) => ({
        offset: Number(r.offset), timestamp: r.timestamp, key: hex(r.key), value: hex(r.value),
        headers: r.headers.map((h) => [h.key, hex(h.value)]),
      })),
    };
  }
  throw new Error(`unknown op ${req.op}`);
}

for await (const line of createInterface({ input: process.stdin, crlfDelay: Infinity })) {
  let out;
  try {
    out = answer(JSON.parse(line));
  } catch (e) {
    out = { error: `${e.name}: ${e.message}` };
  }
  process.stdout.write(JSON.stringify(out) + "\n");
}
