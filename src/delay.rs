//! Delay classification: the spec's `getDelayStatus` thresholds and what each band asks of us.

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
}

/// What the spec says to do about a delay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DelayAction {
    /// Nothing to do.
    None,
    /// Log a warning.
    LogWarning,
    /// Consider archiving old data.
    ConsiderArchiving,
    /// Show the user a warning and recommend archiving.
    ShowUserWarning,
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
