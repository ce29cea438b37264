//! How a user's database is laid out in R2, and the steps that read, commit, compact and sweep
//! it. Plain Rust over [`ObjectStore`] and [`Clock`]; `crate::pipeline` calls in here.
//!
//! Two layouts share one set of keys:
//! - **single** (the spec's): `<user>/database.sqlite` is the whole database; a write replaces
//!   it (`If-Match` the version read).
//! - **incremental**: `<user>/database.sqlite` is the *base* (a complete SQLite file, as of
//!   the last compaction); each committed write adds one immutable delta object
//!   `<user>/deltas/<seq>-<write id>.delta` ([`crate::delta`]: the pages it changed, with a
//!   checksum); `<user>/manifest.json` lists the base (by etag) and the deltas in order. The
//!   manifest's conditional put is the commit point: deltas are written first, under unique
//!   keys, and are garbage until a committed manifest lists them.
//!
//! A manifest marked `retired` means "database.sqlite alone is current" (the user went back
//! to the single layout); loaders then ignore it, and an upgrade replaces it `If-Match`.
//!
//! Compaction folds the deltas into a new base: it puts `database.sqlite` (`If-Match` the
//! base it read, with metadata naming the lineage and the sequence number it covers), then the
//! manifest with no deltas (`If-Match` the manifest it read). Between the two puts a loader
//! finds a base whose etag is not the manifest's but whose metadata says which of the
//! manifest's deltas it already contains, so it applies only the later ones; a crash there
//! loses nothing. A base that is neither the manifest's nor such a compaction was replaced
//! from outside: see [`OUTSIDE_RULE`].

use std::collections::HashMap;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::task::Poll;

use rusqlite::Connection;
use serde::Serialize;

use crate::cache::{self, Entry};
use crate::clock::Clock;
use crate::context::{Context, conditional_put, with_retries};
use crate::delta;
use crate::error::{Corruption, Error};
use crate::header;
pub use crate::manifest::{
    BaseRef, COVERS_KEY, CompactionPolicy, ConflictRef, DeltaRef, FollowUp, LINEAGE_KEY, Layout,
    Manifest, OUTSIDE_RULE, OutsideReplacement, PARALLEL_FETCHES, Retired, Stored,
};
use crate::report::CacheStatus;
use crate::request::UserId;
use crate::sqlite;
use crate::store::{
    Body, DB_VERSION_KEY, Fetched, ObjectStore, PutCondition, PutOutcome, ROUTE_KEY, StoreError,
    StoredObject, WRITE_ID_KEY,
};

/// Largest manifest read (about 40,000 deltas; compaction keeps it far smaller).
const MANIFEST_MAX_BYTES: u64 = 4 * 1024 * 1024;
/// Times a load starts over when the manifest moved on under it.
const LOAD_ATTEMPTS: u32 = 4;

/// What the load step built.
#[derive(Debug)]
pub struct Built {
    /// The open database.
    pub conn: Connection,
    /// What it equals in R2.
    pub stored: Stored,
    /// Etag of the `database.sqlite` the image builds on, as read or headed by the load
    /// (`None` for a new database).
    pub base_etag: Option<String>,
    /// `db-version` of what it equals.
    pub version: Option<u64>,
    /// The stored header said WAL mode.
    pub converted_from_wal: bool,
    /// The cache's part.
    pub cache: CacheStatus,
    /// Whether an image was parsed (not a cache hit).
    pub parsed: bool,
    /// Deltas fetched and applied.
    pub deltas_applied: u32,
    /// CPU time spent applying deltas and opening the image (the rest of the step is network).
    pub parse_ms: f64,
    /// Set when an outside replacement was found and adopted.
    pub outside: Option<OutsideReplacement>,
}

