// Bytes in linear memory, as (ptr, len) pairs like the C SDK's: no copies. A length of -1
// means null (a null key or value); the helpers treat it as empty.

/** The first index of needle in hay, or -1. Scans for the needle's first byte eight bytes at
 * a time (the "has zero byte" trick), then compares: as the C SDK's kolk_find. */
export function find(hay: usize, hlen: i32, needle: usize, nlen: i32): i32 {
  if (nlen <= 0) return 0;
  if (hlen < nlen) return -1;
  const last = hlen - nlen;
  const first = load<u8>(needle);
  const ones: u64 = 0x0101010101010101;
  const pat = ones * <u64>first;
  const high = ones << 7;
  let i: i32 = 0;
  while (i <= last) {
    if (last - i >= 7) {
      const x = load<u64>(hay + <usize>i) ^ pat;
      const t = (x - ones) & ~x & high;
      if (t == 0) { i += 8; continue; }
      i += <i32>(ctz(t) >> 3);
    } else if (load<u8>(hay + <usize>i) != first) {
      i++;
      continue;
    }
    if (memory.compare(hay + <usize>i, needle, <usize>nlen) == 0) return i;
    i++;
  }
  return -1;
}

/** Whether two byte ranges are equal (both null, or the same bytes). */
export function equal(a: usize, alen: i32, b: usize, blen: i32): bool {
  return alen == blen && (alen <= 0 || memory.compare(a, b, <usize>alen) == 0);
}

/** The length of the UTF-8 character at p (not ASCII), or -1: overlong forms, surrogates and
 * code points past U+10FFFF are not UTF-8. */
export function utf8Char(p: usize, e: usize): i32 {
  const c = load<u8>(p);
  let lo: u8 = 0x80, hi: u8 = 0xbf;
  let n: i32;
  if (c >= 0xc2 && c <= 0xdf) n = 2;
  else if (c >= 0xe0 && c <= 0xef) { n = 3; if (c == 0xe0) lo = 0xa0; else if (c == 0xed) hi = 0x9f; }
  else if (c >= 0xf0 && c <= 0xf4) { n = 4; if (c == 0xf0) lo = 0x90; else if (c == 0xf4) hi = 0x8f; }
  else return -1;
  if (<i32>(e - p) < n) return -1;
  const c1 = load<u8>(p + 1);
  if (c1 < lo || c1 > hi) return -1;
  for (let i = 2; i < n; i++) if ((load<u8>(p + <usize>i) & 0xc0) != 0x80) return -1;
  return n;
}

/** Whether the len bytes at ptr are UTF-8. */
export function utf8Valid(ptr: usize, len: i32): bool {
  let p = ptr;
  const e = ptr + (len > 0 ? <usize>len : 0);
  while (p < e) {
    if (load<u8>(p) < 0x80) { p++; continue; }
    const n = utf8Char(p, e);
    if (n < 0) return false;
    p += <usize>n;
  }
  return true;
}

/** The bytes as a string (UTF-8 decoded, invalid bytes replaced), or null for length -1. */
export function text(ptr: usize, len: i32): string | null {
  if (len < 0) return null;
  return String.UTF8.decodeUnsafe(ptr, <usize>len);
}

/** The bytes copied into a new Uint8Array, or null for length -1. */
export function copyBytes(ptr: usize, len: i32): Uint8Array | null {
  if (len < 0) return null;
  const a = new Uint8Array(len);
  memory.copy(a.dataStart, ptr, <usize>len);
  return a;
}

/** A string as UTF-8 in scratch memory: its address (the length is String.UTF8.byteLength). */
export function utf8(s: string): ArrayBuffer { return String.UTF8.encode(s); }

let parsed: i64 = 0;
/** Parse an optionally signed decimal integer filling all of the bytes: true (the value then
 * from parsedI64()), or false for anything else or an overflow. */
export function parseI64(ptr: usize, len: i32): bool {
  let neg = false, i = 0;
  if (len > 0 && (load<u8>(ptr) == 0x2d || load<u8>(ptr) == 0x2b)) { neg = load<u8>(ptr) == 0x2d; i = 1; }
  if (i >= len) return false;
  const limit: u64 = neg ? (<u64>1 << 63) : (<u64>1 << 63) - 1;
  let v: u64 = 0;
  for (; i < len; i++) {
    const d = <u64>load<u8>(ptr + <usize>i) - 0x30;
    if (d > 9) return false;
    if (v > (limit - d) / 10) return false;
    v = v * 10 + d;
  }
  parsed = neg ? <i64>(0 - v) : <i64>v;
  return true;
}
/** The value of the last successful parseI64. */
export function parsedI64(): i64 { return parsed; }

/** Decimal text of v into buf (at least 20 bytes); returns its length. */
export function formatU64(v: u64, buf: usize): i32 {
  let n = 0;
  let t = v;
  do { n++; t /= 10; } while (t != 0);
  for (let i = n - 1; i >= 0; i--) { store<u8>(buf + <usize>i, <u8>(0x30 + v % 10)); v /= 10; }
  return n;
}
/** Decimal text of v into buf (at least 21 bytes); returns its length. */
export function formatI64(v: i64, buf: usize): i32 {
  if (v >= 0) return formatU64(<u64>v, buf);
  store<u8>(buf, 0x2d);
  return 1 + formatU64(0 - <u64>v, buf + 1);
}
