//! End-to-end benchmark: real `workerd` + local R2 (or a deployed worker), databases from
//! 100 KB to 50 MB, every `timing_breakdown` field plus client wall time, peak memory.
//!
//! ```text
//! cargo bench --features e2e --bench e2e                      # local worker it starts itself
//! cargo bench --features e2e --bench e2e -- --quick           # 3 timed requests per size
//! cargo bench --features e2e --bench e2e -- --sizes 100,1024  # chosen sizes (KB)
//! AUTH_TOKEN=... cargo bench --features e2e --bench e2e -- --url https://sqlite-poc.NAME.workers.dev --seed-remote --durable-object
//! ```
//!
//! Prints the spec's three tables with medians and p95, writes `target/bench/e2e.json` (raw
//! samples), `target/bench/e2e.md` (the tables) and `target/bench/e2e.svg` (delay vs size with
//! the 100/300/500/1000 ms bands).

#[allow(dead_code)]
#[path = "../tests/e2e/harness.rs"]
mod harness;

#[path = "e2e/cold.rs"]
mod cold;
#[path = "common/mod.rs"]
mod common;
#[path = "e2e/render.rs"]
mod render;
#[path = "e2e/results.rs"]
mod results;
#[path = "e2e/runner.rs"]
mod runner;

use std::time::Instant;

use serde_json::json;
use workers_sqlite_poc::fixtures;

use results::{SizeResult, sample_json, stats};
use runner::{Client, Sample, run_mix, run_size, run_writes, seed_remote};
/// Above the largest benchmarked size, so the benchmark measures rather than refuses.
const BENCH_MAX_DB_BYTES: &str = "67108864";

struct Args {
    url: Option<String>,
    /// Against a deployed worker: also import into and query the Durable Object route.
    durable: bool,
    sizes_kb: Vec<usize>,
    requests: usize,
    seed_remote: bool,
    /// Fresh starts for the cold-start comparison (local only; 0 skips it).
    cold_starts: usize,
    /// Only the cold-start comparison.
    cold_only: bool,
    /// Another build's wrangler.toml to add to the cold-start comparison (a "before").
    cold_before: Option<String>,
}

