// JSON, strict: the C SDK's helpers (kolk_json_*), with the same names in camelCase, the same
// semantics and the same error messages ("JSON: expected , or } at byte 9"). Enough to read the
// top-level fields of an object without building a tree; what RFC 8259 refuses is refused,
// nested values are checked as thoroughly as the top level (at most JSON_DEPTH_MAX deep), and
// jsonFind refuses an object that has its field twice. Values are views into the input.
import { setError, errorAppend, errorAppendBytes } from "./error";
import { utf8Char } from "./bytes";
import { arenaAlloc } from "./memory";

export const JSON_DEPTH_MAX: u32 = 64;
export const JSON_STRING = 1, JSON_NUMBER = 2, JSON_OBJECT = 3, JSON_ARRAY = 4, JSON_TRUE = 5,
  JSON_FALSE = 6, JSON_NULL = 7;

/** A value as written (a string with its quotes): start, len, type (JSON_*). */
export class JsonValue { start: usize = 0; len: i32 = 0; type: i32 = 0; }
/** An iteration over an object's members (jsonBegin, jsonNext). */
export class JsonIter { p: usize = 0; e: usize = 0; base: usize = 0; state: i32 = 0; }

let base: usize = 0; // the document being read, for the byte positions of errors
let skipType: i32 = 0;

function jfail(what: string, at: usize): usize {
  setError("JSON: ");
  errorAppend(what);
  errorAppend(" at byte ");
  errorAppend((<i64>(at - base)).toString());
  return 0;
}
// @ts-ignore: decorator
@inline function ws(p: usize, e: usize): usize {
  while (p < e) {
    const c = load<u8>(p);
    if (c != 0x20 && c != 0x09 && c != 0x0a && c != 0x0d) break;
    p++;
  }
  return p;
}
function hex4(p: usize): i32 {
  let v = 0;
  for (let i: usize = 0; i < 4; i++) {
    const c = load<u8>(p + i), l = c | 32;
    v <<= 4;
    if (c >= 0x30 && c <= 0x39) v |= c - 0x30;
    else if (l >= 0x61 && l <= 0x66) v |= l - 0x61 + 10;
    else return -1;
  }
  return v;
}
function strEnd(p: usize, e: usize): usize { // p: after the quote
  const open = p - 1;
  while (p < e) {
    const c = load<u8>(p);
    if (c == 0x22) return p + 1;
    if (c == 0x5c) {
      const x: u8 = e - p >= 2 ? load<u8>(p + 1) : 0;
      if (x == 0x75) {
        if (e - p < 6 || hex4(p + 2) < 0) return jfail("bad \\u escape", p);
        p += 6;
      } else if (x == 0x22 || x == 0x5c || x == 0x2f || x == 0x62 || x == 0x66 || x == 0x6e || x == 0x72 || x == 0x74) {
        p += 2;
      } else {
        return jfail("bad escape", p);
      }
    } else if (c < 0x20) {
      return jfail("control character in a string", p);
    } else if (c < 0x80) {
      p++;
    } else {
      const n = utf8Char(p, e);
      if (n < 0) return jfail("invalid UTF-8 in a string", p);
      p += <usize>n;
    }
  }
  return jfail("unterminated string", open);
}
// @ts-ignore: decorator
@inline function digit(p: usize, e: usize): bool { return p < e && load<u8>(p) >= 0x30 && load<u8>(p) <= 0x39; }
function number(p: usize, e: usize): usize {
  const s = p;
  if (p < e && load<u8>(p) == 0x2d) p++;
  if (p < e && load<u8>(p) == 0x30) p++;
  else if (digit(p, e)) { while (digit(p, e)) p++; }
  else return jfail("bad number", s);
  if (p < e && load<u8>(p) == 0x2e) {
    p++;
    if (!digit(p, e)) return jfail("bad number", s);
    while (digit(p, e)) p++;
  }
  if (p < e && (load<u8>(p) | 32) == 0x65) {
    p++;
    if (p < e && (load<u8>(p) == 0x2b || load<u8>(p) == 0x2d)) p++;
    if (!digit(p, e)) return jfail("bad number", s);
    while (digit(p, e)) p++;
  }
  return p;
}
function literal(p: usize, e: usize, word: string): usize {
  const n = <usize>word.length;
  if (e - p < n) return jfail("unexpected character", p);
  for (let i: usize = 0; i < n; i++) {
    if (<i32>load<u8>(p + i) != word.charCodeAt(<i32>i)) return jfail("unexpected character", p);
  }
  return p + n;
}
/** Check and skip one value at p inside `outer` containers: the position after it, or 0
 * (error set); its type in skipType. Iterative, one bit per open container (1: object). */
