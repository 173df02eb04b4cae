//! What a module sends on: [`Output`] records, the [`Emitter`] of an array_map, the
//! [`Accumulator`] of an aggregate, and the writer that encodes them for the host.

use core::ptr;
use core::slice;

use crate::arena;
use crate::record::Record;
use crate::Error;

#[derive(Clone, Copy)]
enum Field {
    Null,
    Bytes(*const u8, usize),
    Accumulator, // aggregate: the accumulator after this record
}

/// A record to send on. Every output keeps the offset and timestamp of the input record it
/// came from (a module cannot move a record); you choose its key, value and headers.
///
/// Bytes given to an `Output` are referenced when they already live in the input or the
/// arena (a [`Buffer`](crate::Buffer), the record's own key and value) and copied into the
/// arena otherwise (a literal, an array on the stack), so any `&[u8]` will do.
#[derive(Clone)]
pub struct Output {
    key: Field,
    value: Field,
    headers: *const u8,
    headers_len: usize,
    header_count: u32,
    failed: bool, // a copy could not get memory: the call fails with "out of memory"
}

impl Output {
    /// A record with a null key, a null value and no headers.
    pub fn new() -> Output {
        Output { key: Field::Null, value: Field::Null, headers: ptr::null(), headers_len: 0, header_count: 0,
                 failed: false }
    }

    pub(crate) fn from_record(r: &Record) -> Output {
        let mut o = Output::new();
        o.key = r.key().map_or(Field::Null, |k| Field::Bytes(k.as_ptr(), k.len()));
        o.value = r.value().map_or(Field::Null, |v| Field::Bytes(v.as_ptr(), v.len()));
        let (h, len, count) = r.encoded_headers();
        o.headers = h;
        o.headers_len = len;
        o.header_count = count;
        o
    }

    fn field(&mut self, bytes: Option<&[u8]>) -> Field {
        match bytes {
            None => Field::Null,
            Some(b) => match arena::settle(b) {
                Some((p, n)) => Field::Bytes(p, n),
                None => {
                    self.failed = true;
                    Field::Null
                }
            },
        }
    }

    /// Set the key (`None`: null).
    pub fn set_key(&mut self, key: Option<&[u8]>) {
        self.key = self.field(key);
    }

    /// Set the value (`None`: null).
    pub fn set_value(&mut self, value: Option<&[u8]>) {
        self.value = self.field(value);
    }

    /// This output with another key (`None`: null).
    pub fn with_key(mut self, key: Option<&[u8]>) -> Output {
        self.set_key(key);
        self
    }

    /// This output with another value (`None`: null).
    pub fn with_value(mut self, value: Option<&[u8]>) -> Output {
        self.set_value(value);
        self
    }

    /// Aggregate only: the value is the accumulator as it is after this record.
    pub fn with_accumulator(mut self) -> Output {
        self.value = Field::Accumulator;
        self
    }

    /// Add a header after the others.
    pub fn add_header(&mut self, name: &str, value: Option<&[u8]>) -> Result<(), Error> {
        let vl = value.map_or(0, |v| v.len());
        let size = self.headers_len + 8 + name.len() + vl;
        let p = arena::alloc(size).ok_or_else(Error::no_memory)?;
        unsafe {
            if self.headers_len > 0 {
                ptr::copy_nonoverlapping(self.headers, p, self.headers_len);
            }
            let q = p.add(self.headers_len);
            ptr::copy_nonoverlapping((name.len() as u32).to_le_bytes().as_ptr(), q, 4);
            ptr::copy_nonoverlapping(name.as_ptr(), q.add(4), name.len());
            let vlen = value.map_or(-1i32, |v| v.len() as i32);
            ptr::copy_nonoverlapping(vlen.to_le_bytes().as_ptr(), q.add(4 + name.len()), 4);
            if let Some(v) = value {
                ptr::copy_nonoverlapping(v.as_ptr(), q.add(8 + name.len()), vl);
            }
        }
        self.headers = p;
        self.headers_len = size;
        self.header_count += 1;
        Ok(())
    }