fn version_of(metadata: &HashMap<String, String>) -> Option<u64> {
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

/// The sequence number a base put by a compaction of `m`'s lineage says it covers, if it is one
/// that `m` can build on: at least `m`'s base (a compaction never covers less than the base it
/// replaced, so an older one cannot be current). Equal to `m`'s base is a second compaction of
/// the same state that landed after the one `m` lists (it lost a race, reloaded and folded
/// again): the same database, so a loader uses it as it would the listed base. Greater than
/// `m.seq`: `m` is stale.
fn compaction_covers(m: &Manifest, metadata: &HashMap<String, String>) -> Option<u64> {
    if metadata.get(LINEAGE_KEY) != Some(&m.lineage) {
        return None;
    }
    metadata
        .get(COVERS_KEY)
        .and_then(|v| v.parse().ok())
        .filter(|k| *k >= m.base.seq)
}

/// Runs futures together, at most [`PARALLEL_FETCHES`] at a time (a sliding window: the next
/// starts as soon as one finishes), and returns their outputs in order. A few lines instead
/// of a dependency: the Workers runtime is single-threaded, so plain polling is all it takes.
pub async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let n = futures.len();
    let mut slots: Vec<Option<Pin<Box<F>>>> =
        futures.into_iter().map(|f| Some(Box::pin(f))).collect();
    let mut out: Vec<Option<F::Output>> = (0..n).map(|_| None).collect();
    let (mut started, mut running) = (0, 0);
    poll_fn(|cx| {
        loop {
            while running < PARALLEL_FETCHES && started < n {
                started += 1;
                running += 1;
            }
            let mut progressed = false;
            for (slot, result) in slots[..started].iter_mut().zip(&mut out) {
                if let Some(f) = slot
                    && let Poll::Ready(v) = f.as_mut().poll(cx)
                {
                    *result = Some(v);
                    *slot = None;
                    running -= 1;
                    progressed = true;
                }
            }
            if started == n && running == 0 {
                return Poll::Ready(());
            }
            if !progressed {
                return Poll::Pending;
            }
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

/// Runs two futures together.
pub(crate) async fn join2<A: Future, B: Future>(a: A, b: B) -> (A::Output, B::Output) {
    let (mut a, mut b) = (Box::pin(a), Box::pin(b));
    let (mut ra, mut rb) = (None, None);
    poll_fn(|cx| {
        if ra.is_none()
            && let Poll::Ready(v) = a.as_mut().poll(cx)
        {
            ra = Some(v);
        }
        if rb.is_none()
            && let Poll::Ready(v) = b.as_mut().poll(cx)
        {
            rb = Some(v);
        }
        if ra.is_some() && rb.is_some() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    (ra.expect("joined"), rb.expect("joined"))
}

/// A manifest read from the store: itself, its etag and metadata.
type FetchedManifest = (Manifest, String, HashMap<String, String>);

async fn parse_manifest<B: Body>(object: StoredObject<B>) -> Result<FetchedManifest, Error> {
    let bytes = object
        .body
        .into_vec()
        .await
        .map_err(Error::StorageUnavailable)?;
    let manifest: Manifest = serde_json::from_slice(&bytes)
        .map_err(|e| Error::CorruptDatabase(Corruption::Contents(format!("manifest.json: {e}"))))?;
    if manifest.format != 1 {
        return Err(Error::CorruptDatabase(Corruption::Contents(format!(
            "manifest.json has format {}, this worker reads format 1",
            manifest.format
        ))));
    }
    Ok((manifest, object.etag, object.metadata))
}

/// The user's manifest, if there is one; one too large to be a manifest is damage.
async fn fetch_manifest<S: ObjectStore, C: Clock>(
    ctx: &Context<'_, S, C>,
    user: &UserId,
) -> Result<Option<FetchedManifest>, Error> {
    let key = user.manifest_key();
    match with_retries(ctx.clock, &ctx.retry, async || {
        ctx.store.get(&key, MANIFEST_MAX_BYTES, None).await
    })
    .await?
    {
        Fetched::Found(object) => Ok(Some(parse_manifest(object).await?)),
        Fetched::Missing | Fetched::NotModified { .. } => Ok(None),
        Fetched::TooLarge { size_bytes } => Err(too_large_manifest(size_bytes)),
    }
}

fn too_large_manifest(size_bytes: u64) -> Error {
    corrupt(format!("manifest.json is {size_bytes} bytes"))
}

fn corrupt(detail: String) -> Error {
    Error::CorruptDatabase(Corruption::Contents(detail))
}

/// Why a load step must start over.
enum Step<T> {
    Done(T),
    /// The manifest moved on (a delta it listed is gone, or it changed while adopting).
    Restart,
}

/// Fetches the deltas in `refs` (in parallel, verified against the manifest); `None` if one
/// is missing (compaction removed it after the manifest was read).
async fn fetch_deltas<S: ObjectStore, C: Clock>(
    ctx: &Context<'_, S, C>,
    refs: &[DeltaRef],
) -> Result<Result<Vec<Vec<u8>>, DeltaRef>, Error> {
    let fetches = refs
        .iter()
        .map(|r| async move {
            let got = with_retries(ctx.clock, &ctx.retry, async || {
                ctx.store.get(&r.key, r.size, None).await
            })
            .await?;
            match got {
                Fetched::Found(object) => {
                    let bytes = object
                        .body
                        .into_vec()
                        .await
                        .map_err(Error::StorageUnavailable)?;
                    let summary =
                        delta::verify(&bytes).map_err(|e| corrupt(format!("{}: {e}", r.key)))?;
                    if format!("{:016x}", summary.checksum) != r.checksum
                        || summary.change_counter != r.change_counter
                        || summary.len != r.len
                    {
                        return Err(corrupt(format!(
                            "{}: the delta is not the one the manifest lists",
                            r.key
                        )));
                    }
                    Ok(Ok(bytes))
                }
                Fetched::Missing => Ok(Err(r.clone())),
                Fetched::TooLarge { size_bytes } => Err(corrupt(format!(
                    "{}: {size_bytes} bytes, the manifest says {}",
                    r.key, r.size
                ))),
                Fetched::NotModified { .. } => Err(Error::Internal {
                    detail: "store answered 'not modified' to an unconditional get".into(),
                }),
            }
        })
        .collect();
    let mut out = Vec::with_capacity(refs.len());
    for result in join_all(fetches).await {
        match result? {
            Ok(bytes) => out.push(bytes),
            Err(missing) => return Ok(Err(missing)),
        }
    }
    Ok(Ok(out))
}

/// A delta the manifest lists was not found. If the manifest is still the one read, no
/// compaction explains it (a delta is deleted only after a committed manifest stopped listing
/// it): the stored database is damaged, and retrying cannot help. Otherwise, start over.
async fn missing_delta<S: ObjectStore, C: Clock>(
    ctx: &Context<'_, S, C>,
    user: &UserId,
    m_etag: &str,
    m: &Manifest,
    missing: &DeltaRef,
) -> Result<Step<Built>, Error> {
    let manifest_key = user.manifest_key();
    let head = with_retries(ctx.clock, &ctx.retry, async || {
        ctx.store.head(&manifest_key).await
    })
    .await?;
    if head.as_ref().map(|h| h.etag.as_str()) != Some(m_etag) {
        return Ok(Step::Restart);
    }
    let last = missing.seq.saturating_sub(1).max(m.base.seq);
    Err(corrupt(format!(
        "manifest.json (seq {}) lists {} (seq {}), which is missing; the last state that can be \
         built is seq {last} (the base and the deltas listed before it); nothing was changed",
        m.seq, missing.key, missing.seq
    )))
}

fn apply_all(image: &mut Vec<u8>, deltas: &[Vec<u8>], refs: &[DeltaRef]) -> Result<(), Error> {
    for (bytes, r) in deltas.iter().zip(refs) {
        delta::apply(image, bytes).map_err(|e| corrupt(format!("{}: {e}", r.key)))?;
    }
    Ok(())
}

/// Loads a user's database in whichever layout it is stored, from the version cache when R2
/// confirms it (fetching only the deltas it lacks), otherwise from R2.
pub(crate) async fn load<S: ObjectStore, C: Clock>(
    ctx: &Context<'_, S, C>,
    user: &UserId,
    mut cached: Option<Entry>,
) -> Result<Built, Error> {
    for _ in 0..LOAD_ATTEMPTS {
        match load_once(ctx, user, cached.take()).await? {
            Step::Done(built) => return Ok(built),
            Step::Restart => {}
        }
    }
    Err(Error::StorageUnavailable(StoreError::new(
        "get",
        crate::store::StoreErrorKind::Transient,
        "the manifest kept changing while loading",
    )))
}

async fn load_once<S: ObjectStore, C: Clock>(
    ctx: &Context<'_, S, C>,
    user: &UserId,
    cached: Option<Entry>,
) -> Result<Step<Built>, Error> {
    let manifest_key = user.manifest_key();
    let clock = ctx.clock;
    // A cached copy of a manifest user: ask for the manifest (conditionally) and, in
    // parallel, the base's etag: an outside replacement of database.sqlite is noticed at
    // once, not at the next cold load.
    if let Some(entry) = cached {
        let Stored::Incremental { manifest, etag } = &entry.stored else {
            return cold(ctx, user, None, Some(entry)).await;
        };
        let (m0, e0) = (manifest.clone(), etag.clone());
        let base_key = user.db_key();
        let (got, head) = join2(
            with_retries(clock, &ctx.retry, async || {
                ctx.store
                    .get(&manifest_key, MANIFEST_MAX_BYTES, Some(&e0))
                    .await
            }),
            with_retries(clock, &ctx.retry, async || ctx.store.head(&base_key).await),
        )
        .await;
        let (got, head) = (got?, head?);
        let (m, etag, metadata, changed) = match got {
            Fetched::NotModified { metadata } => (*m0.clone(), e0, metadata, false),
            Fetched::Found(object) => {
                let (m, etag, metadata) = parse_manifest(object).await?;
                (m, etag, metadata, true)
            }
            Fetched::Missing => return cold(ctx, user, Some(None), None).await,
            Fetched::TooLarge { size_bytes } => {
                return Err(too_large_manifest(size_bytes));
            }
        };
        if let Err(e) = check_route(&metadata)
            .and_then(|()| head.as_ref().map_or(Ok(()), |h| check_route(&h.metadata)))
        {
            if !changed {
                // The copy is still current; keep it, so the next check is as cheap.
                put_back(ctx, entry);
            }
            return Err(e);
        }
        // The listed base, or a compaction of this manifest (the copy does not depend on which).
        let base_as_listed = head.as_ref().is_some_and(|h| {
            h.etag == m.base.etag || compaction_covers(&m, &h.metadata).is_some_and(|k| k <= m.seq)
        });
        if m.retired || !base_as_listed {
            // Retired, or the base is not the one listed (a compaction between its two puts,
            // or an outside writer): the cold path sorts out which.
            return cold(ctx, user, Some(Some((m, etag, metadata))), None).await;
        }
        // What a compaction of this copy must be conditional on.
        let base_etag = head.map(|h| h.etag);
        if !changed {
            return Ok(Step::Done(Built {
                conn: entry.conn,
                stored: entry.stored,
                base_etag,
                version: entry.db_version,
                converted_from_wal: false,
                cache: CacheStatus::Hit,
                parsed: false,
                deltas_applied: 0,
                parse_ms: 0.0,
                outside: None,
            }));
        }
        let tail = (m.lineage == m0.lineage)
            .then(|| m.deltas_after(m0.seq))
            .flatten();
        let Some(tail) = tail else {
            return cold(ctx, user, Some(Some((m, etag, metadata))), None).await;
        };
        let deltas = match fetch_deltas(ctx, tail).await? {
            Ok(deltas) => deltas,
            Err(missing) => return missing_delta(ctx, user, &etag, &m, &missing).await,
        };
        let apply_start = clock.now_ms();
        let mut conn = entry.conn;
        sqlite::patch(&mut conn, |image| apply_all(image, &deltas, tail)).ok_or_else(|| {
            Error::Internal {
                detail: "cached database is not in the page VFS".into(),
            }
        })??;
        let parse_ms = clock.now_ms() - apply_start;
        let applied = u32::try_from(tail.len()).unwrap_or(u32::MAX);
        return Ok(Step::Done(Built {
            conn,
            stored: Stored::Incremental {
                manifest: Box::new(m),
                etag,
            },
            base_etag,
            version: version_of(&metadata),
            converted_from_wal: false,
            cache: CacheStatus::Updated,
            parsed: false,
            deltas_applied: applied,
            parse_ms,
            outside: None,
        }));
    }
    cold(ctx, user, None, None).await
}

fn put_back<S, C>(ctx: &Context<'_, S, C>, entry: Entry) {
    if let Some(cache) = ctx.cache {
        cache.put(entry);
    }
}

/// `database.sqlite` as a cold load read it: the body is already in an image.
enum BaseRead {
    Image {
        image: sqlite::Image,
        etag: String,
        metadata: HashMap<String, String>,
    },
    NotModified {
        metadata: HashMap<String, String>,
    },
    Missing,
    TooLarge(u64),
}

/// Gets `database.sqlite` and streams its body into a new image. The route is checked before
/// the body is read: a moved user's body is never downloaded.
async fn read_base<S: ObjectStore, C: Clock>(
    ctx: &Context<'_, S, C>,
    key: &str,
    if_none_match: Option<&str>,
) -> Result<BaseRead, Error> {
    let fetched = with_retries(ctx.clock, &ctx.retry, async || {
        ctx.store.get(key, ctx.max_db_bytes, if_none_match).await
    })
    .await?;
    Ok(match fetched {
        Fetched::Found(object) => {
            check_route(&object.metadata)?;
            // One copy, straight into the image buffer; none in JS.
            let mut image = sqlite::Image::allocate(object.body.len())?;
            object
                .body
                .read_into(image.bytes_mut())
                .await
                .map_err(Error::StorageUnavailable)?;
            BaseRead::Image {
                image,
                etag: object.etag,
                metadata: object.metadata,
            }
        }
        Fetched::NotModified { metadata } => BaseRead::NotModified { metadata },
        Fetched::Missing => BaseRead::Missing,
        Fetched::TooLarge { size_bytes } => BaseRead::TooLarge(size_bytes),
    })
}

/// The manifest (unless already `known`) and, for a live one, every delta it lists, fetched
/// while the base is still downloading. `Err` for the deltas: the first one that was missing
/// (compaction removed it after the manifest was read, or the store lost it).
async fn manifest_and_deltas<S: ObjectStore, C: Clock>(
    ctx: &Context<'_, S, C>,
    user: &UserId,
    known: Option<Option<FetchedManifest>>,
) -> Result<(Option<FetchedManifest>, Result<Vec<Vec<u8>>, DeltaRef>), Error> {
    let manifest = match known {
        Some(m) => m,
        None => fetch_manifest(ctx, user).await?,
    };
    let deltas = match &manifest {
        Some((m, _, metadata)) if !m.retired => {
            check_route(metadata)?;
            fetch_deltas(ctx, &m.deltas).await?
        }
        _ => Ok(vec![]),
    };
    Ok((manifest, deltas))
}

/// A load that reads `database.sqlite` and the manifest (unless `known` already holds it) in
/// parallel, and the manifest's deltas while the base downloads. `cached_single` is a cached
/// copy of a single-layout user, revalidated by its etag.
async fn cold<S: ObjectStore, C: Clock>(
    ctx: &Context<'_, S, C>,
    user: &UserId,
    known: Option<Option<FetchedManifest>>,
    cached_single: Option<Entry>,
) -> Result<Step<Built>, Error> {
    let clock = ctx.clock;
    let base_key = user.db_key();
    let base_etag = match cached_single.as_ref().map(|e| &e.stored) {
        Some(Stored::Single { etag, .. }) => Some(etag.clone()),
        _ => None,
    };
    let (listed, base) = join2(
        manifest_and_deltas(ctx, user, known),
        read_base(ctx, &base_key, base_etag.as_deref()),
    )
    .await;
    let (manifest, prefetched) = listed?;
    let miss = match (&cached_single, ctx.cache) {
        (Some(_), _) => CacheStatus::Stale,
        (None, Some(_)) => CacheStatus::Miss,
        (None, None) => CacheStatus::Disabled,
    };
    let (live, retired_manifest) = match manifest {
        Some((m, etag, metadata)) if !m.retired => (Some((m, etag, metadata)), None),
        Some((m, etag, _)) => (
            None,
            Some(Retired {
                etag,
                conflicts: m.conflicts,
            }),
        ),
        None => (None, None),
    };
    // The single layout (or a retired manifest): database.sqlite is the database.
    let Some((m, m_etag, m_metadata)) = live else {
        return single(ctx, base?, cached_single, retired_manifest, miss);
    };
    let (mut image, base_etag, base_metadata) = match base? {
        BaseRead::Image {
            image,
            etag,
            metadata,
        } => (image, etag, metadata),
        BaseRead::TooLarge(size_bytes) => {
            return Err(Error::DatabaseTooLarge {
                size_bytes,
                max_bytes: ctx.max_db_bytes,
            });
        }
        BaseRead::Missing | BaseRead::NotModified { .. } => {
            return Err(corrupt(format!(
                "{base_key} is missing but manifest.json lists it as the base; nothing was changed (restore the base, or delete manifest.json to start over from nothing)"
            )));
        }
    };
    let covered = if base_etag == m.base.etag {
        Some(m.base.seq)
    } else {
        match compaction_covers(&m, &base_metadata) {
            // A newer compaction than this manifest knows: the manifest is stale.
            Some(k) if k > m.seq => return Ok(Step::Restart),
            Some(k) if m.change_counter_at(k) == Some(header::change_counter(image.bytes())) => {
                Some(k)
            }
            _ => None,
        }
    };
    let Some(covered) = covered else {
        return adopt_outside(ctx, user, image, base_etag, base_metadata, m, m_etag, miss).await;
    };
    let prefetched = match prefetched {
        Ok(prefetched) => prefetched,
        Err(missing) => return missing_delta(ctx, user, &m_etag, &m, &missing).await,
    };
    let tail = m
        .deltas_after(covered)
        .ok_or_else(|| corrupt("manifest.json skips sequence numbers".into()))?;
    // The prefetch holds every listed delta; those the base already contains are skipped.
    let skip = prefetched.len() - tail.len();
    let parse_start = clock.now_ms();
    apply_all(image.vec_mut(), &prefetched[skip..], tail)?;
    let applied = u32::try_from(tail.len()).unwrap_or(u32::MAX);
    let loaded = sqlite::open(image)?;
    let parse_ms = clock.now_ms() - parse_start;
    Ok(Step::Done(Built {
        conn: loaded.conn,
        stored: Stored::Incremental {
            manifest: Box::new(m),
            etag: m_etag,
        },
        base_etag: Some(base_etag),
        version: version_of(&m_metadata),
        converted_from_wal: loaded.header.wal_mode,
        cache: miss,
        parsed: true,
        deltas_applied: applied,
        parse_ms,
        outside: None,
    }))
}

fn single<S, C: Clock>(
    ctx: &Context<'_, S, C>,
    base: BaseRead,
    cached: Option<Entry>,
    retired_manifest: Option<Retired>,
    miss: CacheStatus,
) -> Result<Step<Built>, Error> {
    let built = |conn, etag: Option<String>, version, wal, cache, parsed, parse_ms| Built {
        conn,
        stored: match &etag {
            Some(etag) => Stored::Single {
                etag: etag.clone(),
                retired_manifest: retired_manifest.clone(),
            },
            None => Stored::New,
        },
        base_etag: etag,
        version,
        converted_from_wal: wal,
        cache,
        parsed,
        deltas_applied: 0,
        parse_ms,
        outside: None,
    };
    match (base, cached) {
        (BaseRead::NotModified { metadata }, Some(entry)) => {
            if let Err(e) = check_route(&metadata) {
                // The copy is still current; keep it, so the next check is as cheap.
                put_back(ctx, entry);
                return Err(e);
            }
            let etag = match &entry.stored {
                Stored::Single { etag, .. } => Some(etag.clone()),
                _ => None,
            };
            Ok(Step::Done(built(
                entry.conn,
                etag,
                entry.db_version,
                false,
                CacheStatus::Hit,
                false,
                0.0,
            )))
        }
        (BaseRead::NotModified { .. }, None) => Err(Error::Internal {
            detail: "store answered 'not modified' to an unconditional get".into(),
        }),
        (BaseRead::TooLarge(size_bytes), _) => Err(Error::DatabaseTooLarge {
            size_bytes,
            max_bytes: ctx.max_db_bytes,
        }),
        (BaseRead::Missing, _) => {
            let parse_start = ctx.clock.now_ms();
            let conn = sqlite::create()?;
            let parse_ms = ctx.clock.now_ms() - parse_start;
            Ok(Step::Done(built(
                conn, None, None, false, miss, true, parse_ms,
            )))
        }
        (
            BaseRead::Image {
                image,
                etag,
                metadata,
            },
            _,
        ) => {
            let version = version_of(&metadata);
            let parse_start = ctx.clock.now_ms();
            let loaded = sqlite::open(image)?;
            let parse_ms = ctx.clock.now_ms() - parse_start;
            Ok(Step::Done(built(
                loaded.conn,
                Some(etag),
                version,
                loaded.header.wal_mode,
                miss,
                true,
                parse_ms,
            )))
        }
    }
}

/// `database.sqlite` is neither the manifest's base nor a compaction of it: something outside
/// the worker replaced it. Applies [`OUTSIDE_RULE`] and commits that (conditionally: if the
/// manifest changed meanwhile, the load starts over and nothing was decided).
#[allow(clippy::too_many_arguments)]
async fn adopt_outside<S: ObjectStore, C: Clock>(
    ctx: &Context<'_, S, C>,
    user: &UserId,
    image: sqlite::Image,
    found_etag: String,
    found_metadata: HashMap<String, String>,
    m: Manifest,
    m_etag: String,
    miss: CacheStatus,
) -> Result<Step<Built>, Error> {
    let manifest_key = user.manifest_key();
    let base_key = user.db_key();
    // Both reads must still be current: a stale manifest explains a newer base, and a stale
    // base (read before a compaction replaced it, while the manifest was read after) explains
    // a manifest that lists a newer one. Either decides nothing: the load starts over.
    let (m_head, base_head) = join2(
        with_retries(ctx.clock, &ctx.retry, async || {
            ctx.store.head(&manifest_key).await
        }),
        with_retries(ctx.clock, &ctx.retry, async || {
            ctx.store.head(&base_key).await
        }),
    )
    .await;
    if m_head?.as_ref().map(|h| h.etag.as_str()) != Some(m_etag.as_str())
        || base_head?.as_ref().map(|h| h.etag.as_str()) != Some(found_etag.as_str())
    {
        return Ok(Step::Restart);
    }
    let found = (
        header::change_counter(image.bytes()),
        image.bytes().len() as u64,
    );
    let loaded = sqlite::open(image)?;
    let write_id = format!("{:016x}-adopt-{}", ctx.nonce, m.seq + 1);
    let kept: Vec<String> = m.deltas.iter().map(|d| d.key.clone()).collect();
    let record = if kept.is_empty() {
        None
    } else {
        let key = user.conflict_key(m.seq, &write_id);
        let body = serde_json::json!({
            "detected_at_ms": ctx.clock.epoch_ms(),
            "rule": OUTSIDE_RULE,
            "expected_base": m.base.etag,
            "found_base": found_etag,
            "found_base_db_version": found_metadata.get(DB_VERSION_KEY),
            "replaced_manifest": m,
            "note": "the deltas listed in replaced_manifest apply, in order, to the base it names (expected_base), which the outside writer overwrote; each delta holds the full pages one write changed",
        });
        let bytes = serde_json::to_vec_pretty(&body).map_err(|e| Error::Internal {
            detail: e.to_string(),
        })?;
        with_retries(ctx.clock, &ctx.retry, async || {
            ctx.store
                .put(&key, &bytes, &[], &PutCondition::IfAbsent)
                .await
        })
        .await?;
        Some(key)
    };
    let mut next = Manifest::new(
        m.lineage.clone(),
        BaseRef {
            etag: found_etag.clone(),
            seq: m.seq + 1,
            change_counter: found.0,
            size: found.1,
        },
    );
    next.conflicts = m.conflicts.clone();
    if let Some(record) = &record {
        next.conflicts.push(ConflictRef {
            record: record.clone(),
            deltas: kept.clone(),
        });
    }
    let version = version_of(&found_metadata);
    let bytes = manifest_bytes(&next)?;
    let metadata = manifest_metadata(&write_id, version);
    let outcome = with_retries(ctx.clock, &ctx.retry, async || {
        ctx.store
            .put(
                &manifest_key,
                &bytes,
                &metadata,
                &PutCondition::IfMatch(m_etag.clone()),
            )
            .await
    })
    .await?;
    let PutOutcome::Stored { etag } = outcome else {
        if let Some(record) = &record {
            let _ = ctx.store.delete(record).await;
        }
        return Ok(Step::Restart);
    };
    let outside = OutsideReplacement {
        rule: OUTSIDE_RULE,
        expected_base: m.base.etag.clone(),
        found_base: found_etag.clone(),
        record,
        deltas_kept: kept.len(),
    };
    Ok(Step::Done(Built {
        conn: loaded.conn,
        stored: Stored::Incremental {
            manifest: Box::new(next),
            etag,
        },
        base_etag: Some(found_etag),
        version,
        converted_from_wal: loaded.header.wal_mode,
        cache: miss,
        parsed: true,
        deltas_applied: 0,
        parse_ms: 0.0,
        outside: Some(outside),
    }))
}

fn manifest_bytes(m: &Manifest) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(m).map_err(|e| Error::Internal {
        detail: e.to_string(),
    })
}

fn manifest_metadata(write_id: &str, version: Option<u64>) -> Vec<(&'static str, String)> {
    let mut m = vec![(WRITE_ID_KEY, write_id.to_owned())];
    if let Some(v) = version {
        m.push((DB_VERSION_KEY, v.to_string()));
    }
    m
}

/// The state at load that a commit builds on.
#[derive(Debug, Clone)]
pub struct AtLoad<'a> {
    /// What R2 held.
    pub stored: &'a Stored,
    /// The image's page size then.
    pub page_size: u32,
    /// Its header's change counter then.
    pub change_counter: u32,
    /// Its length then.
    pub len: u64,
}

/// What an incremental commit stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Committed {
    /// The new state in R2.
    pub stored: Stored,
    /// Bytes uploaded: the delta and the manifest.
    pub bytes_uploaded: u64,
    /// Objects written: 2.
    pub objects_written: u32,
    /// Pages in the delta.
    pub pages: u32,
    /// Finding the changed pages and encoding the delta.
    pub encode_ms: f64,
    /// The manifest passed the compaction thresholds.
    pub compact_due: bool,
}

/// Commits the changes since the load as one delta and a manifest (`If-Match` the manifest
/// read, or creating it for a user stored whole). `Ok(None)`: another writer committed first;
/// nothing of ours is referenced, and our delta was deleted (or is left for the sweep).
pub(crate) async fn commit<S: ObjectStore, C: Clock>(
    ctx: &Context<'_, S, C>,
    user: &UserId,
    conn: &mut Connection,
    at_load: &AtLoad<'_>,
    version: u64,
    write_id: &str,
) -> Result<Option<Committed>, Error> {
    let (manifest, condition) = match at_load.stored {
        Stored::Incremental { manifest, etag } => {
            ((**manifest).clone(), PutCondition::IfMatch(etag.clone()))
        }
        Stored::Single {
            etag,
            retired_manifest,
        } => {
            let lineage = format!("{:016x}{:x}", ctx.nonce, ctx.clock.epoch_ms());
            let base = BaseRef {
                etag: etag.clone(),
                seq: 0,
                change_counter: at_load.change_counter,
                size: at_load.len,
            };
            let mut manifest = Manifest::new(lineage, base);
            let condition = match retired_manifest {
                Some(retired) => {
                    // Conflict copies outlive the retirement: the new manifest keeps them.
                    manifest.conflicts.clone_from(&retired.conflicts);
                    PutCondition::IfMatch(retired.etag.clone())
                }
                None => PutCondition::IfAbsent,
            };
            (manifest, condition)
        }
        Stored::New => {
            return Err(Error::Internal {
                detail: "a new database is stored whole, not as a delta".into(),
            });
        }
    };
    let encode_start = ctx.clock.now_ms();
    let changes = sqlite::changes(conn);
    let (bytes, summary) = {
        let image = sqlite::export(conn)?;
        let page_size = header::page_size(&image).ok_or_else(|| Error::Internal {
            detail: "the image has no valid page size".into(),
        })?;
        let pages: Vec<u32> = match changes {
            Some(c) if c.page_size == at_load.page_size => c.pages,
            // Unrecorded, or the page size changed (VACUUM): every page.
            _ => (0..u32::try_from(image.len() / page_size as usize).unwrap_or(u32::MAX)).collect(),
        };
        delta::encode(&image, page_size, &pages)
    };
    let encode_ms = ctx.clock.now_ms() - encode_start;
    let seq = manifest.seq + 1;
    let key = user.delta_key(seq, write_id);
    let delta_metadata = [(WRITE_ID_KEY, write_id.to_owned())];
    // Unique key: a failed condition can only mean an earlier attempt of ours landed.
    with_retries(ctx.clock, &ctx.retry, async || {
        ctx.store
            .put(&key, &bytes, &delta_metadata, &PutCondition::IfAbsent)
            .await
    })
    .await?;
    let mut next = manifest;
    next.seq = seq;
    next.deltas.push(DeltaRef {
        key: key.clone(),
        seq,
        size: bytes.len() as u64,
        checksum: format!("{:016x}", summary.checksum),
        change_counter: summary.change_counter,
        len: summary.len,
    });
    let manifest_bytes = manifest_bytes(&next)?;
    let outcome = conditional_put(
        ctx,
        &user.manifest_key(),
        &manifest_bytes,
        &manifest_metadata(write_id, Some(version)),
        &condition,
        write_id,
    )
    .await?;
    match outcome {
        PutOutcome::Stored { etag } => Ok(Some(Committed {
            compact_due: ctx.compaction.due(&next),
            stored: Stored::Incremental {
                manifest: Box::new(next),
                etag,
            },
            bytes_uploaded: (bytes.len() + manifest_bytes.len()) as u64,
            objects_written: 2,
            pages: summary.pages,
            encode_ms,
        })),
        PutOutcome::ConditionFailed => {
            // Unreferenced for certain; if this delete fails the sweep removes it later.
            let _ = ctx.store.delete(&key).await;
            Ok(None)
        }
    }
}

/// How a compaction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CompactOutcome {
    /// The deltas were folded into a new base.
    Compacted,
    /// Folded, and the manifest retired: the user is back in the single layout.
    Retired,
    /// No deltas to fold (or no manifest).
    NothingToDo,
    /// Another compaction or an outside writer kept changing the base first.
    LostRace,
}

/// What a compaction did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Compacted {
    /// How it ended.
    pub outcome: CompactOutcome,
    /// Deltas folded into the new base.
    pub deltas_folded: usize,
    /// Folded deltas deleted (the rest are left to the sweep).
    pub deltas_deleted: usize,
    /// The new base's size.
    pub base_bytes: u64,
    /// The whole compaction, load included.
    pub ms: f64,
}

/// The new base a compaction left, for a move that froze it.
#[derive(Debug)]
pub struct FrozenBase {
    /// The image.
    pub image: Vec<u8>,
    /// `database.sqlite`'s etag now.
    pub etag: String,
    /// Its `db-version`.
    pub version: Option<u64>,
    /// The write id its put carried.
    pub write_id: String,
}

/// Folds the deltas into a new base (`database.sqlite`, `If-Match` the base read), then
/// commits a manifest without them (`If-Match` the manifest read; writes committed meanwhile
/// are kept in it), then deletes the folded deltas; the sweep is a step of its own
/// ([`sweep`]). With `retire`, the manifest
/// is retired instead (the user returns to the single layout).
///
/// Safe to run at any time and to stop at any step: until the manifest put, loaders still
/// find every delta they need (the new base says which deltas it covers); after it, the
/// folded deltas are referenced by nothing.
pub async fn compact<S: ObjectStore, C: Clock>(
    ctx: &Context<'_, S, C>,
    user: &UserId,
    retire: bool,
) -> Result<Compacted, Error> {
    let (compacted, _) = compact_inner(ctx, user, retire, None).await?;
    Ok(compacted)
}

/// Folds an incremental user's pending deltas into `database.sqlite` (a compaction), so that
/// a reader of that one object (the Durable Object's import) sees the current database.
/// Costs one small get when there is nothing to fold.
pub async fn fold_pending<S: ObjectStore, C: Clock>(
    ctx: &Context<'_, S, C>,
    user: &UserId,
) -> Result<Option<Compacted>, Error> {
    let pending = fetch_manifest(ctx, user)
        .await?
        .is_some_and(|(m, _, _)| !m.retired && !m.deltas.is_empty());
    if !pending {
        return Ok(None);
    }
    let done = compact(ctx, user, false).await?;
    if done.outcome == CompactOutcome::LostRace {
        return Err(Error::Conflict { attempts: 1 });
    }
    Ok(Some(done))
}

/// For a move: folds and retires the manifest with `route=moving` on the new base and the
/// manifest, so the move can copy one complete, frozen `database.sqlite`. `None` when the
/// user has no live manifest (the move freezes the single object itself).
pub(crate) async fn freeze_for_move<S: ObjectStore, C: Clock>(
    ctx: &Context<'_, S, C>,
    user: &UserId,
) -> Result<Option<FrozenBase>, Error> {
    let (compacted, frozen) = compact_inner(ctx, user, true, Some("moving")).await?;
    match compacted.outcome {
        CompactOutcome::LostRace => Err(Error::Conflict { attempts: 1 }),
        _ => Ok(frozen),
    }
}

/// Returns a loaded copy to the version cache.
fn keep<S, C>(ctx: &Context<'_, S, C>, user: &UserId, built: Built) {
    cache::keep(ctx.cache, user, built.conn, built.stored, built.version);
}

/// Times the manifest put is re-tried over writes that commit during a compaction.
const ADOPT_ATTEMPTS: u32 = 8;

async fn compact_inner<S: ObjectStore, C: Clock>(
    ctx: &Context<'_, S, C>,
    user: &UserId,
    retire: bool,
    route: Option<&str>,
) -> Result<(Compacted, Option<FrozenBase>), Error> {
    let clock = ctx.clock;
    let start = clock.now_ms();
    let uncached = Context {
        cache: None,
        ..*ctx
    };
    for attempt in 0..LOAD_ATTEMPTS {
        // First from the cache; after a lost race, from R2.
        let lctx = if attempt == 0 { ctx } else { &uncached };
        let cached = lctx.cache.and_then(|c| c.take(&user.db_key()));
        let mut loaded = load(lctx, user, cached).await?;
        let Stored::Incremental { manifest, etag } = &loaded.stored else {
            keep(ctx, user, loaded);
            return Ok((nothing(clock, start), None));
        };
        if manifest.deltas.is_empty() && !retire {
            keep(ctx, user, loaded);
            return Ok((nothing(clock, start), None));
        }
        let (m, m_etag) = ((**manifest).clone(), etag.clone());
        let plan = FoldPlan {
            manifest: &m,
            manifest_etag: &m_etag,
            base_etag: loaded
                .base_etag
                .clone()
                .unwrap_or_else(|| m.base.etag.clone()),
            version: loaded.version,
            write_id: format!("{:016x}-compact-{}", ctx.nonce, m.seq),
            retire,
            route,
        };
        // The upload streams straight out of the loaded image: no second copy in memory. A
        // request for this user arriving meanwhile loads its own copy from R2.
        let folded = match fold(ctx, user, &mut loaded.conn, &plan).await {
            Ok(f) => f,
            Err(e) => {
                keep(ctx, user, loaded);
                return Err(e);
            }
        };
        let Fold::Committed {
            manifest: next,
            etag: next_etag,
            base_etag: new_base,
        } = folded.outcome
        else {
            // Another compaction or an outside writer changed the base first, or (retiring) a
            // write committed: fold again from what is stored now.
            keep(ctx, user, loaded);
            continue;
        };
        let frozen = match route {
            Some(_) => Some(FrozenBase {
                image: sqlite::export(&mut loaded.conn)?.to_vec(),
                etag: new_base.clone(),
                version: plan.version,
                write_id: plan.write_id.clone(),
            }),
            None => None,
        };
        // The copy equals the new state when no write was kept in the manifest.
        if next.seq == m.seq {
            loaded.stored = committed_stored(next.clone(), next_etag, new_base, retire);
        }
        if frozen.is_none() {
            keep(ctx, user, loaded);
        }
        let mut deleted = 0;
        for d in &m.deltas {
            if !next.references(&d.key) && ctx.store.delete(&d.key).await.is_ok() {
                deleted += 1;
            }
        }
        let mut compacted = Compacted {
            outcome: if retire {
                CompactOutcome::Retired
            } else {
                CompactOutcome::Compacted
            },
            deltas_folded: m.deltas.len(),
            deltas_deleted: deleted,
            base_bytes: next.base.size,
            ms: 0.0,
        };
        compacted.ms = clock.now_ms() - start;
        return Ok((compacted, frozen));
    }
    let mut lost = nothing(clock, start);
    lost.outcome = CompactOutcome::LostRace;
    Ok((lost, None))
}

/// What R2 holds after a fold committed `next` over the base `base_etag`.
pub(crate) fn committed_stored(
    next: Manifest,
    etag: String,
    base_etag: String,
    retire: bool,
) -> Stored {
    if retire {
        Stored::Single {
            etag: base_etag,
            retired_manifest: Some(Retired {
                etag,
                conflicts: next.conflicts,
            }),
        }
    } else {
        Stored::Incremental {
            manifest: Box::new(next),
            etag,
        }
    }
}

/// A fold of a loaded image into a new `database.sqlite`: what it builds on and writes.
pub(crate) struct FoldPlan<'a> {
    /// The manifest the image equals.
    pub manifest: &'a Manifest,
    /// Its etag.
    pub manifest_etag: &'a str,
    /// The `database.sqlite` the load read (the base put is conditional on it).
    pub base_etag: String,
    /// `db-version` the new base carries.
    pub version: Option<u64>,
    /// Identifies both puts, so a lost answer is resolved by reading it back.
    pub write_id: String,
    /// Retire the manifest (the user returns to the single layout).
    pub retire: bool,
    /// `route` metadata for both puts (a move's freeze).
    pub route: Option<&'a str>,
}

