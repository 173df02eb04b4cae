/**
 * The codecs of a records section (docs/format.md "Compression codecs"): none, gzip (one RFC
 * 1952 stream, level 6, as Python's `zlib` with wbits=31 writes it) and zstd (one frame with
 * its content size, level 3). A decoder refuses a section that is not exactly one whole stream
 * or frame, and one that would expand past its limit; each refusal is an InvalidBatchError
 * whose `reason` names it.
 *
 * zstd is @bokuweb/zstd-wasm (zstd compiled to WebAssembly, no install script, no native
 * build, nothing downloaded at install time); its WebAssembly is loaded once, when this module
 * is first imported (a top-level await). docs/clients-node.md says why this package.
 */
import { promisify } from "node:util";
import zlib from "node:zlib";
import { init as zstdInit, compress as zstdCompress, decompress as zstdDecompress } from "@bokuweb/zstd-wasm";
import { crc32 } from "./crc32c.js";
import { abortError, InvalidBatchError } from "./errors.js";

await zstdInit();

export type Codec = "none" | "gzip" | "zstd";

/** The codec numbers of a batch's attributes (Kafka's); 2 and 3 are reserved and refused. */
export const CODEC_NUMBERS: Readonly<Record<Codec, number>> = { none: 0, gzip: 1, zstd: 4 };
export const CODEC_NAMES: Readonly<Record<number, Codec>> = { 0: "none", 1: "gzip", 4: "zstd" };

/** How far a records section may expand (docs/format.md: 64 MiB by default). */
export const RECORDS_BYTES_MAX = 64 << 20;

const GZIP_LEVEL = 6;
const ZSTD_LEVEL = 3;

export function invalid(reason: string, message: string): InvalidBatchError {
  const err = new InvalidBatchError(message);
  err.reason = reason;
  return err;
}

export function compress(codec: Codec, data: Uint8Array): Uint8Array {
  switch (codec) {
    case "none":
      return data;
    case "gzip":
      return zlib.gzipSync(data, { level: GZIP_LEVEL });
    case "zstd":
      return zstdCompress(data, ZSTD_LEVEL);
    default:
      throw new TypeError(`codec must be one of none, gzip, zstd; got ${String(codec)}`);
  }
}

const gzipAsync = promisify(zlib.gzip);

/** compress(), with gzip run in node:zlib's thread pool so a large batch does not hold the
 * event loop (9 MB took 246 ms synchronously); zstd (WebAssembly) stays synchronous. */
export async function compressAsync(codec: Codec, data: Uint8Array): Promise<Uint8Array> {
  if (codec === "gzip") return gzipAsync(data, { level: GZIP_LEVEL });
  return compress(codec, data);
}

/** decompress(), with gzip expanded in node:zlib's thread pool so that a large section does not
 * hold the event loop (the consumers' path); zstd (WebAssembly) stays synchronous: see
 * docs/clients-node.md "Consumer" for the numbers behind that. */
export async function decompressAsync(codec: Codec, data: Uint8Array, limit: number = RECORDS_BYTES_MAX,
                                      signal?: AbortSignal): Promise<Uint8Array> {
  if (codec === "gzip") return gunzipOneAsync(data, limit, signal);
  return decompress(codec, data, limit);
}

/** Decompress one whole stream or frame into at most `limit` bytes. */
export function decompress(codec: Codec, data: Uint8Array, limit: number = RECORDS_BYTES_MAX): Uint8Array {
  if (codec === "none") return data;
  if (codec === "gzip") return gunzipOne(data, limit);
  if (codec === "zstd") return unzstdOne(data, limit);
  throw invalid("codec", `compression codec ${String(codec)} is not supported`);
}

const FHCRC = 2, FEXTRA = 4, FNAME = 8, FCOMMENT = 16;

