//! Cold start, locally: for this worker and for a minimal JS worker that only returns JSON,
//! several fresh `wrangler dev` starts, each timed from spawn to "Ready on" (workerd loads
//! the bundle: compiles the wasm and instantiates it), then the fresh isolate's first request
//! next to warm ones.

use std::path::PathBuf;
use std::time::Instant;

use serde_json::{Value, json};

use super::common::p50_p95;
use super::harness::LocalWorker;
use super::runner::Client;

/// One worker's cold-start figures, medians over fresh starts.
pub struct ColdStart {
    /// Which worker.
    pub name: &'static str,
    /// Spawn to "Ready on", ms.
    pub startup_ms: Vec<f64>,
    /// The first request of each fresh isolate, client round trip, ms.
    pub first_ms: Vec<f64>,
    /// Warm requests (after the first), client round trip, ms.
    pub warm_ms: Vec<f64>,
    /// `timing_breakdown.load.wasm_init_ms` of each first request (this worker only).
    pub sqlite_init_ms: Vec<f64>,
}

impl ColdStart {
    /// As JSON, with medians.
    pub fn to_json(&self) -> Value {
        let med = |v: &[f64]| p50_p95(v.to_vec()).0;
        json!({
            "worker": self.name,
            "starts": self.first_ms.len(),
            "startup_ms_p50": med(&self.startup_ms),
            "first_request_ms_p50": med(&self.first_ms),
            "warm_request_ms_p50": med(&self.warm_ms),
            "sqlite_init_ms_p50": if self.sqlite_init_ms.is_empty() { Value::Null } else { json!(med(&self.sqlite_init_ms)) },
            "startup_ms": self.startup_ms,
            "first_ms": self.first_ms,
        })
    }
}

fn minimal_worker() -> PathBuf {
    let dir = super::common::out_dir().join("minimal-worker");
    std::fs::create_dir_all(&dir).expect("create minimal worker dir");
    std::fs::write(
        dir.join("index.js"),
        "export default { fetch() { return Response.json({ success: true }); } };\n",
    )
    .expect("write minimal worker");
    std::fs::write(
        dir.join("wrangler.toml"),
        "name = \"minimal-json\"\nmain = \"index.js\"\ncompatibility_date = \"2026-04-01\"\n",
    )
    .expect("write minimal config");
    dir.join("wrangler.toml")
}

fn measure(name: &'static str, config: Option<PathBuf>, path: &str, starts: usize) -> ColdStart {
    let mut result = ColdStart {
        name,
        startup_ms: vec![],
        first_ms: vec![],
        warm_ms: vec![],
        sqlite_init_ms: vec![],
    };
    for _ in 0..starts {
        let spawned = Instant::now();
        let worker = LocalWorker::start_fresh(
            config.as_deref(),
            &[("ALLOW_ANONYMOUS", "true"), ("LAYOUT", "single")],
        );
        result
            .startup_ms
            .push(spawned.elapsed().as_secs_f64() * 1000.0);
        let client = Client::new(&worker.base);
        let first = client.get(path);
        result.first_ms.push(first.client_ms);
        if let Some(init) = first.json.pointer("/timing_breakdown/load/wasm_init_ms") {
            assert_eq!(first.json["cold_start"], true, "{}", first.json);
            result
                .sqlite_init_ms
                .push(init.as_f64().unwrap_or(f64::NAN));
        }
        for _ in 0..5 {
            result.warm_ms.push(client.get(path).client_ms);
        }
    }
    result
}

/// This worker and the minimal JS worker, `starts` fresh starts each; with `before`, also
/// another build of this worker (its wrangler.toml), for a before/after comparison.
pub fn run(starts: usize, before: Option<&str>) -> Vec<ColdStart> {
    let mut out = vec![measure(
        "this worker (GET /?save=never, new user)",
        None,
        "/?user=cold&save=never",
        starts,
    )];
    if let Some(config) = before {
        out.push(measure(
            "before: the same request, previous bundle",
            Some(PathBuf::from(config)),
            "/?user=cold&save=never",
            starts,
        ));
    }
    out.push(measure(
        "minimal JS worker (returns JSON)",
        Some(minimal_worker()),
        "/",
        starts,
    ));
    out
}
