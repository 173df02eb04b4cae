//! kolk_smartmodule: write a Kolk SmartModule in Rust, ABI version 1 (docs/smartmodule-abi.md).
//!
//! `no_std`, no crates from outside, built by Debian's rustc 1.63 for wasm32-unknown-unknown.
//! Write one function per module, without attributes, named after its kind:
//!
//! ```ignore
//! use kolk_smartmodule::*;
//!
//! pub fn filter(record: &Record) -> bool                                   // true: keep
//! pub fn map(record: &Record) -> Result<Output, Error>
//! pub fn filter_map(record: &Record) -> Result<Option<Output>, Error>      // None: drop
//! pub fn array_map(record: &Record, out: &mut Emitter) -> Result<(), Error> // out.emit(..) 0..n times
//! pub fn aggregate(acc: &mut Accumulator, record: &Record) -> Result<Output, Error>
//! pub fn init(params: &Params) -> Result<(), Error>                        // optional
//! ```
//!
//! `kolk smartmodule build m.rs` generates the crate root that exports them (the ABI's
//! `memory`, `kolk_abi_version`, `kolk_alloc`, `kolk_error`, the kind and `init`) with the
//! `export_*!` macros below; a crate of your own (cargo) calls the same macros. An `Err`
//! from your function refuses that record (the host ends the stream naming its offset) or
//! the parameters, and its message reaches the consumer through `kolk_error`. A filter may
//! also return `Result<bool, Error>`. A panic traps (the host reports `trap`).
//!
//! Every output keeps the offset and timestamp of its input record. Memory is a bump arena
//! reset once per host call: a [`Buffer`] lasts until the SDK has written the current record;
//! parameters last as long as the instance; state kept across calls goes in a [`Global`] or,
//! for an aggregate, in the [`Accumulator`], which the host keeps from batch to batch.
#![no_std]

mod arena;
mod error;
pub mod glue;
pub mod json;
mod output;
mod params;
mod record;
pub mod text;

pub use arena::Buffer;
pub use error::Error;
pub use json::{JsonType, JsonValue};
pub use output::{Accumulator, Emitter, Output};
pub use params::{param, Global, Params, PARAMS_MAX};
pub use record::{Header, Headers, Record};
pub use text::{find, parse_i64, read_u32, read_u64, write_u32, write_u64};

/// The ABI version this SDK speaks.
pub const ABI_VERSION: i32 = glue::ABI_VERSION;

#[cfg(target_arch = "wasm32")]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    core::arch::wasm32::unreachable()
}

/// The exports every module has: `kolk_abi_version`, `kolk_alloc`, `kolk_error`.
#[doc(hidden)]
#[macro_export]
macro_rules! __kolk_common_exports {
    () => {
        #[export_name = "kolk_abi_version"]
        pub extern "C" fn __kolk_export_abi_version() -> i32 {
            $crate::ABI_VERSION
        }
        #[export_name = "kolk_alloc"]
        pub extern "C" fn __kolk_export_alloc(size: i32) -> i32 {
            $crate::glue::alloc(size)
        }
        #[export_name = "kolk_error"]
        pub extern "C" fn __kolk_export_error() -> i64 {
            $crate::glue::error()
        }
    };
}

/// Export `f: fn(&Record) -> bool` (or `-> Result<bool, Error>`) as the module's filter.
#[macro_export]
macro_rules! export_filter {
    ($f:path) => {
        $crate::__kolk_common_exports!();
        #[export_name = "filter"]
        pub extern "C" fn __kolk_export_filter(ptr: i32, len: i32) -> i64 {
            $crate::glue::filter(ptr, len, $f)
        }
    };
}

/// Export `f: fn(&Record) -> Result<Output, Error>` as the module's map.
#[macro_export]
macro_rules! export_map {
    ($f:path) => {
        $crate::__kolk_common_exports!();
        #[export_name = "map"]
        pub extern "C" fn __kolk_export_map(ptr: i32, len: i32) -> i64 {
            $crate::glue::map(ptr, len, $f)
        }
    };
}

/// Export `f: fn(&Record) -> Result<Option<Output>, Error>` as the module's filter_map.
#[macro_export]
macro_rules! export_filter_map {
    ($f:path) => {
        $crate::__kolk_common_exports!();
        #[export_name = "filter_map"]
        pub extern "C" fn __kolk_export_filter_map(ptr: i32, len: i32) -> i64 {
            $crate::glue::filter_map(ptr, len, $f)
        }
    };
}

/// Export `f: fn(&Record, &mut Emitter) -> Result<(), Error>` as the module's array_map.
#[macro_export]
macro_rules! export_array_map {
    ($f:path) => {
        $crate::__kolk_common_exports!();
        #[export_name = "array_map"]
        pub extern "C" fn __kolk_export_array_map(ptr: i32, len: i32) -> i64 {
            $crate::glue::array_map(ptr, len, $f)
        }
    };
}

/// Export `f: fn(&mut Accumulator, &Record) -> Result<Output, Error>` as the module's aggregate.
#[macro_export]
macro_rules! export_aggregate {
    ($f:path) => {
        $crate::__kolk_common_exports!();
        #[export_name = "aggregate"]
        pub extern "C" fn __kolk_export_aggregate(ptr: i32, len: i32) -> i64 {
            $crate::glue::aggregate(ptr, len, $f)
        }
    };
}

/// Export `f: fn(&Params) -> Result<(), Error>` as the module's init (optional).
#[macro_export]
macro_rules! export_init {
    ($f:path) => {
        #[export_name = "init"]
        pub extern "C" fn __kolk_export_init(ptr: i32, len: i32) -> i32 {
            $crate::glue::init(ptr, len, $f)
        }
    };
}
