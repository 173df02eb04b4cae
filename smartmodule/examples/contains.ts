// contains: a filter that keeps the records whose value contains the bytes of a needle.
//
// Parameters:
//   needle  (required) the text to look for; init refuses the stream without it, or with
//           any other parameter (a typo would otherwise go unnoticed), naming the parameter.
// A record with a null value is dropped. Build: kolk smartmodule build contains.ts
import { Record, find, paramsKnown, paramRequired } from "kolk-smartmodule";

let needle: ArrayBuffer = new ArrayBuffer(0);

export function init(): i32 {
  if (paramsKnown(["needle"]) != 0) return 1; // non-zero: the parameters are refused
  const v = paramRequired("needle");
  if (v === null) return 1; // the message names what was wrong
  needle = String.UTF8.encode(v); // allocated in init: kept for the instance
  return 0;
}

export function filter(r: Record): bool {
  return r.valueLen >= 0 && find(r.valuePtr, r.valueLen, changetype<usize>(needle), needle.byteLength) >= 0;
}
