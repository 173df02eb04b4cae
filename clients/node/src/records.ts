/**
 * The record batch of docs/format.md, as one module for the package's other modules and the
 * public API: the shared layout (batch-format.ts), the encoder (batch-encode.ts) and the
 * decoder (batch-decode.ts).
 */
export type { Codec } from "./compression.js";
export { RECORDS_BYTES_MAX } from "./compression.js";
export * from "./batch-format.js";
export * from "./batch-encode.js";
export * from "./batch-decode.js";
