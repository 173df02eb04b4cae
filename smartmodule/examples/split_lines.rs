//! split_lines: an array_map giving one record per non-empty line of the value.
//! The Rust twin of split_lines.c.
//!
//! No parameters. Lines end at "\n" (a "\r" before it is dropped); empty lines give nothing,
//! nor does a null value. Every output keeps the input's key, headers and offset.
use kolk_smartmodule::*;

pub fn array_map(record: &Record, out: &mut Emitter) -> Result<(), Error> {
    let value = match record.value() {
        Some(v) => v,
        None => return Ok(()),
    };
    for line in value.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if !line.is_empty() {
            out.emit(record.key(), Some(line))?;
        }
    }
    Ok(())
}
