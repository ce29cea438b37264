//! Settings from `wrangler.toml` vars and secrets, parsed and checked in one place.

use crate::delay::Thresholds;
use crate::error::Error;
use crate::exec::Limits;
pub use crate::exec::{DEFAULT_MAX_RESULT_BYTES, DEFAULT_MAX_STATEMENTS, DEFAULT_QUERY_MAX_STEPS};
use crate::trend::TrendSettings;

/// Default largest database the worker will load: see README "Limits" for the measurement.
pub const DEFAULT_MAX_DB_BYTES: u64 = 32 * 1024 * 1024;

/// Default budget of the version cache: enough to keep a 20 MiB database open, while two
/// concurrent cache misses at `MAX_DB_BYTES` still fit the isolate's 128 MB (the arithmetic
/// is in BENCHMARKS.md "Memory").
pub const DEFAULT_CACHE_MAX_BYTES: u64 = 32 * 1024 * 1024;

/// Default largest request body (`MAX_REQUEST_BYTES`).
pub const DEFAULT_MAX_REQUEST_BYTES: u64 = 1024 * 1024;
/// Everything a request needs to know about how the worker is configured.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Bearer token clients must present (`AUTH_TOKEN` secret); `None` if not configured.
    pub auth_token: Option<String>,
    /// `ALLOW_ANONYMOUS=true`: serve requests without a token (local development).
    pub allow_anonymous: bool,
    /// `MAX_DB_BYTES`: objects larger than this are refused with 413 before download.
    pub max_db_bytes: u64,
    /// `CACHE_MAX_BYTES`: budget of the version cache; 0 turns it off.
    pub cache_max_bytes: u64,
    /// Delay thresholds in force (`SYNC_TIME_*_MS`).
    pub thresholds: Thresholds,
    /// Trend window and ratio (`SYNC_TIME_WINDOW`, `SYNC_TIME_WARNING_RATIO`).
    pub trend: TrendSettings,
    /// Secret that signs per-user tokens (`TOKEN_SECRET`); `None` turns them off.
    pub token_secret: Option<String>,
    /// `MAX_REQUEST_BYTES`: largest request body.
    pub max_request_bytes: u64,
    /// `MAX_STATEMENTS`, `MAX_RESULT_BYTES`, `QUERY_MAX_STEPS`: the executor's guard rails.
    pub limits: Limits,
    /// `SELF_TEST=true`: serve `POST /__self-test/store`, which runs the object-store contract
    /// against the real R2 binding (the end-to-end suite turns it on; off by default).
    pub self_test: bool,
    /// `AUTO_MIGRATE=true`: a user whose trend recommends `migrate_to_durable_object` is moved
    /// to their Durable Object at their next request. Off by default.
    pub auto_migrate: bool,
    /// `LAYOUT`: `single` (default) or `incremental`; how writes are stored.
    pub layout: crate::storage::Layout,
    /// `COMPACT_AFTER_DELTAS`, `COMPACT_DELTA_PERCENT`, `SWEEP_GRACE_MS`, `COMMIT_SLOTS`: when
    /// deltas are folded, when orphans go, how many keys commits rotate over.
    pub compaction: crate::storage::CompactionPolicy,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            auth_token: None,
            allow_anonymous: false,
            max_db_bytes: DEFAULT_MAX_DB_BYTES,
            cache_max_bytes: DEFAULT_CACHE_MAX_BYTES,
            thresholds: Thresholds::default(),
            trend: TrendSettings::default(),
            token_secret: None,
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            limits: Limits::default(),
            self_test: false,
            auto_migrate: false,
            layout: crate::storage::Layout::default(),
            compaction: crate::storage::CompactionPolicy::default(),
        }
    }
}

fn parse_bool(name: &str, v: &str) -> Result<bool, Error> {
    match v.trim() {
        "true" | "1" => Ok(true),
        "false" | "0" | "" => Ok(false),
        _ => Err(Error::Misconfigured {
            detail: format!("{name}={v:?} is not true or false"),
        }),
    }
}

fn parse_positive(name: &str, v: &str) -> Result<u64, Error> {
    v.trim()
        .parse()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| Error::Misconfigured {
            detail: format!("{name}={v:?} is not a positive whole number"),
        })
}

/// Wasm memory the worker needs before any request (code, statics, stack, SQLite's global
/// state, the runtime's buffers): measured at 1.9 MB on a cold isolate (`memory` in the
/// report), with room to spare.
pub const FIXED_HEADROOM_BYTES: u64 = 4 * 1024 * 1024;

/// The memory of an isolate: what one request may make wasm memory grow to.
pub const ISOLATE_MEMORY_BYTES: u64 = 128 * 1000 * 1000;

