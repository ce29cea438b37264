//! SQLite operations on one in-memory database: initialise, load an image, list tables, export.
//!
//! The same code runs natively (bundled SQLite) and on wasm32 (sqlite-wasm-rs); only
//! Cargo.toml chooses the engine.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use rusqlite::serialize::Data;
use rusqlite::{Connection, MAIN_DB, OpenFlags, ffi};

use crate::error::{Corruption, Error};
use crate::header::{self, HeaderInfo};
use crate::storage::Body;
use crate::vfs;

static INITIALIZED: AtomicBool = AtomicBool::new(false);

/// Most memory SQLite's own heap may hold in this isolate at once (`sqlite3_hard_heap_limit64`):
/// page caches, values being built, sorts, temp tables, prepared statements, for every open
/// connection together. An allocation past it fails, and the statement that asked for it
/// fails with [`Error::MemoryBudgetExceeded`]. Database images are not on this heap (they
/// live in the page VFS); see [`crate::config::Config::memory_budget_bytes`].
pub const SQLITE_HEAP_MAX_BYTES: u64 = 12 * 1024 * 1024;
/// Where SQLite starts recycling page-cache memory instead of growing (the soft heap limit).
const SQLITE_HEAP_SOFT_BYTES: u64 = 6 * 1024 * 1024;
/// Page cache per connection (`PRAGMA cache_size`, negative = KiB): the file is already in
/// memory, so the cache only saves copies.
const CACHE_SIZE_KIB: i64 = 2048;

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
    // Set by the worker, once, for the whole isolate; requests cannot change them (the
    // executor refuses the pragmas).
    // SAFETY: plain setters with no preconditions.
    unsafe {
        ffi::sqlite3_hard_heap_limit64(i64::try_from(SQLITE_HEAP_MAX_BYTES).unwrap_or(i64::MAX));
        ffi::sqlite3_soft_heap_limit64(i64::try_from(SQLITE_HEAP_SOFT_BYTES).unwrap_or(i64::MAX));
    }
    Connection::open_in_memory()?;
    vfs::register().map_err(|rc| Error::Internal {
        detail: format!("registering the page VFS failed with code {rc}"),
    })?;
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

/// A buffer that becomes a database file once opened: the one place a stored image's bytes
/// are copied to.
pub struct Image(Vec<u8>);

impl std::fmt::Debug for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Image({} bytes)", self.0.len())
    }
}

impl Image {
    /// A zeroed buffer of `len` bytes (with a little spare capacity), to be filled by the
    /// caller (for example, as a body streams in) and then [`open`]ed without another copy.
    /// Zeroed, so a short body reads as damage, never as stale memory.
    pub fn allocate(len: usize) -> Result<Self, Error> {
        if len == 0 {
            return Err(header::HeaderProblem::Empty.into());
        }
        // Headroom for the growth that follows (deltas applied on load, pages a write
        // appends), so it does not reallocate: a reallocation holds two copies for a moment.
        let headroom = (len / 32).clamp(64 * 1024, 2 * 1024 * 1024);
        let mut data = Vec::new();
        data.try_reserve_exact(len + headroom)
            .map_err(|_| nomem())?;
        data.resize(len, 0);
        Ok(Self(data))
    }

