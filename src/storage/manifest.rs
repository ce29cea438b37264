//! The incremental layout's data: the layout setting, the compaction policy, the manifest and
//! what it lists, and what a load found stored. Plain data with serde; the steps that read
//! and write it are its siblings in `storage`, which re-exports all of this.

use serde::{Deserialize, Serialize};

/// How writes are stored (`LAYOUT` var).
///
/// The default is `incremental`: the issue that introduced it kept `single` as the default
/// until the fault suite (`tests/incremental.rs`) passed, which it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// Every write replaces `database.sqlite` (the spec's layout).
    Single,
    /// Every write adds a delta and commits a manifest (the default).
    #[default]
    Incremental,
}

impl Layout {
    /// The name used in the `LAYOUT` var, reports and headers.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Single => "single",
            Self::Incremental => "incremental",
        }
    }

    /// Parses the `LAYOUT` var.
    pub fn parse(raw: &str) -> Option<Self> {
        match raw.trim() {
            "" => Some(Self::default()),
            "single" => Some(Self::Single),
            "incremental" => Some(Self::Incremental),
            _ => None,
        }
    }
}

/// When the deltas are folded into a new base.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactionPolicy {
    /// Compact when the manifest lists this many deltas (`COMPACT_AFTER_DELTAS`).
    pub max_deltas: usize,
    /// ... or when the deltas add up to this fraction of the base, in percent.
    pub max_delta_percent: u64,
    /// Objects under `deltas/` that no manifest lists are deleted by the sweep once they are
    /// this old (`SWEEP_GRACE_MS`): longer than any request can take to commit.
    pub sweep_grace_ms: u64,
}

impl Default for CompactionPolicy {
    /// 6 deltas or 1 % of the base; a 10-minute grace. Each pending delta is one more get
    /// on a cold load, after the manifest; 6 is the Workers limit on simultaneous
    /// connections, so a cold load fetches every pending delta in one parallel wave, while
    /// the base downloads. Compaction is a background upload of the base, so small databases
    /// (cheap to rewrite, quick to download, where even one wave shows) compact after a
    /// write or two. BENCHMARKS.md "Layouts" measures it.
    fn default() -> Self {
        Self {
            max_deltas: PARALLEL_FETCHES,
            max_delta_percent: 1,
            sweep_grace_ms: 10 * 60 * 1000,
        }
    }
}

impl CompactionPolicy {
    /// Whether `manifest` has passed a threshold.
    #[must_use]
    pub fn due(&self, manifest: &Manifest) -> bool {
        let delta_bytes: u64 = manifest.deltas.iter().map(|d| d.size).sum();
        manifest.deltas.len() >= self.max_deltas
            || delta_bytes.saturating_mul(100)
                >= manifest
                    .base
                    .size
                    .max(1)
                    .saturating_mul(self.max_delta_percent)
    }
}

/// What a loader does when `database.sqlite` was replaced behind the manifest's back.
pub const OUTSIDE_RULE: &str = "the outside file becomes the new base (it is what the other writer considers current); the worker's deltas that it replaced are kept, listed in a conflict record under <user>/conflicts/, and never swept";

/// Deltas fetched at once: the Workers limit on simultaneous connections.
pub const PARALLEL_FETCHES: usize = 6;

/// The base a manifest builds on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseRef {
    /// `database.sqlite`'s entity tag.
    pub etag: String,
    /// The sequence number of the last write it contains.
    pub seq: u64,
    /// Its header's change counter.
    pub change_counter: u32,
    /// Its size.
    pub size: u64,
}

/// One committed write's delta.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeltaRef {
    /// Object key.
    pub key: String,
    /// Sequence number: one more than the previous write's.
    pub seq: u64,
    /// Object size.
    pub size: u64,
    /// [`delta::checksum`], hex.
    pub checksum: String,
    /// Header change counter after this write.
    pub change_counter: u32,
    /// File length after this write.
    pub len: u64,
}

/// Writes of the worker's that an outside replacement of `database.sqlite` displaced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConflictRef {
    /// The conflict record's key.
    pub record: String,
    /// The deltas it keeps.
    pub deltas: Vec<String>,
}

