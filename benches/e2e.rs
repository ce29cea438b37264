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

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use workers_sqlite_poc::fixtures;

const DEFAULT_SIZES_KB: &[usize] = &[100, 500, 1024, 2048, 5120, 20_480, 51_200];
/// Above the largest benchmarked size, so the benchmark measures rather than refuses.
const BENCH_MAX_DB_BYTES: &str = "67108864";

struct Args {
    url: Option<String>,
    /// Against a deployed worker: also import into and query the Durable Object route.
    durable: bool,
    sizes_kb: Vec<usize>,
    requests: usize,
    seed_remote: bool,
}

fn parse_args() -> Args {
    let mut args = Args {
        url: None,
        durable: false,
        sizes_kb: DEFAULT_SIZES_KB.to_vec(),
        requests: 10,
        seed_remote: false,
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
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    args
}

/// One measured request.
#[derive(Clone)]
struct Sample {
    client_ms: f64,
    json: Value,
}

struct Client {
    base: String,
    agent: ureq::Agent,
    token: Option<String>,
}

impl Client {
    fn new(base: &str) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            agent: ureq::Agent::new_with_config(
                ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .timeout_global(Some(Duration::from_secs(300)))
                    .build(),
            ),
            token: std::env::var("AUTH_TOKEN").ok().filter(|t| !t.is_empty()),
        }
    }

    fn sync(&self, user: &str) -> Sample {
        self.call("GET", &format!("/?user={user}"))
    }

    /// `POST /do/import` then `requests` timed `GET /do`: (import sample, query samples).
    fn durable_object(&self, user: &str, requests: usize) -> (Sample, Vec<Sample>) {
        let import = self.call("POST", &format!("/do/import?user={user}"));
        assert_eq!(
            import.json["success"], true,
            "import {user}: {}",
            import.json
        );
        self.call("GET", &format!("/do?user={user}"));
        let queries = (0..requests)
            .map(|_| self.call("GET", &format!("/do?user={user}")))
            .collect();
        (import, queries)
    }

    fn call(&self, method: &str, path: &str) -> Sample {
        let url = format!("{}{path}", self.base);
        let mut req = ureq::http::Request::builder().method(method).uri(&url);
        if let Some(t) = &self.token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        let req = req.body(()).expect("request");
        let start = Instant::now();
        let mut response = self
            .agent
            .run(req)
            .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        let text = response.body_mut().read_to_string().expect("read body");
        let client_ms = start.elapsed().as_secs_f64() * 1000.0;
        let status = response.status().as_u16();
        assert_eq!(status, 200, "GET {url}: {status} {text}");
        Sample {
            client_ms,
            json: serde_json::from_str(&text).expect("JSON body"),
        }
    }
}

fn field(sample: &Sample, pointer: &str) -> f64 {
    sample
        .json
        .pointer(pointer)
        .and_then(Value::as_f64)
        .unwrap_or(f64::NAN)
}

fn stats(mut v: Vec<f64>) -> (f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    v.sort_by(f64::total_cmp);
    let at = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    (at(0.5), at(0.95))
}

struct SizeResult {
    size_kb: usize,
    size_bytes: usize,
    cold: Sample,
    /// Warm requests that downloaded and parsed (cache off).
    warm: Vec<Sample>,
    /// Warm requests served from the version cache.
    hits: Vec<Sample>,
    /// Cache hits with `save=auto` (no write back).
    hits_auto: Vec<Sample>,
    /// The Durable Object route: the import, then timed `GET /do` requests.
    durable: Option<(Sample, Vec<Sample>)>,
    /// (p50, p95) of a bare get + put of the same bytes, local only.
    floor_ms: Option<(f64, f64)>,
    peak_memory_kib: Option<(u64, u64)>,
}

impl SizeResult {
    fn warm_stats(&self, pointer: &str) -> (f64, f64) {
        stats(self.warm.iter().map(|s| field(s, pointer)).collect())
    }
    fn hit_stats(&self, pointer: &str) -> (f64, f64) {
        stats(self.hits.iter().map(|s| field(s, pointer)).collect())
    }
    fn hit_client_stats(&self) -> (f64, f64) {
        stats(self.hits.iter().map(|s| s.client_ms).collect())
    }
    fn wasm_memory_bytes(&self) -> f64 {
        std::iter::once(&self.cold)
            .chain(&self.warm)
            .map(|s| field(s, "/memory/wasm_memory_bytes"))
            .fold(0.0, f64::max)
    }
    fn client_stats(&self) -> (f64, f64) {
        stats(self.warm.iter().map(|s| s.client_ms).collect())
    }
}

