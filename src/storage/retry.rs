//! The two store-call disciplines every storage step shares: repeating a call after 429s and
//! 5xx (with backoff), and the conditional put at a commit point whose lost answer is resolved
//! by `write-id`; how long they wait is [`RetryPolicy`]'s.

use super::backoff::RetryPolicy;
use super::keys::WRITE_ID_KEY;
use super::store::{ObjectStore, PutCondition, PutOutcome, StoreError, StoreErrorKind};
use crate::clock::Clock;
use crate::context::Context;
use crate::error::Error;

/// Repeats `op` after rate limiting and transient failures, waiting as `policy` says.
pub(crate) async fn with_retries<T, C: Clock, F: AsyncFnMut() -> Result<T, StoreError>>(
    clock: &C,
    policy: &RetryPolicy,
    mut op: F,
) -> Result<T, StoreError> {
    let mut retry = 0;
    loop {
        match op().await {
            Err(e) if e.is_retryable() => {
                let Some(wait) = policy.retry_wait_ms(&e.kind, retry) else {
                    return Err(e);
                };
                clock.sleep(wait).await;
                retry += 1;
            }
            other => return other,
        }
    }
}

/// Repeats `op` while it fails only because R2 was busy (429s, 5xx), until the retry policy's
/// deadline: for the writes a move must not leave half done (lifting a freeze, the switch),
/// where giving up after a store call's own repeats would leave the user frozen, every request
/// refused as `migrating`. R2 takes one write a second per key, and these writes follow the
/// move's own write of the same key within that second.
pub(crate) async fn persist<T, S: ObjectStore, C: Clock>(
    ctx: &Context<'_, S, C>,
    mut op: impl AsyncFnMut() -> Result<T, Error>,
) -> Result<T, Error> {
    let start = ctx.clock.now_ms();
    loop {
        match op().await {
            Err(Error::StorageUnavailable(e))
                if e.is_retryable()
                    && !e.write_outcome_unknown
                    && ctx.clock.now_ms() - start < f64::from(ctx.retry.deadline_ms) =>
            {
                ctx.clock.sleep(ctx.retry.base_backoff_ms.max(1)).await;
            }
            other => return other,
        }
    }
}

/// A commit point's put: `bytes` under `key` if `condition` holds. 429s and 5xx are repeated
/// with backoff; when an attempt's answer was lost, the object's `write-id` tells whether it
/// landed. An error whose outcome cannot be established says so (`write_outcome_unknown`).
pub(crate) async fn conditional_put<S: ObjectStore, C: Clock>(
    ctx: &Context<'_, S, C>,
    key: &str,
    bytes: &[u8],
    metadata: &[(&str, String)],
    condition: &PutCondition,
    write_id: &str,
) -> Result<PutOutcome, Error> {
    let clock = ctx.clock;
    let expected = match condition {
        PutCondition::IfMatch(etag) => Some(etag.as_str()),
        PutCondition::IfAbsent => None,
    };
    let mut in_doubt = false;
    let mut retry = 0;
    loop {
        match ctx.store.put(key, bytes, metadata, condition).await {
            Ok(PutOutcome::ConditionFailed) if in_doubt => {
                // An earlier attempt may have landed; if so the object is ours. If that cannot
                // be read back, re-running would risk applying the work twice.
                return match resolve(ctx, key, write_id).await {
                    Ok(Some(etag)) => Ok(PutOutcome::Stored { etag }),
                    // Not ours now, but ours may have landed and another write followed it
                    // (built on it): calling that a lost race would delete a delta the newer
                    // manifest lists, or run the work twice. Whether it landed is unknown.
                    Ok(None) => Err(Error::StorageUnavailable(StoreError {
                        write_outcome_unknown: true,
                        ..StoreError::new(
                            "put",
                            StoreErrorKind::Transient,
                            format!(
                                "{key}: an attempt's answer was lost and the object changed \
                                 since; whether that attempt landed cannot be told"
                            ),
                        )
                    })),
                    Err(mut e) => {
                        e.write_outcome_unknown = true;
                        Err(Error::StorageUnavailable(e))
                    }
                };
            }
            Ok(outcome) => return Ok(outcome),
            // Refused for the key's rate: this attempt wrote nothing, and one head says whether
            // waiting for the key's second can still help. An earlier attempt whose answer was
            // lost may be what took the second: then the object is ours and the put is done.
            // Otherwise, when the key holds something else than the condition expects, it was
            // written since the load (the write that took the second, as often as not), and
            // every repeat would fail its condition: the race is lost now, not a second later.
            Err(e) if e.kind == StoreErrorKind::RateLimited => {
                match rate_limited(ctx, key, expected, write_id, in_doubt).await {
                    Some(outcome) => return Ok(outcome),
                    None => match ctx.retry.retry_wait_ms(&e.kind, retry) {
                        Some(wait) => {
                            clock.sleep(wait).await;
                            retry += 1;
                        }
                        None => return give_up(ctx, key, expected, write_id, e, in_doubt).await,
                    },
                }
            }
            Err(e) if e.is_retryable() && ctx.retry.retry_wait_ms(&e.kind, retry).is_some() => {
                in_doubt |= e.kind == StoreErrorKind::Transient;
                let wait = ctx.retry.retry_wait_ms(&e.kind, retry).unwrap_or(0);
                clock.sleep(wait).await;
                retry += 1;
            }
            Err(e) => {
                in_doubt |= e.kind == StoreErrorKind::Transient;
                return give_up(ctx, key, expected, write_id, e, in_doubt).await;
            }
        }
    }
}

