//! SQLite operations on one in-memory database: initialise, load an image, list tables, export.
//!
//! The same code runs natively (bundled SQLite) and on wasm32 (sqlite-wasm-rs); only
//! Cargo.toml chooses the engine.

use std::sync::atomic::{AtomicBool, Ordering};

use rusqlite::serialize::{Data, OwnedData};
use rusqlite::{Connection, MAIN_DB, ffi};

use crate::error::{Corruption, Error};
use crate::header::{self, HeaderInfo};
use crate::store::Body;

static INITIALIZED: AtomicBool = AtomicBool::new(false);

/// Initialises SQLite once per isolate (or process); returns true if this call did the work.
///
/// The first in-memory open also registers the memdb VFS and allocates SQLite's global state,
/// so it is included: this is what a cold request pays before it can load anything.
pub fn initialize() -> Result<bool, Error> {
    if INITIALIZED.load(Ordering::Acquire) {
        return Ok(false);
    }
    // SAFETY: sqlite3_initialize is idempotent and has no preconditions.
    let rc = unsafe { ffi::sqlite3_initialize() };
    if rc != ffi::SQLITE_OK {
        return Err(Error::Internal {
            detail: format!("sqlite3_initialize failed with code {rc}"),
        });
    }
    Connection::open_in_memory()?;
    INITIALIZED.store(true, Ordering::Release);
    Ok(true)
}

/// A database loaded from stored bytes.
#[derive(Debug)]
pub struct Loaded {
    /// The in-memory connection that owns the image.
    pub conn: Connection,
    /// What the header said.
    pub header: HeaderInfo,
}

/// A buffer SQLite will own once opened: the one place a stored image's bytes are copied to.
pub struct Image(OwnedData);

impl std::fmt::Debug for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Image({} bytes)", self.0.len())
    }
}

impl Image {
    /// A `sqlite3_malloc` buffer of `len` bytes, to be filled by the caller (for example, as a
    /// body streams in) and then [`open`]ed without another copy.
    pub fn allocate(len: usize) -> Result<Self, Error> {
        if len == 0 {
            return Err(header::HeaderProblem::Empty.into());
        }
        let len64 = u64::try_from(len).map_err(|_| nomem())?;
        // SAFETY: sqlite3_malloc64 has no preconditions; a null result is handled below.
        let ptr = unsafe { ffi::sqlite3_malloc64(len64) }.cast::<u8>();
        let ptr = std::ptr::NonNull::new(ptr).ok_or_else(nomem)?;
        // SAFETY: `ptr` was just allocated by sqlite3_malloc64 with `len` bytes. Its contents
        // are uninitialised until written, so zero them: a short body then reads as damage,
        // never as stale memory.
        unsafe { std::ptr::write_bytes(ptr.as_ptr(), 0, len) };
        // SAFETY: as above; ownership passes to OwnedData, which frees with sqlite3_free.
        Ok(Self(unsafe { OwnedData::from_raw_nonnull(ptr, len) }))
    }

    /// The buffer, to fill.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }

    /// The bytes, once filled.
    #[must_use]
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

/// Validates a filled image and opens it; SQLite takes the buffer over without copying.
///
/// The schema is read before returning, because `sqlite3_deserialize` is lazy: without this,
/// a damaged file would only fail later, in the query.
pub fn open(image: Image) -> Result<Loaded, Error> {
    let mut data = image.0;
    let info = header::validate(&data)?;
    if info.wal_mode {
        header::clear_wal_mode(&mut data);
    }
    let mut conn = Connection::open_in_memory()?;
    conn.deserialize(MAIN_DB, data, false).map_err(classify)?;
    conn.query_row("SELECT count(*) FROM sqlite_master", [], |row| {
        row.get::<_, i64>(0)
    })
    .map_err(classify)?;
    Ok(Loaded { conn, header: info })
}

/// Copies `bytes` into SQLite-owned memory and opens them (for bytes already in memory:
/// tests, fixtures, benchmarks).
pub fn load(bytes: &[u8]) -> Result<Loaded, Error> {
    let mut image = Image::allocate(bytes.len())?;
    image.bytes_mut().copy_from_slice(bytes);
    open(image)
}

/// Streams `body` into a new image (one copy, chunk by chunk as it arrives) and opens it.
pub async fn load_body<B: Body>(body: B) -> Result<Loaded, Error> {
    let mut image = Image::allocate(body.len())?;
    body.read_into(image.bytes_mut()).await?;
    open(image)
}

/// A new, empty database (for a user with no stored object).
///
/// It is a one-page memdb image, like a loaded database, rather than a plain `:memory:` one:
/// SQLite only bumps the header's change counter (which [`change_counter`] reads to tell
/// whether a request wrote) on files, and memdb is one; `:memory:` is not. The page comes
/// from serializing a fresh `:memory:` database, so it is exactly what SQLite writes.
pub fn create() -> Result<Connection, Error> {
    let mut blank = Connection::open_in_memory()?;
    let page = export(&mut blank)?.to_vec();
    let len = page.len();
    let len64 = u64::try_from(len).map_err(|_| nomem())?;
    // SAFETY: sqlite3_malloc64 has no preconditions; a null result is handled below.
    let ptr = unsafe { ffi::sqlite3_malloc64(len64) }.cast::<u8>();
    let ptr = std::ptr::NonNull::new(ptr).ok_or_else(nomem)?;
    // SAFETY: `ptr` was just allocated by sqlite3_malloc64 with `len` bytes.
    let mut data = unsafe { OwnedData::from_raw_nonnull(ptr, len) };
    data.copy_from_slice(&page);
    let mut conn = Connection::open_in_memory()?;
    conn.deserialize(MAIN_DB, data, false)?;
    Ok(conn)
}

/// The header's file change counter (bytes 24..28): SQLite bumps it on every commit that
/// changed the database, so two equal readings around some work mean it wrote nothing.
pub fn change_counter(conn: &mut Connection) -> Result<u32, Error> {
    let image = export(conn)?;
    Ok(image
        .get(24..28)
        .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]])))
}

