//! One request on the R2 route: load the user's database, run the work, save it back if it
//! should be, report. The pipeline only orchestrates: [`load`] and [`save`] are the storage
//! steps (`crate::storage`), each called once per run; [`serve`] strings the steps together
//! and re-runs the work when another writer got there first.
//!
//! Plain Rust over [`ObjectStore`] and [`Clock`], so host tests drive every step and every
//! failure.
//!
//! Invariants: nothing is written unless the load succeeded; every write is conditional on
//! the object being unchanged since it was read (or still absent), so another writer's change
//! is never overwritten; a cached database is used only when R2 confirms its entity tag; a
//! connection returns to the cache only when it equals the stored object.

use rusqlite::Connection;

use crate::alerts;
use crate::clock::Clock;
pub use crate::context::Context;
use crate::delay::PhaseDelay;
use crate::error::Error;
use crate::report::{
    Backend, CacheInfo, ClockInfo, CpuSpan, DbInfo, DelayAnalysis, LoadTiming, Report, SaveTiming,
    StorageInfo, StoredInfo, TimingBreakdown,
};
use crate::request::{SaveMode, UserId};
use crate::sqlite;
pub use crate::storage::RetryPolicy;
use crate::storage::cache::DbCache;
use crate::storage::loaded::keep_loaded;
use crate::storage::{self, FollowUp, ObjectStore, Stored};
pub use crate::storage::{Loaded, Saved, load};

/// What a request does with the open database. It may run more than once (when another
/// writer wins the race to save), each time on a fresh copy of the newest version.
pub trait Work {
    /// What the work produces besides the report.
    type Output;
    /// Runs on the database; any change it commits is saved.
    fn run(&mut self, conn: &mut Connection) -> Result<Self::Output, Error>;

    /// Whether the work is known before it runs to be a write (its statements say so), so
    /// that behind a commit in flight it queues at once instead of first running on a copy
    /// of its own that would be thrown away. `false`: unknown, or a read.
    fn writes(&self) -> bool {
        false
    }
}

/// The spec's query, run by every route for `db_info.tables`: nothing more to do.
#[derive(Debug, Clone, Copy, Default)]
pub struct ListTables;

impl Work for ListTables {
    type Output = ();
    fn run(&mut self, _conn: &mut Connection) -> Result<(), Error> {
        Ok(())
    }
}

/// The query step's result.
#[derive(Debug)]
pub struct Queried<T> {
    /// The loaded database, after the work.
    pub loaded: Loaded,
    /// What the work produced.
    pub output: T,
    /// The table list after the work.
    pub tables: Vec<String>,
    /// Whether the work committed a change.
    pub changed: bool,
    /// The work and the table list.
    pub query_ms: f64,
}

/// A query step that failed, with the database it ran on.
#[derive(Debug)]
struct QueryFailed {
    /// What went wrong.
    pub error: Error,
    /// The database, after whatever the work did before failing.
    pub loaded: Loaded,
    /// Whether the work committed a change before failing (the libSQL protocol runs
    /// statements one by one, so a later failure does not undo an earlier commit).
    pub changed: bool,
}

/// Runs `work` on the loaded database and lists its tables, with its results charged to the
/// request's memory reservation. A request that failed without committing leaves a copy equal
/// to the store, which goes back to the cache.
///
/// # Errors
/// The work's error.
pub fn query<S, C: Clock, W: Work>(
    ctx: &Context<'_, S, C>,
    user: &UserId,
    loaded: Loaded,
    work: &mut W,
) -> Result<Queried<W::Output>, Error> {
    let memory = ctx.memory.cloned();
    crate::admission::charging(memory.as_ref(), || run_work(ctx.clock, loaded, work)).map_err(
        |failed| {
            let QueryFailed {
                error,
                loaded,
                changed,
            } = *failed;
            if !changed {
                keep_loaded(ctx.cache, user, loaded);
            }
            error
        },
    )
}

