// {{NAME}}: a filter_map SmartModule (from `kolk smartmodule generate filter_map {{NAME}} --lang as`).
//
// Keeps the records that have both a key and a value, with the value `key=value`; drops
// the others. Headers, offset and timestamp stay as they were. No parameters.
//
// Build and try it:
//   kolk smartmodule build {{NAME}}.ts
//   kolk smartmodule test {{NAME}}.wasm --input {{NAME}}.jsonl
// The ABI and the SDK: docs/smartmodule-abi.md ("Writing a module in AssemblyScript").
import { Record, Output, arenaAlloc } from "kolk-smartmodule";

// 1 emits out (a copy of the record, changed as you like), 0 drops the record; a negative
// return (e.g. return fail("why")) ends the stream naming this record's offset.
export function filter_map(r: Record, out: Output): i32 {
  if (r.keyLen < 0 || r.valueLen < 0) return 0;
  const n = <u32>r.keyLen + 1 + <u32>r.valueLen;
  const text = arenaAlloc(n);
  memory.copy(text, r.keyPtr, <usize>r.keyLen);
  store<u8>(text + <usize>r.keyLen, 0x3d); // =
  memory.copy(text + <usize>r.keyLen + 1, r.valuePtr, <usize>r.valueLen);
  out.setValue(text, <i32>n);
  return 1;
}
