//! Moving a user between R2 and their Durable Object, with nothing lost.
//!
//! Where a user is served is recorded on the R2 object itself (`route` metadata), so every
//! request that loads it learns it for free (a cache hit's conditional get carries the
//! metadata too). A move is three conditional writes of the same object:
//!
//! 1. **freeze**: the same bytes with `route=moving`, `If-Match` the version read. From then on
//!    every R2-route request answers 503 `migrating` (retryable), and a writer that loaded the
//!    version before fails its own conditional put, re-runs, and meets the freeze.
//! 2. **copy**: the Durable Object imports exactly that version.
//! 3. **switch**: the same bytes with `route=durable_object`, `If-Match` the frozen version;
//!    if the copy failed, the freeze is lifted instead.
//!
//! Back to R2, the object freezes itself (its queries answer `migrating`), exports one SQLite
//! file, stores it `If-Match` the version that says `durable_object` (which clears `route`),
//! and stops accepting queries. The R2 object is kept while the user lives in the object:
//! it is the state at the move, and the answer says how old it is.

use serde::Serialize;

use crate::clock::Clock;
use crate::context::{Context, with_retries};
use crate::error::Error;
use crate::request::UserId;
use crate::sqlite::Image;
use crate::store::{
    Body, DB_VERSION_KEY, Fetched, ObjectStore, PutCondition, PutOutcome, ROUTE_KEY, StoreError,
    WRITE_ID_KEY,
};

/// The R2 object left behind by a move to the Durable Object.
#[derive(Debug, Clone, Serialize)]
pub struct KeptObject {
    /// Its entity tag now.
    pub etag: String,
    /// Its `db-version`: when its contents were last written.
    pub db_version: Option<String>,
    /// How long ago that was, in ms: the age of the copy kept in R2.
    pub age_ms: Option<u64>,
    /// Its size.
    pub size_bytes: u64,
}

/// What a move to the Durable Object did.
#[derive(Debug, Clone, Serialize)]
pub struct MovedToDurableObject {
    /// Always `durable_object`.
    pub route: &'static str,
    /// The import's own report (every table verified, what was not copied and why).
    pub import: serde_json::Value,
    /// The R2 object, kept as it was at the move.
    pub r2_object: KeptObject,
}

