// {{NAME}}: a filter SmartModule (from `kolk smartmodule generate filter {{NAME}} --lang as`).
//
// Keeps the records whose value contains the text of the parameter `contains`; with no
// parameter, every record that has a value. A record with a null value is dropped.
//
// Parameters:
//   contains  (optional) the text to look for
//
// Build and try it:
//   kolk smartmodule build {{NAME}}.ts
//   kolk smartmodule test {{NAME}}.wasm --input {{NAME}}.jsonl -p contains=temp
// The ABI and the SDK: docs/smartmodule-abi.md ("Writing a module in AssemblyScript").
import { Record, find, param, paramsKnown } from "kolk-smartmodule";

let needle: ArrayBuffer = new ArrayBuffer(0);

// init: runs once per stream with the client's parameters; non-zero refuses them, and the
// message the SDK helpers set says which parameter was wrong. What init allocates stays.
export function init(): i32 {
  if (paramsKnown(["contains"]) != 0) return 1;
  const text = param("contains");
  if (text !== null) needle = String.UTF8.encode(text);
  return 0;
}

// true keeps the record, false drops it. Return i32 instead to fail a record: 1 keep, 0 drop,
// negative (e.g. return fail("why")) ends the stream naming this record's offset.
export function filter(r: Record): bool {
  if (r.valueLen < 0) return false;
  return find(r.valuePtr, r.valueLen, changetype<usize>(needle), needle.byteLength) >= 0;
}
