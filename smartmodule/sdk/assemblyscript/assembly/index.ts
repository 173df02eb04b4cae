// kolk-smartmodule: write a Kolk SmartModule in AssemblyScript, ABI version 1
// (docs/smartmodule-abi.md, "Writing a module in AssemblyScript").
//
// Export ONE kind function from your module (and optionally init); `kolk smartmodule build
// module.ts` writes the ABI's exports around it:
//   export function filter(r: Record): bool                       true keep (or i32: 1 keep, 0 drop)
//   export function map(r: Record, out: Output): i32               >= 0 emit out
//   export function filter_map(r: Record, out: Output): i32        1 emit, 0 drop
//   export function array_map(r: Record, em: Emitter): i32         em.emit(...) 0..n times
//   export function aggregate(acc: Accumulator, r: Record, out: Output): i32
//   export function init(): i32      optional: check parameters (param*), 0 accepts
// A negative return is an error of that record; say why first: `return fail("not a number");`
export { find, equal, utf8Valid, utf8Char, text, copyBytes, utf8, parseI64, parsedI64, formatU64, formatI64 } from "./bytes";
export { setError, fail, clearError, errorAppend, errorAppendBytes, errorAppendI64, ERROR_BYTES_MAX } from "./error";
export { arenaAlloc } from "./memory";
export {
  JsonValue, JsonIter, jsonCheck, jsonBegin, jsonNext, jsonUnescape, jsonKeyIs, jsonFind, JSON_DEPTH_MAX,
  JSON_STRING, JSON_NUMBER, JSON_OBJECT, JSON_ARRAY, JSON_TRUE, JSON_FALSE, JSON_NULL,
} from "./json";
export { Record, Output, Emitter, Accumulator, Header, headerAt } from "./record";
export {
  param, paramRequired, paramI64, paramI64Value, paramBool, paramBoolValue, paramsKnown, paramCount, paramName,
  paramPtr, paramLength, PARAMS_MAX,
} from "./params";
