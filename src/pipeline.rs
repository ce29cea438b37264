//! One request's work: load the user's database, list its tables, save it back, report.
//!
//! Plain Rust over [`ObjectStore`] and [`Clock`], so host tests drive every step.

use crate::clock::Clock;
use crate::delay::Thresholds;
use crate::error::Error;
use crate::report::{
    ClockInfo, DbInfo, DelayAnalysis, LoadTiming, PhaseDelay, Report, SaveTiming, TimingBreakdown,
    round2,
};
use crate::request::UserId;
use crate::sqlite;
use crate::store::{DB_VERSION_KEY, Fetched, ObjectStore, PutCondition, PutOutcome};

/// What the pipeline runs against.
#[derive(Debug)]
pub struct Context<'a, S, C> {
    /// Where databases live.
    pub store: &'a S,
    /// What spans are measured with.
    pub clock: &'a C,
    /// Delay thresholds in force.
    pub thresholds: Thresholds,
    /// Largest object that will be downloaded.
    pub max_db_bytes: u64,
}

/// Loads, queries and saves `user`'s database and reports what each step cost.
///
/// Invariants: nothing is written unless the load succeeded; the write is conditional on the
/// object being unchanged since it was read (or still absent), so a concurrent writer's
/// change is never overwritten: the request fails with [`Error::Conflict`] instead.
pub async fn sync<S: ObjectStore, C: Clock>(
    ctx: &Context<'_, S, C>,
    user: &UserId,
) -> Result<Report, Error> {
    let clock = ctx.clock;
    let key = user.db_key();

    let load_start = clock.now_ms();
    let initialized_here = sqlite::initialize()?;
    let wasm_init_ms = clock.now_ms() - load_start;

    let download_start = clock.now_ms();
    let object = match ctx.store.get(&key, ctx.max_db_bytes).await? {
        Fetched::Missing => None,
        Fetched::TooLarge { size_bytes } => {
            return Err(Error::TooLarge {
                size_bytes,
                max_bytes: ctx.max_db_bytes,
            });
        }
        Fetched::Found(object) => Some(object),
    };
    let download_ms = clock.now_ms() - download_start;

    let parse_start = clock.now_ms();
    let (mut conn, condition, previous_version, converted_from_wal) = match object {
        Some(object) => {
            let loaded = sqlite::load(&object.body)?;
            let previous = object
                .metadata
                .get(DB_VERSION_KEY)
                .and_then(|v| v.parse::<u64>().ok());
            // `object` (and the runtime's copy of the body) is dropped here, before the save
            // allocates, to keep peak memory near one image.
            (
                loaded.conn,
                PutCondition::IfMatch(object.etag),
                previous,
                loaded.header.wal_mode,
            )
        }
        None => (sqlite::create()?, PutCondition::IfAbsent, None, false),
    };
    let parse_ms = clock.now_ms() - parse_start;
    let load_total_ms = clock.now_ms() - load_start;
    let new_database = matches!(condition, PutCondition::IfAbsent);

    let query_start = clock.now_ms();
    let tables = sqlite::list_tables(&conn)?;
    let query_ms = clock.now_ms() - query_start;

    let save_start = clock.now_ms();
    let image = sqlite::export(&mut conn)?;
    let serialize_ms = clock.now_ms() - save_start;
    // Strictly increasing even if the wall clock stands still or steps back.
    let version = clock
        .epoch_ms()
        .max(previous_version.map_or(0, |v| v.saturating_add(1)));
    let db_version = version.to_string();
    let upload_start = clock.now_ms();
    let outcome = ctx
        .store
        .put(
            &key,
            &image,
            &[(DB_VERSION_KEY, db_version.clone())],
            &condition,
        )
        .await?;
    let upload_ms = clock.now_ms() - upload_start;
    let save_total_ms = clock.now_ms() - save_start;
    if outcome == PutOutcome::ConditionFailed {
        return Err(Error::Conflict);
    }
    let size_bytes = image.len() as u64;
    drop(image);

    let resolution = clock.resolution_ms();
    let frozen = clock.advances_during_cpu() == Some(false);
    let cpu_spans = [
        ("load.wasm_init_ms", wasm_init_ms, initialized_here),
        ("load.parse_ms", parse_ms, true),
        ("query_ms", query_ms, true),
        ("save.serialize_ms", serialize_ms, true),
    ];
    let unmeasured = cpu_spans
        .iter()
        .filter(|(_, ms, ran)| *ran && (frozen || *ms < resolution))
        .map(|(name, _, _)| *name)
        .collect();

    Ok(Report {
        success: true,
        cold_start: initialized_here,
        delay_analysis: DelayAnalysis {
            load: PhaseDelay::new(load_total_ms, &ctx.thresholds),
            save: PhaseDelay::new(save_total_ms, &ctx.thresholds),
            thresholds: ctx.thresholds,
        },
        timing_breakdown: TimingBreakdown {
            load: LoadTiming {
                total_ms: round2(load_total_ms),
                wasm_init_ms: round2(wasm_init_ms),
                download_ms: round2(download_ms),
                parse_ms: round2(parse_ms),
            },
            query_ms: round2(query_ms),
            save: SaveTiming {
                total_ms: round2(save_total_ms),
                serialize_ms: round2(serialize_ms),
                upload_ms: round2(upload_ms),
            },
        },
        db_info: DbInfo {
            size_kb: round2(size_bytes as f64 / 1024.0),
            size_bytes,
            tables,
            db_version,
            loaded_db_version: previous_version.map(|v| v.to_string()),
            new_database,
            converted_from_wal,
        },
        clock: ClockInfo {
            source: clock.source(),
            resolution_ms: resolution,
            advances_during_cpu: clock.advances_during_cpu(),
            unmeasured,
        },
        memory: None,
    })
}
