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

    /// The incremental layout's commit slot `slot`: `<user>/manifest.json` for slot 0 (so a
    /// manifest written before slots existed is commit 0 in slot 0), `<user>/manifest-<slot>.json`
    /// for the others.
    #[must_use]
    pub fn manifest_key(&self, slot: usize) -> String {
        if slot == 0 {
            format!("{}/manifest.json", self.as_str())
        } else {
            format!("{}/manifest-{slot}.json", self.as_str())
        }
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

/// Where the stored object says its user is served: its `route` metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Home {
    /// No `route` (or one this worker never writes): R2 serves the user.
    R2,
    /// `route=moving`: frozen for a move; R2-route requests answer 503 `migrating`.
    Moving,
    /// `route=durable_object`: the user's Durable Object serves them.
    DurableObject,
}

impl Home {
    /// What an object's metadata says.
    #[must_use]
    pub fn of(metadata: &HashMap<String, String>) -> Self {
        match metadata.get(ROUTE_KEY).map(String::as_str) {
            Some("moving") => Self::Moving,
            Some("durable_object") => Self::DurableObject,
            _ => Self::R2,
        }
    }

    /// Its name, as `route` metadata spells it (`r2` is the absence of the key).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::R2 => "r2",
            Self::Moving => "moving",
            Self::DurableObject => "durable_object",
        }
    }
}

/// Whether the stored object says its user is served elsewhere right now.
pub(crate) fn check_route(metadata: &HashMap<String, String>) -> Result<(), Error> {
    match Home::of(metadata) {
        Home::Moving => Err(Error::Migrating),
        Home::DurableObject => Err(Error::ServedByDurableObject),
        Home::R2 => Ok(()),
    }
}

/// The metadata of a write: its `write-id`, the `db-version` it stores (if known) and where
/// the user is served (`route`, absent for R2).
pub(crate) fn metadata(
    write_id: &str,
    version: Option<&str>,
    home: Home,
) -> Vec<(&'static str, String)> {
    let mut m = vec![(WRITE_ID_KEY, write_id.to_owned())];
    if let Some(v) = version {
        m.push((DB_VERSION_KEY, v.to_owned()));
    }
    push_home(&mut m, home);
    m
}

/// Adds `route` metadata for `home` (nothing for R2).
pub(crate) fn push_home(metadata: &mut Vec<(&'static str, String)>, home: Home) {
    if home != Home::R2 {
        metadata.push((ROUTE_KEY, home.as_str().to_owned()));
    }
}

#[cfg(test)]
mod tests {
    #[cfg(all(target_family = "wasm", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    /// `route` metadata reads back as the home it was written for, and an unknown or absent
    /// value is R2 (the worker serves the user).
    #[test]
    fn route_metadata_round_trips_through_home() {
        for home in [Home::R2, Home::Moving, Home::DurableObject] {
            let written: HashMap<String, String> = metadata("w", Some("7"), home)
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect();
            assert_eq!(Home::of(&written), home);
            assert_eq!(written.contains_key(ROUTE_KEY), home != Home::R2);
        }
        let odd = HashMap::from([(ROUTE_KEY.to_owned(), "elsewhere".to_owned())]);
        assert_eq!(Home::of(&odd), Home::R2);
        assert!(check_route(&odd).is_ok());
        let moving = HashMap::from([(ROUTE_KEY.to_owned(), "moving".to_owned())]);
        assert!(matches!(check_route(&moving), Err(Error::Migrating)));
    }

    /// A new `db-version` is the clock, but always past the one it replaces.
    #[test]
    fn next_version_always_increases() {
        assert_eq!(next_version(100, None), 100);
        assert_eq!(next_version(100, Some(50)), 100);
        assert_eq!(next_version(100, Some(100)), 101);
        assert_eq!(next_version(5, Some(u64::MAX)), u64::MAX);
    }
}