    /// Takes over bytes already in memory (a request body) without copying them.
    #[must_use]
    pub fn from_vec(bytes: Vec<u8>) -> Self {
        Self(bytes)
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

    /// The buffer itself, for patches that change its length (applying a delta).
    pub fn vec_mut(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }
}

/// Validates a filled image and opens it in the page-recording VFS ([`crate::vfs`]), which
/// takes the buffer over without copying.
///
/// The schema is read before returning, so a damaged file fails here, not in the query.
pub fn open(image: Image) -> Result<Loaded, Error> {
    let mut data = image.0;
    let info = header::validate(&data)?;
    if info.wal_mode {
        header::clear_wal_mode(&mut data);
    }
    let conn = open_file(data)?;
    conn.query_row("SELECT count(*) FROM sqlite_master", [], |row| {
        row.get::<_, i64>(0)
    })
    .map_err(classify)?;
    Ok(Loaded { conn, header: info })
}

/// Opens `data` as a database file in the page-recording VFS. Rollback journals are kept in
/// the pager's memory; nothing but the main file goes through the VFS.
fn open_file(data: Vec<u8>) -> Result<Connection, Error> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    initialize()?;
    let name = format!("/db-{}", NEXT.fetch_add(1, Ordering::Relaxed));
    vfs::stage(&name, data);
    let opened = Connection::open_with_flags_and_vfs(
        &name,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        vfs::NAME,
    );
    vfs::unstage(&name);
    let conn = opened.map_err(classify)?;
    conn.pragma_update(None, "journal_mode", "MEMORY")
        .map_err(classify)?;
    conn.pragma_update(None, "cache_size", -CACHE_SIZE_KIB)
        .map_err(classify)?;
    // Temp tables, indexes and sorts on SQLite's heap, under its limit (the wasm build's
    // default; native builds would use files).
    conn.pragma_update(None, "temp_store", "MEMORY")
        .map_err(classify)?;
    Ok(conn)
}

/// Closes `conn` and opens its file again, without copying it: everything a request can
/// leave on a connection goes with the old one (TEMP tables, triggers and views, pragma
/// settings, `last_insert_rowid` and `changes`, limits and hooks, the page cache), so the
/// next request sees exactly what a fresh connection on the stored database would.
///
/// Only for a connection with no open transaction; its unsaved changes, if any, stay in the
/// file (the caller keeps only copies that equal the store).
pub fn reopen(mut conn: Connection) -> Result<Connection, Error> {
    if !conn.is_autocommit() {
        return Err(Error::Internal {
            detail: "a connection with an open transaction cannot be reopened".into(),
        });
    }
    let data = match file_state(&mut conn) {
        // Taken before the close, which neither reads nor writes with no transaction open.
        Some(state) => std::mem::take(&mut state.data),
        None => export(&mut conn)?.to_vec(),
    };
    drop(conn);
    open_file(data)
}

/// Caps the database file at `max_bytes` (rounded down to whole pages) for the rest of this
/// connection's life: a statement that would grow it further fails with `SQLITE_FULL` before
/// anything is stored. A file already larger keeps its size as its cap, so it can still be
/// read, and shrunk.
pub fn cap_size(conn: &Connection, max_bytes: u64) -> Result<(), Error> {
    let page_size: i64 = conn
        .pragma_query_value(None, "page_size", |r| r.get(0))
        .map_err(classify)?;
    let max_bytes = i64::try_from(max_bytes).unwrap_or(i64::MAX);
    let pages = (max_bytes / page_size.max(512)).max(1);
    conn.pragma_update(None, "max_page_count", pages)
        .map_err(classify)?;
    Ok(())
}

/// The size cap in force on `conn` ([`cap_size`]), in bytes.
pub fn size_cap(conn: &Connection) -> Option<u64> {
    let pages: i64 = conn
        .pragma_query_value(None, "max_page_count", |r| r.get(0))
        .ok()?;
    let page_size: i64 = conn
        .pragma_query_value(None, "page_size", |r| r.get(0))
        .ok()?;
    u64::try_from(pages.saturating_mul(page_size)).ok()
}

/// Copies `bytes` into a new image and opens it (for bytes already in memory: tests,
/// fixtures, benchmarks).
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
/// It is a one-page image, like a loaded database: saving it before any write stores a valid
/// SQLite file, not zero bytes. The page comes from serializing a fresh `:memory:` database,
/// so it is exactly what SQLite writes.
pub fn create() -> Result<Connection, Error> {
    let mut blank = Connection::open_in_memory()?;
    let page = blank.serialize(MAIN_DB)?.to_vec();
    open_file(page)
}

