//! Committing a write in the incremental layout: the conflict record of an adoption (if the
//! load decided one), one delta object under a unique key, then the manifest's conditional
//! put, the commit point.

use super::delta;
use super::keys::{DB_VERSION_KEY, Home, WRITE_ID_KEY};
use super::load::fetch_manifest;
use super::loaded::Loaded;
use super::manifest::{BaseRef, DeltaRef, Manifest, Slots, Stored};
use super::retry::{conditional_put, with_retries};
use super::store::{ObjectStore, PutCondition, PutOutcome};
use crate::clock::Clock;
use crate::context::Context;
use crate::error::Error;
use crate::header;
use crate::request::UserId;
use crate::sqlite;

pub(super) fn manifest_bytes(m: &Manifest) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(m).map_err(|e| Error::Internal {
        detail: e.to_string(),
    })
}

pub(super) fn manifest_metadata(
    write_id: &str,
    version: Option<u64>,
) -> Vec<(&'static str, String)> {
    let mut m = vec![(WRITE_ID_KEY, write_id.to_owned())];
    if let Some(v) = version {
        m.push((DB_VERSION_KEY, v.to_string()));
    }
    m
}

/// The commit point: `next`, numbered as the commit after `prev` (the slots a load read;
/// `None`: the user has no manifest yet), put in the one slot that commit can live in,
/// `If-Match` the etag the load read there (create-only if it read none). A 429 or 5xx is
/// repeated, a lost answer resolved by `write_id`. `Ok(None)`: the condition failed (another
/// writer committed after `prev`). On success: the slots now, and the bytes put.
pub(super) async fn put_commit<S: ObjectStore, C: Clock>(
    ctx: &Context<'_, S, C>,
    user: &UserId,
    next: &mut Manifest,
    prev: Option<&Slots>,
    metadata: &[(&str, String)],
    write_id: &str,
) -> Result<Option<(Slots, u64)>, Error> {
    let slot = next.number_after(prev, ctx.compaction.commit_slots);
    let condition = match prev.and_then(Slots::next_etag) {
        Some(etag) => PutCondition::IfMatch(etag.to_owned()),
        None => PutCondition::IfAbsent,
    };
    let bytes = manifest_bytes(next)?;
    let key = user.manifest_key(slot);
    match conditional_put(ctx, &key, &bytes, metadata, &condition, write_id).await? {
        PutOutcome::Stored { etag } => {
            let slots = match prev {
                Some(p) => p.after(slot, etag, next.commit, next.slots),
                None => Slots::first(etag, next.slots),
            };
            Ok(Some((slots, bytes.len() as u64)))
        }
        PutOutcome::ConditionFailed => Ok(None),
    }
}

/// What an incremental commit stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Committed {
    /// The new state in R2.
    pub stored: Stored,
    /// Bytes uploaded: the conflict record, the delta and the manifest.
    pub bytes_uploaded: u64,
    /// Objects written: the delta (none for an adoption with no change) and the manifest,
    /// plus an adoption's conflict record.
    pub objects_written: u32,
    /// Pages in the delta.
    pub pages: u32,
    /// Finding the changed pages and encoding the delta.
    pub encode_ms: f64,
    /// The manifest passed the compaction thresholds.
    pub compact_due: bool,
}

/// Times a commit is put again over compactions that landed after its load.
const REBASES: u32 = 3;

/// The newest manifest and its slots, if it is a compaction of `built_on`'s state and nothing
/// more: the same lineage, still served from R2, the same conflict copies, and its last write
/// the one `built_on` ends with, so the database it describes is the one the next delta was
/// built on. A write or an adoption after `built_on` moves `seq`; a move is not served from R2.
async fn rebase_over_compaction<S: ObjectStore, C: Clock>(
    ctx: &Context<'_, S, C>,
    user: &UserId,
    built_on: &Manifest,
    built_on_version: Option<u64>,
) -> Result<Option<(Manifest, Slots)>, Error> {
    let Some((latest, slots, metadata)) = fetch_manifest(ctx, user).await? else {
        return Ok(None);
    };
    let same_state = !latest.retired
        && Home::of(&metadata) == Home::R2
        && latest.lineage == built_on.lineage
        && latest.conflicts == built_on.conflicts
        && latest.seq == built_on.seq
        // A compaction keeps the db-version; a commit that changed it (a `save=always` fold)
        // named a new state, which the write must not follow with an older version.
        && super::keys::version_of(&metadata) == built_on_version;
    Ok(same_state.then_some((latest, slots)))
}

/// Whether a failed store call may have stored its bytes after all.
fn may_have_landed(e: &Error) -> bool {
    matches!(e, Error::StorageUnavailable(s) if s.write_outcome_unknown)
}

