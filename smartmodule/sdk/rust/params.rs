//! The parameters a client gave with the module (`-p KEY=VALUE`), and [`Global`], a place
//! for state that outlives a call (what `init` read from the parameters, for instance).

use core::cell::UnsafeCell;
use core::ptr;
use core::slice;

use crate::arena;
use crate::Error;

/// At most this many parameters (the host's limit too).
pub const PARAMS_MAX: usize = 64;

#[derive(Clone, Copy)]
struct Param {
    key: &'static str,
    value: &'static str,
}

static mut PARAMS: [Param; PARAMS_MAX] = [Param { key: "", value: "" }; PARAMS_MAX];
static mut COUNT: usize = 0;

/// The parameters of this instance. They are copied once, by `init`, into memory the arena
/// never reuses, so the `&'static str` they give out last as long as the instance. A module
/// without an `init` function has no `init` export and receives no parameters.
pub struct Params {
    _private: (),
}

impl Params {
    pub(crate) const fn new() -> Params {
        Params { _private: () }
    }

    /// The value of parameter `key`, if the client gave it.
    pub fn get(&self, key: &str) -> Option<&'static str> {
        self.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// The value of parameter `key`, or the error "missing parameter `KEY`".
    pub fn require(&self, key: &str) -> Result<&'static str, Error> {
        self.get(key).ok_or_else(|| Error::new("missing parameter `").append(key.as_bytes()).append(b"`"))
    }

    /// An integer parameter in `min..=max`: `Ok(None)` when not given (use your default), an
    /// error naming the parameter when it is not an integer or out of range.
    pub fn i64(&self, key: &str, min: i64, max: i64) -> Result<Option<i64>, Error> {
        let text = match self.get(key) {
            Some(t) => t,
            None => return Ok(None),
        };
        let named = || Error::new("parameter `").append(key.as_bytes()).append(b"`: ");
        let v = match crate::text::parse_i64(text.as_bytes()) {
            Some(v) => v,
            None => return Err(named().append(b"`").append(text.as_bytes()).append(b"` is not an integer")),
        };
        if v < min || v > max {
            return Err(named().append_i64(v).append(b" is outside ").append_i64(min).append(b"..").append_i64(max));
        }
        Ok(Some(v))
    }

    /// A parameter that is `true` or `false`: `Ok(None)` when not given, an error otherwise.
    pub fn bool(&self, key: &str) -> Result<Option<bool>, Error> {
        match self.get(key) {
            None => Ok(None),
            Some("true") => Ok(Some(true)),
            Some("false") => Ok(Some(false)),
            Some(text) => Err(Error::new("parameter `").append(key.as_bytes()).append(b"`: `")
                .append(text.as_bytes()).append(b"` is not true or false")),
        }
    }

    /// Refuse a parameter this module does not know, so a typo is not silently ignored;
    /// `initial` (the host's, for an aggregate) is always known. The error reads
    /// "unknown parameter `x` (this module takes: a, b)".
    pub fn known(&self, names: &[&str]) -> Result<(), Error> {
        for (key, _) in self.iter() {
            if key == "initial" || names.contains(&key) {
                continue;
            }
            let mut e = Error::new("unknown parameter `").append(key.as_bytes()).append(b"` (this module takes: ");
            for (i, name) in names.iter().enumerate() {
                if i > 0 {
                    e = e.append(b", ");
                }
                e = e.append(name.as_bytes());
            }
            return Err(if names.is_empty() { e.append(b"none)") } else { e.append(b")") });
        }
        Ok(())
    }

    /// How many parameters there are.
    pub fn len(&self) -> usize {
        unsafe { COUNT }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every `(key, value)`, in the order the client gave them.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &'static str)> {
        let all: &'static [Param] = unsafe { &*ptr::addr_of!(PARAMS) };
        all[..self.len()].iter().map(|p| (p.key, p.value))
    }
}

/// The value of parameter `key` (the same as `Params::get`, from anywhere).
pub fn param(key: &str) -> Option<&'static str> {
    Params::new().get(key)
}

/// Keep the `init` input's parameters for the life of the instance; an error when the input
/// is not as the ABI says (lengths past its end, more than 64, not UTF-8).
pub(crate) fn save(ptr: usize, len: usize) -> Result<(), Error> {
    let input = unsafe { slice::from_raw_parts(ptr as *const u8, len) };
    let count = match crate::text::read_u32(input, 0) {
        Some(n) => n as usize,
        None => return Err(Error::new("the host's parameters are shorter than their count")),
    };
    if count > PARAMS_MAX {
        return Err(Error::new("more than 64 parameters"));
    }
    // The host wrote the input where kolk_alloc said, in the arena: keeping it is enough.
    let saved: &'static [u8] = match arena::settle(input) {
        Some((p, n)) => unsafe { slice::from_raw_parts(p, n) },
        None => return Err(Error::new("out of memory for the parameters (the host's memory cap)")),
    };
    let mut at = 4;
    let mut params = [Param { key: "", value: "" }; PARAMS_MAX];
    for param in params.iter_mut().take(count) {
        let mut text = [""; 2];
        for part in text.iter_mut() {
            let n = match crate::text::read_u32(saved, at) {
                Some(n) if n as usize <= len - at - 4 => n as usize,
                _ => return Err(Error::new("the host's parameters are not well-formed")),
            };
            *part = core::str::from_utf8(&saved[at + 4..at + 4 + n])
                .map_err(|_| Error::new("the host's parameters are not UTF-8"))?;
            at += 4 + n;
        }
        *param = Param { key: text[0], value: text[1] };
    }
    unsafe {
        PARAMS = params;
        COUNT = count;
    }
    arena::keep_forever();
    Ok(())
}

/// A global value of a `Copy` type that a module reads and sets from its functions: the
/// safe way to keep state across calls (a parameter read in `init`, a counter).
///
/// ```ignore
/// static NEEDLE: Global<&'static str> = Global::new("");
/// pub fn init(params: &Params) -> Result<(), Error> { NEEDLE.set(params.require("needle")?); Ok(()) }
/// ```
/// Sound because a SmartModule instance runs on one thread (wasm32 without threads): `get`
/// copies the value out and `set` copies one in; no reference to the inside is ever handed out.
pub struct Global<T: Copy>(UnsafeCell<T>);

#[cfg(not(target_feature = "atomics"))]
unsafe impl<T: Copy> Sync for Global<T> {}

impl<T: Copy> Global<T> {
    pub const fn new(value: T) -> Global<T> {
        Global(UnsafeCell::new(value))
    }

    pub fn get(&self) -> T {
        unsafe { *self.0.get() }
    }

    pub fn set(&self, value: T) {
        unsafe { *self.0.get() = value }
    }
}