fn run_size(
    client: &Client,
    size_kb: usize,
    image: &[u8],
    requests: usize,
) -> (Sample, Vec<Sample>) {
    let user = format!("bench-{size_kb}");
    let cold = client.sync(&user);
    for _ in 0..2 {
        client.sync(&user);
    }
    let warm = (0..requests)
        .map(|_| client.sync(&user))
        .collect::<Vec<_>>();
    for s in &warm {
        assert_eq!(
            s.json["db_info"]["size_bytes"],
            image.len(),
            "{size_kb} KB: wrong object"
        );
    }
    (cold, warm)
}

fn seed_remote(size_kb: usize, image: &[u8]) {
    let file = std::env::temp_dir().join(format!("bench-{size_kb}.sqlite"));
    std::fs::write(&file, image).expect("write temp database");
    let status = std::process::Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/node_modules/.bin/wrangler"
    ))
    .args([
        "r2",
        "object",
        "put",
        &format!("{}/bench-{size_kb}/database.sqlite", harness::BUCKET),
        "--remote",
        "--file",
    ])
    .arg(&file)
    .status()
    .expect("run wrangler");
    assert!(status.success(), "seeding bench-{size_kb} remotely failed");
}

fn main() {
    let args = parse_args();
    let mut results = Vec::new();
    let remote = args.url.as_deref().map(Client::new);
    for &size_kb in &args.sizes_kb {
        let image = fixtures::sized_database(size_kb * 1024, size_kb as u64).expect("generate");
        eprintln!("bench: {size_kb} KB ({} bytes)...", image.len());
        let result =
            if let Some(client) = &remote {
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
                }
            } else {
                // A fresh worker per size: the first request is a real cold start, and the
                // runtime's peak memory belongs to this size alone.
                // Cache off: every request downloads and parses (the spec's behaviour).
                let worker = harness::LocalWorker::start_with_vars(
                    &[],
                    &[
                        ("ALLOW_ANONYMOUS", "true"),
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
                drop(worker);
                // Cache on, sized to hold this database: warm requests are version-cache hits.
                let cached = harness::LocalWorker::start_with_vars(
                    &[],
                    &[
                        ("ALLOW_ANONYMOUS", "true"),
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
                    hits_auto.iter().all(|h| h.json["cache"]["status"] == "hit"
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
                }
            };
        results.push(result);
    }
    let target = args
        .url
        .clone()
        .unwrap_or_else(|| "local wrangler dev (workerd + simulated R2)".into());
    let md = render_tables(&results, &target, args.requests);
    println!("{md}");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&dir).expect("create target/bench");
    std::fs::write(dir.join("e2e.md"), &md).expect("write md");
    std::fs::write(dir.join("e2e.svg"), render_svg(&results, &target)).expect("write svg");
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
            "cold": {"client_ms": r.cold.client_ms, "response": r.cold.json},
            "warm": r.warm.iter().map(|s| json!({"client_ms": s.client_ms, "response": s.json})).collect::<Vec<_>>(),
            "durable_object": r.durable.as_ref().map(|(import, queries)| json!({
                "import": {"client_ms": import.client_ms, "response": import.json},
                "queries": queries.iter().map(|s| json!({"client_ms": s.client_ms, "response": s.json})).collect::<Vec<_>>(),
            })),
            "storage_floor_ms": r.floor_ms.map(|(p50, p95)| json!({"p50": p50, "p95": p95})),
            "cache_hits_save_auto": r.hits_auto.iter().map(|s| json!({"client_ms": s.client_ms, "response": s.json})).collect::<Vec<_>>(),
            "cache_hits": r.hits.iter().map(|s| json!({"client_ms": s.client_ms, "response": s.json})).collect::<Vec<_>>(),
            "durable_object": r.durable.as_ref().map(|(import, queries)| json!({
                "import": {"client_ms": import.client_ms, "response": import.json},
                "queries": queries.iter().map(|s| json!({"client_ms": s.client_ms, "response": s.json})).collect::<Vec<_>>(),
            })),
            "storage_floor_ms": r.floor_ms.map(|(p50, p95)| json!({"p50": p50, "p95": p95})),
            "cache_hits_save_auto": r.hits_auto.iter().map(|s| json!({"client_ms": s.client_ms, "response": s.json})).collect::<Vec<_>>(),
            "cache_hits": r.hits.iter().map(|s| json!({"client_ms": s.client_ms, "response": s.json})).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    });
    std::fs::write(
        dir.join("e2e.json"),
        serde_json::to_string_pretty(&raw).unwrap(),
    )
    .expect("write json");
    eprintln!("wrote target/bench/e2e.{{md,json,svg}}");
}

