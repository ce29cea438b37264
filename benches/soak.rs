//! The soak: 2,000 mixed requests at concurrency 16 over 20 users of 0.25–2.7 MB, in one
//! isolate of the real `workerd`, with the default limits. Reports the statuses, the 503s
//! with `Retry-After` (counted by code), the largest wasm memory any report gave against the
//! budget, the admission gate's peak, and workerd's resident memory before and after.
//!
//! ```text
//! cargo bench --locked --features e2e --bench soak                 # 2,000 requests, concurrency 16
//! cargo bench --locked --features e2e --bench soak -- 500 8        # requests, concurrency
//! ```
//!
//! Writes `benches/results/soak.md`.

#[allow(dead_code)]
#[path = "../tests/e2e/harness.rs"]
mod harness;
#[path = "../tests/e2e/soak.rs"]
mod soak;

use workers_sqlite_poc::config::Config;

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let total = args.first().copied().unwrap_or(2000);
    let concurrency = args.get(1).copied().unwrap_or(16);
    let worker = soak::start(&[]);
    let result = soak::run(&worker, total, concurrency);
    let budget = Config::default().memory_budget_bytes();
    let line = soak::summary(&result, budget);
    println!("{line}");
    for (kind, status, body) in &result.unexpected {
        println!("unexpected: {kind} {status} {body}");
    }
    let mut md = format!(
        "# Soak: {total} requests at concurrency {concurrency}, 20 users of 0.25–2.7 MB, one \
         isolate, local R2, default limits\n\n`cargo bench --locked --features e2e --bench \
         soak`\n\n| kind | status | requests |\n|---|---|---|\n"
    );
    for ((kind, status), n) in &result.statuses {
        md.push_str(&format!("| {kind} | {status} | {n} |\n"));
    }
    md.push_str(&format!(
        "\n- 503 with Retry-After, by code: {:?}\n- answers other than 200 or 503 with \
         Retry-After: {} (of which not the worker's JSON, or no answer: {})\n- largest wasm memory \
         reported: {} bytes (budget {budget})\n- admission: peak held {} of a capacity of {} \
         bytes; {} requests waited\n- workerd RSS: {} KiB before, {} KiB after\n- wall time: {} \
         ms\n",
        result.retry_after,
        result.unexpected.len(),
        result.transport_failures,
        result.max_wasm_memory_bytes,
        result.peak_reserved_bytes,
        result.capacity_bytes,
        result.waited,
        result.rss_kib.0,
        result.rss_kib.1,
        result.elapsed_ms,
    ));
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/results/soak.md");
    std::fs::write(path, md).expect("write benches/results/soak.md");
    println!("wrote {path}");
    // The same checks as the e2e soak: nothing acknowledged lost, nothing refused stored, no
    // answer but 200 or 503 with Retry-After, wasm memory under the budget.
    println!("{}", soak::check(&worker, &result, budget));
}