/// The largest stored database that is still loaded: an eighth over `max_db_bytes`.
///
/// A database that grew past `MAX_DB_BYTES` elsewhere (an outside writer, an older, higher
/// limit) stays readable, exportable, movable and shrinkable (writes may not grow it); only
/// past this ceiling, which the memory budget is sized for, is it refused at load.
#[must_use]
pub fn load_max_bytes(max_db_bytes: u64) -> u64 {
    max_db_bytes.saturating_add(max_db_bytes / 8)
}

impl Config {
    /// The most wasm memory one request can make the isolate hold: the database it loads
    /// (up to [`load_max_bytes`], with the image's headroom), the version cache's budget,
    /// SQLite's heap limit, the result (charged at three times its payload while it is built,
    /// which covers its values, their JSON form and the answer's text, escapes included), the
    /// request body (and its parsed form), and a fixed headroom. 118 MB at the defaults.
    ///
    /// For one request at a time; concurrent requests each add their own database, result
    /// and body (admission across requests is the caller's to decide with this number).
    #[must_use]
    pub fn memory_budget_bytes(&self) -> u64 {
        crate::admission::image_bytes(load_max_bytes(self.max_db_bytes))
            + self.cache_max_bytes
            + crate::sqlite::SQLITE_HEAP_MAX_BYTES
            + 3 * self.limits.max_result_bytes
            + crate::admission::body_bytes(self.max_request_bytes)
            + FIXED_HEADROOM_BYTES
    }

    /// What the requests an isolate runs at once may hold together ([`crate::admission`]):
    /// the memory budget less the parts every request shares (the version cache's budget,
    /// SQLite's heap limit, the fixed headroom). It is the largest single request's own
    /// memory (its database at the load ceiling, result and body), so one request alone is
    /// always admitted, and many small ones share it. 67 MB at the defaults.
    #[must_use]
    pub fn admission_capacity_bytes(&self) -> u64 {
        self.memory_budget_bytes()
            - self.cache_max_bytes
            - crate::sqlite::SQLITE_HEAP_MAX_BYTES
            - FIXED_HEADROOM_BYTES
    }

