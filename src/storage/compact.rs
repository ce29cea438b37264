//! Compaction: folding the deltas into a new `database.sqlite` (conditional on the base read,
//! naming the lineage and the write it covers), then a manifest without them, then deleting
//! the folded deltas; retiring the manifest (back to the single layout) and a move's freeze
//! are compactions too.

use rusqlite::Connection;
use serde::Serialize;

use super::commit::commit;
use super::commit::{manifest_metadata, put_commit};
use super::keys::{
    COVERS_KEY, DB_VERSION_KEY, Home, LINEAGE_KEY, WRITE_ID_KEY, push_home, version_of,
};
use super::load::{LOAD_ATTEMPTS, build, compaction_covers, fetch_manifest};
use super::loaded::{Loaded, keep_loaded};
use super::manifest::{BaseRef, Manifest, Retired, Slots, Stored};
use super::retry::{conditional_put, persist, with_retries};
use super::store::{ObjectStore, PutCondition, PutOutcome};
use crate::clock::Clock;
use crate::context::Context;
use crate::error::Error;
use crate::header;
use crate::request::UserId;
use crate::sqlite;

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
        let mut loaded = build(lctx, user, cached).await?;
        // The fold below builds on the adopted state.
        if !adopt_first(ctx, user, &mut loaded, "compact").await? {
            continue;
        }
        let Stored::Incremental { manifest, slots } = &loaded.stored else {
            keep(ctx, user, loaded);
            return Ok(nothing(clock, start));
        };
        if manifest.deltas.is_empty() && !retire {
            keep(ctx, user, loaded);
            return Ok(nothing(clock, start));
        }
        let (m, m_slots) = ((**manifest).clone(), slots.clone());
        let plan = FoldPlan {
            manifest: &m,
            slots: &m_slots,
            base_etag: loaded
                .base_etag
                .clone()
                .unwrap_or_else(|| m.base.etag.clone()),
            version: loaded.version,
            write_id: format!("{:016x}-compact-{}", ctx.nonce, m.seq),
            retire,
            home: Home::R2,
        };
        // The fold works on a copy of its own and the cached copy goes back at once: a
        // compaction can take seconds (the base's one write a second, writes committing
        // meanwhile), and the requests arriving during it would each load a copy from R2, all
        // of the deltas included. Without the memory for a copy, the upload streams straight
        // out of the cached one, which is away until it is done.
        let mut own = None;
        if ctx.cache.is_some() {
            let image = sqlite::export(&mut loaded.conn)?;
            if ctx
                .memory
                .is_none_or(|m| m.try_grow(crate::admission::image_bytes(image.len() as u64)))
            {
                let bytes = image.to_vec();
                own = Some(sqlite::open(sqlite::Image::from_vec(bytes))?.conn);
            }
        }
        let mut folding = match own {
            Some(conn) => {
                keep(ctx, user, loaded);
                Folding::Copy(conn)
            }
            None => Folding::Cached(Box::new(loaded)),
        };
        let folded = match fold(ctx, user, folding.conn(), &plan).await {
            Ok(f) => f,
            Err(e) => {
                folding.give_back(ctx, user);
                return Err(e);
            }
        };
        let Fold::Committed {
            manifest: next,
            slots: next_slots,
            base_etag: new_base,
        } = folded.outcome
        else {
            // Another compaction or an outside writer changed the base first, or (retiring) a
            // write committed: fold again from what is stored now.
            folding.give_back(ctx, user);
            continue;
        };
        if let Folding::Cached(mut loaded) = folding {
            // The copy equals the new state when no write was kept in the manifest.
            if next.seq == m.seq {
                loaded.stored = committed_stored(next.clone(), *next_slots, new_base, retire);
            }
            keep(ctx, user, *loaded);
        }
        let mut deleted = 0;
        for d in &m.deltas {
            if !next.references(&d.key) && ctx.store.delete(&d.key).await.is_ok() {
                deleted += 1;
            }
        }
        return Ok(Compacted {
            outcome: if retire {
                CompactOutcome::Retired
            } else {
                CompactOutcome::Compacted
            },
            deltas_folded: m.deltas.len(),
            deltas_deleted: deleted,
            base_bytes: next.base.size,
            ms: clock.now_ms() - start,
        });
    }
    let mut lost = nothing(clock, start);
    lost.outcome = CompactOutcome::LostRace;
    Ok(lost)
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