/** The end of the gzip member header at the start of `d` (RFC 1952 §2.3). */
function gzipHeaderEnd(d: Uint8Array): number {
  const bad = () => invalid("decompress", "gzip records section does not decompress: not a gzip stream header");
  if (d.length < 18 || d[0] !== 0x1f || d[1] !== 0x8b || d[2] !== 8) throw bad();
  const flags = d[3];
  let p = 10;
  if (flags & FEXTRA) {
    if (p + 2 > d.length) throw bad();
    p += 2 + (d[p] | (d[p + 1] << 8));
  }
  for (const flag of [FNAME, FCOMMENT]) {
    if (flags & flag) {
      const zero = d.indexOf(0, p);
      if (zero < 0) throw bad();
      p = zero + 1;
    }
  }
  if (flags & FHCRC) p += 2;
  if (p > d.length) throw bad();
  return p;
}

function gunzipOne(d: Uint8Array, limit: number): Uint8Array {
  const start = gzipHeaderEnd(d);
  let r: { buffer: Buffer; engine: { bytesWritten: number } };
  try {
    r = zlib.inflateRawSync(d.subarray(start), { info: true, maxOutputLength: limit }) as unknown as typeof r;
  } catch (e) {
    throw inflateError(e as NodeJS.ErrnoException, limit);
  }
  return checkedGzipTail(d, start + r.engine.bytesWritten, r.buffer);
}

/** gunzipOne in node:zlib's thread pool: the stream is expanded chunk by chunk, and refused as
 * soon as it passes `limit` (it holds at most `limit` bytes of chunks, then their
 * concatenation: twice the limit at the end). It waits its turn (GZIP_EXPANSIONS_MAX); once
 * `signal` aborts it stops, waiting or expanding, and rejects with an AbortError. */
async function gunzipOneAsync(d: Uint8Array, limit: number, signal?: AbortSignal): Promise<Uint8Array> {
  const start = gzipHeaderEnd(d);
  const done = await expansionTurn(signal);
  try {
    const { out, used } = await new Promise<{ out: Buffer; used: number }>((resolve, reject) => {
      const engine = zlib.createInflateRaw({ chunkSize: INFLATE_CHUNK_BYTES });
      const stop = (e: Error) => { signal?.removeEventListener("abort", onAbort); engine.destroy(); reject(e); };
      const onAbort = () => stop(abortError("the expansion of a gzip records section was aborted"));
      signal?.addEventListener("abort", onAbort, { once: true });
      if (signal?.aborted) { onAbort(); return; } // aborted while it took its turn
      const chunks: Buffer[] = [];
      let size = 0;
      engine.on("data", (chunk: Buffer) => {
        size += chunk.length;
        if (size > limit) { stop(invalid("expansion", `gzip records section expands past the limit of ${limit} bytes`)); return; }
        chunks.push(chunk);
      });
      engine.on("error", (e) => stop(inflateError(e as NodeJS.ErrnoException, limit)));
      engine.on("end", () => {
        signal?.removeEventListener("abort", onAbort);
        resolve({ out: Buffer.concat(chunks, size), used: engine.bytesWritten });
      });
      engine.end(d.subarray(start));
    });
    return checkedGzipTail(d, start + used, out);
  } finally {
    done();
  }
}

/** Gzip sections expanding at once in this process. Each holds up to twice its limit while it
 * runs (128 MiB) and has a job in libuv's 4-thread pool chunk after chunk: N partitions
 * decoding at once held N x 128 MiB (16 at once: 2.0 GB of RSS, 1.15 GB with this limit, of
 * which 1 GiB the results; measured) and queued N jobs ahead of the process's DNS and file work
 * (1-5 ms behind them, 0.3-0.5 ms with this limit). The others wait their turn, in order; the
 * consumers' waiting are at most one per partition read (a reader decodes one batch at a time). */
export const GZIP_EXPANSIONS_MAX = 2;
let expanding = 0;
const turns: (() => void)[] = [];

/** Resolves, once this caller may expand, to the function that hands its turn on (call it
 * once); rejects with an AbortError when `signal` aborts first. */