function skip(p: usize, e: usize, outer: u32): usize {
  let objects: u64 = 0;
  let depth: u32 = 0;
  let first = true;
  while (true) {
    if (p >= e) return jfail("a value is missing", p);
    const c = load<u8>(p);
    if (first) {
      skipType = c == 0x22 ? JSON_STRING : c == 0x7b ? JSON_OBJECT : c == 0x5b ? JSON_ARRAY
        : c == 0x74 ? JSON_TRUE : c == 0x66 ? JSON_FALSE : c == 0x6e ? JSON_NULL : JSON_NUMBER;
      first = false;
    }
    let member = false;
    let afterValue = false;
    if (c == 0x7b || c == 0x5b) {
      if (outer + depth == JSON_DEPTH_MAX) return jfail("nested deeper than 64", p);
      if (c == 0x7b) objects |= (<u64>1) << depth; else objects &= ~((<u64>1) << depth);
      depth++;
      p = ws(p + 1, e);
      if (p < e && load<u8>(p) == (c == 0x7b ? 0x7d : 0x5d)) { p++; depth--; afterValue = true; }
      else if (c == 0x7b) member = true;
      else continue;
    } else {
      if (c == 0x22) p = strEnd(p + 1, e);
      else if (c == 0x74) p = literal(p, e, "true");
      else if (c == 0x66) p = literal(p, e, "false");
      else if (c == 0x6e) p = literal(p, e, "null");
      else if (c == 0x2d || (c >= 0x30 && c <= 0x39)) p = number(p, e);
      else return jfail("unexpected character", p);
      if (p == 0) return 0;
      afterValue = true;
    }
    while (afterValue) { // close what the value ends, then find the next value
      afterValue = false;
      if (depth == 0) return p;
      p = ws(p, e);
      const inObject = <i32>(objects >> (depth - 1)) & 1;
      if (p < e && load<u8>(p) == 0x2c) {
        p = ws(p + 1, e);
        if (inObject) member = true;
        break;
      }
      if (p < e && load<u8>(p) == (inObject ? 0x7d : 0x5d)) { p++; depth--; afterValue = true; continue; }
      return jfail(p >= e ? "unterminated object or array" : inObject ? "expected , or }" : "expected , or ]", p);
    }
    if (member) {
      if (p >= e || load<u8>(p) != 0x22) return jfail("expected a string key", p);
      p = strEnd(p + 1, e);
      if (p == 0) return 0;
      p = ws(p, e);
      if (p >= e || load<u8>(p) != 0x3a) return jfail("expected :", p);
      p = ws(p + 1, e);
    }
  }
  return 0;
}

/** Whether the len bytes at json are one JSON value (whitespace around it allowed): 0 ok, -1
 * not (error set). */
export function jsonCheck(json: usize, len: i32): i32 {
  const e = json + (len > 0 ? <usize>len : 0);
  base = json;
  const p = skip(ws(json, e), e, 0);
  if (p == 0) return -1;
  if (ws(p, e) == e) return 0;
  jfail("trailing data after the value", p);
  return -1;
}

/** Start iterating the members of a JSON object: 0 ok, -1 not an object (error set). */
export function jsonBegin(it: JsonIter, json: usize, len: i32): i32 {
  it.base = base = json;
  it.e = json + (len > 0 ? <usize>len : 0);
  it.p = ws(json, it.e);
  it.state = 0;
  if (it.p >= it.e || load<u8>(it.p) != 0x7b) {
    jfail(len < 0 ? "null, not an object" : it.p >= it.e ? "empty, not an object" : "not an object", it.p);
    return -1;
  }
  it.p = ws(it.p + 1, it.e);
  return 0;
}

/** The next member: 1 (key: a string value, value), 0 at the end, -1 malformed (including
 * anything but whitespace after the closing brace). Duplicate keys each come once. */
export function jsonNext(it: JsonIter, key: JsonValue, value: JsonValue): i32 {
  let p = it.p;
  const e = it.e;
  if (it.state == 2) return 0;
  base = it.base;
  if (p < e && load<u8>(p) == 0x7d) {
    const rest = ws(p + 1, e);
    if (rest != e) { jfail("trailing data after the object", rest); return -1; }
    it.state = 2;
    return 0;
  }
  if (it.state == 1) {
    if (p >= e || load<u8>(p) != 0x2c) { jfail(p >= e ? "unterminated object" : "expected , or }", p); return -1; }
    p = ws(p + 1, e);
  }
  if (p >= e || load<u8>(p) != 0x22) { jfail("expected a string key", p); return -1; }
  let end = strEnd(p + 1, e);
  if (end == 0) return -1;
  key.start = p; key.len = <i32>(end - p); key.type = JSON_STRING;
  p = ws(end, e);
  if (p >= e || load<u8>(p) != 0x3a) { jfail("expected :", p); return -1; }
  p = ws(p + 1, e);
  end = skip(p, e, 1); // inside the object
  if (end == 0) return -1;
  value.start = p; value.len = <i32>(end - p); value.type = skipType;
  it.p = ws(end, e);
  it.state = 1;
  return 1;
}