/// For a move: freezes an incremental user's commit point first (the manifest it loaded, put
/// again with `route=moving`, `If-Match` the manifest read), so no write commits after it; then
/// folds that final state into one complete `database.sqlite` saying `route=moving` and retires
/// the manifest (`If-Match` the frozen one), so the move can copy one object. A freeze that
/// cannot complete is lifted before the error returns: the user is never left frozen by a move
/// that gave up. `None` when the user has no live manifest (the move freezes the single object
/// itself).
///
/// The manifest goes first because it is the commit point: a fold whose base put said
/// `route=moving` before the manifest retired could lose the retirement to a writer's commit
/// and leave a frozen base that no move was still holding.
pub(crate) async fn freeze_for_move<S: ObjectStore, C: Clock>(
    ctx: &Context<'_, S, C>,
    user: &UserId,
) -> Result<Option<FrozenBase>, Error> {
    let cached = ctx.cache.and_then(|c| c.take(&user.db_key()));
    let mut loaded = build(ctx, user, cached).await?;
    // The freeze builds on the adopted state.
    if !adopt_first(ctx, user, &mut loaded, "move").await? {
        return Err(Error::Conflict { attempts: 1 });
    }
    let Stored::Incremental { manifest, slots } = &loaded.stored else {
        keep(ctx, user, loaded);
        return Ok(None);
    };
    let (m, read_slots) = ((**manifest).clone(), slots.clone());
    let move_id = format!("{:016x}-move-{}", ctx.nonce, m.seq);
    let version = loaded.version;
    let freeze_id = format!("{move_id}-freeze");
    let Some(frozen_manifest) = put_manifest(
        ctx,
        user,
        &m,
        version,
        &freeze_id,
        Home::Moving,
        &read_slots,
    )
    .await?
    else {
        // A write committed since the load: the move re-reads and tries again.
        return Err(Error::Conflict { attempts: 1 });
    };
    // Nothing commits from here on: the loaded image is the user's final state.
    match fold_frozen(ctx, user, &mut loaded, &m, &frozen_manifest, &move_id).await {
        Ok(frozen) => {
            for d in &m.deltas {
                let _ = ctx.store.delete(&d.key).await;
            }
            Ok(Some(frozen))
        }
        Err(e) => {
            lift_freeze(ctx, user, &mut loaded, &m, &frozen_manifest, &move_id).await;
            Err(e)
        }
    }
}

/// Commits `m` again, as the commit after `prev`, saying the user is served at `home`; the
/// slots after it, or `None` if another commit followed `prev`.
async fn put_manifest<S: ObjectStore, C: Clock>(
    ctx: &Context<'_, S, C>,
    user: &UserId,
    m: &Manifest,
    version: Option<u64>,
    write_id: &str,
    home: Home,
    prev: &Slots,
) -> Result<Option<Slots>, Error> {
    let mut metadata = manifest_metadata(write_id, version);
    push_home(&mut metadata, home);
    let mut next = m.clone();
    let put = put_commit(ctx, user, &mut next, Some(prev), &metadata, write_id).await?;
    Ok(put.map(|(slots, _)| slots))
}

/// A frozen user's fold: the image (the final state, `m`) as `database.sqlite` saying
/// `route=moving`, then the frozen manifest retired. The base put is conditional on the base
/// the load read; a compaction that loaded before the freeze may have replaced it since, with
/// an older state of the same lineage, and the put is then re-tried over that one.
async fn fold_frozen<S: ObjectStore, C: Clock>(
    ctx: &Context<'_, S, C>,
    user: &UserId,
    loaded: &mut Loaded,
    m: &Manifest,
    frozen_manifest: &Slots,
    move_id: &str,
) -> Result<FrozenBase, Error> {
    let mut base_etag = loaded
        .base_etag
        .clone()
        .unwrap_or_else(|| m.base.etag.clone());
    for _ in 0..LOAD_ATTEMPTS {
        let plan = FoldPlan {
            manifest: m,
            slots: frozen_manifest,
            base_etag: base_etag.clone(),
            version: loaded.version,
            write_id: move_id.to_owned(),
            retire: true,
            home: Home::Moving,
        };
        match fold(ctx, user, &mut loaded.conn, &plan).await?.outcome {
            Fold::Committed {
                base_etag: etag, ..
            } => {
                return Ok(FrozenBase {
                    image: sqlite::export(&mut loaded.conn)?.to_vec(),
                    etag,
                    version: plan.version,
                    write_id: plan.write_id,
                });
            }
            // The frozen manifest changed under the move: someone else's doing; give up.
            Fold::Superseded => return Err(Error::Conflict { attempts: 1 }),
            Fold::BaseLost => {
                let head = with_retries(ctx.clock, &ctx.retry, async || {
                    ctx.store.head(&user.db_key()).await
                })
                .await?;
                match head {
                    Some(h)
                        if Home::of(&h.metadata) == Home::R2
                            && (h.etag == m.base.etag
                                || compaction_covers(m, &h.metadata)
                                    .is_some_and(|k| k <= m.seq)) =>
                    {
                        base_etag = h.etag;
                    }
                    // Replaced from outside during the move: the move re-reads and adopts it.
                    _ => return Err(Error::Conflict { attempts: 1 }),
                }
            }
        }
    }
    Err(Error::Conflict {
        attempts: LOAD_ATTEMPTS,
    })
}

