//! What the core runs against: the store, the clock, and the settings in force.

use crate::delay::Thresholds;
use crate::storage::cache::DbCache;
use crate::storage::{CompactionPolicy, Layout, RetryPolicy};

/// What the pipeline runs against.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a, S, C> {
    /// Where databases live.
    pub store: &'a S,
    /// What spans are measured with, and what waits between retries.
    pub clock: &'a C,
    /// Delay thresholds in force.
    pub thresholds: Thresholds,
    /// Largest object that will be downloaded (`config::load_max_bytes` of `MAX_DB_BYTES`).
    pub max_db_bytes: u64,
    /// Largest database a write may produce (`MAX_DB_BYTES`); a stored database already
    /// larger may keep its size, never grow.
    pub max_write_bytes: u64,
    /// Databases kept open between requests, if enabled.
    pub cache: Option<&'a DbCache>,
    /// Retries of store calls and of the whole request.
    pub retry: RetryPolicy,
    /// A value unique to this request (random in the worker), so its writes can be told
    /// apart from everyone else's.
    pub nonce: u64,
    /// How writes are stored (`LAYOUT`).
    pub layout: Layout,
    /// When deltas are folded into a new base, and how old an orphan must be to be swept.
    pub compaction: CompactionPolicy,
    /// The request's memory reservation ([`crate::admission`]): its results are charged to
    /// it while its statements run. `None`: not admitted (host tests, the Durable Object).
    pub memory: Option<&'a std::rc::Rc<crate::admission::Reservation>>,
}

impl<'a, S, C> Context<'a, S, C> {
    /// A context with the spec's thresholds, no cache, the default retries and size limit, and
    /// the layout and compaction policy a deployment gets when `LAYOUT` is unset.
    pub fn new(store: &'a S, clock: &'a C) -> Self {
        Self {
            store,
            clock,
            thresholds: Thresholds::default(),
            max_db_bytes: crate::config::load_max_bytes(crate::config::DEFAULT_MAX_DB_BYTES),
            max_write_bytes: crate::config::DEFAULT_MAX_DB_BYTES,
            cache: None,
            retry: RetryPolicy::default(),
            nonce: 0,
            layout: Layout::default(),
            compaction: CompactionPolicy::default(),
            memory: None,
        }
    }
}

#[cfg(test)]
mod tests {
    #[cfg(all(target_family = "wasm", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::config::Config;
    use crate::storage::MemoryStore;

    /// Tests built on `Context::new` run what a deployment runs: its layout and compaction
    /// policy are those of an unset `LAYOUT` and of the shipped `wrangler.toml`.
    #[test]
    fn new_context_uses_the_production_layout() {
        let (store, clock) = (MemoryStore::new(), crate::testing::StepClock::frozen());
        let ctx = Context::new(&store, &clock);
        let config = Config::default();
        assert_eq!(
            (ctx.layout, ctx.compaction),
            (config.layout, config.compaction)
        );
        let shipped = include_str!("../wrangler.toml")
            .lines()
            .find_map(|line| line.trim().strip_prefix("LAYOUT = "))
            .expect("wrangler.toml sets LAYOUT");
        assert_eq!(Layout::parse(shipped.trim_matches('"')), Some(ctx.layout));
    }
}
