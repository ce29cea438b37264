//! Delay classification: the spec's `getDelayStatus` thresholds, what each band asks of us,
//! and the spec's rounding (used by the report and the trend alike).

use serde::Serialize;

/// The spec's delay thresholds in milliseconds; serialised as `delay_analysis.thresholds`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Thresholds {
    /// Below this a sync feels instant.
    pub optimal_ms: u32,
    /// Below this a sync is still fine.
    pub acceptable_ms: u32,
    /// At or above this the delay is logged as a warning.
    pub warning_ms: u32,
    /// At or above this the user should be warned.
    pub critical_ms: u32,
}

impl Default for Thresholds {
    /// The spec's values: 100, 300, 500 and 1000 ms.
    fn default() -> Self {
        Self {
            optimal_ms: 100,
            acceptable_ms: 300,
            warning_ms: 500,
            critical_ms: 1000,
        }
    }
}

/// How a measured delay feels to the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DelayStatus {
    /// Below `optimal_ms`.
    Optimal,
    /// From `optimal_ms` up to `acceptable_ms`.
    Acceptable,
    /// From `acceptable_ms` up to `warning_ms`.
    Warning,
    /// From `warning_ms` up to `critical_ms`.
    Slow,
    /// At or above `critical_ms`.
    Critical,
    /// The phase did not run (a skipped save, or a route that has no such phase), so there
    /// is no delay to grade.
    NotRun,
}

/// What the spec says to do about a delay. Each action is carried out: see `alerts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DelayAction {
    /// Nothing to do.
    None,
    /// Log a warning (a `console.warn` JSON line).
    LogWarning,
    /// Consider archiving old data (a `console.warn` JSON line recommending it).
    ConsiderArchiving,
    /// Show the user a warning and recommend archiving (a `console.error` JSON line, and the
    /// response's `user_warning` text for the app to show).
    ShowUserWarning,
}

/// One phase's delay: whole milliseconds and its band.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseDelay {
    /// The phase's total, rounded to whole milliseconds (as the spec's `Math.round`).
    pub ms: u64,
    /// The band the unrounded total falls in.
    pub status: DelayStatus,
    /// What that band asks for.
    pub action: DelayAction,
}

impl PhaseDelay {
    /// Classifies an unrounded total, as the spec does.
    #[must_use]
    pub fn new(total_ms: f64, thresholds: &Thresholds) -> Self {
        let (status, action) = thresholds.classify(total_ms);
        Self {
            ms: round_ms(total_ms),
            status,
            action,
        }
    }

    /// A phase that did not run: 0 ms, graded `not_run`, nothing to do.
    #[must_use]
    pub fn not_run() -> Self {
        Self {
            ms: 0,
            status: DelayStatus::NotRun,
            action: DelayAction::None,
        }
    }
}

/// Rounds to two decimals, as the spec's `Math.round(x * 100) / 100`.
#[must_use]
pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Rounds to whole milliseconds, as the spec's `Math.round(x)`; negatives read 0.
#[must_use]
pub fn round_ms(x: f64) -> u64 {
    // Float-to-int `as` saturates, and NaN maps to 0.
    x.max(0.0).round() as u64
}

impl Thresholds {
    /// Classifies a delay exactly as the spec's `getDelayStatus`: each band includes its lower
    /// bound, so 100 ms is `acceptable` and 1000 ms is `critical`.
    #[must_use]
    pub fn classify(&self, ms: f64) -> (DelayStatus, DelayAction) {
        if ms < f64::from(self.optimal_ms) {
            (DelayStatus::Optimal, DelayAction::None)
        } else if ms < f64::from(self.acceptable_ms) {
            (DelayStatus::Acceptable, DelayAction::None)
        } else if ms < f64::from(self.warning_ms) {
            (DelayStatus::Warning, DelayAction::LogWarning)
        } else if ms < f64::from(self.critical_ms) {
            (DelayStatus::Slow, DelayAction::ConsiderArchiving)
        } else {
            (DelayStatus::Critical, DelayAction::ShowUserWarning)
        }
    }
}

#[cfg(test)]
mod tests {
    #[cfg(all(target_family = "wasm", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    /// Every boundary the spec implies lands in the band the spec's `<` comparisons put it in.
    #[test]
    fn boundaries_match_get_delay_status() {
        let t = Thresholds::default();
        let cases = [
            (0.0, DelayStatus::Optimal, DelayAction::None),
            (99.99, DelayStatus::Optimal, DelayAction::None),
            (100.0, DelayStatus::Acceptable, DelayAction::None),
            (299.99, DelayStatus::Acceptable, DelayAction::None),
            (300.0, DelayStatus::Warning, DelayAction::LogWarning),
            (499.99, DelayStatus::Warning, DelayAction::LogWarning),
            (500.0, DelayStatus::Slow, DelayAction::ConsiderArchiving),
            (999.99, DelayStatus::Slow, DelayAction::ConsiderArchiving),
            (1000.0, DelayStatus::Critical, DelayAction::ShowUserWarning),
            (
                60_000.0,
                DelayStatus::Critical,
                DelayAction::ShowUserWarning,
            ),
        ];
        for (ms, status, action) in cases {
            assert_eq!(t.classify(ms), (status, action), "at {ms} ms");
        }
    }

    /// Rounding matches the spec's JavaScript.
    #[test]
    fn rounding() {
        assert_eq!(round2(52.123), 52.12);
        assert_eq!(round2(52.125_000_1), 52.13);
        assert_eq!(round_ms(144.5), 145);
        assert_eq!(round_ms(144.49), 144);
        assert_eq!(round_ms(-1.0), 0);
        assert_eq!(round2(130_560.0 / 1024.0), 127.5);
    }

    /// The delay is classified on the unrounded value: 99.6 ms shows as 100 but is optimal,
    /// exactly as the spec's code behaves; a phase that did not run is not graded at all.
    #[test]
    fn classifies_unrounded() {
        let d = PhaseDelay::new(99.6, &Thresholds::default());
        assert_eq!(d.ms, 100);
        assert_eq!(d.status, DelayStatus::Optimal);
        let skipped = serde_json::to_value(PhaseDelay::not_run()).unwrap();
        assert_eq!(
            skipped,
            serde_json::json!({"ms": 0, "status": "not_run", "action": "none"})
        );
    }

    /// The JSON names are the spec's strings.
    #[test]
    fn serialises_with_spec_names() {
        let json =
            serde_json::to_string(&(DelayStatus::Slow, DelayAction::ShowUserWarning)).unwrap();
        assert_eq!(json, r#"["slow","show_user_warning"]"#);
        let json = serde_json::to_string(&Thresholds::default()).unwrap();
        assert_eq!(
            json.to_string(),
            r#"{"optimal_ms":100,"acceptable_ms":300,"warning_ms":500,"critical_ms":1000}"#
        );
    }
}
