//! Validation of the 100-byte SQLite file header, before any byte reaches SQLite.
//!
//! SQLite's `sqlite3_deserialize` accepts any buffer and only fails on first use, so a cheap
//! structural check here turns most damaged objects into a precise, typed error.

/// Length of the SQLite database header.
pub const HEADER_LEN: usize = 100;
const MAGIC: &[u8; 16] = b"SQLite format 3\0";

/// Why an object is not a database this worker will load.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HeaderProblem {
    /// The object has zero bytes.
    Empty,
    /// The object is shorter than the 100-byte header.
    TooShort {
        /// Length of the object.
        len: usize,
    },
    /// The first 16 bytes are not `SQLite format 3\0` (random or encrypted data).
    BadMagic,
    /// The page size field is not a power of two from 512 to 65536.
    BadPageSize {
        /// The raw two-byte field.
        raw: u16,
    },
    /// The file length is not a whole number of pages.
    PartialPage {
        /// Length of the object.
        len: usize,
        /// Page size from the header.
        page_size: u32,
    },
    /// The header counts more pages than the object holds (the file was truncated).
    MissingPages {
        /// Pages the header claims.
        claimed: u64,
        /// Pages the object holds.
        present: u64,
    },
    /// The read/write format version bytes (18 and 19) are neither 1 (rollback) nor 2 (WAL).
    UnknownFormatVersion {
        /// Byte 18.
        write: u8,
        /// Byte 19.
        read: u8,
    },
}

impl std::fmt::Display for HeaderProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Empty => write!(f, "the stored object is empty (0 bytes)"),
            Self::TooShort { len } => write!(
                f,
                "the stored object is {len} bytes, shorter than a SQLite header ({HEADER_LEN} bytes)"
            ),
            Self::BadMagic => write!(
                f,
                "the stored object does not start with the SQLite magic string (random, encrypted or not a database)"
            ),
            Self::BadPageSize { raw } => {
                write!(f, "the header's page size field ({raw}) is invalid")
            }
            Self::PartialPage { len, page_size } => write!(
                f,
                "the object's length ({len} bytes) is not a whole number of {page_size}-byte pages (truncated?)"
            ),
            Self::MissingPages { claimed, present } => write!(
                f,
                "the header says the database has {claimed} pages but the object holds {present} (truncated)"
            ),
            Self::UnknownFormatVersion { write, read } => write!(
                f,
                "the header's file format versions ({write}, {read}) are not ones SQLite 3 writes"
            ),
        }
    }
}

/// What a valid header says about the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderInfo {
    /// Page size in bytes.
    pub page_size: u32,
    /// Pages in the object.
    pub page_count: u64,
    /// The header marks the file as WAL mode (bytes 18 and 19 are 2).
    pub wal_mode: bool,
}

/// Checks that `bytes` is structurally a whole SQLite database file.
pub fn validate(bytes: &[u8]) -> Result<HeaderInfo, HeaderProblem> {
    if bytes.is_empty() {
        return Err(HeaderProblem::Empty);
    }
    if bytes.len() < HEADER_LEN {
        return Err(HeaderProblem::TooShort { len: bytes.len() });
    }
    if &bytes[..16] != MAGIC {
        return Err(HeaderProblem::BadMagic);
    }
    let raw = u16::from_be_bytes([bytes[16], bytes[17]]);
    // The value 1 encodes 65536, which does not fit in two bytes.
    let page_size: u32 = if raw == 1 { 65536 } else { u32::from(raw) };
    if !(512..=65536).contains(&page_size) || !page_size.is_power_of_two() {
        return Err(HeaderProblem::BadPageSize { raw });
    }
    let (write, read) = (bytes[18], bytes[19]);
    if !matches!((write, read), (1 | 2, 1 | 2)) {
        return Err(HeaderProblem::UnknownFormatVersion { write, read });
    }
    let len = bytes.len() as u64;
    if !len.is_multiple_of(u64::from(page_size)) {
        return Err(HeaderProblem::PartialPage {
            len: bytes.len(),
            page_size,
        });
    }
    let present = len / u64::from(page_size);
    let claimed = u64::from(u32::from_be_bytes([
        bytes[28], bytes[29], bytes[30], bytes[31],
    ]));
    let change_counter = &bytes[24..28];
    let valid_for = &bytes[92..96];
    // SQLite trusts the in-header page count only when it is non-zero and the file was last
    // written by a version that maintains it (change counter equals version-valid-for).
    if claimed != 0 && change_counter == valid_for && claimed > present {
        return Err(HeaderProblem::MissingPages { claimed, present });
    }
    Ok(HeaderInfo {
        page_size,
        page_count: present,
        wal_mode: write == 2 || read == 2,
    })
}

