//! Sustained acknowledged writes per second for one user, with p50 and p99 latency, at 1, 4,
//! 16 and 64 concurrent writers (closed loop: each sends its next one-row insert when the
//! last is answered), with 1 and 2 isolates, under the `local` and `spec` R2 models
//! (tests/model/), for both R2 layouts and the Durable Object route; then the Durable Object
//! route at each of the model's three assumed hops. Side by side in one run; no timed
//! assertions.
//!
//! ```text
//! cargo bench --locked --features e2e --bench write_rate                      # 10 s a cell
//! cargo bench --locked --features e2e --bench write_rate -- --seconds 5 --writers 16 --models spec --isolates 1
//! cargo bench --locked --features e2e --bench write_rate -- --writers 16 --models spec --isolates 1 --layouts incremental --slots 1,2,4 --no-do --no-hops
//! ```
//!
//! `--slots` runs the incremental rows once per `COMMIT_SLOTS` value (default: the shipped
//! one); `--layouts` picks the R2 layouts; `--no-do` drops the Durable Object rows; `--var
//! NAME=VALUE` sets another worker var on every R2 row. `WRITE_RATE_PROBE=1` prints each
//! acknowledged write's queue wait, load and save times, pending deltas and cache status to
//! stderr (where a commit's time goes).
//!
//! Writes `target/bench/write_rate.md` (the tables) and `target/bench/write_rate.json` (every
//! cell, with the model's counts of what it injected).

#[allow(dead_code)]
#[path = "../tests/e2e/harness.rs"]
mod harness;

#[allow(dead_code)]
#[path = "common/mod.rs"]
mod common;

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use common::{out_dir, percentile, routes};
use harness::{LocalWorker, Under};

struct Args {
    seconds: u64,
    writers: Vec<usize>,
    models: Vec<&'static str>,
    isolates: Vec<u8>,
    /// Skip the Durable Object hop sweep.
    no_hops: bool,
    /// Skip the Durable Object route.
    no_do: bool,
    /// The R2 layouts to run.
    layouts: Vec<&'static str>,
    /// `COMMIT_SLOTS` values for the incremental layout (`None`: the worker's default).
    slots: Vec<Option<u32>>,
    /// More worker vars (`--var NAME=VALUE`), for experiments.
    vars: Vec<(String, String)>,
}

fn parse_args() -> Args {
    let mut args = Args {
        seconds: 10,
        writers: vec![1, 4, 16, 64],
        models: vec!["local", "spec"],
        isolates: vec![1, 2],
        no_hops: false,
        no_do: false,
        layouts: vec!["incremental", "single"],
        slots: vec![None],
        vars: vec![],
    };
    let list = |v: Option<String>| -> Vec<String> {
        v.expect("a comma-separated list")
            .split(',')
            .map(str::to_owned)
            .collect()
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--seconds" => args.seconds = it.next().and_then(|n| n.parse().ok()).expect("N"),
            "--writers" => {
                args.writers = list(it.next()).iter().map(|n| n.parse().unwrap()).collect();
            }
            "--models" => {
                args.models = list(it.next())
                    .iter()
                    .map(|m| match m.as_str() {
                        "local" => "local",
                        "spec" => "spec",
                        other => panic!("no model {other}"),
                    })
                    .collect();
            }
            "--isolates" => {
                args.isolates = list(it.next()).iter().map(|n| n.parse().unwrap()).collect();
            }
            "--no-hops" => args.no_hops = true,
            "--no-do" => args.no_do = true,
            "--var" => {
                let pair = it.next().expect("NAME=VALUE");
                let (name, value) = pair.split_once('=').expect("NAME=VALUE");
                args.vars.push((name.to_owned(), value.to_owned()));
            }
            "--layouts" => {
                args.layouts = list(it.next())
                    .iter()
                    .map(|l| match l.as_str() {
                        "incremental" => "incremental",
                        "single" => "single",
                        other => panic!("no layout {other}"),
                    })
                    .collect();
            }
            "--slots" => {
                args.slots = list(it.next())
                    .iter()
                    .map(|n| Some(n.parse().unwrap()))
                    .collect();
            }
            // cargo bench passes --bench.
            _ => {}
        }
    }
    args
}