    /// This output with one more header (no memory: the call fails with "out of memory").
    pub fn with_header(mut self, name: &str, value: Option<&[u8]>) -> Output {
        if self.add_header(name, value).is_err() {
            self.failed = true;
        }
        self
    }

    /// Drop every header.
    pub fn clear_headers(&mut self) {
        self.headers = ptr::null();
        self.headers_len = 0;
        self.header_count = 0;
    }

    /// This output without headers.
    pub fn without_headers(mut self) -> Output {
        self.clear_headers();
        self
    }
}

impl Default for Output {
    fn default() -> Output {
        Output::new()
    }
}

impl From<&Record> for Output {
    fn from(r: &Record) -> Output {
        Output::from_record(r)
    }
}

/// The output of a kind call being built: a records section, kept for the whole call.
pub(crate) struct Writer {
    buf: *mut u8,
    len: usize,
    cap: usize,
    count: u32,
}

pub(crate) const NO_MEMORY: &str = "out of memory: the output could not grow (the host's memory cap)";

impl Writer {
    /// Room for `cap` bytes to start with; the first 4 hold the record count.
    pub(crate) fn new(cap: usize) -> Option<Writer> {
        let buf = arena::alloc_keep(cap.max(4))?;
        Some(Writer { buf, len: 4, cap: cap.max(4), count: 0 })
    }

    fn room(&mut self, n: usize) -> Result<*mut u8, Error> {
        let want = self.len.checked_add(n).filter(|&w| w <= 0x7fff_ffff).ok_or_else(Error::no_memory)?;
        let (buf, cap) = arena::grow(self.buf, self.len, self.cap, want, true).ok_or_else(Error::no_memory)?;
        self.buf = buf;
        self.cap = cap;
        Ok(unsafe { buf.add(self.len) })
    }

    /// The input record, unchanged (a filter keeping it).
    pub(crate) fn copy(&mut self, r: &Record) -> Result<(), Error> {
        let raw = r.raw();
        let p = self.room(raw.len())?;
        unsafe { ptr::copy_nonoverlapping(raw.as_ptr(), p, raw.len()) };
        self.len += raw.len();
        self.count += 1;
        Ok(())
    }

    /// An output record with the input record's offset and timestamp deltas.
    pub(crate) fn write(&mut self, r: &Record, o: &Output, acc: Option<&Accumulator>) -> Result<(), Error> {
        if o.failed {
            return Err(Error::no_memory());
        }
        let resolve = |f: Field| -> (*const u8, i32) {
            match f {
                Field::Null => (ptr::null(), -1),
                Field::Bytes(p, n) => (p, n as i32),
                Field::Accumulator => acc.map_or((ptr::null(), -1), |a| (a.data as *const u8, a.len as i32)),
            }
        };
        let (kp, kl) = resolve(o.key);
        let (vp, vl) = resolve(o.value);
        let (ku, vu) = (kl.max(0) as usize, vl.max(0) as usize);
        let size = 29 + ku + vu + o.headers_len;
        let p = self.room(size)?;
        let put = |at: usize, b: *const u8, n: usize| {
            if n > 0 {
                unsafe { ptr::copy(b, p.add(at), n) }
            }
        };
        put(0, ((size - 4) as u32).to_le_bytes().as_ptr(), 4);
        put(4, [0u8].as_ptr(), 1);
        put(5, r.timestamp_delta().to_le_bytes().as_ptr(), 8);
        put(13, r.offset_delta().to_le_bytes().as_ptr(), 4);
        put(17, kl.to_le_bytes().as_ptr(), 4);
        put(21, kp, ku);
        put(21 + ku, vl.to_le_bytes().as_ptr(), 4);
        put(25 + ku, vp, vu);
        put(25 + ku + vu, o.header_count.to_le_bytes().as_ptr(), 4);
        put(29 + ku + vu, o.headers, o.headers_len);
        self.len += size;
        self.count += 1;
        Ok(())
    }

