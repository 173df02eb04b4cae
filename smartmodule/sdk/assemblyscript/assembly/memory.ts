// The arena behind kolk_alloc (docs/smartmodule-abi.md, "Writing a module in AssemblyScript").
//
// Modules are built with asc's `stub` runtime: a bump allocator that never collects, so no
// garbage collector ever runs inside a call and a call's cost does not depend on what earlier
// calls left behind. kolk_alloc rewinds the bump pointer to a mark at every host call, so
// what a call allocates lives until the host's next call. The mark is set above what the
// module's top-level code allocated (its globals' objects) and, after init, above what init
// allocated (its parameters' copies, a needle, a table): those stay for the instance.
import { BLOCK_OVERHEAD } from "rt/common";
import { clearError } from "./error";

let mark: usize = 0; // a zero-size block: everything from it up is the current call's

// Rewind the stub's bump pointer to `mark`: the stub frees a block only when it is the last
// one, so the mark block is made to span everything above it, then freed. Checked: a stub
// that behaved otherwise would trap here rather than hand out memory still in use.
function rewind(): void {
  const top = heap.alloc(0);                                // the bump pointer is past this block
  const next = heap.alloc(0);
  const end = next + (next - top) - BLOCK_OVERHEAD;         // where the bump pointer is now
  store<u32>(mark - BLOCK_OVERHEAD, <u32>(end - mark));     // the mark block's size: up to it
  heap.free(mark);
  if (heap.alloc(0) != mark) unreachable();
}

/** The ABI's kolk_alloc: size writable bytes, fresh for each host call. */
export function kolkAlloc(size: i32): i32 {
  clearError(); // a new host call: no message from the last one
  if (mark == 0) mark = heap.alloc(0);
  else rewind();
  return <i32>heap.alloc(<usize>(<u32>size));
}

/** Called at the end of init: what is allocated so far stays for the life of the instance. */
export function keepAllocated(): void {
  mark = heap.alloc(0);
}

/** n bytes of scratch memory, until the host's next call. Traps when memory cannot grow. */
export function arenaAlloc(n: u32): usize {
  return heap.alloc(<usize>n);
}
