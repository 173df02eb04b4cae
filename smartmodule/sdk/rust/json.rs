//! JSON, strict, as in the C SDK (smartmodule/sdk/kolk_smartmodule.h): read the top-level
//! fields of an object without building a tree or allocating. What RFC 8259 refuses is
//! refused (bad escapes, control characters and invalid UTF-8 in strings, numbers like `01`
//! or `1.`, literals other than true/false/null, trailing commas, anything after the object),
//! nested values are checked as thoroughly as the top level (up to [`DEPTH_MAX`] deep), keys
//! are compared with their escapes decoded, and [`find`] refuses an object that has its field
//! twice. A refusal is an [`Error`] saying what is wrong and where: "JSON: expected , or } at
//! byte 9", the same words as the C SDK's.

use crate::{Buffer, Error};

/// Containers nested deeper than this are refused.
pub const DEPTH_MAX: u32 = 64;

/// What a JSON value is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JsonType {
    String,
    Number,
    Object,
    Array,
    True,
    False,
    Null,
}

/// A value as written in the text (a string keeps its quotes), where it starts in the
/// document (a byte position), and its type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JsonValue<'j> {
    pub text: &'j [u8],
    pub offset: usize,
    pub kind: JsonType,
}

impl<'j> JsonValue<'j> {
    /// A string's content between its quotes (escapes not decoded); `None` for other types.
    pub fn string_content(&self) -> Option<&'j [u8]> {
        match self.kind {
            JsonType::String => Some(&self.text[1..self.text.len() - 1]),
            _ => None,
        }
    }

    /// A string's content with its escapes decoded, appended to `out`.
    pub fn unescape_into(&self, out: &mut Buffer) -> Result<(), Error> {
        match self.string_content() {
            Some(s) => unescape(s, out),
            None => Err(Error::new("JSON: the value is not a string")),
        }
    }

    /// Whether this string (a key from [`members`]) is `field`, its escapes decoded:
    /// `"p\u0077"` is the key `pw`.
    pub fn key_is(&self, field: &str) -> Result<bool, Error> {
        let s = match self.string_content() {
            Some(s) => s,
            None => return Ok(false),
        };
        if !s.contains(&b'\\') {
            return Ok(s == field.as_bytes());
        }
        if s.len() < field.len() {
            return Ok(false); // decoding only shortens
        }
        let mut decoded = Buffer::with_capacity(s.len())?;
        if unescape(s, &mut decoded).is_err() {
            return Err(fail("bad escape or lone surrogate in a key", self.offset));
        }
        Ok(&decoded[..] == field.as_bytes())
    }
}

fn fail(what: &str, at: usize) -> Error {
    Error::new("JSON: ").append(what.as_bytes()).append(b" at byte ").append_i64(at as i64)
}

fn ws(j: &[u8], mut p: usize) -> usize {
    while p < j.len() && matches!(j[p], b' ' | b'\t' | b'\n' | b'\r') {
        p += 1;
    }
    p
}

fn hex4(p: &[u8]) -> Option<u32> {
    let mut v = 0;
    for &c in p.get(..4)? {
        v = v << 4 | (c as char).to_digit(16)?;
    }
    Some(v)
}

/// The length of the (not ASCII) UTF-8 character at `p`: overlong forms, surrogates and code
/// points past U+10FFFF are not UTF-8.
fn utf8_char(j: &[u8], p: usize) -> Option<usize> {
    let c = j[p];
    let (n, lo, hi) = match c {
        0xc2..=0xdf => (2, 0x80, 0xbf),
        0xe0 => (3, 0xa0, 0xbf),
        0xed => (3, 0x80, 0x9f),
        0xe1..=0xef => (3, 0x80, 0xbf),
        0xf0 => (4, 0x90, 0xbf),
        0xf4 => (4, 0x80, 0x8f),
        0xf1..=0xf3 => (4, 0x80, 0xbf),
        _ => return None,
    };
    let ch = j.get(p..p + n)?;
    if ch[1] < lo || ch[1] > hi || ch[2..].iter().any(|&b| b & 0xc0 != 0x80) {
        return None;
    }
    Some(n)
}

/// The position after a string's closing quote; `p` is after its opening quote.
fn string_end(j: &[u8], mut p: usize) -> Result<usize, Error> {
    let open = p - 1;
    let e = j.len();
    while p < e {
        let c = j[p];
        if c == b'"' {
            return Ok(p + 1);
        }
        if c == b'\\' {
            let x = if e - p >= 2 { j[p + 1] } else { 0 };
            if x == b'u' {
                if e - p < 6 || hex4(&j[p + 2..]).is_none() {
                    return Err(fail("bad \\u escape", p));
                }
                p += 6;
            } else if matches!(x, b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') {
                p += 2;
            } else {
                return Err(fail("bad escape", p));
            }
        } else if c < 0x20 {
            return Err(fail("control character in a string", p));
        } else if c < 0x80 {
            p += 1;
        } else {
            p += utf8_char(j, p).ok_or_else(|| fail("invalid UTF-8 in a string", p))?;
        }
    }
    Err(fail("unterminated string", open))
}

