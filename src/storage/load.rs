//! Loading a user's database in whichever layout it is stored: from the version cache when R2
//! confirms the copy (fetching only the deltas it lacks), otherwise the manifest, the base and
//! the deltas read together; a base that is neither the manifest's nor a compaction of it is
//! handed to [`super::adopt`].

use std::collections::HashMap;

use super::adopt::{adopt_outside, still_newest};
use super::cache::Entry;
use super::delta;
use super::join::{join_all, join2};
use super::keys::{COVERS_KEY, LINEAGE_KEY, check_route, version_of};
use super::loaded::{Loaded, Step};
use super::manifest::{DeltaRef, MAX_COMMIT_SLOTS, Manifest, Retired, Slots, Stored};
use super::retry::with_retries;
use super::store::{Body, Fetched, ObjectStore, StoreError, StoreErrorKind, StoredObject};
use crate::clock::Clock;
use crate::context::Context;
use crate::error::{Corruption, Error};
use crate::header;
use crate::report::CacheStatus;
use crate::request::UserId;
use crate::sqlite;

/// Largest manifest read (about 40,000 deltas; compaction keeps it far smaller).
const MANIFEST_MAX_BYTES: u64 = 4 * 1024 * 1024;
/// Times a load starts over when the manifest moved on under it.
pub(super) const LOAD_ATTEMPTS: u32 = 4;

/// Loads `user`'s database, whatever its layout: from the version cache when R2 confirms it
/// is current (fetching only the deltas it lacks), otherwise from R2, or a new empty database
/// when nothing is stored. Never writes: an outside replacement found here is adopted by the
/// save step's commit ([`Loaded::adoption`]).
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
    let mut loaded = build(ctx, user, cached).await?;
    let fetch_ms = clock.now_ms() - fetch_start;
    // Writes may not grow the database past the limit; one stored larger keeps its size.
    sqlite::cap_size(&loaded.conn, ctx.max_write_bytes.max(loaded.len))?;
    // Network (requests, bodies) versus CPU (applying deltas, opening the image).
    loaded.download_ms = (fetch_ms - loaded.cpu_ms).max(0.0);
    loaded.initialized_here = initialized_here;
    loaded.wasm_init_ms = wasm_init_ms;
    loaded.total_ms = clock.now_ms() - start;
    Ok(loaded)
}

/// The sequence number a base put by a compaction of `m`'s lineage says it covers, if it is one
/// that `m` can build on: at least `m`'s base (a compaction never covers less than the base it
/// replaced, so an older one cannot be current). Equal to `m`'s base is a second compaction of
/// the same state that landed after the one `m` lists (it lost a race, reloaded and folded
/// again): the same database, so a loader uses it as it would the listed base. Greater than
/// `m.seq`: `m` is stale.
pub(super) fn compaction_covers(m: &Manifest, metadata: &HashMap<String, String>) -> Option<u64> {
    if metadata.get(LINEAGE_KEY) != Some(&m.lineage) {
        return None;
    }
    metadata
        .get(COVERS_KEY)
        .and_then(|v| v.parse().ok())
        .filter(|k| *k >= m.base.seq)
}

/// A manifest read from the store: the newest one, the commit slots it was read from, and
/// its object's metadata.
pub(super) type FetchedManifest = (Manifest, Slots, HashMap<String, String>);

async fn parse_manifest<B: Body>(
    object: StoredObject<B>,
    key: &str,
) -> Result<(Manifest, String, HashMap<String, String>), Error> {
    let bytes = object
        .body
        .into_vec()
        .await
        .map_err(Error::StorageUnavailable)?;
    let manifest: Manifest = serde_json::from_slice(&bytes)
        .map_err(|e| Error::CorruptDatabase(Corruption::Contents(format!("{key}: {e}"))))?;
    if !matches!(manifest.format, 1 | 2) {
        return Err(Error::CorruptDatabase(Corruption::Contents(format!(
            "{key} has format {}, this worker reads formats 1 and 2",
            manifest.format
        ))));
    }
    Ok((manifest, object.etag, object.metadata))
}

