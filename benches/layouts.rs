//! Single vs incremental layout, side by side in one run: write requests, what each write
//! uploads, cold loads, compaction time (local workerd + local R2), and R2 operations per
//! request (counted on the real code paths over a counting store) with their cost.
//!
//! ```text
//! cargo bench --features e2e --bench layouts                          # 15 writes per size
//! cargo bench --features e2e --bench layouts -- --requests 7 --sizes 1024,5120
//! ```
//!
//! Writes `target/bench/layouts.md` (the tables) and `target/bench/layouts.json` (raw samples).

#[allow(dead_code)]
#[path = "../tests/e2e/harness.rs"]
mod harness;

#[allow(dead_code)]
#[path = "common/mod.rs"]
mod common;
#[allow(dead_code)]
#[path = "e2e/runner.rs"]
mod runner;

use std::fmt::Write as _;

use serde_json::{Value, json};
use workers_sqlite_poc::exec::{Limits, Statement};
use workers_sqlite_poc::fixtures;
use workers_sqlite_poc::pipeline::{Context, ListTables, serve};
use workers_sqlite_poc::request::{SaveMode, UserId};
use workers_sqlite_poc::storage::cache::DbCache;
use workers_sqlite_poc::storage::{self, Layout};
use workers_sqlite_poc::testing::{Calls, HookStore, StepClock, apply_sql};
use workers_sqlite_poc::work::Transaction;

use common::{out_dir, p50_p95, size_label};
use harness::LocalWorker;
use runner::Client;

/// R2 Standard prices, USD per million operations (developers.cloudflare.com/r2/pricing,
/// read 2026-11-28): Class A (put, list), Class B (get, head); deletes are free.
const CLASS_A_PER_M: f64 = 4.50;
const CLASS_B_PER_M: f64 = 0.36;

struct Args {
    requests: usize,
    /// Deltas left pending before the cold-load measurement; 0: as many as the default
    /// compaction policy lets pile up at each size (the worst case a cold load meets).
    pending: usize,
    /// Only the cold loads.
    cold_only: bool,
    sizes_kb: Vec<usize>,
    cold_sizes_kb: Vec<usize>,
}

fn parse_args() -> Args {
    let mut args = Args {
        requests: 15,
        pending: 0,
        cold_only: false,
        sizes_kb: vec![1024, 5120, 20_480, 32_768],
        cold_sizes_kb: vec![1024, 5120, 20_480],
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--requests" => {
                args.requests = it
                    .next()
                    .and_then(|n| n.parse().ok())
                    .expect("--requests N");
            }
            "--sizes" => {
                args.sizes_kb = it
                    .next()
                    .expect("--sizes KB,KB")
                    .split(',')
                    .map(|s| s.parse().expect("KB"))
                    .collect();
                args.cold_sizes_kb = args.sizes_kb.clone();
            }
            "--pending" => {
                args.pending = it.next().and_then(|n| n.parse().ok()).expect("--pending N");
            }
            "--cold-only" => args.cold_only = true,
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    args
}

fn image(kb: usize) -> Vec<u8> {
    apply_sql(
        &fixtures::sized_database(kb * 1024, kb as u64).expect("fixture"),
        "CREATE TABLE hits(id INTEGER PRIMARY KEY, note TEXT)",
    )
}

fn insert_body(id: usize) -> Value {
    json!({"sql": "INSERT INTO hits(id, note) VALUES (?, ?)", "params": [id, format!("bench write {id}")]})
}

fn vars(
    layout: &str,
    cache: &str,
    extra: &[(&'static str, &'static str)],
) -> Vec<(&'static str, String)> {
    let mut v = vec![
        ("ALLOW_ANONYMOUS", "true".to_owned()),
        ("MAX_DB_BYTES", "67108864".to_owned()),
        ("CACHE_MAX_BYTES", cache.to_owned()),
        ("LAYOUT", layout.to_owned()),
    ];
    v.extend(extra.iter().map(|(k, val)| (*k, (*val).to_owned())));
    v
}

