//! Committing a write in the incremental layout: one delta object under a unique key, then
//! the manifest's conditional put, the commit point.

use rusqlite::Connection;

use super::delta;
use super::keys::{DB_VERSION_KEY, WRITE_ID_KEY};
use super::manifest::{BaseRef, DeltaRef, Manifest, Stored};
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
