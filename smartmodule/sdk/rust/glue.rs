//! The ABI 1 exports around the author's functions (docs/smartmodule-abi.md): what the
//! `export_*!` macros call. Not for authors: `build_rust` (or your own crate root) names
//! your functions with the macros, and these do the rest.
#![doc(hidden)]

use core::ptr;

use crate::arena;
use crate::output::{Accumulator, Emitter, Writer};
use crate::params::{self, Params};
use crate::record::{get_u32, get_u64, read_record, Record};
use crate::{Error, Output};

pub const ABI_VERSION: i32 = 1;
/// Batch-level error codes, the same values as the C SDK's: in the host's error range
/// [-2^31, -1] (anything below is read as an output address) but past any record index a
/// batch can have, so the host reports them as the batch's, with the SDK's message.
pub const ERR_BAD_INPUT: i64 = -2147483648;
pub const ERR_NO_MEMORY: i64 = -2147483647;
/// `init`: the host's parameters are not as the ABI says.
pub const INIT_BAD_PARAMS: i32 = -1000;
/// `init`: your `init` function returned an error.
pub const INIT_REFUSED: i32 = 1;
/// At most this many bytes of a message are kept (and the host shows no more).
pub const MESSAGE_MAX: usize = 1024;

static mut MESSAGE: [u8; MESSAGE_MAX] = [0; MESSAGE_MAX];
static mut MESSAGE_LEN: usize = 0;

fn set_message(text: &[u8]) {
    let mut n = text.len().min(MESSAGE_MAX);
    while n < text.len() && n > 0 && text[n] & 0xc0 == 0x80 {
        n -= 1; // cut at a character boundary
    }
    unsafe {
        let buf = &mut *ptr::addr_of_mut!(MESSAGE);
        buf[..n].copy_from_slice(&text[..n]);
        MESSAGE_LEN = n;
    }
}

/// `kolk_error`: `(address << 32) | length` of the last error's message (0: none).
pub fn error() -> i64 {
    unsafe {
        if MESSAGE_LEN == 0 {
            0
        } else {
            ((ptr::addr_of!(MESSAGE) as usize as i64) << 32) | MESSAGE_LEN as i64
        }
    }
}

/// `kolk_alloc`.
pub fn alloc(size: i32) -> i32 {
    arena::alloc_call(size as u32 as usize) as i32
}

/// `init`: keep the parameters, then ask the author's function.
pub fn init<F: FnOnce(&Params) -> Result<(), Error>>(ptr: i32, len: i32, f: F) -> i32 {
    set_message(b"");
    if let Err(e) = params::save(ptr as u32 as usize, len as u32 as usize) {
        set_message(e.message());
        return INIT_BAD_PARAMS;
    }
    match f(&Params::new()) {
        Ok(()) => 0,
        Err(e) => {
            set_message(e.message());
            INIT_REFUSED
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Filter,
    Other,
    Aggregate,
}

/// One kind call: read the input, give each record to `each`, return the output.
fn run<F>(ptr: i32, len: i32, kind: Kind, mut each: F) -> i64
where
    F: FnMut(&Record, &mut Writer, &mut Accumulator) -> Result<(), Error>,
{
    set_message(b"");
    let (mut p, end) = (ptr as u32 as usize, ptr as u32 as usize + len as u32 as usize);
    let bad_input = |what: &[u8]| {
        set_message(what);
        ERR_BAD_INPUT
    };
    if end - p < 24 {
        return bad_input(b"the input is shorter than its 24-byte head");
    }
    let count = get_u32(p as *const u8);
    let base_offset = get_u64((p + 8) as *const u8) as i64;
    let first_timestamp = get_u64((p + 16) as *const u8) as i64;
    p += 24;
    let mut acc = Accumulator::new(ptr::null_mut(), 0);
    if kind == Kind::Aggregate {
        if end - p < 4 || get_u32(p as *const u8) as usize > end - p - 4 {
            return bad_input(b"the accumulator runs past the input");
        }
        let n = get_u32(p as *const u8) as usize;
        acc = Accumulator::new((p + 4) as *mut u8, n);
        p += 4 + n;
    }
    // A filter's output is never larger than its input; other kinds grow as they go.
    let cap = 4 + (end - p) + if kind == Kind::Filter { 0 } else { 256 };
    let mut writer = match Writer::new(cap) {
        Some(w) => w,
        None => return no_memory(),
    };
    for i in 0..count {
        let (record, next) = match read_record(p as *const u8, end as *const u8, base_offset, first_timestamp, i) {
            Some(r) => r,
            None => return bad_input(b"an input record is not well-formed"),
        };
        p = next as usize;
        if let Err(e) = each(&record, &mut writer, &mut acc) {
            set_message(e.message());
            return -1 - i as i64;
        }
        arena::end_record(); // this record's scratch memory goes
    }
    if p != end {
        return bad_input(b"bytes are left over after the input's records");
    }
    match writer.finish(if kind == Kind::Aggregate { Some(&acc) } else { None }) {
        Ok((at, n)) => ((at as i64) << 32) | n as i64,
        Err(_) => no_memory(),
    }
}

fn no_memory() -> i64 {
    set_message(crate::output::NO_MEMORY.as_bytes());
    ERR_NO_MEMORY
}

/// What a filter function may return: `bool`, or `Result<bool, Error>`.
pub trait Keep {
    fn keep(self) -> Result<bool, Error>;
}

impl Keep for bool {
    fn keep(self) -> Result<bool, Error> {
        Ok(self)
    }
}

impl Keep for Result<bool, Error> {
    fn keep(self) -> Result<bool, Error> {
        self
    }
}

pub fn filter<K: Keep, F: Fn(&Record) -> K>(ptr: i32, len: i32, f: F) -> i64 {
    run(ptr, len, Kind::Filter, |r, w, _| if f(r).keep()? { w.copy(r) } else { Ok(()) })
}

pub fn map<F: Fn(&Record) -> Result<Output, Error>>(ptr: i32, len: i32, f: F) -> i64 {
    run(ptr, len, Kind::Other, |r, w, _| w.write(r, &f(r)?, None))
}

pub fn filter_map<F: Fn(&Record) -> Result<Option<Output>, Error>>(ptr: i32, len: i32, f: F) -> i64 {
    run(ptr, len, Kind::Other, |r, w, _| match f(r)? {
        Some(o) => w.write(r, &o, None),
        None => Ok(()),
    })
}

pub fn array_map<F: Fn(&Record, &mut Emitter<'_>) -> Result<(), Error>>(ptr: i32, len: i32, f: F) -> i64 {
    run(ptr, len, Kind::Other, |r, w, _| f(r, &mut Emitter { writer: w, record: r }))
}

pub fn aggregate<F: Fn(&mut Accumulator, &Record) -> Result<Output, Error>>(ptr: i32, len: i32, f: F) -> i64 {
    run(ptr, len, Kind::Aggregate, |r, w, acc| {
        let o = f(acc, r)?;
        w.write(r, &o, Some(acc))
    })
}
