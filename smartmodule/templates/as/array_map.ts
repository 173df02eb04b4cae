// {{NAME}}: an array_map SmartModule (from `kolk smartmodule generate array_map {{NAME}} --lang as`).
//
// Gives one record per space-separated word of the value, each with the input's key,
// headers, offset and timestamp; a null or blank value gives nothing. No parameters.
//
// Build and try it:
//   kolk smartmodule build {{NAME}}.ts
//   kolk smartmodule test {{NAME}}.wasm --input {{NAME}}.jsonl
// The ABI and the SDK: docs/smartmodule-abi.md ("Writing a module in AssemblyScript").
import { Record, Emitter } from "kolk-smartmodule";

// Call em.emit 0..n times; a negative return (em.emit's, or fail("why")) ends the stream
// naming this record's offset.
export function array_map(r: Record, em: Emitter): i32 {
  let start: i32 = 0;
  for (let i: i32 = 0; i <= r.valueLen; i++) {
    if (i < r.valueLen && load<u8>(r.valuePtr + <usize>i) != 0x20) continue;
    if (i > start && em.emit(r.keyPtr, r.keyLen, r.valuePtr + <usize>start, i - start) != 0) return -1;
    start = i + 1;
  }
  return 0;
}