fn size_label(kb: usize) -> String {
    if kb >= 1024 {
        format!("{} MB", kb / 1024)
    } else {
        format!("{kb} KB")
    }
}

fn render_tables(results: &[SizeResult], target: &str, requests: usize) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Target: {target}; {requests} warm requests per size after 2 warm-ups; a fresh isolate's first request is reported as cold. Locally each size runs twice: with the version cache off (every request downloads and parses: the plain columns) and on (warm requests are cache hits: the cache-hit columns). Times in ms, p50 / p95.\n"
    );
    let _ = writeln!(
        md,
        "**1. Network (R2 transfer)**\n\n| DB size | bytes | download p50 | download p95 | cache-hit check p50 | upload p50 | upload p95 |\n|---|---|---|---|---|---|---|"
    );
    for r in results {
        let (d50, d95) = r.warm_stats("/timing_breakdown/load/download_ms");
        let (u50, u95) = r.warm_stats("/timing_breakdown/save/upload_ms");
        let (h50, _) = r.hit_stats("/timing_breakdown/load/download_ms");
        let _ = writeln!(
            md,
            "| {} | {} | {d50:.1} | {d95:.1} | {h50:.1} | {u50:.1} | {u95:.1} |",
            size_label(r.size_kb),
            r.size_bytes
        );
    }
    let _ = writeln!(
        md,
        "\n**2. SQLite CPU (in workerd)**\n\n| DB size | parse p50 | parse p95 | query p50 | serialize p50 | cold wasm_init | cold parse |\n|---|---|---|---|---|---|---|"
    );
    for r in results {
        let (p50, p95) = r.warm_stats("/timing_breakdown/load/parse_ms");
        let (q50, _) = r.warm_stats("/timing_breakdown/query_ms");
        let (s50, _) = r.warm_stats("/timing_breakdown/save/serialize_ms");
        let _ = writeln!(
            md,
            "| {} | {p50:.1} | {p95:.1} | {q50:.1} | {s50:.1} | {:.1} | {:.1} |",
            size_label(r.size_kb),
            field(&r.cold, "/timing_breakdown/load/wasm_init_ms"),
            field(&r.cold, "/timing_breakdown/load/parse_ms")
        );
    }
    let _ = writeln!(
        md,
        "\n**3. Total overhead**\n\n| DB size | load p50 | load p95 | load (cache hit) p50 | save p50 | save p95 | load status (p50) | save status (p50) | client p50 | client p95 | client (cache hit) p50 | client (hit, save=auto) p50 | cold client |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    let t = workers_sqlite_poc::delay::Thresholds::default();
    for r in results {
        let (l50, l95) = r.warm_stats("/timing_breakdown/load/total_ms");
        let (s50, s95) = r.warm_stats("/timing_breakdown/save/total_ms");
        let (c50, c95) = r.client_stats();
        let (lh50, _) = r.hit_stats("/timing_breakdown/load/total_ms");
        let (ch50, _) = r.hit_client_stats();
        let (ca50, _) = stats(r.hits_auto.iter().map(|s| s.client_ms).collect());
        let band = |ms: f64| format!("{:?}", t.classify(ms).0).to_lowercase();
        let _ = writeln!(
            md,
            "| {} | {l50:.1} | {l95:.1} | {lh50:.1} | {s50:.1} | {s95:.1} | {} | {} | {c50:.1} | {c95:.1} | {ch50:.1} | {ca50:.1} | {:.1} |",
            size_label(r.size_kb),
            band(l50),
            band(s50),
            r.cold.client_ms
        );
    }
    let _ = writeln!(
        md,
        "\n**4. Storage floor**\n\nThe same R2 get + put of the same bytes without the worker or SQLite (wrangler dev's explorer API, timed by the client; it also carries the body over loopback HTTP both ways, which the worker does not), next to the worker's full round trip with the cache off.\n\n| DB size | bare get+put p50 | bare get+put p95 | worker round trip p50 | worker / floor |\n|---|---|---|---|---|"
    );
    for r in results {
        let (c50, _) = r.client_stats();
        let line = match r.floor_ms {
            Some((f50, f95)) => format!("{f50:.1} | {f95:.1} | {c50:.1} | {:.2}", c50 / f50),
            None => format!("n/a | n/a | {c50:.1} | n/a"),
        };
        let _ = writeln!(md, "| {} | {line} |", size_label(r.size_kb));
    }
    let _ = writeln!(
        md,
        "\n**5. R2 route vs Durable Object route**\n\nThe R2 route moves the whole database on every request (cache off: download + parse + upload; the client's round trip). The Durable Object route (`GET /do`, after a one-off `POST /do/import`) answers the same question from data that already lives in the object: nothing is transferred. Client round trips, ms.\n\n| DB size | R2 route p50 | R2 route p95 | R2 band (load+save p50) | R2 cache hit + save=auto p50 | DO route p50 | DO route p95 | DO band | one-off import |\n|---|---|---|---|---|---|---|---|---|"
    );
    let band = |ms: f64| format!("{:?}", t.classify(ms).0).to_lowercase();
    for r in results {
        let (c50, c95) = r.client_stats();
        let sync = r.warm_stats("/timing_breakdown/load/total_ms").0
            + r.warm_stats("/timing_breakdown/save/total_ms").0;
        let (ca50, _) = stats(r.hits_auto.iter().map(|s| s.client_ms).collect());
        let (do_line, do_band) = match &r.durable {
            Some((import, queries)) => {
                let (d50, d95) = stats(queries.iter().map(|s| s.client_ms).collect());
                let load = stats(
                    queries
                        .iter()
                        .map(|s| field(s, "/delay_analysis/load/ms"))
                        .collect(),
                )
                .0;
                (
                    format!("{d50:.1} | {d95:.1}"),
                    format!("{} | {:.0}", band(load), import.client_ms),
                )
            }
            None => ("n/a | n/a".into(), "n/a | n/a".into()),
        };
        let _ = writeln!(
            md,
            "| {} | {c50:.1} | {c95:.1} | {} | {ca50:.1} | {do_line} | {do_band} |",
            size_label(r.size_kb),
            band(sync)
        );
    }
    let _ = writeln!(
        md,
        "\n**6. Where each route crosses the thresholds** (first measured size whose p50 sync delay, load + save for R2 and the Durable Object round trip's load for `GET /do`, reaches the threshold)\n\n| threshold | R2 route | Durable Object route |\n|---|---|---|"
    );
    for (name, limit) in [
        ("100 ms (acceptable)", t.optimal_ms),
        ("300 ms (warning)", t.acceptable_ms),
        ("500 ms (slow)", t.warning_ms),
        ("1000 ms (critical)", t.critical_ms),
    ] {
        let first = |f: &dyn Fn(&SizeResult) -> Option<f64>| {
            results
                .iter()
                .find(|r| f(r).is_some_and(|ms| ms >= f64::from(limit)))
                .map_or_else(
                    || {
                        format!(
                            "not reached up to {}",
                            size_label(results.last().map_or(0, |r| r.size_kb))
                        )
                    },
                    |r| size_label(r.size_kb),
                )
        };
        let r2 = first(&|r| {
            Some(
                r.warm_stats("/timing_breakdown/load/total_ms").0
                    + r.warm_stats("/timing_breakdown/save/total_ms").0,
            )
        });
        let dur = first(&|r| {
            r.durable.as_ref().map(|(_, q)| {
                stats(
                    q.iter()
                        .map(|s| field(s, "/delay_analysis/load/ms"))
                        .collect(),
                )
                .0
            })
        });
        let _ = writeln!(md, "| {name} | {r2} | {dur} |");
    }
    let _ = writeln!(
        md,
        "\n**7. Memory**\n\nwasm memory is the instance's linear memory after the size's requests (it never shrinks, so it is the high-water mark of SQLite and Rust allocations). The isolate also holds the R2 body and the upload copy in JS (one image each), so its peak is about wasm + 2 x size. The workerd column is the whole local runtime's peak RSS growth, simulated R2 included: an upper bound.\n\n| DB size | wasm memory | wasm / size | est. isolate peak (wasm + 2 x size) | workerd peak RSS growth |\n|---|---|---|---|---|"
    );
    for r in results {
        let wasm = r.wasm_memory_bytes();
        let mb = |b: f64| b / 1_048_576.0;
        let workerd = r
            .peak_memory_kib
            .map(|(d, _)| format!("{:.1} MB", d as f64 / 1024.0))
            .unwrap_or_else(|| "n/a".into());
        let _ = writeln!(
            md,
            "| {} | {:.1} MB | {:.2} | {:.1} MB | {workerd} |",
            size_label(r.size_kb),
            mb(wasm),
            wasm / r.size_bytes as f64,
            mb(wasm + 2.0 * r.size_bytes as f64)
        );
    }
    md
}