async function expansionTurn(signal?: AbortSignal): Promise<() => void> {
  if (signal?.aborted) throw abortError("the expansion of a gzip records section was aborted");
  if (expanding < GZIP_EXPANSIONS_MAX) expanding++;
  else {
    await new Promise<void>((resolve, reject) => {
      const go = () => { signal?.removeEventListener("abort", onAbort); resolve(); };
      const onAbort = () => { turns.splice(turns.indexOf(go), 1); reject(abortError("the expansion of a gzip records section was aborted")); };
      signal?.addEventListener("abort", onAbort, { once: true });
      turns.push(go);
    });
  }
  let handed = false;
  return () => {
    if (handed) return;
    handed = true;
    const next = turns.shift();
    if (next) next(); else expanding--; // the turn goes straight to the next in line
  };
}

const INFLATE_CHUNK_BYTES = 64 << 10;

function inflateError(err: NodeJS.ErrnoException, limit: number): InvalidBatchError {
  if (err.code === "ERR_BUFFER_TOO_LARGE") return invalid("expansion", `gzip records section expands past the limit of ${limit} bytes`);
  if (err.code === "Z_BUF_ERROR") return invalid("truncated", "gzip records section ends before its stream does");
  return invalid("decompress", `gzip records section does not decompress: ${err.message}`);
}

/** zlib's native CRC-32 (Node 20.15+, 22.2+): a 4 MiB section in well under a millisecond;
 * the JavaScript table otherwise. */
const nativeCrc32 = (zlib as unknown as { crc32?: (data: Uint8Array) => number }).crc32;
const gzipCrc = (data: Uint8Array): number => (nativeCrc32 ? nativeCrc32(data) >>> 0 : crc32(data));

/** `out`, the stream of `d` expanded, once the 8-byte trailer at `trailer` ends `d` and matches it. */
function checkedGzipTail(d: Uint8Array, trailer: number, out: Buffer): Uint8Array {
  if (trailer + 8 > d.length) throw invalid("truncated", "gzip records section ends before its stream does (no trailer)");
  if (trailer + 8 < d.length) {
    throw invalid("trailing", `gzip records section has ${d.length - trailer - 8} bytes after its stream`);
  }
  const view = new DataView(d.buffer, d.byteOffset + trailer, 8);
  if (view.getUint32(0, true) !== gzipCrc(out) || view.getUint32(4, true) !== out.length % 2 ** 32) {
    throw invalid("decompress", "gzip records section does not decompress: its trailer's CRC or size is wrong");
  }
  return out;
}

/** The content size a zstd frame header announces (RFC 8878 §3.1.1.1), or -1 for none. */
function zstdContentSize(d: Uint8Array): number {
  if (d.length < 6 || d[0] !== 0x28 || d[1] !== 0xb5 || d[2] !== 0x2f || d[3] !== 0xfd) {
    throw invalid("decompress", "zstd records section is not a zstd frame (bad magic number)");
  }
  const fhd = d[4];
  const fcsFlag = fhd >>> 6;
  const single = (fhd >>> 5) & 1;
  const dictBytes = [0, 1, 2, 4][fhd & 3];
  const fcsBytes = [single ? 1 : 0, 2, 4, 8][fcsFlag];
  const p = 5 + (single ? 0 : 1) + dictBytes;
  if (fcsBytes === 0) return -1;
  if (p + fcsBytes > d.length) throw invalid("truncated", "zstd records section ends inside its frame header");
  const v = new DataView(d.buffer, d.byteOffset + p, fcsBytes);
  if (fcsBytes === 1) return v.getUint8(0);
  if (fcsBytes === 2) return v.getUint16(0, true) + 256;
  if (fcsBytes === 4) return v.getUint32(0, true);
  return v.getUint32(0, true) + v.getUint32(4, true) * 2 ** 32;
}

function unzstdOne(d: Uint8Array, limit: number): Uint8Array {
  const size = zstdContentSize(d);
  if (size < 0) throw invalid("decompress", "zstd records section's frame does not carry its content size");
  if (size > limit) throw invalid("expansion", `zstd records section expands past the limit of ${limit} bytes`);
  let out: Uint8Array;
  try {
    out = zstdDecompress(d);
  } catch (e) {
    throw invalid("decompress", `zstd records section does not decompress (not exactly one whole frame): ${(e as Error).message}`);
  }
  if (out.length !== size) {
    throw invalid("decompress", `zstd records section gives ${out.length} bytes, its frame announces ${size}`);
  }
  return out;
}
