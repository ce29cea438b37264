//! One request's work: load the user's database, list its tables, save it back, report.
//!
//! Plain Rust over [`ObjectStore`] and [`Clock`], so host tests drive every step.

use rusqlite::Connection;

use crate::cache::{DbCache, Entry};
use crate::clock::Clock;
use crate::delay::Thresholds;
use crate::error::Error;
use crate::report::{
    CacheInfo, CacheStatus, ClockInfo, DbInfo, DelayAnalysis, LoadTiming, PhaseDelay, Report,
    SaveTiming, TimingBreakdown, round2,
};
use crate::request::{SaveMode, UserId};
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
    /// Databases kept open between requests, if enabled.
    pub cache: Option<&'a DbCache>,
}

/// The database a request works on, and what it knows about its stored version.
struct Working {
    conn: Connection,
    /// Entity tag of the stored object this image equals (`None`: no object exists).
    etag: Option<String>,
    loaded_version: Option<u64>,
    converted_from_wal: bool,
    cache: CacheStatus,
}

/// Loads, queries and (depending on `save`) saves `user`'s database, and reports each step.
///
/// Invariants: nothing is written unless the load succeeded; the write is conditional on the
/// object being unchanged since it was read (or still absent), so a concurrent writer's
/// change is never overwritten: the request fails with [`Error::Conflict`] instead. A cached
/// database is used only when R2 confirms its entity tag is still current.
pub async fn sync<S: ObjectStore, C: Clock>(
    ctx: &Context<'_, S, C>,
    user: &UserId,
    save: SaveMode,
) -> Result<Report, Error> {
    let clock = ctx.clock;
    let key = user.db_key();

    let load_start = clock.now_ms();
    let initialized_here = sqlite::initialize()?;
    let wasm_init_ms = clock.now_ms() - load_start;

    // Taken, not borrowed: a concurrent request for the same user loads its own copy.
    let cached = ctx.cache.and_then(|c| c.take(&key));
    let download_start = clock.now_ms();
    let fetched = ctx
        .store
        .get(
            &key,
            ctx.max_db_bytes,
            cached.as_ref().map(|e| e.etag.as_str()),
        )
        .await?;
    let download_ms = clock.now_ms() - download_start;

    let parse_start = clock.now_ms();
    let had_entry = cached.is_some();
    let miss = if had_entry {
        CacheStatus::Stale
    } else if ctx.cache.is_some() {
        CacheStatus::Miss
    } else {
        CacheStatus::Disabled
    };
    let working = match (fetched, cached) {
        (Fetched::NotModified, Some(entry)) => Working {
            conn: entry.conn,
            etag: Some(entry.etag),
            loaded_version: entry.db_version,
            converted_from_wal: false,
            cache: CacheStatus::Hit,
        },
        (Fetched::NotModified, None) => {
            return Err(Error::Storage(crate::store::StoreError {
                operation: "get",
                detail: "store answered 'not modified' to an unconditional get".into(),
            }));
        }
        (Fetched::TooLarge { size_bytes }, _) => {
            return Err(Error::TooLarge {
                size_bytes,
                max_bytes: ctx.max_db_bytes,
            });
        }
        (Fetched::Missing, _) => Working {
            conn: sqlite::create()?,
            etag: None,
            loaded_version: None,
            converted_from_wal: false,
            cache: miss,
        },
        (Fetched::Found(object), _) => {
            let loaded = sqlite::load(&object.body)?;
            // `object` (and the runtime's copy of the body) is dropped at the end of this
            // arm, before the save allocates, to keep peak memory near one image.
            Working {
                conn: loaded.conn,
                etag: Some(object.etag),
                loaded_version: object
                    .metadata
                    .get(DB_VERSION_KEY)
                    .and_then(|v| v.parse::<u64>().ok()),
                converted_from_wal: loaded.header.wal_mode,
                cache: miss,
            }
        }
    };
    let parse_ms = clock.now_ms() - parse_start;
    let load_total_ms = clock.now_ms() - load_start;
    let Working {
        mut conn,
        etag,
        loaded_version,
        converted_from_wal,
        cache: cache_status,
    } = working;
    let new_database = etag.is_none();
    let counter_at_load = change_counter(&mut conn)?;

    let query_start = clock.now_ms();
    let tables = sqlite::list_tables(&conn)?;
    let query_ms = clock.now_ms() - query_start;

    let changed = change_counter(&mut conn)? != counter_at_load;
    let perform_save = match save {
        SaveMode::Always => true,
        SaveMode::Auto => changed,
        SaveMode::Never => false,
    };

    let save_start = clock.now_ms();
    let mut serialize_ms = 0.0;
    let mut upload_ms = 0.0;
    let (stored_etag, stored_version, size_bytes) = if perform_save {
        let image = sqlite::export(&mut conn)?;
        serialize_ms = clock.now_ms() - save_start;
        // Strictly increasing even if the wall clock stands still or steps back.
        let version = clock
            .epoch_ms()
            .max(loaded_version.map_or(0, |v| v.saturating_add(1)));
        let condition = match &etag {
            Some(etag) => PutCondition::IfMatch(etag.clone()),
            None => PutCondition::IfAbsent,
        };
        let upload_start = clock.now_ms();
        let outcome = ctx
            .store
            .put(
                &key,
                &image,
                &[(DB_VERSION_KEY, version.to_string())],
                &condition,
            )
            .await?;
        upload_ms = clock.now_ms() - upload_start;
        let size = image.len() as u64;
        match outcome {
            PutOutcome::Stored { etag } => (Some(etag), Some(version), size),
            PutOutcome::ConditionFailed => return Err(Error::Conflict),
        }
    } else {
        let size = sqlite::export(&mut conn)?.len() as u64;
        (etag, loaded_version, size)
    };
    let save_total_ms = if perform_save {
        clock.now_ms() - save_start
    } else {
        0.0
    };

    if let (Some(cache), Some(etag)) = (ctx.cache, stored_etag) {
        cache.put(Entry {
            key,
            etag,
            db_version: stored_version,
            conn,
            size_bytes,
        });
    }

    let resolution = clock.resolution_ms();
    let frozen = clock.advances_during_cpu() == Some(false);
    let parsed = cache_status != CacheStatus::Hit;
    let cpu_spans = [
        ("load.wasm_init_ms", wasm_init_ms, initialized_here),
        ("load.parse_ms", parse_ms, parsed),
        ("query_ms", query_ms, true),
        ("save.serialize_ms", serialize_ms, perform_save),
    ];
    let unmeasured = cpu_spans
        .iter()
        .filter(|(_, ms, ran)| *ran && (frozen || *ms < resolution))
        .map(|(name, _, _)| *name)
        .collect();
    let (entries, bytes) = ctx.cache.map_or((0, 0), DbCache::usage);

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
            db_version: stored_version.map(|v| v.to_string()),
            loaded_db_version: loaded_version.map(|v| v.to_string()),
            new_database,
            converted_from_wal,
            save_mode: save,
            saved: perform_save,
        },
        cache: CacheInfo {
            status: cache_status,
            entries,
            bytes,
            max_bytes: ctx.cache.map_or(0, DbCache::max_bytes),
        },
        clock: ClockInfo {
            source: clock.source(),
            resolution_ms: resolution,
            advances_during_cpu: clock.advances_during_cpu(),
            unmeasured,
        },
        trend: None,
        memory: None,
    })
}

/// The header's file change counter (bytes 24..28), bumped by every committed write.
fn change_counter(conn: &mut Connection) -> Result<[u8; 4], Error> {
    let image = sqlite::export(conn)?;
    let mut counter = [0; 4];
    if let Some(bytes) = image.get(24..28) {
        counter.copy_from_slice(bytes);
    }
    Ok(counter)
}
