//! Delta objects: the pages one committed write changed, in one immutable object with a
//! checksum, and how to apply one to an image.
//!
//! Layout (all integers little-endian), after Litestream's LTX files (a header, page frames,
//! a trailing checksum), simplified to what one R2 object per write needs:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `WSPDELTA` |
//! | 8 | 4 | format (1) |
//! | 12 | 4 | page size |
//! | 16 | 8 | file length after the write |
//! | 24 | 4 | header change counter after the write |
//! | 28 | 4 | page count *n* |
//! | 32 | *n* × (4 + page size) | page index (0-based), page bytes; ascending |
//! | end − 8 | 8 | [`checksum`] of everything before it |
//!
//! Applying one sets the file's length, writes the pages, then checks that the header now
//! carries the change counter and page size the delta recorded: a delta applied to the wrong
//! base, or out of order, fails there even when its own checksum is fine.

use std::fmt;

use crate::header;

const MAGIC: &[u8; 8] = b"WSPDELTA";
const FORMAT: u32 = 1;
const HEADER_LEN: usize = 32;
const TRAILER_LEN: usize = 8;

/// A 64-bit checksum (word-at-a-time multiply-xor mix) for detecting damaged or truncated
/// objects; not a defence against deliberate tampering (R2 access is the boundary for that).
#[must_use]
pub fn checksum(bytes: &[u8]) -> u64 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut h = 0xCBF2_9CE4_8422_2325 ^ (bytes.len() as u64).wrapping_mul(K);
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        h = (h ^ w).wrapping_mul(K);
        h ^= h >> 29;
    }
    for &b in chunks.remainder() {
        h = (h ^ u64::from(b)).wrapping_mul(K);
        h ^= h >> 29;
    }
    h ^ (h >> 32)
}

/// What a delta says about the file it produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Page size.
    pub page_size: u32,
    /// The file's length after the write.
    pub len: u64,
    /// The header's change counter after the write.
    pub change_counter: u32,
    /// Pages in the delta.
    pub pages: u32,
    /// The delta's [`checksum`].
    pub checksum: u64,
}

/// Why a delta was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeltaError {
    /// Too short, wrong magic or format, or a length that does not match its page count.
    Malformed(&'static str),
    /// The trailing checksum does not match the contents.
    Checksum,
    /// Applied, the header does not say what the delta recorded: wrong base or wrong order.
    Mismatch {
        /// What the delta recorded.
        expected_counter: u32,
        /// What the header says after applying it.
        found_counter: u32,
    },
}

impl fmt::Display for DeltaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed(why) => write!(f, "malformed delta: {why}"),
            Self::Checksum => write!(f, "delta checksum does not match its contents"),
            Self::Mismatch {
                expected_counter,
                found_counter,
            } => write!(
                f,
                "delta applied to the wrong image: change counter {found_counter}, expected {expected_counter}"
            ),
        }
    }
}

/// Encodes `pages` (0-based, ascending, each within the image) of `image` as a delta.
#[must_use]
pub fn encode(image: &[u8], page_size: u32, pages: &[u32]) -> (Vec<u8>, Summary) {
    let ps = page_size as usize;
    let mut out = Vec::with_capacity(HEADER_LEN + pages.len() * (4 + ps) + TRAILER_LEN);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT.to_le_bytes());
    out.extend_from_slice(&page_size.to_le_bytes());
    out.extend_from_slice(&(image.len() as u64).to_le_bytes());
    let change_counter = header::change_counter(image);
    out.extend_from_slice(&change_counter.to_le_bytes());
    let count = u32::try_from(pages.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&count.to_le_bytes());
    for &page in pages {
        let start = page as usize * ps;
        out.extend_from_slice(&page.to_le_bytes());
        out.extend_from_slice(&image[start..start + ps]);
    }
    let sum = checksum(&out);
    out.extend_from_slice(&sum.to_le_bytes());
    let summary = Summary {
        page_size,
        len: image.len() as u64,
        change_counter,
        pages: count,
        checksum: sum,
    };
    (out, summary)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes([
        b[at],
        b[at + 1],
        b[at + 2],
        b[at + 3],
        b[at + 4],
        b[at + 5],
        b[at + 6],
        b[at + 7],
    ])
}

/// Checks a delta's structure and checksum and returns its summary, without applying it.
pub fn verify(delta: &[u8]) -> Result<Summary, DeltaError> {
    if delta.len() < HEADER_LEN + TRAILER_LEN {
        return Err(DeltaError::Malformed("shorter than its header"));
    }
    if &delta[..8] != MAGIC {
        return Err(DeltaError::Malformed("not a delta (magic)"));
    }
    if u32_at(delta, 8) != FORMAT {
        return Err(DeltaError::Malformed("unknown format"));
    }
    let body_len = delta.len() - TRAILER_LEN;
    let sum = checksum(&delta[..body_len]);
    if sum != u64_at(delta, body_len) {
        return Err(DeltaError::Checksum);
    }
    let page_size = u32_at(delta, 12);
    if !(512..=65536).contains(&page_size) || !page_size.is_power_of_two() {
        return Err(DeltaError::Malformed("page size"));
    }
    let pages = u32_at(delta, 28);
    let expected = HEADER_LEN as u64 + u64::from(pages) * (4 + u64::from(page_size));
    if expected != body_len as u64 {
        return Err(DeltaError::Malformed(
            "length does not match its page count",
        ));
    }
    let len = u64_at(delta, 16);
    if !len.is_multiple_of(u64::from(page_size)) || len == 0 {
        return Err(DeltaError::Malformed("file length is not whole pages"));
    }
    Ok(Summary {
        page_size,
        len,
        change_counter: u32_at(delta, 24),
        pages,
        checksum: sum,
    })
}