/// The user's newest manifest, if there is one; one too large to be a manifest is damage.
pub(super) async fn fetch_manifest<S: ObjectStore, C: Clock>(
    ctx: &Context<'_, S, C>,
    user: &UserId,
) -> Result<Option<FetchedManifest>, Error> {
    Ok(read_slots(ctx, user, None)
        .await?
        .map(|(fetched, _)| fetched))
}

/// Reads every commit slot at once and takes the manifest with the highest commit number;
/// with `known` (a cached copy's manifest and slots), each slot is asked for `If-None-Match`
/// its known etag. Reads `COMMIT_SLOTS` slots, then any more that a manifest found names (a
/// user's slot count only grows, so a manifest in a slot read names at least as many as any
/// commit after it uses). The flag: the newest manifest is not the known one.
async fn read_slots<S: ObjectStore, C: Clock>(
    ctx: &Context<'_, S, C>,
    user: &UserId,
    known: Option<(&Manifest, &Slots)>,
) -> Result<Option<(FetchedManifest, bool)>, Error> {
    let most = MAX_COMMIT_SLOTS as usize;
    let mut count = (ctx.compaction.commit_slots as usize)
        .max(known.map_or(1, |(_, s)| s.etags.len()))
        .clamp(1, most);
    let mut etags: Vec<Option<String>> = Vec::with_capacity(count);
    // The newest so far: the manifest, its slot, its metadata, whether it is not the known one.
    let mut best: Option<(Manifest, usize, HashMap<String, String>, bool)> = None;
    loop {
        let from = etags.len();
        let gets = (from..count)
            .map(|slot| {
                let key = user.manifest_key(slot);
                let if_none_match = known.and_then(|(_, s)| s.etags.get(slot).cloned().flatten());
                async move {
                    let got = with_retries(ctx.clock, &ctx.retry, async || {
                        ctx.store
                            .get(&key, MANIFEST_MAX_BYTES, if_none_match.as_deref())
                            .await
                    })
                    .await;
                    (key, got)
                }
            })
            .collect();
        let mut widest = count;
        for (i, (key, got)) in join_all(gets).await.into_iter().enumerate() {
            let slot = from + i;
            match got? {
                Fetched::Found(object) => {
                    let (m, etag, metadata) = parse_manifest(object, &key).await?;
                    etags.push(Some(etag));
                    widest = widest.max(m.slots as usize);
                    if best.as_ref().is_none_or(|b| m.commit > b.0.commit) {
                        best = Some((m, slot, metadata, true));
                    }
                }
                Fetched::NotModified { metadata } => {
                    let Some((km, ks)) = known else {
                        return Err(Error::Internal {
                            detail: "store answered 'not modified' to an unconditional get".into(),
                        });
                    };
                    etags.push(ks.etags.get(slot).cloned().flatten());
                    if slot == ks.current && best.as_ref().is_none_or(|b| km.commit > b.0.commit) {
                        best = Some((km.clone(), slot, metadata, false));
                    }
                }
                Fetched::Missing => etags.push(None),
                Fetched::TooLarge { size_bytes } => {
                    return Err(corrupt(format!("{key} is {size_bytes} bytes")));
                }
            }
        }
        let widest = widest.min(most);
        if widest <= count {
            break;
        }
        count = widest;
    }
    Ok(best.map(|(m, current, metadata, fresh)| {
        let slots = Slots {
            etags,
            current,
            commit: m.commit,
            count: m.slots,
        };
        ((m, slots, metadata), fresh)
    }))
}

fn corrupt(detail: String) -> Error {
    Error::CorruptDatabase(Corruption::Contents(detail))
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
    slots: &Slots,
    m: &Manifest,
    missing: &DeltaRef,
) -> Result<Step<Loaded>, Error> {
    if !still_newest(ctx, user, slots).await? {
        return Ok(Step::Restart);
    }
    let last = missing.seq.saturating_sub(1).max(m.base.seq);
    Err(corrupt(format!(
        "the manifest (commit {}, seq {}) lists {} (seq {}), which is missing; the last state that can be \
         built is seq {last} (the base and the deltas listed before it); nothing was changed",
        m.commit, m.seq, missing.key, missing.seq
    )))
}

fn apply_all(image: &mut Vec<u8>, deltas: &[Vec<u8>], refs: &[DeltaRef]) -> Result<(), Error> {
    for (bytes, r) in deltas.iter().zip(refs) {
        delta::apply(image, bytes).map_err(|e| corrupt(format!("{}: {e}", r.key)))?;
    }
    Ok(())
}