/// The manifest: the commit point of the incremental layout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version (1).
    pub format: u32,
    /// Random id fixed when the manifest is created; compaction markers must match it.
    pub lineage: String,
    /// Sequence number of the last committed write.
    pub seq: u64,
    /// `database.sqlite` alone is current; the rest is history.
    #[serde(default)]
    pub retired: bool,
    /// The base.
    pub base: BaseRef,
    /// Deltas after the base, in order (`seq` = `base.seq` + 1, + 2, ...).
    pub deltas: Vec<DeltaRef>,
    /// Conflict copies kept (never swept).
    #[serde(default)]
    pub conflicts: Vec<ConflictRef>,
}

impl Manifest {
    pub(crate) fn new(lineage: String, base: BaseRef) -> Self {
        Self {
            format: 1,
            lineage,
            seq: base.seq,
            retired: false,
            base,
            deltas: vec![],
            conflicts: vec![],
        }
    }

    /// The deltas after `seq`, if the manifest still lists every one of them.
    pub(crate) fn deltas_after(&self, seq: u64) -> Option<&[DeltaRef]> {
        if seq > self.seq {
            return None;
        }
        let from = self.deltas.iter().position(|d| d.seq > seq);
        let tail = from.map_or(&self.deltas[..0], |i| &self.deltas[i..]);
        let complete =
            tail.first().is_none_or(|d| d.seq == seq + 1) && tail.len() as u64 == self.seq - seq;
        complete.then_some(tail)
    }

    /// The header change counter of the state after write `seq` (the base's, or a listed
    /// delta's), if this manifest knows it.
    pub(crate) fn change_counter_at(&self, seq: u64) -> Option<u32> {
        if seq == self.base.seq {
            return Some(self.base.change_counter);
        }
        self.deltas
            .iter()
            .find(|d| d.seq == seq)
            .map(|d| d.change_counter)
    }

    /// Whether a delta key is kept by this manifest (listed, or part of a conflict copy).
    pub(crate) fn references(&self, key: &str) -> bool {
        (!self.retired && self.deltas.iter().any(|d| d.key == key))
            || self
                .conflicts
                .iter()
                .any(|c| c.deltas.iter().any(|k| k == key))
    }
}

/// A retired manifest: its etag (an upgrade replaces it `If-Match`) and the conflict copies
/// it keeps, which the next manifest must keep too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retired {
    /// The manifest's etag.
    pub etag: String,
    /// Its conflict copies.
    pub conflicts: Vec<ConflictRef>,
}

/// What R2 holds for a user, as of a load: what the next write must be conditional on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// Nothing: a new database.
    New,
    /// `database.sqlite` alone, with this etag (and a retired manifest, if one exists).
    Single {
        /// `database.sqlite`'s etag.
        etag: String,
        /// The retired manifest, if one exists.
        retired_manifest: Option<Retired>,
    },
    /// A manifest over a base.
    Incremental {
        /// The manifest.
        manifest: Box<Manifest>,
        /// Its etag.
        etag: String,
    },
}

impl Stored {
    /// The layout this user is stored in.
    #[must_use]
    pub fn layout(&self) -> Layout {
        match self {
            Self::Incremental { .. } => Layout::Incremental,
            _ => Layout::Single,
        }
    }
}

/// Conflict found at load: `database.sqlite` was replaced from outside.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OutsideReplacement {
    /// The rule applied ([`OUTSIDE_RULE`]).
    pub rule: &'static str,
    /// The base the manifest expected.
    pub expected_base: String,
    /// The base found (now adopted).
    pub found_base: String,
    /// The conflict record, when the worker had writes the outside file replaced.
    pub record: Option<String>,
    /// How many of the worker's deltas it keeps.
    pub deltas_kept: usize,
}

/// What should follow a write, off the request's critical path (`ctx.waitUntil`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FollowUp {
    /// Nothing.
    None,
    /// The deltas passed a threshold: fold them into a new base (`crate::storage::compact`).
    Compact,
    /// `LAYOUT=single` but the user has a manifest: fold and retire it, so the user is one
    /// object again.
    Retire,
}
