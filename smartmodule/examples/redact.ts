// redact: a map masking a field of the value's JSON object with "***".
//
// Parameters:
//   field  (required) the name of a top-level field; every occurrence of it is masked,
//          whatever its type, with the JSON string "***".
// A value without the field is passed on unchanged, as is a null value. A key is compared with
// its escapes decoded ("p\u0077" is pw). A value that is not a JSON object is an error of that
// record (with the SDK's message saying why): failing closed, so nothing leaks unmasked.
import {
  Record, Output, JsonIter, JsonValue, arenaAlloc, jsonBegin, jsonKeyIs, jsonNext, paramRequired, paramsKnown,
} from "kolk-smartmodule";

let field: ArrayBuffer = new ArrayBuffer(0);
const MASK = memory.data<u8>([0x22, 0x2a, 0x2a, 0x2a, 0x22]); // "***", with its quotes
const MASK_LEN: i32 = 5;

export function init(): i32 {
  if (paramsKnown(["field"]) != 0) return 1; // the message names the parameter
  const v = paramRequired("field");
  if (v === null) return 1;
  field = String.UTF8.encode(v);
  return 0;
}

export function map(r: Record, out: Output): i32 {
  if (r.valueLen < 0) return 0;
  const it = new JsonIter(), k = new JsonValue(), v = new JsonValue();
  let buf: usize = 0;
  let copied: i32 = 0, len: i32 = 0, rc: i32; // input bytes copied so far, output length
  if (jsonBegin(it, r.valuePtr, r.valueLen) != 0) return -1;
  while ((rc = jsonNext(it, k, v)) == 1) {
    const is = jsonKeyIs(k, changetype<usize>(field), field.byteLength);
    if (is < 0) return -1;
    if (is == 0) continue;
    if (buf == 0) buf = arenaAlloc(<u32>r.valueLen * 2 + 8);
    const upto = <i32>(v.start - r.valuePtr); // copy what precedes the value
    memory.copy(buf + <usize>len, r.valuePtr + <usize>copied, <usize>(upto - copied));
    len += upto - copied;
    memory.copy(buf + <usize>len, MASK, <usize>MASK_LEN);
    len += MASK_LEN;
    copied = upto + v.len;
  }
  if (rc < 0) return -1;
  if (buf != 0) {
    memory.copy(buf + <usize>len, r.valuePtr + <usize>copied, <usize>(r.valueLen - copied));
    out.setValue(buf, len + r.valueLen - copied);
  }
  return 0;
}
