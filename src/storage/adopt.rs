//! Adopting a `database.sqlite` that something outside the worker replaced: the outside file
//! becomes the base and the worker's deltas are kept under a conflict record
//! ([`super::OUTSIDE_RULE`]).

use std::collections::HashMap;

use super::commit::{manifest_bytes, manifest_metadata};
use super::join::join2;
use super::keys::{DB_VERSION_KEY, version_of};
use super::load::{Built, Step};
use super::manifest::{BaseRef, ConflictRef, Manifest, OUTSIDE_RULE, OutsideReplacement, Stored};
use super::retry::with_retries;
use super::store::{ObjectStore, PutCondition, PutOutcome};
use crate::clock::Clock;
use crate::context::Context;
use crate::error::Error;
use crate::header;
use crate::report::CacheStatus;
use crate::request::UserId;
use crate::sqlite;

/// `database.sqlite` is neither the manifest's base nor a compaction of it: something outside
/// the worker replaced it. Applies [`OUTSIDE_RULE`] and commits that (conditionally: if the
/// manifest changed meanwhile, the load starts over and nothing was decided).
#[allow(clippy::too_many_arguments)]
pub(super) async fn adopt_outside<S: ObjectStore, C: Clock>(
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