/// How a fold ended.
#[derive(Debug)]
pub(crate) enum Fold {
    /// The base changed since the load (another compaction, an outside writer): nothing was
    /// written.
    BaseLost,
    /// The new base landed and the manifest now lists it (with any writes committed
    /// meanwhile after it).
    Committed {
        /// The committed manifest.
        manifest: Manifest,
        /// Its etag.
        etag: String,
        /// The new base's etag.
        base_etag: String,
    },
    /// The new base landed but the manifest could not take it (a newer compaction, a
    /// retirement, an outside replacement, or writes that kept committing; retiring, any
    /// write). `database.sqlite` holds at least this image's state, and loaders build on it
    /// ([`compaction_covers`]).
    Superseded,
}

/// A fold's outcome and what it moved.
#[derive(Debug)]
pub(crate) struct Folded {
    /// How it ended.
    pub outcome: Fold,
    /// The image's size.
    pub size_bytes: u64,
    /// Bytes uploaded (the base, and the manifest when it was put).
    pub bytes_uploaded: u64,
    /// Objects written.
    pub objects_written: u32,
    /// Exporting the image.
    pub serialize_ms: f64,
}

/// Writes the image as the new `database.sqlite` (`If-Match` the base read, metadata naming
/// the lineage and the write it covers), then commits a manifest that lists it (`If-Match` the
/// manifest read; when writes committed in between, re-reads it and keeps their deltas, a
/// few times; retiring cannot keep them and gives up). Folded deltas are not deleted here.
pub(crate) async fn fold<S: ObjectStore, C: Clock>(
    ctx: &Context<'_, S, C>,
    user: &UserId,
    conn: &mut Connection,
    plan: &FoldPlan<'_>,
) -> Result<Folded, Error> {
    let m = plan.manifest;
    let mut metadata = vec![
        (WRITE_ID_KEY, plan.write_id.clone()),
        (LINEAGE_KEY, m.lineage.clone()),
        (COVERS_KEY, m.seq.to_string()),
    ];
    if let Some(v) = plan.version {
        metadata.push((DB_VERSION_KEY, v.to_string()));
    }
    if let Some(r) = plan.route {
        metadata.push((ROUTE_KEY, r.to_owned()));
    }
    let start = ctx.clock.now_ms();
    let image = sqlite::export(conn)?;
    let serialize_ms = ctx.clock.now_ms() - start;
    let put = conditional_put(
        ctx,
        &user.db_key(),
        &image,
        &metadata,
        &PutCondition::IfMatch(plan.base_etag.clone()),
        &plan.write_id,
    )
    .await?;
    let (change_counter, size) = (header::change_counter(&image), image.len() as u64);
    let mut folded = Folded {
        outcome: Fold::BaseLost,
        size_bytes: size,
        bytes_uploaded: 0,
        objects_written: 0,
        serialize_ms,
    };
    let PutOutcome::Stored { etag: new_base } = put else {
        return Ok(folded);
    };
    folded.bytes_uploaded = size;
    folded.objects_written = 1;
    folded.outcome = Fold::Superseded;
    let base = BaseRef {
        etag: new_base.clone(),
        seq: m.seq,
        change_counter,
        size,
    };
    let key = user.manifest_key();
    let (mut current, mut current_etag, mut version) =
        (m.clone(), plan.manifest_etag.to_owned(), plan.version);
    for _ in 0..ADOPT_ATTEMPTS {
        let mut next = Manifest::new(m.lineage.clone(), base.clone());
        next.retired = plan.retire;
        next.conflicts = current.conflicts.clone();
        if !plan.retire {
            next.deltas = current.deltas_after(m.seq).unwrap_or_default().to_vec();
            next.seq = current.seq;
        }
        let mut metadata = manifest_metadata(&plan.write_id, version);
        if let Some(r) = plan.route {
            metadata.push((ROUTE_KEY, r.to_owned()));
        }
        let bytes = manifest_bytes(&next)?;
        let put = conditional_put(
            ctx,
            &key,
            &bytes,
            &metadata,
            &PutCondition::IfMatch(current_etag.clone()),
            &plan.write_id,
        )
        .await?;
        if let PutOutcome::Stored { etag } = put {
            folded.bytes_uploaded += bytes.len() as u64;
            folded.objects_written += 1;
            folded.outcome = Fold::Committed {
                manifest: next,
                etag,
                base_etag: new_base,
            };
            return Ok(folded);
        }
        if plan.retire {
            return Ok(folded);
        }
        let Some((latest, etag, latest_metadata)) = fetch_manifest(ctx, user).await? else {
            return Ok(folded);
        };
        // Only the same history, still on the old base, with every write after m kept.
        if latest.retired
            || latest.lineage != m.lineage
            || latest.base.seq > m.seq
            || latest.deltas_after(m.seq).is_none()
        {
            return Ok(folded);
        }
        // The manifest's db-version is its newest write's: never lower than a kept one's.
        version = version.max(version_of(&latest_metadata));
        (current, current_etag) = (latest, etag);
    }
    Ok(folded)
}

