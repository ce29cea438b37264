//! The two store-call disciplines every storage step shares: repeating a call after 429s and
//! 5xx (with backoff), and the conditional put at a commit point whose lost answer is resolved
//! by `write-id`; and how long a write keeps running again after losing a race.

use super::keys::WRITE_ID_KEY;
use super::store::{ObjectStore, PutCondition, PutOutcome, StoreError, StoreErrorKind};
use crate::clock::Clock;
use crate::context::Context;
use crate::error::Error;

/// How hard the save tries before giving up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Times a store call is repeated after a 429 or 5xx.
    pub store_retries: u32,
    /// First wait before repeating a store call; doubled each time.
    pub base_backoff_ms: u32,
    /// Longest single wait.
    pub max_backoff_ms: u32,
    /// How long a write keeps running again after losing the race to another writer before it
    /// gives up with nothing written (from its first run).
    pub deadline_ms: u32,
    /// Seeds the jitter of the waits between runs, so writers that lost the same race do not
    /// retry in step (the request's nonce in the worker).
    pub jitter_seed: u64,
}

impl Default for RetryPolicy {
    /// 4 repeats of a store call waiting 250, 500, 1000, 1000 ms (R2 takes about one write
    /// per second per key, so the waits straddle its window); runs of the whole write after
    /// lost races (or a store call that stayed rate limited) for up to 10 s.
    fn default() -> Self {
        Self {
            store_retries: 4,
            base_backoff_ms: 250,
            max_backoff_ms: 1000,
            deadline_ms: 10_000,
            jitter_seed: 0,
        }
    }
}

impl RetryPolicy {
    pub(crate) fn backoff_ms(&self, retry: u32) -> u32 {
        self.base_backoff_ms
            .saturating_mul(1 << retry.min(16))
            .min(self.max_backoff_ms)
    }

    /// Whether a write that ran `runs` times over `elapsed_ms` and lost (a race, or a store
    /// call that stayed rate limited) runs again, and after what wait: only while the wait
    /// still ends before the deadline.
    #[must_use]
    pub fn rerun_wait_ms(&self, runs: u32, elapsed_ms: f64) -> Option<u32> {
        let wait = self.rerun_backoff_ms(runs);
        (elapsed_ms + f64::from(wait) < f64::from(self.deadline_ms)).then_some(wait)
    }

    /// The wait before run `run + 1` of a write that lost a race: "equal jitter" over a
    /// window doubling from a fifth of `base_backoff_ms` up to `max_backoff_ms` (half fixed,
    /// half drawn from the seed), so racing writers spread out instead of colliding again.
    #[must_use]
    pub fn rerun_backoff_ms(&self, run: u32) -> u32 {
        let window = (self.base_backoff_ms / 5)
            .max(1)
            .saturating_mul(1 << run.min(16))
            .min(self.max_backoff_ms);
        let half = window / 2;
        let draw = splitmix(self.jitter_seed ^ u64::from(run).wrapping_mul(0x9E37_79B9));
        half + (draw % u64::from(half.max(1) + 1)) as u32
    }
}

/// One step of SplitMix64 (for jitter; not for anything secret).
fn splitmix(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Repeats `op` after rate limiting and transient failures, waiting as `policy` says.
pub(crate) async fn with_retries<T, C: Clock, F: AsyncFnMut() -> Result<T, StoreError>>(
    clock: &C,
    policy: &RetryPolicy,
    mut op: F,
) -> Result<T, StoreError> {
    let mut retry = 0;
    loop {
        match op().await {
            Err(e) if e.is_retryable() && retry < policy.store_retries => {
                clock.sleep(policy.backoff_ms(retry)).await;
                retry += 1;
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
                    Ok(None) => Ok(PutOutcome::ConditionFailed),
                    Err(mut e) => {
                        e.write_outcome_unknown = true;
                        Err(Error::StorageUnavailable(e))
                    }
                };
            }
            Ok(outcome) => return Ok(outcome),
            Err(e) if e.is_retryable() && retry < ctx.retry.store_retries => {
                in_doubt |= e.kind == StoreErrorKind::Transient;
                clock.sleep(ctx.retry.backoff_ms(retry)).await;
                retry += 1;
            }
            Err(mut e) => {
                in_doubt |= e.kind == StoreErrorKind::Transient;
                if in_doubt {
                    if let Ok(Some(etag)) = resolve(ctx, key, write_id).await {
                        return Ok(PutOutcome::Stored { etag });
                    }
                    e.write_outcome_unknown = !unchanged(ctx, key, expected).await;
                }
                return Err(Error::StorageUnavailable(e));
            }
        }
    }
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
