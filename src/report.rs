//! The response JSON of both routes: the spec's public contract (`success`, `delay_analysis`,
//! `timing_breakdown`, `db_info`) plus additive fields (`route`, `cold_start`, `clock`, ...).

use serde::{Deserialize, Serialize};

use crate::clock::Clock;
use crate::delay::{PhaseDelay, Thresholds, round2};
use crate::exec::StatementResult;
use crate::request::SaveMode;
use crate::trend::TrendInfo;

/// Which backend served a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// The user's database object in R2, loaded into an in-memory SQLite.
    R2,
    /// The user's SQLite-backed Durable Object.
    DurableObject,
}

/// The whole success response.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Always `true` here; errors use [`crate::error::ErrorBody`].
    pub success: bool,
    /// Which backend served the request.
    pub route: Backend,
    /// True if this request initialised SQLite in this isolate: the first database request a
    /// fresh isolate serves, the one that pays `wasm_init_ms`.
    pub cold_start: bool,
    /// What the user experienced, classified by the thresholds.
    pub delay_analysis: DelayAnalysis,
    /// Every measured span, rounded to 0.01 ms.
    pub timing_breakdown: TimingBreakdown,
    /// Timing fields that have no counterpart on this route (their 0 is not a measurement).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_applicable: Vec<&'static str>,
    /// The database after the request.
    pub db_info: DbInfo,
    /// One entry per statement, for requests that ran the client's SQL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub results: Option<Vec<StatementResult>>,
    /// The version cache's part in this request (R2 route only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheInfo>,
    /// How far the spans above can be trusted.
    pub clock: ClockInfo,
    /// A sentence for the app to show its user when a phase was critical (the spec's
    /// `show_user_warning` action); absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_warning: Option<String>,
    /// This user's recent sync times in this isolate and what they imply.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trend: Option<TrendInfo>,
    /// Memory of this isolate's wasm instance (only on wasm32).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryInfo>,
    /// How the database is stored in R2 and what this request moved (R2 route only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageInfo>,
    /// The write's place in its user's write queue (R2 route, writes only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub write_queue: Option<QueueInfo>,
}

/// `write_queue`: how a write was committed together with others of its user in this isolate.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct QueueInfo {
    /// Requests committed in the same commit (1: alone).
    pub group_size: u32,
    /// This request's place in the group, from 0 (the order they ran in).
    pub position: u32,
    /// Time spent queued before its group started, behind an earlier commit.
    pub queued_ms: f64,
    /// Times the group ran before its commit succeeded (it runs again after losing a race).
    pub group_runs: u32,
}

/// `storage`: the layout and what this request read and wrote in it.
#[derive(Debug, Clone, Serialize)]
pub struct StorageInfo {
    /// `single` (one object) or `incremental` (base + deltas + manifest), after the request.
    pub layout: crate::storage::Layout,
    /// Bytes this request uploaded.
    pub bytes_uploaded: u64,
    /// Objects this request wrote.
    pub objects_written: u32,
    /// Deltas the load fetched and applied.
    pub deltas_applied: u32,
    /// Deltas the manifest lists now (folded by the next compaction).
    pub deltas_pending: usize,
    /// The manifest's sequence number (commits since the user went incremental).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manifest_seq: Option<u64>,
    /// What runs after the response: `none`, `compact` or `retire`.
    pub follow_up: crate::storage::FollowUp,
    /// Set when `database.sqlite` was found replaced from outside (see the README).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outside_replacement: Option<crate::storage::OutsideReplacement>,
}

/// `memory`: what the measurement of peak memory per byte of database is built on.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryInfo {
    /// Size of the wasm linear memory after this request. It never shrinks, so it is the
    /// isolate's high-water mark for SQLite and Rust allocations; JS-side buffers (the R2
    /// body and the upload copy, one image each) come on top.
    pub wasm_memory_bytes: u64,
    /// This request's memory admission (`crate::admission`): what it held, how long it
    /// waited, and the isolate's gate. Absent on the Durable Object route.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admission: Option<crate::admission::Admission>,
}

/// `delay_analysis`.
#[derive(Debug, Clone, Serialize)]
pub struct DelayAnalysis {
    /// Load delay.
    pub load: PhaseDelay,
    /// Save delay (`not_run` when nothing was saved).
    pub save: PhaseDelay,
    /// Thresholds in force.
    pub thresholds: Thresholds,
}

/// `timing_breakdown`.
#[derive(Debug, Clone, Serialize)]
pub struct TimingBreakdown {
    /// Load phase.
    pub load: LoadTiming,
    /// The query (the table list, or the client's statements).
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
    /// R2 `get` including reading the body (network); on the Durable Object route, the
    /// round trip to the object minus its query time.
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
    /// R2 `put` (network), retries and their waits included.
    pub upload_ms: f64,
}

