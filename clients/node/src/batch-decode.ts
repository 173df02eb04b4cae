/**
 * Decoding record batches of docs/format.md back to back into records. Pure functions over
 * bytes; the header is read with a DataView, the only per-byte loop is the CRC's. Every refusal
 * is an InvalidBatchError (CorruptDataError for a CRC that does not match) whose `reason` names
 * the problem and whose message names the batch and record, as segments/batch.py and
 * segments/records.py refuse them.
 */
import { CorruptDataError } from "./errors.js";
import { crc32c } from "./crc32c.js";
import { CODEC_NAMES, RECORDS_BYTES_MAX, decompress, decompressAsync, invalid } from "./compression.js";
import { BATCH_BYTES_MAX, CODEC_MASK, CRC_START, HEADER_SIZE, LENGTH_PREFIX_SIZE, MAGIC, RECORD_FIXED, RECORD_LENGTH_MIN,
  readI64, type ConsumerRecord, type Header } from "./batch-format.js";

/** BigInts of the common offset deltas, made once: one BigInt allocation per record, not two. */
const DELTAS: readonly bigint[] = Array.from({ length: 8192 }, (_, i) => BigInt(i));

/** The headers of every decoded record that has none: one shared, frozen, empty array. */
const NO_HEADERS: Header[] = Object.freeze([]) as unknown as Header[];
const utf8Strict = new TextDecoder("utf-8", { fatal: true });

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

/** The checked header of the batch at `pos`, the byte after it and the offset after it. */
function located(data: Uint8Array, pos: number): { h: BatchHeader; end: number; nextOffset: bigint } {
  const h = readHeader(data, pos);
  return { h, end: pos + LENGTH_PREFIX_SIZE + h.batchLength, nextOffset: h.baseOffset + BigInt(h.lastOffsetDelta) + 1n };
}

/** decodeBatchAt with a gzip section expanded in node:zlib's thread pool, off the event loop
 * (the consumers' path: a 4 MiB gzip section held the event loop for ~tens of ms when expanded
 * synchronously; docs/clients-node.md "Consumer"). Same records, same refusals, same limit;
 * `signal` (a reader's close) stops an expansion waiting or running, with an AbortError. */
export async function decodeBatchAtAsync(data: Uint8Array, pos: number, partition: number, fromOffset = -1n,
                                         signal?: AbortSignal): Promise<DecodedBatch> {
  const { h, end, nextOffset } = located(data, pos);
  const records: ConsumerRecord[] = [];
  if (nextOffset > fromOffset) {
    const body = await decompressAsync(CODEC_NAMES[h.attributes & CODEC_MASK], data.subarray(pos + HEADER_SIZE, end), RECORDS_BYTES_MAX, signal);
    decodeSection(body, h, pos, partition, fromOffset, records);
  }
  return { records, end, nextOffset };
}

function decodeBatchInto(data: Uint8Array, pos: number, partition: number, fromOffset: bigint,
                         out: ConsumerRecord[]): { end: number; nextOffset: bigint } {
  const { h, end, nextOffset } = located(data, pos);
  if (nextOffset > fromOffset) {
    const body = decompress(CODEC_NAMES[h.attributes & CODEC_MASK], data.subarray(pos + HEADER_SIZE, end), RECORDS_BYTES_MAX);
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
