//! Input records: typed, borrowed views of the records section the host wrote
//! (docs/format.md "Records"), checked by the SDK before your function sees them.

use core::marker::PhantomData;
use core::ptr;
use core::slice;

/// One input record. Its bytes live in the host's input buffer; the views it gives out
/// borrow the record, so they cannot outlive the call.
pub struct Record {
    raw: *const u8,
    raw_len: usize,
    key: *const u8,
    key_len: i32, // -1: null
    value: *const u8,
    value_len: i32, // -1: null
    headers: *const u8,
    headers_len: usize,
    header_count: u32,
    offset_delta: u32,
    timestamp_delta: i64,
    offset: i64,
    timestamp: i64,
    index: u32,
}

/// A record header: a UTF-8 name and a value that may be null.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header<'r> {
    pub name: &'r str,
    pub value: Option<&'r [u8]>,
}

/// The headers of a record, in order.
pub struct Headers<'r> {
    at: *const u8,
    left: u32,
    _record: PhantomData<&'r Record>,
}

fn bytes<'a>(p: *const u8, len: i32) -> Option<&'a [u8]> {
    if len < 0 {
        None
    } else {
        Some(unsafe { slice::from_raw_parts(p, len as usize) })
    }
}

pub(crate) fn get_u32(p: *const u8) -> u32 {
    u32::from_le(unsafe { ptr::read_unaligned(p as *const u32) })
}

pub(crate) fn get_u64(p: *const u8) -> u64 {
    u64::from_le(unsafe { ptr::read_unaligned(p as *const u64) })
}

impl Record {
    /// The key; `None` for a null key.
    pub fn key(&self) -> Option<&[u8]> {
        bytes(self.key, self.key_len)
    }

    /// The value; `None` for a null value.
    pub fn value(&self) -> Option<&[u8]> {
        bytes(self.value, self.value_len)
    }

    /// The record's offset in its partition.
    pub fn offset(&self) -> i64 {
        self.offset
    }

    /// The record's timestamp (ms since the epoch, as the producer set it).
    pub fn timestamp(&self) -> i64 {
        self.timestamp
    }

    /// The offset from the batch's base offset.
    pub fn offset_delta(&self) -> u32 {
        self.offset_delta
    }

    /// The timestamp from the batch's first timestamp.
    pub fn timestamp_delta(&self) -> i64 {
        self.timestamp_delta
    }

    /// The record's position in the input batch, from 0.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// How many headers the record has.
    pub fn header_count(&self) -> u32 {
        self.header_count
    }

    /// The headers, in order.
    pub fn headers(&self) -> Headers<'_> {
        Headers { at: self.headers, left: self.header_count, _record: PhantomData }
    }

    /// The first header named `name`.
    pub fn header(&self, name: &str) -> Option<Header<'_>> {
        self.headers().find(|h| h.name == name)
    }

    /// The whole encoded record, as in the records section.
    pub fn raw(&self) -> &[u8] {
        unsafe { slice::from_raw_parts(self.raw, self.raw_len) }
    }

    /// A copy of this record to send on: same key, value and headers (no bytes copied).
    pub fn output(&self) -> crate::Output {
        crate::Output::from_record(self)
    }

    pub(crate) fn encoded_headers(&self) -> (*const u8, usize, u32) {
        (self.headers, self.headers_len, self.header_count)
    }
}

impl<'r> Iterator for Headers<'r> {
    type Item = Header<'r>;

    fn next(&mut self) -> Option<Header<'r>> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let p = self.at;
        let name_len = get_u32(p) as usize;
        let name = unsafe { slice::from_raw_parts(p.add(4), name_len) };
        let value_len = get_u32(unsafe { p.add(4 + name_len) }) as i32;
        let value = bytes(unsafe { p.add(8 + name_len) }, value_len);
        self.at = unsafe { p.add(8 + name_len + value_len.max(0) as usize) };
        // read_record checked that every name is UTF-8
        Some(Header { name: unsafe { core::str::from_utf8_unchecked(name) }, value })
    }
}

/// Parse the record at `p` (not past `end`): the record and the position after it, or `None`
/// if it is not well-formed (lengths past its end, a header name that is not UTF-8).
pub(crate) fn read_record(p: *const u8, end: *const u8, base_offset: i64, first_timestamp: i64,
                          index: u32) -> Option<(Record, *const u8)> {
    let avail = end as usize - p as usize;
    if avail < 29 {
        return None;
    }
    let length = get_u32(p) as usize;
    if length < 25 || length > avail - 4 {
        return None;
    }
    let rend = p as usize + 4 + length;
    let left = |q: usize| rend - q; // bytes from q to the record's end (q <= rend)
    let mut q = p as usize + 5;
    let timestamp_delta = get_u64(q as *const u8) as i64;
    let offset_delta = get_u32((q + 8) as *const u8);
    let key_len = get_u32((q + 12) as *const u8) as i32;
    q += 16;
    if key_len < -1 || (key_len > 0 && key_len as usize > left(q) - 8) {
        return None;
    }
    let key = q as *const u8;
    q += key_len.max(0) as usize;
    let value_len = get_u32(q as *const u8) as i32;
    q += 4;
    if value_len < -1 || (value_len > 0 && value_len as usize > left(q) - 4) {
        return None;
    }
    let value = q as *const u8;
    q += value_len.max(0) as usize;
    let header_count = get_u32(q as *const u8);
    q += 4;
    let headers = q as *const u8;
    for _ in 0..header_count {
        if left(q) < 8 {
            return None;
        }
        let name_len = get_u32(q as *const u8) as usize;
        if name_len > left(q) - 8 {
            return None;
        }
        let name = unsafe { slice::from_raw_parts((q + 4) as *const u8, name_len) };
        if core::str::from_utf8(name).is_err() {
            return None;
        }
        let vl = get_u32((q + 4 + name_len) as *const u8) as i32;
        q += 8 + name_len;
        if vl < -1 || (vl > 0 && vl as usize > left(q)) {
            return None;
        }
        q += vl.max(0) as usize;
    }
    if q != rend {
        return None;
    }
    let record = Record {
        raw: p,
        raw_len: 4 + length,
        key,
        key_len,
        value,
        value_len,
        headers,
        headers_len: rend - headers as usize,
        header_count,
        offset_delta,
        timestamp_delta,
        offset: base_offset.wrapping_add(offset_delta as i64),
        timestamp: first_timestamp.wrapping_add(timestamp_delta),
        index,
    };
    Some((record, rend as *const u8))
}
