//! The save step: whether to write (the save mode, a change, an adoption to commit), the size
//! check, the new `db-version`, and the write in the user's layout: one conditional put of
//! `database.sqlite`, an incremental commit, or for `save=always` a fold into
//! `database.sqlite`.

use super::commit::commit;
use super::compact::{Fold, FoldPlan, committed_stored, fold};
use super::keys::{DB_VERSION_KEY, Home, WRITE_ID_KEY, next_version};
use super::loaded::Loaded;
use super::manifest::{FollowUp, Layout, Stored};
use super::retry::conditional_put;
use super::store::{ObjectStore, PutCondition, PutOutcome};
use crate::clock::Clock;
use crate::context::Context;
use crate::error::Error;
use crate::request::{SaveMode, UserId};
use crate::sqlite;

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
/// - a delta and the manifest ([`commit`]) for a user with a manifest, or any stored
///   user under `LAYOUT=incremental` (upgrading them on this first write).
///
/// 429s and 5xx are repeated with backoff; a put whose answer was lost is resolved by reading
/// the object's `write-id` back.
pub async fn save<S: ObjectStore, C: Clock>(
    ctx: &Context<'_, S, C>,
    user: &UserId,
    loaded: &mut Loaded,
    changed: bool,
    mode: SaveMode,
) -> Result<Saved, Error> {
    let clock = ctx.clock;
    // An adoption the load decided is a change of the stored state: `auto` commits it.
    let perform = match mode {
        SaveMode::Always => true,
        SaveMode::Auto => changed || loaded.adoption.is_some(),
        SaveMode::Never => false,
    };
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
    let version = next_version(clock.epoch_ms(), loaded.version);
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
        return save_whole(ctx, user, loaded, changed, version, &write_id, start).await;
    }
    if incremental {
        let committed = commit(ctx, user, loaded, Some(version), &write_id).await?;
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
#[allow(clippy::too_many_arguments)]
async fn save_whole<S: ObjectStore, C: Clock>(
    ctx: &Context<'_, S, C>,
    user: &UserId,
    loaded: &mut Loaded,
    changed: bool,
    version: u64,
    write_id: &str,
    start: f64,
) -> Result<Saved, Error> {
    let clock = ctx.clock;
    let (mut bytes_uploaded, mut objects_written, mut serialize_ms) = (0, 0, 0.0);
    if changed || loaded.adoption.is_some() || matches!(loaded.stored, Stored::Single { .. }) {
        let committed = commit(ctx, user, loaded, Some(version), write_id).await?;
        let Some(c) = committed else {
            return Ok(Saved::Conflict);
        };
        (bytes_uploaded, objects_written, serialize_ms) =
            (c.bytes_uploaded, c.objects_written, c.encode_ms);
    }
    let Stored::Incremental { manifest, slots } = &loaded.stored else {
        return Err(Error::Internal {
            detail: "a whole save of a user without a manifest".into(),
        });
    };
    let plan = FoldPlan {
        manifest,
        slots,
        base_etag: loaded
            .base_etag
            .clone()
            .unwrap_or_else(|| manifest.base.etag.clone()),
        version: Some(version),
        write_id: format!("{write_id}-whole"),
        retire: ctx.layout == Layout::Single,
        home: Home::R2,
    };
    let folded = fold(ctx, user, &mut loaded.conn, &plan).await?;
    let (stored, follow_up) = match folded.outcome {
        // A delta of ours committed above stays committed; only the base lost the race.
        Fold::BaseLost if objects_written == 0 => return Ok(Saved::Conflict),
        Fold::BaseLost | Fold::Superseded => (None, follow_up_of(ctx)),
        Fold::Committed {
            manifest,
            slots,
            base_etag,
        } if manifest.seq == plan.manifest.seq => (
            Some(committed_stored(manifest, *slots, base_etag, plan.retire)),
            FollowUp::None,
        ),
        // Writes committed meanwhile stay listed after the new base: the copy lacks them, so
        // it stands for the state it was built on (a later load fetches only those deltas).
        Fold::Committed { .. } => (None, follow_up_of(ctx)),
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
