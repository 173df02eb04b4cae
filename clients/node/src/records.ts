/**
 * The record batch of docs/format.md: encode a batch from records, decode batches back to back
 * into records. Pure functions over bytes; the header is read and written with a DataView, the
 * only per-byte loop is the CRC's. Every refusal is an InvalidBatchError (CorruptDataError for
 * a CRC that does not match) whose `reason` names the problem and whose message names the batch
 * and record, as segments/batch.py and segments/records.py refuse them.
 */
import { CorruptDataError } from "./errors.js";
import { crc32c } from "./crc32c.js";
import { CODEC_NAMES, CODEC_NUMBERS, RECORDS_BYTES_MAX, compress, compressAsync, decompress, invalid } from "./compression.js";
import type { Codec } from "./compression.js";

export type { Codec } from "./compression.js";
export { RECORDS_BYTES_MAX } from "./compression.js";

export interface Header { key: string; value: Uint8Array | null }
export interface ProducerRecord {
  key?: Uint8Array | null;
  value: Uint8Array | null;
  headers?: Header[];
  /** ms since the Unix epoch; Date.now() when left out (one reading per batch). */
  timestamp?: number;
}
export interface ConsumerRecord {
  partition: number;
  offset: bigint;
  timestamp: number;
  key: Uint8Array | null;
  value: Uint8Array | null;
  headers: Header[];
}
/** The idempotent producer's identity; -1s when the producer is not idempotent. */
export interface BatchIdentity { producerId: bigint; producerEpoch: number; baseSequence: number }

export const NO_IDENTITY: BatchIdentity = Object.freeze({ producerId: -1n, producerEpoch: -1, baseSequence: -1 });
export const MAGIC = 1;
export const HEADER_SIZE = 61;
/** base_offset + batch_length: the bytes before those batch_length counts. */
export const LENGTH_PREFIX_SIZE = 12;
export const CRC_START = 21;
export const CONTROL_FLAG = 0x20;
const CODEC_MASK = 0x07;
/** Bytes of a record besides its key, value and headers. */
const RECORD_FIXED = 29;
const RECORD_LENGTH_MIN = RECORD_FIXED - 4;
/** The biggest batch a decoder accepts (what Python's consumer accepts: 64 MiB). */
export const BATCH_BYTES_MAX = 64 << 20;
const TWO32 = 2 ** 32;
/** BigInts of the common offset deltas, made once: one BigInt allocation per record, not two. */
const DELTAS: readonly bigint[] = Array.from({ length: 8192 }, (_, i) => BigInt(i));

export interface EncodeOptions {
  codec: Codec;
  identity?: BatchIdentity;
  /** Assigned by the server on append; only tools and tests set these. */
  baseOffset?: bigint;
  leaderEpoch?: number;
}

/** The headers of every decoded record that has none: one shared, frozen, empty array. */
const NO_HEADERS: Header[] = Object.freeze([]) as unknown as Header[];

const utf8 = new TextEncoder();
const utf8Strict = new TextDecoder("utf-8", { fatal: true });

function writeI64(v: DataView, at: number, n: number): void {
  const hi = Math.floor(n / TWO32);
  v.setUint32(at, n - hi * TWO32, true);
  v.setInt32(at + 4, hi, true);
}

function readI64(v: DataView, at: number): number {
  return v.getInt32(at + 4, true) * TWO32 + v.getUint32(at, true);
}

