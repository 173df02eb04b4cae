// count_per_key: an aggregate keeping a running count of records per key.
//
// No parameters (the host's `initial` parameter, if given, must be a table as below).
// Each output record has the input's key and the value "key=count" (a null key is shown
// as "null"; it is counted apart from a key spelled null).
//
// The accumulator is a compact table, one entry per key seen, in first-seen order:
//   key_length u32 (0xffffffff: the null key), key bytes, count u64, all little-endian.
// Finding a key walks the table: fine for thousands of keys per stream, not millions.
import { Record, Output, Accumulator, arenaAlloc, fail, formatU64 } from "kolk-smartmodule";

const NULL_KEY: u32 = 0xffffffff;
const NOT_A_TABLE = "the accumulator is not a count table (see count_per_key.c)";
const NULL_TEXT = memory.data<u8>([0x6e, 0x75, 0x6c, 0x6c]); // "null"

export function aggregate(acc: Accumulator, r: Record, out: Output): i32 {
  const klen: u32 = r.keyLen < 0 ? NULL_KEY : <u32>r.keyLen;
  let pos: u32 = 0;
  let n: u64 = 0;
  while (pos < acc.len) { // look for the key
    if (acc.len - pos < 4) return fail(NOT_A_TABLE);
    const elen = load<u32>(acc.data + <usize>pos);
    const ebytes: u32 = elen == NULL_KEY ? 0 : elen;
    if (ebytes > acc.len - pos - 4 || acc.len - pos - 4 - ebytes < 8) return fail(NOT_A_TABLE);
    if (elen == klen && memory.compare(acc.data + <usize>pos + 4, r.keyPtr, <usize>ebytes) == 0) {
      const c = acc.data + <usize>(pos + 4 + ebytes);
      n = load<u64>(c) + 1;
      store<u64>(c, n);
      break;
    }
    pos += 12 + ebytes;
  }
  if (n == 0) { // a new key: append an entry
    const kbytes: u32 = klen == NULL_KEY ? 0 : klen;
    const entry = arenaAlloc(12 + kbytes);
    store<u32>(entry, klen);
    memory.copy(entry + 4, r.keyPtr, <usize>kbytes);
    n = 1;
    store<u64>(entry + 4 + <usize>kbytes, n);
    if (acc.append(entry, 12 + kbytes) != 0) return -1;
  }
  const shown: u32 = klen == NULL_KEY ? 4 : klen;
  const text = arenaAlloc(shown + 21);
  memory.copy(text, klen == NULL_KEY ? NULL_TEXT : r.keyPtr, <usize>shown);
  store<u8>(text + <usize>shown, 0x3d);
  out.setValue(text, <i32>(shown + 1) + formatU64(n, text + <usize>shown + 1));
  return 0;
}
