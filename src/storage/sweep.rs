//! The sweep: deleting delta objects no committed manifest references, once they are older
//! than the grace period. A step of its own, after compaction.

use serde::Serialize;

use super::load::fetch_manifest;
use super::retry::with_retries;
use super::store::ObjectStore;
use crate::clock::Clock;
use crate::context::Context;
use crate::error::Error;
use crate::request::UserId;

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
