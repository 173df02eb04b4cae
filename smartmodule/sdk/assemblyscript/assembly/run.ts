// The kind call (docs/smartmodule-abi.md "A kind call"): read the host's input, call the
// author's function once per record, write the output. The builder's glue exports these as
// the ABI's functions; a module author does not call them.
import { Record, Output, Emitter, Accumulator } from "./record";
import { arenaAlloc, keepAllocated } from "./memory";
import { fail, setError, errorAppend, clearError } from "./error";
import { saveParams } from "./params";

export const ERR_BAD_INPUT: i64 = -2147483648; // the host's input is not well-formed
export const ERR_NO_MEMORY: i64 = -2147483647; // (memory.grow failing traps in the stub runtime)
export const ERR_BAD_OUTPUT: i64 = -2147483646;
export const INIT_BAD_PARAMS: i32 = -1000;

const KIND_FILTER = 0, KIND_MAP = 1, KIND_FILTER_MAP = 2, KIND_ARRAY_MAP = 3, KIND_AGGREGATE = 4;

/** Parse the record at p into r: the position after it, or 0 if it is not well-formed. */
function readRecord(p: usize, end: usize, r: Record): usize {
  if (end - p < 29) return 0;
  const length = load<u32>(p);
  if (length < 25 || length > <u32>(end - p) - 4) return 0;
  let q = p + 5;
  const rend = p + 4 + <usize>length;
  r.rawPtr = p; r.rawLen = 4 + length;
  r.timestampDelta = load<i64>(q);
  r.offsetDelta = load<u32>(q + 8);
  r.keyLen = load<i32>(q + 12);
  q += 16;
  if (r.keyLen < -1 || (r.keyLen > 0 && <u32>r.keyLen > <u32>(rend - q) - 8)) return 0;
  r.keyPtr = q; q += (r.keyLen > 0 ? <usize>r.keyLen : 0);
  r.valueLen = load<i32>(q);
  q += 4;
  if (r.valueLen < -1 || (r.valueLen > 0 && <u32>r.valueLen > <u32>(rend - q) - 4)) return 0;
  r.valuePtr = q; q += (r.valueLen > 0 ? <usize>r.valueLen : 0);
  r.headerCount = load<u32>(q);
  q += 4;
  r.headersPtr = q;
  for (let h: u32 = 0; h < r.headerCount; h++) {
    if (rend - q < 8) return 0;
    const nl = load<u32>(q);
    if (nl > <u32>(rend - q) - 8) return 0;
    const vl = load<i32>(q + 4 + <usize>nl);
    q += 8 + <usize>nl;
    if (vl < -1 || (vl > 0 && <u32>vl > <u32>(rend - q))) return 0;
    q += vl > 0 ? <usize>vl : 0;
  }
  if (q != rend) return 0;
  r.headersLen = <u32>(rend - r.headersPtr);
  return rend;
}

function badInput(message: string): i64 { fail(message); return ERR_BAD_INPUT; }

// One function type per kind; the glue adapts the author's function to it.
export type FilterFn = (r: Record) => i32;
export type MapFn = (r: Record, out: Output) => i32;
export type ArrayMapFn = (r: Record, em: Emitter) => i32;
export type AggregateFn = (acc: Accumulator, r: Record, out: Output) => i32;

