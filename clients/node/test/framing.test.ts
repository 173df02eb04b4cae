/** The frame codec: round trips of random frames split at random points (seeded), and each
 * kind of bad header refused with a message naming it. */
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { encodeFrame, FrameDecoder, FramingError, Kind } from "../src/framing.js";
import { FRAME_BODY_BYTES_MAX } from "../src/limits.js";

function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => { s = (Math.imul(s, 1664525) + 1013904223) >>> 0; return s / 2 ** 32; };
}

describe("framing", () => {
  it("decodes what it encodes, however the bytes are split", () => {
    const rand = rng(23);
    for (let round = 0; round < 200; round++) {
      const frames = Array.from({ length: 1 + Math.floor(rand() * 8) }, () => {
        const body = new Uint8Array(Math.floor(rand() * 300)).map(() => Math.floor(rand() * 256));
        const kind = [Kind.REQUEST, Kind.RESPONSE, Kind.PUSH, Kind.END, Kind.CANCEL, Kind.CREDIT][Math.floor(rand() * 6)];
        return { kind, id: Math.floor(rand() * 2 ** 32), credit: Math.floor(rand() * 2 ** 32), body };
      });
      const wire = Buffer.concat(frames.map((f) => encodeFrame(f.kind, f.id, f.body, f.credit)));
      const dec = new FrameDecoder();
      const got = [];
      for (let pos = 0; pos < wire.length;) {
        const n = 1 + Math.floor(rand() * 64);
        got.push(...dec.feed(wire.subarray(pos, pos + n)));
        pos += n;
      }
      assert.equal(dec.buffered, 0);
      assert.deepEqual(got.map((f) => ({ ...f, body: Buffer.from(f.body) })), frames.map((f) => ({ ...f, body: Buffer.from(f.body) })));
    }
  });

  it("gives a body that came over several reads an ArrayBuffer of its own", () => {
    const body = new Uint8Array(100_000).map((_, i) => i % 251);
    const wire = Buffer.concat([encodeFrame(Kind.PUSH, 7, body, 3), encodeFrame(Kind.END, 7, new Uint8Array([1, 2]))]);
    const dec = new FrameDecoder();
    const got = [];
    for (let pos = 0; pos < wire.length; pos += 65_536) got.push(...dec.feed(wire.subarray(pos, pos + 65_536)));
    assert.equal(got.length, 2);
    assert.deepEqual(Buffer.from(got[0].body), Buffer.from(body));
    assert.equal(got[0].body.byteOffset, 0);
    assert.equal(got[0].body.buffer.byteLength, body.length);
    assert.deepEqual([...got[1].body], [1, 2]);
    assert.equal(dec.buffered, 0);
  });

  it("refuses a body over the limit before it arrives", () => {
    const head = Buffer.alloc(16);
    head.writeUInt32LE(FRAME_BODY_BYTES_MAX + 1, 0);
    head.writeUInt8(Kind.RESPONSE, 8);
    assert.throws(() => new FrameDecoder().feed(head), (e: Error) => e instanceof FramingError && /announced; the limit is/.test(e.message));
  });

  it("refuses an unknown kind", () => {
    const f = encodeFrame(Kind.PUSH, 1);
    f.writeUInt8(9, 8);
    assert.throws(() => new FrameDecoder().feed(f), /unknown frame kind 9/);
  });

  it("refuses non-zero flags", () => {
    const f = encodeFrame(Kind.PUSH, 1);
    f.writeUInt8(1, 9);
    assert.throws(() => new FrameDecoder().feed(f), /frame flags 1/);
  });

  it("refuses to encode a body over the limit", () => {
    assert.throws(() => encodeFrame(Kind.REQUEST, 1, new Uint8Array(FRAME_BODY_BYTES_MAX + 1)), /over the limit/);
  });
});
