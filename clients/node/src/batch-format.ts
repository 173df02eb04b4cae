/**
 * The record batch of docs/format.md, what its encoder (batch-encode.ts) and decoder
 * (batch-decode.ts) share: the record types, the header's layout and limits, and the
 * little-endian 64-bit reads and writes of numbers of ms.
 */
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
export const CODEC_MASK = 0x07;
/** Bytes of a record besides its key, value and headers. */
export const RECORD_FIXED = 29;
export const RECORD_LENGTH_MIN = RECORD_FIXED - 4;
/** The biggest batch a decoder accepts (what Python's consumer accepts: 64 MiB). */
export const BATCH_BYTES_MAX = 64 << 20;
export const TWO32 = 2 ** 32;

export function writeI64(v: DataView, at: number, n: number): void {
  const hi = Math.floor(n / TWO32);
  v.setUint32(at, n - hi * TWO32, true);
  v.setInt32(at + 4, hi, true);
}

export function readI64(v: DataView, at: number): number {
  return v.getInt32(at + 4, true) * TWO32 + v.getUint32(at, true);
}

