//! Reads and one-row writes by database size (100 KB to 32 MiB) under the `spec` R2 model
//! (tests/model/; one isolate), for both R2 layouts and the Durable Object route, side by
//! side in one run: the first read (download and parse), reads of the cached copy, and
//! one-row writes spaced just over R2's one write per second per key, so each shows its own
//! latency rather than the rate limit's (benches/write_rate.rs measures the rate). No timed
//! assertions.
//!
//! ```text
//! cargo bench --locked --features e2e --bench by_size                  # 10 of each
//! cargo bench --locked --features e2e --bench by_size -- --requests 5 --sizes 100,1024
//! ```
//!
//! Writes `target/bench/by_size.md` and `target/bench/by_size.json` (every sample).

#[allow(dead_code)]
#[path = "../tests/e2e/harness.rs"]
mod harness;

#[allow(dead_code)]
#[path = "common/mod.rs"]
mod common;

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use workers_sqlite_poc::fixtures;
use workers_sqlite_poc::testing::apply_sql;

use common::{out_dir, percentile, routes, size_label};
use harness::{LocalWorker, Under};

/// A write every this often: just over R2's one write per second per key.
const WRITE_SPACING: Duration = Duration::from_millis(1100);

fn parse_args() -> (usize, Vec<usize>) {
    let (mut requests, mut sizes) = (10, vec![100, 1024, 5120, 20_480, 32_768]);
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--requests" => requests = it.next().and_then(|n| n.parse().ok()).expect("N"),
            "--sizes" => {
                sizes = it
                    .next()
                    .expect("KB,KB")
                    .split(',')
                    .map(|s| s.parse().expect("KB"))
                    .collect();
            }
            _ => {}
        }
    }
    (requests, sizes)
}

fn image(kb: usize) -> Vec<u8> {
    apply_sql(
        &fixtures::sized_database(kb * 1024, kb as u64).expect("fixture"),
        "CREATE TABLE hits(id INTEGER PRIMARY KEY, note TEXT)",
    )
}

/// One timed `/query`: (status, client ms).
fn timed(worker: &LocalWorker, user: &str, body: &Value) -> (u16, f64) {
    let sent = Instant::now();
    let answer = worker.post_json(&format!("/query?user={user}"), body, &[]);
    assert!(
        answer.status == 200 || answer.status == 503,
        "{user}: {}",
        answer.json
    );
    (answer.status, sent.elapsed().as_secs_f64() * 1000.0)
}

struct Series {
    kb: usize,
    route: &'static str,
    first_read_ms: f64,
    reads_ms: Vec<f64>,
    writes_ms: Vec<f64>,
    refused: usize,
}

fn p(samples: &[f64], q: f64) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    percentile(&sorted, q)
}

fn series(worker: &LocalWorker, route: &'static str, kb: usize, requests: usize) -> Series {
    let user = format!("{}-{kb}", route.replace(' ', "-"));
    worker.put_object(&format!("{user}/database.sqlite"), &image(kb));
    if route == "durable object" {
        let moved = worker.request("POST", &format!("/migrate?user={user}&to=durable_object"));
        assert_eq!(moved.status, 200, "{user}: {}", moved.json);
    }
    let read = json!({"sql": "SELECT count(*) FROM hits"});
    let (_, first_read_ms) = timed(worker, &user, &read);
    let reads_ms = (0..requests)
        .map(|_| timed(worker, &user, &read).1)
        .collect();
    let mut writes_ms = Vec::new();
    let mut refused = 0;
    for id in 0..requests {
        let started = Instant::now();
        let body = json!({"sql": "INSERT INTO hits(id, note) VALUES (?, ?)",
                          "params": [id, format!("bench write {id}")]});
        let (status, ms) = timed(worker, &user, &body);
        if status == 200 {
            writes_ms.push(ms);
        } else {
            refused += 1;
        }
        std::thread::sleep(WRITE_SPACING.saturating_sub(started.elapsed()));
    }
    Series {
        kb,
        route,
        first_read_ms,
        reads_ms,
        writes_ms,
        refused,
    }
}

fn main() {
    let (requests, sizes) = parse_args();
    let mut all = Vec::new();
    for layout in ["incremental", "single"] {
        let worker = LocalWorker::start_under(
            &Under::model("spec"),
            &[],
            &[
                ("ALLOW_ANONYMOUS", "true"),
                ("LAYOUT", layout),
                // Room for a one-row write into 32 MiB.
                ("MAX_DB_BYTES", "67108864"),
            ],
        );
        for route in routes(layout) {
            for &kb in &sizes {
                let s = series(&worker, route, kb, requests);
                println!(
                    "{} {route}: first read {:.0} ms, read p50 {:.0}, write p50 {:.0} p99 {:.0}, refused {}",
                    size_label(kb),
                    s.first_read_ms,
                    p(&s.reads_ms, 0.5),
                    p(&s.writes_ms, 0.5),
                    p(&s.writes_ms, 0.99),
                    s.refused
                );
                all.push(s);
            }
        }
        eprintln!("{layout}: {}", worker.model_stats());
    }

    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Reads and one-row writes by size, under the `spec` model (modelled; one isolate, {requests} \
         of each, writes {} ms apart)\n\n\
         | size | route | first read ms | read p50 ms | read p99 ms | write p50 ms | write p99 ms | refused (503) |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- |",
        WRITE_SPACING.as_millis()
    );
    for &kb in &sizes {
        for s in all.iter().filter(|s| s.kb == kb) {
            let _ = writeln!(
                md,
                "| {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {} |",
                size_label(kb),
                s.route,
                s.first_read_ms,
                p(&s.reads_ms, 0.5),
                p(&s.reads_ms, 0.99),
                p(&s.writes_ms, 0.5),
                p(&s.writes_ms, 0.99),
                s.refused
            );
        }
    }
    let dir = out_dir();
    std::fs::write(dir.join("by_size.md"), &md).expect("write md");
    let raw: Vec<Value> = all
        .iter()
        .map(|s| {
            json!({"kb": s.kb, "route": s.route, "first_read_ms": s.first_read_ms,
                   "reads_ms": s.reads_ms, "writes_ms": s.writes_ms, "refused": s.refused})
        })
        .collect();
    std::fs::write(
        dir.join("by_size.json"),
        serde_json::to_string_pretty(
            &json!({"model": "spec", "requests": requests, "series": raw}),
        )
        .unwrap(),
    )
    .expect("write json");
    println!("\n{md}");
}
