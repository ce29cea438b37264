//! A move's reads and writes of the user's R2 object: the freeze (`route=moving`, `If-Match`
//! the version read; an incremental user is folded and retired first), the switch or the
//! lift of the freeze, the import's read of the frozen object, and the way back's conditional
//! put of the exported image. The move's steps and their order are in `crate::migrate`.

use std::collections::HashMap;

use super::keys::{DB_VERSION_KEY, Home, WRITE_ID_KEY, check_route, metadata, next_version};
use super::retry::{conditional_put, persist, with_retries};
use super::store::{
    Body, Fetched, ObjectHead, ObjectStore, PutCondition, PutOutcome, StoredObject,
};
use crate::clock::Clock;
use crate::context::Context;
use crate::error::Error;
use crate::request::UserId;
use crate::sqlite::Image;

async fn put_or_conflict<S: ObjectStore, C: Clock>(
    ctx: &Context<'_, S, C>,
    key: &str,
    bytes: &[u8],
    metadata: &[(&str, String)],
    condition: &PutCondition,
) -> Result<String, Error> {
    match with_retries(ctx.clock, &ctx.retry, async || {
        ctx.store.put(key, bytes, metadata, condition).await
    })
    .await?
    {
        PutOutcome::Stored { etag } => Ok(etag),
        PutOutcome::ConditionFailed => Err(Error::Conflict { attempts: 1 }),
    }
}

/// The object a user must already have in R2 (to move it, or to import it into their Durable
/// Object): 404 `user_not_found` if missing, 413 if over `max_db_bytes`.
pub fn existing<B>(
    fetched: Fetched<B>,
    user: &UserId,
    max_db_bytes: u64,
) -> Result<StoredObject<B>, Error> {
    match fetched {
        Fetched::Found(object) => Ok(object),
        Fetched::Missing | Fetched::NotModified { .. } => Err(Error::UserNotFound {
            user: user.as_str().to_owned(),
            place: "R2",
        }),
        Fetched::TooLarge { size_bytes } => Err(Error::DatabaseTooLarge {
            size_bytes,
            max_bytes: max_db_bytes,
        }),
    }
}

/// Puts `bytes` as the user's object saying it is served at `home` (R2 again: no `route`),
/// `If-Match` the frozen etag, keeping the move's write id and `db-version`: the switch to the
/// Durable Object, or the lift of a freeze whose copy failed.
pub(crate) async fn set_route<S: ObjectStore, C: Clock>(
    ctx: &Context<'_, S, C>,
    user: &UserId,
    bytes: &[u8],
    write_id: &str,
    version: Option<&str>,
    home: Home,
    frozen: String,
) -> Result<String, Error> {
    let (metadata, condition) = (
        metadata(write_id, version, home),
        PutCondition::IfMatch(frozen),
    );
    persist(ctx, async || {
        put_or_conflict(ctx, &user.db_key(), bytes, &metadata, &condition).await
    })
    .await
}

/// Reads the user's object and stores it again with `route=moving`, if no one wrote in
/// between: (its bytes, its `db-version`, the frozen etag, the write id).
pub(crate) async fn freeze<S: ObjectStore, C: Clock>(
    ctx: &Context<'_, S, C>,
    user: &UserId,
) -> Result<(Image, Option<String>, String, String), Error> {
    let key = user.db_key();
    // A user in the incremental layout is folded into one complete, frozen database.sqlite
    // (and their manifest retired) first; writers then meet the freeze either way.
    if let Some(frozen) = super::compact::freeze_for_move(ctx, user).await? {
        let mut image = Image::allocate(frozen.image.len())?;
        image.bytes_mut().copy_from_slice(&frozen.image);
        return Ok((
            image,
            frozen.version.map(|v| v.to_string()),
            frozen.etag,
            frozen.write_id,
        ));
    }
    let (image, read, etag) = read_whole(ctx, user, check_route).await?;
    let version = read.get(DB_VERSION_KEY).cloned();
    let write_id = format!("{:016x}-move", ctx.nonce);
    let frozen = put_or_conflict(
        ctx,
        &key,
        image.bytes(),
        &metadata(&write_id, version.as_deref(), Home::Moving),
        &PutCondition::IfMatch(etag),
    )
    .await?;
    Ok((image, version, frozen, write_id))
}

/// Takes over a freeze an earlier move completed and never switched or lifted (its isolate
/// died mid-copy, say): `database.sqlite` says `route=moving` and no live manifest is left
/// (retired, or none), so the object is the user's whole, final state and no write can
/// commit. Returns what [`freeze`] returns, so the move goes on from its copy step; the
/// switch stays `If-Match` the frozen object, so a move still running beside it makes one of
/// the two switches fail, never both land. A freeze stopped before its fold (the manifest
/// itself says `route=moving`) is not taken over: `Migrating`.
pub(crate) async fn resume_frozen<S: ObjectStore, C: Clock>(
    ctx: &Context<'_, S, C>,
    user: &UserId,
) -> Result<(Image, Option<String>, String, String), Error> {
    if let Some((m, _, _)) = super::load::fetch_manifest(ctx, user).await?
        && !m.retired
    {
        return Err(Error::Migrating);
    }
    let (image, metadata, etag) = read_whole(ctx, user, |m| match Home::of(m) {
        Home::Moving => Ok(()),
        // Lifted or switched meanwhile: the move starts over from what is there now.
        Home::R2 | Home::DurableObject => Err(Error::Conflict { attempts: 1 }),
    })
    .await?;
    let version = metadata.get(DB_VERSION_KEY).cloned();
    let write_id = metadata.get(WRITE_ID_KEY).cloned().unwrap_or_default();
    Ok((image, version, etag, write_id))
}

