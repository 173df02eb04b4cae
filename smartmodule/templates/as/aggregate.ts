// {{NAME}}: an aggregate SmartModule (from `kolk smartmodule generate aggregate {{NAME}} --lang as`).
//
// Counts records. The accumulator is the count as decimal text (empty: 0), kept by the host
// from batch to batch; each output record is its input with the count so far as its value.
// The host's parameter `initial` sets the starting accumulator (e.g. -p initial=100).
//
// Build and try it:
//   kolk smartmodule build {{NAME}}.ts
//   kolk smartmodule test {{NAME}}.wasm --input {{NAME}}.jsonl
// The ABI and the SDK: docs/smartmodule-abi.md ("Writing a module in AssemblyScript").
import { Record, Output, Accumulator, fail, parseI64, parsedI64 } from "kolk-smartmodule";

// acc is the accumulator (change it in place, or with acc.splice / acc.setString); out starts
// as a copy of the record, its value the accumulator after this record unless you set it. A
// negative return (e.g. fail("why")) ends the stream naming this record's offset.
export function aggregate(acc: Accumulator, r: Record, out: Output): i32 {
  let n: i64 = 0;
  if (acc.len > 0) {
    if (!parseI64(acc.data, <i32>acc.len) || parsedI64() < 0)
      return fail("the accumulator is not a decimal count (see the parameter `initial`)");
    n = parsedI64();
  }
  return acc.setString((n + 1).toString());
}