/// Verifies `delta` and applies it to `image` (resizing it to the delta's file length).
/// On error the image may be partly patched: callers discard it.
pub fn apply(image: &mut Vec<u8>, delta: &[u8]) -> Result<Summary, DeltaError> {
    let summary = verify(delta)?;
    let len = usize::try_from(summary.len).map_err(|_| DeltaError::Malformed("file length"))?;
    let ps = summary.page_size as usize;
    if len > image.len() {
        image
            .try_reserve_exact(len - image.len())
            .map_err(|_| DeltaError::Malformed("file length"))?;
    }
    image.resize(len, 0);
    let mut at = HEADER_LEN;
    for _ in 0..summary.pages {
        let page = u32_at(delta, at) as usize;
        let start = page
            .checked_mul(ps)
            .filter(|s| s + ps <= len)
            .ok_or(DeltaError::Malformed("page beyond the file"))?;
        image[start..start + ps].copy_from_slice(&delta[at + 4..at + 4 + ps]);
        at += 4 + ps;
    }
    let found_counter = header::change_counter(image);
    if found_counter != summary.change_counter
        || header::page_size(image) != Some(summary.page_size)
    {
        return Err(DeltaError::Mismatch {
            expected_counter: summary.change_counter,
            found_counter,
        });
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    #[cfg(all(target_family = "wasm", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::sqlite;

    fn image_after(sql: &str, base: &[u8]) -> (Vec<u8>, sqlite::Changes) {
        let mut conn = sqlite::load(base).unwrap().conn;
        sqlite::clear_changes(&mut conn);
        conn.execute_batch(sql).unwrap();
        let changes = sqlite::changes(&mut conn).unwrap();
        (sqlite::export(&mut conn).unwrap().to_vec(), changes)
    }

    fn base() -> Vec<u8> {
        let mut conn = sqlite::create().unwrap();
        conn.execute_batch(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, body TEXT);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000)
             INSERT INTO t(body) SELECT printf('row %d %s', i, hex(randomblob(40))) FROM n;",
        )
        .unwrap();
        sqlite::export(&mut conn).unwrap().to_vec()
    }

    /// A one-row insert records a handful of pages, and base + delta equals the new image.
    #[test]
    fn small_write_round_trips() {
        let base = base();
        let (after, changes) = image_after("INSERT INTO t(body) VALUES ('one more')", &base);
        assert!(changes.pages.len() <= 4, "{changes:?}");
        assert!(
            changes.pages.contains(&0),
            "the header page changes on every commit"
        );
        let (delta, summary) = encode(&after, changes.page_size, &changes.pages);
        assert_eq!(summary.pages as usize, changes.pages.len());
        let mut image = base.clone();
        apply(&mut image, &delta).unwrap();
        assert_eq!(image, after);
    }

    /// Growth, shrinking (VACUUM after a delete) and a page-size change all round-trip.
    #[test]
    fn size_changes_round_trip() {
        let base = base();
        for sql in [
            "INSERT INTO t(body) SELECT body || body FROM t",
            "DELETE FROM t WHERE id > 100; VACUUM",
            "PRAGMA page_size = 1024; VACUUM",
        ] {
            let (after, changes) = image_after(sql, &base);
            let (delta, _) = encode(&after, changes.page_size, &changes.pages);
            let mut image = base.clone();
            apply(&mut image, &delta).unwrap();
            assert_eq!(image, after, "{sql}");
            sqlite::load(&image).unwrap();
        }
    }

    /// Damage anywhere, truncation, and the wrong base are all refused.
    #[test]
    fn damaged_or_misapplied_deltas_are_refused() {
        let base = base();
        let (after, changes) = image_after("UPDATE t SET body = 'x' WHERE id = 7", &base);
        let (delta, _) = encode(&after, changes.page_size, &changes.pages);
        for at in [0, 13, 40, delta.len() / 2, delta.len() - 1] {
            let mut bad = delta.clone();
            bad[at] ^= 0x40;
            assert!(verify(&bad).is_err(), "flip at {at}");
        }
        assert!(verify(&delta[..delta.len() - 9]).is_err());
        // A delta whose pages leave a header it did not record (here: one from another
        // database, with no pages) is refused after applying.
        let mut other = sqlite::create().unwrap();
        other
            .execute_batch("CREATE TABLE z(x); INSERT INTO z VALUES (1); INSERT INTO z VALUES (2)")
            .unwrap();
        let other_image = sqlite::export(&mut other).unwrap().to_vec();
        let (foreign, _) = encode(&other_image, header::page_size(&other_image).unwrap(), &[]);
        let mut image = base.clone();
        assert!(matches!(
            apply(&mut image, &foreign),
            Err(DeltaError::Mismatch { .. })
        ));
        // In order, two deltas give the second image.
        let (after2, changes2) = image_after("UPDATE t SET body = 'y' WHERE id = 8", &after);
        let (second, _) = encode(&after2, changes2.page_size, &changes2.pages);
        let mut image = base.clone();
        apply(&mut image, &delta).unwrap();
        apply(&mut image, &second).unwrap();
        assert_eq!(image, after2);
    }
}
