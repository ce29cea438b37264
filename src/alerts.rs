//! Carrying out the actions the delay bands name: a log line for `log_warning` and
//! `consider_archiving`, and for `show_user_warning` a log line plus a sentence in the response
//! for the app to show. The runtime only prints what this decides.

use serde_json::json;

use crate::delay::{DelayAction, PhaseDelay};
use crate::report::Report;

/// Severity of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// `log_warning` and `consider_archiving`: printed with `console.warn`.
    Warning,
    /// `show_user_warning`: printed with `console.error`.
    Critical,
}

fn phases(report: &Report) -> [(&'static str, &PhaseDelay); 2] {
    let d = &report.delay_analysis;
    [("load", &d.load), ("save", &d.save)]
}

/// One JSON log line (for `wrangler tail | jq`) per phase whose band names an action.
#[must_use]
pub fn log_lines(user: &str, report: &Report) -> Vec<(Level, serde_json::Value)> {
    let t = &report.delay_analysis.thresholds;
    phases(report)
        .into_iter()
        .filter_map(|(phase, delay)| {
            let ms = delay.ms;
            let (level, message) = match delay.action {
                DelayAction::None => return None,
                DelayAction::LogWarning => (
                    Level::Warning,
                    format!("database sync slow: {phase} took {ms}ms (>= {}ms)", t.acceptable_ms),
                ),
                DelayAction::ConsiderArchiving => (
                    Level::Warning,
                    format!(
                        "database sync slow: {phase} took {ms}ms (>= {}ms), approaching the critical threshold; consider archiving old data",
                        t.warning_ms
                    ),
                ),
                DelayAction::ShowUserWarning => (
                    Level::Critical,
                    format!(
                        "DATABASE SYNC CRITICAL: {phase} took {ms}ms (>= {}ms); archive old data or migrate this user to a Durable Object",
                        t.critical_ms
                    ),
                ),
            };
            Some((
                level,
                json!({
                    "level": if level == Level::Critical { "critical" } else { "warning" },
                    "user": user,
                    "route": report.route,
                    "phase": phase,
                    "ms": ms,
                    "status": delay.status,
                    "action": delay.action,
                    "message": message,
                }),
            ))
        })
        .collect()
}

/// The `user_warning` sentence when a phase asks to show the user a warning.
#[must_use]
pub fn user_warning(report: &Report) -> Option<String> {
    let slow: Vec<String> = phases(report)
        .into_iter()
        .filter(|(_, d)| d.action == DelayAction::ShowUserWarning)
        .map(|(phase, d)| format!("{phase} {} ms", d.ms))
        .collect();
    (!slow.is_empty()).then(|| {
        format!(
            "Syncing your data is slow ({}). Archiving old projects will make it faster.",
            slow.join(", ")
        )
    })
}

#[cfg(test)]
mod tests {
    #[cfg(all(target_family = "wasm", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::delay::{DelayStatus, Thresholds};
    use crate::report::{
        Backend, ClockInfo, DbInfo, DelayAnalysis, LoadTiming, SaveTiming, TimingBreakdown,
    };
    use crate::testing::StepClock;

    fn report(load_ms: f64, save: Option<f64>) -> Report {
        let t = Thresholds::default();
        Report {
            success: true,
            route: Backend::R2,
            cold_start: false,
            delay_analysis: DelayAnalysis {
                load: PhaseDelay::new(load_ms, &t),
                save: save.map_or_else(PhaseDelay::not_run, |ms| PhaseDelay::new(ms, &t)),
                thresholds: t,
            },
            timing_breakdown: TimingBreakdown {
                load: LoadTiming::new(load_ms, 0.0, load_ms, 0.0),
                query_ms: 0.0,
                save: SaveTiming::new(save.unwrap_or(0.0), 0.0, save.unwrap_or(0.0)),
            },
            not_applicable: vec![],
            db_info: DbInfo::new(0, vec![], None),
            results: None,
            cache: None,
            clock: ClockInfo::new(&StepClock::frozen(), &[]),
            user_warning: None,
            trend: None,
            memory: None,
            storage: None,
            write_queue: None,
        }
    }

    /// Every band that names an action produces its line: 300-500 ms logs a warning (the
    /// spec's `log_warning`), 500-1000 ms recommends archiving, 1000 ms and more is critical
    /// and also tells the user. Optimal, acceptable and skipped phases stay quiet.
    #[test]
    fn every_named_action_is_carried_out() {
        let cases = [
            (50.0, DelayStatus::Optimal, None),
            (150.0, DelayStatus::Acceptable, None),
            (
                350.0,
                DelayStatus::Warning,
                Some((Level::Warning, "log_warning")),
            ),
            (
                700.0,
                DelayStatus::Slow,
                Some((Level::Warning, "consider_archiving")),
            ),
            (
                1500.0,
                DelayStatus::Critical,
                Some((Level::Critical, "show_user_warning")),
            ),
        ];
        for (ms, status, expected) in cases {
            let r = report(ms, None);
            assert_eq!(r.delay_analysis.load.status, status);
            let lines = log_lines("a", &r);
            match expected {
                None => assert!(lines.is_empty(), "{ms}: {lines:?}"),
                Some((level, action)) => {
                    assert_eq!(lines.len(), 1, "{ms}: {lines:?}");
                    assert_eq!(lines[0].0, level);
                    assert_eq!(lines[0].1["action"], action);
                    assert_eq!(lines[0].1["phase"], "load");
                }
            }
            assert_eq!(
                user_warning(&r).is_some(),
                status == DelayStatus::Critical,
                "{ms}"
            );
        }
        let both = report(1200.0, Some(2000.0));
        assert_eq!(log_lines("a", &both).len(), 2);
        let warning = user_warning(&both).unwrap();
        assert!(
            warning.contains("load 1200 ms") && warning.contains("save 2000 ms"),
            "{warning}"
        );
    }
}
