// {{NAME}}: a map SmartModule (from `kolk smartmodule generate map {{NAME}} --lang as`).
//
// Gives every record with its value's ASCII letters in upper case; key, headers, offset and
// timestamp stay as they were, and a null value stays null. No parameters.
//
// Build and try it:
//   kolk smartmodule build {{NAME}}.ts
//   kolk smartmodule test {{NAME}}.wasm --input {{NAME}}.jsonl
// The ABI and the SDK: docs/smartmodule-abi.md ("Writing a module in AssemblyScript").
import { Record, Output, arenaAlloc } from "kolk-smartmodule";

// out starts as a copy of the record: change what you need. A negative return (e.g. return
// fail("why")) ends the stream with an error naming this record's offset.
export function map(r: Record, out: Output): i32 {
  if (r.valueLen <= 0) return 0;
  const text = arenaAlloc(<u32>r.valueLen); // lives until the host's next call
  for (let i: i32 = 0; i < r.valueLen; i++) {
    const c = load<u8>(r.valuePtr + <usize>i);
    store<u8>(text + <usize>i, c >= 0x61 && c <= 0x7a ? c - 32 : c);
  }
  out.setValue(text, r.valueLen);
  return 0;
}