/// The spec's query: names of all tables, in `sqlite_master` order.
pub fn list_tables(conn: &Connection) -> Result<Vec<String>, Error> {
    let mut stmt = conn
        .prepare("SELECT name FROM sqlite_master WHERE type='table'")
        .map_err(classify)?;
    let names = stmt
        .query_map([], |row| row.get::<_, String>(0))
        .map_err(classify)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(classify)?;
    Ok(names)
}

/// The database image, without copying when SQLite allows it (memdb images are contiguous).
pub fn export(conn: &mut Connection) -> Result<Data<'_>, Error> {
    Ok(conn.serialize(MAIN_DB)?)
}

fn nomem() -> Error {
    Error::Internal {
        detail: "cannot allocate memory for the database image".into(),
    }
}

/// Errors that describe the stored data become `CorruptDatabase`; the rest stay internal.
fn classify(e: rusqlite::Error) -> Error {
    use rusqlite::ErrorCode as C;
    match e.sqlite_error_code() {
        Some(C::DatabaseCorrupt | C::NotADatabase | C::CannotOpen) => {
            Error::CorruptDatabase(Corruption::Contents(e.to_string()))
        }
        _ => e.into(),
    }
}

#[cfg(test)]
mod tests {
    #[cfg(all(target_family = "wasm", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use std::rc::Rc;

    use super::*;

    fn sample() -> Vec<u8> {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE projects(id INTEGER PRIMARY KEY, name TEXT);
             INSERT INTO projects(name) VALUES ('a'), ('b');
             CREATE INDEX projects_name ON projects(name);",
        )
        .unwrap();
        export(&mut conn).unwrap().to_vec()
    }

    /// An exported image loads back with its tables and rows.
    #[test]
    fn round_trip() {
        let bytes: Rc<[u8]> = sample().into();
        let mut loaded = load(&bytes).unwrap();
        assert_eq!(list_tables(&loaded.conn).unwrap(), ["projects"]);
        let rows: i64 = loaded
            .conn
            .query_row("SELECT count(*) FROM projects", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 2);
        assert_eq!(&*export(&mut loaded.conn).unwrap(), &*bytes);
    }

    /// A WAL-mode header (as a backend using journal_mode=WAL uploads it) loads, and the
    /// exported image is marked rollback mode.
    #[test]
    fn wal_mode_image_loads() {
        let mut bytes = sample();
        bytes[18] = 2;
        bytes[19] = 2;
        let bytes: Rc<[u8]> = bytes.into();
        let mut loaded = load(&bytes).unwrap();
        assert!(loaded.header.wal_mode);
        assert_eq!(list_tables(&loaded.conn).unwrap(), ["projects"]);
        let out = export(&mut loaded.conn).unwrap();
        assert_eq!((out[18], out[19]), (1, 1));
    }

    /// Damage past the header is caught at load, as `CorruptDatabase`.
    #[test]
    fn corrupt_schema_page_is_rejected() {
        let mut bytes = sample();
        // Scribble over page 1's b-tree header, which holds sqlite_master.
        for b in &mut bytes[100..140] {
            *b = 0xA5;
        }
        let bytes: Rc<[u8]> = bytes.into();
        let err = load(&bytes).unwrap_err();
        assert!(matches!(err, Error::CorruptDatabase(_)), "{err:?}");
    }

    /// A new database exports as a valid one-page image, and after a write as a valid image
    /// that loads again.
    #[test]
    fn new_database_exports_a_valid_image() {
        let mut conn = create().unwrap();
        let empty: Rc<[u8]> = export(&mut conn).unwrap().to_vec().into();
        assert!(list_tables(&load(&empty).unwrap().conn).unwrap().is_empty());
        conn.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
            .unwrap();
        // The engine's default page size: 4096 natively, 8192 in sqlite-wasm-rs's build.
        let page_size: u32 = conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .unwrap();
        let image: Rc<[u8]> = export(&mut conn).unwrap().to_vec().into();
        assert_eq!(image.len(), 2 * page_size as usize);
        let loaded = load(&image).unwrap();
        assert_eq!(list_tables(&loaded.conn).unwrap(), ["t"]);
    }

    /// Every committed write bumps the change counter, on new and on loaded databases; reads,
    /// and writes that are rolled back, do not.
    #[test]
    fn change_counter_tracks_commits() {
        let image: Rc<[u8]> = sample().into();
        for mut conn in [create().unwrap(), load(&image).unwrap().conn] {
            conn.execute_batch(
                "CREATE TABLE IF NOT EXISTS projects(id INTEGER PRIMARY KEY, name TEXT)",
            )
            .unwrap();
            let before = change_counter(&mut conn).unwrap();
            conn.query_row("SELECT count(*) FROM projects", [], |r| r.get::<_, i64>(0))
                .unwrap();
            conn.execute_batch("BEGIN; INSERT INTO projects(name) VALUES ('x'); ROLLBACK;")
                .unwrap();
            assert_eq!(change_counter(&mut conn).unwrap(), before);
            conn.execute("INSERT INTO projects(name) VALUES ('y')", [])
                .unwrap();
            let after = change_counter(&mut conn).unwrap();
            assert_ne!(after, before);
            conn.execute_batch("CREATE TABLE other(x)").unwrap();
            assert_ne!(change_counter(&mut conn).unwrap(), after);
        }
    }
}
