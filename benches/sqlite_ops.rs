//! Native micro-benchmarks of the CPU side of a request, by database size: load (copy into
//! SQLite memory, header check, deserialize, schema read), the table query, export, and what a
//! deeper load check (`PRAGMA quick_check`, `PRAGMA integrity_check`) would add.
//!
//! `cargo bench --bench sqlite_ops` (or `make bench`); `-- --quick` for fewer samples.
//! Prints a table and writes `target/bench/sqlite_ops.json`.

use std::rc::Rc;
use std::time::Instant;

use workers_sqlite_poc::{fixtures, sqlite};

mod common;
use common::{SIZES_KB, out_dir, percentile};

fn measure(samples: usize, mut f: impl FnMut()) -> Vec<f64> {
    f(); // warm-up
    let mut times: Vec<f64> = (0..samples)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let mut rows = Vec::new();
    println!(
        "{:>9} {:>11} | {:>9} {:>9} | {:>9} | {:>9} | {:>11} {:>15} | {:>7}",
        "size",
        "bytes",
        "load p50",
        "load p95",
        "query p50",
        "export p50",
        "quick_check",
        "integrity_check",
        "MB/s"
    );
    for &kb in SIZES_KB {
        let image: Rc<[u8]> = fixtures::sized_database(kb * 1024, kb as u64)
            .expect("generate database")
            .into();
        let samples = if quick {
            5
        } else if kb >= 20_480 {
            10
        } else {
            30
        };
        let load = measure(samples, || {
            let loaded = sqlite::load(&image).expect("load");
            std::hint::black_box(&loaded.conn);
        });
        let mut loaded = sqlite::load(&image).expect("load");
        let query = measure(samples, || {
            std::hint::black_box(sqlite::list_tables(&loaded.conn).expect("query"));
        });
        let export = measure(samples, || {
            std::hint::black_box(sqlite::export(&mut loaded.conn).expect("export").len());
        });
        let check = |pragma: &str| {
            let conn = &loaded.conn;
            measure(samples.min(10), || {
                let ok: String = conn.query_row(pragma, [], |r| r.get(0)).expect("check");
                assert_eq!(ok, "ok");
            })
        };
        let quick_check = check("PRAGMA quick_check");
        let integrity = check("PRAGMA integrity_check");
        let p50 = |v: &[f64]| percentile(v, 0.5);
        let mb_per_s = image.len() as f64 / 1e6 / (p50(&load) / 1000.0);
        println!(
            "{:>7}KB {:>11} | {:>9.3} {:>9.3} | {:>9.3} | {:>10.3} | {:>11.3} {:>15.3} | {:>7.0}",
            kb,
            image.len(),
            p50(&load),
            percentile(&load, 0.95),
            p50(&query),
            p50(&export),
            p50(&quick_check),
            p50(&integrity),
            mb_per_s
        );
        rows.push(serde_json::json!({
            "size_kb": kb,
            "size_bytes": image.len(),
            "samples": samples,
            "load_ms": {"p50": p50(&load), "p95": percentile(&load, 0.95)},
            "query_ms": {"p50": p50(&query), "p95": percentile(&query, 0.95)},
            "export_ms": {"p50": p50(&export), "p95": percentile(&export, 0.95)},
            "quick_check_ms": {"p50": p50(&quick_check)},
            "integrity_check_ms": {"p50": p50(&integrity)},
        }));
    }
    let steps = vm_steps_per_ms();
    println!(
        "CPU budget: a runaway statement hits QUERY_MAX_STEPS = {} after {:.0} ms natively ({:.0} VM steps per ms)",
        workers_sqlite_poc::exec::DEFAULT_QUERY_MAX_STEPS,
        workers_sqlite_poc::exec::DEFAULT_QUERY_MAX_STEPS as f64 / steps,
        steps
    );
    let reopen = reopen_cost(quick);
    let like_ms = worst_like_ms();
    println!(
        "Worst single LIKE step (a {} KiB text, a {}-byte pattern of '%x'): {like_ms:.1} ms natively",
        workers_sqlite_poc::exec::MAX_VALUE_BYTES / 1024,
        workers_sqlite_poc::exec::MAX_LIKE_PATTERN_BYTES,
    );
    let out = out_dir().join("sqlite_ops.json");
    let json = serde_json::json!({
        "bench": "sqlite_ops",
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "rows": rows,
        "vm_steps_per_ms": steps,
        "reopen": reopen,
        "worst_like_ms": like_ms,
    });
    std::fs::write(&out, serde_json::to_string_pretty(&json).unwrap()).expect("write json");
    println!("wrote {}", out.display());
}

