//! contains: a filter that keeps the records whose value contains the bytes of a needle.
//! The Rust twin of contains.c.
//!
//! Parameters:
//!   needle  (required) the text to look for; init refuses the stream without it, or with
//!           any other parameter (a typo would otherwise go unnoticed), naming the parameter.
//! A record with a null value is dropped. Build: kolk smartmodule build contains.rs
use kolk_smartmodule::*;

static NEEDLE: Global<&'static str> = Global::new("");

pub fn init(params: &Params) -> Result<(), Error> {
    params.known(&["needle"])?; // an error refuses the parameters, with its message
    NEEDLE.set(params.require("needle")?);
    Ok(())
}

pub fn filter(record: &Record) -> bool {
    record.value().map_or(false, |v| find(v, NEEDLE.get().as_bytes()).is_some())
}
