//! {{NAME}}: a filter_map SmartModule (from `kolk smartmodule generate filter_map {{NAME}} --lang rust`).
//!
//! Keeps the records that have both a key and a value, the value becoming `key=value`; drops
//! the others. No parameters.
//!
//! Build and try it:
//!   kolk smartmodule build {{NAME}}.rs
//!   kolk smartmodule test {{NAME}}.wasm --input {{NAME}}.jsonl
//! The ABI and the SDK: docs/smartmodule-abi.md, "Writing a module in Rust".
use kolk_smartmodule::*;

/// Some(output): one record at the input's offset; None: the record is dropped.
pub fn filter_map(record: &Record) -> Result<Option<Output>, Error> {
    let (key, value) = match (record.key(), record.value()) {
        (Some(k), Some(v)) => (k, v),
        _ => return Ok(None),
    };
    let mut text = Buffer::with_capacity(key.len() + 1 + value.len())?;
    text.push(key)?;
    text.push(b"=")?;
    text.push(value)?;
    Ok(Some(record.output().with_value(Some(&text))))
}