    /// The finished output: `(address, length)`, with the accumulator first for an aggregate.
    pub(crate) fn finish(self, acc: Option<&Accumulator>) -> Result<(usize, usize), Error> {
        unsafe { ptr::copy_nonoverlapping(self.count.to_le_bytes().as_ptr(), self.buf, 4) };
        let acc = match acc {
            None => return Ok((self.buf as usize, self.len)),
            Some(a) => a,
        };
        let total = 4 + acc.len + self.len;
        let b = arena::alloc(total).ok_or_else(Error::no_memory)?;
        unsafe {
            ptr::copy_nonoverlapping((acc.len as u32).to_le_bytes().as_ptr(), b, 4);
            ptr::copy_nonoverlapping(acc.data, b.add(4), acc.len);
            ptr::copy_nonoverlapping(self.buf, b.add(4 + acc.len), self.len);
        }
        Ok((b as usize, total))
    }
}

/// An array_map's way out: each [`emit`](Emitter::emit) sends one record with the input
/// record's offset, timestamp and headers. Bytes are copied at once, so any `&[u8]` will do.
pub struct Emitter<'w> {
    pub(crate) writer: &'w mut Writer,
    pub(crate) record: &'w Record,
}

impl Emitter<'_> {
    /// Send a record with this key and value (`None`: null) and the input's headers.
    pub fn emit(&mut self, key: Option<&[u8]>, value: Option<&[u8]>) -> Result<(), Error> {
        let mut o = Output::from_record(self.record);
        o.key = key.map_or(Field::Null, |k| Field::Bytes(k.as_ptr(), k.len()));
        o.value = value.map_or(Field::Null, |v| Field::Bytes(v.as_ptr(), v.len()));
        self.writer.write(self.record, &o, None)
    }

    /// Send an [`Output`] (its own key, value and headers).
    pub fn emit_output(&mut self, output: &Output) -> Result<(), Error> {
        self.writer.write(self.record, output, None)
    }
}

/// An aggregate's accumulator: bytes the host keeps from batch to batch (and hands to a new
/// instance when a stream resumes). It starts as the parameter `initial`, or empty.
pub struct Accumulator {
    data: *mut u8,
    len: usize,
    cap: usize,
}

impl Accumulator {
    pub(crate) fn new(data: *mut u8, len: usize) -> Accumulator {
        Accumulator { data, len, cap: len }
    }

    pub fn as_slice(&self) -> &[u8] {
        unsafe { slice::from_raw_parts(self.data, self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        unsafe { slice::from_raw_parts_mut(self.data, self.len) }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Room for `cap` bytes in all.
    pub fn reserve(&mut self, cap: usize) -> Result<(), Error> {
        let (data, cap) = arena::grow(self.data, self.len, self.cap, cap, true).ok_or_else(Error::no_memory)?;
        self.data = data;
        self.cap = cap;
        Ok(())
    }

    /// Replace the `remove` bytes at `at` by `insert`.
    pub fn splice(&mut self, at: usize, remove: usize, insert: &[u8]) -> Result<(), Error> {
        if at > self.len || remove > self.len - at {
            return Err(Error::new("accumulator splice out of range"));
        }
        let len = self.len - remove + insert.len();
        self.reserve(len)?;
        unsafe {
            ptr::copy(self.data.add(at + remove), self.data.add(at + insert.len()), self.len - at - remove);
            ptr::copy(insert.as_ptr(), self.data.add(at), insert.len());
        }
        self.len = len;
        Ok(())
    }

    /// Append bytes.
    pub fn append(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.splice(self.len, 0, bytes)
    }

    /// Replace the whole accumulator.
    pub fn set(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.splice(0, self.len, bytes)
    }

    pub fn clear(&mut self) {
        self.len = 0;
    }
}
