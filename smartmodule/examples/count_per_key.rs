//! count_per_key: an aggregate keeping a running count of records per key.
//! The Rust twin of count_per_key.c.
//!
//! No parameters (the host's `initial` parameter, if given, must be a table as below).
//! Each output record has the input's key and the value "key=count" (a null key is shown
//! as "null"; it is counted apart from a key spelled null).
//!
//! The accumulator is a compact table, one entry per key seen, in first-seen order:
//!   key_length u32 (0xffffffff: the null key), key bytes, count u64, all little-endian.
//! Finding a key walks the table: fine for thousands of keys per stream, not millions.
use kolk_smartmodule::*;

const NULL_KEY: u32 = 0xffff_ffff;
const NOT_A_TABLE: Error = Error::new("the accumulator is not a count table (see count_per_key.c)");

/// The count after this record of the entry for `key` (`klen`), updated in place; 0: no entry.
fn bump(table: &mut [u8], klen: u32, key: &[u8]) -> Result<u64, Error> {
    let mut pos = 0;
    while pos < table.len() {
        let elen = read_u32(table, pos).ok_or(NOT_A_TABLE)?;
        let ebytes = if elen == NULL_KEY { 0 } else { elen as usize };
        if ebytes > table.len() - pos - 4 || table.len() - pos - 4 - ebytes < 8 {
            return Err(NOT_A_TABLE);
        }
        if elen == klen && &table[pos + 4..pos + 4 + ebytes] == key {
            let n = read_u64(table, pos + 4 + ebytes).ok_or(NOT_A_TABLE)? + 1;
            write_u64(table, pos + 4 + ebytes, n).ok_or(NOT_A_TABLE)?;
            return Ok(n);
        }
        pos += 12 + ebytes;
    }
    Ok(0)
}

pub fn aggregate(acc: &mut Accumulator, record: &Record) -> Result<Output, Error> {
    let key = record.key();
    let klen = key.map_or(NULL_KEY, |k| k.len() as u32);
    let kbytes = key.unwrap_or(b"");
    let mut n = bump(acc.as_mut_slice(), klen, kbytes)?;
    if n == 0 {
        // a new key: append an entry
        n = 1;
        acc.append(&klen.to_le_bytes())?;
        acc.append(kbytes)?;
        acc.append(&n.to_le_bytes())?;
    }
    let mut text = Buffer::new();
    text.push(key.unwrap_or(b"null"))?;
    text.push(b"=")?;
    text.push_u64(n)?;
    Ok(record.output().with_value(Some(&text)))
}