fn nothing<C: Clock>(clock: &C, start: f64) -> Compacted {
    Compacted {
        outcome: CompactOutcome::NothingToDo,
        deltas_folded: 0,
        deltas_deleted: 0,
        base_bytes: 0,
        ms: clock.now_ms() - start,
    }
}

/// What a sweep did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Swept {
    /// Delta objects found.
    pub listed: usize,
    /// Unreferenced ones deleted.
    pub deleted: usize,
    /// Unreferenced ones kept because they are younger than the grace period (a writer may
    /// be about to commit them).
    pub kept_young: usize,
}

/// Deletes delta objects that the current manifest does not reference (neither listed nor
/// kept by a conflict record) and that are older than the grace period. Safe at any time: a
/// delta about to be committed is younger than the grace period; a loader holding an older
/// manifest that misses a delta starts over.
pub async fn sweep<S: ObjectStore, C: Clock>(
    ctx: &Context<'_, S, C>,
    user: &UserId,
) -> Result<Swept, Error> {
    let clock = ctx.clock;
    let manifest = fetch_manifest(ctx, user).await?.map(|(m, _, _)| m);
    let listed = with_retries(clock, &ctx.retry, async || {
        ctx.store.list(&user.delta_prefix()).await
    })
    .await?;
    let now = clock.epoch_ms();
    let mut swept = Swept {
        listed: listed.len(),
        deleted: 0,
        kept_young: 0,
    };
    for object in listed {
        if manifest.as_ref().is_some_and(|m| m.references(&object.key)) {
            continue;
        }
        if object
            .uploaded_ms
            .saturating_add(ctx.compaction.sweep_grace_ms)
            > now
        {
            swept.kept_young += 1;
            continue;
        }
        with_retries(clock, &ctx.retry, async || {
            ctx.store.delete(&object.key).await
        })
        .await?;
        swept.deleted += 1;
    }
    Ok(swept)
}