// @ts-ignore: decorator
@inline function run(ptr: i32, len: i32, kind: i32, filter: FilterFn | null, map: MapFn | null,
                     arrayMap: ArrayMapFn | null, aggregate: AggregateFn | null): i64 {
  let p = <usize>(<u32>ptr);
  const end = p + <usize>(<u32>len);
  if (<u32>len < 24) return badInput("the host's input is shorter than its header");
  const count = load<u32>(p);
  const baseOffset = load<i64>(p + 8), firstTs = load<i64>(p + 16);
  p += 24;
  const acc = new Accumulator();
  if (kind == KIND_AGGREGATE) {
    if (end - p < 4 || load<u32>(p) > <u32>(end - p) - 4) return badInput("the host's accumulator runs past its input");
    acc.len = acc.cap = load<u32>(p);
    acc.data = p + 4;
    p += 4 + <usize>acc.len;
  }
  const o = new Emitter();
  o.cap = 4 + <u32>(end - p) + (kind == KIND_FILTER ? 0 : 256); // a filter's output is never larger
  o.buf = arenaAlloc(o.cap);
  o.len = 4;
  const r = new Record();
  const out = new Output();
  o.input = r;
  for (let i: u32 = 0; i < count; i++) {
    p = readRecord(p, end, r);
    if (p == 0) {
      setError("the host's input: record "); errorAppend(i.toString()); errorAppend(" is not well-formed");
      return ERR_BAD_INPUT;
    }
    r.index = i;
    clearError(); // a message belongs to the record that failed
    r.offset = baseOffset + <i64>r.offsetDelta;
    r.timestamp = firstTs + r.timestampDelta;
    let rc: i32;
    let w: i32 = 0;
    if (kind == KIND_FILTER) {
      rc = filter!(r);
      if (rc > 0) {
        memory.copy(o.buf + <usize>o.len, r.rawPtr, <usize>r.rawLen);
        o.len += r.rawLen; o.count++;
      }
    } else if (kind == KIND_ARRAY_MAP) {
      rc = arrayMap!(r, o);
    } else {
      out.keyPtr = r.keyPtr; out.keyLen = r.keyLen; out.valuePtr = r.valuePtr; out.valueLen = r.valueLen;
      out.headerCount = r.headerCount; out.headersPtr = r.headersPtr; out.headersLen = r.headersLen;
      if (kind == KIND_AGGREGATE) {
        out.valueLen = -2; // "the accumulator after this record", unless the author sets a value
        rc = aggregate!(acc, r, out);
        if (out.valueLen == -2) { out.valuePtr = acc.data; out.valueLen = <i32>acc.len; }
        if (rc >= 0) w = o.emitOutput(out);
      } else {
        rc = map!(r, out);
        if (rc > 0 || (rc == 0 && kind == KIND_MAP)) w = o.emitOutput(out);
      }
    }
    if (rc < 0 || w < 0) return -1 - <i64>i;
  }
  if (p != end) return badInput("the host's input has bytes after its last record");
  store<u32>(o.buf, o.count);
  let buf = o.buf, n = o.len;
  if (kind == KIND_AGGREGATE) { // the output starts with the new accumulator
    const b = arenaAlloc(4 + acc.len + n);
    store<u32>(b, acc.len);
    memory.copy(b + 4, acc.data, <usize>acc.len);
    memory.copy(b + 4 + <usize>acc.len, buf, <usize>n);
    buf = b; n += 4 + acc.len;
  }
  return (<i64>buf << 32) | <i64>n;
}

export function runFilter(ptr: i32, len: i32, fn: FilterFn): i64 { return run(ptr, len, KIND_FILTER, fn, null, null, null); }
export function runMap(ptr: i32, len: i32, fn: MapFn): i64 { return run(ptr, len, KIND_MAP, null, fn, null, null); }
export function runFilterMap(ptr: i32, len: i32, fn: MapFn): i64 { return run(ptr, len, KIND_FILTER_MAP, null, fn, null, null); }
export function runArrayMap(ptr: i32, len: i32, fn: ArrayMapFn): i64 { return run(ptr, len, KIND_ARRAY_MAP, null, null, fn, null); }
export function runAggregate(ptr: i32, len: i32, fn: AggregateFn): i64 { return run(ptr, len, KIND_AGGREGATE, null, null, null, fn); }

/** The ABI's init: read the parameters, call the author's init, keep what it allocated. */
export function runInit(ptr: i32, len: i32, fn: () => i32): i32 {
  if (saveParams(<usize>(<u32>ptr), <u32>len) != 0) return INIT_BAD_PARAMS;
  const rc = fn();
  keepAllocated();
  return rc;
}