function put(d: usize, b: i32): usize { store<u8>(d, <u8>b); return d + 1; }

/** Decode the escapes of a string's content (without its quotes) into dst (len bytes
 * suffice): the decoded length, or -1 for a bad escape or a lone surrogate. */
export function jsonUnescape(src: usize, len: i32, dst: usize): i32 {
  let p = src, d = dst;
  const e = src + (len > 0 ? <usize>len : 0);
  while (p < e) {
    const c0 = load<u8>(p);
    if (c0 != 0x5c) { store<u8>(d++, c0); p++; continue; }
    if (e - p < 2) return -1;
    const c = load<u8>(p + 1);
    p += 2;
    if (c == 0x6e) d = put(d, 0x0a); else if (c == 0x74) d = put(d, 0x09); else if (c == 0x72) d = put(d, 0x0d);
    else if (c == 0x62) d = put(d, 0x08); else if (c == 0x66) d = put(d, 0x0c);
    else if (c == 0x22 || c == 0x5c || c == 0x2f) d = put(d, c);
    else {
      if (c != 0x75 || e - p < 4) return -1;
      let cp = hex4(p);
      if (cp < 0) return -1;
      p += 4;
      if (cp >= 0xdc00 && cp < 0xe000) return -1;
      if (cp >= 0xd800 && cp < 0xdc00) { // a surrogate pair
        const lo = e - p >= 6 && load<u8>(p) == 0x5c && load<u8>(p + 1) == 0x75 ? hex4(p + 2) : -1;
        if (lo < 0xdc00 || lo >= 0xe000) return -1;
        cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
        p += 6;
      }
      if (cp < 0x80) d = put(d, cp);
      else if (cp < 0x800) { d = put(d, 0xc0 | (cp >> 6)); d = put(d, 0x80 | (cp & 63)); }
      else if (cp < 0x10000) { d = put(d, 0xe0 | (cp >> 12)); d = put(d, 0x80 | ((cp >> 6) & 63)); d = put(d, 0x80 | (cp & 63)); }
      else {
        d = put(d, 0xf0 | (cp >> 18)); d = put(d, 0x80 | ((cp >> 12) & 63));
        d = put(d, 0x80 | ((cp >> 6) & 63)); d = put(d, 0x80 | (cp & 63));
      }
    }
  }
  return <i32>(d - dst);
}

/** 1 if the key (a string value from jsonNext) is the field's bytes, its escapes decoded
 * ("p\u0077" is pw); 0 if not; -1 if an escape is a lone surrogate (error set). */
export function jsonKeyIs(key: JsonValue, field: usize, fieldLen: i32): i32 {
  const s = key.start + 1;
  const n = key.len - 2;
  let hasEscape = false;
  for (let i = 0; i < n; i++) if (load<u8>(s + <usize>i) == 0x5c) { hasEscape = true; break; }
  if (!hasEscape) return n == fieldLen && memory.compare(s, field, <usize>n) == 0 ? 1 : 0;
  const d = arenaAlloc(<u32>n);
  const dn = jsonUnescape(s, n, d);
  if (dn < 0) { jfail("lone surrogate escape in a key", key.start); return -1; }
  return dn == fieldLen && memory.compare(d, field, <usize>dn) == 0 ? 1 : 0;
}

/** Find the top-level field (its UTF-8 bytes): 1 found (value set), 0 not, -1 the bytes are
 * not one JSON object or have the field twice (error set). Reads the whole object. */
export function jsonFind(json: usize, len: i32, field: usize, fieldLen: i32, value: JsonValue): i32 {
  const it = new JsonIter(), k = new JsonValue(), v = new JsonValue();
  let rc: i32, found = false;
  if (jsonBegin(it, json, len) != 0) return -1;
  while ((rc = jsonNext(it, k, v)) == 1) {
    const is = jsonKeyIs(k, field, fieldLen);
    if (is < 0) return -1;
    if (is == 0) continue;
    if (found) {
      setError("JSON: the field `"); errorAppendBytes(field, fieldLen); errorAppend("` is there twice");
      return -1;
    }
    value.start = v.start; value.len = v.len; value.type = v.type;
    found = true;
  }
  return rc < 0 ? -1 : found ? 1 : 0;
}

