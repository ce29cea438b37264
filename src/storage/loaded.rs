//! What a load hands on: the open database and what is known about its stored state
//! ([`Loaded`]), the adoption of an outside file it decided ([`Adoption`]), and the way a
//! loaded copy goes back to the version cache. Built by [`load`](mod@super::load) and
//! [`super::adopt`], consumed by the save step.

use rusqlite::Connection;

use super::cache::DbCache;
use super::manifest::{Manifest, OutsideReplacement, Stored};
use crate::report::CacheStatus;
use crate::request::UserId;

/// The load step's result: an open database and what is known about its stored state.
#[derive(Debug)]
pub struct Loaded {
    /// The open database.
    pub conn: Connection,
    /// What R2 holds that this image equals (a new database, one object, or a manifest);
    /// with [`Loaded::adoption`] set, the manifest the adoption's commit replaces.
    pub stored: Stored,
    /// Etag of the `database.sqlite` the image builds on, as read or headed by the load
    /// (`None` for a new database).
    pub base_etag: Option<String>,
    /// That state's `db-version`.
    pub version: Option<u64>,
    /// The stored header said WAL mode (the image is now rollback mode).
    pub converted_from_wal: bool,
    /// The version cache's part.
    pub cache: CacheStatus,
    /// Deltas fetched and applied (incremental layout).
    pub deltas_applied: u32,
    /// `database.sqlite` was found replaced from outside (see [`super::OUTSIDE_RULE`]).
    pub outside: Option<OutsideReplacement>,
    /// The adoption of that outside file, which the save step commits (a load never writes).
    pub adoption: Option<Adoption>,
    /// The image's page size at load: what a delta builds on.
    pub page_size: u32,
    /// Its header's change counter at load.
    pub change_counter: u32,
    /// Its length at load.
    pub len: u64,
    /// This request initialised SQLite in this isolate.
    pub initialized_here: bool,
    /// SQLite initialisation.
    pub wasm_init_ms: f64,
    /// The gets, bodies included.
    pub download_ms: f64,
    /// Applying deltas, opening the image; `None` when nothing was parsed (a cache hit, or
    /// a cached copy patched with the deltas it lacked).
    pub parse_ms: Option<f64>,
    /// CPU time of the step (applying deltas, opening the image), parsed or not.
    pub cpu_ms: f64,
    /// The whole step.
    pub total_ms: f64,
}

impl Loaded {
    /// A database built by the load, before its image facts and timings are filled in.
    pub(super) fn built(
        conn: Connection,
        stored: Stored,
        base_etag: Option<String>,
        version: Option<u64>,
        converted_from_wal: bool,
        cache: CacheStatus,
    ) -> Self {
        Self {
            conn,
            stored,
            base_etag,
            version,
            converted_from_wal,
            cache,
            deltas_applied: 0,
            outside: None,
            adoption: None,
            page_size: 0,
            change_counter: 0,
            len: 0,
            initialized_here: false,
            wasm_init_ms: 0.0,
            download_ms: 0.0,
            parse_ms: None,
            cpu_ms: 0.0,
            total_ms: 0.0,
        }
    }

    /// Marks the image as parsed, in `ms` of CPU.
    pub(super) fn parsed(mut self, ms: f64) -> Self {
        self.parse_ms = Some(ms);
        self.cpu_ms = ms;
        self
    }

    /// Entity tag of the object the next write is conditional on (`None`: nothing stored).
    #[must_use]
    pub fn etag(&self) -> Option<&str> {
        match &self.stored {
            Stored::New => None,
            Stored::Single { etag, .. } => Some(etag),
            Stored::Incremental { slots, .. } => Some(slots.etag()),
        }
    }
}

/// An adoption decided by a load and not yet committed: the manifest that adopts the outside
/// file (its deltas are the commit's to add) and the conflict record to write first.
#[derive(Debug, Clone, PartialEq)]
pub struct Adoption {
    /// The manifest after the adoption: the outside file as base, the worker's deltas listed
    /// under a conflict record. Committed `If-Match` the manifest the load read.
    pub next: Manifest,
    /// The conflict record (key and body), when the worker had deltas the file replaced.
    pub record: Option<(String, Vec<u8>)>,
}

/// Why a load step must start over.
pub(super) enum Step<T> {
    Done(T),
    /// The manifest moved on (a delta it listed is gone, or it changed while adopting).
    Restart,
}

/// Returns a loaded copy to the version cache through [`keep`](super::cache::keep), in the
/// state the save left it (`loaded.stored`, `loaded.version`). Not while an adoption of an
/// outside file the load found is still to be committed: the copy then equals no stored state.
pub fn keep_loaded(cache: Option<&DbCache>, user: &UserId, loaded: Loaded) {
    if loaded.adoption.is_some() {
        return;
    }
    super::cache::keep(cache, user, loaded.conn, loaded.stored, loaded.version);
}
