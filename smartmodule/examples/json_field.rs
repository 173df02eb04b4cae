//! json_field: a map whose output value is one field of the input's JSON object.
//! The Rust twin of json_field.c.
//!
//! Parameters:
//!   field  (required) the name of a top-level field.
//! A string field gives its text (escapes decoded); a number, true or false gives its JSON
//! text; null or a missing field gives a null value. A value that is not a JSON object (or has
//! the field twice) is an error of that record: the stream ends naming its offset and the
//! SDK's message (e.g. "JSON: expected , or } at byte 9"). Key and headers are kept.
use kolk_smartmodule::json::{self, JsonType};
use kolk_smartmodule::*;

static FIELD: Global<&'static str> = Global::new("");

pub fn init(params: &Params) -> Result<(), Error> {
    params.known(&["field"])?;
    FIELD.set(params.require("field")?);
    Ok(())
}

pub fn map(record: &Record) -> Result<Output, Error> {
    let value = record.value().ok_or(Error::new("the value is null, not a JSON object"))?;
    let out = record.output();
    match json::find(value, FIELD.get())? {
        None => Ok(out.with_value(None)),
        Some(v) if v.kind == JsonType::Null => Ok(out.with_value(None)),
        Some(v) if v.kind == JsonType::String => {
            let mut text = Buffer::new();
            v.unescape_into(&mut text).map_err(|_| Error::new("the field's string has a lone surrogate escape"))?;
            Ok(out.with_value(Some(&text)))
        }
        Some(v) => Ok(out.with_value(Some(v.text))),
    }
}