async fn put<S: ObjectStore, C: Clock>(
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
) -> Result<crate::store::StoredObject<B>, Error> {
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

/// Times a move tries to freeze the object before giving up to its writers.
const FREEZE_ATTEMPTS: u32 = 20;

fn metadata(
    write_id: &str,
    version: Option<&String>,
    route: Option<&str>,
) -> Vec<(&'static str, String)> {
    let mut m = vec![(WRITE_ID_KEY, write_id.to_owned())];
    if let Some(v) = version {
        m.push((DB_VERSION_KEY, v.clone()));
    }
    if let Some(r) = route {
        m.push((ROUTE_KEY, r.to_owned()));
    }
    m
}

/// Reads the user's object and stores it again with `route=moving`, if no one wrote in
/// between: (its bytes, its `db-version`, the frozen etag, the write id).
async fn freeze<S: ObjectStore, C: Clock>(
    ctx: &Context<'_, S, C>,
    user: &UserId,
) -> Result<(Image, Option<String>, String, String), Error> {
    let key = user.db_key();
    // A user in the incremental layout is folded into one complete, frozen database.sqlite
    // (and their manifest retired) first; writers then meet the freeze either way.
    if let Some(frozen) = crate::layout::freeze_for_move(ctx, user).await? {
        let mut image = Image::allocate(frozen.image.len())?;
        image.bytes_mut().copy_from_slice(&frozen.image);
        return Ok((
            image,
            frozen.version.map(|v| v.to_string()),
            frozen.etag,
            frozen.write_id,
        ));
    }
    let object = with_retries(ctx.clock, &ctx.retry, async || {
        ctx.store.get(&key, ctx.max_db_bytes, None).await
    })
    .await?;
    let object = existing(object, user, ctx.max_db_bytes)?;
    crate::layout::check_route(&object.metadata)?;
    let version = object.metadata.get(DB_VERSION_KEY).cloned();
    let mut image = Image::allocate(object.body.len())?;
    object
        .body
        .read_into(image.bytes_mut())
        .await
        .map_err(Error::StorageUnavailable)?;
    let write_id = format!("{:016x}-move", ctx.nonce);
    let frozen = put(
        ctx,
        &key,
        image.bytes(),
        &metadata(&write_id, version.as_ref(), Some("moving")),
        &PutCondition::IfMatch(object.etag),
    )
    .await?;
    Ok((image, version, frozen, write_id))
}

/// Moves `user` to their Durable Object: freeze, `import` (the object copies the frozen
/// version from R2), switch. A failed import lifts the freeze and is the error.
pub async fn to_durable_object<S: ObjectStore, C: Clock>(
    ctx: &Context<'_, S, C>,
    user: &UserId,
    import: impl AsyncFnOnce() -> Result<serde_json::Value, Error>,
) -> Result<MovedToDurableObject, Error> {
    // The freeze races the user's writers; it re-reads and tries again until it wins.
    let mut attempt = 0;
    let (bytes, version, frozen, write_id) = loop {
        attempt += 1;
        match freeze(ctx, user).await {
            Err(Error::Conflict { .. }) if attempt < FREEZE_ATTEMPTS => {
                ctx.clock.sleep(ctx.retry.base_backoff_ms / 5).await;
            }
            Err(Error::Conflict { .. }) => {
                return Err(Error::Conflict { attempts: attempt });
            }
            other => break other?,
        }
    };
    let bytes = bytes.bytes();
    let key = user.db_key();
    let with_route = |route: Option<&str>| metadata(&write_id, version.as_ref(), route);
    match import().await {
        Ok(report) => {
            let etag = put(
                ctx,
                &key,
                bytes,
                &with_route(Some("durable_object")),
                &PutCondition::IfMatch(frozen),
            )
            .await?;
            let age_ms = version
                .as_deref()
                .and_then(|v| v.parse::<u64>().ok())
                .map(|v| ctx.clock.epoch_ms().saturating_sub(v));
            Ok(MovedToDurableObject {
                route: "durable_object",
                import: report,
                r2_object: KeptObject {
                    etag,
                    db_version: version,
                    age_ms,
                    size_bytes: bytes.len() as u64,
                },
            })
        }
        Err(e) => {
            // Best effort: if lifting the freeze fails too, the object stays frozen (writes
            // refused, retryable), which loses nothing; a later move or an operator lifts it.
            let _ = put(
                ctx,
                &key,
                bytes,
                &with_route(None),
                &PutCondition::IfMatch(frozen),
            )
            .await;
            Err(e)
        }
    }
}

/// Stores a Durable Object's exported image as the user's R2 object, if R2 still says the
/// user lives in the object (or has no object at all): the last step of a move back. Clears
/// `route`; the `db-version` is newer than the one it replaces.
pub async fn publish_export<S: ObjectStore, C: Clock>(
    ctx: &Context<'_, S, C>,
    user: &UserId,
    image: &[u8],
) -> Result<(String, u64), Error> {
    let key = user.db_key();
    let head = with_retries(ctx.clock, &ctx.retry, async || ctx.store.head(&key).await)
        .await
        .map_err(|e: StoreError| Error::StorageUnavailable(e))?;
    let (condition, old_version) = match &head {
        Some(h) => (
            PutCondition::IfMatch(h.etag.clone()),
            h.metadata
                .get(DB_VERSION_KEY)
                .and_then(|v| v.parse::<u64>().ok()),
        ),
        None => (PutCondition::IfAbsent, None),
    };
    let version = ctx
        .clock
        .epoch_ms()
        .max(old_version.map_or(0, |v| v.saturating_add(1)));
    let metadata = [
        (DB_VERSION_KEY, version.to_string()),
        (WRITE_ID_KEY, format!("{:016x}-export", ctx.nonce)),
    ];
    let etag = put(ctx, &key, image, &metadata, &condition).await?;
    Ok((etag, version))
}

#[cfg(test)]
mod tests {
    #[cfg(all(target_family = "wasm", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::store::MemoryStore;
    use crate::testing::StepClock;
    use crate::{fixtures, pipeline};

    const KEY: &str = "a/database.sqlite";

    fn user() -> UserId {
        UserId::parse(Some("a")).unwrap()
    }

    /// A move freezes R2 writes while the copy runs, switches the route after it, and keeps
    /// the object; a request to the R2 route is then told where the user lives.
    #[test]
    fn move_freezes_copies_switches() {
        let store = MemoryStore::new();
        let demo = fixtures::demo_database().unwrap();
        store.insert(KEY, &demo, &[(DB_VERSION_KEY, "1700000000000".into())]);
        let clock = StepClock::stepping(1.0);
        let ctx = Context::new(&store, &clock);
        let moved = pollster::block_on(to_durable_object(&ctx, &user(), async || {
            // During the copy the R2 route refuses, retryable.
            let during = pollster::block_on(pipeline::serve(
                &ctx,
                &user(),
                crate::request::SaveMode::Always,
                &mut pipeline::ListTables,
            ))
            .unwrap_err();
            assert_eq!((during.status(), during.code()), (503, "migrating"));
            Ok(serde_json::json!({"success": true}))
        }))
        .unwrap();
        assert_eq!(
            store.bytes(KEY).unwrap(),
            demo,
            "the R2 object is kept as it was"
        );
        assert_eq!(store.metadata(KEY).unwrap()[ROUTE_KEY], "durable_object");
        assert!(moved.r2_object.age_ms.is_some());
        let after = pollster::block_on(pipeline::serve(
            &ctx,
            &user(),
            crate::request::SaveMode::Always,
            &mut pipeline::ListTables,
        ))
        .unwrap_err();
        assert_eq!(after.code(), "served_by_durable_object");
        // Moving again is refused; moving back publishes and clears the route.
        let again = pollster::block_on(to_durable_object(&ctx, &user(), async || {
            Ok(serde_json::json!({}))
        }))
        .unwrap_err();
        assert_eq!(again.code(), "served_by_durable_object");
        let (_, version) = pollster::block_on(publish_export(&ctx, &user(), &demo)).unwrap();
        assert!(version > 1_700_000_000_000);
        assert!(!store.metadata(KEY).unwrap().contains_key(ROUTE_KEY));
        assert!(
            pollster::block_on(pipeline::serve(
                &ctx,
                &user(),
                crate::request::SaveMode::Auto,
                &mut pipeline::ListTables,
            ))
            .is_ok()
        );
    }

    /// A failed copy lifts the freeze: the user stays on R2 with nothing changed.
    #[test]
    fn failed_copy_lifts_the_freeze() {
        let store = MemoryStore::new();
        let demo = fixtures::demo_database().unwrap();
        store.insert(KEY, &demo, &[]);
        let clock = StepClock::stepping(1.0);
        let ctx = Context::new(&store, &clock);
        let err = pollster::block_on(to_durable_object(&ctx, &user(), async || {
            Err(Error::Internal {
                detail: "import failed".into(),
            })
        }))
        .unwrap_err();
        assert_eq!(err.code(), "internal");
        assert_eq!(store.bytes(KEY).unwrap(), demo);
        assert!(!store.metadata(KEY).unwrap().contains_key(ROUTE_KEY));
    }
}
