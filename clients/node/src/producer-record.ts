/**
 * One record as a producer takes it: the send options, the checks made at send() (a record's
 * fields are what the wire carries, and a record alone fits a batch the SPU takes), and the
 * key partitioner. Mirrors core/client/producer.py's record checks.
 */
import { crc32c } from "./crc32c.js";
import { InvalidRequestError } from "./errors.js";
import { MAX_MESSAGE_BYTES_DEFAULT } from "./limits.js";
import type { Header } from "./records.js";

export const RECORD_OVERHEAD_BYTES = 29;
export const BATCH_HEADER_BYTES = 61;
/** One record alone in a batch of the storage's batch limit (4 MiB), as Python. */
export const RECORD_BYTES_MAX = MAX_MESSAGE_BYTES_DEFAULT - BATCH_HEADER_BYTES;
export interface SendOptions { key?: Uint8Array | string | null; headers?: Header[]; timestamp?: number; partition?: number }

export const bytes = (x: Uint8Array | string | null | undefined): Uint8Array | null =>
  x === undefined || x === null ? null : typeof x === "string" ? new TextEncoder().encode(x) : x;

/** A record alone must fit a batch the SPU takes (Python's RECORD_BYTES_MAX). */
export function checkSize(size: number): void {
  if (size > RECORD_BYTES_MAX) {
    throw new InvalidRequestError(`a record of ${size} bytes is more than the largest batch an SPU accepts (${RECORD_BYTES_MAX} bytes with its header)`);
  }
}

export const what = (x: unknown) => (x === null ? "null" : typeof x === "object" ? (x as object).constructor?.name ?? "object" : typeof x);

/** A record's fields are what the wire carries: found at send(), not in a batch whose other
 * records would then fail with it. */
export function checkRecord(key: unknown, value: unknown, opts: SendOptions): void {
  if (value !== null && !(value instanceof Uint8Array)) {
    throw new InvalidRequestError(`a record's value is a Uint8Array, a string or null, not ${what(value)}`);
  }
  if (key !== null && !(key instanceof Uint8Array)) {
    throw new InvalidRequestError(`a record's key is a Uint8Array, a string or null, not ${what(key)}`);
  }
  if (opts.timestamp !== undefined && !Number.isSafeInteger(opts.timestamp)) {
    throw new InvalidRequestError(`a record's timestamp is an integer of ms since the epoch, not ${String(opts.timestamp)}`);
  }
  const hs = opts.headers;
  if (hs === undefined) return;
  if (!Array.isArray(hs)) throw new InvalidRequestError(`a record's headers are a list of {key, value}, not ${what(hs)}`);
  for (const h of hs) {
    if (h === null || typeof h !== "object" || typeof h.key !== "string" ||
        (h.value !== null && h.value !== undefined && !(h.value instanceof Uint8Array))) {
      throw new InvalidRequestError("a record's header is {key: string, value: Uint8Array | null}");
    }
  }
}

export function partitionForKey(key: Uint8Array, count: number): number { return crc32c(key) % count; }
