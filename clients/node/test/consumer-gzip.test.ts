/** The consumers' gzip expansions in node:zlib's thread pool (compression.ts decompressAsync):
 * at most GZIP_EXPANSIONS_MAX at once in the process (each holds up to twice its limit, each
 * keeps one of libuv's 4 threads busy), in turn, and stopped by an abort signal whether waiting
 * or running, the turn handed on. */
import { test } from "node:test";
import assert from "node:assert/strict";
import zlib from "node:zlib";
import { GZIP_EXPANSIONS_MAX, decompressAsync } from "../src/compression.js";
import { watchInflates } from "./inflates.js";

const SIZE = 8 << 20;
const section = zlib.gzipSync(new Uint8Array(SIZE).fill(7)); // ~8 KiB, 8 MiB expanded
const isAbort = (e: Error) => e.name === "AbortError" && /aborted/.test(e.message);

test("six sections expanding at once: at most GZIP_EXPANSIONS_MAX run at a time, each whole", async () => {
  await watchInflates(async (w) => {
    const outs = await Promise.all(Array.from({ length: 6 }, () => decompressAsync("gzip", section)));
    for (const o of outs) assert.ok(o.length === SIZE && o[0] === 7 && o[SIZE - 1] === 7);
    assert.equal(w.created, 6);
    assert.equal(w.ended, 6);
    assert.ok(w.max <= GZIP_EXPANSIONS_MAX, `${w.max} expanded at once`);
  });
});

test("an abort stops an expansion running and one waiting its turn; the turns go on", async () => {
  const stop = new AbortController();
  await watchInflates(async (w) => {
    const running = Array.from({ length: GZIP_EXPANSIONS_MAX }, () => decompressAsync("gzip", section, undefined, stop.signal));
    const waiting = decompressAsync("gzip", section, undefined, stop.signal);
    const later = decompressAsync("gzip", section); // in line behind them, no signal
    for (const p of [...running, waiting]) p.catch(() => undefined);
    await assert.rejects(decompressAsync("gzip", section, undefined, AbortSignal.abort()), isAbort); // aborted already: never waits
    for (const p of [...running, waiting]) await assert.rejects(p, isAbort);
    assert.equal((await later).length, SIZE);
    assert.equal(w.stopped, GZIP_EXPANSIONS_MAX); // the running ones, destroyed; the waiting one never started
    assert.equal(w.ended, 1);
    assert.equal(w.alive, 0);
  }, (n) => { if (n === 0) stop.abort(); }); // abort at the first chunk: the running ones are mid-expansion
});