#[cfg(test)]
mod tests {
    #[cfg(all(target_family = "wasm", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use std::cell::Cell;
    use std::rc::Rc;

    use super::*;

    /// A future that is pending on its first poll and ready on a later one, counting how many
    /// are in flight at once.
    struct Hop {
        id: usize,
        started: bool,
        in_flight: Rc<Cell<usize>>,
        peak: Rc<Cell<usize>>,
        polls_left: usize,
    }

    impl Future for Hop {
        type Output = usize;
        fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<usize> {
            if !self.started {
                self.started = true;
                self.in_flight.set(self.in_flight.get() + 1);
                self.peak.set(self.peak.get().max(self.in_flight.get()));
            }
            if self.polls_left == 0 {
                self.in_flight.set(self.in_flight.get() - 1);
                return Poll::Ready(self.id);
            }
            self.polls_left -= 1;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }

    /// At most six run at once, a finished one is replaced at once, and outputs keep order.
    #[test]
    fn join_all_keeps_order_and_the_connection_limit() {
        let (in_flight, peak) = (Rc::new(Cell::new(0)), Rc::new(Cell::new(0)));
        let hops: Vec<Hop> = (0..20)
            .map(|id| Hop {
                id,
                started: false,
                in_flight: Rc::clone(&in_flight),
                peak: Rc::clone(&peak),
                polls_left: 1 + id % 4,
            })
            .collect();
        let out = pollster::block_on(join_all(hops));
        assert_eq!(out, (0..20).collect::<Vec<_>>());
        assert_eq!(peak.get(), PARALLEL_FETCHES);
        assert_eq!(in_flight.get(), 0);
    }

