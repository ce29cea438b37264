//! The response JSON: the spec's public contract (`success`, `delay_analysis`,
//! `timing_breakdown`, `db_info`) plus additive fields (`cold_start`, `clock`, ...).

use serde::Serialize;

use crate::delay::{DelayAction, DelayStatus, Thresholds};
use crate::request::SaveMode;

/// The whole success response.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Always `true` here; errors use [`crate::error::ErrorBody`].
    pub success: bool,
    /// True if this request initialised SQLite in this isolate: the first database request a
    /// fresh isolate serves, the one that pays `wasm_init_ms`.
    pub cold_start: bool,
    /// What the user experienced, classified by the thresholds.
    pub delay_analysis: DelayAnalysis,
    /// Every measured span, rounded to 0.01 ms.
    pub timing_breakdown: TimingBreakdown,
    /// The database that was written back.
    pub db_info: DbInfo,
    /// The version cache's part in this request.
    pub cache: CacheInfo,
    /// How far the spans above can be trusted.
    pub clock: ClockInfo,
    /// This user's recent sync times in this isolate and what they imply (added by the
    /// runtime glue, which owns the isolate's trend tracker).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trend: Option<crate::trend::TrendInfo>,
    /// Memory of this isolate's wasm instance (only on wasm32).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryInfo>,
}

/// `memory`: what the measurement of peak memory per byte of database is built on.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryInfo {
    /// Size of the wasm linear memory after this request. It never shrinks, so it is the
    /// isolate's high-water mark for SQLite and Rust allocations; JS-side buffers (the R2
    /// body and the upload copy, one image each) come on top.
    pub wasm_memory_bytes: u64,
}

/// `delay_analysis`.
#[derive(Debug, Clone, Serialize)]
pub struct DelayAnalysis {
    /// Load delay.
    pub load: PhaseDelay,
    /// Save delay.
    pub save: PhaseDelay,
    /// Thresholds in force.
    pub thresholds: Thresholds,
}

/// One phase's delay: whole milliseconds and its band.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseDelay {
    /// The phase's total, rounded to whole milliseconds (as the spec's `Math.round`).
    pub ms: u64,
    /// The band the unrounded total falls in.
    pub status: DelayStatus,
    /// What that band asks for.
    pub action: DelayAction,
}

impl Report {
    /// The sync time the trend tracks: load total + save total, unrounded as measured.
    #[must_use]
    pub fn sync_ms(&self) -> f64 {
        self.timing_breakdown.load.total_ms + self.timing_breakdown.save.total_ms
    }
}

impl PhaseDelay {
    /// Classifies an unrounded total, as the spec does.
    #[must_use]
    pub fn new(total_ms: f64, thresholds: &Thresholds) -> Self {
        let (status, action) = thresholds.classify(total_ms);
        Self {
            ms: round_ms(total_ms),
            status,
            action,
        }
    }
}

/// `timing_breakdown`.
#[derive(Debug, Clone, Serialize)]
pub struct TimingBreakdown {
    /// Load phase.
    pub load: LoadTiming,
    /// The table-list query.
    pub query_ms: f64,
    /// Save phase.
    pub save: SaveTiming,
}

/// `timing_breakdown.load`.
#[derive(Debug, Clone, Serialize)]
pub struct LoadTiming {
    /// Whole load phase: `wasm_init_ms` + `download_ms` + `parse_ms`.
    pub total_ms: f64,
    /// SQLite initialisation; non-zero only on the isolate's first request.
    pub wasm_init_ms: f64,
    /// R2 `get` including reading the body (network).
    pub download_ms: f64,
    /// Copying into SQLite memory, header validation, deserialize and schema read (CPU).
    pub parse_ms: f64,
}

/// `timing_breakdown.save`.
#[derive(Debug, Clone, Serialize)]
pub struct SaveTiming {
    /// Whole save phase: `serialize_ms` + `upload_ms`.
    pub total_ms: f64,
    /// Exporting the database image (CPU).
    pub serialize_ms: f64,
    /// R2 `put` (network).
    pub upload_ms: f64,
}

