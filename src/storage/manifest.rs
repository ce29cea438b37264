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
    /// Keys the manifest's commits rotate over (`COMMIT_SLOTS`): commit `c` goes to slot
    /// `c % slots` (of the manifest it follows), so one key is rewritten only every `slots`
    /// commits. A user's count only grows ([`Manifest::slots`]).
    pub commit_slots: u32,
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
            commit_slots: DEFAULT_COMMIT_SLOTS,
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

/// The shortest `SWEEP_GRACE_MS` the config takes. A commit's delta is referenced by nothing
/// from its put until the manifest put lands: one run of the commit is two puts, each
/// repeated after 429s and 5xx for at most 2.75 s of waits ([`super::RetryPolicy`]), plus
/// the reads that resolve a lost answer; a minute is far above that, with slow calls.
pub const MIN_SWEEP_GRACE_MS: u64 = 60_000;

/// The default of [`CompactionPolicy::commit_slots`].
pub const DEFAULT_COMMIT_SLOTS: u32 = 5;

/// Most commit slots a user may have: a load gets them all at once, with the base's head, and
/// the Workers limit on simultaneous connections is [`PARALLEL_FETCHES`].
pub const MAX_COMMIT_SLOTS: u32 = 5;

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

/// The manifest: the complete commit record of the incremental layout. Each one is written to
/// one of the user's commit slots ([`Slots`]); the one with the highest `commit` is the state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version: 1 with one commit slot, 2 with more (a worker that knows only
    /// `manifest.json` refuses format 2 instead of committing over a stale slot).
    pub format: u32,
    /// The commit number: one more than the manifest it replaced (0 for the first, and for
    /// every manifest written before commit slots existed).
    #[serde(default)]
    pub commit: u64,
    /// The number of commit slots: the next commit goes to slot `(commit + 1) % slots`. It
    /// never shrinks, so a loader that reads as many slots as any manifest it finds names
    /// has read them all.
    #[serde(default = "one_slot")]
    pub slots: u32,
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

fn one_slot() -> u32 {
    1
}

impl Manifest {
    pub(crate) fn new(lineage: String, base: BaseRef) -> Self {
        Self {
            format: 1,
            commit: 0,
            slots: 1,
            lineage,
            seq: base.seq,
            retired: false,
            base,
            deltas: vec![],
            conflicts: vec![],
        }
    }

    /// Numbers this manifest as the commit after `prev` (the slots a load read; `None`: the
    /// user has no manifest, so this is commit 0 in slot 0), with at least `commit_slots`
    /// slots from now on (never fewer than before). Returns the slot it must be put in.
    pub(crate) fn number_after(&mut self, prev: Option<&Slots>, commit_slots: u32) -> usize {
        let (commit, slot, count) = match prev {
            Some(p) => (p.commit + 1, p.next_slot(), p.count),
            None => (0, 0, 1),
        };
        self.commit = commit;
        self.slots = count.max(commit_slots).clamp(1, MAX_COMMIT_SLOTS);
        self.format = if self.slots > 1 { 2 } else { 1 };
        slot
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

/// A manifest user's commit slots as a load read them: what the next commit is conditional on.
///
/// The next commit `c + 1` is one conditional put of slot `(c + 1) % slots`: `If-Match` the
/// etag that slot had when it was read (it then held commit `c + 1 - slots` or older), or
/// create-only if it was absent. Commit `c + 1` can live nowhere else, and every manifest in a
/// slot has a commit number no slot held before, so the put succeeds only if no commit after
/// `c` exists: a stale read fails the condition, it never commits over a newer state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slots {
    /// Every slot's etag as read (index = slot; `None`: no object there).
    pub etags: Vec<Option<String>>,
    /// The slot the newest manifest was read from.
    pub current: usize,
    /// That manifest's commit number.
    pub commit: u64,
    /// Its slot count (where the next commit goes).
    pub count: u32,
}

impl Slots {
    /// The newest manifest's etag.
    #[must_use]
    pub fn etag(&self) -> &str {
        self.etags
            .get(self.current)
            .and_then(Option::as_deref)
            .unwrap_or_default()
    }

    /// The slot the next commit goes to.
    #[must_use]
    pub fn next_slot(&self) -> usize {
        usize::try_from((self.commit + 1) % u64::from(self.count.max(1))).unwrap_or(0)
    }

    /// The etag the next commit's slot had when read (`None`: absent).
    #[must_use]
    pub fn next_etag(&self) -> Option<&str> {
        self.etags.get(self.next_slot()).and_then(Option::as_deref)
    }

    /// The slots after commit `commit` (slot count `count`) landed in `slot` with `etag`.
    #[must_use]
    pub fn after(&self, slot: usize, etag: String, commit: u64, count: u32) -> Self {
        let mut etags = self.etags.clone();
        let len = etags.len().max(count as usize).max(slot + 1);
        etags.resize(len, None);
        etags[slot] = Some(etag);
        Self {
            etags,
            current: slot,
            commit,
            count,
        }
    }

    /// The slots of a user whose first manifest (commit 0, slot 0) landed with `etag`.
    #[must_use]
    pub fn first(etag: String, count: u32) -> Self {
        Self {
            etags: vec![None],
            current: 0,
            commit: 0,
            count: 1,
        }
        .after(0, etag, 0, count)
    }
}

/// A retired manifest: the slots it was read from (an upgrade commits after it, conditional
/// on them) and the conflict copies it keeps, which the next manifest must keep too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retired {
    /// Where the retired manifest was read, and every other slot's etag.
    pub slots: Slots,
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
        /// The newest manifest.
        manifest: Box<Manifest>,
        /// Every commit slot's etag, and which one the manifest was read from.
        slots: Slots,
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