    /// The compaction policy: a count or a share of the base.
    #[test]
    fn compaction_thresholds() {
        let policy = CompactionPolicy::default();
        let mut m = Manifest::new(
            "l".into(),
            BaseRef {
                etag: "e".into(),
                seq: 0,
                change_counter: 1,
                size: 1_000_000,
            },
        );
        let delta = |seq, size| DeltaRef {
            key: format!("k{seq}"),
            seq,
            size,
            checksum: String::new(),
            change_counter: 0,
            len: 0,
        };
        m.deltas = (1..=5).map(|s| delta(s, 1000)).collect();
        assert!(!policy.due(&m));
        m.deltas.push(delta(6, 1000));
        assert!(policy.due(&m), "6 deltas");
        m.deltas = vec![delta(1, 9_999)];
        assert!(!policy.due(&m));
        m.deltas = vec![delta(1, 10_000)];
        assert!(policy.due(&m), "1 % of the base");
        // Deltas after a sequence number: complete, or none when some are missing.
        m.seq = 3;
        m.deltas = (1..=3).map(|s| delta(s, 1)).collect();
        assert_eq!(m.deltas_after(1).map(<[DeltaRef]>::len), Some(2));
        assert_eq!(m.deltas_after(3).map(<[DeltaRef]>::len), Some(0));
        m.deltas.remove(1);
        assert!(m.deltas_after(0).is_none());
    }
}
