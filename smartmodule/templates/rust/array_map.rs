//! {{NAME}}: an array_map SmartModule (from `kolk smartmodule generate array_map {{NAME}} --lang rust`).
//!
//! One record per space-separated word of the value, each with the input's key, headers and
//! offset; a null or empty value gives none. No parameters.
//!
//! Build and try it:
//!   kolk smartmodule build {{NAME}}.rs
//!   kolk smartmodule test {{NAME}}.wasm --input {{NAME}}.jsonl
//! The ABI and the SDK: docs/smartmodule-abi.md, "Writing a module in Rust".
use kolk_smartmodule::*;

/// Emit 0..n records; each gets the input's offset, timestamp and headers.
pub fn array_map(record: &Record, out: &mut Emitter) -> Result<(), Error> {
    for word in record.value().unwrap_or(b"").split(|&b| b == b' ') {
        if !word.is_empty() {
            out.emit(record.key(), Some(word))?;
        }
    }
    Ok(())
}