/// Runs `work` and lists the tables; on failure the database comes back with the error.
fn run_work<C: Clock, W: Work>(
    clock: &C,
    mut loaded: Loaded,
    work: &mut W,
) -> Result<Queried<W::Output>, Box<QueryFailed>> {
    // Read at load, so a write is one whose commit moved it from there.
    let before = loaded.change_counter;
    let start = clock.now_ms();
    let result = work
        .run(&mut loaded.conn)
        .and_then(|output| Ok((output, sqlite::list_tables(&loaded.conn)?)));
    let query_ms = clock.now_ms() - start;
    // An unreadable counter counts as a change: the copy must then not be cached.
    let changed = !loaded.conn.is_autocommit()
        || sqlite::change_counter(&mut loaded.conn).map_or(true, |after| after != before);
    let (output, tables) = match result {
        Ok(r) => r,
        Err(error) => {
            return Err(Box::new(QueryFailed {
                error,
                loaded,
                changed,
            }));
        }
    };
    Ok(Queried {
        loaded,
        output,
        tables,
        changed,
        query_ms,
    })
}

/// Decides whether to write and writes conditionally, in the user's layout
/// ([`storage::save`]).
pub async fn save<S: ObjectStore, C: Clock, T>(
    ctx: &Context<'_, S, C>,
    user: &UserId,
    queried: &mut Queried<T>,
    mode: SaveMode,
) -> Result<Saved, Error> {
    storage::save(ctx, user, &mut queried.loaded, queried.changed, mode).await
}

/// Everything [`report`] needs from the steps.
#[derive(Debug)]
pub struct Steps<'q, T> {
    /// The query step (holding the load step).
    pub queried: &'q Queried<T>,
    /// The save step.
    pub saved: &'q Saved,
    /// The save mode in force.
    pub mode: SaveMode,
    /// How many times the request ran.
    pub attempts: u32,
}

/// Builds the R2 route's report from its steps.
pub fn report<S, C: Clock, T>(ctx: &Context<'_, S, C>, steps: &Steps<'_, T>) -> Report {
    let q = steps.queried;
    let l = &q.loaded;
    let t = &ctx.thresholds;
    let (save_delay, save_timing, size_bytes, db_version, saved, serialize) = match steps.saved {
        Saved::Written {
            version,
            size_bytes,
            serialize_ms,
            upload_ms,
            total_ms,
            ..
        } => (
            PhaseDelay::new(*total_ms, t),
            SaveTiming::new(*total_ms, *serialize_ms, *upload_ms),
            *size_bytes,
            Some(*version),
            true,
            *serialize_ms,
        ),
        Saved::Skipped { size_bytes } => (
            PhaseDelay::not_run(),
            SaveTiming::new(0.0, 0.0, 0.0),
            *size_bytes,
            l.version,
            false,
            0.0,
        ),
        Saved::Conflict => (
            PhaseDelay::not_run(),
            SaveTiming::new(0.0, 0.0, 0.0),
            0,
            l.version,
            false,
            0.0,
        ),
    };
    let spans = [
        CpuSpan {
            name: "load.wasm_init_ms",
            ms: l.wasm_init_ms,
            ran: l.initialized_here,
        },
        CpuSpan {
            name: "load.parse_ms",
            ms: l.parse_ms.unwrap_or(0.0),
            ran: l.parse_ms.is_some(),
        },
        CpuSpan {
            name: "query_ms",
            ms: q.query_ms,
            ran: true,
        },
        CpuSpan {
            name: "save.serialize_ms",
            ms: serialize,
            ran: saved,
        },
    ];
    let (entries, bytes) = ctx.cache.map_or((0, 0), DbCache::usage);
    let mut report = Report {
        success: true,
        route: Backend::R2,
        cold_start: l.initialized_here,
        delay_analysis: DelayAnalysis {
            load: PhaseDelay::new(l.total_ms, t),
            save: save_delay,
            thresholds: *t,
        },
        timing_breakdown: TimingBreakdown {
            load: LoadTiming::new(
                l.total_ms,
                l.wasm_init_ms,
                l.download_ms,
                l.parse_ms.unwrap_or(0.0),
            ),
            query_ms: crate::delay::round2(q.query_ms),
            save: save_timing,
        },
        not_applicable: vec![],
        db_info: DbInfo::new(
            size_bytes,
            q.tables.clone(),
            Some(StoredInfo {
                db_version: db_version.map(|v| v.to_string()),
                loaded_db_version: l.version.map(|v| v.to_string()),
                new_database: matches!(l.stored, Stored::New),
                converted_from_wal: l.converted_from_wal,
                save_mode: steps.mode,
                saved,
                attempts: steps.attempts,
            }),
        ),
        results: None,
        cache: Some(CacheInfo {
            status: l.cache,
            entries,
            bytes,
            max_bytes: ctx.cache.map_or(0, DbCache::max_bytes),
        }),
        clock: ClockInfo::new(ctx.clock, &spans),
        user_warning: None,
        trend: None,
        memory: None,
        storage: Some(storage_info(l, steps.saved)),
        write_queue: None,
    };
    report.user_warning = alerts::user_warning(&report);
    report
}