/** The uncompressed records section and the batch's first and max timestamps. */
function encodeSection(records: ProducerRecord[]): { section: Uint8Array; first: number; max: number } {
  const now = Date.now();
  const names: (Uint8Array[] | null)[] = new Array(records.length);
  let size = 0;
  let first = 0;
  let max = 0;
  for (let i = 0; i < records.length; i++) {
    const r = records[i];
    const ts = r.timestamp ?? now;
    if (!Number.isSafeInteger(ts)) throw new TypeError(`record ${i}'s timestamp ${ts} is not an integer of ms`);
    if (i === 0) first = max = ts;
    else if (ts > max) max = ts;
    size += RECORD_FIXED + (r.key ? r.key.length : 0) + (r.value ? r.value.length : 0);
    const hs = r.headers;
    if (hs && hs.length) {
      const encoded: Uint8Array[] = new Array(hs.length);
      for (let h = 0; h < hs.length; h++) {
        encoded[h] = utf8.encode(hs[h].key);
        size += 8 + encoded[h].length + (hs[h].value ? hs[h].value!.length : 0);
      }
      names[i] = encoded;
    } else {
      names[i] = null;
    }
  }
  const section = new Uint8Array(size);
  const v = new DataView(section.buffer);
  let p = 0;
  for (let i = 0; i < records.length; i++) {
    const r = records[i];
    const start = p;
    p += 4;
    v.setUint8(p, 0);
    writeI64(v, p + 1, (r.timestamp ?? now) - first);
    v.setUint32(p + 9, i, true);
    p += 13;
    const key = r.key;
    if (key == null) {
      v.setInt32(p, -1, true);
      p += 4;
    } else {
      v.setInt32(p, key.length, true);
      section.set(key, p + 4);
      p += 4 + key.length;
    }
    const value = r.value;
    if (value == null) {
      v.setInt32(p, -1, true);
      p += 4;
    } else {
      v.setInt32(p, value.length, true);
      section.set(value, p + 4);
      p += 4 + value.length;
    }
    const encoded = names[i];
    if (encoded === null) {
      v.setUint32(p, 0, true);
      p += 4;
    } else {
      const hs = r.headers!;
      v.setUint32(p, hs.length, true);
      p += 4;
      for (let h = 0; h < hs.length; h++) {
        v.setUint32(p, encoded[h].length, true);
        section.set(encoded[h], p + 4);
        p += 4 + encoded[h].length;
        const hv = hs[h].value;
        if (hv == null) {
          v.setInt32(p, -1, true);
          p += 4;
        } else {
          v.setInt32(p, hv.length, true);
          section.set(hv, p + 4);
          p += 4 + hv.length;
        }
      }
    }
    v.setUint32(start, p - start - 4, true);
  }
  return { section, first, max };
}

/** One batch of `records` (at least one), compressed with `opts.codec`. */
export function encodeBatch(records: ProducerRecord[], opts: EncodeOptions): Uint8Array {
  if (records.length === 0) throw invalid("count", "a batch holds at least one record; none were given");
  const codecNumber = CODEC_NUMBERS[opts.codec];
  if (codecNumber === undefined) throw new TypeError(`codec must be one of none, gzip, zstd; got ${String(opts.codec)}`);
  const { section, first, max } = encodeSection(records);
  return frameBatch(records.length, opts, codecNumber, compress(opts.codec, section), first, max);
}

/** encodeBatch with gzip compressed in node:zlib's thread pool, off the event loop (the
 * producer's path; other codecs as encodeBatch). */
export async function encodeBatchAsync(records: ProducerRecord[], opts: EncodeOptions): Promise<Uint8Array> {
  if (opts.codec !== "gzip" || records.length === 0) return encodeBatch(records, opts);
  const { section, first, max } = encodeSection(records);
  return frameBatch(records.length, opts, CODEC_NUMBERS.gzip, await compressAsync("gzip", section), first, max);
}

function frameBatch(count: number, opts: EncodeOptions, codecNumber: number, body: Uint8Array,
                    first: number, max: number): Uint8Array {
  const id = opts.identity ?? NO_IDENTITY;
  const out = new Uint8Array(HEADER_SIZE + body.length);
  const v = new DataView(out.buffer);
  v.setBigInt64(0, opts.baseOffset ?? 0n, true);
  v.setInt32(8, HEADER_SIZE - LENGTH_PREFIX_SIZE + body.length, true);
  v.setInt32(12, opts.leaderEpoch ?? 0, true);
  v.setInt8(16, MAGIC);
  v.setInt16(21, codecNumber, true);
  v.setInt32(23, count - 1, true);
  writeI64(v, 27, first);
  writeI64(v, 35, max);
  v.setBigInt64(43, BigInt(id.producerId), true);
  v.setInt16(51, id.producerEpoch, true);
  v.setInt32(53, id.baseSequence, true);
  v.setInt32(57, count, true);
  out.set(body, HEADER_SIZE);
  v.setUint32(17, crc32c(out, CRC_START), true);
  return out;
}