/// `db_info`.
#[derive(Debug, Clone, Serialize)]
pub struct DbInfo {
    /// Size of the image written back, in KiB rounded to 0.01.
    pub size_kb: f64,
    /// Size of the image written back, in bytes.
    pub size_bytes: u64,
    /// Table names, as `SELECT name FROM sqlite_master WHERE type='table'` lists them.
    pub tables: Vec<String>,
    /// The `db-version` of the stored object after this request: the one just written, or
    /// the loaded one when the save was skipped (`null` if there is none).
    pub db_version: Option<String>,
    /// The `db-version` of the object that was loaded (`null` for a new database, or an
    /// object written without one).
    pub loaded_db_version: Option<String>,
    /// True if no object existed, so a new empty database was created.
    pub new_database: bool,
    /// True if the stored header said WAL mode; the image written back is rollback mode.
    pub converted_from_wal: bool,
    /// The `save` parameter in force: `always` (default), `auto` or `never`.
    pub save_mode: SaveMode,
    /// Whether the database was written back (false when `auto` found no change, or `never`).
    pub saved: bool,
}

/// `cache`: whether the version cache saved this request a download and a parse.
#[derive(Debug, Clone, Serialize)]
pub struct CacheInfo {
    /// `hit`: R2 confirmed the cached copy is current (no body downloaded, nothing parsed);
    /// `miss`: nothing cached for this user; `stale`: cached copy was outdated and replaced;
    /// `disabled`: `CACHE_MAX_BYTES` is 0.
    pub status: CacheStatus,
    /// Databases cached in this isolate after the request.
    pub entries: usize,
    /// Their total size.
    pub bytes: u64,
    /// The cache's budget (`CACHE_MAX_BYTES`).
    pub max_bytes: u64,
}

/// Outcome of the cache lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheStatus {
    /// Cached copy confirmed current.
    Hit,
    /// Nothing cached.
    Miss,
    /// Cached copy outdated.
    Stale,
    /// Cache turned off.
    Disabled,
}

/// `clock`: which spans were really measured.
#[derive(Debug, Clone, Serialize)]
pub struct ClockInfo {
    /// What the spans were read from.
    pub source: &'static str,
    /// Smallest step the clock shows.
    pub resolution_ms: f64,
    /// Whether the clock advances during pure computation (false on deployed Workers).
    pub advances_during_cpu: Option<bool>,
    /// CPU-only spans (in `timing_breakdown` naming) whose value is not a measurement: the
    /// clock could not see them, so their 0 means "unknown", not "free".
    pub unmeasured: Vec<&'static str>,
}

/// Rounds to two decimals, as the spec's `Math.round(x * 100) / 100`.
#[must_use]
pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Rounds to whole milliseconds, as the spec's `Math.round(x)`; negatives read 0.
#[must_use]
pub fn round_ms(x: f64) -> u64 {
    // Float-to-int `as` saturates, and NaN maps to 0.
    x.max(0.0).round() as u64
}

#[cfg(test)]
mod tests {
    #[cfg(all(target_family = "wasm", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    /// Rounding matches the spec's JavaScript.
    #[test]
    fn rounding() {
        assert_eq!(round2(52.123), 52.12);
        assert_eq!(round2(52.125_000_1), 52.13);
        assert_eq!(round_ms(144.5), 145);
        assert_eq!(round_ms(144.49), 144);
        assert_eq!(round_ms(-1.0), 0);
        assert_eq!(round2(130_560.0 / 1024.0), 127.5);
    }

    /// The delay is classified on the unrounded value: 99.6 ms shows as 100 but is optimal,
    /// exactly as the spec's code behaves.
    #[test]
    fn classifies_unrounded() {
        let d = PhaseDelay::new(99.6, &Thresholds::default());
        assert_eq!(d.ms, 100);
        assert_eq!(d.status, DelayStatus::Optimal);
    }
}