fn number(j: &[u8], mut p: usize) -> Result<usize, Error> {
    let s = p;
    let digit = |p: usize| p < j.len() && j[p].is_ascii_digit();
    if p < j.len() && j[p] == b'-' {
        p += 1;
    }
    if p < j.len() && j[p] == b'0' {
        p += 1;
    } else if digit(p) {
        while digit(p) {
            p += 1;
        }
    } else {
        return Err(fail("bad number", s));
    }
    if p < j.len() && j[p] == b'.' {
        p += 1;
        if !digit(p) {
            return Err(fail("bad number", s));
        }
        while digit(p) {
            p += 1;
        }
    }
    if p < j.len() && j[p] | 32 == b'e' {
        p += 1;
        if p < j.len() && (j[p] == b'+' || j[p] == b'-') {
            p += 1;
        }
        if !digit(p) {
            return Err(fail("bad number", s));
        }
        while digit(p) {
            p += 1;
        }
    }
    Ok(p)
}

fn literal(j: &[u8], p: usize, word: &[u8]) -> Result<usize, Error> {
    if j.get(p..p + word.len()) != Some(word) {
        return Err(fail("unexpected character", p));
    }
    Ok(p + word.len())
}

enum Step {
    Value,
    After,
    Member,
}

/// Check and skip the value at `p`: the position after it, and its type. Iterative, with one
/// bit per open container (1: an object), so depth costs no stack.
fn skip(j: &[u8], mut p: usize) -> Result<(usize, JsonType), Error> {
    let e = j.len();
    let kind = match j.get(p) {
        None => return Err(fail("a value is missing", p)),
        Some(b'"') => JsonType::String,
        Some(b'{') => JsonType::Object,
        Some(b'[') => JsonType::Array,
        Some(b't') => JsonType::True,
        Some(b'f') => JsonType::False,
        Some(b'n') => JsonType::Null,
        Some(_) => JsonType::Number,
    };
    let mut objects: u64 = 0;
    let mut depth: u32 = 0;
    let mut step = Step::Value;
    loop {
        match step {
            Step::Value => {
                if p >= e {
                    return Err(fail("a value is missing", p));
                }
                let c = j[p];
                if c == b'{' || c == b'[' {
                    if depth == DEPTH_MAX {
                        return Err(fail("nested deeper than 64", p));
                    }
                    if c == b'{' {
                        objects |= 1 << depth;
                    } else {
                        objects &= !(1 << depth);
                    }
                    depth += 1;
                    p = ws(j, p + 1);
                    if p < e && j[p] == (if c == b'{' { b'}' } else { b']' }) {
                        p += 1;
                        depth -= 1;
                        step = Step::After;
                    } else if c == b'{' {
                        step = Step::Member;
                    }
                    continue;
                }
                p = match c {
                    b'"' => string_end(j, p + 1)?,
                    b't' => literal(j, p, b"true")?,
                    b'f' => literal(j, p, b"false")?,
                    b'n' => literal(j, p, b"null")?,
                    b'-' | b'0'..=b'9' => number(j, p)?,
                    _ => return Err(fail("unexpected character", p)),
                };
                step = Step::After;
            }
            Step::After => {
                if depth == 0 {
                    return Ok((p, kind));
                }
                p = ws(j, p);
                let in_object = (objects >> (depth - 1)) & 1 == 1;
                if p < e && j[p] == b',' {
                    p = ws(j, p + 1);
                    step = if in_object { Step::Member } else { Step::Value };
                } else if p < e && j[p] == (if in_object { b'}' } else { b']' }) {
                    p += 1;
                    depth -= 1;
                } else {
                    let what = if p >= e {
                        "unterminated object or array"
                    } else if in_object {
                        "expected , or }"
                    } else {
                        "expected , or ]"
                    };
                    return Err(fail(what, p));
                }
            }
            Step::Member => {
                if p >= e || j[p] != b'"' {
                    return Err(fail("expected a string key", p));
                }
                p = ws(j, string_end(j, p + 1)?);
                if p >= e || j[p] != b':' {
                    return Err(fail("expected :", p));
                }
                p = ws(j, p + 1);
                step = Step::Value;
            }
        }
    }
}

/// Check that `json` is one JSON value (whitespace around it allowed).
pub fn check(json: &[u8]) -> Result<JsonType, Error> {
    let (end, kind) = skip(json, ws(json, 0))?;
    if ws(json, end) != json.len() {
        return Err(fail("trailing data after the value", end));
    }
    Ok(kind)
}

