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