/** The fields of a batch header. */
export interface BatchHeader {
  baseOffset: bigint;
  batchLength: number;
  leaderEpoch: number;
  magic: number;
  crc: number;
  attributes: number;
  lastOffsetDelta: number;
  firstTimestamp: number;
  maxTimestamp: number;
  producerId: bigint;
  producerEpoch: number;
  baseSequence: number;
  recordCount: number;
}

/** The header of the batch at `pos`, checked as segments/batch.py's validate_batch checks it
 * (with shared offsets allowed, as a consumer reading a SmartModule's output), CRC included. */
export function readHeader(data: Uint8Array, pos = 0, batchBytesMax = BATCH_BYTES_MAX): BatchHeader {
  const left = data.length - pos;
  if (left < HEADER_SIZE) {
    throw invalid("truncated", `batch at byte ${pos} is truncated: ${left} bytes left, a header needs ${HEADER_SIZE}`);
  }
  const v = new DataView(data.buffer, data.byteOffset + pos, HEADER_SIZE);
  const h: BatchHeader = {
    baseOffset: v.getBigInt64(0, true),
    batchLength: v.getInt32(8, true),
    leaderEpoch: v.getInt32(12, true),
    magic: v.getInt8(16),
    crc: v.getUint32(17, true),
    attributes: v.getInt16(21, true),
    lastOffsetDelta: v.getInt32(23, true),
    firstTimestamp: readI64(v, 27),
    maxTimestamp: readI64(v, 35),
    producerId: v.getBigInt64(43, true),
    producerEpoch: v.getInt16(51, true),
    baseSequence: v.getInt32(53, true),
    recordCount: v.getInt32(57, true),
  };
  if (h.magic !== MAGIC) throw invalid("magic", `batch at byte ${pos} has magic ${h.magic}; this format is version ${MAGIC}`);
  if (h.batchLength < HEADER_SIZE - LENGTH_PREFIX_SIZE) {
    throw invalid("length", `batch at byte ${pos} has batch_length ${h.batchLength}, less than the ` +
      `${HEADER_SIZE - LENGTH_PREFIX_SIZE} bytes its header needs`);
  }
  const size = LENGTH_PREFIX_SIZE + h.batchLength;
  if (size > batchBytesMax) {
    throw invalid("tooLarge", `batch at byte ${pos} is ${size} bytes, more than the limit of ${batchBytesMax}`);
  }
  if (CODEC_NAMES[h.attributes & CODEC_MASK] === undefined) {
    throw invalid("codec", `batch at byte ${pos} uses compression codec ${h.attributes & CODEC_MASK}, which Kolk ` +
      "does not support (known: 0=none, 1=gzip, 4=zstd)");
  }
  if (h.recordCount < 1) {
    throw invalid("count", `batch at byte ${pos} has record_count ${h.recordCount}; a batch holds at least one record`);
  }
  if (h.maxTimestamp < h.firstTimestamp) {
    throw invalid("timestamps", `batch at byte ${pos} has max_timestamp ${h.maxTimestamp} before ` +
      `first_timestamp ${h.firstTimestamp}`);
  }
  if (size > left) {
    throw invalid("truncated", `batch at byte ${pos} is truncated: header announces ${size} bytes, ${left} are there`);
  }
  const actual = crc32c(data, pos + CRC_START, pos + size);
  if (actual !== h.crc) {
    const err = new CorruptDataError(`batch at byte ${pos} has CRC 0x${h.crc.toString(16).padStart(8, "0")} but ` +
      `its contents give 0x${actual.toString(16).padStart(8, "0")}`);
    err.reason = "crc";
    throw err;
  }
  return h;
}

/** Number of records of the batch at `pos` (its header's record_count; nothing checked). */
export function batchRecordCount(data: Uint8Array, pos = 0): number {
  return new DataView(data.buffer, data.byteOffset + pos, HEADER_SIZE).getInt32(57, true);
}

/** The offset after the last whole batch of `data` (base_offset + last_offset_delta + 1), or 0n
 * when `data` holds none; only the headers' lengths are looked at (decodeBatches checks). */