/// The members of a JSON object, in order, as written: `(key, value)`, the key a string
/// value (duplicate keys each come once). An error ends the walk.
pub struct Members<'j> {
    json: &'j [u8],
    pos: usize,
    state: u8, // 0: before the first member, 1: after a member, 2: done
}

/// Walk the members of the object in `json`; an error if it does not start as one.
pub fn members(json: &[u8]) -> Result<Members<'_>, Error> {
    let p = ws(json, 0);
    if p >= json.len() {
        return Err(fail("empty, not an object", p));
    }
    if json[p] != b'{' {
        return Err(fail("not an object", p));
    }
    Ok(Members { json, pos: ws(json, p + 1), state: 0 })
}

impl<'j> Members<'j> {
    fn member(&mut self) -> Result<Option<(JsonValue<'j>, JsonValue<'j>)>, Error> {
        let j = self.json;
        let e = j.len();
        let mut p = self.pos;
        if p < e && j[p] == b'}' {
            let rest = ws(j, p + 1);
            if rest != e {
                return Err(fail("trailing data after the object", rest));
            }
            self.state = 2;
            return Ok(None);
        }
        if self.state == 1 {
            if p >= e || j[p] != b',' {
                return Err(fail(if p >= e { "unterminated object" } else { "expected , or }" }, p));
            }
            p = ws(j, p + 1);
        }
        if p >= e || j[p] != b'"' {
            return Err(fail("expected a string key", p));
        }
        let end = string_end(j, p + 1)?;
        let key = JsonValue { text: &j[p..end], offset: p, kind: JsonType::String };
        p = ws(j, end);
        if p >= e || j[p] != b':' {
            return Err(fail("expected :", p));
        }
        p = ws(j, p + 1);
        let (end, kind) = skip(j, p)?;
        let value = JsonValue { text: &j[p..end], offset: p, kind };
        self.pos = ws(j, end);
        self.state = 1;
        Ok(Some((key, value)))
    }
}

impl<'j> Iterator for Members<'j> {
    type Item = Result<(JsonValue<'j>, JsonValue<'j>), Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.state == 2 {
            return None;
        }
        match self.member() {
            Ok(m) => m.map(Ok),
            Err(e) => {
                self.state = 2;
                Some(Err(e))
            }
        }
    }
}

/// The top-level field `field` of the object in `json`, `Ok(None)` when it is absent; an
/// error when `json` is not one JSON object or has the field twice. Reads the whole object.
pub fn find<'j>(json: &'j [u8], field: &str) -> Result<Option<JsonValue<'j>>, Error> {
    let mut found = None;
    for member in members(json)? {
        let (key, value) = member?;
        if !key.key_is(field)? {
            continue;
        }
        if found.is_some() {
            return Err(Error::new("JSON: the field `").append(field.as_bytes()).append(b"` is there twice"));
        }
        found = Some(value);
    }
    Ok(found)
}

/// Decode the escapes of a string's content (without its quotes) into `out`; `\uXXXX`
/// (and surrogate pairs) become UTF-8. An error for a bad escape or a lone surrogate.
pub fn unescape(src: &[u8], out: &mut Buffer) -> Result<(), Error> {
    let bad = || Error::new("JSON: bad escape or lone surrogate in a string");
    out.reserve(src.len())?;
    let mut p = 0;
    while p < src.len() {
        if src[p] != b'\\' {
            let run = src[p..].iter().position(|&b| b == b'\\').unwrap_or(src.len() - p);
            out.push(&src[p..p + run])?;
            p += run;
            continue;
        }
        let e = *src.get(p + 1).ok_or_else(bad)?;
        p += 2;
        let simple = match e {
            b'n' => Some(b'\n'),
            b't' => Some(b'\t'),
            b'r' => Some(b'\r'),
            b'b' => Some(8),
            b'f' => Some(12),
            b'"' | b'\\' | b'/' => Some(e),
            _ => None,
        };
        if let Some(b) = simple {
            out.push_byte(b)?;
            continue;
        }
        if e != b'u' {
            return Err(bad());
        }
        let mut cp = hex4(&src[p..]).ok_or_else(bad)?;
        p += 4;
        if (0xdc00..0xe000).contains(&cp) {
            return Err(bad());
        }
        if (0xd800..0xdc00).contains(&cp) {
            // a surrogate pair: the low half must follow
            let lo = if src.get(p..p + 2) == Some(b"\\u") { hex4(&src[p + 2..]) } else { None };
            let lo = lo.filter(|lo| (0xdc00..0xe000).contains(lo)).ok_or_else(bad)?;
            cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
            p += 6;
        }
        let ch = char::from_u32(cp).ok_or_else(bad)?;
        let mut utf8 = [0u8; 4];
        out.push(ch.encode_utf8(&mut utf8).as_bytes())?;
    }
    Ok(())
}