/// One cell: a route, a model, isolates, writers, and what they saw.
struct Cell {
    model: &'static str,
    isolates: u8,
    route: &'static str,
    /// `COMMIT_SLOTS` of an incremental row (`None`: the default).
    slots: Option<u32>,
    do_hop_ms: Value,
    writers: usize,
    seconds: f64,
    acknowledged: usize,
    refused: usize,
    other: usize,
    /// Status and `error.code` of each of those.
    other_errors: Vec<String>,
    latencies_ms: Vec<f64>,
    /// The write queue's group size and runs, averaged over the answers that report them
    /// (the R2 route's).
    mean_group_size: f64,
    mean_group_runs: f64,
    injected: Value,
}

impl Cell {
    fn per_s(&self) -> f64 {
        self.acknowledged as f64 / self.seconds
    }

    fn p(&self, q: f64) -> f64 {
        let mut sorted = self.latencies_ms.clone();
        sorted.sort_by(f64::total_cmp);
        percentile(&sorted, q)
    }

    fn json(&self) -> Value {
        json!({
            "model": self.model, "isolates": self.isolates, "route": self.route,
            "commit_slots": self.slots,
            "do_hop_ms": self.do_hop_ms, "writers": self.writers, "seconds": self.seconds,
            "acknowledged": self.acknowledged, "acknowledged_per_s": self.per_s(),
            "refused_503": self.refused, "other_errors": self.other,
            "other_error_codes": self.other_errors,
            "p50_ms": self.p(0.5), "p99_ms": self.p(0.99),
            "mean_group_size": self.mean_group_size, "mean_group_runs": self.mean_group_runs,
            "injected": self.injected,
        })
    }
}

/// One answer: status, client round trip, and the write queue's report of its commit.
struct Seen {
    status: u16,
    /// `error.code` of an answer that is not 200.
    code: Option<String>,
    ms: f64,
    group_size: Option<f64>,
    group_runs: Option<f64>,
}

/// The mean of the values present; NaN when none is.
fn mean(values: impl Iterator<Item = Option<f64>>) -> f64 {
    let present: Vec<f64> = values.flatten().collect();
    present.iter().sum::<f64>() / present.len() as f64
}

/// The model's counts that changed between two `/__model/stats` answers.
fn injected(before: &Value, after: &Value) -> Value {
    let n = |v: &Value, path: &[&str]| path.iter().fold(v, |v, k| &v[*k]).as_f64().unwrap_or(0.0);
    let d = |path: &[&str]| n(after, path) - n(before, path);
    json!({
        "rate_limited_429": d(&["rate_limited"]),
        "transient_5xx": d(&["transient", "before"]) + d(&["transient", "lost_answer"]),
        "puts": d(&["calls", "put"]), "gets": d(&["calls", "get"]),
        "do_hops": d(&["do_hops"]),
    })
}

