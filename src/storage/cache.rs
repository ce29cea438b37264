//! The version cache: recently used databases kept open in isolate memory, keyed by object key
//! and valid for one stored state (an etag, or a manifest and its etag), so an unchanged database is neither downloaded nor parsed.

use std::cell::RefCell;

use rusqlite::Connection;

use super::manifest::Stored;
use crate::request::UserId;
use crate::sqlite;

/// One cached database: the open connection and the version of the object it equals.
#[derive(Debug)]
pub struct Entry {
    /// Object key.
    pub key: String,
    /// What R2 holds that this connection's image equals.
    pub stored: Stored,
    /// That object's `db-version`.
    pub db_version: Option<u64>,
    /// The open in-memory database.
    pub conn: Connection,
    /// Image size, charged against the cache's budget.
    pub size_bytes: u64,
}

/// Returns a database to the version cache (when there is one): the one place a copy goes
/// back ([`DbCache::put`] has no other caller); only for a copy equal to `stored`, which a new
/// database is not until its first save.
///
/// What is kept is the image, on a connection opened afresh ([`sqlite::reopen`]): nothing a
/// request set on its connection (TEMP objects, pragmas, `last_insert_rowid`, `changes`)
/// reaches the next request.
pub fn keep(
    cache: Option<&DbCache>,
    user: &UserId,
    conn: Connection,
    stored: Stored,
    version: Option<u64>,
) {
    let Some(cache) = cache else { return };
    if matches!(stored, Stored::New) {
        return;
    }
    // A connection that cannot be reopened (a transaction left open) is not kept.
    let Ok(mut conn) = sqlite::reopen(conn) else {
        return;
    };
    // The copy equals what is stored: nothing is pending in it.
    sqlite::clear_changes(&mut conn);
    let size_bytes = sqlite::export(&mut conn).map_or(0, |i| i.len() as u64);
    cache.put(Entry {
        key: user.db_key(),
        stored,
        db_version: version,
        conn,
        size_bytes,
    });
}

/// Most entries the cache holds. Each cached connection keeps about 19 KiB on SQLite's heap
/// (its schema and bookkeeping, measured natively with lookaside and the initial page-cache
/// allocation off, as both builds are), whatever its image's size, and that heap is capped
/// for the whole isolate ([`crate::sqlite::SQLITE_HEAP_MAX_BYTES`]): without a count, many
/// small databases fit the byte budget and exhaust the heap for every request.
pub const MAX_ENTRIES: usize = 64;

/// A least-recently-used cache bounded by the total size of the cached images and by
/// [`MAX_ENTRIES`].
///
/// A request *takes* its user's entry (so two concurrent requests never share a connection)
/// and puts it back only after a successful save or a skipped one.
#[derive(Debug)]
pub struct DbCache {
    max_bytes: u64,
    inner: RefCell<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Least recently used first.
    entries: Vec<Entry>,
    bytes: u64,
}

impl DbCache {
    /// A cache holding at most `max_bytes` of images; 0 disables it.
    #[must_use]
    pub fn new(max_bytes: u64) -> Self {
        Self {
            max_bytes,
            inner: RefCell::default(),
        }
    }

    /// The budget in bytes.
    #[must_use]
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Removes and returns the entry for `key`, if any.
    pub fn take(&self, key: &str) -> Option<Entry> {
        let mut inner = self.inner.borrow_mut();
        let pos = inner.entries.iter().position(|e| e.key == key)?;
        let entry = inner.entries.remove(pos);
        inner.bytes -= entry.size_bytes;
        Some(entry)
    }

    /// Inserts `entry` as most recently used, evicting least recently used entries to stay
    /// within budget; an entry larger than the whole budget is not kept.
    fn put(&self, entry: Entry) {
        if entry.size_bytes > self.max_bytes {
            return;
        }
        let mut inner = self.inner.borrow_mut();
        if let Some(pos) = inner.entries.iter().position(|e| e.key == entry.key) {
            let old = inner.entries.remove(pos);
            inner.bytes -= old.size_bytes;
        }
        while (inner.bytes + entry.size_bytes > self.max_bytes
            || inner.entries.len() >= MAX_ENTRIES)
            && !inner.entries.is_empty()
        {
            let evicted = inner.entries.remove(0);
            inner.bytes -= evicted.size_bytes;
        }
        inner.bytes += entry.size_bytes;
        inner.entries.push(entry);
    }

    /// (entries, bytes) currently held.
    #[must_use]
    pub fn usage(&self) -> (usize, u64) {
        let inner = self.inner.borrow();
        (inner.entries.len(), inner.bytes)
    }
}

#[cfg(test)]
mod tests {
    #[cfg(all(target_family = "wasm", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn entry(key: &str, size_bytes: u64) -> Entry {
        Entry {
            key: key.into(),
            stored: Stored::Single {
                etag: format!("etag-{key}"),
                retired_manifest: None,
            },
            db_version: None,
            conn: Connection::open_in_memory().unwrap(),
            size_bytes,
        }
    }

    /// Least recently used entries go first, and the budget is never exceeded.
    #[test]
    fn evicts_least_recently_used() {
        let cache = DbCache::new(100);
        cache.put(entry("a", 40));
        cache.put(entry("b", 40));
        let a = cache.take("a").unwrap();
        cache.put(a); // a is now most recent
        cache.put(entry("c", 40)); // evicts b
        assert!(cache.take("b").is_none());
        assert_eq!(cache.usage(), (2, 80));
        assert!(matches!(
            cache.take("a").unwrap().stored,
            Stored::Single { etag, .. } if etag == "etag-a"
        ));
        assert_eq!(cache.usage(), (1, 40));
    }

    /// An entry bigger than the budget, or any entry with a zero budget, is not kept.
    #[test]
    fn oversize_and_disabled() {
        let cache = DbCache::new(100);
        cache.put(entry("big", 101));
        assert_eq!(cache.usage(), (0, 0));
        let off = DbCache::new(0);
        off.put(entry("a", 1));
        assert!(off.take("a").is_none());
    }

    /// Many small databases never hold more than MAX_ENTRIES connections (each keeps SQLite
    /// heap whatever its size); the least recently used go first.
    #[test]
    fn entry_count_is_capped() {
        let cache = DbCache::new(u64::MAX);
        for i in 0..MAX_ENTRIES + 10 {
            cache.put(entry(&format!("u{i}"), 4096));
        }
        assert_eq!(cache.usage().0, MAX_ENTRIES);
        assert!(cache.take("u0").is_none());
        assert!(cache.take(&format!("u{}", MAX_ENTRIES + 9)).is_some());
    }

    /// Re-inserting a key replaces its old entry instead of double-charging it.
    #[test]
    fn replace_same_key() {
        let cache = DbCache::new(100);
        cache.put(entry("a", 60));
        cache.put(entry("a", 50));
        assert_eq!(cache.usage(), (1, 50));
    }
}
