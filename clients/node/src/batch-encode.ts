/**
 * Encoding a record batch of docs/format.md from records: the records section written with a
 * DataView, compressed, framed by its header and CRC-32C (as segments/batch.py writes it).
 */
import { crc32c } from "./crc32c.js";
import { CODEC_NUMBERS, compress, compressAsync, invalid, type Codec } from "./compression.js";
import { CRC_START, HEADER_SIZE, LENGTH_PREFIX_SIZE, MAGIC, NO_IDENTITY, RECORD_FIXED, TWO32, writeI64,
  type BatchIdentity, type ProducerRecord } from "./batch-format.js";

export interface EncodeOptions {
  codec: Codec;
  identity?: BatchIdentity;
  /** Assigned by the server on append; only tools and tests set these. */
  baseOffset?: bigint;
  leaderEpoch?: number;
}


const utf8 = new TextEncoder();

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
