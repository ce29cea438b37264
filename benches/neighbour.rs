//! How long one user's worst allowed request delays another user's request in the same
//! isolate (local `workerd`: `wrangler dev` runs one isolate, so every request shares it).
//!
//! ```text
//! cargo bench --features e2e --bench neighbour               # 7 rounds per attack
//! cargo bench --features e2e --bench neighbour -- --rounds 3
//! ```
//!
//! For each attack (a request that stays inside every cap but costs the most of one kind: the
//! whole VM-step budget, the longest LIKE, the heaviest sort, the largest answer), a victim's
//! `SELECT 1` for another user is sent while the attack runs; the victim's extra latency over
//! its latency alone is the delay. Prints a table of medians and writes
//! `target/bench/neighbour.json`.

#[allow(dead_code)]
#[path = "../tests/e2e/harness.rs"]
mod harness;

#[allow(dead_code)]
#[path = "common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use workers_sqlite_poc::exec::{DEFAULT_QUERY_MAX_STEPS, MAX_LIKE_PATTERN_BYTES, MAX_VALUE_BYTES};

use common::{out_dir, p50_p95};
use harness::LocalWorker;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rounds: usize = args
        .iter()
        .position(|a| a == "--rounds")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(7);
    let worker = LocalWorker::start(&[]);
    let victim = || {
        let start = Instant::now();
        let answer = worker.post_json("/query?user=victim", &json!({"sql": "SELECT 1"}), &[]);
        assert_eq!(answer.status, 200, "{}", answer.json);
        ms(start.elapsed())
    };
    // Warm both users up (isolate start, first loads).
    worker.post_json("/query?user=attacker", &json!({"sql": "SELECT 1"}), &[]);
    let alone: Vec<f64> = (0..rounds * 2).map(|_| victim()).collect();
    let (alone_p50, _) = p50_p95(alone);

    let pairs = usize::try_from(MAX_LIKE_PATTERN_BYTES).unwrap_or(0) / 2 - 1;
    let attacks: Vec<(&str, String)> = vec![
        (
            "whole VM-step budget",
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT max(x) FROM c"
                .into(),
        ),
        (
            "longest LIKE",
            format!(
                "SELECT printf('%.*c', {}, 'x') LIKE '{}y'",
                MAX_VALUE_BYTES - 1,
                "%x".repeat(pairs)
            ),
        ),
        (
            "sort at the heap limit",
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 300000) \
             SELECT x FROM c ORDER BY random() LIMIT 1"
                .into(),
        ),
        (
            "largest answer",
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 38) \
             SELECT randomblob(65536) FROM c"
                .into(),
        ),
    ];
    let mut rows = Vec::new();
    println!("victim alone: {alone_p50:.1} ms p50 (QUERY_MAX_STEPS = {DEFAULT_QUERY_MAX_STEPS})\n");
    println!(
        "{:<24} | {:>14} | {:>12} | {:>14} | {:>12}",
        "attack", "attack ms p50", "attack code", "victim ms p50", "delay ms p50"
    );
    for (name, sql) in &attacks {
        let mut attack_ms = Vec::new();
        let mut victim_ms = Vec::new();
        let mut code = String::new();
        for _ in 0..rounds {
            std::thread::scope(|scope| {
                let attack = scope.spawn(|| {
                    let start = Instant::now();
                    let answer =
                        worker.post_json("/query?user=attacker", &json!({"sql": sql}), &[]);
                    let code = match answer.status {
                        200 => "200".to_owned(),
                        _ => answer.json["error"]["code"]
                            .as_str()
                            .unwrap_or("?")
                            .to_owned(),
                    };
                    (ms(start.elapsed()), code)
                });
                // Sent once the attack is surely running.
                std::thread::sleep(Duration::from_millis(30));
                victim_ms.push(victim());
                let (a, c) = attack.join().expect("attack thread");
                attack_ms.push(a);
                code = c;
            });
        }
        let (a50, _) = p50_p95(attack_ms.clone());
        let (v50, v95) = p50_p95(victim_ms.clone());
        let delay = (v50 - alone_p50).max(0.0);
        println!("{name:<24} | {a50:>14.1} | {code:>12} | {v50:>14.1} | {delay:>12.1}");
        rows.push(json!({
            "attack": name, "sql": sql, "code": code,
            "attack_ms": attack_ms, "victim_ms": victim_ms,
            "attack_ms_p50": a50, "victim_ms_p50": v50, "victim_ms_p95": v95,
            "delay_ms_p50": delay,
        }));
    }
    let worst = rows
        .iter()
        .filter_map(|r| r["delay_ms_p50"].as_f64())
        .fold(0.0, f64::max);
    println!("\nworst delay of another user's request: {worst:.1} ms (median of {rounds})");
    let out = out_dir().join("neighbour.json");
    let json: Value = json!({
        "bench": "neighbour",
        "rounds": rounds,
        "victim_alone_ms_p50": alone_p50,
        "query_max_steps": DEFAULT_QUERY_MAX_STEPS,
        "rows": rows,
        "worst_delay_ms_p50": worst,
    });
    std::fs::write(&out, serde_json::to_string_pretty(&json).unwrap()).expect("write json");
    println!("wrote {}", out.display());
}
