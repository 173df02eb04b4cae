//! The bump arena behind `kolk_alloc`, and [`Buffer`], growable bytes in it.
//!
//! Memory from `__heap_base` up is one arena. `kolk_alloc` (once per host call) resets it to
//! its floor (above the parameters, which `init` keeps for good) and hands out the input
//! buffer. During a kind call the output and the accumulator are kept for the whole call;
//! everything else (a [`Buffer`], an [`Error`](crate::Error)'s text, bytes an
//! [`Output`](crate::Output) had to copy) lasts until the current record has been written,
//! then the SDK reuses it for the next record.

use core::arch::wasm32;
use core::ops::{Deref, DerefMut};
use core::ptr::{self, NonNull};

use crate::Error;

extern "C" {
    static __heap_base: u8;
}

static mut FLOOR: usize = 0; // kolk_alloc resets the arena to here
static mut TOP: usize = 0; // the next free byte
static mut KEEP: usize = 0; // a kind call keeps what lies below; per-record scratch lies above
const MEMORY_MAX: u64 = 0xffff_0000; // the last wasm32 page cannot be addressed by a length

fn start() {
    unsafe {
        if FLOOR == 0 {
            FLOOR = (ptr::addr_of!(__heap_base) as usize + 7) & !7;
            TOP = FLOOR;
            KEEP = FLOOR;
        }
    }
}

/// Make `[0, end)` addressable, growing the memory if needed.
fn reserve(end: u64) -> bool {
    let have = (wasm32::memory_size(0) as u64) << 16;
    if end <= have {
        return true;
    }
    if end > MEMORY_MAX {
        return false;
    }
    wasm32::memory_grow(0, ((end - have + 0xffff) >> 16) as usize) != usize::MAX
}

/// `n` bytes, 8-aligned, until the current record is done; `None` when memory cannot grow.
pub(crate) fn alloc(n: usize) -> Option<*mut u8> {
    start();
    unsafe {
        let at = (TOP as u64 + 7) & !7;
        if !reserve(at + n as u64) {
            return None;
        }
        TOP = (at + n as u64) as usize;
        Some(at as *mut u8)
    }
}

/// `n` bytes that last for the whole host call (the output, the accumulator).
pub(crate) fn alloc_keep(n: usize) -> Option<*mut u8> {
    let p = alloc(n)?;
    unsafe { KEEP = TOP };
    Some(p)
}

/// `kolk_alloc`: a fresh arena for the next host call, and its input buffer (0: no memory).
pub(crate) fn alloc_call(n: usize) -> usize {
    start();
    unsafe {
        TOP = FLOOR;
        let p = alloc(n).map_or(0, |p| p as usize);
        KEEP = TOP;
        p
    }
}

/// The current record is written: its scratch memory goes.
pub(crate) fn end_record() {
    unsafe { TOP = KEEP };
}

/// What lies below the top now stays for the life of the instance (the parameters).
pub(crate) fn keep_forever() {
    unsafe {
        FLOOR = TOP;
        KEEP = TOP;
    }
}

/// Whether `bytes` lie in the arena, below its top: memory that stays put until the
/// current record is written (unlike the stack, which the next call overwrites).
pub(crate) fn holds(bytes: &[u8]) -> bool {
    start();
    let at = bytes.as_ptr() as usize;
    unsafe { at >= ptr::addr_of!(__heap_base) as usize && at.saturating_add(bytes.len()) <= TOP }
}

/// `bytes` as memory that lasts until the current record is written: themselves when they
/// already are in the arena, else a copy. `None` when the copy cannot get memory.
pub(crate) fn settle(bytes: &[u8]) -> Option<(*const u8, usize)> {
    if holds(bytes) {
        return Some((bytes.as_ptr(), bytes.len()));
    }
    let p = alloc(bytes.len())?;
    unsafe { ptr::copy_nonoverlapping(bytes.as_ptr(), p, bytes.len()) };
    Some((p as *const u8, bytes.len()))
}

/// Grow an arena block of `cap` bytes holding `len` to at least `want` bytes: in place when
/// it is the last block, else moved to the top. `keep`: a block kept for the whole call.
pub(crate) fn grow(p: *mut u8, len: usize, cap: usize, want: usize, keep: bool) -> Option<(*mut u8, usize)> {
    if want <= cap {
        return Some((p, cap));
    }
    let cap2 = if cap * 2 > want { cap * 2 } else { want + 64 };
    start();
    unsafe {
        if cap > 0 && p as usize + cap == TOP && reserve(p as u64 + cap2 as u64) {
            let was_kept = KEEP == TOP;
            TOP = p as usize + cap2;
            if keep || was_kept {
                KEEP = TOP;
            }
            return Some((p, cap2));
        }
        let q = if keep { alloc_keep(cap2)? } else { alloc(cap2)? };
        if len > 0 {
            ptr::copy_nonoverlapping(p, q, len);
        }
        Some((q, cap2))
    }
}

/// Growable bytes in the arena: scratch memory for building a value, a key or an error's
/// text. It lasts until the SDK has written the current record; an [`Output`](crate::Output)
/// given its bytes points at them without copying.
pub struct Buffer {
    ptr: *mut u8,
    len: usize,
    cap: usize,
}

impl Buffer {
    /// An empty buffer (no memory yet).
    pub fn new() -> Buffer {
        Buffer { ptr: NonNull::dangling().as_ptr(), len: 0, cap: 0 }
    }

    /// An empty buffer with room for `n` bytes.
    pub fn with_capacity(n: usize) -> Result<Buffer, Error> {
        let mut b = Buffer::new();
        b.reserve(n)?;
        Ok(b)
    }

    /// Room for `more` bytes after the current ones.
    pub fn reserve(&mut self, more: usize) -> Result<(), Error> {
        let want = self.len.checked_add(more).ok_or_else(Error::no_memory)?;
        match grow(self.ptr, self.len, self.cap, want, false) {
            Some((p, cap)) => {
                self.ptr = p;
                self.cap = cap;
                Ok(())
            }
            None => Err(Error::no_memory()),
        }
    }

    /// Append bytes.
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.reserve(bytes.len())?;
        unsafe { ptr::copy(bytes.as_ptr(), self.ptr.add(self.len), bytes.len()) };
        self.len += bytes.len();
        Ok(())
    }

    /// Append one byte.
    pub fn push_byte(&mut self, b: u8) -> Result<(), Error> {
        self.push(&[b])
    }

    /// Append the decimal text of `v`.
    pub fn push_u64(&mut self, v: u64) -> Result<(), Error> {
        let mut tmp = [0u8; 20];
        let n = crate::text::format_u64(v, &mut tmp);
        self.push(&tmp[..n])
    }

    /// Append the decimal text of `v` (with a `-` when negative).
    pub fn push_i64(&mut self, v: i64) -> Result<(), Error> {
        if v < 0 {
            self.push_byte(b'-')?;
        }
        self.push_u64(v.unsigned_abs())
    }

    /// Forget the bytes from `len` on.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    pub fn clear(&mut self) {
        self.len = 0;
    }

    pub fn as_slice(&self) -> &[u8] {
        unsafe { core::slice::from_raw_parts(self.ptr, self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        unsafe { core::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Default for Buffer {
    fn default() -> Buffer {
        Buffer::new()
    }
}

impl Deref for Buffer {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl DerefMut for Buffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.as_mut_slice()
    }
}

impl AsRef<[u8]> for Buffer {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}
