//! Prints the worker's own delay classification and trend for inputs read as JSON on stdin, so
//! another implementation (the Python package's `DelayTracker`) can be checked against it:
//!
//! `echo '{"ms": [99.9, 100], "series": [[600, 50, 700]]}' | cargo run --example delay_bands`
//!
//! prints `{"bands": [[status, action], ...], "trends": [[{recommendation, slow_share,
//! critical_share}, ...], ...]}`: one band per value, and for each series the trend after
//! each sample, recorded in order for one user with the spec's settings.

use std::io::Read as _;
use std::process::ExitCode;

use serde_json::{Value, json};
use workers_sqlite_poc::delay::Thresholds;
use workers_sqlite_poc::trend::{TrendSettings, Trends};

fn numbers(v: &Value) -> Option<Vec<f64>> {
    v.as_array()?.iter().map(Value::as_f64).collect()
}

fn main() -> ExitCode {
    let mut input = String::new();
    let parsed = std::io::stdin()
        .read_to_string(&mut input)
        .ok()
        .and_then(|_| serde_json::from_str::<Value>(&input).ok());
    let Some(input) = parsed else {
        eprintln!("usage: a JSON object {{\"ms\": [...], \"series\": [[...], ...]}} on stdin");
        return ExitCode::from(2);
    };
    let (thresholds, settings) = (Thresholds::default(), TrendSettings::default());
    let bands: Vec<Value> = numbers(&input["ms"])
        .unwrap_or_default()
        .into_iter()
        .map(|ms| json!(thresholds.classify(ms)))
        .collect();
    let series = input["series"].as_array().cloned().unwrap_or_default();
    let trends: Vec<Value> = series
        .iter()
        .map(|s| {
            let trends = Trends::new();
            numbers(s)
                .unwrap_or_default()
                .into_iter()
                .map(|ms| {
                    let t = trends.record("a", ms, &thresholds, &settings);
                    json!({
                        "recommendation": t.recommendation,
                        "slow_share": t.slow_share,
                        "critical_share": t.critical_share,
                    })
                })
                .collect()
        })
        .collect();
    println!("{}", json!({"bands": bands, "trends": trends}));
    ExitCode::SUCCESS
}
