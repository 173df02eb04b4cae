// split_lines: an array_map giving one record per non-empty line of the value.
//
// No parameters. Lines end at "\n" (a "\r" before it is dropped); empty lines give nothing,
// nor does a null value. Every output keeps the input's key, headers and offset.
import { Record, Emitter } from "kolk-smartmodule";

export function array_map(r: Record, em: Emitter): i32 {
  let start: i32 = 0;
  for (let i: i32 = 0; i <= r.valueLen; i++) {
    if (i < r.valueLen && load<u8>(r.valuePtr + <usize>i) != 0x0a) continue;
    let end = i;
    if (end > start && load<u8>(r.valuePtr + <usize>(end - 1)) == 0x0d) end--;
    if (end > start && em.emit(r.keyPtr, r.keyLen, r.valuePtr + <usize>start, end - start) != 0) return -1;
    start = i + 1;
  }
  return 0;
}