    /// Reads settings through `lookup` (var or secret name → value); unset means default.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, Error> {
        let misconfigured = |name: &str, value: &str, expected: &str| Error::Misconfigured {
            detail: format!("{name}={value:?} is not {expected}"),
        };
        let mut config = Self {
            auth_token: lookup("AUTH_TOKEN").filter(|t| !t.is_empty()),
            token_secret: lookup("TOKEN_SECRET").filter(|t| !t.is_empty()),
            ..Self::default()
        };
        if let Some(v) = lookup("ALLOW_ANONYMOUS") {
            config.allow_anonymous = parse_bool("ALLOW_ANONYMOUS", &v)?;
        }
        if let Some(v) = lookup("AUTO_MIGRATE") {
            config.auto_migrate = parse_bool("AUTO_MIGRATE", &v)?;
        }
        if let Some(v) = lookup("LAYOUT") {
            config.layout = crate::storage::Layout::parse(&v)
                .ok_or_else(|| misconfigured("LAYOUT", &v, "single or incremental"))?;
        }
        if let Some(v) = lookup("COMPACT_AFTER_DELTAS") {
            config.compaction.max_deltas =
                usize::try_from(parse_positive("COMPACT_AFTER_DELTAS", &v)?).unwrap_or(usize::MAX);
        }
        if let Some(v) = lookup("COMPACT_DELTA_PERCENT") {
            config.compaction.max_delta_percent = parse_positive("COMPACT_DELTA_PERCENT", &v)?;
        }
        if let Some(v) = lookup("SWEEP_GRACE_MS") {
            config.compaction.sweep_grace_ms = v
                .trim()
                .parse()
                .ok()
                .filter(|ms| *ms >= crate::storage::MIN_SWEEP_GRACE_MS)
                .ok_or_else(|| {
                    misconfigured(
                        "SWEEP_GRACE_MS",
                        &v,
                        "a whole number of ms, at least 60000 (a commit's delta is unreferenced until its manifest put lands)",
                    )
                })?;
        }
        if let Some(v) = lookup("COMMIT_SLOTS") {
            config.compaction.commit_slots = v
                .trim()
                .parse()
                .ok()
                .filter(|n| (1..=crate::storage::MAX_COMMIT_SLOTS).contains(n))
                .ok_or_else(|| misconfigured("COMMIT_SLOTS", &v, "a whole number from 1 to 5"))?;
        }
        if let Some(v) = lookup("SELF_TEST") {
            config.self_test = parse_bool("SELF_TEST", &v)?;
        }
        if let Some(v) = lookup("MAX_REQUEST_BYTES") {
            config.max_request_bytes = parse_positive("MAX_REQUEST_BYTES", &v)?;
        }
        if let Some(v) = lookup("MAX_STATEMENTS") {
            config.limits.max_statements =
                usize::try_from(parse_positive("MAX_STATEMENTS", &v)?).unwrap_or(usize::MAX);
        }
        if let Some(v) = lookup("MAX_RESULT_BYTES") {
            config.limits.max_result_bytes = parse_positive("MAX_RESULT_BYTES", &v)?;
        }
        if let Some(v) = lookup("QUERY_MAX_STEPS") {
            config.limits.max_steps = parse_positive("QUERY_MAX_STEPS", &v)?;
        }
        if let Some(v) = lookup("MAX_DB_BYTES") {
            config.max_db_bytes = v.trim().parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                misconfigured("MAX_DB_BYTES", &v, "a positive whole number of bytes")
            })?;
        }
        if let Some(v) = lookup("CACHE_MAX_BYTES") {
            config.cache_max_bytes = v
                .trim()
                .parse()
                .map_err(|_| misconfigured("CACHE_MAX_BYTES", &v, "a whole number of bytes"))?;
        }
        let t = &mut config.thresholds;
        for (name, field) in [
            ("SYNC_TIME_OPTIMAL_MS", &mut t.optimal_ms),
            ("SYNC_TIME_ACCEPTABLE_MS", &mut t.acceptable_ms),
            ("SYNC_TIME_WARNING_MS", &mut t.warning_ms),
            ("SYNC_TIME_CRITICAL_MS", &mut t.critical_ms),
        ] {
            if let Some(v) = lookup(name) {
                *field = v
                    .trim()
                    .parse()
                    .map_err(|_| misconfigured(name, &v, "a whole number of milliseconds"))?;
            }
        }
        let t = config.thresholds;
        if !(t.optimal_ms < t.acceptable_ms
            && t.acceptable_ms < t.warning_ms
            && t.warning_ms < t.critical_ms)
        {
            return Err(Error::Misconfigured {
                detail: format!(
                    "SYNC_TIME_*_MS must increase: optimal {} < acceptable {} < warning {} < critical {}",
                    t.optimal_ms, t.acceptable_ms, t.warning_ms, t.critical_ms
                ),
            });
        }
        if let Some(v) = lookup("SYNC_TIME_WINDOW") {
            config.trend.window = v
                .trim()
                .parse()
                .ok()
                .filter(|n| (1..=1000).contains(n))
                .ok_or_else(|| {
                    misconfigured("SYNC_TIME_WINDOW", &v, "a whole number from 1 to 1000")
                })?;
        }
        if let Some(v) = lookup("SYNC_TIME_WARNING_RATIO") {
            config.trend.warning_ratio = v
                .trim()
                .parse()
                .ok()
                .filter(|r: &f64| *r > 0.0 && *r <= 1.0)
                .ok_or_else(|| {
                    misconfigured("SYNC_TIME_WARNING_RATIO", &v, "a number in (0, 1]")
                })?;
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    #[cfg(all(target_family = "wasm", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn lookup(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    /// Nothing set: secure and spec defaults.
    /// At the defaults, one request's memory budget (database at the load ceiling, the cache,
    /// SQLite's heap, the result, the body, fixed headroom) fits an isolate.
    #[test]
    fn default_memory_budget_fits_an_isolate() {
        let budget = Config::default().memory_budget_bytes();
        assert!(budget < ISOLATE_MEMORY_BYTES, "{budget}");
        assert!(budget > 110_000_000, "{budget}: a part is missing");
        assert_eq!(load_max_bytes(1024 * 1024), 1024 * 1024 + 128 * 1024);
        // What concurrent requests share, plus what they all share, is the same budget.
        let c = Config::default();
        let capacity = c.admission_capacity_bytes();
        assert!(capacity > 60_000_000 && capacity < budget, "{capacity}");
        assert_eq!(
            capacity
                + c.cache_max_bytes
                + crate::sqlite::SQLITE_HEAP_MAX_BYTES
                + FIXED_HEADROOM_BYTES,
            budget
        );
    }

    #[test]
    fn defaults() {
        let c = Config::from_lookup(lookup(&[])).unwrap();
        assert_eq!(c, Config::default());
        assert!(!c.allow_anonymous);
        assert!(c.auth_token.is_none());
    }

    /// Values are parsed; an empty token counts as unset.
    #[test]
    fn parses_values() {
        let c = Config::from_lookup(lookup(&[
            ("AUTH_TOKEN", "s3cret"),
            ("ALLOW_ANONYMOUS", "true"),
            ("MAX_DB_BYTES", "1048576"),
            ("CACHE_MAX_BYTES", "0"),
        ]))
        .unwrap();
        assert_eq!(c.cache_max_bytes, 0);
        assert_eq!(c.layout, crate::storage::Layout::Incremental, "the default");
        let single = Config::from_lookup(lookup(&[
            ("LAYOUT", "single"),
            ("COMPACT_AFTER_DELTAS", "3"),
            ("COMPACT_DELTA_PERCENT", "50"),
            ("SWEEP_GRACE_MS", "60000"),
            ("COMMIT_SLOTS", "4"),
        ]))
        .unwrap();
        assert_eq!(single.layout, crate::storage::Layout::Single);
        assert_eq!(
            (
                single.compaction.max_deltas,
                single.compaction.max_delta_percent,
                single.compaction.sweep_grace_ms
            ),
            (3, 50, 60_000)
        );
        assert_eq!(single.compaction.commit_slots, 4);
        assert!(Config::from_lookup(lookup(&[("LAYOUT", "fast")])).is_err());
        // A grace shorter than a commit can take would sweep a delta whose manifest put is
        // still in flight; slots beyond what a load reads at once are refused too.
        const REFUSED: [&[(&str, &str)]; 4] = [
            &[("SWEEP_GRACE_MS", "0")],
            &[("SWEEP_GRACE_MS", "59999")],
            &[("COMMIT_SLOTS", "0")],
            &[("COMMIT_SLOTS", "6")],
        ];
        for vars in REFUSED {
            assert!(Config::from_lookup(lookup(vars)).is_err(), "{vars:?}");
        }
        assert_eq!(c.auth_token.as_deref(), Some("s3cret"));
        assert!(c.allow_anonymous);
        assert_eq!(c.max_db_bytes, 1_048_576);
        assert!(
            Config::from_lookup(lookup(&[("AUTH_TOKEN", "")]))
                .unwrap()
                .auth_token
                .is_none()
        );
    }

    /// Thresholds and trend settings come from vars, with the spec's values as defaults.
    #[test]
    fn thresholds_from_vars() {
        let c = Config::from_lookup(lookup(&[
            ("SYNC_TIME_OPTIMAL_MS", "50"),
            ("SYNC_TIME_CRITICAL_MS", "2000"),
            ("SYNC_TIME_WINDOW", "20"),
            ("SYNC_TIME_WARNING_RATIO", "0.5"),
        ]))
        .unwrap();
        assert_eq!(
            (
                c.thresholds.optimal_ms,
                c.thresholds.acceptable_ms,
                c.thresholds.critical_ms
            ),
            (50, 300, 2000)
        );
        assert_eq!((c.trend.window, c.trend.warning_ratio), (20, 0.5));
    }

    /// A typo in a setting is an error, not a silent default.
    #[test]
    fn rejects_bad_values() {
        for pairs in [
            &[("ALLOW_ANONYMOUS", "yes please")][..],
            &[("MAX_DB_BYTES", "32MB")][..],
            &[("MAX_DB_BYTES", "0")][..],
            &[("CACHE_MAX_BYTES", "-1")][..],
            &[("SYNC_TIME_WARNING_MS", "200")][..],
            &[("SYNC_TIME_CRITICAL_MS", "1s")][..],
            &[("SYNC_TIME_WINDOW", "0")][..],
            &[("SYNC_TIME_WARNING_RATIO", "1.5")][..],
            &[("QUERY_MAX_STEPS", "0")][..],
            &[("MAX_STATEMENTS", "many")][..],
            &[("SELF_TEST", "yes")][..],
        ] {
            let err = Config::from_lookup(lookup(pairs)).unwrap_err();
            assert_eq!(err.code(), "misconfigured");
        }
    }

    /// The shipped `wrangler.toml` keeps the statement cap at the default, which is above the
    /// batches libSQL clients send (the official suite sends one of 4,003 statements).
    #[test]
    fn shipped_statement_cap_is_the_default() {
        let shipped = include_str!("../wrangler.toml")
            .lines()
            .find_map(|line| line.trim().strip_prefix("MAX_STATEMENTS = "))
            .expect("wrangler.toml sets MAX_STATEMENTS");
        assert_eq!(
            shipped.trim_matches('"').parse::<usize>().unwrap(),
            DEFAULT_MAX_STATEMENTS
        );
        const { assert!(DEFAULT_MAX_STATEMENTS > 4003) };
    }
}
