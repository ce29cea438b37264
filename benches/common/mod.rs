//! What the benchmarks share: the sizes, the statistics, the routes and where results go.

use std::path::PathBuf;

/// Database sizes benchmarked, in KiB: the spec's 100 KB to 5 MB and two beyond.
pub const SIZES_KB: &[usize] = &[100, 500, 1024, 2048, 5120, 20_480, 51_200];

/// The value at quantile `p` (0..=1) of sorted samples; NaN when there are none.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// (p50, p95) of unsorted samples.
#[allow(
    dead_code,
    reason = "sqlite_ops sorts once and reads several quantiles"
)]
pub fn p50_p95(mut samples: Vec<f64>) -> (f64, f64) {
    samples.sort_by(f64::total_cmp);
    (percentile(&samples, 0.5), percentile(&samples, 0.95))
}

/// "100 KB", "5 MB".
#[allow(dead_code, reason = "sqlite_ops prints raw KiB")]
pub fn size_label(kb: usize) -> String {
    if kb >= 1024 {
        format!("{} MB", kb / 1024)
    } else {
        format!("{kb} KB")
    }
}

/// `target/bench`, created.
pub fn out_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&dir).expect("create target/bench");
    dir
}

/// The routes measured in `layout`: its R2 route, and in the incremental layout the Durable
/// Object too (the same worker serves both; measuring it twice would repeat one series).
#[allow(dead_code, reason = "only the write benches compare routes")]
pub fn routes(layout: &str) -> Vec<&'static str> {
    if layout == "single" {
        vec!["r2 single"]
    } else {
        vec!["r2 incremental", "durable object"]
    }
}
