//! {{NAME}}: a map SmartModule (from `kolk smartmodule generate map {{NAME}} --lang rust`).
//!
//! Upper-cases the ASCII letters of each record's value; key and headers are kept, and a
//! null or empty value stays as it is. No parameters.
//!
//! Build and try it:
//!   kolk smartmodule build {{NAME}}.rs
//!   kolk smartmodule test {{NAME}}.wasm --input {{NAME}}.jsonl
//! The ABI and the SDK: docs/smartmodule-abi.md, "Writing a module in Rust".
use kolk_smartmodule::*;

/// One output record per input record, at the input's offset. An Err refuses this record:
/// the stream ends naming its offset and your message.
pub fn map(record: &Record) -> Result<Output, Error> {
    let value = match record.value() {
        Some(v) if !v.is_empty() => v,
        _ => return Ok(record.output()),
    };
    let mut upper = Buffer::with_capacity(value.len())?; // lives until this record is written
    upper.push(value)?;
    upper.make_ascii_uppercase();
    Ok(record.output().with_value(Some(&upper)))
}
