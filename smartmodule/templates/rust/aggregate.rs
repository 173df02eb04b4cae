//! {{NAME}}: an aggregate SmartModule (from `kolk smartmodule generate aggregate {{NAME}} --lang rust`).
//!
//! Counts records: the accumulator, and each output record's value, is the count so far in
//! decimal. The host keeps the accumulator from batch to batch (and across reconnects).
//!
//! Parameters:
//!   initial  (optional, the host's) the count to start from, e.g. -p initial=100
//!
//! Build and try it:
//!   kolk smartmodule build {{NAME}}.rs
//!   kolk smartmodule test {{NAME}}.wasm --input {{NAME}}.jsonl -p initial=100
//! The ABI and the SDK: docs/smartmodule-abi.md, "Writing a module in Rust".
use kolk_smartmodule::*;

/// The output keeps the input's key and headers; its value is the accumulator after this record.
pub fn aggregate(acc: &mut Accumulator, record: &Record) -> Result<Output, Error> {
    let count = match acc.as_slice() {
        b"" => 0,
        text => parse_i64(text).filter(|&n| n >= 0).ok_or(Error::new(
            "the accumulator is not a decimal count (see the parameter `initial`)"))?,
    };
    let mut text = Buffer::new();
    text.push_i64(count + 1)?;
    acc.set(&text)?;
    Ok(record.output().with_accumulator())
}