fn parse_args() -> Args {
    let mut args = Args {
        url: None,
        durable: false,
        sizes_kb: common::SIZES_KB.to_vec(),
        requests: 10,
        seed_remote: false,
        cold_starts: 5,
        cold_only: false,
        cold_before: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--url" => args.url = it.next(),
            "--quick" => args.requests = 3,
            "--requests" => {
                args.requests = it
                    .next()
                    .and_then(|n| n.parse().ok())
                    .expect("--requests N")
            }
            "--sizes" => {
                args.sizes_kb = it
                    .next()
                    .expect("--sizes KB,KB,...")
                    .split(',')
                    .map(|s| s.trim().parse().expect("sizes are whole KB"))
                    .collect();
            }
            "--seed-remote" => args.seed_remote = true,
            "--durable-object" => args.durable = true,
            "--cold-only" => args.cold_only = true,
            "--cold-before" => args.cold_before = it.next(),
            "--cold-starts" => {
                args.cold_starts = it
                    .next()
                    .and_then(|n| n.parse().ok())
                    .expect("--cold-starts N")
            }
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    args
}

fn main() {
    let args = parse_args();
    let mut results = Vec::new();
    let remote = args.url.as_deref().map(Client::new);
    let sizes: &[usize] = if args.cold_only { &[] } else { &args.sizes_kb };
    for &size_kb in sizes {
        let image = fixtures::sized_database(size_kb * 1024, size_kb as u64).expect("generate");
        eprintln!("bench: {size_kb} KB ({} bytes)...", image.len());
        let result = if let Some(client) = &remote {
            if args.seed_remote {
                seed_remote(size_kb, &image);
            }
            // A deployed worker runs with its own CACHE_MAX_BYTES: warm requests are hits
            // when the cache holds this size, and the same samples serve as both series.
            let (cold, warm) = run_size(client, size_kb, &image, args.requests);
            let hits = warm
                .iter()
                .filter(|s| s.json["cache"]["status"] == "hit")
                .cloned()
                .collect();
            SizeResult {
                size_kb,
                size_bytes: image.len(),
                cold,
                warm,
                hits,
                hits_auto: Vec::new(),
                durable: args
                    .durable
                    .then(|| client.durable_object(&format!("bench-{size_kb}"), args.requests)),
                floor_ms: None,
                peak_memory_kib: None,
                writes: run_writes(client, "/query", &format!("bench-{size_kb}"), args.requests),
                do_writes: Vec::new(),
                mix: (Vec::new(), Vec::new()),
            }
        } else {
            // A fresh worker per size: the first request is a real cold start, and the
            // runtime's peak memory belongs to this size alone.
            // Cache off: every request downloads and parses (the spec's behaviour). The spec's
            // single layout throughout: `benches/layouts.rs` compares it with the incremental one.
            let worker = harness::LocalWorker::start_with_vars(
                &[],
                &[
                    ("ALLOW_ANONYMOUS", "true"),
                    ("LAYOUT", "single"),
                    ("MAX_DB_BYTES", BENCH_MAX_DB_BYTES),
                    ("CACHE_MAX_BYTES", "0"),
                ],
            );
            let baseline = worker.runtime_memory_kib().0;
            worker.put_object(&format!("bench-{size_kb}/database.sqlite"), &image);
            let client = Client::new(&worker.base);
            let (cold, warm) = run_size(&client, size_kb, &image, args.requests);
            let (peak, rss) = worker.runtime_memory_kib();
            let durable = client.durable_object(&format!("bench-{size_kb}"), args.requests);
            // The same write requests and the 90/10 mix in the Durable Object.
            let do_user = format!("bench-{size_kb}");
            let do_writes = run_writes(&client, "/do/query", &do_user, args.requests);
            let mix_do = run_mix(&client, "/do/query", &do_user, 10 * args.requests);
            drop(worker);
            // Cache on, sized to hold this database: warm requests are version-cache hits.
            let cached = harness::LocalWorker::start_with_vars(
                &[],
                &[
                    ("ALLOW_ANONYMOUS", "true"),
                    ("LAYOUT", "single"),
                    ("MAX_DB_BYTES", BENCH_MAX_DB_BYTES),
                    ("CACHE_MAX_BYTES", BENCH_MAX_DB_BYTES),
                ],
            );
            cached.put_object(&format!("bench-{size_kb}/database.sqlite"), &image);
            let cached_client = Client::new(&cached.base);
            let (_, hits) = run_size(&cached_client, size_kb, &image, args.requests);
            // The cheapest request the design allows: cache hit and nothing to write back.
            let hits_auto: Vec<Sample> = (0..args.requests)
                .map(|_| cached_client.sync(&format!("bench-{size_kb}&save=auto")))
                .collect();
            assert!(
                hits_auto
                    .iter()
                    .all(|h| h.json["cache"]["status"] == "hit"
                        && h.json["db_info"]["saved"] == false)
            );
            // Storage floor: the same get + put of the same bytes through the simulator, with
            // no worker and no SQLite (wrangler dev's explorer API, timed by the client).
            let key = format!("bench-{size_kb}/database.sqlite");
            let floor_ms = stats(
                (0..args.requests)
                    .map(|_| {
                        let start = Instant::now();
                        let bytes = cached.object(&key).expect("object exists");
                        cached.put_object(&key, &bytes);
                        start.elapsed().as_secs_f64() * 1000.0
                    })
                    .collect(),
            );
            assert!(
                hits.iter().all(|h| h.json["cache"]["status"] == "hit"),
                "expected cache hits"
            );
            let user = format!("bench-{size_kb}");
            let writes = run_writes(&cached_client, "/query", &user, args.requests);
            let mix_r2 = run_mix(&cached_client, "/query", &user, 10 * args.requests);
            SizeResult {
                size_kb,
                size_bytes: image.len(),
                cold,
                warm,
                hits,
                hits_auto,
                durable: Some(durable),
                floor_ms: Some(floor_ms),
                peak_memory_kib: Some((peak.saturating_sub(baseline), rss)),
                writes,
                do_writes,
                mix: (mix_r2, mix_do),
            }
        };
        results.push(result);
    }
    let target = args
        .url
        .clone()
        .unwrap_or_else(|| "local wrangler dev (workerd + simulated R2)".into());
    let cold = if args.url.is_none() && args.cold_starts > 0 {
        eprintln!(
            "bench: cold starts ({} fresh starts per worker)...",
            args.cold_starts
        );
        cold::run(args.cold_starts, args.cold_before.as_deref())
    } else {
        Vec::new()
    };
    if args.cold_only {
        let md = render::render_cold(&cold);
        println!("{md}");
        let dir = common::out_dir();
        std::fs::write(dir.join("cold.md"), &md).expect("write md");
        let raw = json!({"bench": "cold", "cold_start": cold.iter().map(cold::ColdStart::to_json).collect::<Vec<_>>()});
        std::fs::write(
            dir.join("cold.json"),
            serde_json::to_string_pretty(&raw).unwrap(),
        )
        .expect("write json");
        eprintln!("wrote target/bench/cold.{{md,json}}");
        return;
    }
    let mut md = render::render_tables(&results, &target, args.requests);
    md.push_str(&render::render_cold(&cold));
    println!("{md}");
    let dir = common::out_dir();
    std::fs::write(dir.join("e2e.md"), &md).expect("write md");
    std::fs::write(dir.join("e2e.svg"), render::render_svg(&results, &target)).expect("write svg");
    let samples = |v: &[Sample]| v.iter().map(sample_json).collect::<Vec<_>>();
    let raw = json!({
        "bench": "e2e",
        "target": target,
        "requests_per_size": args.requests,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "sizes": results.iter().map(|r| json!({
            "size_kb": r.size_kb,
            "size_bytes": r.size_bytes,
            "peak_memory_delta_kib": r.peak_memory_kib.map(|m| m.0),
            "rss_after_kib": r.peak_memory_kib.map(|m| m.1),
            "cold": sample_json(&r.cold),
            "warm": samples(&r.warm),
            "cache_hits": samples(&r.hits),
            "cache_hits_save_auto": samples(&r.hits_auto),
            "storage_floor_ms": r.floor_ms.map(|(p50, p95)| json!({"p50": p50, "p95": p95})),
            "durable_object": r.durable.as_ref().map(|(import, queries)| json!({
                "import": sample_json(import),
                "queries": samples(queries),
            })),
            "writes": r.writes.iter().map(|(name, s)| json!({"kind": name, "samples": samples(s)})).collect::<Vec<_>>(),
            "durable_object_writes": r.do_writes.iter().map(|(name, s)| json!({"kind": name, "samples": samples(s)})).collect::<Vec<_>>(),
            "mix_90_10": {"r2": samples(&r.mix.0), "durable_object": samples(&r.mix.1)},
        })).collect::<Vec<_>>(),
        "cold_start": cold.iter().map(cold::ColdStart::to_json).collect::<Vec<_>>(),
    });
    std::fs::write(
        dir.join("e2e.json"),
        serde_json::to_string_pretty(&raw).unwrap(),
    )
    .expect("write json");
    eprintln!("wrote target/bench/e2e.{{md,json,svg}}");
}