/// `writers` closed-loop writers of one-row inserts for `user` during `run`.
fn drive(worker: &LocalWorker, user: &str, writers: usize, run: Duration) -> (f64, Vec<Seen>) {
    let start = Instant::now();
    let answers: Vec<Vec<Seen>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..writers)
            .map(|w| {
                s.spawn(move || {
                    let mut seen = Vec::new();
                    let mut seq = 0;
                    while start.elapsed() < run {
                        let sent = Instant::now();
                        let answer = worker.post_json(
                            &format!("/query?user={user}"),
                            &json!({"sql": "INSERT INTO w (writer, seq) VALUES (?, ?)",
                                    "params": [w, seq]}),
                            &[],
                        );
                        let queue = &answer.json["write_queue"];
                        if std::env::var_os("WRITE_RATE_PROBE").is_some() && answer.status == 200 {
                            let t = &answer.json["timing_breakdown"];
                            eprintln!(
                                "probe queued={} load={} save={} pending={} applied={} cache={} runs={}",
                                queue["queued_ms"], t["load"]["total_ms"], t["save"]["total_ms"],
                                answer.json["storage"]["deltas_pending"],
                                answer.json["storage"]["deltas_applied"],
                                answer.json["cache"]["status"], queue["group_runs"]
                            );
                        }
                        seen.push(Seen {
                            status: answer.status,
                            code: answer.json["error"]["code"].as_str().map(str::to_owned),
                            ms: sent.elapsed().as_secs_f64() * 1000.0,
                            group_size: queue["group_size"].as_f64(),
                            group_runs: queue["group_runs"].as_f64(),
                        });
                        seq += 1;
                    }
                    seen
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    (
        start.elapsed().as_secs_f64(),
        answers.into_iter().flatten().collect(),
    )
}

/// Creates `user`'s table, moves them to their Durable Object if `route` says so, drives the
/// writers and checks every acknowledged row is stored.
fn cell(
    worker: &LocalWorker,
    under: Under,
    route: &'static str,
    slots: Option<u32>,
    writers: usize,
    seconds: u64,
) -> Cell {
    let user = format!(
        "{}-{}-k{}-w{writers}",
        route.replace(' ', "-"),
        under.isolates,
        slots.unwrap_or(0)
    );
    let create = worker.post_json(
        &format!("/query?user={user}"),
        &json!({"sql": "CREATE TABLE w (id INTEGER PRIMARY KEY, writer INTEGER, seq INTEGER)"}),
        &[],
    );
    assert_eq!(create.status, 200, "{user}: {}", create.json);
    if route == "durable object" {
        let mut moved = worker.request("POST", &format!("/migrate?user={user}&to=durable_object"));
        // Right after the create the key's write second may still be taken: wait as told.
        for _ in 0..5 {
            if moved.status != 503 {
                break;
            }
            std::thread::sleep(Duration::from_secs(2));
            moved = worker.request("POST", &format!("/migrate?user={user}&to=durable_object"));
        }
        assert_eq!(moved.status, 200, "{user}: {}", moved.json);
    }
    let before = worker.model_stats();
    let (elapsed, answers) = drive(worker, &user, writers, Duration::from_secs(seconds));
    let after = worker.model_stats();
    let acknowledged = answers.iter().filter(|a| a.status == 200).count();
    let stored = worker.post_json(
        &format!("/query?user={user}"),
        &json!({"sql": "SELECT count(*) FROM w"}),
        &[],
    );
    let rows = stored.json["results"][0]["rows"][0][0]
        .as_u64()
        .unwrap_or(0) as usize;
    assert!(
        rows >= acknowledged,
        "{user}: {rows} rows stored, {acknowledged} acknowledged"
    );
    Cell {
        model: under.model,
        isolates: under.isolates,
        route,
        slots,
        do_hop_ms: if route == "durable object" {
            after["do_hop_ms"].clone()
        } else {
            Value::Null
        },
        writers,
        seconds: elapsed,
        acknowledged,
        refused: answers.iter().filter(|a| a.status == 503).count(),
        other: answers
            .iter()
            .filter(|a| a.status != 200 && a.status != 503)
            .count(),
        other_errors: answers
            .iter()
            .filter(|a| a.status != 200 && a.status != 503)
            .map(|a| format!("{} {}", a.status, a.code.as_deref().unwrap_or("")))
            .collect(),
        mean_group_size: mean(answers.iter().map(|a| a.group_size)),
        mean_group_runs: mean(answers.iter().map(|a| a.group_runs)),
        latencies_ms: answers
            .iter()
            .filter(|a| a.status == 200)
            .map(|a| a.ms)
            .collect(),
        injected: injected(&before, &after),
    }
}

/// One decimal, or a dash where nothing reported it.
fn dash(v: f64) -> String {
    if v.is_nan() {
        "–".into()
    } else {
        format!("{v:.1}")
    }
}

fn row(cell: &Cell) -> String {
    format!(
        "| {} | {} | {}{} | {} | {:.1} | {:.0} | {:.0} | {} | {} | {} | {} | {} |",
        cell.model,
        cell.isolates,
        cell.route,
        cell.slots.map_or(String::new(), |k| format!(", {k} slots")),
        cell.writers,
        cell.per_s(),
        cell.p(0.5),
        cell.p(0.99),
        cell.refused,
        cell.other,
        cell.injected["rate_limited_429"],
        dash(cell.mean_group_size),
        dash(cell.mean_group_runs),
    )
}

fn main() {
    let args = parse_args();
    let mut cells = Vec::new();
    let header = "| model | isolates | route | writers | acknowledged/s | p50 ms | p99 ms | refused (503) | other errors | R2 429s injected | mean group | mean runs |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |";
    println!("{header}");
    for &model in &args.models {
        for &isolates in &args.isolates {
            for &layout in &args.layouts {
                let slot_runs = if layout == "incremental" {
                    args.slots.clone()
                } else {
                    vec![None]
                };
                for (run, &slots) in slot_runs.iter().enumerate() {
                    let under = Under::model(model).isolates(isolates);
                    let k = slots.map(|k| k.to_string());
                    let mut vars = vec![("ALLOW_ANONYMOUS", "true"), ("LAYOUT", layout)];
                    if let Some(k) = &k {
                        vars.push(("COMMIT_SLOTS", k));
                    }
                    vars.extend(args.vars.iter().map(|(n, v)| (n.as_str(), v.as_str())));
                    let worker = LocalWorker::start_under(&under, &[], &vars);
                    // The Durable Object's rows once, not per slot count.
                    let keep = |r: &&str| *r != "durable object" || (run == 0 && !args.no_do);
                    for route in routes(layout).into_iter().filter(keep) {
                        let slots = if route == "r2 incremental" {
                            slots
                        } else {
                            None
                        };
                        for &writers in &args.writers {
                            let c = cell(&worker, under, route, slots, writers, args.seconds);
                            println!("{}", row(&c));
                            cells.push(c);
                        }
                    }
                }
            }
        }
    }
    let mut hops = Vec::new();
    if !args.no_hops && args.models.contains(&"spec") {
        for hop in [5, 20, 50] {
            let under = Under {
                model: "spec",
                isolates: 1,
                do_hop_ms: Some(hop),
            };
            let worker = LocalWorker::start_under(&under, &[], &[("ALLOW_ANONYMOUS", "true")]);
            let c = cell(&worker, under, "durable object", None, 16, args.seconds);
            println!("hop {hop} ms: {}", row(&c));
            hops.push(c);
        }
    }

    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Write rate for one user ({} s a cell, closed-loop one-row inserts through /query; \
         local workerd; `spec` figures are modelled)\n\n{header}",
        args.seconds
    );
    for c in &cells {
        let _ = writeln!(md, "{}", row(c));
    }
    if !hops.is_empty() {
        let _ = writeln!(
            md,
            "\n## The Durable Object route at each assumed hop (spec, 1 isolate, 16 writers)\n\n\
             | hop ms (assumed) | acknowledged/s | p50 ms | p99 ms | refused (503) |\n| --- | --- | --- | --- | --- |"
        );
        for c in &hops {
            let _ = writeln!(
                md,
                "| {} | {:.1} | {:.0} | {:.0} | {} |",
                c.do_hop_ms,
                c.per_s(),
                c.p(0.5),
                c.p(0.99),
                c.refused
            );
        }
    }
    let dir = out_dir();
    std::fs::write(dir.join("write_rate.md"), &md).expect("write md");
    let raw = json!({
        "seconds_per_cell": args.seconds,
        "cells": cells.iter().map(Cell::json).collect::<Vec<_>>(),
        "do_hops": hops.iter().map(Cell::json).collect::<Vec<_>>(),
    });
    std::fs::write(
        dir.join("write_rate.json"),
        serde_json::to_string_pretty(&raw).unwrap(),
    )
    .expect("write json");
    println!("\nwrote {}", dir.join("write_rate.md").display());
}