/// `db_info`.
#[derive(Debug, Clone, Serialize)]
pub struct DbInfo {
    /// Size of the database after the request, in KiB rounded to 0.01.
    pub size_kb: f64,
    /// Size of the database after the request, in bytes.
    pub size_bytes: u64,
    /// Table names, as `SELECT name FROM sqlite_master WHERE type='table'` lists them.
    pub tables: Vec<String>,
    /// What the R2 route knows about the stored object (absent on the Durable Object route).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub stored: Option<StoredInfo>,
}

/// The R2 route's part of `db_info`.
#[derive(Debug, Clone, Serialize)]
pub struct StoredInfo {
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
    /// The save mode in force: `always`, `auto` or `never`.
    pub save_mode: SaveMode,
    /// Whether the database was written back.
    pub saved: bool,
    /// How many times the request ran: more than 1 when another writer changed the object
    /// between a load and its save, and the work was re-run on the new version.
    pub attempts: u32,
}

/// `cache`: whether the version cache saved this request a download and a parse.
#[derive(Debug, Clone, Serialize)]
pub struct CacheInfo {
    /// `hit`: R2 confirmed the cached copy is current (no body downloaded, nothing parsed);
    /// `miss`: nothing cached for this user; `stale`: cached copy was outdated and replaced;
    /// `disabled`: `CACHE_MAX_BYTES` is 0.
    pub status: CacheStatus,
    /// Databases cached in this isolate after this request.
    pub entries: usize,
    /// Their total size.
    pub bytes: u64,
    /// The budget (`CACHE_MAX_BYTES`).
    pub max_bytes: u64,
}

/// `cache.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheStatus {
    /// Cached copy confirmed current.
    Hit,
    /// Nothing cached.
    Miss,
    /// Cached copy outdated.
    Stale,
    /// Cached copy brought up to date with the deltas it lacked.
    Updated,
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

/// A CPU-only span: its `timing_breakdown` name, its reading, and whether it ran at all.
#[derive(Debug, Clone, Copy)]
pub struct CpuSpan {
    /// Name in `timing_breakdown` naming (`load.parse_ms`, `query_ms`, ...).
    pub name: &'static str,
    /// What the clock read.
    pub ms: f64,
    /// Whether the work ran (a span that did not run is not "unmeasured").
    pub ran: bool,
}

impl ClockInfo {
    /// Describes `clock` and lists which of `spans` it could not have measured: all that ran
    /// when it is frozen during computation, otherwise those shorter than its resolution.
    pub fn new<C: Clock>(clock: &C, spans: &[CpuSpan]) -> Self {
        let resolution = clock.resolution_ms();
        let frozen = clock.advances_during_cpu() == Some(false);
        Self {
            source: clock.source(),
            resolution_ms: resolution,
            advances_during_cpu: clock.advances_during_cpu(),
            unmeasured: spans
                .iter()
                .filter(|s| s.ran && (frozen || s.ms < resolution))
                .map(|s| s.name)
                .collect(),
        }
    }
}

impl Report {
    /// The sync time the trend tracks: load total + save total, unrounded as measured.
    #[must_use]
    pub fn sync_ms(&self) -> f64 {
        self.timing_breakdown.load.total_ms + self.timing_breakdown.save.total_ms
    }
}

/// What the Durable Object answers the worker (the wire between them): its tables, and the
/// results of the statements it ran, if any.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DurableTables {
    /// User tables, in creation order.
    pub tables: Vec<String>,
    /// The query's time inside the object (CPU only).
    pub query_ms: f64,
    /// The object's database size.
    pub size_bytes: u64,
    /// One entry per statement, for `POST /do/query`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub results: Option<Vec<StatementResult>>,
}

/// The timing fields the Durable Object route has no counterpart for.
pub const DURABLE_NOT_APPLICABLE: [&str; 5] = [
    "load.wasm_init_ms",
    "load.parse_ms",
    "save.total_ms",
    "save.serialize_ms",
    "save.upload_ms",
];

