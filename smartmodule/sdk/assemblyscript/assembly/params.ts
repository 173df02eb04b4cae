// Parameters, given to init by the host (docs/smartmodule-abi.md "init"): the C SDK's
// kolk_param* helpers. They live in init's input, which the arena keeps for the instance.
// Each helper that refuses sets the error message naming the parameter, so `return 1` from
// init tells the client which parameter was wrong.
import { setError, errorAppend, errorAppendBytes, fail } from "./error";
import { equal, parseI64, parsedI64 } from "./bytes";

export const PARAMS_MAX: u32 = 64;
const table: usize = memory.data(<i32>PARAMS_MAX * 16); // per parameter: keyPtr, keyLen, valuePtr, valueLen
let count: u32 = 0;

/** Read the host's parameters (init's input) in place: 0 ok, -1 not well-formed (message set). */
export function saveParams(ptr: usize, len: u32): i32 {
  const end = ptr + <usize>len;
  if (len < 4) return fail("the host's parameters are shorter than their count");
  const n = load<u32>(ptr);
  if (n > PARAMS_MAX) return fail("more than 64 parameters");
  let p = ptr + 4;
  for (let i: u32 = 0; i < n; i++) {
    for (let part: usize = 0; part < 2; part++) {
      if (end - p < 4 || load<u32>(p) > <u32>(end - p) - 4) return fail("the host's parameters are not well-formed");
      const l = load<u32>(p);
      store<u32>(table + <usize>i * 16 + part * 8, <u32>(p + 4));
      store<u32>(table + <usize>i * 16 + part * 8 + 4, l);
      p += 4 + <usize>l;
    }
  }
  count = n;
  return 0;
}

function index(key: string): i32 {
  const k = String.UTF8.encode(key);
  for (let i: u32 = 0; i < count; i++) {
    const e = table + <usize>i * 16;
    if (equal(load<u32>(e), load<i32>(e + 4), changetype<usize>(k), k.byteLength)) return <i32>i;
  }
  return -1;
}

/** How many parameters the client gave. */
export function paramCount(): u32 { return count; }
/** The name of parameter i (in the order given). */
export function paramName(i: u32): string {
  const e = table + <usize>i * 16;
  return String.UTF8.decodeUnsafe(load<u32>(e), <usize>load<u32>(e + 4));
}
/** Parameter i's value bytes: its address; paramLength(i) its length. */
export function paramPtr(i: u32): usize { return <usize>load<u32>(table + <usize>i * 16 + 8); }
export function paramLength(i: u32): i32 { return load<i32>(table + <usize>i * 16 + 12); }

/** The value of parameter key, or null if the client did not give it. */
export function param(key: string): string | null {
  const i = index(key);
  if (i < 0) return null;
  return String.UTF8.decodeUnsafe(paramPtr(<u32>i), <usize>paramLength(<u32>i));
}

/** The value of a required parameter, or null with the message "missing parameter `key`". */
export function paramRequired(key: string): string | null {
  const v = param(key);
  if (v === null) { setError("missing parameter `"); errorAppend(key); errorAppend("`"); }
  return v;
}

let lastI64: i64 = 0;
let lastBool: bool = false;

/** An integer parameter in [min, max]: 1 given (then paramI64Value()), 0 not given (use your
 * default), -1 not an integer or out of range (message set). */
export function paramI64(key: string, min: i64, max: i64): i32 {
  const i = index(key);
  if (i < 0) return 0;
  const p = paramPtr(<u32>i), n = paramLength(<u32>i);
  if (!parseI64(p, n)) {
    setError("parameter `"); errorAppend(key); errorAppend("`: `"); errorAppendBytes(p, n);
    errorAppend("` is not an integer");
    return -1;
  }
  const v = parsedI64();
  if (v < min || v > max) {
    setError("parameter `"); errorAppend(key); errorAppend("`: "); errorAppend(v.toString());
    errorAppend(" is outside "); errorAppend(min.toString()); errorAppend(".."); errorAppend(max.toString());
    return -1;
  }
  lastI64 = v;
  return 1;
}
export function paramI64Value(): i64 { return lastI64; }

/** A parameter that is "true" or "false": 1 given (then paramBoolValue()), 0 not, -1 otherwise. */
export function paramBool(key: string): i32 {
  const v = param(key);
  if (v === null) return 0;
  if (v == "true" || v == "false") { lastBool = v == "true"; return 1; }
  const i = index(key);
  setError("parameter `"); errorAppend(key); errorAppend("`: `");
  errorAppendBytes(paramPtr(<u32>i), paramLength(<u32>i)); errorAppend("` is not true or false");
  return -1;
}
export function paramBoolValue(): bool { return lastBool; }

/** Refuse a parameter this module does not know, so a typo is not silently ignored;
 * `initial` (the host's, for an aggregate) is always known. 0 ok, -1 with the message
 * "unknown parameter `x` (this module takes: a, b)". */
export function paramsKnown(known: string[]): i32 {
  for (let i: u32 = 0; i < count; i++) {
    const name = paramName(i);
    if (name == "initial" || known.includes(name)) continue;
    const e = table + <usize>i * 16;
    setError("unknown parameter `"); errorAppendBytes(load<u32>(e), load<i32>(e + 4));
    errorAppend("` (this module takes: ");
    errorAppend(known.length ? known.join(", ") : "none");
    errorAppend(")");
    return -1;
  }
  return 0;
}