/// The user's `database.sqlite`, which must exist, read whole into an image once `check`
/// allows its metadata (refused before the body is read): (image, metadata, etag).
async fn read_whole<S: ObjectStore, C: Clock>(
    ctx: &Context<'_, S, C>,
    user: &UserId,
    check: impl FnOnce(&HashMap<String, String>) -> Result<(), Error>,
) -> Result<(Image, HashMap<String, String>, String), Error> {
    let object = with_retries(ctx.clock, &ctx.retry, async || {
        ctx.store.get(&user.db_key(), ctx.max_db_bytes, None).await
    })
    .await?;
    let object = existing(object, user, ctx.max_db_bytes)?;
    check(&object.metadata)?;
    let mut image = Image::allocate(object.body.len())?;
    object
        .body
        .read_into(image.bytes_mut())
        .await
        .map_err(Error::StorageUnavailable)?;
    Ok((image, object.metadata, object.etag))
}

/// The user's R2 object for a Durable Object's import, once `check` (the object's rule,
/// [`crate::migrate::check_import`]) allows its metadata: (the object, the move's write id).
/// Refused before its body is read.
pub async fn fetch_frozen<S: ObjectStore, C: Clock>(
    ctx: &Context<'_, S, C>,
    user: &UserId,
    check: impl FnOnce(&HashMap<String, String>) -> Result<String, Error>,
) -> Result<(StoredObject<S::Body>, String), Error> {
    let object = with_retries(ctx.clock, &ctx.retry, async || {
        ctx.store.get(&user.db_key(), ctx.max_db_bytes, None).await
    })
    .await?;
    let object = existing(object, user, ctx.max_db_bytes)?;
    let write_id = check(&object.metadata)?;
    Ok((object, write_id))
}

/// The user's R2 object's version and metadata (what
/// [`check_serving`](crate::migrate::check_serving) and
/// [`check_export`](crate::migrate::check_export) look at), or `None`.
pub async fn head_of<S: ObjectStore, C: Clock>(
    ctx: &Context<'_, S, C>,
    user: &UserId,
) -> Result<Option<ObjectHead>, Error> {
    Ok(with_retries(ctx.clock, &ctx.retry, async || {
        ctx.store.head(&user.db_key()).await
    })
    .await?)
}

/// The next step of a move back to R2, as [`check_export`](crate::migrate::check_export)
/// decides it: what [`publish_export`] stores, if anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportStep {
    /// Export and store the image as `write_id`, `If-Match` R2's object `etag`.
    Publish {
        /// The export's write id (the same when an interrupted export runs again).
        write_id: String,
        /// The object that says the user lives in the Durable Object.
        etag: String,
        /// Its `db-version`, which the export's must pass.
        db_version: Option<u64>,
    },
    /// An earlier run of this export stored it (its answer was lost): only mark it done.
    AlreadyPublished {
        /// The stored object.
        etag: String,
        /// Its `db-version`.
        db_version: Option<u64>,
    },
}

/// Stores a Durable Object's exported image as the user's R2 object (the last step of a move
/// back), `If-Match` the object [`check_export`](crate::migrate::check_export) found saying
/// the user lives in the Durable Object: clears `route`, with a `db-version` newer than the
/// one it replaces. A lost answer is resolved by `write_id`; a changed object is a conflict,
/// with nothing written.
pub async fn publish_export<S: ObjectStore, C: Clock>(
    ctx: &Context<'_, S, C>,
    user: &UserId,
    image: &[u8],
    step: &ExportStep,
) -> Result<(String, u64), Error> {
    let (write_id, etag, old_version) = match step {
        ExportStep::AlreadyPublished { etag, db_version } => {
            return Ok((etag.clone(), db_version.unwrap_or(0)));
        }
        ExportStep::Publish {
            write_id,
            etag,
            db_version,
        } => (write_id, etag, db_version),
    };
    let version = next_version(ctx.clock.epoch_ms(), *old_version);
    let metadata = [
        (DB_VERSION_KEY, version.to_string()),
        (WRITE_ID_KEY, write_id.clone()),
    ];
    match conditional_put(
        ctx,
        &user.db_key(),
        image,
        &metadata,
        &PutCondition::IfMatch(etag.clone()),
        write_id,
    )
    .await?
    {
        PutOutcome::Stored { etag } => Ok((etag, version)),
        PutOutcome::ConditionFailed => Err(Error::Conflict { attempts: 1 }),
    }
}
