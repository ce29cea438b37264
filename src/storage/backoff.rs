//! How hard storage tries: how often a store call is repeated and how long it waits, and how
//! long a write keeps running again after losing a race. Plain values and arithmetic; the
//! calls that follow them are in [`super::retry`].

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
    /// 4 repeats of a store call after a 5xx, waiting 250, 500, 1000, 1000 ms; after a 429
    /// (R2 takes about one write per second per key) 5 repeats 250 ms apart, which straddle
    /// its window ([`RetryPolicy::retry_wait_ms`]); runs of the whole write after lost races
    /// (or a store call that stayed rate limited) for up to 10 s.
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

    /// The wait before repeat `retry + 1` of a store call that failed as `kind`, or `None`
    /// when it has been repeated enough. A 5xx waits doubling ([`Self::backoff_ms`]), up to
    /// `store_retries` times. A 429 means the key was written less than a second ago and
    /// frees itself within that second: it is asked again every `base_backoff_ms` until the
    /// waits add up to a little more than `max_backoff_ms` (250 ms five times by default),
    /// so a refused put goes through as soon as the key's second ends instead of after a
    /// doubled wait (a commit slot's put otherwise stalled the write queue up to 1.75 s).
    #[must_use]
    pub fn retry_wait_ms(&self, kind: &super::StoreErrorKind, retry: u32) -> Option<u32> {
        match kind {
            super::StoreErrorKind::RateLimited => {
                let step = self.base_backoff_ms.max(1);
                // No repeats at all stays no repeats (tests turn them off).
                let most = match self.store_retries {
                    0 => 0,
                    n => (self.max_backoff_ms / step + 1).max(n),
                };
                (retry < most).then_some(step)
            }
            _ => (retry < self.store_retries).then(|| self.backoff_ms(retry)),
        }
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

#[cfg(test)]
mod tests {
    #[cfg(all(target_family = "wasm", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::storage::StoreErrorKind;

    /// A 429 is asked again every 250 ms for a little over R2's one-second window; a 5xx
    /// backs off doubling, four times.
    #[test]
    fn a_429_polls_the_window_and_a_5xx_backs_off() {
        let policy = RetryPolicy::default();
        let waits = |kind: StoreErrorKind| -> Vec<u32> {
            (0..10)
                .map_while(|r| policy.retry_wait_ms(&kind, r))
                .collect()
        };
        assert_eq!(waits(StoreErrorKind::RateLimited), [250; 5]);
        assert!(waits(StoreErrorKind::RateLimited).iter().sum::<u32>() > 1000);
        assert_eq!(waits(StoreErrorKind::Transient), [250, 500, 1000, 1000]);
        let none = RetryPolicy {
            store_retries: 0,
            ..policy
        };
        assert_eq!(none.retry_wait_ms(&StoreErrorKind::RateLimited, 0), None);
    }
}
