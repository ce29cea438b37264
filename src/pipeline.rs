//! One request on the R2 route: load the user's database, run the work, save it back if it
//! should be, report. Each step is its own function with its own tests; [`serve`] strings
//! them together and re-runs the work when another writer got there first.
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
use crate::header;
use crate::report::{
    Backend, CacheInfo, CacheStatus, ClockInfo, CpuSpan, DbInfo, DelayAnalysis, LoadTiming, Report,
    SaveTiming, StorageInfo, StoredInfo, TimingBreakdown,
};
use crate::request::{SaveMode, UserId};
use crate::sqlite;
pub use crate::storage::RetryPolicy;
use crate::storage::cache::{self, DbCache};
use crate::storage::retry::conditional_put;
use crate::storage::{self, AtLoad, FollowUp, Layout, OutsideReplacement, Stored};
use crate::storage::{DB_VERSION_KEY, ObjectStore, PutCondition, PutOutcome, WRITE_ID_KEY};

/// What a request does with the open database. It may run more than once (when another
/// writer wins the race to save), each time on a fresh copy of the newest version.
pub trait Work {
    /// What the work produces besides the report.
    type Output;
    /// Runs on the database; any change it commits is saved.
    fn run(&mut self, conn: &mut Connection) -> Result<Self::Output, Error>;
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

/// The load step's result: an open database and what is known about its stored version.
#[derive(Debug)]
pub struct Loaded {
    /// The open database.
    pub conn: Connection,
    /// What R2 holds that this image equals (a new database, one object, or a manifest).
    pub stored: Stored,
    /// Etag of the `database.sqlite` the image was built from, when it was read.
    pub base_etag: Option<String>,
    /// That state's `db-version`.
    pub version: Option<u64>,
    /// The stored header said WAL mode (the image is now rollback mode).
    pub converted_from_wal: bool,
    /// The version cache's part.
    pub cache: CacheStatus,
    /// This request initialised SQLite in this isolate.
    pub initialized_here: bool,
    /// SQLite initialisation.
    pub wasm_init_ms: f64,
    /// The `get`, body included.
    pub download_ms: f64,
    /// Copy, check, deserialize, schema read; `None` when nothing was parsed (cache hit).
    pub parse_ms: Option<f64>,
    /// The whole step.
    pub total_ms: f64,
    /// Deltas fetched and applied (incremental layout).
    pub deltas_applied: u32,
    /// The image's page size, change counter and length at load: what a delta builds on.
    pub page_size: u32,
    /// See `page_size`.
    pub change_counter: u32,
    /// See `page_size`.
    pub len: u64,
    /// `database.sqlite` was found replaced from outside and adopted (see
    /// [`storage::OUTSIDE_RULE`]).
    pub outside: Option<OutsideReplacement>,
}

impl Loaded {
    /// Entity tag of the object the next write is conditional on (`None`: nothing stored).
    #[must_use]
    pub fn etag(&self) -> Option<&str> {
        match &self.stored {
            Stored::New => None,
            Stored::Single { etag, .. } | Stored::Incremental { etag, .. } => Some(etag),
        }
    }
}

/// Loads `user`'s database, whatever its layout: from the version cache when R2 confirms it
/// is current (fetching only the deltas it lacks), otherwise from R2, or a new empty database
/// when nothing is stored.
pub async fn load<S: ObjectStore, C: Clock>(
    ctx: &Context<'_, S, C>,
    user: &UserId,
) -> Result<Loaded, Error> {
    let clock = ctx.clock;
    let start = clock.now_ms();
    let initialized_here = sqlite::initialize()?;
    let wasm_init_ms = clock.now_ms() - start;

    // Taken, not borrowed: a concurrent request for the same user loads its own copy.
    let cached = ctx.cache.and_then(|c| c.take(&user.db_key()));
    let fetch_start = clock.now_ms();
    let mut built = storage::load::load(ctx, user, cached).await?;
    let fetch_ms = clock.now_ms() - fetch_start;
    let (page_size, change_counter, len) = {
        let image = sqlite::export(&mut built.conn)?;
        (
            header::page_size(&image).unwrap_or(0),
            header::change_counter(&image),
            image.len() as u64,
        )
    };
    // Writes may not grow the database past the limit; one stored larger keeps its size.
    sqlite::cap_size(&built.conn, ctx.max_write_bytes.max(len))?;
    // Network (requests, bodies) versus CPU (applying deltas, opening the image).
    let download_ms = (fetch_ms - built.parse_ms).max(0.0);
    let parse_ms = built.parsed.then_some(built.parse_ms);
    Ok(Loaded {
        conn: built.conn,
        stored: built.stored,
        base_etag: built.base_etag,
        version: built.version,
        converted_from_wal: built.converted_from_wal,
        cache: built.cache,
        initialized_here,
        wasm_init_ms,
        download_ms,
        parse_ms,
        total_ms: clock.now_ms() - start,
        deltas_applied: built.deltas_applied,
        page_size,
        change_counter,
        len,
        outside: built.outside,
    })
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
pub struct QueryFailed {
    /// What went wrong.
    pub error: Error,
    /// The database, after whatever the work did before failing.
    pub loaded: Loaded,
    /// Whether the work committed a change before failing (the libSQL protocol runs
    /// statements one by one, so a later failure does not undo an earlier commit).
    pub changed: bool,
}

/// Runs `work` on the loaded database and lists its tables. On failure the database comes
/// back with the error, so the caller can keep it cached if it is unchanged.
pub fn query<C: Clock, W: Work>(
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

/// Whether a save happened, and what it cost.
#[derive(Debug, Clone, PartialEq)]
pub enum Saved {
    /// The changes were committed.
    Written {
        /// The stored state the copy now equals (what R2 holds, unless writes committed
        /// while the save ran: then the state the copy was built on).
        stored: Stored,
        /// Its `db-version`.
        version: u64,
        /// Image size.
        size_bytes: u64,
        /// Bytes uploaded (the image, or a delta and the manifest).
        bytes_uploaded: u64,
        /// Objects written.
        objects_written: u32,
        /// What should run after the response.
        follow_up: FollowUp,
        /// Export, or encoding the delta.
        serialize_ms: f64,
        /// The puts, retries and waits included.
        upload_ms: f64,
        /// The whole step.
        total_ms: f64,
    },
    /// Nothing to write (mode `never`, or `auto` with no change).
    Skipped {
        /// Image size.
        size_bytes: u64,
    },
    /// Another writer changed the object since the load; nothing was written.
    Conflict,
}

/// Decides whether to write, and writes conditionally, in the user's layout:
/// - one object (`database.sqlite`, `If-Match` the loaded etag or create-only) for a new
///   user, or a single-layout user under `LAYOUT=single`;
/// - a delta and the manifest ([`storage::commit`]) for a user with a manifest, or any stored
///   user under `LAYOUT=incremental` (upgrading them on this first write).
///
/// 429s and 5xx are repeated with backoff; a put whose answer was lost is resolved by reading
/// the object's `write-id` back.
pub async fn save<S: ObjectStore, C: Clock, T>(
    ctx: &Context<'_, S, C>,
    user: &UserId,
    queried: &mut Queried<T>,
    mode: SaveMode,
) -> Result<Saved, Error> {
    let clock = ctx.clock;
    let perform = match mode {
        SaveMode::Always => true,
        SaveMode::Auto => queried.changed,
        SaveMode::Never => false,
    };
    let loaded = &mut queried.loaded;
    let size_bytes = sqlite::export(&mut loaded.conn)?.len() as u64;
    if !perform {
        return Ok(Saved::Skipped { size_bytes });
    }
    // The page cap set at load stops growth statement by statement; this holds whatever
    // changed the file (a VACUUM to a larger page size), before anything is uploaded.
    if size_bytes > ctx.max_write_bytes.max(loaded.len) {
        return Err(Error::DatabaseFull {
            statement: None,
            max_bytes: ctx.max_write_bytes,
        });
    }
    let start = clock.now_ms();
    // Strictly increasing even if the wall clock stands still or steps back.
    let version = clock
        .epoch_ms()
        .max(loaded.version.map_or(0, |v| v.saturating_add(1)));
    let write_id = format!("{:016x}-{version}", ctx.nonce);
    let incremental = match (&loaded.stored, ctx.layout) {
        (Stored::Incremental { .. }, _) | (Stored::Single { .. }, Layout::Incremental) => true,
        (Stored::New | Stored::Single { .. }, Layout::Single) | (Stored::New, _) => false,
    };
    // `always` writes the whole database to database.sqlite in every layout: a user stored
    // whole under `LAYOUT=single` is put whole; a manifest user's image is folded into a new
    // base, after upgrading a user stored whole under `LAYOUT=incremental` (the manifest's
    // create-only put is what notices a writer that upgraded them meanwhile).
    if mode == SaveMode::Always && incremental {
        return save_whole(ctx, user, queried, version, &write_id, start).await;
    }
    if incremental {
        let at_load = AtLoad {
            stored: &loaded.stored,
            page_size: loaded.page_size,
            change_counter: loaded.change_counter,
            len: loaded.len,
        };
        let committed =
            storage::commit::commit(ctx, user, &mut loaded.conn, &at_load, version, &write_id)
                .await?;
        let Some(c) = committed else {
            return Ok(Saved::Conflict);
        };
        let size_bytes = sqlite::export(&mut loaded.conn)?.len() as u64;
        let follow_up = match ctx.layout {
            Layout::Single => FollowUp::Retire,
            Layout::Incremental if c.compact_due => FollowUp::Compact,
            Layout::Incremental => FollowUp::None,
        };
        let total_ms = clock.now_ms() - start;
        return Ok(Saved::Written {
            stored: c.stored,
            version,
            size_bytes,
            bytes_uploaded: c.bytes_uploaded,
            objects_written: c.objects_written,
            follow_up,
            serialize_ms: c.encode_ms,
            upload_ms: (total_ms - c.encode_ms).max(0.0),
            total_ms,
        });
    }
    let image = sqlite::export(&mut loaded.conn)?;
    let serialize_ms = clock.now_ms() - start;
    let condition = match loaded.stored {
        Stored::Single { ref etag, .. } => PutCondition::IfMatch(etag.clone()),
        _ => PutCondition::IfAbsent,
    };
    let retired_manifest = match &loaded.stored {
        Stored::Single {
            retired_manifest, ..
        } => retired_manifest.clone(),
        _ => None,
    };
    let metadata = [
        (DB_VERSION_KEY, version.to_string()),
        (WRITE_ID_KEY, write_id.clone()),
    ];
    let upload_start = clock.now_ms();
    let outcome = conditional_put(
        ctx,
        &user.db_key(),
        &image,
        &metadata,
        &condition,
        &write_id,
    )
    .await?;
    let upload_ms = clock.now_ms() - upload_start;
    let size_bytes = image.len() as u64;
    Ok(match outcome {
        PutOutcome::Stored { etag } => Saved::Written {
            stored: Stored::Single {
                etag,
                retired_manifest,
            },
            version,
            size_bytes,
            bytes_uploaded: size_bytes,
            objects_written: 1,
            follow_up: FollowUp::None,
            serialize_ms,
            upload_ms,
            total_ms: clock.now_ms() - start,
        },
        PutOutcome::ConditionFailed => Saved::Conflict,
    })
}

/// `save=always` for a manifest user: any change the work made (or the upgrade of a user
/// stored whole) is committed as a delta first, then the image is folded into `database.sqlite` with `version` (a compaction,
/// conditional on the base and the manifest read; writes committed meanwhile stay listed
/// after it). The base changed since the load: [`Saved::Conflict`], nothing written.
async fn save_whole<S: ObjectStore, C: Clock, T>(
    ctx: &Context<'_, S, C>,
    user: &UserId,
    queried: &mut Queried<T>,
    version: u64,
    write_id: &str,
    start: f64,
) -> Result<Saved, Error> {
    let clock = ctx.clock;
    let loaded = &mut queried.loaded;
    let (mut bytes_uploaded, mut objects_written, mut serialize_ms) = (0, 0, 0.0);
    if queried.changed || matches!(loaded.stored, Stored::Single { .. }) {
        let at_load = AtLoad {
            stored: &loaded.stored,
            page_size: loaded.page_size,
            change_counter: loaded.change_counter,
            len: loaded.len,
        };
        let committed =
            storage::commit::commit(ctx, user, &mut loaded.conn, &at_load, version, write_id)
                .await?;
        let Some(c) = committed else {
            return Ok(Saved::Conflict);
        };
        (bytes_uploaded, objects_written, serialize_ms) =
            (c.bytes_uploaded, c.objects_written, c.encode_ms);
        loaded.stored = c.stored;
    }
    let Stored::Incremental { manifest, etag } = &loaded.stored else {
        return Err(Error::Internal {
            detail: "a whole save of a user without a manifest".into(),
        });
    };
    let plan = storage::compact::FoldPlan {
        manifest,
        manifest_etag: etag,
        base_etag: loaded
            .base_etag
            .clone()
            .unwrap_or_else(|| manifest.base.etag.clone()),
        version: Some(version),
        write_id: format!("{write_id}-whole"),
        retire: ctx.layout == Layout::Single,
        route: None,
    };
    let folded = storage::compact::fold(ctx, user, &mut loaded.conn, &plan).await?;
    let (stored, follow_up) = match folded.outcome {
        // A delta of ours committed above stays committed; only the base lost the race.
        storage::compact::Fold::BaseLost if objects_written == 0 => return Ok(Saved::Conflict),
        storage::compact::Fold::BaseLost | storage::compact::Fold::Superseded => {
            (None, follow_up_of(ctx))
        }
        storage::compact::Fold::Committed {
            manifest,
            etag,
            base_etag,
        } if manifest.seq == plan.manifest.seq => (
            Some(storage::compact::committed_stored(
                manifest,
                etag,
                base_etag,
                plan.retire,
            )),
            FollowUp::None,
        ),
        // Writes committed meanwhile stay listed after the new base: the copy lacks them, so
        // it stands for the state it was built on (a later load fetches only those deltas).
        storage::compact::Fold::Committed { .. } => (None, follow_up_of(ctx)),
    };
    let total_ms = clock.now_ms() - start;
    let serialize_ms = serialize_ms + folded.serialize_ms;
    Ok(Saved::Written {
        stored: stored.unwrap_or_else(|| loaded.stored.clone()),
        version,
        size_bytes: folded.size_bytes,
        bytes_uploaded: bytes_uploaded + folded.bytes_uploaded,
        objects_written: objects_written + folded.objects_written,
        follow_up,
        serialize_ms,
        upload_ms: (total_ms - serialize_ms).max(0.0),
        total_ms,
    })
}

fn follow_up_of<S, C>(ctx: &Context<'_, S, C>) -> FollowUp {
    match ctx.layout {
        Layout::Single => FollowUp::Retire,
        Layout::Incremental => FollowUp::Compact,
    }
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

/// Returns a loaded, unchanged database to the version cache.
pub fn keep_loaded<S, C>(ctx: &Context<'_, S, C>, user: &UserId, loaded: Loaded) {
    cache::keep(ctx.cache, user, loaded.conn, loaded.stored, loaded.version);
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
        let mut queried = match query(ctx.clock, loaded, work) {
            Ok(q) => q,
            Err(failed) => {
                let QueryFailed {
                    error,
                    loaded,
                    changed,
                } = *failed;
                // A request that failed without committing leaves a copy equal to the store.
                if !changed {
                    keep_loaded(ctx, user, loaded);
                }
                return Err(error);
            }
        };
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
        loaded,
        output,
        changed,
        ..
    } = queried;
    match saved {
        Saved::Written {
            stored, version, ..
        } => cache::keep(ctx.cache, user, loaded.conn, stored, Some(version)),
        // Unsaved changes must not outlive the request; an unchanged copy may.
        Saved::Skipped { .. } if !changed => keep_loaded(ctx, user, loaded),
        _ => {}
    }
    if let (Some(info), Some(cache)) = (report.cache.as_mut(), ctx.cache) {
        // After the copy went back: the cache as the next request finds it.
        (info.entries, info.bytes) = cache.usage();
    }
    (report, output)
}
