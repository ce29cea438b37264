//! Where a user's objects live and what their custom metadata says: the object keys of both
//! layouts, the metadata keys, and the rule a new `db-version` follows.

use std::collections::HashMap;

use crate::error::Error;
use crate::request::UserId;

/// Custom metadata key carrying the database version (epoch milliseconds as a decimal string).
pub const DB_VERSION_KEY: &str = "db-version";

/// Custom metadata key saying where the user is served while it is set: `moving` during a
/// migration (writes are refused, retryable) and `durable_object` after one (requests go to
/// the user's Durable Object). Absent: R2.
pub const ROUTE_KEY: &str = "route";

/// Custom metadata key carrying a unique id per write attempt, so a writer whose `put` failed
/// in flight can tell whether the stored object is its own.
pub const WRITE_ID_KEY: &str = "write-id";

/// Metadata on a base written by compaction: the lineage and the sequence number it covers.
pub const LINEAGE_KEY: &str = "lineage";
/// See [`LINEAGE_KEY`].
pub const COVERS_KEY: &str = "covers-seq";

impl UserId {
    /// The R2 key of this user's database: `<user>/database.sqlite`.
    #[must_use]
    pub fn db_key(&self) -> String {
        format!("{}/database.sqlite", self.as_str())
    }

    /// The incremental layout's manifest: `<user>/manifest.json`.
    #[must_use]
    pub fn manifest_key(&self) -> String {
        format!("{}/manifest.json", self.as_str())
    }

    /// Where the incremental layout's deltas live: `<user>/deltas/`.
    #[must_use]
    pub fn delta_prefix(&self) -> String {
        format!("{}/deltas/", self.as_str())
    }

    /// The delta of write `seq` by `write_id` (zero-padded, so keys sort in commit order).
    #[must_use]
    pub fn delta_key(&self, seq: u64, write_id: &str) -> String {
        format!("{}/deltas/{seq:012}-{write_id}.delta", self.as_str())
    }

    /// A conflict record (see [`super::OUTSIDE_RULE`]).
    #[must_use]
    pub fn conflict_key(&self, seq: u64, write_id: &str) -> String {
        format!("{}/conflicts/{seq:012}-{write_id}.json", self.as_str())
    }
}

/// The `db-version` a write stores: the wall clock, but strictly greater than the version it
/// replaces even if the clock stands still or steps back.
#[must_use]
pub fn next_version(now_ms: u64, replaced: Option<u64>) -> u64 {
    now_ms.max(replaced.map_or(0, |v| v.saturating_add(1)))
}

/// An object's `db-version`, if it carries a readable one.
pub(crate) fn version_of(metadata: &HashMap<String, String>) -> Option<u64> {
    metadata.get(DB_VERSION_KEY).and_then(|v| v.parse().ok())
}

/// Whether the stored object says its user is served elsewhere right now.
pub(crate) fn check_route(metadata: &HashMap<String, String>) -> Result<(), Error> {
    match metadata.get(ROUTE_KEY).map(String::as_str) {
        Some("moving") => Err(Error::Migrating),
        Some("durable_object") => Err(Error::ServedByDurableObject),
        _ => Ok(()),
    }
}

/// The metadata of a write: its `write-id`, the `db-version` it stores (if known) and the
/// `route` it sets (if any).
pub(crate) fn metadata(
    write_id: &str,
    version: Option<&str>,
    route: Option<&str>,
) -> Vec<(&'static str, String)> {
    let mut m = vec![(WRITE_ID_KEY, write_id.to_owned())];
    if let Some(v) = version {
        m.push((DB_VERSION_KEY, v.to_owned()));
    }
    if let Some(r) = route {
        m.push((ROUTE_KEY, r.to_owned()));
    }
    m
}