/// Undoes a freeze that could not complete: the base its fold left saying `route=moving`
/// (found by the move's write id, so a put whose answer was lost is found too) and the frozen
/// manifest get their route back, each `If-Match` what the move wrote. What changed since is
/// not the move's and is left alone. Best effort: a failure here leaves the user frozen
/// (writes refused, retryable), which loses nothing.
async fn lift_freeze<S: ObjectStore, C: Clock>(
    ctx: &Context<'_, S, C>,
    user: &UserId,
    loaded: &mut Loaded,
    m: &Manifest,
    frozen_manifest: &Slots,
    move_id: &str,
) {
    let lift_id = format!("{move_id}-lift");
    let head = with_retries(ctx.clock, &ctx.retry, async || {
        ctx.store.head(&user.db_key()).await
    })
    .await;
    if let Ok(Some(h)) = head
        && h.metadata.get(WRITE_ID_KEY).map(String::as_str) == Some(move_id)
        && Home::of(&h.metadata) == Home::Moving
        && let Ok(image) = sqlite::export(&mut loaded.conn)
    {
        let metadata = base_metadata(&lift_id, m, loaded.version, Home::R2);
        let condition = PutCondition::IfMatch(h.etag);
        let _ = persist(ctx, async || {
            conditional_put(ctx, &user.db_key(), &image, &metadata, &condition, &lift_id).await
        })
        .await;
    }
    let version = loaded.version;
    let _ = persist(ctx, async || {
        put_manifest(ctx, user, m, version, &lift_id, Home::R2, frozen_manifest).await
    })
    .await;
}

/// The metadata of a base folded from `m`: the write, the lineage and the sequence number it
/// covers, its `db-version`, and where the user is served.
fn base_metadata(
    write_id: &str,
    m: &Manifest,
    version: Option<u64>,
    home: Home,
) -> Vec<(&'static str, String)> {
    let mut metadata = vec![
        (WRITE_ID_KEY, write_id.to_owned()),
        (LINEAGE_KEY, m.lineage.clone()),
        (COVERS_KEY, m.seq.to_string()),
    ];
    if let Some(v) = version {
        metadata.push((DB_VERSION_KEY, v.to_string()));
    }
    push_home(&mut metadata, home);
    metadata
}

/// Commits the adoption of an outside file the load decided, if any, by its own commit
/// (conditional on the manifest read), before a step that builds on it; `false` if another
/// write committed first (nothing of the adoption is referenced).
async fn adopt_first<S: ObjectStore, C: Clock>(
    ctx: &Context<'_, S, C>,
    user: &UserId,
    loaded: &mut Loaded,
    step: &str,
) -> Result<bool, Error> {
    if loaded.adoption.is_none() {
        return Ok(true);
    }
    let write_id = format!("{:016x}-adopt-{step}", ctx.nonce);
    let version = loaded.version;
    Ok(commit(ctx, user, loaded, version, &write_id)
        .await?
        .is_some())
}

/// Returns a loaded copy to the version cache.
fn keep<S, C>(ctx: &Context<'_, S, C>, user: &UserId, loaded: Loaded) {
    keep_loaded(ctx.cache, user, loaded);
}

/// What a compaction folds: a copy of its own (the cached copy went back), or the loaded
/// copy itself, which goes back to the cache when the compaction is done with it.
enum Folding {
    Copy(Connection),
    Cached(Box<Loaded>),
}

