//! Adopting a `database.sqlite` that something outside the worker replaced: the outside file
//! becomes the base and the worker's deltas are kept under a conflict record
//! ([`super::OUTSIDE_RULE`]). The load only decides this ([`Adoption`]); the save step's commit
//! writes it, conditional on the manifest the load read, as one commit point.

use std::collections::HashMap;

use super::join::join2;
use super::keys::{DB_VERSION_KEY, version_of};
use super::loaded::{Adoption, Loaded, Step};
use super::manifest::{
    BaseRef, ConflictRef, Manifest, OUTSIDE_RULE, OutsideReplacement, Slots, Stored,
};
use super::retry::with_retries;
use super::store::ObjectStore;
use crate::clock::Clock;
use crate::context::Context;
use crate::error::Error;
use crate::header;
use crate::report::CacheStatus;
use crate::request::UserId;
use crate::sqlite;

/// `database.sqlite` is neither the manifest's base nor a compaction of it: something outside
/// the worker replaced it. Decides [`OUTSIDE_RULE`] for the save step to commit; writes
/// nothing. If either object changed since it was read, the load starts over.
#[allow(clippy::too_many_arguments)]
pub(super) async fn adopt_outside<S: ObjectStore, C: Clock>(
    ctx: &Context<'_, S, C>,
    user: &UserId,
    image: sqlite::Image,
    found_etag: String,
    found_metadata: HashMap<String, String>,
    m: Manifest,
    m_slots: Slots,
    miss: CacheStatus,
) -> Result<Step<Loaded>, Error> {
    let base_key = user.db_key();
    // Both reads must still be current: a stale manifest explains a newer base, and a stale
    // base (read before a compaction replaced it, while the manifest was read after) explains
    // a manifest that lists a newer one. Either decides nothing: the load starts over.
    let (newest, base_head) = join2(
        still_newest(ctx, user, &m_slots),
        with_retries(ctx.clock, &ctx.retry, async || {
            ctx.store.head(&base_key).await
        }),
    )
    .await;
    if !newest? || base_head?.as_ref().map(|h| h.etag.as_str()) != Some(found_etag.as_str()) {
        return Ok(Step::Restart);
    }
    let found = (
        header::change_counter(image.bytes()),
        image.bytes().len() as u64,
    );
    let opened = sqlite::open(image)?;
    let record_id = format!("{:016x}-adopt-{}", ctx.nonce, m.seq + 1);
    let kept: Vec<String> = m.deltas.iter().map(|d| d.key.clone()).collect();
    let record = if kept.is_empty() {
        None
    } else {
        let key = user.conflict_key(m.seq, &record_id);
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
        Some((key, bytes))
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
    if let Some((key, _)) = &record {
        next.conflicts.push(ConflictRef {
            record: key.clone(),
            deltas: kept.clone(),
        });
    }
    let outside = OutsideReplacement {
        rule: OUTSIDE_RULE,
        expected_base: m.base.etag.clone(),
        found_base: found_etag.clone(),
        record: record.as_ref().map(|(key, _)| key.clone()),
        deltas_kept: kept.len(),
    };
    let mut loaded = Loaded::built(
        opened.conn,
        Stored::Incremental {
            manifest: Box::new(m),
            slots: m_slots,
        },
        Some(found_etag),
        version_of(&found_metadata),
        opened.header.wal_mode,
        miss,
    )
    .parsed(0.0);
    loaded.outside = Some(outside);
    loaded.adoption = Some(Adoption { next, record });
    Ok(Step::Done(loaded))
}

/// Whether no commit followed the one `slots` was read with: the slot the next commit must
/// be put in still has the etag it had then.
pub(super) async fn still_newest<S: ObjectStore, C: Clock>(
    ctx: &Context<'_, S, C>,
    user: &UserId,
    slots: &Slots,
) -> Result<bool, Error> {
    let key = user.manifest_key(slots.next_slot());
    let head = with_retries(ctx.clock, &ctx.retry, async || ctx.store.head(&key).await).await?;
    Ok(head.as_ref().map(|h| h.etag.as_str()) == slots.next_etag())
}