/// Commits the changes since the load as one delta and a manifest (`If-Match` the manifest
/// read, or creating it for a user stored whole). An adoption the load decided is part of the
/// same commit: its conflict record is written first, and its manifest (the outside file as
/// base) is the one the delta extends; with no change, the manifest alone. `Ok(None)`: another
/// writer committed first; nothing of ours is referenced, and our delta and record were
/// deleted (or the delta is left for the sweep). On success `loaded` equals the new state.
pub(crate) async fn commit<S: ObjectStore, C: Clock>(
    ctx: &Context<'_, S, C>,
    user: &UserId,
    loaded: &mut Loaded,
    version: Option<u64>,
    write_id: &str,
) -> Result<Option<Committed>, Error> {
    let adoption = loaded.adoption.as_ref();
    let (manifest, prev) = match (&loaded.stored, adoption) {
        (Stored::Incremental { slots, .. }, Some(a)) => (a.next.clone(), Some(slots.clone())),
        (Stored::Incremental { manifest, slots }, None) => {
            ((**manifest).clone(), Some(slots.clone()))
        }
        (
            Stored::Single {
                etag,
                retired_manifest,
            },
            _,
        ) => {
            let lineage = format!("{:016x}{:x}", ctx.nonce, ctx.clock.epoch_ms());
            let base = BaseRef {
                etag: etag.clone(),
                seq: 0,
                change_counter: loaded.change_counter,
                size: loaded.len,
            };
            let mut manifest = Manifest::new(lineage, base);
            // After a retired manifest, the next commit number (and its slot); conflict copies
            // outlive the retirement: the new manifest keeps them.
            let prev = retired_manifest.as_ref().map(|retired| {
                manifest.conflicts.clone_from(&retired.conflicts);
                retired.slots.clone()
            });
            (manifest, prev)
        }
        (Stored::New, _) => {
            return Err(Error::Internal {
                detail: "a new database is stored whole, not as a delta".into(),
            });
        }
    };
    let record = adoption.and_then(|a| a.record.clone());
    let encode_start = ctx.clock.now_ms();
    let changes = sqlite::changes(&mut loaded.conn);
    let (bytes, summary) = {
        let image = sqlite::export(&mut loaded.conn)?;
        let page_size = header::page_size(&image).ok_or_else(|| Error::Internal {
            detail: "the image has no valid page size".into(),
        })?;
        let pages: Vec<u32> = match changes {
            Some(c) if c.page_size == loaded.page_size => c.pages,
            // Unrecorded, or the page size changed (VACUUM): every page.
            _ => (0..u32::try_from(image.len() / page_size as usize).unwrap_or(u32::MAX)).collect(),
        };
        delta::encode(&image, page_size, &pages)
    };
    let encode_ms = ctx.clock.now_ms() - encode_start;
    // An adoption with nothing changed commits the manifest alone.
    let with_delta = summary.pages > 0 || adoption.is_none();
    // The state the delta is built on, for a rebase over a compaction.
    let built_on = manifest.clone();
    let mut next = manifest;
    let mut bytes_uploaded = 0;
    let mut objects_written = 1;
    if let Some((key, body)) = &record {
        // Unique key, referenced by nothing until the manifest below commits.
        with_retries(ctx.clock, &ctx.retry, async || {
            ctx.store.put(key, body, &[], &PutCondition::IfAbsent).await
        })
        .await?;
        bytes_uploaded += body.len() as u64;
        objects_written += 1;
    }
    let seq = next.seq + 1;
    let key = user.delta_key(seq, write_id);
    let next_delta = DeltaRef {
        key: key.clone(),
        seq,
        size: bytes.len() as u64,
        checksum: format!("{:016x}", summary.checksum),
        change_counter: summary.change_counter,
        len: summary.len,
    };
    let delete_ours = async |with_delta: bool| {
        // Unreferenced for certain; if a delete fails the sweep removes the delta later (a
        // record is not swept, so it is deleted here or not written at all).
        if with_delta {
            let _ = ctx.store.delete(&key).await;
        }
        if let Some((record, _)) = &record {
            let _ = ctx.store.delete(record).await;
        }
    };
    if with_delta {
        let delta_metadata = [(WRITE_ID_KEY, write_id.to_owned())];
        // Unique key: a failed condition can only mean an earlier attempt of ours landed.
        let put = with_retries(ctx.clock, &ctx.retry, async || {
            ctx.store
                .put(&key, &bytes, &delta_metadata, &PutCondition::IfAbsent)
                .await
        })
        .await;
        if let Err(e) = put {
            delete_ours(false).await;
            return Err(e.into());
        }
        next.seq = seq;
        next.deltas.push(next_delta.clone());
        bytes_uploaded += bytes.len() as u64;
        objects_written += 1;
    }
    let mut prev = prev;
    let mut rebased = 0;
    let outcome = loop {
        let outcome = put_commit(
            ctx,
            user,
            &mut next,
            prev.as_ref(),
            &manifest_metadata(write_id, version),
            write_id,
        )
        .await;
        // An adoption's own manifest was never committed: nothing to go on top of.
        if !matches!(outcome, Ok(None)) || adoption.is_some() || rebased == REBASES {
            break outcome;
        }
        // Another commit followed the one the load read. If it was a compaction of that very
        // state (the same history, nothing committed after it), the delta extends it as it
        // extended the state it was built on: commit it on top, without running the work again.
        match rebase_over_compaction(ctx, user, &built_on, loaded.version).await {
            Ok(Some((over, slots))) => {
                rebased += 1;
                next = over;
                next.deltas.push(next_delta.clone());
                next.seq = seq;
                prev = Some(slots);
            }
            Ok(None) => break Ok(None),
            Err(e) => break Err(e),
        }
    };
    if rebased > 0 && matches!(outcome, Ok(Some(_))) {
        loaded.base_etag = Some(next.base.etag.clone());
    }
    match outcome {
        Ok(Some((slots, manifest_bytes))) => {
            let stored = Stored::Incremental {
                manifest: Box::new(next.clone()),
                slots,
            };
            loaded.stored = stored.clone();
            loaded.adoption = None;
            if let Some(v) = version {
                loaded.version = Some(v);
            }
            Ok(Some(Committed {
                compact_due: ctx.compaction.due(&next),
                stored,
                bytes_uploaded: bytes_uploaded + manifest_bytes,
                objects_written,
                pages: if with_delta { summary.pages } else { 0 },
                encode_ms,
            }))
        }
        Ok(None) => {
            delete_ours(with_delta).await;
            Ok(None)
        }
        Err(e) => {
            if !may_have_landed(&e) {
                delete_ours(false).await;
            }
            Err(e)
        }
    }
}
