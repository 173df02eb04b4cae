// Records as views over the host's input (no copies), outputs, the array_map emitter and the
// aggregate's accumulator: the C SDK's kolk_record, kolk_output, kolk_emitter and kolk_acc.
import { text, copyBytes } from "./bytes";
import { arenaAlloc } from "./memory";
import { fail } from "./error";

/** One header: name and value (valueLen -1: null), views into the record. */
export class Header {
  namePtr: usize = 0; nameLen: i32 = 0; valuePtr: usize = 0; valueLen: i32 = 0;
  name(): string { return String.UTF8.decodeUnsafe(this.namePtr, <usize>this.nameLen); }
  value(): string | null { return text(this.valuePtr, this.valueLen); }
}

/** Header i of an encoded header list, or null if out of range. */
export function headerAt(headers: usize, count: u32, i: u32): Header | null {
  let p = headers;
  for (let h: u32 = 0; h < count; h++) {
    const nl = load<u32>(p);
    const vl = load<i32>(p + 4 + <usize>nl);
    if (h == i) {
      const r = new Header();
      r.namePtr = p + 4; r.nameLen = <i32>nl; r.valuePtr = p + 8 + <usize>nl; r.valueLen = vl;
      return r;
    }
    p += 8 + <usize>nl + (vl > 0 ? <usize>vl : 0);
  }
  return null;
}

/** An input record: views into the host's input, valid until the kind function returns. */
export class Record {
  offset: i64 = 0; timestamp: i64 = 0;        // absolute
  offsetDelta: u32 = 0; timestampDelta: i64 = 0; // from the batch's base offset / first timestamp
  keyPtr: usize = 0; keyLen: i32 = -1;        // keyLen -1: a null key
  valuePtr: usize = 0; valueLen: i32 = -1;    // valueLen -1: a null value
  headerCount: u32 = 0; headersPtr: usize = 0; headersLen: u32 = 0; // encoded, after the count
  index: u32 = 0;                             // 0-based, in the input batch
  rawPtr: usize = 0; rawLen: u32 = 0;         // the whole encoded record

  /** The key as text (UTF-8 decoded), or null. Copies: prefer keyPtr/keyLen when you can. */
  key(): string | null { return text(this.keyPtr, this.keyLen); }
  /** The value as text (UTF-8 decoded), or null. Copies: prefer valuePtr/valueLen. */
  value(): string | null { return text(this.valuePtr, this.valueLen); }
  keyBytes(): Uint8Array | null { return copyBytes(this.keyPtr, this.keyLen); }
  valueBytes(): Uint8Array | null { return copyBytes(this.valuePtr, this.valueLen); }
  /** The first header named name, or null. */
  header(name: string): Header | null {
    for (let i: u32 = 0; i < this.headerCount; i++) {
      const h = headerAt(this.headersPtr, this.headerCount, i)!;
      if (h.name() == name) return h;
    }
    return null;
  }
}

/** What a map, filter_map or aggregate emits: starts as the input's key, value and headers.
 * The bytes it points at are copied when the record is written (input, arena or static). */
export class Output {
  keyPtr: usize = 0; keyLen: i32 = -1;
  valuePtr: usize = 0; valueLen: i32 = -1;
  headerCount: u32 = 0; headersPtr: usize = 0; headersLen: u32 = 0;

  setKey(ptr: usize, len: i32): void { this.keyPtr = ptr; this.keyLen = len; }
  setValue(ptr: usize, len: i32): void { this.valuePtr = ptr; this.valueLen = len; }
  /** The key as UTF-8 of s (null: a null key). */
  setKeyString(s: string | null): void {
    if (s === null) { this.setKey(0, -1); return; }
    const b = String.UTF8.encode(s);
    this.setKey(changetype<usize>(b), b.byteLength);
  }
  /** The value as UTF-8 of s (null: a null value). */
  setValueString(s: string | null): void {
    if (s === null) { this.setValue(0, -1); return; }
    const b = String.UTF8.encode(s);
    this.setValue(changetype<usize>(b), b.byteLength);
  }
  /** The value as the bytes of a (null: a null value). */
  setValueBytes(a: Uint8Array | null): void {
    if (a === null) { this.setValue(0, -1); return; }
    this.setValue(a.dataStart, a.length);
  }
  /** Drop every header. */
  clearHeaders(): void { this.headerCount = 0; this.headersLen = 0; }
  /** Add a header (value null: a null value): 0 ok. */
  addHeader(name: string, value: string | null): i32 {
    const n = String.UTF8.encode(name);
    const v: ArrayBuffer | null = value === null ? null : String.UTF8.encode(value);
    const nl = <u32>n.byteLength;
    const vl: u32 = v === null ? 0 : <u32>v.byteLength;
    const p = arenaAlloc(this.headersLen + 8 + nl + vl);
    memory.copy(p, this.headersPtr, <usize>this.headersLen);
    const q = p + <usize>this.headersLen;
    store<u32>(q, nl); memory.copy(q + 4, changetype<usize>(n), <usize>nl);
    store<i32>(q + 4 + <usize>nl, v === null ? -1 : <i32>vl);
    if (v !== null) memory.copy(q + 8 + <usize>nl, changetype<usize>(v), <usize>vl);
    this.headersPtr = p; this.headersLen += 8 + nl + vl; this.headerCount++;
    return 0;
  }
}