/// How fast SQLite's virtual machine steps natively: a runaway recursive query, interrupted by
/// the executor's budget, timed. Sets the meaning of `QUERY_MAX_STEPS` in milliseconds.
fn vm_steps_per_ms() -> f64 {
    use workers_sqlite_poc::exec::{D1Result, Executor, Limits, Statement, Transactions};
    let mut conn = sqlite::create().expect("create");
    let limits = Limits::default();
    let runaway = Statement::new(
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT max(x) FROM c",
    );
    let times: Vec<f64> = (0..3)
        .map(|_| {
            // A new executor each time: the budget is a request's, across its statements.
            let mut exec =
                Executor::new(&mut conn, limits, Transactions::Client).expect("executor");
            let start = Instant::now();
            let err = exec
                .execute(0, &runaway, true, D1Result::default())
                .expect_err("the budget stops it");
            assert_eq!(err.code(), "cpu_budget_exceeded");
            start.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    let best = times.iter().copied().fold(f64::INFINITY, f64::min);
    limits.max_steps as f64 / best
}

/// What caching the image rather than the connection costs: `sqlite::reopen` (close, open the
/// same buffer) plus the next request's first query (which reads the schema again), against
/// the same query on a connection kept open. Printed and returned per size.
fn reopen_cost(quick: bool) -> serde_json::Value {
    let samples = if quick { 5 } else { 30 };
    let mut out = Vec::new();
    for kb in [100usize, 20_480] {
        let image: Rc<[u8]> = fixtures::sized_database(kb * 1024, 5)
            .expect("fixture")
            .into();
        let mut kept = Some(sqlite::load(&image).expect("load").conn);
        let query = "SELECT count(*) FROM raw_clips";
        let reopened = measure(samples, || {
            let conn = sqlite::reopen(kept.take().expect("conn")).expect("reopen");
            let n: i64 = conn.query_row(query, [], |r| r.get(0)).expect("query");
            std::hint::black_box(n);
            kept = Some(conn);
        });
        let conn = kept.take().expect("conn");
        let warm = measure(samples, || {
            let n: i64 = conn.query_row(query, [], |r| r.get(0)).expect("query");
            std::hint::black_box(n);
        });
        let p50 = |v: &[f64]| percentile(v, 0.5);
        println!(
            "Reopen for the cache, {kb} KiB: reopen + first query {:.3} ms p50, the query on a kept connection {:.3} ms p50",
            p50(&reopened),
            p50(&warm)
        );
        out.push(serde_json::json!({"size_kb": kb, "reopen_and_query_ms_p50": p50(&reopened), "kept_query_ms_p50": p50(&warm)}));
    }
    serde_json::Value::Array(out)
}

/// The longest one LIKE can run under the limits: the longest text SQLite will build, against
/// the longest pattern it accepts, shaped to defeat the matcher's shortcuts.
fn worst_like_ms() -> f64 {
    use workers_sqlite_poc::exec::{
        D1Result, Executor, Limits, MAX_LIKE_PATTERN_BYTES, MAX_VALUE_BYTES, Statement,
        Transactions,
    };
    let mut conn = sqlite::create().expect("create");
    let mut exec =
        Executor::new(&mut conn, Limits::default(), Transactions::Client).expect("executor");
    let pairs = usize::try_from(MAX_LIKE_PATTERN_BYTES).unwrap_or(0) / 2 - 1;
    let pattern = format!("{}y", "%x".repeat(pairs));
    let text = format!("printf('%.*c', {}, 'x')", MAX_VALUE_BYTES - 1);
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let start = Instant::now();
        exec.execute(
            0,
            &Statement::new(format!("SELECT {text} LIKE '{pattern}'")),
            true,
            D1Result::default(),
        )
        .expect("like");
        best = best.min(start.elapsed().as_secs_f64() * 1000.0);
    }
    best
}
