//! Everything about how a user's database is kept in R2: the keys and metadata of both
//! layouts, loading either one (the cache included), committing a write, compaction, the
//! sweep, adopting a file replaced from outside, retries and conditional puts, and the storage
//! writes of a move. Plain Rust over [`ObjectStore`] and [`Clock`](crate::clock::Clock); the
//! pipeline calls in here and nothing in here calls the pipeline.
//!
//! Two layouts share one set of keys:
//! - **single** (the spec's): `<user>/database.sqlite` is the whole database; a write replaces
//!   it (`If-Match` the version read).
//! - **incremental**: `<user>/database.sqlite` is the *base* (a complete SQLite file, as of
//!   the last compaction); each committed write adds one immutable delta object
//!   `<user>/deltas/<seq>-<write id>.delta` ([`delta`]: the pages it changed, with a
//!   checksum); a manifest lists the base (by etag) and the deltas in order. The manifest's
//!   conditional put is the commit point: deltas are written first, under unique keys, and
//!   are garbage until a committed manifest lists them. Commit `c` is written to one of the
//!   user's commit slots ([`Slots`]: `<user>/manifest.json`, `<user>/manifest-<i>.json`),
//!   so one key takes only every `COMMIT_SLOTS`-th commit; a load takes the highest commit.
//!
//! A manifest marked `retired` means "database.sqlite alone is current" (the user went back
//! to the single layout); loaders then ignore it, and an upgrade replaces it `If-Match`.
//!
//! Compaction folds the deltas into a new base: it puts `database.sqlite` (`If-Match` the
//! base it read, with metadata naming the lineage and the sequence number it covers), then the
//! manifest with no deltas (`If-Match` the manifest it read). Between the two puts a loader
//! finds a base whose etag is not the manifest's but whose metadata says which of the
//! manifest's deltas it already contains, so it applies only the later ones; a crash there
//! loses nothing. A base that is neither the manifest's nor such a compaction was replaced
//! from outside: see [`OUTSIDE_RULE`].
//!
//! Submodules: [`keys`] (object and metadata keys, the version rule), [`store`] (the seam and
//! its failure contract), [`backoff`] (the retry policy), [`retry`] (retries, conditional
//! puts), [`cache`] (the version cache), [`manifest`] and [`delta`] (the incremental layout's
//! data and format), [`load`], [`adopt`], [`loaded`] (what a load hands on), [`save`] (the
//! save step), [`commit`], [`compact`], [`sweep`], [`moves`] (a move's reads and writes of the
//! R2 object), [`join`] (running fetches together).

pub mod adopt;
pub mod backoff;
pub mod cache;
pub mod commit;
pub mod compact;
pub mod delta;
pub mod join;
pub mod keys;
pub mod load;
pub mod loaded;
pub mod manifest;
pub mod moves;
pub mod retry;
pub mod save;
pub mod store;
pub mod sweep;

pub use backoff::RetryPolicy;
pub use commit::Committed;
pub use compact::{CompactOutcome, Compacted, FrozenBase, compact, fold_pending};
pub use join::join_all;
pub use keys::{COVERS_KEY, DB_VERSION_KEY, LINEAGE_KEY, ROUTE_KEY, WRITE_ID_KEY, next_version};
pub use load::load;
pub use loaded::{Adoption, Loaded};
pub use manifest::{
    BaseRef, CompactionPolicy, ConflictRef, DEFAULT_COMMIT_SLOTS, DeltaRef, FollowUp, Layout,
    MAX_COMMIT_SLOTS, MIN_SWEEP_GRACE_MS, Manifest, OUTSIDE_RULE, OutsideReplacement,
    PARALLEL_FETCHES, Retired, Slots, Stored,
};
pub use save::{Saved, save};
pub use store::{
    Body, Fetched, Listed, MemoryStore, ObjectHead, ObjectStore, PutCondition, PutOutcome,
    StoreError, StoreErrorKind, StoredObject,
};
pub use sweep::{Swept, sweep};