/// The page size a header declares, if it is a valid one.
#[must_use]
pub fn page_size(bytes: &[u8]) -> Option<u32> {
    let raw = u16::from_be_bytes([*bytes.get(16)?, *bytes.get(17)?]);
    let page_size: u32 = if raw == 1 { 65536 } else { u32::from(raw) };
    ((512..=65536).contains(&page_size) && page_size.is_power_of_two()).then_some(page_size)
}

/// The header's file change counter (bytes 24..28), which SQLite bumps on every commit.
#[must_use]
pub fn change_counter(bytes: &[u8]) -> u32 {
    bytes
        .get(24..28)
        .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// Rewrites the format version bytes to rollback-journal mode (1, 1).
///
/// An in-memory database cannot use WAL, so SQLite refuses to open a WAL-mode image from
/// memory. The main file of a checkpointed WAL database is complete; marking it legacy is
/// exactly what `PRAGMA journal_mode=DELETE` writes, and is what gets stored back.
pub fn clear_wal_mode(bytes: &mut [u8]) {
    if bytes.len() >= HEADER_LEN {
        bytes[18] = 1;
        bytes[19] = 1;
    }
}

#[cfg(test)]
mod tests {
    #[cfg(all(target_family = "wasm", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn header(page_size: u16, pages_in_header: u32, total_pages: usize) -> Vec<u8> {
        let ps = if page_size == 1 {
            65536
        } else {
            usize::from(page_size)
        };
        let mut b = vec![0u8; ps * total_pages];
        b[..16].copy_from_slice(MAGIC);
        b[16..18].copy_from_slice(&page_size.to_be_bytes());
        b[18] = 1;
        b[19] = 1;
        b[24..28].copy_from_slice(&7u32.to_be_bytes());
        b[28..32].copy_from_slice(&pages_in_header.to_be_bytes());
        b[92..96].copy_from_slice(&7u32.to_be_bytes());
        b
    }

    /// A structurally whole file passes and reports its geometry.
    #[test]
    fn accepts_whole_file() {
        let info = validate(&header(4096, 3, 3)).unwrap();
        assert_eq!(info.page_size, 4096);
        assert_eq!(info.page_count, 3);
        assert!(!info.wal_mode);
        assert_eq!(validate(&header(1, 1, 1)).unwrap().page_size, 65536);
    }

    /// Each kind of damage maps to its own problem.
    #[test]
    fn rejects_each_kind_of_damage() {
        assert_eq!(validate(b""), Err(HeaderProblem::Empty));
        assert_eq!(
            validate(&[0u8; 99]),
            Err(HeaderProblem::TooShort { len: 99 })
        );
        let mut bad_magic = header(4096, 1, 1);
        bad_magic[0] = b's';
        assert_eq!(validate(&bad_magic), Err(HeaderProblem::BadMagic));
        let mut bad_ps = header(4096, 1, 1);
        bad_ps[16..18].copy_from_slice(&1000u16.to_be_bytes());
        assert_eq!(
            validate(&bad_ps),
            Err(HeaderProblem::BadPageSize { raw: 1000 })
        );
        let only_header = header(4096, 1, 1)[..100].to_vec();
        assert!(matches!(
            validate(&only_header),
            Err(HeaderProblem::PartialPage { .. })
        ));
        assert_eq!(
            validate(&header(4096, 8, 4)),
            Err(HeaderProblem::MissingPages {
                claimed: 8,
                present: 4
            })
        );
        let mut odd_version = header(4096, 1, 1);
        odd_version[18] = 3;
        assert!(matches!(
            validate(&odd_version),
            Err(HeaderProblem::UnknownFormatVersion { .. })
        ));
    }

    /// A stale in-header page count (change counter differs) is ignored, as SQLite does.
    #[test]
    fn ignores_stale_page_count() {
        let mut b = header(4096, 8, 4);
        b[92..96].copy_from_slice(&6u32.to_be_bytes());
        assert!(validate(&b).is_ok());
    }

    /// WAL-mode files are recognised and can be marked rollback mode.
    #[test]
    fn wal_mode_is_detected_and_cleared() {
        let mut b = header(4096, 1, 1);
        b[18] = 2;
        b[19] = 2;
        assert!(validate(&b).unwrap().wal_mode);
        clear_wal_mode(&mut b);
        assert!(!validate(&b).unwrap().wal_mode);
    }
}