/// The report's `storage` part: layout, what the save uploaded, what the load applied.
fn storage_info(l: &Loaded, saved: &Saved) -> StorageInfo {
    let (stored, bytes_uploaded, objects_written, follow_up) = match saved {
        Saved::Written {
            stored,
            bytes_uploaded,
            objects_written,
            follow_up,
            ..
        } => (stored, *bytes_uploaded, *objects_written, *follow_up),
        _ => (&l.stored, 0, 0, FollowUp::None),
    };
    let (deltas, manifest_seq) = match stored {
        Stored::Incremental { manifest, .. } => (manifest.deltas.len(), Some(manifest.seq)),
        _ => (0, None),
    };
    StorageInfo {
        layout: stored.layout(),
        bytes_uploaded,
        objects_written,
        deltas_applied: l.deltas_applied,
        deltas_pending: deltas,
        manifest_seq,
        follow_up,
        outside_replacement: l.outside.clone(),
    }
}

/// Loads, runs `work`, saves as `mode` says and reports, re-running everything on the newest
/// version when another writer saved first, after a jittered wait, until `retry.deadline_ms`
/// (then [`Error::Conflict`], with nothing written).
pub async fn serve<S: ObjectStore, C: Clock, W: Work>(
    ctx: &Context<'_, S, C>,
    user: &UserId,
    mode: SaveMode,
    work: &mut W,
) -> Result<(Report, W::Output), Error> {
    let mut attempts = 0;
    let start = ctx.clock.now_ms();
    loop {
        attempts += 1;
        let loaded = load(ctx, user).await?;
        let mut queried = query(ctx, user, loaded, work)?;
        let saved = save(ctx, user, &mut queried, mode).await?;
        if saved == Saved::Conflict {
            let elapsed_ms = ctx.clock.now_ms() - start;
            if let Some(wait) = ctx.retry.rerun_wait_ms(attempts, elapsed_ms) {
                ctx.clock.sleep(wait).await;
                continue;
            }
            return Err(Error::Conflict { attempts });
        }
        return Ok(answer(ctx, user, queried, saved, mode, attempts));
    }
}

/// Reports a request whose save step is over, and returns its copy to the version cache when
/// it equals the stored object (saved, or unchanged and not saved).
pub fn answer<S, C: Clock, T>(
    ctx: &Context<'_, S, C>,
    user: &UserId,
    queried: Queried<T>,
    saved: Saved,
    mode: SaveMode,
    attempts: u32,
) -> (Report, T) {
    let mut report = report(
        ctx,
        &Steps {
            queried: &queried,
            saved: &saved,
            mode,
            attempts,
        },
    );
    let Queried {
        mut loaded,
        output,
        changed,
        ..
    } = queried;
    match saved {
        Saved::Written {
            stored, version, ..
        } => {
            (loaded.stored, loaded.version) = (stored, Some(version));
            keep_loaded(ctx.cache, user, loaded);
        }
        // Unsaved changes must not outlive the request; an unchanged copy may.
        Saved::Skipped { .. } if !changed => keep_loaded(ctx.cache, user, loaded),
        _ => {}
    }
    if let (Some(info), Some(cache)) = (report.cache.as_mut(), ctx.cache) {
        // After the copy went back: the cache as the next request finds it.
        (info.entries, info.bytes) = cache.usage();
    }
    (report, output)
}
