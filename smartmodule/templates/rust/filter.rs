//! {{NAME}}: a filter SmartModule (from `kolk smartmodule generate filter {{NAME}} --lang rust`).
//!
//! Keeps the records whose value contains the text of the parameter `contains`; with no
//! parameter, every record that has a value. A record with a null value is dropped.
//!
//! Parameters:
//!   contains  (optional) the text to look for
//!
//! Build and try it:
//!   kolk smartmodule build {{NAME}}.rs
//!   kolk smartmodule test {{NAME}}.wasm --input {{NAME}}.jsonl -p contains=temp
//! The ABI and the SDK: docs/smartmodule-abi.md, "Writing a module in Rust".
use kolk_smartmodule::*;

static NEEDLE: Global<&'static str> = Global::new("");

/// Runs once per stream with the client's parameters; an error refuses them, with its message.
pub fn init(params: &Params) -> Result<(), Error> {
    params.known(&["contains"])?;
    if let Some(text) = params.get("contains") {
        NEEDLE.set(text);
    }
    Ok(())
}

/// true: the record goes on unchanged; false: it is dropped.
pub fn filter(record: &Record) -> bool {
    record.value().map_or(false, |value| find(value, NEEDLE.get().as_bytes()).is_some())
}