/** The output buffer of a kind call: records in the format of docs/format.md. */
export class Emitter {
  buf: usize = 0; len: u32 = 0; cap: u32 = 0; count: u32 = 0;
  input: Record = changetype<Record>(0);

  room(n: u64): void { // grows by moving to a new block; the stub runtime traps when memory cannot grow
    if (<u64>this.len + n <= <u64>this.cap) return;
    const want = <u64>this.len + n;
    const cap = <u64>this.cap * 2 > want ? <u64>this.cap * 2 : want + 256;
    const b = arenaAlloc(<u32>min<u64>(cap, 0x7fffffff));
    memory.copy(b, this.buf, <usize>this.len);
    this.buf = b; this.cap = <u32>min<u64>(cap, 0x7fffffff);
  }
  /** Append a record with the input record's offset and timestamp deltas: 0, or negative. */
  write(keyPtr: usize, keyLen: i32, valuePtr: usize, valueLen: i32, headerCount: u32, headersPtr: usize,
        headersLen: u32): i32 {
    if (keyLen < -1 || valueLen < -1) return fail("an output key or value length is below -1");
    const kl = <u32>(keyLen > 0 ? keyLen : 0), vl = <u32>(valueLen > 0 ? valueLen : 0);
    const size = <u64>29 + kl + vl + headersLen;
    if (size > 0x7fffffff) return fail("an output record is larger than 2 GiB");
    this.room(size);
    let p = this.buf + <usize>this.len;
    store<u32>(p, <u32>size - 4);
    store<u8>(p + 4, 0);
    store<i64>(p + 5, this.input.timestampDelta);
    store<u32>(p + 13, this.input.offsetDelta);
    store<i32>(p + 17, keyLen);
    memory.copy(p + 21, keyPtr, <usize>kl); p += 21 + <usize>kl;
    store<i32>(p, valueLen);
    memory.copy(p + 4, valuePtr, <usize>vl); p += 4 + <usize>vl;
    store<u32>(p, headerCount);
    memory.copy(p + 4, headersPtr, <usize>headersLen);
    this.len += <u32>size; this.count++;
    return 0;
  }
  /** array_map: emit one record with the input's headers and offset: 0 ok, negative: return it. */
  emit(keyPtr: usize, keyLen: i32, valuePtr: usize, valueLen: i32): i32 {
    const r = this.input;
    return this.write(keyPtr, keyLen, valuePtr, valueLen, r.headerCount, r.headersPtr, r.headersLen);
  }
  /** array_map: emit strings (null: null) with the input's headers. */
  emitStrings(key: string | null, value: string | null): i32 {
    const o = new Output();
    o.setKeyString(key); o.setValueString(value);
    return this.emit(o.keyPtr, o.keyLen, o.valuePtr, o.valueLen);
  }
  emitOutput(o: Output): i32 {
    return this.write(o.keyPtr, o.keyLen, o.valuePtr, o.valueLen, o.headerCount, o.headersPtr, o.headersLen);
  }
}

/** An aggregate's accumulator as a growable buffer, from the host (the previous batch's, the
 * parameter `initial`, or empty) and back to it (kept for the next batch). */
export class Accumulator {
  data: usize = 0; len: u32 = 0; cap: u32 = 0;

  /** Room for cap bytes: 0 ok. */
  reserve(cap: u32): i32 {
    if (cap <= this.cap) return 0;
    const c = this.cap * 2 > cap ? this.cap * 2 : cap + 64;
    const b = arenaAlloc(c);
    memory.copy(b, this.data, <usize>this.len);
    this.data = b; this.cap = c;
    return 0;
  }
  /** Replace `remove` bytes at pos by the insertLen bytes at insert (which may lie in the acc). */
  splice(pos: u32, remove: u32, insert: usize, insertLen: u32): i32 {
    if (pos > this.len || remove > this.len - pos) return fail("Accumulator.splice: the range is outside the accumulator");
    let ins = insert;
    if (insertLen > 0 && ins >= this.data && ins < this.data + <usize>this.cap) { // copy first: the acc moves
      const t = arenaAlloc(insertLen);
      memory.copy(t, ins, <usize>insertLen); ins = t;
    }
    const len = this.len - remove + insertLen;
    if (this.reserve(len) != 0) return -1;
    memory.copy(this.data + <usize>(pos + insertLen), this.data + <usize>(pos + remove), <usize>(this.len - pos - remove));
    memory.copy(this.data + <usize>pos, ins, <usize>insertLen);
    this.len = len;
    return 0;
  }
  append(ptr: usize, n: u32): i32 { return this.splice(this.len, 0, ptr, n); }
  /** The accumulator as text (UTF-8 decoded). */
  text(): string { return String.UTF8.decodeUnsafe(this.data, <usize>this.len); }
  /** Replace the whole accumulator by the UTF-8 of s. */
  setString(s: string): i32 {
    const b = String.UTF8.encode(s);
    return this.splice(0, this.len, changetype<usize>(b), <u32>b.byteLength);
  }
}
