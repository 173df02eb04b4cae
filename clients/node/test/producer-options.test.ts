/** The producer's and the client's options (no cluster: nothing here does I/O), and gzip
 * compression off the event loop (issue 23 review R2, R3). */
import { after, describe, it } from "node:test";
import assert from "node:assert/strict";
import { KolkClient } from "../src/client.js";
import { InvalidRequestError } from "../src/errors.js";
import { checkOptions } from "../src/options.js";
import { compress } from "../src/compression.js";
import { decodeBatches, encodeBatch, encodeBatchAsync } from "../src/records.js";

const refused = (fn: () => unknown, pattern: RegExp) =>
  assert.throws(fn, (e: unknown) => e instanceof InvalidRequestError && pattern.test(e.message), `expected ${pattern}`);

describe("options", () => {
  const client = new KolkClient({ sc: "127.0.0.1:1" });
  after(() => client.close());

  it("a misspelt producer option is refused, naming it and the one meant", () => {
    refused(() => client.producer("t", { compresion: "gzip" } as never), /producer: unknown option "compresion" \(did you mean "compression"\?\)/);
    refused(() => client.producer("t", { lingerMS: 5 } as never), /unknown option "lingerMS" \(did you mean "lingerMs"\?\)/);
    refused(() => client.producer("t", { deliveryTimeout: 5 } as never), /did you mean "deliveryTimeoutMs"/);
  });

  it("an unknown option far from every name is refused, listing the known ones", () => {
    refused(() => client.producer("t", { zzz: 1 } as never), /unknown option "zzz" \(known options: acks, compression, .*deliveryTimeoutMs\)/);
  });

  it("a misspelt client option is refused", () => {
    refused(() => new KolkClient({ sc: "127.0.0.1:1", timeoutMS: 5 } as never), /KolkClient: unknown option "timeoutMS" \(did you mean "timeoutMs"\?\)/);
    refused(() => new KolkClient({ sc: "127.0.0.1:1", tsl: {} } as never), /did you mean "tls"/);
    refused(() => new KolkClient({ SC: "127.0.0.1:1" } as never), /unknown option "SC" \(did you mean "sc"\?\)/);
  });

  it("checkOptions takes undefined and known keys, and refuses a non-object", () => {
    checkOptions("x", undefined, ["a"]);
    checkOptions("x", { a: 1 }, ["a"]);
    refused(() => checkOptions("x", 5 as never, ["a"]), /x: options must be an object, got number/);
  });

  it("deliveryTimeoutMs is refused below timeoutMs + lingerMs, and defaults to 120 s", () => {
    refused(() => client.producer("t", { timeoutMs: 30_000, lingerMs: 5, deliveryTimeoutMs: 30_000 }),
      /deliveryTimeoutMs \(30000\) must be at least timeoutMs \+ lingerMs \(30005\)/);
    refused(() => client.producer("t", { deliveryTimeoutMs: Number.NaN }), /deliveryTimeoutMs is a whole number/);
    assert.equal(client.producer("t").deliveryTimeoutMs, 120_000);
    assert.equal(client.producer("t", { timeoutMs: 1000, lingerMs: 0, deliveryTimeoutMs: 1000 }).deliveryTimeoutMs, 1000);
  });
});

describe("gzip off the event loop", () => {
  it("encodeBatchAsync gives a batch that decodes to the records, without holding the loop for the compression", async () => {
    // ~8 MB of text that gzip has to work on (not one repeated byte).
    let seed = 7;
    const words = ["kolk", "stream", "leader", "replica", "offset", "batch", "record", "segment"];
    const text = Array.from({ length: 1_100_000 }, () => words[((seed = (seed * 1103515245 + 12345) % 2 ** 31) >>> 16) % 8]).join(" ");
    const value = new TextEncoder().encode(text).subarray(0, 2_000_000);
    const records = Array.from({ length: 4 }, (_, i) => ({ key: null, value, headers: [], timestamp: 1_000 + i }));
    const same = new Uint8Array(records.length * value.length);
    for (let i = 0; i < records.length; i++) same.set(value, i * value.length);
    const t0 = performance.now();
    compress("gzip", same);
    const syncMs = performance.now() - t0;
    let last = performance.now();
    let maxGap = 0;
    const tick = setInterval(() => { const now = performance.now(); maxGap = Math.max(maxGap, now - last); last = now; }, 2);
    const batch = await encodeBatchAsync(records, { codec: "gzip" });
    clearInterval(tick);
    assert.ok(maxGap < syncMs / 2, `the event loop was held ${maxGap.toFixed(0)} ms (gzip of the same bytes takes ${syncMs.toFixed(0)} ms synchronously)`);
    const back = decodeBatches(batch, 0);
    assert.equal(back.length, 4);
    assert.deepEqual(back[3].value, value);
    assert.deepEqual(batch, encodeBatch(records, { codec: "gzip" }), "the async and sync encodings differ");
  });
});
