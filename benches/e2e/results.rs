//! The statistics of a size's samples: percentiles of any report field or of the client's
//! round trip.

use serde_json::Value;

use super::common::p50_p95;
use super::runner::Sample;

/// A number in a sample's answer (NaN if absent).
pub fn field(sample: &Sample, pointer: &str) -> f64 {
    sample
        .json
        .pointer(pointer)
        .and_then(Value::as_f64)
        .unwrap_or(f64::NAN)
}

/// (p50, p95) of samples.
pub fn stats(v: Vec<f64>) -> (f64, f64) {
    p50_p95(v)
}

/// Everything measured at one size.
pub struct SizeResult {
    pub size_kb: usize,
    pub size_bytes: usize,
    pub cold: Sample,
    /// Warm requests that downloaded and parsed (cache off).
    pub warm: Vec<Sample>,
    /// Warm requests served from the version cache.
    pub hits: Vec<Sample>,
    /// Cache hits with `save=auto` (no write back).
    pub hits_auto: Vec<Sample>,
    /// The Durable Object route: the import, then timed `GET /do` requests.
    pub durable: Option<(Sample, Vec<Sample>)>,
    /// (p50, p95) of a bare get + put of the same bytes, local only.
    pub floor_ms: Option<(f64, f64)>,
    pub peak_memory_kib: Option<(u64, u64)>,
    /// Write requests by kind (`POST /query`), on the cache-on worker.
    pub writes: Vec<(&'static str, Vec<Sample>)>,
    /// The same write requests through `POST /do/query`.
    pub do_writes: Vec<(&'static str, Vec<Sample>)>,
    /// The 90/10 read/write mix: (R2 with the cache on, Durable Object).
    pub mix: (Vec<Sample>, Vec<Sample>),
}

impl SizeResult {
    pub fn warm_stats(&self, pointer: &str) -> (f64, f64) {
        stats(self.warm.iter().map(|s| field(s, pointer)).collect())
    }
    pub fn hit_stats(&self, pointer: &str) -> (f64, f64) {
        stats(self.hits.iter().map(|s| field(s, pointer)).collect())
    }
    pub fn hit_client_stats(&self) -> (f64, f64) {
        stats(self.hits.iter().map(|s| s.client_ms).collect())
    }
    pub fn wasm_memory_bytes(&self) -> f64 {
        std::iter::once(&self.cold)
            .chain(&self.warm)
            .map(|s| field(s, "/memory/wasm_memory_bytes"))
            .fold(0.0, f64::max)
    }
    pub fn client_stats(&self) -> (f64, f64) {
        stats(self.warm.iter().map(|s| s.client_ms).collect())
    }
}

/// A sample as stored in the JSON results.
pub fn sample_json(s: &Sample) -> Value {
    serde_json::json!({"client_ms": s.client_ms, "response": s.json})
}