/// A commit-point put that gave up after `e`: when an earlier attempt's answer was lost
/// (`in_doubt`), the object's `write-id` may still say that attempt landed; if not, and the
/// object is not provably unchanged, the error says whether anything landed is unknown.
async fn give_up<S: ObjectStore, C: Clock>(
    ctx: &Context<'_, S, C>,
    key: &str,
    expected: Option<&str>,
    write_id: &str,
    mut e: StoreError,
    in_doubt: bool,
) -> Result<PutOutcome, Error> {
    if in_doubt {
        if let Ok(Some(etag)) = resolve(ctx, key, write_id).await {
            return Ok(PutOutcome::Stored { etag });
        }
        e.write_outcome_unknown = !unchanged(ctx, key, expected).await;
    }
    Err(Error::StorageUnavailable(e))
}

/// The stored object's etag if it carries `write_id`, i.e. if a put of ours landed; an error
/// if the object cannot be read back.
async fn resolve<S: ObjectStore, C: Clock>(
    ctx: &Context<'_, S, C>,
    key: &str,
    write_id: &str,
) -> Result<Option<String>, StoreError> {
    let head = with_retries(ctx.clock, &ctx.retry, async || ctx.store.head(key).await).await?;
    Ok(head.and_then(|h| {
        (h.metadata.get(WRITE_ID_KEY).map(String::as_str) == Some(write_id)).then_some(h.etag)
    }))
}

/// After a put of `key` was refused for the key's rate, one head: `Stored` if the object is
/// an earlier attempt of ours (`in_doubt`: one's answer was lost), `ConditionFailed` if it
/// provably holds something else than `expected` (`None`: nothing) and no attempt of ours can
/// have landed, else `None` (wait for the second; an unanswered head proves nothing).
async fn rate_limited<S: ObjectStore, C: Clock>(
    ctx: &Context<'_, S, C>,
    key: &str,
    expected: Option<&str>,
    write_id: &str,
    in_doubt: bool,
) -> Option<PutOutcome> {
    let head = ctx.store.head(key).await.ok()?;
    let etag = head.as_ref().map(|h| h.etag.as_str());
    let ours = head
        .as_ref()
        .is_some_and(|h| h.metadata.get(WRITE_ID_KEY).map(String::as_str) == Some(write_id));
    match (in_doubt, ours) {
        // Ours, and not the object the condition expects: a write-id can repeat (a move's
        // freeze over its rounds), and the object the load read is provably not our put.
        (true, true) if etag != expected => Some(PutOutcome::Stored {
            etag: etag.unwrap_or_default().to_owned(),
        }),
        (false, _) if etag != expected => Some(PutOutcome::ConditionFailed),
        _ => None,
    }
}

/// Whether the stored object is provably still the loaded version (so nothing of ours landed).
async fn unchanged<S: ObjectStore, C: Clock>(
    ctx: &Context<'_, S, C>,
    key: &str,
    loaded_etag: Option<&str>,
) -> bool {
    match with_retries(ctx.clock, &ctx.retry, async || ctx.store.head(key).await).await {
        Ok(head) => head.as_ref().map(|h| h.etag.as_str()) == loaded_etag,
        Err(_) => false,
    }
}
