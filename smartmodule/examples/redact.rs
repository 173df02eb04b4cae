//! redact: a map masking a field of the value's JSON object with "***".
//! The Rust twin of redact.c.
//!
//! Parameters:
//!   field  (required) the name of a top-level field; every occurrence of it is masked,
//!          whatever its type, with the JSON string "***".
//! A value without the field is passed on unchanged, as is a null value. A key is compared with
//! its escapes decoded ("p\u0077" is pw). A value that is not a JSON object is an error of that
//! record (with the SDK's message saying why): failing closed, so nothing leaks unmasked.
use kolk_smartmodule::*;

static FIELD: Global<&'static str> = Global::new("");

pub fn init(params: &Params) -> Result<(), Error> {
    params.known(&["field"])?;
    FIELD.set(params.require("field")?);
    Ok(())
}

const MASK: &[u8] = b"\"***\"";

pub fn map(record: &Record) -> Result<Output, Error> {
    let value = match record.value() {
        Some(v) => v,
        None => return Ok(record.output()),
    };
    let mut masked = Buffer::new();
    let mut copied = 0; // input bytes copied so far
    for member in json::members(value)? {
        let (key, v) = member?;
        if !key.key_is(FIELD.get())? {
            continue;
        }
        masked.push(&value[copied..v.offset])?; // what precedes the value
        masked.push(MASK)?;
        copied = v.offset + v.text.len();
    }
    if copied == 0 {
        return Ok(record.output()); // the field is not there
    }
    masked.push(&value[copied..])?;
    Ok(record.output().with_value(Some(&masked)))
}