export function nextOffsetOf(data: Uint8Array): bigint {
  const v = new DataView(data.buffer, data.byteOffset, data.length);
  let pos = 0;
  let next = 0n;
  while (pos + HEADER_SIZE <= data.length) {
    const size = LENGTH_PREFIX_SIZE + v.getInt32(pos + 8, true);
    if (size < HEADER_SIZE || pos + size > data.length) break;
    next = v.getBigInt64(pos, true) + BigInt(v.getInt32(pos + 23, true)) + 1n;
    pos += size;
  }
  return next;
}

/** The last offset of the last whole batch of `data`, or -1n when there is none. */
export function lastOffsetOf(data: Uint8Array): bigint {
  return nextOffsetOf(data) - 1n;
}

/** Every record of the whole batches in `data` (back to back), skipping records before
 * `fromOffset`. Keys, values and header values of uncompressed batches are views into `data`;
 * a record without headers has one shared, frozen, empty `headers` array. */
export function decodeBatches(data: Uint8Array, partition: number, fromOffset = -1n): ConsumerRecord[] {
  const out: ConsumerRecord[] = [];
  let pos = 0;
  while (pos < data.length) pos = decodeBatchInto(data, pos, partition, fromOffset, out).end;
  return out;
}

export interface DecodedBatch { records: ConsumerRecord[]; end: number; nextOffset: bigint }

/** The one batch at byte `pos` of `data`: its records from `fromOffset` on, the byte after it
 * (`end`) and the offset after it (`nextOffset`: base_offset + last_offset_delta + 1). The
 * consumers decode a push batch by batch as their caller takes the records: each batch may
 * expand to RECORDS_BYTES_MAX, and a 16 MiB push of ~65 KiB gzip batches would otherwise
 * expand to ~16 GB at once. */
export function decodeBatchAt(data: Uint8Array, pos: number, partition: number, fromOffset = -1n): DecodedBatch {
  const records: ConsumerRecord[] = [];
  const { end, nextOffset } = decodeBatchInto(data, pos, partition, fromOffset, records);
  return { records, end, nextOffset };
}

function decodeBatchInto(data: Uint8Array, pos: number, partition: number, fromOffset: bigint,
                         out: ConsumerRecord[]): { end: number; nextOffset: bigint } {
  const h = readHeader(data, pos);
  const end = pos + LENGTH_PREFIX_SIZE + h.batchLength;
  const nextOffset = h.baseOffset + BigInt(h.lastOffsetDelta) + 1n;
  if (nextOffset > fromOffset) {
    const codec = CODEC_NAMES[h.attributes & CODEC_MASK];
    const body = decompress(codec, data.subarray(pos + HEADER_SIZE, end), RECORDS_BYTES_MAX);
    decodeSection(body, h, pos, partition, fromOffset, out);
  }
  return { end, nextOffset };
}

/** The fast path of docs/format.md "Records": when every record of the section has no key, no
 * headers and a value of one size V, the records sit at a stride of 29 + V and each needs only
 * its four fixed fields compared. Returns false, having added nothing, for any other section
 * (or a malformed one): decodeSection then decodes record by record and names what is wrong. */
function decodeStrided(body: Uint8Array, v: DataView, h: BatchHeader, partition: number, fromOffset: bigint,
                       out: ConsumerRecord[]): boolean {
  const n = body.length;
  const count = h.recordCount;
  if (n < RECORD_FIXED) return false;
  const length = v.getUint32(0, true);
  const vlen = length - RECORD_LENGTH_MIN;
  const stride = 4 + length;
  if (vlen < 0 || stride * count !== n || v.getInt32(17, true) !== -1 || v.getInt32(21, true) !== vlen) return false;
  // Check every record before making any: a failed check leaves `out` as it was.
  for (let p = 0; p < n; p += stride) {
    if (v.getUint32(p, true) !== length || v.getInt32(p + 17, true) !== -1 || v.getInt32(p + 21, true) !== vlen ||
        v.getUint32(p + 25 + vlen, true) !== 0) return false;
  }
  const ab = body.buffer;
  const at = body.byteOffset + 25;
  const base = h.baseOffset;
  const first = h.firstTimestamp;
  const skip = base < fromOffset; // only then can a record be before fromOffset
  for (let p = 0; p < n; p += stride) {
    const offsetDelta = v.getUint32(p + 13, true);
    const offset = base + (offsetDelta < DELTAS.length ? DELTAS[offsetDelta] : BigInt(offsetDelta));
    if (skip && offset < fromOffset) continue;
    out.push({ partition, offset, timestamp: first + readI64(v, p + 5), key: null, value: new Uint8Array(ab, at + p, vlen), headers: NO_HEADERS });
  }
  return true;
}