/// Builds a user's database in whichever layout it is stored, from `cached` when R2 confirms
/// it (fetching only the deltas it lacks), otherwise from R2, and records the image's page
/// size, change counter and length.
pub(super) async fn build<S: ObjectStore, C: Clock>(
    ctx: &Context<'_, S, C>,
    user: &UserId,
    mut cached: Option<Entry>,
) -> Result<Loaded, Error> {
    for _ in 0..LOAD_ATTEMPTS {
        match load_once(ctx, user, cached.take()).await? {
            Step::Done(mut loaded) => {
                let image = sqlite::export(&mut loaded.conn)?;
                loaded.page_size = header::page_size(&image).unwrap_or(0);
                loaded.change_counter = header::change_counter(&image);
                loaded.len = image.len() as u64;
                return Ok(loaded);
            }
            Step::Restart => {}
        }
    }
    Err(Error::StorageUnavailable(StoreError::new(
        "get",
        StoreErrorKind::Transient,
        "the manifest kept changing while loading",
    )))
}

async fn load_once<S: ObjectStore, C: Clock>(
    ctx: &Context<'_, S, C>,
    user: &UserId,
    cached: Option<Entry>,
) -> Result<Step<Loaded>, Error> {
    let clock = ctx.clock;
    // A cached copy of a manifest user: ask for every commit slot (conditionally) and, in
    // parallel, the base's etag: an outside replacement of database.sqlite is noticed at
    // once, not at the next cold load.
    if let Some(entry) = cached {
        let Stored::Incremental {
            manifest: m0,
            slots: s0,
        } = &entry.stored
        else {
            return cold(ctx, user, None, Some(entry)).await;
        };
        let m0 = m0.clone();
        let base_key = user.db_key();
        let (got, head) = join2(
            read_slots(ctx, user, Some((&m0, s0))),
            with_retries(clock, &ctx.retry, async || ctx.store.head(&base_key).await),
        )
        .await;
        let (got, head) = (got?, head?);
        let Some(((m, slots, metadata), changed)) = got else {
            return cold(ctx, user, Some(None), None).await;
        };
        // A retired manifest's route says nothing (the base's does): a move retires the
        // manifest it froze, and the base then says where the user went.
        let manifest_route = if m.retired {
            Ok(())
        } else {
            check_route(&metadata)
        };
        if let Err(e) =
            manifest_route.and_then(|()| head.as_ref().map_or(Ok(()), |h| check_route(&h.metadata)))
        {
            if !changed {
                // The copy is still current; keep it, so the next check is as cheap.
                put_back(ctx, user, entry);
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
            return cold(ctx, user, Some(Some((m, slots, metadata))), None).await;
        }
        // What a compaction of this copy must be conditional on.
        let base_etag = head.map(|h| h.etag);
        if !changed {
            let stored = Stored::Incremental {
                manifest: Box::new(m),
                slots,
            };
            return Ok(Step::Done(Loaded::built(
                entry.conn,
                stored,
                base_etag,
                entry.db_version,
                false,
                CacheStatus::Hit,
            )));
        }
        let tail = (m.lineage == m0.lineage)
            .then(|| m.deltas_after(m0.seq))
            .flatten();
        let Some(tail) = tail else {
            return cold(ctx, user, Some(Some((m, slots, metadata))), None).await;
        };
        let deltas = match fetch_deltas(ctx, tail).await? {
            Ok(deltas) => deltas,
            Err(missing) => return missing_delta(ctx, user, &slots, &m, &missing).await,
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
        let mut loaded = Loaded::built(
            conn,
            Stored::Incremental {
                manifest: Box::new(m),
                slots,
            },
            base_etag,
            version_of(&metadata),
            false,
            CacheStatus::Updated,
        );
        (loaded.deltas_applied, loaded.cpu_ms) = (applied, parse_ms);
        return Ok(Step::Done(loaded));
    }
    cold(ctx, user, None, None).await
}

/// A cached copy whose stored state R2 just confirmed goes back as it was taken (the request
/// is refused for its route, so the copy was not used).
fn put_back<S, C>(ctx: &Context<'_, S, C>, user: &UserId, entry: Entry) {
    super::cache::keep(ctx.cache, user, entry.conn, entry.stored, entry.db_version);
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
) -> Result<Step<Loaded>, Error> {
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
    let mut base = base?;
    if let Some((m, _, _)) = manifest.as_ref().filter(|(m, _, _)| m.retired) {
        // A base read beside a manifest that turned out retired may predate the retirement
        // (its fold put the base after this read): unless it is the base the retirement
        // names, it is read again now that the manifest read is done (a conditional get, not
        // modified when the first read was current).
        let read_etag = match &base {
            BaseRead::Image { etag, .. } => Some(etag.clone()),
            BaseRead::NotModified { .. } => base_etag.clone(),
            BaseRead::Missing | BaseRead::TooLarge(_) => None,
        };
        if let Some(etag) = read_etag.filter(|e| *e != m.base.etag) {
            match read_base(ctx, &base_key, Some(&etag)).await? {
                BaseRead::NotModified { .. } => {}
                fresh => base = fresh,
            }
        }
    }
    let miss = match (&cached_single, ctx.cache) {
        (Some(_), _) => CacheStatus::Stale,
        (None, Some(_)) => CacheStatus::Miss,
        (None, None) => CacheStatus::Disabled,
    };
    let (live, retired_manifest) = match manifest {
        Some((m, slots, metadata)) if !m.retired => (Some((m, slots, metadata)), None),
        Some((m, slots, _)) => (
            None,
            Some(Retired {
                slots,
                conflicts: m.conflicts,
            }),
        ),
        None => (None, None),
    };
    // The single layout (or a retired manifest): database.sqlite is the database.
    let Some((m, m_slots, m_metadata)) = live else {
        return single(ctx, user, base, cached_single, retired_manifest, miss);
    };
    if matches!(base, BaseRead::NotModified { .. }) {
        // A cached single-layout copy whose file is unchanged, while another writer upgraded
        // the user to the incremental layout (a live manifest now lists that file): the copy
        // is not used, and the base is read whole.
        drop(cached_single);
        base = read_base(ctx, &base_key, None).await?;
    }
    let (mut image, base_etag, base_metadata) = match base {
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
                "{base_key} is missing but manifest.json lists it as the base; nothing was changed (restore the base, or delete every manifest slot to start over from nothing)"
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
        return adopt_outside(ctx, user, image, base_etag, base_metadata, m, m_slots, miss).await;
    };
    let prefetched = match prefetched {
        Ok(prefetched) => prefetched,
        Err(missing) => return missing_delta(ctx, user, &m_slots, &m, &missing).await,
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
    let mut loaded = Loaded::built(
        loaded.conn,
        Stored::Incremental {
            manifest: Box::new(m),
            slots: m_slots,
        },
        Some(base_etag),
        version_of(&m_metadata),
        loaded.header.wal_mode,
        miss,
    )
    .parsed(parse_ms);
    loaded.deltas_applied = applied;
    Ok(Step::Done(loaded))
}

fn single<S, C: Clock>(
    ctx: &Context<'_, S, C>,
    user: &UserId,
    base: BaseRead,
    cached: Option<Entry>,
    retired_manifest: Option<Retired>,
    miss: CacheStatus,
) -> Result<Step<Loaded>, Error> {
    let built = |conn, etag: Option<String>, version, wal, cache| {
        let stored = match &etag {
            Some(etag) => Stored::Single {
                etag: etag.clone(),
                retired_manifest: retired_manifest.clone(),
            },
            None => Stored::New,
        };
        Loaded::built(conn, stored, etag, version, wal, cache)
    };
    match (base, cached) {
        (BaseRead::NotModified { metadata }, Some(entry)) => {
            if let Err(e) = check_route(&metadata) {
                // The copy is still current; keep it, so the next check is as cheap.
                put_back(ctx, user, entry);
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
            Ok(Step::Done(
                built(conn, None, None, false, miss).parsed(parse_ms),
            ))
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
            Ok(Step::Done(
                built(
                    loaded.conn,
                    Some(etag),
                    version,
                    loaded.header.wal_mode,
                    miss,
                )
                .parsed(parse_ms),
            ))
        }
    }
}
