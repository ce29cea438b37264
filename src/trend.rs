//! Delay trends per user, as the spec recommends: the last `SYNC_TIME_WINDOW` sync times, the
//! share of them that were slow, the recommendation that implies, and the log lines to emit.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};

use serde::Serialize;

use crate::delay::{Thresholds, round_ms, round2};

/// Users tracked per isolate; the least recently seen is forgotten beyond this.
pub const MAX_TRACKED_USERS: usize = 1000;
/// Fewest samples before a trend may recommend anything (one slow sync is not a trend).
pub const MIN_SAMPLES: usize = 3;

/// Trend settings (`SYNC_TIME_WINDOW`, `SYNC_TIME_WARNING_RATIO`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrendSettings {
    /// How many recent syncs are kept per user.
    pub window: usize,
    /// Share of slow syncs in the window that triggers a recommendation.
    pub warning_ratio: f64,
}

impl Default for TrendSettings {
    /// The spec's values: 10 syncs, 30 %.
    fn default() -> Self {
        Self {
            window: 10,
            warning_ratio: 0.3,
        }
    }
}

/// What a user's recent delays suggest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Recommendation {
    /// Fewer than [`MIN_SAMPLES`] samples, or too few slow syncs.
    None,
    /// At least `warning_ratio` of recent syncs took `warning_ms` or more.
    ConsiderArchiving,
    /// At least `warning_ratio` of recent syncs took `critical_ms` or more.
    MigrateToDurableObject,
}

/// The `trend` object of the response.
#[derive(Debug, Clone, Serialize)]
pub struct TrendInfo {
    /// `SYNC_TIME_WINDOW`.
    pub window: usize,
    /// Recent sync times (load + save, ms, rounded), oldest first, this request last.
    pub samples_ms: Vec<u64>,
    /// Share of samples at or above `warning_ms`.
    pub slow_share: f64,
    /// Share of samples at or above `critical_ms`.
    pub critical_share: f64,
    /// `SYNC_TIME_WARNING_RATIO`.
    pub warning_ratio: f64,
    /// What the trend implies.
    pub recommendation: Recommendation,
}

/// Per-user recent sync times for one isolate.
#[derive(Debug, Default)]
pub struct Trends {
    /// user → (last seen counter, recent sync times).
    users: RefCell<HashMap<String, (u64, VecDeque<f64>)>>,
    clock: RefCell<u64>,
    /// user → the recommendation of their latest trend.
    last: RefCell<HashMap<String, Recommendation>>,
}

impl Trends {
    /// An empty tracker.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The recommendation of `user`'s latest trend (`None` for a user not seen), for
    /// `AUTO_MIGRATE`, which acts on it at the user's next request.
    #[must_use]
    pub fn recommendation(&self, user: &str) -> Recommendation {
        self.last
            .borrow()
            .get(user)
            .copied()
            .unwrap_or(Recommendation::None)
    }

    /// Forgets `user`'s trend (after a move, the old delays no longer describe them).
    pub fn forget(&self, user: &str) {
        self.users.borrow_mut().remove(user);
        self.last.borrow_mut().remove(user);
    }

    /// Records `sync_ms` for `user` and returns the trend including it.
    pub fn record(
        &self,
        user: &str,
        sync_ms: f64,
        thresholds: &Thresholds,
        settings: &TrendSettings,
    ) -> TrendInfo {
        let mut users = self.users.borrow_mut();
        let now = {
            let mut c = self.clock.borrow_mut();
            *c += 1;
            *c
        };
        if !users.contains_key(user)
            && users.len() >= MAX_TRACKED_USERS
            && let Some(oldest) = users
                .iter()
                .min_by_key(|(_, (seen, _))| *seen)
                .map(|(k, _)| k.clone())
        {
            users.remove(&oldest);
        }
        let (seen, samples) = users.entry(user.to_owned()).or_default();
        *seen = now;
        samples.push_back(sync_ms);
        while samples.len() > settings.window.max(1) {
            samples.pop_front();
        }
        let n = samples.len() as f64;
        let share =
            |limit: u32| samples.iter().filter(|ms| **ms >= f64::from(limit)).count() as f64 / n;
        let slow_share = share(thresholds.warning_ms);
        let critical_share = share(thresholds.critical_ms);
        let enough = samples.len() >= MIN_SAMPLES;
        let recommendation = if enough && critical_share >= settings.warning_ratio {
            Recommendation::MigrateToDurableObject
        } else if enough && slow_share >= settings.warning_ratio {
            Recommendation::ConsiderArchiving
        } else {
            Recommendation::None
        };
        self.last
            .borrow_mut()
            .insert(user.to_owned(), recommendation);
        TrendInfo {
            window: settings.window,
            samples_ms: samples.iter().map(|ms| round_ms(*ms)).collect(),
            slow_share: round2(slow_share),
            critical_share: round2(critical_share),
            warning_ratio: settings.warning_ratio,
            recommendation,
        }
    }
}

#[cfg(test)]
mod tests {
    #[cfg(all(target_family = "wasm", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    /// The window keeps the last N samples and the recommendation follows the spec's ratio.
    #[test]
    fn window_and_recommendations() {
        let trends = Trends::new();
        let (t, s) = (Thresholds::default(), TrendSettings::default());
        for _ in 0..7 {
            let info = trends.record("a", 50.0, &t, &s);
            assert_eq!(info.recommendation, Recommendation::None);
        }
        // 2 slow of 9: 22 % < 30 %.
        trends.record("a", 600.0, &t, &s);
        let info = trends.record("a", 600.0, &t, &s);
        assert_eq!(info.recommendation, Recommendation::None);
        // 3 slow of 10: 30 %.
        let info = trends.record("a", 700.0, &t, &s);
        assert_eq!(info.samples_ms.len(), 10);
        assert_eq!(info.slow_share, 0.3);
        assert_eq!(info.recommendation, Recommendation::ConsiderArchiving);
        // Critical syncs push it to migration; the oldest samples fall out of the window.
        for _ in 0..3 {
            trends.record("a", 1500.0, &t, &s);
        }
        let info = trends.record("a", 50.0, &t, &s);
        assert_eq!(info.samples_ms.len(), 10);
        assert_eq!(info.recommendation, Recommendation::MigrateToDurableObject);
        assert_eq!(
            trends.recommendation("a"),
            Recommendation::MigrateToDurableObject
        );
        trends.forget("a");
        assert_eq!(trends.recommendation("a"), Recommendation::None);
        // Other users are independent.
        assert_eq!(trends.record("b", 50.0, &t, &s).samples_ms, [50]);
    }

    /// A single slow sync is not a trend.
    #[test]
    fn needs_minimum_samples() {
        let trends = Trends::new();
        let info = trends.record(
            "a",
            5000.0,
            &Thresholds::default(),
            &TrendSettings::default(),
        );
        assert_eq!(info.critical_share, 1.0);
        assert_eq!(info.recommendation, Recommendation::None);
    }

    /// The tracker forgets the least recently seen user beyond its bound.
    #[test]
    fn bounded_users() {
        let trends = Trends::new();
        let (t, s) = (Thresholds::default(), TrendSettings::default());
        for i in 0..=MAX_TRACKED_USERS {
            trends.record(&format!("u{i}"), 1.0, &t, &s);
        }
        assert_eq!(trends.users.borrow().len(), MAX_TRACKED_USERS);
        assert!(!trends.users.borrow().contains_key("u0"));
    }
}
