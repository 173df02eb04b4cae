import { CRC32C_WASM_BASE64 } from "./gen/crc32c_wasm.js";

/**
 * Table-driven CRC-32 (slicing by 16): CRC-32C (Castagnoli), which every record batch carries
 * (docs/format.md), and the IEEE CRC-32 of a gzip trailer (compression.ts). Pure functions;
 * crc32c runs in WebAssembly for inputs of 256 bytes or more (below).
 */

const SLICES = 16;

function tables(poly: number): Int32Array[] {
  const t: Int32Array[] = [];
  for (let k = 0; k < SLICES; k++) t.push(new Int32Array(256));
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let i = 0; i < 8; i++) c = c & 1 ? (c >>> 1) ^ poly : c >>> 1;
    t[0][n] = c;
  }
  for (let n = 0; n < 256; n++) {
    let c = t[0][n];
    for (let k = 1; k < SLICES; k++) {
      c = t[0][c & 0xff] ^ (c >>> 8);
      t[k][n] = c;
    }
  }
  return t;
}

function makeCrc(poly: number): (data: Uint8Array, start?: number, end?: number, crc?: number) => number {
  const [t0, t1, t2, t3, t4, t5, t6, t7, t8, t9, t10, t11, t12, t13, t14, t15] = tables(poly);
  return (data, start = 0, end = data.length, crc = 0) => {
    let c = ~crc;
    let i = start;
    // 16 bytes a step, read as four little-endian words (DataView reads are what V8 optimises).
    const v = new DataView(data.buffer, data.byteOffset, data.byteLength);
    const stop = end - ((end - start) & 15);
    while (i < stop) {
      const a = v.getInt32(i, true) ^ c;
      const b = v.getInt32(i + 4, true);
      const d = v.getInt32(i + 8, true);
      const e = v.getInt32(i + 12, true);
      c = t15[a & 0xff] ^ t14[(a >>> 8) & 0xff] ^ t13[(a >>> 16) & 0xff] ^ t12[a >>> 24] ^
        t11[b & 0xff] ^ t10[(b >>> 8) & 0xff] ^ t9[(b >>> 16) & 0xff] ^ t8[b >>> 24] ^
        t7[d & 0xff] ^ t6[(d >>> 8) & 0xff] ^ t5[(d >>> 16) & 0xff] ^ t4[d >>> 24] ^
        t3[e & 0xff] ^ t2[(e >>> 8) & 0xff] ^ t1[(e >>> 16) & 0xff] ^ t0[e >>> 24];
      i += 16;
    }
    while (i < end) c = t0[(c ^ data[i++]) & 0xff] ^ (c >>> 8);
    return ~c >>> 0;
  };
}
const CASTAGNOLI = 0x82f63b78;
const crc32cJs = makeCrc(CASTAGNOLI);

// The same CRC in WebAssembly (src/crc32c.wat, slicing by 8): about three times the JavaScript
// loop's speed, copy included, on the consumer's hot path. Inputs are copied through a fixed
// 1 MiB window of its memory, so that memory never grows; short inputs stay in JavaScript.
const WASM_DATA_AT = 65536;
const WASM_WINDOW = 1 << 20;
const WASM_MIN_BYTES = 256;
// (tsconfig's lib has no WebAssembly types: the little used here is declared.)
interface CrcExports { memory: { buffer: ArrayBuffer }; init(poly: number): void; crc(p: number, end: number, crc: number): number }
const WA = (globalThis as unknown as { WebAssembly: {
  Module: new (bytes: Uint8Array) => object; Instance: new (module: object) => { exports: unknown };
} }).WebAssembly;
const wasm = new WA.Instance(new WA.Module(Buffer.from(CRC32C_WASM_BASE64, "base64"))).exports as CrcExports;
wasm.init(CASTAGNOLI);
const wasmBytes = new Uint8Array(wasm.memory.buffer, WASM_DATA_AT, WASM_WINDOW);

/** CRC-32C of `data[start, end)`, continuing from `crc` (0 to start). */
export function crc32c(data: Uint8Array, start = 0, end = data.length, crc = 0): number {
  if (end - start < WASM_MIN_BYTES) return crc32cJs(data, start, end, crc);
  let c = crc;
  for (let p = start; p < end; p += WASM_WINDOW) {
    const n = Math.min(WASM_WINDOW, end - p);
    wasmBytes.set(data.subarray(p, p + n));
    c = wasm.crc(WASM_DATA_AT, WASM_DATA_AT + n, c) >>> 0;
  }
  return c;
}

/** The JavaScript CRC-32C (what crc32c uses for short inputs); for tests. */
export const crc32cPortable = crc32cJs;

/** The IEEE CRC-32 (zlib's, gzip's) of `data[start, end)`, continuing from `crc`. */
export const crc32 = makeCrc(0xedb88320);