impl Folding {
    fn conn(&mut self) -> &mut Connection {
        match self {
            Self::Copy(conn) => conn,
            Self::Cached(loaded) => &mut loaded.conn,
        }
    }

    /// Done with it: a loaded copy goes back to the cache (it still equals what it was
    /// loaded as), a copy of its own is dropped.
    fn give_back<S, C>(self, ctx: &Context<'_, S, C>, user: &UserId) {
        if let Self::Cached(loaded) = self {
            keep(ctx, user, *loaded);
        }
    }
}

/// Times the manifest put is re-tried over writes that commit during a compaction.
const ADOPT_ATTEMPTS: u32 = 8;

/// A fold whose base put took longer than this reads the manifest again before its own put.
const STALE_READ_MS: f64 = 250.0;

/// What R2 holds after a fold committed `next` over the base `base_etag`.
pub(crate) fn committed_stored(
    next: Manifest,
    slots: Slots,
    base_etag: String,
    retire: bool,
) -> Stored {
    if retire {
        Stored::Single {
            etag: base_etag,
            retired_manifest: Some(Retired {
                slots,
                conflicts: next.conflicts,
            }),
        }
    } else {
        Stored::Incremental {
            manifest: Box::new(next),
            slots,
        }
    }
}

/// A fold of a loaded image into a new `database.sqlite`: what it builds on and writes.
pub(crate) struct FoldPlan<'a> {
    /// The manifest the image equals.
    pub manifest: &'a Manifest,
    /// The commit slots it was read from.
    pub slots: &'a Slots,
    /// The `database.sqlite` the load read (the base put is conditional on it).
    pub base_etag: String,
    /// `db-version` the new base carries.
    pub version: Option<u64>,
    /// Identifies both puts, so a lost answer is resolved by reading it back.
    pub write_id: String,
    /// Retire the manifest (the user returns to the single layout).
    pub retire: bool,
    /// Where both puts say the user is served (`Moving` for a move's freeze).
    pub home: Home,
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
        /// The commit slots now.
        slots: Box<Slots>,
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
    let metadata = base_metadata(&plan.write_id, m, plan.version, plan.home);
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
    let (mut current, mut current_slots, mut version) =
        (m.clone(), plan.slots.clone(), plan.version);
    for attempt in 0..ADOPT_ATTEMPTS {
        if !plan.retire && (attempt > 0 || ctx.clock.now_ms() - start > STALE_READ_MS) {
            // The manifest as it is now: the base put waited (R2's one write a second), or the
            // last put lost to a write. A put over a stale read of the slots fails its
            // condition, and in R2 still takes the key's second from the writer whose commit
            // it is.
            let Some((latest, slots, latest_metadata)) = fetch_manifest(ctx, user).await? else {
                return Ok(folded);
            };
            // Only the same history, still on the old base, with every write after m kept.
            // Nor over a manifest a move froze: its writes are refused until the move is done.
            if latest.retired
                || Home::of(&latest_metadata) != plan.home
                || latest.lineage != m.lineage
                || latest.base.seq > m.seq
                || latest.deltas_after(m.seq).is_none()
            {
                return Ok(folded);
            }
            // The manifest's db-version is its newest write's: never lower than a kept one's.
            version = version.max(version_of(&latest_metadata));
            (current, current_slots) = (latest, slots);
        }
        let mut next = Manifest::new(m.lineage.clone(), base.clone());
        next.retired = plan.retire;
        next.conflicts = current.conflicts.clone();
        if !plan.retire {
            next.deltas = current.deltas_after(m.seq).unwrap_or_default().to_vec();
            next.seq = current.seq;
        }
        let mut metadata = manifest_metadata(&plan.write_id, version);
        push_home(&mut metadata, plan.home);
        // A commit like any other: the next number, in its slot.
        let put = put_commit(
            ctx,
            user,
            &mut next,
            Some(&current_slots),
            &metadata,
            &plan.write_id,
        )
        .await?;
        if let Some((slots, bytes)) = put {
            folded.bytes_uploaded += bytes;
            folded.objects_written += 1;
            folded.outcome = Fold::Committed {
                manifest: next,
                slots: Box::new(slots),
                base_etag: new_base,
            };
            return Ok(folded);
        }
        if plan.retire {
            return Ok(folded);
        }
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

#[cfg(test)]
mod tests {
    #[cfg(all(target_family = "wasm", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use crate::storage::manifest::{BaseRef, CompactionPolicy, DeltaRef, Manifest};

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
