// json_field: a map whose output value is one field of the input's JSON object.
//
// Parameters:
//   field  (required) the name of a top-level field.
// A string field gives its text (escapes decoded); a number, true or false gives its JSON
// text; null or a missing field gives a null value. A value that is not a JSON object (or has
// the field twice) is an error of that record: the stream ends naming its offset and the
// SDK's message (e.g. "JSON: expected , or } at byte 9"). Key and headers are kept.
import {
  Record, Output, JsonValue, JSON_NULL, JSON_STRING, arenaAlloc, fail, jsonFind, jsonUnescape, paramRequired,
  paramsKnown,
} from "kolk-smartmodule";

let field: ArrayBuffer = new ArrayBuffer(0);

export function init(): i32 {
  if (paramsKnown(["field"]) != 0) return 1; // the message names the parameter
  const v = paramRequired("field");
  if (v === null) return 1;
  field = String.UTF8.encode(v);
  return 0;
}

export function map(r: Record, out: Output): i32 {
  const v = new JsonValue();
  if (r.valueLen < 0) return fail("the value is null, not a JSON object");
  const found = jsonFind(r.valuePtr, r.valueLen, changetype<usize>(field), field.byteLength, v);
  if (found < 0) return -1; // the SDK said what is wrong with the JSON
  if (found == 0 || v.type == JSON_NULL) {
    out.setValue(0, -1);
  } else if (v.type == JSON_STRING) {
    const text = arenaAlloc(<u32>v.len);
    const n = jsonUnescape(v.start + 1, v.len - 2, text);
    if (n < 0) return fail("the field's string has a lone surrogate escape");
    out.setValue(text, n);
  } else {
    out.setValue(v.start, v.len);
  }
  return 0;
}
