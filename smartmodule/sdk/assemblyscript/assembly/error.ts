// The module's own error message, exported to the host as kolk_error (docs/smartmodule-abi.md):
// set it, then return a negative value from a kind function or non-zero from init, and the
// consumer's error ends with it. At most ERROR_BYTES_MAX bytes, cut at a character boundary.

export const ERROR_BYTES_MAX: i32 = 1024;
const errorBuf: usize = memory.data(ERROR_BYTES_MAX);
let errorLen: i32 = 0;

export function clearError(): void { errorLen = 0; }

/** Append len UTF-8 bytes at ptr to the message. */
export function errorAppendBytes(ptr: usize, len: i32): void {
  let n = len < 0 ? 0 : len;
  const room = ERROR_BYTES_MAX - errorLen;
  if (n > room) { // cut before the character that does not fit whole
    n = room;
    while (n > 0 && (load<u8>(ptr + <usize>n) & 0xc0) == 0x80) n--;
  }
  memory.copy(errorBuf + <usize>errorLen, ptr, <usize>n);
  errorLen += n;
}

/** Append text to the message. */
export function errorAppend(text: string): void {
  const utf8 = String.UTF8.encode(text);
  errorAppendBytes(changetype<usize>(utf8), utf8.byteLength);
}

export function errorAppendI64(v: i64): void { errorAppend(v.toString()); }

/** Replace the message. */
export function setError(message: string): void { errorLen = 0; errorAppend(message); }

/** setError(message), then -1: `return fail("the value is not a number");` */
export function fail(message: string): i32 { setError(message); return -1; }

/** The message as the export kolk_error returns it: (ptr << 32) | len, 0 for none. */
export function errorResult(): i64 {
  return errorLen == 0 ? 0 : (<i64>errorBuf << 32) | <i64>errorLen;
}

/** asc's `abort` (a failed assert, an out-of-range index, `throw`), given by the builder with
 * `--use abort=`: the message is set for kolk_error, then the call traps (wasm cannot unwind),
 * so the host reports a trap. No import of env.abort is needed. */
export function kolkAbort(message: string | null, file: string | null, line: u32, column: u32): void {
  setError("abort: ");
  if (message !== null) errorAppend(message);
  if (file !== null) { errorAppend(" at "); errorAppend(file); errorAppend(":"); errorAppend(line.toString()); }
  unreachable();
}