/// (legend, colour, (size KB, ms) points).
type Series = (&'static str, &'static str, Vec<(f64, f64)>);

fn render_svg(results: &[SizeResult], target: &str) -> String {
    let (w, h, left, right, top, bottom) = (820.0, 460.0, 70.0, 20.0, 40.0, 60.0);
    let series: Vec<Series> = vec![
        (
            "load total p50",
            "#1f77b4",
            results
                .iter()
                .map(|r| {
                    (
                        r.size_kb as f64,
                        r.warm_stats("/timing_breakdown/load/total_ms").0,
                    )
                })
                .collect(),
        ),
        (
            "save total p50",
            "#9467bd",
            results
                .iter()
                .map(|r| {
                    (
                        r.size_kb as f64,
                        r.warm_stats("/timing_breakdown/save/total_ms").0,
                    )
                })
                .collect(),
        ),
        (
            "load total p50, cache hit",
            "#2ca02c",
            results
                .iter()
                .map(|r| {
                    (
                        r.size_kb as f64,
                        r.hit_stats("/timing_breakdown/load/total_ms").0,
                    )
                })
                .collect(),
        ),
        (
            "client round trip p50",
            "#222222",
            results
                .iter()
                .map(|r| (r.size_kb as f64, r.client_stats().0))
                .collect(),
        ),
    ];
    let max_ms = series
        .iter()
        .flat_map(|s| s.2.iter().map(|p| p.1))
        .fold(0.0_f64, f64::max);
    let y_max = (max_ms * 1.1).max(1100.0);
    let (x_min, x_max) = (100.0_f64.log10(), 51_200.0_f64.log10());
    let x = |kb: f64| left + (kb.log10() - x_min) / (x_max - x_min) * (w - left - right);
    let y = |ms: f64| top + (1.0 - ms.min(y_max) / y_max) * (h - top - bottom);
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = write!(svg, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let bands = [
        (0.0, 100.0, "#d9f2d9", "optimal"),
        (100.0, 300.0, "#eef7d0", "acceptable"),
        (300.0, 500.0, "#fff3c4", "warning"),
        (500.0, 1000.0, "#ffe0c2", "slow"),
        (1000.0, y_max, "#ffd0d0", "critical"),
    ];
    for (lo, hi, color, name) in bands {
        let _ = write!(
            svg,
            r##"<rect x="{left}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{color}"/><text x="{:.1}" y="{:.1}" fill="#666" text-anchor="end">{name}</text>"##,
            y(hi),
            w - left - right,
            y(lo) - y(hi),
            w - right - 4.0,
            y(hi) + 14.0
        );
    }
    for ms in [0.0, 100.0, 300.0, 500.0, 1000.0] {
        let _ = write!(
            svg,
            r##"<line x1="{left}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="#999" stroke-dasharray="3,3"/><text x="{:.1}" y="{:.1}" text-anchor="end">{ms} ms</text>"##,
            w - right,
            y(ms),
            y(ms),
            left - 6.0,
            y(ms) + 4.0
        );
    }
    for kb in DEFAULT_SIZES_KB {
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            x(*kb as f64),
            h - bottom + 18.0,
            size_label(*kb)
        );
    }
    let _ = write!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">database size (log scale)</text>"#,
        (left + w - right) / 2.0,
        h - 16.0
    );
    let _ = write!(
        svg,
        r#"<text x="{left}" y="22" font-size="14">Sync delay vs database size: {}</text>"#,
        target.replace('&', "&amp;").replace('<', "&lt;")
    );
    for (i, (name, color, points)) in series.iter().enumerate() {
        let path: Vec<String> = points
            .iter()
            .map(|(kb, ms)| format!("{:.1},{:.1}", x(*kb), y(*ms)))
            .collect();
        let _ = write!(
            svg,
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"/>"#,
            path.join(" ")
        );
        for (kb, ms) in points {
            let _ = write!(
                svg,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"/>"#,
                x(*kb),
                y(*ms)
            );
        }
        let ly = top + 16.0 + i as f64 * 16.0;
        let _ = write!(
            svg,
            r#"<line x1="{:.1}" x2="{:.1}" y1="{ly:.1}" y2="{ly:.1}" stroke="{color}" stroke-width="2"/><text x="{:.1}" y="{:.1}">{name}</text>"#,
            left + 10.0,
            left + 30.0,
            left + 36.0,
            ly + 4.0
        );
    }
    svg.push_str("</svg>\n");
    svg
}