/// The image of a connection opened by this module, borrowed; or a serialized copy for any
/// other connection (plain `:memory:` ones).
pub enum ImageRef<'a> {
    /// The page-recording VFS's buffer itself.
    Borrowed(&'a [u8]),
    /// What `sqlite3_serialize` returned.
    Serialized(Data<'a>),
}

impl std::ops::Deref for ImageRef<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Self::Borrowed(b) => b,
            Self::Serialized(d) => d,
        }
    }
}

/// The file state behind `conn`, if it was opened by this module.
fn file_state(conn: &mut Connection) -> Option<&mut vfs::FileState> {
    // SAFETY: `conn` is borrowed mutably for the result's lifetime, so no statement of its
    // runs while the state is used, and the connection outlives the borrow.
    unsafe { vfs::main_file(conn.handle()) }
}

/// The changes since the record was last cleared: the page size, the changed pages (0-based,
/// within the current file), and the file's length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changes {
    /// Page size read from the header now.
    pub page_size: u32,
    /// 0-based indexes of pages written, each below `len / page_size`.
    pub pages: Vec<u32>,
    /// The file's length now.
    pub len: u64,
}

/// What was written since the last [`clear_changes`]; `None` for a connection this module did
/// not open (its writes are not recorded).
pub fn changes(conn: &mut Connection) -> Option<Changes> {
    let state = file_state(conn)?;
    let page_size = header::page_size(&state.data)?;
    let len = state.data.len() as u64;
    let pages_in_file = len / u64::from(page_size);
    let per_page = u64::from(page_size) / vfs::SECTOR;
    let mut pages: Vec<u32> = Vec::new();
    for sector in &state.dirty {
        let page = sector / per_page;
        if page >= pages_in_file {
            break;
        }
        let page = u32::try_from(page).ok()?;
        if pages.last() != Some(&page) {
            pages.push(page);
        }
    }
    Some(Changes {
        page_size,
        pages,
        len,
    })
}

/// Forgets the write record (after the changes were stored, or on a fresh load).
pub fn clear_changes(conn: &mut Connection) {
    if let Some(state) = file_state(conn) {
        state.dirty.clear();
    }
}

/// Records every page of the file as written (a file that replaces the database whole: its
/// delta is every page). False for a connection this module did not open.
pub fn mark_all_changed(conn: &mut Connection) -> bool {
    file_state(conn).is_some_and(|state| {
        let sectors = (state.data.len() as u64).div_ceil(vfs::SECTOR);
        state.dirty.extend(0..sectors);
        true
    })
}

/// Runs `patch` on the file's bytes (to apply stored changes to a cached copy); the pager
/// notices because every commit changes the header's change counter, which SQLite compares at
/// the start of each transaction (and drops its page cache when it moved). Not recorded.
pub fn patch<T>(conn: &mut Connection, patch: impl FnOnce(&mut Vec<u8>) -> T) -> Option<T> {
    file_state(conn).map(|state| patch(&mut state.data))
}

/// The header's file change counter (bytes 24..28): SQLite bumps it on every commit that
/// changed the database, so two equal readings around some work mean it wrote nothing.
pub fn change_counter(conn: &mut Connection) -> Result<u32, Error> {
    Ok(header::change_counter(&export(conn)?))
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

/// The database image: the VFS's own buffer, or a serialized copy for a connection this
/// module did not open.
pub fn export(conn: &mut Connection) -> Result<ImageRef<'_>, Error> {
    // Checked first with a throwaway borrow: the borrow checker cannot see that the two
    // branches below never overlap.
    if file_state(conn).is_some() {
        let state = file_state(conn).ok_or_else(nomem)?;
        return Ok(ImageRef::Borrowed(&state.data));
    }
    Ok(ImageRef::Serialized(conn.serialize(MAIN_DB)?))
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
