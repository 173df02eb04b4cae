//! [`Error`]: why your function refused a record or the parameters, in words the host shows.

use core::fmt;

use crate::arena;

/// An error of a record (from a kind function) or of the parameters (from `init`). Its
/// message reaches the consumer's error and `kolk smartmodule test` through the module's
/// `kolk_error` export (at most 1024 bytes are shown).
#[derive(Clone)]
pub struct Error {
    // A literal, or text in the arena: either lasts until the SDK has read it. Not Copy, so
    // it cannot be kept in a Global past the record it was made for.
    message: &'static [u8],
}

impl Error {
    /// An error with this message.
    pub const fn new(message: &'static str) -> Error {
        Error { message: message.as_bytes() }
    }

    /// An error whose message is these bytes (copied: they may be on the stack).
    pub fn from_bytes(message: &[u8]) -> Error {
        Error::new("").append(message)
    }

    /// The out-of-memory error the SDK gives when the arena cannot grow.
    pub fn no_memory() -> Error {
        Error::new(crate::output::NO_MEMORY)
    }

    /// This error with `more` after its message (at most 1024 bytes are shown).
    pub fn append(self, more: &[u8]) -> Error {
        let n = (self.message.len() + more.len()).min(crate::glue::MESSAGE_MAX);
        let p = match arena::alloc(n) {
            Some(p) => p,
            None => return self,
        };
        let text = unsafe { core::slice::from_raw_parts_mut(p, n) };
        let head = self.message.len().min(n);
        text[..head].copy_from_slice(&self.message[..head]);
        text[head..].copy_from_slice(&more[..n - head]);
        Error { message: text }
    }

    /// This error with the decimal text of `v` after its message.
    pub fn append_i64(self, v: i64) -> Error {
        let mut digits = [0u8; 20];
        let n = crate::text::format_u64(v.unsigned_abs(), &mut digits);
        let e = if v < 0 { self.append(b"-") } else { self };
        e.append(&digits[..n])
    }

    /// The message.
    pub fn message(&self) -> &[u8] {
        self.message
    }
}

impl From<&'static str> for Error {
    fn from(message: &'static str) -> Error {
        Error::new(message)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(core::str::from_utf8(self.message).unwrap_or("(not UTF-8)"))
    }
}