fn start(vars: &[(&'static str, String)]) -> LocalWorker {
    let refs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    LocalWorker::start_with_vars(&[], &refs)
}

#[derive(Default, Clone)]
struct WriteSeries {
    client_ms: Vec<f64>,
    save_ms: Vec<f64>,
    uploaded: Vec<f64>,
    objects: Vec<f64>,
}

fn record(series: &mut WriteSeries, sample: &runner::Sample) {
    let r = &sample.json;
    series.client_ms.push(sample.client_ms);
    series.save_ms.push(
        r["timing_breakdown"]["save"]["total_ms"]
            .as_f64()
            .unwrap_or(0.0),
    );
    series
        .uploaded
        .push(r["storage"]["bytes_uploaded"].as_f64().unwrap_or(0.0));
    series
        .objects
        .push(r["storage"]["objects_written"].as_f64().unwrap_or(0.0));
}

fn compaction_ms(log: &str, user: &str) -> Vec<f64> {
    log.lines()
        .filter_map(|line| {
            let start = line.find('{')?;
            let v: Value = serde_json::from_str(&line[start..]).ok()?;
            (v["event"] == "compaction"
                && v["user"] == user
                && v["result"]["outcome"] == "compacted")
                .then(|| v["result"]["ms"].as_f64())
                .flatten()
        })
        .collect()
}

/// Phase 1: write requests (1-row insert through `/query`, cache on), both layouts in
/// alternation, default compaction policy.
fn writes(args: &Args, md: &mut String, raw: &mut Vec<Value>) {
    let single = start(&vars("single", "33554432", &[]));
    // The default compaction policy: its background cost is part of what writes see.
    let inc = start(&vars("incremental", "33554432", &[]));
    let (cs, ci) = (Client::new(&single.base), Client::new(&inc.base));
    writeln!(md, "### Write requests (1-row insert via `/query`, cache on; {} per size and layout, alternating; incremental compacts by the default policy: 6 deltas or 1 % of the base)\n", args.requests).unwrap();
    writeln!(md, "| size | layout | client p50 ms | client p95 ms | save p50 ms | uploaded per write (p50) | objects per write | incremental / single (p50) |").unwrap();
    writeln!(md, "|---|---|---|---|---|---|---|---|").unwrap();
    let mut compactions = vec![];
    for &kb in &args.sizes_kb {
        let user = format!("w{kb}");
        let bytes = image(kb);
        let key = format!("{user}/database.sqlite");
        single.put_object(&key, &bytes);
        inc.put_object(&key, &bytes);
        // Warm-up: the first request loads (and, incremental, upgrades the user).
        for id in 0..2 {
            cs.query_at("/query", &user, &insert_body(id));
            ci.query_at("/query", &user, &insert_body(id));
        }
        let (mut s, mut i) = (WriteSeries::default(), WriteSeries::default());
        for n in 0..args.requests {
            let id = 100 + n;
            record(&mut s, &cs.query_at("/query", &user, &insert_body(id)));
            record(&mut i, &ci.query_at("/query", &user, &insert_body(id)));
        }
        let (sp50, sp95) = p50_p95(s.client_ms.clone());
        let (ip50, ip95) = p50_p95(i.client_ms.clone());
        for (name, series, p50, p95) in
            [("single", &s, sp50, sp95), ("incremental", &i, ip50, ip95)]
        {
            let ratio = if name == "incremental" {
                format!("**{:.2}×**", ip50 / sp50)
            } else {
                String::new()
            };
            writeln!(
                md,
                "| {} | {name} | {p50:.1} | {p95:.1} | {:.1} | {:.0} B | {:.0} | {ratio} |",
                size_label(kb),
                p50_p95(series.save_ms.clone()).0,
                p50_p95(series.uploaded.clone()).0,
                p50_p95(series.objects.clone()).0,
            )
            .unwrap();
            raw.push(json!({"phase": "write", "size_kb": kb, "layout": name, "client_ms": series.client_ms, "save_ms": series.save_ms, "uploaded": series.uploaded, "objects": series.objects}));
        }
        // Compaction runs in waitUntil after a response; let the last one finish.
        std::thread::sleep(std::time::Duration::from_millis(1500));
        compactions.push((kb, compaction_ms(&inc.log(), &user)));
    }
    writeln!(
        md,
        "\n### Compaction (background, `waitUntil`, during the writes above)\n"
    )
    .unwrap();
    writeln!(md, "| size | compactions in the run | ms each (median) |").unwrap();
    writeln!(md, "|---|---|---|").unwrap();
    for (kb, ms) in compactions {
        let median = if ms.is_empty() {
            "—".to_owned()
        } else {
            format!("{:.0}", p50_p95(ms.clone()).0)
        };
        writeln!(md, "| {} | {} | {median} |", size_label(kb), ms.len()).unwrap();
        raw.push(json!({"phase": "compaction", "size_kb": kb, "ms": ms}));
    }
}

/// Phase 2: cold loads (cache off): one object vs base + manifest + pending deltas.
fn cold_loads(args: &Args, md: &mut String, raw: &mut Vec<Value>) {
    let no_compaction: &[(&'static str, &'static str)] = &[
        ("COMPACT_AFTER_DELTAS", "100000"),
        ("COMPACT_DELTA_PERCENT", "100000"),
    ];
    let single = start(&vars("single", "0", &[]));
    let inc = start(&vars("incremental", "0", no_compaction));
    let (cs, ci) = (Client::new(&single.base), Client::new(&inc.base));
    let pending_note = if args.pending == 0 {
        "as many deltas pending as the default compaction policy allows at that size (the worst case)".to_owned()
    } else {
        format!("{} deltas pending", args.pending)
    };
    writeln!(
        md,
        "\n### Cold loads (cache off; `GET /?save=never`; incremental: {pending_note})\n"
    )
    .unwrap();
    writeln!(md, "| size | deltas pending | single load p50 ms | incremental load p50 ms | ratio | single client p50 ms | incremental client p50 ms | ratio |").unwrap();
    writeln!(md, "|---|---|---|---|---|---|---|---|").unwrap();
    for &kb in &args.cold_sizes_kb {
        let user = format!("c{kb}");
        let bytes = image(kb);
        let key = format!("{user}/database.sqlite");
        single.put_object(&key, &bytes);
        inc.put_object(&key, &bytes);
        let policy = workers_sqlite_poc::storage::CompactionPolicy::default();
        let mut pending = 0;
        loop {
            cs.query_at("/query", &user, &insert_body(pending));
            let answer = ci.query_at("/query", &user, &insert_body(pending));
            assert_eq!(answer.json["storage"]["layout"], "incremental");
            pending += 1;
            let manifest: workers_sqlite_poc::storage::Manifest =
                serde_json::from_value(inc.newest_manifest(&user).unwrap()).unwrap();
            let enough = if args.pending == 0 {
                policy.due(&manifest)
            } else {
                pending >= args.pending
            };
            if enough {
                break;
            }
        }
        let path = format!("/?user={user}&save=never");
        let (mut sl, mut il, mut sc, mut ic) = (vec![], vec![], vec![], vec![]);
        for _ in 0..args.requests {
            let a = cs.get(&path);
            let b = ci.get(&path);
            assert_eq!(
                b.json["storage"]["deltas_applied"], pending as u64,
                "{}",
                b.json
            );
            sl.push(
                a.json["timing_breakdown"]["load"]["total_ms"]
                    .as_f64()
                    .unwrap(),
            );
            il.push(
                b.json["timing_breakdown"]["load"]["total_ms"]
                    .as_f64()
                    .unwrap(),
            );
            sc.push(a.client_ms);
            ic.push(b.client_ms);
        }
        let (a, b, c, d) = (
            p50_p95(sl.clone()).0,
            p50_p95(il.clone()).0,
            p50_p95(sc.clone()).0,
            p50_p95(ic.clone()).0,
        );
        writeln!(
            md,
            "| {} | {pending} | {a:.1} | {b:.1} | {:.2}× | {c:.1} | {d:.1} | **{:.2}×** |",
            size_label(kb),
            b / a,
            d / c
        )
        .unwrap();
        raw.push(json!({"phase": "cold_load", "size_kb": kb, "pending": pending, "single_load_ms": sl, "incremental_load_ms": il, "single_client_ms": sc, "incremental_client_ms": ic}));
    }
}

/// Phase 3: R2 operations per request, per layout, counted over the real pipeline.
fn operations(md: &mut String) {
    writeln!(
        md,
        "\n### R2 operations per request (counted on the pipeline's code paths) and cost\n"
    )
    .unwrap();
    writeln!(md, "| request | layout | get | head | put | list | delete | class A | class B | USD per million requests |").unwrap();
    writeln!(md, "|---|---|---|---|---|---|---|---|---|---|").unwrap();
    let user = UserId::parse(Some("ops")).unwrap();
    let insert = || Transaction {
        statements: vec![Statement {
            sql: "INSERT INTO hits(note) VALUES ('x')".into(),
            args: vec![],
            named_args: vec![],
        }],
        limits: Limits::default(),
    };
    for layout in [Layout::Single, Layout::Incremental] {
        let calls = Calls::default();
        let store = HookStore::default().with(&calls);
        store.inner.insert("ops/database.sqlite", &image(100), &[]);
        let clock = StepClock::stepping(1.0);
        let cache = DbCache::new(1 << 26);
        let cached = Context {
            cache: Some(&cache),
            layout,
            ..Context::new(&store, &clock)
        };
        let cold = Context {
            cache: None,
            ..cached
        };
        let run = |ctx: &Context<'_, HookStore<'_>, StepClock>, write: bool| {
            if write {
                pollster::block_on(serve(ctx, &user, SaveMode::Auto, &mut insert())).unwrap();
            } else {
                pollster::block_on(serve(ctx, &user, SaveMode::Auto, &mut ListTables)).unwrap();
            }
        };
        run(&cached, true); // upgrade / first write
        run(&cached, true);
        calls.take();
        let mut rows: Vec<(&str, [u64; 5])> = vec![];
        run(&cached, true);
        rows.push(("write, cache hit", calls.take()));
        run(&cached, false);
        rows.push(("read, cache hit", calls.take()));
        run(&cold, true);
        rows.push(("write, cold", calls.take()));
        run(&cold, false);
        rows.push(("read, cold", calls.take()));
        if layout == Layout::Incremental {
            pollster::block_on(storage::compact(&cached, &user, false)).unwrap();
            pollster::block_on(storage::sweep(&cached, &user)).unwrap();
            rows.push(("compaction (+ sweep)", calls.take()));
        }
        for (name, [g, h, p, d, l]) in rows {
            let (a, b) = (p + l, g + h);
            let usd = a as f64 * CLASS_A_PER_M + b as f64 * CLASS_B_PER_M;
            writeln!(
                md,
                "| {name} | {} | {g} | {h} | {p} | {l} | {d} | {a} | {b} | {usd:.2} |",
                layout.as_str()
            )
            .unwrap();
        }
    }
}

fn main() {
    let args = parse_args();
    let mut md = String::new();
    let mut raw = vec![];
    writeln!(
        md,
        "## Layouts, side by side ({})\n",
        std::env::consts::ARCH
    )
    .unwrap();
    if !args.cold_only {
        operations(&mut md);
        writes(&args, &mut md, &mut raw);
    }
    cold_loads(&args, &mut md, &mut raw);
    println!("{md}");
    let dir = out_dir();
    std::fs::write(dir.join("layouts.md"), &md).unwrap();
    std::fs::write(
        dir.join("layouts.json"),
        serde_json::to_string_pretty(&raw).unwrap(),
    )
    .unwrap();
    eprintln!("wrote {}", dir.join("layouts.md").display());
}