impl Report {
    /// The Durable Object route's report, in the same model as the R2 route's: `load` is the
    /// round trip to the object minus its query time, the save did not run (nothing to save:
    /// the object stores as it goes), and the object's query time is a CPU-only span.
    pub fn durable_object<C: Clock>(
        clock: &C,
        thresholds: &Thresholds,
        round_trip_ms: f64,
        inner: DurableTables,
    ) -> Self {
        let transit_ms = (round_trip_ms - inner.query_ms).max(0.0);
        Self {
            success: true,
            route: Backend::DurableObject,
            cold_start: false,
            delay_analysis: DelayAnalysis {
                load: PhaseDelay::new(transit_ms, thresholds),
                save: PhaseDelay::not_run(),
                thresholds: *thresholds,
            },
            timing_breakdown: TimingBreakdown {
                load: LoadTiming::new(transit_ms, 0.0, transit_ms, 0.0),
                query_ms: round2(inner.query_ms),
                save: SaveTiming::new(0.0, 0.0, 0.0),
            },
            not_applicable: DURABLE_NOT_APPLICABLE.to_vec(),
            db_info: DbInfo::new(inner.size_bytes, inner.tables, None),
            results: inner.results,
            cache: None,
            clock: ClockInfo::new(
                clock,
                &[CpuSpan {
                    name: "query_ms",
                    ms: inner.query_ms,
                    ran: true,
                }],
            ),
            user_warning: None,
            trend: None,
            memory: None,
            storage: None,
            write_queue: None,
        }
    }
}

impl LoadTiming {
    /// Rounded spans, as the spec rounds them.
    #[must_use]
    pub fn new(total_ms: f64, wasm_init_ms: f64, download_ms: f64, parse_ms: f64) -> Self {
        Self {
            total_ms: round2(total_ms),
            wasm_init_ms: round2(wasm_init_ms),
            download_ms: round2(download_ms),
            parse_ms: round2(parse_ms),
        }
    }
}

impl SaveTiming {
    /// Rounded spans; all 0 for a save that did not run.
    #[must_use]
    pub fn new(total_ms: f64, serialize_ms: f64, upload_ms: f64) -> Self {
        Self {
            total_ms: round2(total_ms),
            serialize_ms: round2(serialize_ms),
            upload_ms: round2(upload_ms),
        }
    }
}

impl DbInfo {
    /// Size and tables, with the R2 route's stored-object facts if any.
    #[must_use]
    pub fn new(size_bytes: u64, tables: Vec<String>, stored: Option<StoredInfo>) -> Self {
        Self {
            size_kb: round2(size_bytes as f64 / 1024.0),
            size_bytes,
            tables,
            stored,
        }
    }
}

#[cfg(test)]
mod tests {
    #[cfg(all(target_family = "wasm", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::testing::StepClock;

    /// A frozen clock flags every span that ran; a moving one only those below its resolution.
    #[test]
    fn unmeasured_spans() {
        let spans = [
            CpuSpan {
                name: "load.parse_ms",
                ms: 5.0,
                ran: true,
            },
            CpuSpan {
                name: "query_ms",
                ms: 0.0,
                ran: true,
            },
            CpuSpan {
                name: "save.serialize_ms",
                ms: 0.0,
                ran: false,
            },
        ];
        assert_eq!(
            ClockInfo::new(&StepClock::frozen(), &spans).unmeasured,
            ["load.parse_ms", "query_ms"]
        );
        assert_eq!(
            ClockInfo::new(&StepClock::stepping(1.0), &spans).unmeasured,
            ["query_ms"]
        );
    }

    /// The Durable Object route's report: same model, its save not graded, its CPU-only query
    /// flagged when the clock cannot see it.
    #[test]
    fn durable_object_report() {
        let inner = DurableTables {
            tables: vec!["projects".into()],
            query_ms: 0.0,
            size_bytes: 8192,
            results: None,
        };
        let r = Report::durable_object(&StepClock::frozen(), &Thresholds::default(), 12.0, inner);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["route"], "durable_object");
        assert_eq!(json["delay_analysis"]["save"]["status"], "not_run");
        assert_eq!(json["delay_analysis"]["load"]["ms"], 12);
        assert_eq!(json["clock"]["unmeasured"], serde_json::json!(["query_ms"]));
        assert_eq!(json["not_applicable"].as_array().unwrap().len(), 5);
        assert!(json.get("cache").is_none());
        assert_eq!(json["db_info"]["tables"], serde_json::json!(["projects"]));
    }

    /// The R2 facts sit directly in `db_info`, as before; the Durable Object route has none.
    #[test]
    fn db_info_shape() {
        let stored = StoredInfo {
            db_version: Some("2".into()),
            loaded_db_version: None,
            new_database: true,
            converted_from_wal: false,
            save_mode: SaveMode::Auto,
            saved: true,
            attempts: 1,
        };
        let json =
            serde_json::to_value(DbInfo::new(130_560, vec!["t".into()], Some(stored))).unwrap();
        assert_eq!(json["size_kb"], 127.5);
        assert_eq!(json["db_version"], "2");
        assert_eq!(json["save_mode"], "auto");
        let json = serde_json::to_value(DbInfo::new(0, vec![], None)).unwrap();
        assert!(json.get("db_version").is_none(), "{json}");
    }
}