function decodeSection(body: Uint8Array, h: BatchHeader, pos: number, partition: number, fromOffset: bigint,
                       out: ConsumerRecord[]): void {
  const v = new DataView(body.buffer, body.byteOffset, body.length);
  if (decodeStrided(body, v, h, partition, fromOffset, out)) return;
  // Views made with the constructor: measurably cheaper per record than subarray().
  const ab = body.buffer;
  const at = body.byteOffset;
  const n = body.length;
  const base = h.baseOffset;
  const first = h.firstTimestamp;
  const where = (i: number) => `record ${i} of the batch at offset ${base} (byte ${pos})`;
  let p = 0;
  for (let i = 0; i < h.recordCount; i++) {
    if (n - p < RECORD_FIXED) throw invalid("recordTruncated", `${where(i)} is truncated`);
    const length = v.getUint32(p, true);
    const recEnd = p + 4 + length;
    if (recEnd > n || length < RECORD_LENGTH_MIN) {
      throw invalid("recordLength", `${where(i)} has length ${length}, outside the ${n - p - 4} bytes left`);
    }
    const tsDelta = readI64(v, p + 5);
    const offsetDelta = v.getUint32(p + 13, true);
    const klen = v.getInt32(p + 17, true);
    let q = p + 21;
    let key: Uint8Array | null = null;
    if (klen < 0) {
      if (klen !== -1) throw invalid("keyLength", `${where(i)} has a bad key length ${klen}`);
    } else {
      if (q + klen + 8 > recEnd) throw invalid("keyLength", `${where(i)} has a bad key length ${klen}`);
      key = new Uint8Array(ab, at + q, klen);
      q += klen;
    }
    const vlen = v.getInt32(q, true);
    q += 4;
    let value: Uint8Array | null = null;
    if (vlen < 0) {
      if (vlen !== -1) throw invalid("valueLength", `${where(i)} has a bad value length ${vlen}`);
    } else {
      if (q + vlen + 4 > recEnd) throw invalid("valueLength", `${where(i)} has a bad value length ${vlen}`);
      value = new Uint8Array(ab, at + q, vlen);
      q += vlen;
    }
    const hcount = v.getUint32(q, true);
    q += 4;
    const headers: Header[] = hcount === 0 ? NO_HEADERS : [];
    for (let k = 0; k < hcount; k++) {
      if (q + 4 > recEnd) throw invalid("headers", `${where(i)} has truncated headers`);
      const hk = v.getUint32(q, true);
      q += 4;
      if (q + hk + 4 > recEnd) throw invalid("headers", `${where(i)} has a bad header key length ${hk}`);
      let name: string;
      try {
        name = utf8Strict.decode(body.subarray(q, q + hk));
      } catch {
        throw invalid("headerName", `${where(i)} has a header name that is not UTF-8`);
      }
      q += hk;
      const hv = v.getInt32(q, true);
      q += 4;
      if (hv < -1 || q + Math.max(hv, 0) > recEnd) {
        throw invalid("headers", `${where(i)} has a bad header value length ${hv}`);
      }
      headers.push({ key: name, value: hv < 0 ? null : body.subarray(q, q + hv) });
      q += Math.max(hv, 0);
    }
    if (q !== recEnd) throw invalid("recordLeftover", `${where(i)} has ${recEnd - q} bytes past its fields`);
    const offset = base + (offsetDelta < DELTAS.length ? DELTAS[offsetDelta] : BigInt(offsetDelta));
    if (offset >= fromOffset) {
      out.push({ partition, offset, timestamp: first + tsDelta, key, value, headers });
    }
    p = recEnd;
  }
  if (p !== n) {
    throw invalid("batchLeftover", `batch at offset ${base} (byte ${pos}) has ${n - p} bytes after its ` +
      `${h.recordCount} records`);
  }
}
