//! Bytes and integers without libc: finding bytes, decimal text, little-endian fields.

use core::ptr;

/// The first index of `needle` in `hay`, or `None` (an empty needle is at 0).
///
/// Scans for the needle's first byte eight bytes at a time (the "has a zero byte" trick on
/// the haystack XOR that byte), then compares: several times faster than a byte loop in wasm.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let first = match needle.first() {
        Some(&b) => b,
        None => return Some(0),
    };
    if hay.len() < needle.len() {
        return None;
    }
    let last = hay.len() - needle.len(); // the last possible start
    const ONES: u64 = 0x0101_0101_0101_0101;
    let pattern = ONES * first as u64;
    let mut i = 0;
    while i <= last {
        if last - i >= 7 {
            // eight candidate starts i..i+7, all inside hay
            let w = unsafe { ptr::read_unaligned(hay.as_ptr().add(i) as *const u64) }.to_le();
            let x = w ^ pattern;
            let t = x.wrapping_sub(ONES) & !x & (ONES << 7);
            if t == 0 {
                i += 8;
                continue;
            }
            i += (t.trailing_zeros() >> 3) as usize; // the first byte equal to needle[0]
        } else if hay[i] != first {
            i += 1;
            continue;
        }
        if &hay[i..i + needle.len()] == needle {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// An optionally signed decimal integer filling all of `text`; `None`: not a number, or it
/// does not fit an i64.
pub fn parse_i64(text: &[u8]) -> Option<i64> {
    let (negative, digits) = match text.first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    if digits.is_empty() {
        return None;
    }
    let limit: u64 = if negative { 1 << 63 } else { (1 << 63) - 1 };
    let mut v: u64 = 0;
    for &c in digits {
        if !c.is_ascii_digit() {
            return None;
        }
        let d = (c - b'0') as u64;
        if v > (limit - d) / 10 {
            return None;
        }
        v = v * 10 + d;
    }
    Some(if negative { 0u64.wrapping_sub(v) as i64 } else { v as i64 })
}

/// The decimal text of `v` at the start of `buf`; its length.
pub fn format_u64(mut v: u64, buf: &mut [u8; 20]) -> usize {
    let mut tmp = [0u8; 20];
    let mut n = 0;
    loop {
        tmp[n] = b'0' + (v % 10) as u8;
        n += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    for i in 0..n {
        buf[i] = tmp[n - 1 - i];
    }
    n
}

/// The little-endian u32 at `at`, if `bytes` hold it.
pub fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// The little-endian u64 at `at`, if `bytes` hold it.
pub fn read_u64(bytes: &[u8], at: usize) -> Option<u64> {
    let b = bytes.get(at..at.checked_add(8)?)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    Some(u64::from_le_bytes(a))
}

/// Store `v` little-endian at `at`; `None` if `bytes` are too short.
pub fn write_u32(bytes: &mut [u8], at: usize, v: u32) -> Option<()> {
    bytes.get_mut(at..at.checked_add(4)?)?.copy_from_slice(&v.to_le_bytes());
    Some(())
}

/// Store `v` little-endian at `at`; `None` if `bytes` are too short.
pub fn write_u64(bytes: &mut [u8], at: usize, v: u64) -> Option<()> {
    bytes.get_mut(at..at.checked_add(8)?)?.copy_from_slice(&v.to_le_bytes());
    Some(())
}
